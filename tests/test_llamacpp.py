"""llama.cpp parity: our control-vector files mean in llama.cpp what the vector means in steerlab.

Two parts:

* **Layout** (always runs, gguf reader only): a Python copy of llama.cpp's loader
  (``common_control_vector_load``: tensor ``direction.k`` → buffer row ``k - 1``, several files
  summed with their strengths, ``--control-vector-layer-range A B`` inclusive) applied to files
  written by :meth:`SteeringVector.to_gguf` gives exactly steerlab's per-layer additions.
* **Engine** (runs when ``llama-cpp-python`` is installed, else skipped): the default model's own
  GGUF (SmolLM2-135M-Instruct, Q4_1) in ``llama_cpp.Llama`` with one of our vectors applied through
  the low-level control-vector API, against steerlab steering the de-quantised weights of the same
  file. Q4_1 (and llama.cpp's 8-bit activations) make the two differ a little even unsteered, so
  the check is on the *effect*: steered llama.cpp is much closer to steered steerlab than either is
  to its unsteered self, and the logit shifts point the same way.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gguf import GGUFReader

import steerlab
from steerlab import Steering, SteeringVector

# ------------------------------------------------------------------------------ layout


def load_like_llama_cpp(files: list[tuple[Path, float]], n_layers: int) -> tuple[np.ndarray, int]:
    """``common_control_vector_load``: one float buffer, layer ``k`` (1-based) at row ``k - 1``."""
    n_embd = -1
    data = np.zeros(0, dtype=np.float32)
    for path, strength in files:
        reader = GGUFReader(str(path))
        for t in reader.tensors:
            prefix, _, index = t.name.partition(".")
            assert prefix == "direction" and index.isdigit(), t.name
            layer = int(index)
            assert layer > 0, "llama.cpp rejects direction.0"
            assert t.tensor_type.name == "F32" and len(t.shape) == 1, "llama.cpp wants 1-D F32 tensors"
            vec = np.asarray(t.data, dtype=np.float32).reshape(-1)
            assert n_embd in (-1, vec.size)
            n_embd = vec.size
            if data.size < n_embd * layer:
                data = np.concatenate([data, np.zeros(n_embd * layer - data.size, dtype=np.float32)])
            data[n_embd * (layer - 1) : n_embd * layer] += strength * vec
    assert data.size <= n_embd * (n_layers - 1)
    return data, n_embd


def apply_like_llama_cpp(data: np.ndarray, n_embd: int, n_layers: int, start: int, end: int) -> dict[int, np.ndarray]:
    """``llama_adapter_cvec``: what is added to the output of each block ``il`` (0-based)."""
    out = {}
    for il in range(1, n_layers):
        off = n_embd * (il - 1)
        if start <= il <= end and off + n_embd <= data.size and np.any(data[off : off + n_embd]):
            out[il] = data[off : off + n_embd]
    return out


def _vec(layers: tuple[int, ...], seed: int) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({k: torch.randn(8, generator=g) for k in layers}, model_id="m", d_model=8, n_layers=6)


def test_layout_matches_steerlab_layers(tmp_path: Path) -> None:
    a, b = _vec((1, 2, 4), 0), _vec((2, 5), 1)
    fa, fb = a.to_gguf(tmp_path / "a.gguf"), b.to_gguf(tmp_path / "b.gguf")
    # llama-cli --control-vector-scaled a.gguf 2.0 --control-vector-scaled b.gguf -0.5
    data, n_embd = load_like_llama_cpp([(fa, 2.0), (fb, -0.5)], n_layers=6)
    assert n_embd == 8
    added = apply_like_llama_cpp(data, n_embd, 6, start=1, end=5)
    # steerlab: Steering(a, 2.0) + Steering(b, -0.5) adds, per layer, the same vectors
    zero = torch.zeros(8)
    want = {k: 2.0 * a.directions.get(k, zero) - 0.5 * b.directions.get(k, zero) for k in (1, 2, 4, 5)}
    assert sorted(added) == sorted(want)
    for k, v in want.items():
        np.testing.assert_allclose(added[k], v.numpy(), rtol=1e-6)
    # --control-vector-layer-range 2 4 (inclusive) == Steering(..., layers=[2, 4])
    assert sorted(apply_like_llama_cpp(data, n_embd, 6, start=2, end=4)) == [2, 4]


def test_layout_round_trips_through_steerlab(tmp_path: Path) -> None:
    v = _vec((1, 3, 5), 2)
    w = SteeringVector.from_gguf(v.to_gguf(tmp_path / "v.gguf"))
    assert w.layers == v.layers and all(torch.equal(w.directions[k], v.directions[k]) for k in v.layers)
    reader = GGUFReader(str(tmp_path / "v.gguf"))
    assert reader.fields["controlvector.layer_count"].contents() == 3


# ------------------------------------------------------------------------------ engine
LAYERS = range(10, 15)
COEF = 4.0


def _apply_cvec(llama_cpp: Any, ctx: Any, data: np.ndarray | None, n_embd: int, start: int, end: int) -> None:
    fn = None
    for name in ("llama_set_adapter_cvec", "llama_apply_adapter_cvec", "llama_control_vector_apply"):
        fn = getattr(llama_cpp, name, None)
        if fn is not None:
            break
    assert fn is not None, "this llama-cpp-python has no control-vector API"
    if data is None:
        rc = fn(ctx, None, 0, n_embd, -1, -1)
    else:
        buf = np.ascontiguousarray(data, dtype=np.float32)
        rc = fn(ctx, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), buf.size, n_embd, start, end)
    assert rc == 0, f"{fn.__name__} returned {rc}"


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def _kl(p_log: np.ndarray, q_log: np.ndarray) -> float:
    return float((np.exp(p_log) * (p_log - q_log)).sum())


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    llama_cpp = pytest.importorskip("llama_cpp")
    from steerlab.model import default_gguf_path

    lm = steerlab.load_model("default")
    pairs = steerlab.persona_pairs(
        "happy", "sad", ["That game", "I can see", "The weather today", "My week", "Our new house", "The food"]
    )
    vec = steerlab.extract(lm, pairs, method="mean_diff", layers=LAYERS)
    path = vec.to_gguf(tmp_path_factory.mktemp("cvec") / "happy.gguf")
    llm = llama_cpp.Llama(
        model_path=str(default_gguf_path()), logits_all=True, n_ctx=512, n_threads=1, verbose=False, seed=0
    )
    return {"llama_cpp": llama_cpp, "llm": llm, "lm": lm, "vec": vec, "path": path}


def _cpp_logits(e: dict[str, Any], ids: list[int], steered: bool) -> np.ndarray:
    llm, lm = e["llm"], e["lm"]
    if steered:
        data, n_embd = load_like_llama_cpp([(e["path"], COEF)], lm.n_layers)
        _apply_cvec(e["llama_cpp"], llm.ctx, data, n_embd, min(LAYERS), max(LAYERS))
    else:
        _apply_cvec(e["llama_cpp"], llm.ctx, None, lm.d_model, -1, -1)
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[len(ids) - 1], dtype=np.float32)


def _steerlab_logits(e: dict[str, Any], ids: list[int], steered: bool) -> np.ndarray:
    lm = e["lm"]
    x = torch.tensor([ids])
    with torch.inference_mode(), steerlab.steer(lm, Steering(e["vec"], COEF) if steered else None):
        return lm.model(input_ids=x).logits[0, -1].float().numpy()


@pytest.mark.slow
@pytest.mark.parametrize("prompt", ["Tell me about your day.", "What do you think of the weather?"])
def test_llama_cpp_applies_our_vector_like_steerlab(engines: dict[str, Any], prompt: str) -> None:
    lm = engines["lm"]
    ids = lm.tokenizer(lm.chat(prompt), add_special_tokens=False)["input_ids"]
    cpp0, cpp1 = (_log_softmax(_cpp_logits(engines, ids, s)) for s in (False, True))
    sl0, sl1 = (_log_softmax(_steerlab_logits(engines, ids, s)) for s in (False, True))
    quant = _kl(sl0, cpp0)  # Q4_1 noise, unsteered
    cross = _kl(sl1, cpp1)  # same steering, two engines
    effect = min(_kl(sl1, sl0), _kl(cpp1, cpp0))  # what the steering does
    assert effect > 0.5, f"the vector barely moves the distribution (KL {effect:.3g})"
    assert cross < 0.1 * effect, f"steered engines differ: KL {cross:.3g}, effect {effect:.3g}, unsteered {quant:.3g}"
    shift_cpp = (cpp1 - cpp0) - (cpp1 - cpp0).mean()
    shift_sl = (sl1 - sl0) - (sl1 - sl0).mean()
    cos = float(shift_cpp @ shift_sl / (np.linalg.norm(shift_cpp) * np.linalg.norm(shift_sl)))
    assert cos > 0.9, f"logit shifts disagree (cosine {cos:.3f})"
    top_cpp, top_sl = set(np.argsort(-cpp1)[:10]), set(np.argsort(-sl1)[:10])
    assert len(top_cpp & top_sl) >= 7
    assert int(np.argmax(cpp1)) == int(np.argmax(sl1)) or cross < 0.05
