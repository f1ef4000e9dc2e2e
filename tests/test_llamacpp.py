"""llama.cpp parity: our control-vector files mean in llama.cpp what the vector means in steerlab.

Two parts:

* **Layout** (always runs, gguf reader only): a Python copy of llama.cpp's loader
  (``common_control_vector_load``: tensor ``direction.k`` → buffer row ``k - 1``, several files
  summed with their strengths, ``--control-vector-layer-range A B`` inclusive) applied to files
  written by :meth:`SteeringVector.to_gguf` gives exactly steerlab's per-layer additions.
* **Engine** (slow; skipped only when the ``xllamacpp`` wheel is absent, and it is in
  ``steerlab[dev]``, so CI runs it): llama.cpp itself, through the C API bundled in the prebuilt
  ``xllamacpp`` wheel (``tests/llamacpp_engine.py``, ctypes). The default model's own GGUF
  (SmolLM2-135M-Instruct, Q4_1) with a vector written by ``steerlab export gguf``, read by ggml's
  C GGUF reader and set with ``llama_set_adapter_cvec``, against steerlab steering the de-quantised
  weights of the same file. Q4_1 (and llama.cpp's 8-bit activations) make the two differ a little
  even unsteered, so the check is on the *effect*: steered llama.cpp is much closer to steered
  steerlab than either is to its unsteered self, and the logit shifts point the same way. If the
  bundled llama.cpp changed its C API the test fails with a message naming the call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gguf import GGUFReader

import steerlab
from steerlab import Steering, SteeringVector

from .llamacpp_engine import GGML_TYPE_F32, LlamaCpp, read_gguf_tensors, xllamacpp_available

# ------------------------------------------------------------------------------ layout
Tensor = tuple[str, bool, int, np.ndarray]  # name, is F32, number of dims, values


def _tensors_gguf_py(path: Path) -> list[Tensor]:
    """The file as gguf-py (llama.cpp's Python GGUF package) reads it."""
    return [
        (t.name, t.tensor_type.name == "F32", len(t.shape), np.asarray(t.data, dtype=np.float32).reshape(-1))
        for t in GGUFReader(str(path)).tensors
    ]


def load_like_llama_cpp(
    files: list[tuple[Path, float]], n_layers: int, read: Callable[[Path], list[Tensor]] = _tensors_gguf_py
) -> tuple[np.ndarray, int]:
    """``common_control_vector_load``: one float buffer, layer ``k`` (1-based) at row ``k - 1``."""
    n_embd = -1
    data = np.zeros(0, dtype=np.float32)
    for path, strength in files:
        for name, is_f32, n_dims, vec in read(path):
            prefix, _, index = name.partition(".")
            assert prefix == "direction" and index.isdigit(), name
            layer = int(index)
            assert layer > 0, "llama.cpp rejects direction.0"
            assert is_f32 and n_dims == 1, "llama.cpp wants 1-D F32 tensors"
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
PROMPTS = ["Tell me about your day.", "What do you think of the weather?"]


def _tensors_ggml(path: Path) -> list[Tensor]:
    """The file as llama.cpp's C code reads it (``gguf_init_from_file`` + ``ggml_get_tensor``)."""
    return [(t.name, t.ggml_type == GGML_TYPE_F32, t.n_dims, t.data) for t in read_gguf_tensors(path)]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def _kl(p_log: np.ndarray, q_log: np.ndarray) -> float:
    return float((np.exp(p_log) * (p_log - q_log)).sum())


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not xllamacpp_available():
        pytest.skip("xllamacpp is not installed (it is in steerlab[dev]: pip install -e '.[dev]')")
    from typer.testing import CliRunner

    from steerlab.cli import app
    from steerlab.models.load import default_gguf_path

    lm = steerlab.load_model("default")
    pairs = steerlab.persona_pairs(
        "happy", "sad", ["That game", "I can see", "The weather today", "My week", "Our new house", "The food"]
    )
    vec = steerlab.extract(lm, pairs, method="mean_diff", layers=LAYERS)
    tmp = tmp_path_factory.mktemp("cvec")
    vec.save(tmp / "happy")
    path = tmp / "happy.gguf"
    res = CliRunner().invoke(app, ["--quiet", "export", "gguf", str(tmp / "happy"), str(path)])
    assert res.exit_code == 0, res.output
    cpp = LlamaCpp(default_gguf_path(), n_threads=1)  # fails (not skips) if the bundled C API changed
    assert (cpp.n_embd, cpp.n_layer, cpp.n_vocab) == (lm.d_model, lm.n_layers, lm.model.config.vocab_size), (
        f"llama.cpp sees another model: n_embd {cpp.n_embd}, n_layer {cpp.n_layer}, n_vocab {cpp.n_vocab}"
    )
    yield {"cpp": cpp, "lm": lm, "vec": vec, "path": path}
    cpp.close()


def _ids(lm: steerlab.LM, prompt: str) -> list[int]:
    return list(lm.tokenizer(lm.chat(prompt), add_special_tokens=False)["input_ids"])


def _cpp_logits(e: dict[str, Any], ids: list[int], layers: range | None) -> np.ndarray:
    """llama.cpp's next-token logits: ``--control-vector-scaled happy.gguf:COEF
    --control-vector-layer-range min(layers) max(layers)``, or unsteered when ``layers`` is None."""
    cpp: LlamaCpp = e["cpp"]
    if layers is None:
        cpp.set_control_vector(None, cpp.n_embd, -1, -1)
    else:
        data, n_embd = load_like_llama_cpp([(e["path"], COEF)], cpp.n_layer, read=_tensors_ggml)
        cpp.set_control_vector(data, n_embd, min(layers), max(layers))
    return cpp.last_logits(ids)


def _steerlab_logits(e: dict[str, Any], ids: list[int], layers: range | None) -> np.ndarray:
    lm = e["lm"]
    steering = None if layers is None else Steering(e["vec"], COEF, layers=list(layers))
    with torch.inference_mode(), steerlab.steer(lm, steering):
        return lm.model(input_ids=torch.tensor([ids])).logits[0, -1].float().numpy()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("prompt", "layers"),
    [(PROMPTS[0], LAYERS), (PROMPTS[1], LAYERS), (PROMPTS[0], range(11, 14))],
    ids=["day", "weather", "day-layer-range-11-13"],
)
def test_llama_cpp_applies_our_vector_like_steerlab(engines: dict[str, Any], prompt: str, layers: range) -> None:
    ids = _ids(engines["lm"], prompt)
    cpp0, cpp1 = (_log_softmax(_cpp_logits(engines, ids, s)) for s in (None, layers))
    sl0, sl1 = (_log_softmax(_steerlab_logits(engines, ids, s)) for s in (None, layers))
    quant = _kl(sl0, cpp0)  # Q4_1 noise, unsteered
    cross = _kl(cpp1, sl1)  # same steering, two engines
    effect = min(_kl(sl1, sl0), _kl(cpp1, cpp0))  # what the steering does
    shift_cpp = (cpp1 - cpp0) - (cpp1 - cpp0).mean()
    shift_sl = (sl1 - sl0) - (sl1 - sl0).mean()
    cos = float(shift_cpp @ shift_sl / (np.linalg.norm(shift_cpp) * np.linalg.norm(shift_sl)))
    numbers = f"KL steered engines {cross:.4f}, effect {effect:.3f}, unsteered {quant:.4f}, cosine {cos:.4f}"
    print(f"{prompt!r} layers {min(layers)}-{max(layers)}: {numbers}")
    assert effect > 0.5, f"the vector barely moves the distribution ({numbers})"
    assert cross < 0.03 * effect, f"steered engines differ ({numbers})"
    assert cos > 0.98, f"logit shifts disagree ({numbers})"
    top_cpp, top_sl = set(np.argsort(-cpp1)[:10]), set(np.argsort(-sl1)[:10])
    assert len(top_cpp & top_sl) >= 7, f"steered top-10 overlap {len(top_cpp & top_sl)} ({numbers})"
    assert int(np.argmax(cpp1)) == int(np.argmax(sl1)) or cross < 0.05, numbers


@pytest.mark.slow
def test_llama_cpp_reads_our_file_like_gguf_py(engines: dict[str, Any]) -> None:
    """ggml's C reader and gguf-py see the same tensors, so the layout test speaks for llama.cpp."""
    mine, theirs = _tensors_ggml(engines["path"]), _tensors_gguf_py(engines["path"])
    assert [t[:3] for t in mine] == [t[:3] for t in theirs] == [(f"direction.{k}", True, 1) for k in LAYERS]
    for a, b in zip(mine, theirs):
        np.testing.assert_array_equal(a[3], b[3])


@pytest.mark.slow
def test_clearing_the_control_vector_restores_llama_cpp(engines: dict[str, Any]) -> None:
    ids = _ids(engines["lm"], PROMPTS[1])
    before = _cpp_logits(engines, ids, None)
    steered = _cpp_logits(engines, ids, LAYERS)
    after = _cpp_logits(engines, ids, None)
    assert not np.allclose(before, steered)
    np.testing.assert_array_equal(before, after)
