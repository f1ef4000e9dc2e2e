"""Every architecture in ``steerlab.models.layers.ARCHITECTURES``, on tiny random-weight models built offline.

Each model has 3 blocks, a 32-wide residual stream and the stories260K tokenizer (vocab 512). Per
architecture: the block table finds the blocks, extraction works, coefficient 0 is bit-identical,
leaving ``steer`` removes every hook, and steered greedy generation with the KV cache equals the
no-cache recompute (left padding, prompts of different lengths; sliding windows of 8 tokens where
the architecture has them). The multimodal ``gemma3`` row is checked on a tiny
Gemma3ForConditionalGeneration.
"""

from __future__ import annotations

import importlib
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

import steerlab
from steerlab import Steering
from steerlab.models.layers import ARCHITECTURES, find_blocks
from steerlab.models.tokens import common_prefix_length
from steerlab.runtime.generate import encode
from steerlab.runtime.passes import sliding_window

STORIES = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "stories260K"

N_LAYERS = 3
D_MODEL = 32
VOCAB = 512
# bos=1, eos=2 as in the stories260K tokenizer; pad = eos (what wrap_model sets). An untied lm_head:
# a random model with tied embeddings mostly repeats its last token, which makes greedy generation
# (and so the cache == recompute check) nearly trivial.
IDS = {"vocab_size": VOCAB, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "tie_word_embeddings": False}
LLAMA_DIMS = {
    "hidden_size": D_MODEL,
    "intermediate_size": 64,
    "num_hidden_layers": N_LAYERS,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}


def _config(model_type: str) -> Any:
    """A tiny config of ``model_type`` (3 blocks, d_model 32, vocab 512)."""
    t = transformers
    if model_type == "gpt2":
        return t.GPT2Config(n_layer=N_LAYERS, n_embd=D_MODEL, n_head=4, n_positions=128, **IDS)
    if model_type == "gpt_neo":
        return t.GPTNeoConfig(
            num_layers=N_LAYERS,
            hidden_size=D_MODEL,
            num_heads=4,
            intermediate_size=64,
            attention_types=[[["global", "local", "global"], 1]],
            window_size=8,  # shorter than prompt + generation: the local layer really slides
            max_position_embeddings=128,
            **IDS,
        )
    if model_type == "gpt_neox":
        return t.GPTNeoXConfig(
            hidden_size=D_MODEL,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=128,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
            **IDS,
        )
    if model_type == "llama":
        return t.LlamaConfig(**LLAMA_DIMS, **IDS)
    if model_type == "mistral":
        return t.MistralConfig(**LLAMA_DIMS, sliding_window=8, **IDS)
    if model_type == "qwen2":
        return t.Qwen2Config(**LLAMA_DIMS, **IDS)
    if model_type == "qwen3":
        return t.Qwen3Config(**LLAMA_DIMS, head_dim=8, **IDS)
    if model_type == "gemma":
        return t.GemmaConfig(**LLAMA_DIMS, head_dim=8, **IDS)
    if model_type == "gemma2":
        return t.Gemma2Config(**LLAMA_DIMS, head_dim=8, query_pre_attn_scalar=8, sliding_window=8, **IDS)
    if model_type == "gemma3_text":
        return t.Gemma3TextConfig(
            **LLAMA_DIMS,
            head_dim=8,
            query_pre_attn_scalar=8,
            sliding_window=8,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            **IDS,
        )
    if model_type == "phi3":
        return t.Phi3Config(**LLAMA_DIMS, original_max_position_embeddings=128, **IDS)
    if model_type == "opt":
        return t.OPTConfig(
            hidden_size=D_MODEL,
            word_embed_proj_dim=D_MODEL,
            ffn_dim=64,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            max_position_embeddings=128,
            **IDS,
        )
    raise AssertionError(f"no tiny config for {model_type}")


TEXT_TYPES = sorted(t for t in ARCHITECTURES if t != "gemma3")

PAIRS = steerlab.pairs_from_lists(
    ["Lily was happy and loved the sun", "The dog was very happy", "Tom smiled"],
    ["Lily was sad and hated the rain", "The dog was very sad", "Tom cried"],
)
PROMPTS = ["Once upon a time, there was a little girl", "The cat"]
PREFIX = "Once upon a time, in a big forest, "  # shared by the texts of the shared-prefix check
capture_mod = importlib.import_module("steerlab.extraction.capture")  # 13 and 4 tokens: left padding


@dataclass
class Arch:
    lm: steerlab.LM
    vec: steerlab.SteeringVector
    coef: float
    """Coefficient that adds half the typical residual norm at layer 1: changes the output of a
    random model without collapsing it onto one repeated token."""
    plain: tuple[list[str], list[list[int]]] | None = None
    """Unsteered greedy generation (texts, token ids), computed once."""


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    tok = AutoTokenizer.from_pretrained(str(STORIES))
    tok.pad_token = tok.eos_token
    return tok


