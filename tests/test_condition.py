"""Conditional steering (CAST): a condition read on each row's prompt decides, per row, whether a
steering acts on the generated tokens."""

from __future__ import annotations

import pytest
import torch

import steerlab
from steerlab import Steering
from steerlab.core.condition import Condition
from steerlab.extraction.condition import best_threshold, find_condition
from steerlab.runtime.session import SteeringSession

DOGS = ["The dog ran to the park", "The big dog barked at the cat", "A dog wagged its tail", "The puppy played"]
RAIN = ["It was raining all day", "The rain fell on the roof", "Dark clouds brought rain", "A storm came with rain"]


@pytest.fixture(scope="module")
def found(lm):
    return find_condition(lm, DOGS, RAIN, chat=False)


def test_find_condition_separates_the_labelled_prompts(found):
    assert found.accuracy[found.condition.at] == 1.0
    assert set(found.accuracy) == set(range(5))
    assert -1.0 <= found.condition.threshold <= 1.0
    assert best_threshold(torch.tensor([0.9, 0.8]).numpy(), torch.tensor([0.1]).numpy())[1] == 1.0


def test_rows_decide_independently_and_others_stay_bit_identical(lm, vec, found, monkeypatch):
    """In one mixed batch, rows whose prompt matches are steered; the others are bit-identical
    to plain generation, on the fast decoding path and the full one alike."""
    prompts = [DOGS[0], RAIN[0], DOGS[1], RAIN[1]]
    steer = Steering(vec, 6.0, condition=found.condition)
    assert steer.positions == "generated"
    plain = steerlab.generate(lm, prompts, max_new_tokens=10)
    out = steerlab.generate(lm, prompts, steering=steer, max_new_tokens=10)
    always = steerlab.generate(lm, prompts, steering=Steering(vec, 6.0, positions="generated"), max_new_tokens=10)
    assert out[1] == plain[1] and out[3] == plain[3]  # rain prompts: not steered
    assert out[0] == always[0] and out[2] == always[2]  # dog prompts: steered as if unconditional
    assert out[0] != plain[0]
    # alone equals batched, and no KV cache (recomputation) equals the cache
    assert [steerlab.generate(lm, p, steering=steer, max_new_tokens=10)[0] for p in prompts] == out
    assert steerlab.generate(lm, prompts, steering=steer, max_new_tokens=10, use_cache=False) == out
    monkeypatch.setattr(SteeringSession, "_is_decode_step", lambda self, inputs: False)
    assert steerlab.generate(lm, prompts, steering=steer, max_new_tokens=10) == out


def test_logits_of_unmatched_rows_are_bit_identical(lm, vec, found):
    from steerlab.runtime.generate import encode

    prompts = [DOGS[2], RAIN[2]]
    ids, mask = encode(lm, prompts)
    kwargs = dict(
        max_new_tokens=6,
        min_new_tokens=6,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=lm.tokenizer.pad_token_id,
    )
    with torch.inference_mode():
        plain = torch.stack(lm.model.generate(input_ids=ids, attention_mask=mask, **kwargs).scores)
        with steerlab.steer(lm, Steering(vec, 6.0, condition=found.condition), prompt_length=mask.sum(-1)) as s:
            steered = torch.stack(lm.model.generate(input_ids=ids, attention_mask=mask, **kwargs).scores)
            decided = s.decisions[id(found.condition)].tolist()
    assert decided == [True, False]
    assert torch.equal(steered[:, 1], plain[:, 1])
    assert not torch.equal(steered[1:, 0], plain[1:, 0])


def test_comparator_and_threshold_flip_the_decision(lm, vec, found):
    below = Condition(found.condition.vector, threshold=found.condition.threshold, comparator="<")
    prompts = [DOGS[3], RAIN[3]]
    plain = steerlab.generate(lm, prompts, max_new_tokens=8)
    out = steerlab.generate(lm, prompts, steering=Steering(vec, 6.0, condition=below), max_new_tokens=8)
    assert out[0] == plain[0] and out[1] != plain[1]
    never = Condition(found.condition.vector, threshold=1.0)
    assert steerlab.generate(lm, prompts, steering=Steering(vec, 6.0, condition=never), max_new_tokens=8) == plain


def test_save_load_and_errors(found, vec, actadd_vec, tmp_path):
    found.condition.save(tmp_path / "cond")
    back = Condition.load(tmp_path / "cond")
    assert (back.at, back.threshold, back.comparator) == (found.condition.at, found.condition.threshold, ">")
    assert Condition.load(tmp_path / "cond", threshold=0.25).threshold == 0.25
    with pytest.raises(steerlab.SteeringSpecError, match="generated"):
        Steering(vec, 1.0, positions="all", condition=found.condition)
    with pytest.raises(steerlab.SteeringSpecError, match="token-wise"):
        Steering(actadd_vec, 1.0, condition=found.condition)
    with pytest.raises(steerlab.SteeringSpecError, match=r"\[-1, 1\]"):
        Condition(found.condition.vector, threshold=2.0)
    with pytest.raises(steerlab.SteeringSpecError, match="comparator"):
        Condition(found.condition.vector, comparator=">=")
    vec.save(tmp_path / "plain")
    with pytest.raises(steerlab.SteeringSpecError, match="threshold"):
        Condition.load(tmp_path / "plain")
