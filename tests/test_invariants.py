"""The invariants of DESIGN.md, each a test, on a real trained model (stories260K)."""

from __future__ import annotations

import threading

import pytest
import torch

import steerlab
from steerlab import Steering
from steerlab.runtime.generate import encode

from .conftest import PROMPTS, hook_count, logits, param_hash

POSITIONS = ["all", "prompt", "generated", (1, 5), (3, None)]


# ---------------------------------------------------------------- 1. zero / exit / no trace
def test_coefficient_zero_is_bit_identical(lm, vec):
    hooks = hook_count(lm.model)  # transformers keeps hooks of its own (output recorders)
    base = logits(lm, PROMPTS)
    for op in ("add", "ablate", "add_norm_preserving"):
        with steerlab.steer(lm, Steering(vec, 0.0, operator=op)):
            assert torch.equal(logits(lm, PROMPTS), base)
    assert hook_count(lm.model) == hooks


def test_leaving_steer_restores_model_even_on_exception(lm, vec):
    base, before, hooks = logits(lm, PROMPTS), param_hash(lm), hook_count(lm.model)
    with steerlab.steer(lm, Steering(vec, 4.0)):
        steered = logits(lm, PROMPTS)
        assert hook_count(lm.model) > hooks
    assert not torch.allclose(steered, base)
    assert torch.equal(logits(lm, PROMPTS), base)
    with pytest.raises(RuntimeError, match="boom"):
        with steerlab.steer(lm, Steering(vec, 4.0)):
            raise RuntimeError("boom")
    assert hook_count(lm.model) == hooks
    assert torch.equal(logits(lm, PROMPTS), base)
    assert param_hash(lm) == before


def test_generate_leaves_no_hooks_and_weights_unchanged(lm, vec):
    before, hooks = param_hash(lm), hook_count(lm.model)
    steerlab.generate(lm, PROMPTS, steering=Steering(vec, 3.0), max_new_tokens=4)
    assert hook_count(lm.model) == hooks
    assert param_hash(lm) == before


# ---------------------------------------------------------------- 2. KV cache
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("positions", POSITIONS, ids=str)
def test_kv_cache_equals_recompute(lm, vec, positions, side):
    s = Steering(vec, 3.0, positions=positions)
    cached = steerlab.generate(lm, PROMPTS, steering=s, max_new_tokens=8, padding_side=side)
    recomputed = steerlab.generate(lm, PROMPTS, steering=s, max_new_tokens=8, padding_side=side, use_cache=False)
    assert cached == recomputed


@pytest.mark.parametrize("side", ["left", "right"])
def test_kv_cache_equals_recompute_actadd(lm, actadd_vec, side):
    s = Steering(actadd_vec, 6.0)
    plain = steerlab.generate(lm, PROMPTS, max_new_tokens=8, padding_side=side)
    cached = steerlab.generate(lm, PROMPTS, steering=s, max_new_tokens=8, padding_side=side)
    recomputed = steerlab.generate(lm, PROMPTS, steering=s, max_new_tokens=8, padding_side=side, use_cache=False)
    assert cached == recomputed
    assert cached != plain


