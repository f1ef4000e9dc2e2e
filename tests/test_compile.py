"""Steering inside torch.compile: the steered forward traces with fullgraph=True (no graph breaks —
what CUDA graphs need), and a decoding loop over a static KV cache under steering, compiled, gives
the tokens of eager decoding (prefill through the full path, one-token steps through the fast path)."""

from __future__ import annotations

import pytest
import torch

import steerlab
from steerlab import Steering
from steerlab.runtime import hf
from steerlab.runtime.generate import encode

from .conftest import PROMPTS

STEPS = 3


def _decode(lm: steerlab.LM, model, rows: list, static: bool) -> torch.Tensor:
    from transformers import StaticCache

    ids, mask = encode(lm, PROMPTS)
    length = ids.shape[1] + STEPS
    cache = StaticCache(config=lm.model.config, max_cache_len=length) if static else hf.new_cache(lm.model)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    x, out = ids, []
    with torch.inference_mode(), steerlab.steer_rows(lm, rows, prompt_length=mask.sum(-1)):
        for _ in range(STEPS):
            kwargs = hf.forward_kwargs(
                lm.model, input_ids=x, attention_mask=mask, position_ids=position, cache=cache, use_cache=True
            )
            nxt = model(**kwargs).logits[:, -1].argmax(-1, keepdim=True)
            out.append(nxt)
            x = nxt
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
            position = position[:, -1:] + 1
    return torch.cat(out, 1)


@pytest.mark.slow
def test_compiled_static_cache_decoding_equals_eager(lm, vec):
    rows = [
        Steering(vec, 3.0, positions="generated"),
        None,
        Steering(vec, 1.0, operator="ablate") + Steering(vec, -2.0, positions="prompt"),
    ]
    eager = _decode(lm, lm.model, rows, static=False)
    assert torch.equal(_decode(lm, lm.model, rows, static=True), eager)
    plain = _decode(lm, lm.model, [None] * 3, static=False)
    assert not torch.equal(eager[0], plain[0])
    torch._dynamo.reset()
    compiled = torch.compile(lm.model, fullgraph=True)  # any graph break raises
    try:
        assert torch.equal(_decode(lm, compiled, rows, static=True), eager)
    finally:
        torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("positions", ["all", "generated", (1, 4)])
def test_steered_forward_compiles_without_graph_breaks(lm, vec, positions):
    ids, mask = encode(lm, PROMPTS)
    with torch.inference_mode():
        plain = lm.model(input_ids=ids, attention_mask=mask).logits
        with steerlab.steer(lm, Steering(vec, 2.0, positions=positions), prompt_length=mask.sum(-1) - 1):
            eager = lm.model(input_ids=ids, attention_mask=mask).logits
            torch._dynamo.reset()
            try:
                compiled = torch.compile(lm.model, fullgraph=True)(input_ids=ids, attention_mask=mask).logits
            finally:
                torch._dynamo.reset()
    # float noise: Inductor's generated kernels vs eager ATen; measured max |difference| 1.5e-5 / 1.7e-5 / 1.4e-5
    # (AVX512 / AVX2 / default) on logits up to 20: >= 11x margin
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(eager, plain)


@pytest.mark.slow
def test_a_compiled_model_follows_the_sessions_opened_and_closed_after_it(lm, vec):
    """TorchDynamo skips guards on module hooks by default: without steerlab turning them on, a model
    compiled before a session ignores its hooks, and one compiled inside a session replays them
    after it closed. Every phase must equal eager."""
    import torch._dynamo.config as dynamo_config

    # torch's default; dynamo's own patch(), not monkeypatch (whose undo deletes a config entry)
    with dynamo_config.patch(skip_nnmodule_hook_guards=True):
        _follow_sessions(lm, vec)
        assert dynamo_config.skip_nnmodule_hook_guards is False


def _follow_sessions(lm, vec):
    ids, mask = encode(lm, PROMPTS)
    a, b = Steering(vec, 4.0), Steering(vec, -3.0, positions="generated")
    n = mask.sum(-1)

    def run(model, steering):
        with torch.inference_mode():
            if steering is None:
                return model(input_ids=ids, attention_mask=mask).logits
            with steerlab.steer(lm, steering, prompt_length=n - 1):
                return model(input_ids=ids, attention_mask=mask).logits

    phases = [None, a, None, b, a]
    eager = [run(lm.model, s) for s in phases]
    assert not torch.allclose(eager[0], eager[1]) and not torch.allclose(eager[1], eager[3])
    torch._dynamo.reset()
    compiled = torch.compile(lm.model, backend="eager", fullgraph=True)
    try:
        for phase, (steering, want) in enumerate(zip(phases, eager, strict=True)):
            torch.testing.assert_close(run(compiled, steering), want, rtol=1e-5, atol=1e-5, msg=f"phase {phase}")
    finally:
        torch._dynamo.reset()