def _build(config: Any, tokenizer: Any, model_id: str, blocks: str | None = None) -> steerlab.LM:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return steerlab.wrap_model(model.float().eval(), tokenizer, model_id=model_id, blocks=blocks)


def _arch(lm: steerlab.LM) -> Arch:
    vec = steerlab.extract(lm, PAIRS, method="mean_diff", layers=[1, 2])
    h = steerlab.capture(lm, PROMPTS, [1], reads="mean")[1]
    return Arch(lm, vec, 0.5 * float(h.norm(dim=-1).mean()) / float(vec.directions[1].norm()))


@pytest.fixture(scope="module", params=TEXT_TYPES)
def arch(request: pytest.FixtureRequest, tokenizer: Any) -> Arch:
    lm = _build(_config(request.param), tokenizer, request.param)
    assert lm.model_type == request.param
    return _arch(lm)


def _logits(lm: steerlab.LM, texts: list[str]) -> torch.Tensor:
    ids, mask = encode(lm, texts, "left")
    with torch.inference_mode():
        return lm.model(input_ids=ids, attention_mask=mask).logits


def _hooks(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def _generate(lm: steerlab.LM, steering: Steering | None, **kwargs: Any) -> tuple[list[str], list[list[int]]]:
    """``steerlab.generate`` (greedy, 6 tokens) plus the token ids that HF generate returned (two
    different byte tokens can decode to the same replacement character)."""
    seen: list[list[int]] = []
    hf_generate = lm.model.generate

    def recording(*args: Any, **kw: Any) -> Any:
        out = hf_generate(*args, **kw)
        seen.extend(out.tolist())
        return out

    with mock.patch.object(lm.model, "generate", recording):
        texts = steerlab.generate(lm, PROMPTS, steering=steering, max_new_tokens=6, **kwargs)
    assert len(seen) == len(PROMPTS)
    return texts, seen


def _check_blocks_and_extract(a: Arch) -> None:
    assert len(a.lm.blocks) == a.lm.n_layers == N_LAYERS
    assert a.lm.d_model == D_MODEL
    assert a.vec.layers == [1, 2]
    for layer in (1, 2):
        v = a.vec.directions[layer]
        assert v.shape == (D_MODEL,)
        assert torch.isfinite(v).all() and v.norm() > 0


def _check_zero_and_exit(a: Arch) -> None:
    """Coefficient 0 is bit-identical; a real coefficient bites; leaving steer leaves nothing."""
    lm, vec = a.lm, a.vec
    base = _logits(lm, PROMPTS)
    assert torch.isfinite(base).all()
    with steerlab.steer(lm, Steering(vec, 0.0)):
        assert torch.equal(_logits(lm, PROMPTS), base)
    with steerlab.steer(lm, Steering(vec, a.coef)):
        assert _hooks(lm.model) > 0
        steered = _logits(lm, PROMPTS)
    assert not torch.allclose(steered, base)
    assert _hooks(lm.model) == 0
    assert torch.equal(_logits(lm, PROMPTS), base)


def _check_kv_cache(a: Arch, positions: str | None) -> None:
    """Greedy generation with the KV cache equals the no-cache recompute (``None``: unsteered, a
    reference for the architecture itself)."""
    if a.plain is None:
        a.plain = _generate(a.lm, None)
    plain = a.plain
    if positions is None:
        assert _generate(a.lm, None, use_cache=False) == plain
        return
    s = Steering(a.vec, a.coef, positions=positions)
    cached = _generate(a.lm, s, use_cache=True)
    assert _generate(a.lm, s, use_cache=False) == cached
    assert cached[1] != plain[1], f"steering at positions={positions!r} did not change the generation"
    assert _hooks(a.lm.model) == 0


def _cached_passes(a: Arch, texts: list[str]) -> int:
    """Capture ``texts`` with and without shared prefixes, both padding sides, reads at the last
    token and the mean, sharing as planned and wherever it can (a pass that costs nothing: every
    run of tokens continues from its parent's cache); assert equal activations; return how many
    passes continued from a cache (when some did, fewer tokens ran than the texts hold)."""
    passes = []
    real = capture_mod._run_pass

    def run_pass(lm: steerlab.LM, plan: Any, p: int, *rest: Any) -> Any:
        passes.append(plan.passes[p])
        return real(lm, plan, p, *rest)

    planned = capture_mod.pass_cost
    with mock.patch.object(capture_mod, "_run_pass", run_pass):
        for side, read, cost in itertools.product(("right", "left"), ("last", "mean"), (planned, lambda lm: 0)):
            full = steerlab.capture(a.lm, texts, [0, 2], read, padding_side=side, share_prefix=False)
            with mock.patch.object(capture_mod, "pass_cost", cost):
                shared = steerlab.capture(a.lm, texts, [0, 2], read, padding_side=side, share_prefix=True)
            for k in full:
                # float noise: prefix-shared passes vs one full forward; measured max |difference| 2.1e-6 on every
                # architecture (AVX512, AVX2, default kernels): >= 66x margin
                torch.testing.assert_close(shared[k], full[k], atol=1e-4, rtol=1e-4)
    cached = sum(p.cached for p in passes)
    if cached:
        tokens = sum(len(x) for x in a.lm.tokenizer(texts)["input_ids"])
        with mock.patch.object(capture_mod, "pass_cost", lambda lm: 0):
            assert capture_mod.plan_capture(a.lm, texts, "mean").n_computed < tokens
    return cached


def _check_shared_prefix(a: Arch) -> None:
    """Capture with each distinct prefix run once equals running every token. Texts longer than a
    sliding window run in full (that cache keeps only the window); shorter ones share."""
    texts = [PREFIX + t for t in ("happy days are here", "a sad story", "the cat sat", "it was rainy and cold")]
    texts += [texts[0], texts[1][: len(PREFIX) + 5]]  # a duplicate, a prefix of another text
    ids = a.lm.tokenizer(texts)["input_ids"]
    assert common_prefix_length(ids) >= 4
    window = sliding_window(a.lm.model.config)
    fits = window is None or max(len(x) for x in ids) <= window
    assert (_cached_passes(a, texts) > 0) == fits
    if not fits:
        short = ["Once upon a time a", "Once upon a time the", "Once upon a time it"]
        assert max(len(x) for x in a.lm.tokenizer(short)["input_ids"]) <= window
        assert _cached_passes(a, short) > 0
    else:
        # contrast pairs that differ only in their last word, and share a story opening
        stems = ("Once upon a time there was a big dog named", "Once upon a time the cat sat on a mat and")
        pairs = [f"{stem} {end}" for stem in stems for end in ("Tom", "Sue")]
        assert _cached_passes(a, pairs) > 0


def test_blocks_and_extract(arch: Arch) -> None:
    _check_blocks_and_extract(arch)


def test_shared_prefix_equals_full_forward(arch: Arch) -> None:
    _check_shared_prefix(arch)


def test_zero_is_identical_and_exit_leaves_nothing(arch: Arch) -> None:
    _check_zero_and_exit(arch)


@pytest.mark.parametrize("positions", [None, "all", "generated"], ids=["unsteered", "all", "generated"])
def test_kv_cache_equals_recompute(arch: Arch, positions: str | None) -> None:
    _check_kv_cache(arch, positions)


def test_gemma3_multimodal(tokenizer: Any) -> None:
    """The ``gemma3`` row: Gemma3ForConditionalGeneration, blocks under model.language_model."""
    text = {k: v for k, v in _config("gemma3_text").to_dict().items() if k in transformers.Gemma3TextConfig().to_dict()}
    vision = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 16,
        "patch_size": 4,
    }
    config = transformers.Gemma3Config(text_config=text, vision_config=vision, tie_word_embeddings=False)
    lm = _build(config, tokenizer, "gemma3")
    assert type(lm.model).__name__ == "Gemma3ForConditionalGeneration"
    assert lm.model_type == "gemma3"
    assert lm.blocks is lm.model.model.language_model.layers
    a = _arch(lm)
    _check_blocks_and_extract(a)
    _check_zero_and_exit(a)
    _check_shared_prefix(a)
    for positions in (None, "all", "generated"):
        _check_kv_cache(a, positions)