def test_steer_context_cache_matches_full_recompute_logits(lm, vec):
    """Raw forward calls: prompt + cached steps == one no-cache pass with prompt_length given."""
    ids, mask = encode(lm, PROMPTS, "left")
    new = torch.tensor([[5, 9], [7, 3], [11, 2]])
    full_ids = torch.cat([ids, new], 1)
    full_mask = torch.cat([mask, torch.ones_like(new)], 1)
    for positions in ("generated", "prompt", "all"):
        s = Steering(vec, 3.0, positions=positions)
        pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
        with steerlab.steer(lm, s), torch.inference_mode():
            out = lm.model(input_ids=ids, attention_mask=mask, position_ids=pos[:, :-2], use_cache=True)
            step = lm.model(
                input_ids=new,
                attention_mask=full_mask,
                past_key_values=out.past_key_values,
                position_ids=pos[:, -2:],
                use_cache=True,
            )
        with steerlab.steer(lm, s, prompt_length=mask.sum(-1)), torch.inference_mode():
            whole = lm.model(input_ids=full_ids, attention_mask=full_mask, position_ids=pos).logits
        # float noise: cached steps vs one pass over all tokens (other matmul shapes); measured max |difference|
        # 6.7e-6 / 6.7e-6 / 1.0e-5 (AVX512 / AVX2 / default): >= 28x margin
        torch.testing.assert_close(step.logits, whole[:, -2:], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- 3. batched == one by one
def test_batched_equals_one_by_one(lm, vec):
    s = Steering(vec, 3.0, positions="generated")
    batched = steerlab.generate(lm, PROMPTS, steering=s, max_new_tokens=10)
    alone = [steerlab.generate(lm, p, steering=s, max_new_tokens=10)[0] for p in PROMPTS]
    assert batched == alone


def test_mixed_batch_rows_match_their_own_steering(lm, vec, actadd_vec):
    rows = [Steering(vec, 3.0), None, Steering(-vec, 2.0, positions="generated"), Steering(actadd_vec, 5.0)]
    prompts = [*PROMPTS, "Lily saw a big dog"]
    mixed = steerlab.generate(lm, prompts, steering=rows, max_new_tokens=10)
    alone = [steerlab.generate(lm, p, steering=r, max_new_tokens=10)[0] for p, r in zip(prompts, rows)]
    assert mixed == alone
    assert len(set(mixed)) == len(mixed)


def test_rows_without_steering_are_bit_identical(lm, vec):
    ids, mask = encode(lm, PROMPTS, "left")
    with torch.inference_mode():
        plain = lm.model(input_ids=ids, attention_mask=mask).logits
    with steerlab.steer_rows(lm, [Steering(vec, 5.0), None, Steering(vec, -5.0, operator="ablate")]):
        with torch.inference_mode():
            mixed = lm.model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(mixed[1], plain[1])
    assert not torch.allclose(mixed[0], plain[0])
    assert not torch.allclose(mixed[2], plain[2])


def test_batched_logits_match_single_within_tolerance(lm, vec):
    s = Steering(vec, 2.0)
    with steerlab.steer(lm, s):
        batch = logits(lm, PROMPTS, "left")
        for i, p in enumerate(PROMPTS):
            single = logits(lm, [p])
            n = single.shape[1]
            # float noise: a left-padded batch of 3 vs one row (other matmul shapes); measured max |difference|
            # 4.8e-6 / 5.7e-6 / 4.8e-6 (AVX512 / AVX2 / default): >= 33x margin
            torch.testing.assert_close(batch[i, -n:], single[0], rtol=1e-4, atol=1e-4)


def test_num_return_sequences_expands_row_steering(lm, vec):
    rows = [Steering(vec, 3.0), None]
    out = steerlab.generate(
        lm, PROMPTS[:2], steering=rows, max_new_tokens=6, num_return_sequences=2, do_sample=True, top_k=1
    )
    assert len(out) == 4
    assert out[0] == out[1] == steerlab.generate(lm, PROMPTS[0], steering=rows[0], max_new_tokens=6)[0]
    assert out[2] == out[3] == steerlab.generate(lm, PROMPTS[1], max_new_tokens=6)[0]


# ---------------------------------------------------------------- 5. nothing global
def test_two_models_in_two_threads_do_not_share_steering(lm, vec):
    other = steerlab.load_model(lm.model.config._name_or_path or "")
    expected_a = None
    with steerlab.steer(lm, Steering(vec, 4.0)):
        expected_a = logits(lm, PROMPTS)
    expected_b = logits(other, PROMPTS)
    results: dict[str, list[bool]] = {"a": [], "b": []}
    barrier = threading.Barrier(2)

    def steered() -> None:
        with steerlab.steer(lm, Steering(vec, 4.0)):
            barrier.wait()
            for _ in range(5):
                results["a"].append(torch.equal(logits(lm, PROMPTS), expected_a))

    def plain() -> None:
        barrier.wait()
        for _ in range(5):
            results["b"].append(torch.equal(logits(other, PROMPTS), expected_b))

    threads = [threading.Thread(target=steered), threading.Thread(target=plain)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["a"] == [True] * 5 and results["b"] == [True] * 5


def test_same_model_other_thread_is_not_steered(lm, vec):
    base = logits(lm, PROMPTS)
    seen: list[bool] = []
    with steerlab.steer(lm, Steering(vec, 4.0)):
        t = threading.Thread(target=lambda: seen.append(torch.equal(logits(lm, PROMPTS), base)))
        t.start()
        t.join()
    assert seen == [True]
