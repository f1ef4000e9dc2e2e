"""``steerlab.export.bake``: steering folded into weights, loaded back with plain transformers.

Round trips on tiny random models (3 blocks, d_model 32, the stories260K tokenizer) of the main
architectures, on stories260K (real weights, tied embeddings), on the default model (slow) and
through the CLI; every refusal names its reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

import steerlab
from steerlab import Steering, SteeringVector
from steerlab.export.bake import BAKE_INFO, BakeArchitectureError, BakeError, bake, runtime_equivalent
from steerlab.runtime.generate import encode

from .conftest import STORIES, param_hash

PROMPTS = ["Once upon a time, there was a little girl", "The cat", "Tom and his mom went to the park and"]
PAIRS = steerlab.pairs_from_lists(
    ["Lily was happy and loved the sun", "The dog was very happy", "Tom smiled"],
    ["Lily was sad and hated the rain", "The dog was very sad", "Tom cried"],
)
IDS: dict[str, Any] = {"vocab_size": 512, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
LLAMA_DIMS: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}


def _config(kind: str) -> Any:
    """A tiny config; ``*_tied`` variants tie lm_head to the token embeddings."""
    t = transformers
    tied = kind.endswith("_tied")
    ids: dict[str, Any] = {**IDS, "tie_word_embeddings": tied}
    kind = kind.removesuffix("_tied")
    if kind == "gpt2":
        return t.GPT2Config(n_layer=3, n_embd=32, n_head=4, n_positions=128, **ids)
    if kind == "llama":
        return t.LlamaConfig(**LLAMA_DIMS, **ids)
    if kind == "qwen2":
        return t.Qwen2Config(**LLAMA_DIMS, **ids)
    if kind == "mistral":
        return t.MistralConfig(**LLAMA_DIMS, sliding_window=None, **ids)
    if kind == "mistral_sliding":
        return t.MistralConfig(**LLAMA_DIMS, sliding_window=8, **ids)
    if kind == "phi3":
        return t.Phi3Config(**LLAMA_DIMS, original_max_position_embeddings=128, **ids)
    if kind == "gemma2":
        return t.Gemma2Config(**LLAMA_DIMS, head_dim=8, query_pre_attn_scalar=8, sliding_window=8, **ids)
    if kind == "opt":
        return t.OPTConfig(
            hidden_size=32, word_embed_proj_dim=32, ffn_dim=64, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=128, **ids,
        )  # fmt: skip
    if kind == "gpt_neox":
        return t.GPTNeoXConfig(
            hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=128, **ids,
        )  # fmt: skip
    raise AssertionError(kind)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    tok = AutoTokenizer.from_pretrained(str(STORIES))
    tok.pad_token = tok.eos_token
    return tok


_CACHE: dict[str, steerlab.LM] = {}


def tiny(kind: str, tokenizer: Any) -> steerlab.LM:
    if kind not in _CACHE:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(_config(kind), dtype=torch.float32)
        _CACHE[kind] = steerlab.wrap_model(model.eval(), tokenizer, model_id=kind)
    return _CACHE[kind]


def vector(lm: steerlab.LM, layers: list[int] | None = None) -> SteeringVector:
    """A mean-difference vector scaled so that it moves the block output by ~half its norm."""
    layers = list(range(lm.n_layers)) if layers is None else layers
    vec = steerlab.extract(lm, PAIRS, method="mean_diff", layers=layers)
    h = steerlab.capture(lm, PROMPTS, layers, reads="mean")
    return SteeringVector(
        {k: v * (0.5 * float(h[k].norm(dim=-1).mean()) / float(v.norm())) for k, v in vec.directions.items()},
        model_id=vec.model_id, d_model=vec.d_model, n_layers=vec.n_layers,
    )  # fmt: skip


def one_direction(lm: steerlab.LM, u: torch.Tensor) -> SteeringVector:
    """The same direction (with different scales and signs) at every layer."""
    return SteeringVector(
        {k: u * (k + 1) * (-1) ** k for k in range(lm.n_layers)},
        model_id=lm.model_id, d_model=lm.d_model, n_layers=lm.n_layers,
    )  # fmt: skip


def _logits(model: Any, lm: steerlab.LM, texts: list[str] = PROMPTS) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = encode(lm, texts, "left")
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask).logits
    return out, mask.bool()


def load_plain(path: Path) -> Any:
    """What a user without steerlab does: AutoModelForCausalLM.from_pretrained, nothing missing."""
    loaded: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, output_loading_info=True)
    model, info = loaded
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def assert_same_logits(baked: Any, lm: steerlab.LM, reference: Any, base: torch.Tensor | None = None) -> None:
    """Baked logits equal the reference (within float32 tolerance relative to their scale), on real
    (non-padding) positions; and the steering really changed them."""
    got, real = _logits(baked, lm)
    with reference:
        want, _ = _logits(lm.model, lm)
    scale = float(want[real].abs().max())
    err = float((got[real] - want[real]).abs().max())
    assert err <= 1e-5 * scale + 1e-5, f"baked vs runtime: max |diff| {err:.3g} (scale {scale:.3g})"
    if base is not None:
        assert float((want[real] - base[real]).abs().max()) > 100 * (err + 1e-6), "the steering did nothing"


# ------------------------------------------------------------------------------ additions
@pytest.mark.parametrize("kind", ["gpt2", "llama_tied", "qwen2", "mistral", "opt", "gpt_neox"])
def test_add_round_trip(kind: str, tokenizer: Any, tmp_path: Path) -> None:
    lm = tiny(kind, tokenizer)
    vec = vector(lm)
    steering = Steering(vec, 1.0, layers=[1, 2]) + Steering(vec, -0.5, layers=[0, 1])  # composed
    before = param_hash(lm)
    base, _ = _logits(lm.model, lm)
    out = bake(lm, steering, tmp_path / "baked")
    assert param_hash(lm) == before, "bake must not modify the model it reads"
    baked = load_plain(out)
    assert_same_logits(baked, lm, steerlab.steer(lm, steering), base)
    info = json.loads((out / BAKE_INFO).read_text())
    assert info["mode"] == "add" and info["layers"] == [0, 1, 2]
    assert info["source_model_type"] == kind.removesuffix("_tied")
    if kind in ("qwen2", "mistral"):  # no MLP bias switch: written as the equivalent Llama checkpoint
        assert type(baked).__name__ == "LlamaForCausalLM" and baked.config.mlp_bias
        assert info["config_changes"]["model_type"] == {"from": kind, "to": "llama"}
        assert baked.config.attention_bias == (kind == "qwen2")
        for layer in baked.model.layers:
            bias = layer.self_attn.o_proj.bias
            assert bias is None or not bias.any()
    assert (out / "tokenizer.json").is_file() or (out / "tokenizer.model").is_file()


def test_add_llama_bias_layout(tokenizer: Any, tmp_path: Path) -> None:
    """mlp_bias=True switches on gate/up/down biases: all zero except down_proj at steered layers."""
    lm = tiny("llama_tied", tokenizer)
    vec = vector(lm, [1])
    out = bake(lm, Steering(vec, 2.0), tmp_path / "b")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["mlp_bias"] is True and cfg["attention_bias"] is False and cfg["model_type"] == "llama"
    baked = load_plain(out)
    for k, layer in enumerate(baked.model.layers):
        assert not layer.mlp.gate_proj.bias.any() and not layer.mlp.up_proj.bias.any()
        want = 2.0 * vec.directions[1] if k == 1 else torch.zeros(lm.d_model)
        torch.testing.assert_close(layer.mlp.down_proj.bias.detach(), want)
    assert baked.lm_head.weight is baked.model.embed_tokens.weight  # additions keep tied embeddings


def test_add_generation_matches(tokenizer: Any, tmp_path: Path) -> None:
    """positions='all' includes generated tokens: greedy generation with the KV cache agrees."""
    lm = tiny("llama", tokenizer)  # untied: a tied random model mostly repeats its last token
    steering = Steering(vector(lm), 2.0, layers=[1])
    baked = load_plain(bake(lm, steering, tmp_path / "b"))
    ids, mask = encode(lm, PROMPTS, "left")
    kw: dict[str, Any] = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 2}
    with torch.inference_mode():
        plain = lm.model.generate(input_ids=ids, attention_mask=mask, **kw)
        with steerlab.steer(lm, steering):
            steered = lm.model.generate(input_ids=ids, attention_mask=mask, **kw)
        got = baked.generate(input_ids=ids, attention_mask=mask, **kw)
    assert torch.equal(got, steered)
    assert not torch.equal(steered, plain)


def test_stories260k_round_trip(lm: steerlab.LM, vec: SteeringVector, tmp_path: Path) -> None:
    """Real weights (tied embeddings, no MLP bias) through a bf16-free float32 round trip."""
    steering = Steering(vec, 4.0, layers=[1, 2])
    base, _ = _logits(lm.model, lm)
    baked = load_plain(bake(lm, steering, tmp_path / "b"))
    assert_same_logits(baked, lm, steerlab.steer(lm, steering), base)


@pytest.mark.slow
def test_default_model_round_trip(tmp_path: Path) -> None:
    lm = steerlab.load_model("default")
    pairs = steerlab.persona_pairs("happy", "sad", ["That game", "I can see", "The weather today"])
    vec = steerlab.extract(lm, pairs, method="mean_diff", layers=range(8, 20))
    steering = Steering(vec, 4.0)
    base, _ = _logits(lm.model, lm, ["Tell me about your day.", "The movie was"])
    out = bake(lm, steering, tmp_path / "smol")
    baked = load_plain(out)
    got, real = _logits(baked, lm, ["Tell me about your day.", "The movie was"])
    with steerlab.steer(lm, steering):
        want, _ = _logits(lm.model, lm, ["Tell me about your day.", "The movie was"])
    scale = float(want[real].abs().max())
    assert float((got[real] - want[real]).abs().max()) <= 1e-4 * scale
    assert float((want[real] - base[real]).abs().max()) > 1.0


# ------------------------------------------------------------------------------ ablation
@pytest.mark.parametrize("kind", ["llama_tied", "gpt2_tied", "qwen2", "opt_tied"])
def test_ablate_round_trip(kind: str, tokenizer: Any, tmp_path: Path) -> None:
    lm = tiny(kind, tokenizer)
    u = vector(lm, [1]).directions[1]
    steering = Steering(one_direction(lm, u), 1.0, operator="ablate")
    base, _ = _logits(lm.model, lm)
    out = bake(lm, steering, tmp_path / "b")
    baked = load_plain(out)
    assert_same_logits(baked, lm, runtime_equivalent(lm, steering), base)
    # The residual stream of the baked model is orthogonal to u at every block input and output.
    ids, mask = encode(lm, PROMPTS, "left")
    with torch.inference_mode():
        hidden = baked(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    unit = u / u.norm()
    for h in hidden[:-1]:  # the last entry is after the final norm
        assert float((h[mask.bool()] @ unit).abs().max()) < 1e-4 * float(h.abs().max())
    # The output head is untouched (a tied head is untied, with the original weights).
    torch.testing.assert_close(baked.get_output_embeddings().weight, lm.model.get_output_embeddings().weight)
    assert baked.get_output_embeddings().weight is not baked.get_input_embeddings().weight
    info = json.loads((out / BAKE_INFO).read_text())
    assert info["mode"] == "ablate" and not info["approximate"]
    if kind.endswith("_tied"):
        assert info["config_changes"] == {"tie_word_embeddings": False}


def test_ablate_is_not_plain_per_layer_ablation(tokenizer: Any, tmp_path: Path) -> None:
    """Documented difference: runtime ablation at block outputs lets block 0 and the MLPs read u;
    orthogonalised weights do not. runtime_equivalent adds exactly those two points."""
    lm = tiny("llama_tied", tokenizer)
    steering = Steering(one_direction(lm, vector(lm, [1]).directions[1]), 1.0, operator="ablate")
    baked, _ = _logits(load_plain(bake(lm, steering, tmp_path / "b")), lm)
    with steerlab.steer(lm, steering):
        plain, real = _logits(lm.model, lm)
    assert float((baked[real] - plain[real]).abs().max()) > 1e-3


def test_ablate_needs_approximate(tokenizer: Any, tmp_path: Path) -> None:
    lm = tiny("llama_tied", tokenizer)
    vec = vector(lm)
    for steering, reason in [
        (Steering(vec, 1.0, layers=[1], operator="ablate"), "not on all 3 layers"),
        (Steering(vec, 1.0, operator="ablate"), "different directions"),
        (Steering(one_direction(lm, vec.directions[1]), 0.5, operator="ablate"), "coefficient=0.5"),
    ]:
        with pytest.raises(BakeError, match=reason) as err:
            bake(lm, steering, tmp_path / "x")
        assert "approximate=True" in str(err.value)
        assert not (tmp_path / "x").exists()
    out = bake(lm, Steering(vec, 1.0, layers=[1, 2], operator="ablate"), tmp_path / "approx", approximate=True)
    assert json.loads((out / BAKE_INFO).read_text())["approximate"] is True
    load_plain(out)
    with pytest.raises(BakeError):  # no exact runtime reference for an approximation
        with runtime_equivalent(lm, Steering(vec, 1.0, layers=[1], operator="ablate")):
            pass


# ------------------------------------------------------------------------------ refusals
def test_refusals(tokenizer: Any, tmp_path: Path, actadd_vec: SteeringVector, lm: steerlab.LM) -> None:
    gemma = tiny("gemma2", tokenizer)
    gvec = vector(gemma, [1])
    with pytest.raises(BakeArchitectureError, match="post_feedforward_layernorm"):
        bake(gemma, Steering(gvec, 1.0), tmp_path / "g")
    with pytest.raises(BakeArchitectureError, match="post_feedforward_layernorm"):
        bake(gemma, Steering(one_direction(gemma, gvec.directions[1]), 1.0, operator="ablate"), tmp_path / "g")
    assert isinstance(BakeArchitectureError("x"), steerlab.UnsupportedArchitectureError)
    phi3 = tiny("phi3", tokenizer)
    with pytest.raises(BakeArchitectureError, match="no bias"):
        bake(phi3, Steering(vector(phi3, [1]), 1.0), tmp_path / "p")
    sliding = tiny("mistral_sliding", tokenizer)
    with pytest.raises(BakeArchitectureError, match="sliding-window"):
        bake(sliding, Steering(vector(sliding, [1]), 1.0), tmp_path / "m")

    with pytest.raises(BakeError, match="token-wise"):
        bake(lm, Steering(actadd_vec, 1.0), tmp_path / "t")
    vec = steerlab.extract(lm, PAIRS, method="mean_diff", layers=[1, 2])
    with pytest.raises(BakeError, match="positions='generated'"):
        bake(lm, Steering(vec, 1.0, positions="generated"), tmp_path / "t")
    with pytest.raises(BakeError, match="positions=\\(0, 4\\)"):
        bake(lm, Steering(vec, 1.0, positions=(0, 4)), tmp_path / "t")
    for op in ("clamp", "add_norm_preserving"):
        with pytest.raises(BakeError, match=f"operator='{op}'"):
            bake(lm, Steering(vec, 1.0, operator=op), tmp_path / "t")
    every = one_direction(lm, vec.directions[1])
    with pytest.raises(BakeError, match="additions and ablations together"):
        bake(lm, Steering(vec, 1.0) + Steering(every, 1.0, operator="ablate"), tmp_path / "t")
    with pytest.raises(BakeError, match="nothing to bake"):
        bake(lm, [], tmp_path / "t")
    assert not (tmp_path / "t").exists()
    assert all(issubclass(e, steerlab.SteeringError) for e in (BakeError, BakeArchitectureError))


def test_output_folder(lm: steerlab.LM, vec: SteeringVector, tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(BakeError, match="not empty"):
        bake(lm, Steering(vec, 1.0), busy)
    with pytest.raises(BakeError, match="not empty"):
        bake(lm, Steering(vec, 1.0), busy, overwrite=True)  # not an earlier bake: never deleted
    assert (busy / "notes.txt").read_text() == "mine"
    out = bake(lm, Steering(vec, 1.0), tmp_path / "b")
    bake(lm, Steering(vec, 2.0), out, overwrite=True)
    assert json.loads((out / BAKE_INFO).read_text())["steerings"][0]["coefficient"] == 2.0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left


# ------------------------------------------------------------------------------ CLI
def test_cli_export_bake(lm: steerlab.LM, vec: SteeringVector, tmp_path: Path) -> None:
    from steerlab.cli import app

    vec.save(tmp_path / "vec")
    out = tmp_path / "baked"
    runner = CliRunner()
    res = runner.invoke(app, ["export", "bake", "--help"])
    assert res.exit_code == 0 and "Example:" in res.output
    args = ["export", "bake", str(tmp_path / "vec"), str(out), "--model", str(STORIES)]
    res = runner.invoke(app, ["--json", *args, "--coef", "3", "--layers", "1-2"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["layers"] == [1, 2]
    assert (out / "run.json").is_file()
    steering = Steering(vec, 3.0, layers=[1, 2])
    assert_same_logits(load_plain(out), lm, steerlab.steer(lm, steering))
    vec_dir = str(tmp_path / "vec")
    model = ["--model", str(STORIES)]
    res = runner.invoke(app, ["--quiet", "export", "bake", vec_dir, str(tmp_path / "a"), *model, "--ablate"])
    assert res.exit_code == 1 and "approximate" in res.output  # the vector has layers 1-3 only: refused
    res = runner.invoke(app, ["--quiet", "export", "bake", vec_dir, str(tmp_path / "c"), *model])
    assert res.exit_code != 0 and "--coef" in res.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
