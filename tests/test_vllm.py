"""vLLM: steerlab vectors for the vllm-lens and hotwire-vllm plugins, and ``steerlab serve --engine vllm``.

No GPU and no vLLM here: the plugins' own modules, from their pinned wheels (fetched at test time
into a cache, ``tests/vllm_plugins.py``), run on the trained stories260K model with vLLM's side
stood in and driven the way vLLM drives them (prefill, then one-token decode steps with a KV
cache; per-layer attention metadata as vLLM >= 0.30 gives it). The checks:

* **formats**: what ``steerlab export vllm-lens|hotwire`` writes is what each plugin's loader
  reads, and reads back into the same steerlab vector;
* **layer numbering**: the hidden states after every layer, with the plugin adding the exported
  vector, equal steerlab's steered block outputs (``Steering(vec, c)``, positions "all"), layers 0
  and the last included; generation equals ``steerlab.generate`` for each position the plugin
  supports (vllm-lens: all; hotwire: all, generated);
* **what vllm-lens 1.3.0 gets wrong**: its position-specific steering counts every decode step
  from position 0 (it looks for ``seq_lens`` on the per-layer metadata dict), shown on its own
  code — which is why steerlab refuses those modes for it;
* **request translation**: steering → plugin payload, coefficients, layers, the positions support
  matrix and every refusal;
* **the server**: ``--engine vllm`` against a vLLM-like server (a FastAPI app generating with a
  plugin's code, reached through ``httpx.ASGITransport`` or real HTTP) answers like the transformers
  engine — same text, OpenAI shapes, streaming, the same validation — and refuses what the plugin
  cannot do with a 400; the playground page works against it.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

import steerlab
from steerlab import Steering, SteeringVector
from steerlab.errors import SteeringError, VectorFileError
from steerlab.export import PluginUnsupported, hotwire, vllm_lens

from .conftest import STORIES
from .vllm_plugins import PluginModel, fake_vllm_app, plugin_modules

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

PROMPT = "Once upon a time, there was a little girl"
COEF = 4.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_vector(lm: steerlab.LM, layers: tuple[int, ...], seed: int = 0, norm: float = 2.0) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    dirs = {k: torch.nn.functional.normalize(torch.randn(lm.d_model, generator=g), dim=0) * norm for k in layers}
    return SteeringVector(dirs, model_id=lm.model_id, d_model=lm.d_model, n_layers=lm.n_layers, method="random")


@pytest.fixture(scope="module")
def edge_vec(lm: steerlab.LM) -> SteeringVector:
    """Layers 0, 2 and the last one (4): the numbering's edges."""
    return random_vector(lm, (0, 2, lm.n_layers - 1))


def prompt_ids(lm: steerlab.LM, text: str = PROMPT) -> list[int]:
    return list(lm.tokenizer(text, add_special_tokens=True)["input_ids"])


