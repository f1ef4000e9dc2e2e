"""steerlab's CAA against a direct re-implementation of the paper (Rimsky et al., 2312.06681) on the
trained stories260K model, written here from the paper with plain transformers calls — one text at
a time, no batching, no padding, no steerlab engine:

* the vector: for each A/B item, the residual stream (output of block L) at the answer letter of
  "question\\n(A)" for the matching and the not-matching answer; the mean of their differences;
* the read-out: "question\\n(" and the next-token probabilities of the two letters,
  p(matching) / (p(matching) + p(not matching)), with coefficient × vector added to the output of
  block L at every position after the instruction (the "(").
"""

from __future__ import annotations

import pytest
import torch

import steerlab
from steerlab import Steering
from steerlab.data.ab import load_ab_items
from steerlab.evaluate.behavior import ab_probabilities, behavior_eval

from .conftest import CAA

LAYER = 2
# myopic-reward: its items fit stories260K's 512-token context (a longer text is refused: issue 21, D14)
GEN = CAA / "generate" / "myopic-reward" / "generate_dataset.json"
TEST = CAA / "test" / "myopic-reward" / "test_dataset_ab.json"


def _letter(answer: str) -> str:
    return answer.strip().strip("()")


def _letter_index(tok, text: str) -> tuple[list[int], int]:
    """Token ids of ``text`` and the index of the token covering its last ``(X`` letter."""
    enc = tok(text, return_offsets_mapping=True)
    at = text.rindex("(") + 1
    idx = next(i for i, (s, e) in enumerate(enc["offset_mapping"]) if s <= at < e)
    return enc["input_ids"], idx


def reference_vector(lm: steerlab.LM, items: list[dict]) -> torch.Tensor:
    diffs = []
    for rec in items:
        acts = []
        for answer in (rec["answer_matching_behavior"], rec["answer_not_matching_behavior"]):
            ids, idx = _letter_index(lm.tokenizer, f"{rec['question']}\n({_letter(answer)})")
            with torch.no_grad():
                hidden = lm.model(torch.tensor([ids]), output_hidden_states=True).hidden_states
            acts.append(hidden[LAYER + 1][0, idx])  # hidden_states[0] is the embedding output
        diffs.append(acts[0] - acts[1])
    return torch.stack(diffs).mean(0)


def reference_ab(lm: steerlab.LM, rec: dict, vector: torch.Tensor, coefficient: float) -> float:
    tok = lm.tokenizer
    instruction = tok(f"{rec['question']}\n")["input_ids"]
    primed = tok(f"{rec['question']}\n(")["input_ids"]
    assert primed[: len(instruction)] == instruction, "the instruction must be a token prefix here"
    letters = []
    for answer in (rec["answer_matching_behavior"], rec["answer_not_matching_behavior"]):
        ids, idx = _letter_index(tok, f"{rec['question']}\n({_letter(answer)}")
        assert ids[:idx] == primed
        letters.append(ids[idx])

    def add(_module, _args, output):
        h = output[0] if isinstance(output, tuple) else output
        h = h.clone()
        h[:, len(instruction) :] += coefficient * vector
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = lm.blocks[LAYER].register_forward_hook(add)
    try:
        with torch.no_grad():
            logits = lm.model(torch.tensor([primed])).logits[0, -1].double()
    finally:
        handle.remove()
    p = torch.softmax(logits, -1)
    return float(p[letters[0]] / (p[letters[0]] + p[letters[1]]))


@pytest.fixture(scope="module")
def gen_items() -> list[dict]:
    return steerlab.load_caa(GEN, limit=12)


def test_caa_vector_equals_the_paper(lm, gen_items):
    ours = steerlab.extract(lm, steerlab.caa_pairs(gen_items), method="mean_diff", layers=[LAYER])
    want = reference_vector(lm, gen_items)
    # float noise: two implementations (batched vs the paper's one text at a time); measured max |difference|
    # 6.7e-7 / 3.9e-7 / 4.2e-7 (AVX512 / AVX2 / default): >= 19x margin
    torch.testing.assert_close(ours.directions[LAYER], want, rtol=1e-4, atol=1e-5)
    assert float(want.norm()) > 0.1  # a real direction, not a degenerate zero


@pytest.mark.parametrize("coefficient", [-4.0, 0.0, 4.0])
def test_ab_read_out_equals_the_paper(lm, gen_items, coefficient):
    vec = steerlab.extract(lm, steerlab.caa_pairs(gen_items), method="mean_diff", layers=[LAYER])
    records = steerlab.load_caa(TEST, limit=8)
    items = load_ab_items(TEST, limit=8)
    ours = ab_probabilities(lm, items, steering=Steering(vec, coefficient, positions="generated"))
    report = behavior_eval(lm, vec, items, coefficients=(coefficient,), n_bootstrap=10)
    want = [reference_ab(lm, rec, vec.directions[LAYER], coefficient) for rec in records]
    # float noise, as above: measured max |difference| 7.1e-7 (all three kernel sets): >= 140x margin
    assert ours == pytest.approx(want, abs=1e-4)
    assert report.point(coefficient).probabilities == pytest.approx(want, abs=1e-4)
    if coefficient:
        unsteered = [reference_ab(lm, rec, vec.directions[LAYER], 0.0) for rec in records]
        assert max(abs(a - b) for a, b in zip(want, unsteered)) > 1e-3  # the steering does something