def test_unknown_architecture_needs_blocks(tokenizer: Any) -> None:
    class Weird(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = transformers.PretrainedConfig()
            self.config.model_type = "weird"
            self.stack = torch.nn.ModuleList([torch.nn.Linear(4, 4)])

    with pytest.raises(steerlab.UnsupportedArchitectureError, match="blocks="):
        find_blocks(Weird())
    with pytest.raises(steerlab.UnsupportedArchitectureError, match="blocks="):
        find_blocks(Weird(), blocks="nowhere.layers")
    assert len(find_blocks(Weird(), blocks="stack")) == 1

    config = _config("llama")
    config.model_type = "weird"  # a llama the table does not know
    with pytest.raises(steerlab.UnsupportedArchitectureError, match="blocks="):
        _build(config, tokenizer, "weird")
    lm = _build(config, tokenizer, "weird", blocks="model.layers")
    assert lm.model_type == "weird"
    assert lm.n_layers == N_LAYERS and lm.blocks is lm.model.model.layers
    a = _arch(lm)
    base = _logits(lm, PROMPTS)
    with steerlab.steer(lm, Steering(a.vec, a.coef)):
        assert not torch.allclose(_logits(lm, PROMPTS), base)
    assert _hooks(lm.model) == 0
    assert torch.equal(_logits(lm, PROMPTS), base)