@contextmanager
def block_outputs(lm: steerlab.LM) -> Iterator[dict[int, torch.Tensor]]:
    """Record every block's output (hooks added now run after hooks already there)."""
    seen: dict[int, torch.Tensor] = {}

    def hook(k: int) -> Any:
        def record(_m: Any, _i: Any, out: Any) -> None:
            seen[k] = (out[0] if isinstance(out, tuple) else out).detach().clone()

        return record

    handles = [b.register_forward_hook(hook(k)) for k, b in enumerate(lm.blocks)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def steerlab_blocks(lm: steerlab.LM, ids: list[int], steering: Steering | None) -> dict[int, torch.Tensor]:
    with steerlab.steer(lm, steering) if steering is not None else _nothing(), block_outputs(lm) as seen:
        with torch.inference_mode():
            lm.model(input_ids=torch.tensor([ids]))
    return seen


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def lens_decode(value: Any) -> list[Any]:
    """vllm-lens's own decoding of an ``apply_steering_vectors`` value (its ``SteeringVector``s)."""
    return list(plugin_modules("vllm-lens").plugin._decode_steering_vectors(value))


def plugin_blocks(pm: PluginModel, ids: list[int], xargs: dict[str, str]) -> dict[int, torch.Tensor]:
    """One prefill step of ``ids`` with the plugin reading ``xargs`` (as vLLM's extra_args)."""
    with pm.request(xargs) as req, block_outputs(pm.lm) as seen:
        pm.step(req, ids, 0, steerlab.runtime.hf.new_cache(pm.lm.model))
    return seen


def assert_same_blocks(got: dict[int, torch.Tensor], want: dict[int, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5, msg=f"layer {k}")


def plugin_text(pm: PluginModel, ids: list[int], xargs: dict[str, str], max_tokens: int) -> str:
    eos = pm.lm.tokenizer.eos_token_id
    toks = [t for t in pm.generate(ids, max_tokens, xargs) if t != eos]
    return str(pm.lm.tokenizer.decode(toks, skip_special_tokens=True))


# ============================================================================ formats
def test_hotwire_export_is_what_hotwire_loads(lm: steerlab.LM, edge_vec: SteeringVector, tmp_path: Path) -> None:
    path = hotwire.write(edge_vec, tmp_path / "hw", name="edge")
    assert path == tmp_path / "hw" / "edge.pt"
    st = plugin_modules("hotwire-vllm").state.SteerState(
        lm.n_layers, lm.d_model, 64, torch.device("cpu"), torch.float32, 16
    )
    st.load_store(str(tmp_path / "hw"))  # hotwire's own loader: the id is the file stem
    t = st.store["edge"][0]
    assert t.shape == (lm.n_layers, lm.d_model) and t.dtype == torch.float32
    for k in range(lm.n_layers):
        want = edge_vec.directions.get(k, torch.zeros(lm.d_model))
        assert torch.equal(t[k], want), k
    back = hotwire.read(path)
    assert back.layers == edge_vec.layers and back.model_id == edge_vec.model_id and back.method == "random"
    assert all(torch.equal(back.directions[k], edge_vec.directions[k]) for k in edge_vec.layers)
    assert hotwire.exported_digest(path) == hotwire.digest(edge_vec)
    # a .pt path is written as is; a bare (d_model,) file (hotwire uses it at any layer) reads with lm
    assert hotwire.write(edge_vec, tmp_path / "one.pt") == tmp_path / "one.pt"
    torch.save(torch.ones(lm.d_model), tmp_path / "bare.pt")
    assert hotwire.read(tmp_path / "bare.pt", lm).layers == list(range(lm.n_layers))
    with pytest.raises(VectorFileError, match="give the model"):
        hotwire.read(tmp_path / "bare.pt")


def test_hotwire_refuses_tokenwise_vectors(actadd_vec: SteeringVector, tmp_path: Path) -> None:
    with pytest.raises(PluginUnsupported, match="token-wise") as err:
        hotwire.write(actadd_vec, tmp_path, name="love")
    assert isinstance(err.value, SteeringError) and not list(tmp_path.iterdir())
    hotwire.write(actadd_vec.token_mean(), tmp_path, name="love")
    with pytest.raises(VectorFileError, match="hotwire id"):
        hotwire.write(actadd_vec.token_mean(), tmp_path, name="../x")


def test_vllm_lens_export_is_what_vllm_lens_loads(
    lm: steerlab.LM, edge_vec: SteeringVector, actadd_vec: SteeringVector, tmp_path: Path
) -> None:
    path = vllm_lens.write(edge_vec, tmp_path / "edge.json")
    text = path.read_text()
    (sv,) = lens_decode(text)  # the JSON-string form vllm_xargs carries
    assert sv.layer_indices == edge_vec.layers and sv.scale == 1.0 and sv.position_indices is None
    assert not sv.norm_match and sv.activations.shape == (3, lm.d_model)
    assert torch.equal(sv.activations, torch.stack([edge_vec.directions[k] for k in edge_vec.layers]))
    (sv2,) = lens_decode(json.loads(text))  # and the list form (offline extra_args)
    assert torch.equal(sv2.activations, sv.activations)
    back = vllm_lens.read(path, lm)
    assert back.layers == edge_vec.layers and back.model_id == lm.model_id
    assert all(torch.equal(back.directions[k], edge_vec.directions[k]) for k in edge_vec.layers)
    # a token-wise vector is refused (vllm-lens 1.3.0 would add its first row to every generated token)
    with pytest.raises(PluginUnsupported, match="token-wise") as err:
        vllm_lens.write(actadd_vec, tmp_path / "tw.json")
    assert err.value.code == "tokenwise_vector" and not (tmp_path / "tw.json").exists()
    # a file made elsewhere with a 3-D entry (position_indices null) still reads as a token-wise vector
    rows = actadd_vec.directions[2]
    entry = {
        "activations": vllm_lens.encode_tensor(rows[None]),
        "layer_indices": [2],
        "scale": 1.0,
        "norm_match": False,
        "position_indices": None,
    }
    (tmp_path / "tw.json").write_text(json.dumps([entry]))
    (tw,) = lens_decode((tmp_path / "tw.json").read_text())
    assert tw.activations.shape == (1, rows.shape[0], lm.d_model) and tw.position_indices is None
    assert torch.equal(vllm_lens.read(tmp_path / "tw.json", lm).directions[2], rows)


def test_vllm_lens_reads_what_it_cannot_hold_as_an_error(tmp_path: Path) -> None:
    entry = vllm_lens.to_entries(SteeringVector({1: torch.ones(4)}, model_id="m", d_model=4, n_layers=3))[0]
    for bad, match in [
        ({**entry, "norm_match": True}, "norm_match"),
        ({**entry, "position_indices": [0]}, "position"),
        ({**entry, "layer_indices": [1, 2]}, "do not match"),
        ({"scale": 1}, "needs"),
    ]:
        (tmp_path / "bad.json").write_text(json.dumps([bad]))
        with pytest.raises(VectorFileError, match=match):
            vllm_lens.read(tmp_path / "bad.json")
    bf16 = dict(vllm_lens.encode_tensor(torch.arange(4.0)))
    raw = torch.arange(4.0).to(torch.bfloat16).view(torch.int16).numpy().tobytes()
    bf16.update(data=base64.b64encode(raw).decode(), dtype="int16", original_dtype="torch.bfloat16")
    assert torch.equal(vllm_lens.decode_tensor(bf16), torch.arange(4.0))  # vllm-lens's bfloat16 form


def test_cli_exports(lm: steerlab.LM, vec: SteeringVector, actadd_vec: SteeringVector, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from steerlab.cli import app as cli

    store = tmp_path / "store"
    vec.save(store / "happy")
    (-vec).save(store / "sad")
    vec.to_gguf(store / "calm.gguf")
    run = CliRunner().invoke
    r = run(cli, ["--quiet", "export", "hotwire", str(store / "happy"), str(tmp_path / "hw")])
    assert r.exit_code == 0, r.output
    assert hotwire.read(tmp_path / "hw" / "happy.pt").layers == vec.layers
    r = run(cli, ["--quiet", "export", "hotwire", str(store), str(tmp_path / "all")])  # a whole store
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["calm.pt", "happy.pt", "sad.pt"]
    r = run(cli, ["--quiet", "export", "vllm-lens", str(store / "sad"), str(tmp_path / "sad.json")])
    assert r.exit_code == 0, r.output
    assert torch.equal(vllm_lens.read(tmp_path / "sad.json").directions[2], -vec.directions[2])
    r = run(cli, ["--quiet", "export", "gguf", str(store / "happy"), str(tmp_path / "happy.gguf")])
    assert r.exit_code == 0, r.output  # the llama.cpp export is unchanged
    assert SteeringVector.from_gguf(tmp_path / "happy.gguf").layers == vec.layers
    actadd_vec.save(tmp_path / "love")
    r = run(cli, ["export", "hotwire", str(tmp_path / "love"), str(tmp_path / "hw")])
    assert r.exit_code == 2 and "token-wise" in r.output  # a usage error: exit 2


# ============================================================================ layer numbering
@pytest.mark.parametrize("plugin", ["hotwire", "vllm-lens"])
def test_plugin_adds_where_steerlab_adds(
    lm: steerlab.LM, edge_vec: SteeringVector, tmp_path: Path, plugin: str
) -> None:
    """Hidden states after every layer, the plugin adding the exported vector at coefficient 4 vs
    steerlab's ``Steering(vec, 4)`` at positions "all" — layers 0, 2 and 4 (the last)."""
    hotwire.write(edge_vec, tmp_path, name="edge")
    pm = PluginModel(lm, plugin, hotwire_dir=tmp_path)
    steering = Steering(edge_vec, COEF)
    ids = prompt_ids(lm)
    if plugin == "hotwire":
        xargs = hotwire.xargs(hotwire.request_spec(steering, lambda v: "edge"))
    else:
        xargs = vllm_lens.xargs(vllm_lens.steering_payload(steering))
    want = steerlab_blocks(lm, ids, steering)
    assert_same_blocks(plugin_blocks(pm, ids, xargs), want)
    plain = steerlab_blocks(lm, ids, None)
    assert not torch.allclose(plain[0], want[0])  # it did steer, from layer 0 on
    assert_same_blocks(plugin_blocks(pm, ids, {}), plain)  # unsteered requests are untouched
    # the same vector one layer off would not match: the numbering is what is being checked
    shifted = SteeringVector(
        {k + 1: v for k, v in edge_vec.directions.items() if k + 1 < lm.n_layers},
        model_id=lm.model_id,
        d_model=lm.d_model,
        n_layers=lm.n_layers,
    )
    with pytest.raises(AssertionError):
        assert_same_blocks(steerlab_blocks(lm, ids, Steering(shifted, COEF)), want)


@pytest.mark.parametrize("chunk", [None, 3])
def test_vllm_lens_generation_matches_steerlab(lm: steerlab.LM, vec: SteeringVector, chunk: int | None) -> None:
    """Greedy text with the request's payload (positions "all"), prefill in one piece or in chunks of 3."""
    ids, n = prompt_ids(lm), 12
    steering = Steering(vec, COEF)
    want = steerlab.generate(lm, PROMPT, steering=steering, max_new_tokens=n)[0]
    xargs = vllm_lens.xargs(vllm_lens.steering_payload(steering))
    assert plugin_text(PluginModel(lm, "vllm-lens", prefill_chunk=chunk), ids, xargs, n) == want
    assert want != steerlab.generate(lm, PROMPT, max_new_tokens=n)[0]


def positional_entry(
    vec: SteeringVector, coefficient: float, positions: list[int] | None, rows: torch.Tensor | None = None
) -> dict[str, Any]:
    """A position-specific vllm-lens entry (its documented 3-D form): ``vec`` repeated at explicit
    absolute ``positions``, or ``rows`` at ``0..n-1`` (``positions=None``)."""
    layers = vec.layers
    acts = (
        rows
        if rows is not None
        else torch.stack([vec.directions[k] for k in layers])[:, None].expand(
            len(layers), len(positions or []), vec.d_model
        )
    )
    return {
        "activations": vllm_lens.encode_tensor(acts),
        "layer_indices": layers,
        "scale": coefficient,
        "norm_match": False,
        "position_indices": positions,
    }


@pytest.mark.parametrize("case", ["generated", "prompt", "window", "tokenwise"])
def test_vllm_lens_1_3_0_counts_every_decode_step_from_position_0(
    lm: steerlab.LM, vec: SteeringVector, actadd_vec: SteeringVector, case: str
) -> None:
    """Why steerlab refuses vllm-lens's position-specific modes, on the plugin's own code: it reads
    a step's absolute start from ``attn_metadata.seq_lens``, which vLLM >= 0.30's dict of
    per-layer metadata does not have, so each decode step counts from 0 (the prompt, prefilled in
    one step, is placed right). What the plugin does equals another steerlab steering, exactly."""
    prompt = "The cat" if case == "tokenwise" else PROMPT
    ids, n = prompt_ids(lm, prompt), 12
    p = len(ids)
    if case == "generated":  # positions [P, P + n): nothing is ever steered
        entry, meant, does = positional_entry(vec, COEF, list(range(p, p + n))), "generated", None
    elif case == "prompt":  # positions [0, P): every decode step looks like position 0, so all of it
        entry, meant, does = positional_entry(vec, COEF, list(range(p))), "prompt", Steering(vec, COEF)
    elif case == "window":  # (6, 14): the prompt's part only
        entry, meant, does = (
            positional_entry(vec, COEF, list(range(6, 14))),
            (6, 14),
            Steering(vec, COEF, positions=(6, p)),
        )
    else:  # token-wise rows at 0..3: the prompt right, then row 0 at every generated token
        # (an ActAdd vector's row 0 is the BOS token's, zero here; one with a non-zero row 0 shows it)
        rows = actadd_vec.directions[2]
        rows = torch.cat([rows[1:2], rows[1:]])
        assert rows.shape[0] == p and float(rows[0].norm()) > 1
        tw = SteeringVector({2: rows}, model_id=lm.model_id, d_model=lm.d_model, n_layers=lm.n_layers, method="actadd")
        entry = positional_entry(tw, COEF, None, rows=rows[None])
        row0 = SteeringVector({2: rows[0]}, model_id=lm.model_id, d_model=lm.d_model, n_layers=lm.n_layers)
        meant, does = None, Steering(tw, COEF) + Steering(row0, COEF, positions="generated")
    want = steerlab.generate(
        lm,
        prompt,
        steering=Steering(tw, COEF) if meant is None else Steering(vec, COEF, positions=meant),
        max_new_tokens=n,
    )[0]
    got = plugin_text(PluginModel(lm, "vllm-lens"), ids, {vllm_lens.XARG: json.dumps([entry])}, n)
    assert got == steerlab.generate(lm, prompt, steering=does, max_new_tokens=n)[0]
    assert got != want  # not what the payload means
    if case != "tokenwise":
        with pytest.raises(PluginUnsupported, match="seq_lens") as err:  # so steerlab refuses it
            vllm_lens.steering_payload(Steering(vec, COEF, positions=meant))
        assert err.value.code == "unsupported_positions" and err.value.plugin == "vllm-lens"
    else:
        with pytest.raises(PluginUnsupported, match="token-wise") as err:
            vllm_lens.steering_payload(Steering(tw, COEF))
        assert err.value.code == "tokenwise_vector"


@pytest.mark.parametrize("where", ["all", "generated"])
def test_hotwire_generation_matches_steerlab(lm: steerlab.LM, vec: SteeringVector, tmp_path: Path, where: str) -> None:
    """``"generated"`` is hotwire's ``decode_only``: the prefill is skipped, each decode step steered."""
    hotwire.write(vec, tmp_path, name="happy")
    ids, n = prompt_ids(lm), 12
    steering = Steering(vec, COEF, positions=where)
    spec = hotwire.request_spec(steering, lambda v: "happy")
    assert all(e.get("decode_only", False) == (where == "generated") for e in spec)
    want = steerlab.generate(lm, PROMPT, steering=steering, max_new_tokens=n)[0]
    assert plugin_text(PluginModel(lm, "hotwire", hotwire_dir=tmp_path), ids, hotwire.xargs(spec), n) == want
    assert want != steerlab.generate(lm, PROMPT, max_new_tokens=n)[0]


def test_hotwire_same_layer_entries_do_not_stack(lm: steerlab.LM, vec: SteeringVector, tmp_path: Path) -> None:
    """Why two steerings on one layer are refused: in hotwire the last entry wins."""
    hotwire.write(vec, tmp_path, name="a")
    hotwire.write(-vec, tmp_path, name="b")
    pm = PluginModel(lm, "hotwire", hotwire_dir=tmp_path)
    assert [m._hotwire_idx for m in pm.vllm.model.layers] == list(range(lm.n_layers))  # every layer armed
    spec = [{"id": "a", "layer": 2, "scale": 1.0}, {"id": "b", "layer": 2, "scale": 1.0}]
    with pm.request(hotwire.xargs(spec)) as req:
        pm.step(req, prompt_ids(lm)[:4], 0, steerlab.runtime.hf.new_cache(lm.model))
    st = pm.hot_state
    slot = int(st.slot_map[2, 0])
    assert torch.equal(st.bank.bank[slot], -vec.directions[2])  # b, not a + b (= 0)


# ============================================================================ request translation
def test_vllm_lens_payload(lm: steerlab.LM, vec: SteeringVector, actadd_vec: SteeringVector) -> None:
    other = random_vector(lm, (1, 4), seed=3)
    payload = vllm_lens.steering_payload(Steering(vec, 2.5, layers=[1, 3]) + Steering(other, -1.0))
    assert [e["layer_indices"] for e in payload] == [[1, 3], [1, 4]]
    assert [e["scale"] for e in payload] == [2.5, -1.0]
    assert all(e["position_indices"] is None and e["norm_match"] is False for e in payload)
    acts = [vllm_lens.decode_tensor(e["activations"]) for e in payload]
    assert torch.equal(acts[0], torch.stack([vec.directions[1], vec.directions[3]]))
    assert torch.equal(acts[1], torch.stack([other.directions[1], other.directions[4]]))
    # every position but "all", and token-wise vectors, are refused, naming the entry and why
    for where in ["prompt", "generated", (3, 6), (12, None)]:
        with pytest.raises(PluginUnsupported, match=r"attn_metadata\.seq_lens") as err:
            vllm_lens.steering_payload(Steering(vec, 1.0) + Steering(vec, 1.0, positions=where))
        assert (err.value.index, err.value.code) == (1, "unsupported_positions"), where
    with pytest.raises(PluginUnsupported, match="token_mean") as err:
        vllm_lens.steering_payload(Steering(actadd_vec, 3.0))
    assert (err.value.index, err.value.code) == (0, "tokenwise_vector")
    (mean,) = vllm_lens.steering_payload(Steering(actadd_vec.token_mean(), 3.0))  # its plain form is fine
    assert mean["activations"]["shape"] == [1, lm.d_model]
    assert vllm_lens.steering_payload(Steering(vec, 0.0)) == [] and vllm_lens.xargs([]) == {}
    assert vllm_lens.steering_payload(None) == []


@pytest.mark.parametrize("operator", ["ablate", "clamp", "add_norm_preserving"])
def test_plugins_refuse_other_operators(vec: SteeringVector, operator: str) -> None:
    s = Steering(vec, 1.0) + Steering(vec, 1.0, operator=operator)
    with pytest.raises(PluginUnsupported, match="only adds") as err:
        vllm_lens.steering_payload(s)
    assert err.value.index == 1 and err.value.plugin == "vllm-lens"
    with pytest.raises(PluginUnsupported, match="only adds") as err:
        hotwire.request_spec(Steering(vec, 1.0, operator=operator), lambda v: "happy")
    assert err.value.index == 0 and err.value.plugin == "hotwire"


def test_hotwire_spec(lm: steerlab.LM, vec: SteeringVector, actadd_vec: SteeringVector) -> None:
    other = random_vector(lm, (0, 4), seed=5)
    names = {id(vec): "happy", id(other): "edge"}
    spec = hotwire.request_spec(
        Steering(vec, 2.5, layers=[1, 3]) + Steering(other, -1.0, positions="generated"), lambda v: names[id(v)]
    )
    assert spec == [
        {"id": "happy", "layer": 1, "scale": 2.5},
        {"id": "happy", "layer": 3, "scale": 2.5},
        {"id": "edge", "layer": 0, "scale": -1.0, "decode_only": True},
        {"id": "edge", "layer": 4, "scale": -1.0, "decode_only": True},
    ]
    assert json.loads(hotwire.xargs(spec)[hotwire.XARG]) == spec
    assert hotwire.request_spec(Steering(vec, 0.0), lambda v: "happy") == []  # no slot for a no-op
    refusals = [
        (Steering(vec, 1.0, positions="prompt"), "unsupported_positions"),
        (Steering(vec, 1.0, positions=(0, 4)), "unsupported_positions"),
        (Steering(actadd_vec, 1.0), "tokenwise_vector"),
        (Steering(vec, 1.0) + Steering(vec, 2.0, layers=[3]), "layer_conflict"),
    ]
    for steering, code in refusals:
        with pytest.raises(PluginUnsupported) as err:
            hotwire.request_spec(steering, lambda v: "happy")
        assert err.value.code == code


class _Store:
    def __init__(self, vectors: dict[str, SteeringVector]) -> None:
        self.vectors = vectors

    def names(self) -> list[str]:
        return sorted(self.vectors)

    def get(self, name: str) -> Any:
        return type("SV", (), {"vector": self.vectors[name]})()


def test_translator_checks_hotwire_exports_and_slots(lm: steerlab.LM, vec: SteeringVector, tmp_path: Path) -> None:
    from steerlab.serve.engines.vllm_requests import Translator

    other = random_vector(lm, (2,), seed=9)
    t = Translator("hotwire", _Store({"happy": vec, "other": other}), hotwire_dir=tmp_path, hotwire_slots=4)
    with pytest.raises(PluginUnsupported, match="is not exported") as err:
        t.xargs(Steering(vec, 1.0), 5, 5)
    assert err.value.code == "vector_not_exported"
    hotwire.write(-vec, tmp_path, name="happy")
    with pytest.raises(PluginUnsupported, match="changed since it was exported"):
        t.xargs(Steering(vec, 1.0), 5, 5)
    hotwire.write(vec, tmp_path, name="happy")
    hotwire.write(other, tmp_path, name="other")
    spec = json.loads(t.xargs(Steering(vec, 1.0), 5, 5)["hotwire"])
    assert [e["layer"] for e in spec] == [1, 2, 3] and t.slots_used() == 3
    t.xargs(Steering(vec, 1.0), 5, 5)  # the same combinations: no new slot
    t.xargs(Steering(other, 1.0), 5, 5)
    assert t.slots_used() == 4
    with pytest.raises(PluginUnsupported, match="HOTWIRE_SLOTS") as err:
        t.xargs(Steering(vec, 2.0, layers=[1]), 5, 5)
    assert err.value.code == "hotwire_slots_exhausted" and t.slots_used() == 4
    with pytest.raises(PluginUnsupported, match="changed while"):
        t.xargs(Steering(vec * 1.0, 1.0), 5, 5)  # not the store's object (replaced meanwhile)
    lens = Translator("vllm-lens", _Store({}))
    assert lens.xargs(None, 5, 5) == {}


# ============================================================================ the server
KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def shell() -> steerlab.LM:
    from steerlab.serve.engines.vllm import load_shell

    lm = load_shell(STORIES)
    assert lm.device.type == "meta"
    return lm


@pytest.fixture(scope="module")
def store_template(
    tmp_path_factory: pytest.TempPathFactory, lm: steerlab.LM, vec: SteeringVector, actadd_vec: SteeringVector
) -> Path:
    root = tmp_path_factory.mktemp("vllm-store")
    vec.save(root / "happy")
    random_vector(lm, (2, 3), seed=1, norm=3.0).save(root / "dog")
    random_vector(lm, (0, 4), seed=2, norm=3.0).save(root / "edge")
    actadd_vec.save(root / "love")
    return root


@pytest.fixture
def store(tmp_path: Path, store_template: Path) -> Path:
    shutil.copytree(store_template, tmp_path / "store")
    return tmp_path / "store"


@contextmanager
def vllm_served(shell: steerlab.LM, store: Path, fake: Any, plugin: str = "vllm-lens", **options: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from steerlab.serve import ServeSettings, create_app
    from steerlab.serve.engines.vllm import VLLMOptions, engine_factory

    options.setdefault("url", "http://vllm.test")
    options.setdefault("transport", httpx.ASGITransport(app=fake) if fake is not None else None)
    app = create_app(
        shell,
        store,
        ServeSettings(api_key=KEY, max_tokens=32),
        engine=engine_factory(VLLMOptions(plugin=plugin, **options)),
    )
    with TestClient(app) as client:
        yield client
    assert not app.state.server.engine.alive


@contextmanager
def hf_served(lm: steerlab.LM, store: Path) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from steerlab.serve import ServeSettings, create_app

    with TestClient(create_app(lm, store, ServeSettings(api_key=KEY, max_tokens=32))) as client:
        yield client


def post(client: Any, path: str, **body: Any) -> Any:
    return client.post(path, headers=AUTH, json=body)


def sse(response: Any) -> list[dict[str, Any]]:
    lines = [ln[6:] for ln in response.text.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


REQUESTS: list[dict[str, Any]] = [
    {"prompt": PROMPT, "max_tokens": 16},
    {"prompt": PROMPT, "max_tokens": 16, "steering": [{"vector": "happy", "coefficient": COEF}]},
    {
        "prompt": ["The cat", PROMPT],
        "max_tokens": 12,
        "n": 2,
        "steering": [{"vector": "dog", "coefficient": -3.0}, {"vector": "edge", "coefficient": 2.0}],
    },
    {"prompt": "The dog", "max_tokens": 10, "stop": ["."], "steering": [{"vector": "edge", "coefficient": 3}]},
]
HOTWIRE_ONLY: list[dict[str, Any]] = [  # vllm-lens 1.3.0 cannot steer by position: refused for it
    {
        "prompt": PROMPT,
        "max_tokens": 16,
        "steering": [{"vector": "happy", "coefficient": COEF, "layers": [2], "positions": "generated"}],
    },
]


def answers(client: Any, requests: list[dict[str, Any]]) -> list[list[tuple[str, str]]]:
    out = []
    for body in requests:
        r = post(client, "/v1/completions", **body)
        assert r.status_code == 200, r.text
        out.append([(c["text"], c["finish_reason"]) for c in r.json()["choices"]])
    return out


@pytest.fixture(scope="module")
def reference(lm: steerlab.LM, store_template: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    """The transformers engine's answers to REQUESTS + HOTWIRE_ONLY."""
    store = tmp_path_factory.mktemp("ref") / "store"
    shutil.copytree(store_template, store)
    with hf_served(lm, store) as client:
        return answers(client, REQUESTS + HOTWIRE_ONLY)


@pytest.mark.parametrize("plugin", ["vllm-lens", "hotwire"])
def test_vllm_engine_answers_like_the_transformers_engine(
    lm: steerlab.LM, shell: steerlab.LM, store: Path, tmp_path: Path, reference: list[Any], plugin: str
) -> None:
    hw_dir = tmp_path / "hotwire"
    for name in ("happy", "dog", "edge"):
        hotwire.write(SteeringVector.load(store / name), hw_dir, name=name)
    fake = fake_vllm_app(PluginModel(lm, plugin, hotwire_dir=hw_dir))
    requests = REQUESTS + (HOTWIRE_ONLY if plugin == "hotwire" else [])
    extra = {"hotwire_dir": hw_dir} if plugin == "hotwire" else {}
    with vllm_served(shell, store, fake, plugin, **extra) as client:
        got = answers(client, requests)
        metrics = client.get("/metrics?format=json", headers=AUTH).json()
    assert got == reference[: len(requests)]
    assert got[0] != got[1]  # the steering changed the text
    sent = fake.state.received
    assert all(b["model"] == "fake-vllm" and b["stream"] and b["temperature"] == 0.0 for b in sent)
    assert sent[0]["prompt"] == prompt_ids(lm) and "vllm_xargs" not in sent[0] and "cache_salt" not in sent[0]
    # steered requests get their own prefix-cache namespace, shared only by the same steering
    salts = [b.get("cache_salt") for b in sent]
    assert salts[1] and salts[1] != salts[2] and salts[2] == salts[3] == salts[4] == salts[5]
    assert len(sent) == 1 + 1 + 4 + len(requests) - 3  # one vLLM request per choice
    key = vllm_lens.XARG if plugin == "vllm-lens" else hotwire.XARG
    assert set(sent[1]["vllm_xargs"]) == {key}
    assert metrics["engine"]["name"] == "vllm" and metrics["engine"]["plugin"] == plugin
    assert metrics["requests"]["accepted"] == len(sent)


def test_vllm_engine_streams_in_openai_shape(lm: steerlab.LM, shell: steerlab.LM, store: Path) -> None:
    fake = fake_vllm_app(PluginModel(lm, "vllm-lens"))
    body = {"max_tokens": 16, "steering": [{"vector": "happy", "coefficient": COEF}]}
    chat = {"messages": [{"role": "user", "content": "Tell me a story"}], **body}
    with hf_served(lm, store) as ref:
        want = post(ref, "/v1/completions", prompt=PROMPT, **body).json()
        want_chat = post(ref, "/v1/chat/completions", **chat).json()
    with vllm_served(shell, store, fake) as client:
        full = post(client, "/v1/completions", prompt=PROMPT, **body).json()
        chunks = sse(
            post(client, "/v1/completions", prompt=PROMPT, stream=True, stream_options={"include_usage": True}, **body)
        )
        chat_full = post(client, "/v1/chat/completions", **chat).json()
        chat_chunks = sse(post(client, "/v1/chat/completions", stream=True, **chat))
    assert full["object"] == "text_completion" and full["choices"][0]["text"] == want["choices"][0]["text"]
    assert full["usage"] == want["usage"]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == full["choices"][0]["text"]
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["text"]]) > 3  # streamed in pieces
    assert chunks[-1]["usage"] == full["usage"]
    assert chat_full["object"] == "chat.completion"
    assert chat_full["choices"][0]["message"]["content"] == want_chat["choices"][0]["message"]["content"]
    assert chat_chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chat_chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chat_chunks)
    assert text == chat_full["choices"][0]["message"]["content"]
    assert chat_chunks[-1]["choices"][0]["finish_reason"] == chat_full["choices"][0]["finish_reason"]


def _error(r: Any) -> tuple[int, str | None, str | None]:
    e = r.json()["error"]
    return r.status_code, e["code"], e["param"]


def test_vllm_engine_validates_like_the_transformers_engine(lm: steerlab.LM, shell: steerlab.LM, store: Path) -> None:
    bad = [
        {"prompt": "x", "steering": [{"vector": "nope"}]},
        {"prompt": "x", "steering": [{"vector": "happy", "coefficient": 99}]},
        {"prompt": "x", "steering": [{"vector": "happy", "layers": [0]}]},
        {"prompt": "x", "steering": [{"vector": "love", "positions": "all"}]},
        {"prompt": "x", "max_tokens": 999},
        {"prompt": "x", "steering": [{"vector": "happy", "operator": "bogus"}]},
    ]
    with hf_served(lm, store) as ref:
        want = [_error(post(ref, "/v1/completions", **b)) for b in bad]
    fake = fake_vllm_app(PluginModel(lm, "vllm-lens"))
    with vllm_served(shell, store, fake) as client:
        got = [_error(post(client, "/v1/completions", **b)) for b in bad]
    assert got == want
    assert not fake.state.received  # nothing reached vLLM


def test_vllm_engine_refuses_what_the_plugin_cannot_do(
    lm: steerlab.LM, shell: steerlab.LM, store: Path, tmp_path: Path
) -> None:
    hw_dir = tmp_path / "hw"
    for name in ("happy", "dog"):
        hotwire.write(SteeringVector.load(store / name), hw_dir, name=name)
    fake = fake_vllm_app(PluginModel(lm, "hotwire", hotwire_dir=hw_dir))
    cases = [
        ([{"vector": "happy", "positions": "prompt"}], (400, "unsupported_positions", "steering[0]")),
        ([{"vector": "dog"}, {"vector": "love"}], (400, "tokenwise_vector", "steering[1]")),
        ([{"vector": "happy"}, {"vector": "dog"}], (400, "layer_conflict", "steering[1]")),
        ([{"vector": "happy", "operator": "ablate"}], (400, "unsupported_by_plugin", "steering[0]")),
        ([{"vector": "edge"}], (400, "vector_not_exported", "steering")),
    ]
    with vllm_served(shell, store, fake, "hotwire", hotwire_dir=hw_dir) as client:
        for steering, want in cases:
            r = post(client, "/v1/completions", prompt="x", steering=steering)
            assert _error(r) == want, r.text
            assert "hotwire" in r.json()["error"]["message"]
        assert (
            post(
                client,
                "/v1/completions",
                prompt="x",
                max_tokens=2,
                steering=[{"vector": "happy", "operator": "ablate", "coefficient": 0}],
            ).status_code
            == 400
        )
    assert not fake.state.received
    lens = fake_vllm_app(PluginModel(lm, "vllm-lens"))
    cases = [  # vllm-lens 1.3.0 places position-specific steering wrongly: refused, saying why
        ([{"vector": "happy", "positions": "generated"}], (400, "unsupported_positions", "steering[0]")),
        (
            [{"vector": "dog"}, {"vector": "happy", "positions": "prompt"}],
            (400, "unsupported_positions", "steering[1]"),
        ),
        ([{"vector": "happy", "positions": [3, 9]}], (400, "unsupported_positions", "steering[0]")),
        ([{"vector": "love", "coefficient": 6.0}], (400, "tokenwise_vector", "steering[0]")),
        ([{"vector": "happy", "operator": "clamp"}], (400, "unsupported_by_plugin", "steering[0]")),
    ]
    with vllm_served(shell, store, lens) as client:
        for steering, want in cases:
            r = post(client, "/v1/completions", prompt="The cat", max_tokens=4, steering=steering)
            assert _error(r) == want, r.text
            message = r.json()["error"]["message"]
            assert "vllm-lens" in message
            if want[1] != "unsupported_by_plugin":
                assert "seq_lens" in message and "position 0" in message, message
    assert not lens.state.received


def test_vllm_engine_reports_vllm_failures(shell: steerlab.LM, store: Path) -> None:
    def down(request: Any) -> Any:
        raise httpx.ConnectError("connection refused", request=request)

    def refuses(request: Any) -> Any:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        return httpx.Response(400, json={"error": {"message": "This model's maximum context length is 8"}})

    with vllm_served(shell, store, None, transport=httpx.MockTransport(down)) as client:
        r = post(client, "/v1/completions", prompt="x", max_tokens=2)
        assert _error(r) == (502, "vllm_unreachable", None) and "cannot be reached" in r.text
        assert client.get("/metrics?format=json", headers=AUTH).json()["requests"]["vllm_errors"] == 1
        chunks = [ln for ln in post(client, "/v1/completions", prompt="x", stream=True).text.splitlines() if ln]
        assert json.loads(chunks[-2][6:])["error"]["code"] == "vllm_unreachable" and chunks[-1] == "data: [DONE]"
    with vllm_served(shell, store, None, transport=httpx.MockTransport(refuses)) as client:
        r = post(client, "/v1/completions", prompt="x", max_tokens=2)
        assert _error(r) == (400, "vllm_refused", None) and "maximum context length" in r.text


def test_vllm_engine_over_real_http(lm: steerlab.LM, shell: steerlab.LM, store: Path, reference: list[Any]) -> None:
    """vLLM as a real uvicorn server on a port: ``--vllm-url`` with no test transport."""
    from .test_serve import ServerThread

    fake = fake_vllm_app(PluginModel(lm, "vllm-lens"))
    with ServerThread(fake) as srv, vllm_served(shell, store, None, url=srv.url + "/v1", transport=None) as client:
        assert answers(client, REQUESTS[:2]) == reference[:2]


class FakeLLM:
    """``vllm.LLM`` at its boundary: ``generate(prompts, sampling_params, use_tqdm)`` with the plugin
    reading ``SamplingParams.extra_args``."""

    def __init__(self, pm: PluginModel) -> None:
        self.pm = pm
        self.calls: list[list[Any]] = []
        self.prompts: list[dict[str, Any]] = []

    def generate(self, prompts: list[dict[str, Any]], params: list[Any], use_tqdm: bool = True) -> list[Any]:
        self.calls.append(params)
        self.prompts.extend(prompts)
        tok = self.pm.lm.tokenizer
        outs = []
        for p, sp in zip(prompts, params):
            assert sp.kwargs["temperature"] == 0.0
            ids = [
                t
                for t in self.pm.generate(p["prompt_token_ids"], sp.kwargs["max_tokens"], sp.extra_args)
                if t != tok.eos_token_id
            ]
            out = type(
                "Out",
                (),
                {
                    "text": tok.decode(ids, skip_special_tokens=True),
                    "token_ids": ids,
                    "finish_reason": "length" if len(ids) == sp.kwargs["max_tokens"] else "stop",
                },
            )
            outs.append(type("RequestOutput", (), {"outputs": [out]}))
        return outs


class FakeSamplingParams:
    def __init__(self, extra_args: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.extra_args = extra_args
        self.kwargs = kwargs


def test_vllm_engine_in_process(lm: steerlab.LM, shell: steerlab.LM, store: Path, reference: list[Any]) -> None:
    from steerlab.serve.engines.vllm_backends import InProcessBackend

    llm = FakeLLM(PluginModel(lm, "vllm-lens"))
    backend = InProcessBackend(llm, FakeSamplingParams, max_batch=8)
    with vllm_served(shell, store, None, url=None, transport=None, backend=backend) as client:
        got = answers(client, REQUESTS[:3])
    assert got == reference[:3]
    extra = llm.calls[1][0].extra_args
    assert set(extra) == {vllm_lens.XARG} and lens_decode(extra[vllm_lens.XARG])
    assert sum(len(c) for c in llm.calls[2:]) == 4  # the four choices (batched as they arrive)
    assert "cache_salt" not in llm.prompts[0] and llm.prompts[1]["cache_salt"].startswith("steerlab-")


def test_cli_serve_engine_vllm(shell: steerlab.LM, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from steerlab.cli import app as cli
    from steerlab.serve.engines import vllm as vllm_engine

    seen: dict[str, Any] = {}

    def fake_run(api: Any, host: str, port: int, log_level: str) -> None:
        seen["app"] = api
        api.state.server.engine.close()

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setattr(vllm_engine, "load_shell", lambda *a, **k: shell)
    r = CliRunner().invoke(
        cli,
        [
            "--json",
            "serve",
            "--model",
            str(STORIES),
            "--vectors",
            str(store),
            "--engine",
            "vllm",
            "--vllm-url",
            "http://127.0.0.1:9",
            "--vllm-plugin",
            "hotwire",
            "--hotwire-slots",
            "64",
        ],
    )
    assert r.exit_code == 0, r.output
    engine = seen["app"].state.server.engine
    assert isinstance(engine, vllm_engine.VLLMEngine) and engine.translator.plugin == "hotwire"
    assert engine.translator.hotwire_slots == 64 and engine.backend.description == "http://127.0.0.1:9"
    assert json.loads(r.output)["engine"] == "vllm (hotwire, http://127.0.0.1:9)"
    r = CliRunner().invoke(cli, ["serve", "--engine", "sglang"])
    assert r.exit_code != 0 and "--engine" in r.output
    if importlib.util.find_spec("vllm") is None:  # no --vllm-url: a vllm.LLM in this process needs vLLM
        r = CliRunner().invoke(cli, ["serve", "--model", str(STORIES), "--vectors", str(store), "--engine", "vllm"])
        assert r.exit_code == 1 and "vLLM is not installed" in r.output and "--vllm-url" in r.output


def test_playground_against_the_vllm_engine(lm: steerlab.LM, shell: steerlab.LM, store: Path, tmp_path: Path) -> None:
    """The page only talks to steerlab's API: it works the same with vLLM behind it."""
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    from steerlab.serve import ServeSettings, create_app
    from steerlab.serve.engines.vllm import VLLMOptions, engine_factory

    from .test_playground import CHROMIUM_ARGS
    from .test_serve import ServerThread

    prompt = "Once upon a time"
    want_base = steerlab.generate(lm, prompt, max_new_tokens=24)[0]
    want_steer = steerlab.generate(
        lm, prompt, steering=Steering(SteeringVector.load(store / "happy"), 4.0), max_new_tokens=24
    )[0]
    fake = fake_vllm_app(PluginModel(lm, "vllm-lens"))
    options = VLLMOptions(url="http://vllm.test", transport=httpx.ASGITransport(app=fake))
    app = create_app(shell, store, ServeSettings(api_key=KEY), engine=engine_factory(options))
    with ServerThread(app) as srv, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{srv.url}/")
            page.fill("#api-key", KEY)
            page.press("#api-key", "Tab")
            page.wait_for_selector("[data-vector=happy] input[type=range]")
            page.fill("#prompt", prompt)
            page.fill("#max-tokens", "24")
            page.eval_on_selector(
                "[data-vector=happy] input[type=range]",
                "el => { el.value = '4'; el.dispatchEvent(new Event('input')); }",
            )
            page.click("#generate")
            page.wait_for_function(
                "['status-base', 'status-steer']"
                ".every(id => document.getElementById(id).textContent.startsWith('done'))",
                timeout=60_000,
            )
            assert page.inner_text("#out-base") == prompt + want_base
            assert page.inner_text("#out-steer") == prompt + want_steer
            assert not errors, errors
        finally:
            browser.close()
    assert want_base != want_steer and len(fake.state.received) == 2


class SlowBackend:
    """A vLLM that takes 10 ms per piece of text, for the engine's own bookkeeping."""

    description = "slow"

    def __init__(self) -> None:
        self.closed = False

    async def stream(self, job: Any, xargs: dict[str, str]) -> Any:
        from steerlab.serve.engines.vllm_backends import Piece

        for _ in range(job.params.max_tokens):
            await asyncio.sleep(0.01)
            yield Piece("x")
        yield Piece(finish_reason="length", tokens=job.params.max_tokens)

    async def aclose(self) -> None:
        self.closed = True


def test_vllm_engine_queue_cancel_timeout_close(shell: steerlab.LM, store: Path) -> None:
    from steerlab.serve import ServeSettings
    from steerlab.serve.engines.base import QueueFull
    from steerlab.serve.engines.vllm import VLLMEngine, VLLMOptions
    from steerlab.serve.jobs import Delta, Done, Failed, GenParams, Job

    backend = SlowBackend()
    engine = VLLMEngine(shell, ServeSettings(max_batch=1, max_queue=2), _Store({}), VLLMOptions(backend=backend))

    async def scenario() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        queues = [asyncio.Queue() for _ in range(5)]
        jobs = [
            Job([1, 2], None, GenParams(max_tokens=m), loop, q, index=i)
            for i, (m, q) in enumerate(zip([3, 1000, 1000, 1000, 3], queues))
        ]
        engine.submit([jobs[0]])
        await until(lambda: jobs[0].finished)
        done = [e for e in _drain(queues[0]) if isinstance(e, Done)]
        engine.submit([jobs[1], jobs[2]])  # one runs (max_batch=1), one waits
        await until(lambda: (engine.running(), engine.queue_length()) == (1, 1))
        state = (engine.running(), engine.queue_length())
        with pytest.raises(QueueFull):
            engine.submit([jobs[3], jobs[4]])  # max_queue=2: 1 waiting + 2 > 2
        await asyncio.sleep(0.05)
        engine.cancel(jobs[2])  # waiting
        engine.cancel(jobs[1])  # running
        await until(lambda: (engine.running(), engine.queue_length()) == (0, 0))
        after = (engine.running(), engine.queue_length())
        timed = Job([1], None, GenParams(max_tokens=1000), loop, queues[3], deadline=time.monotonic() + 0.1)
        engine.submit([timed])
        await until(lambda: timed.finished)
        long = Job([1], None, GenParams(max_tokens=1000), loop, queues[4])
        engine.submit([long])
        await until(lambda: engine.running() == 1)
        engine.close()
        await until(lambda: long.finished)
        await asyncio.sleep(0.01)
        return {
            "done": done,
            "state": state,
            "after": after,
            "cancelled": [list(_drain(q)) for q in queues[1:3]],
            "timed": list(_drain(queues[3])),
            "closed": list(_drain(queues[4])),
            "long": long,
        }

    out = asyncio.run(scenario())
    assert out["done"] and out["done"][0].text == "xxx" and out["done"][0].completion_tokens == 3
    assert out["state"] == (1, 1) and out["after"] == (0, 0)
    assert not any(isinstance(e, (Done, Failed)) for evs in out["cancelled"] for e in evs)
    assert any(isinstance(e, Delta) for e in out["cancelled"][0])  # it was running
    assert [(e.status, e.code) for e in out["timed"] if isinstance(e, Failed)] == [(504, "timeout")]
    assert [(e.status, e.code) for e in out["closed"] if isinstance(e, Failed)] == [(503, "server_shutdown")]
    snap = engine.snapshot()
    assert snap["requests"]["cancelled"] == 2 and snap["requests"]["timed_out"] == 1
    assert snap["requests"]["rejected"] == 1 and snap["engine"]["backend"] == "slow"
    assert backend.closed and not engine.alive
    with pytest.raises(QueueFull):
        engine.submit([out["long"]])


async def until(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


def _drain(q: asyncio.Queue[Any]) -> Iterator[Any]:
    while not q.empty():
        yield q.get_nowait()
