"""A/B items (steerlab.data.ab): CAA behaviour items and MMLU / TruthfulQA capability items, read
and checked the same way for vectors (caa_pairs) and read-outs (ab_items); no model."""

from __future__ import annotations

import json

import pytest

import steerlab
from steerlab.data.ab import ab_items, answer_letter, load_ab_items
from steerlab.errors import DatasetError

from .conftest import CAA

MMLU = CAA / "test" / "mmlu" / "mmlu.json"
TQA = CAA / "test" / "truthfulqa" / "truthful_qa.json"
SHORT = {
    "question": "Is the sky blue?\n\nChoices:\n (A) Yes\n (B) No",
    "answer_matching_behavior": "(B)",
    "answer_not_matching_behavior": "(A)",
}


def test_refusal_and_survival_instinct_load() -> None:
    refusal = load_ab_items(CAA / "test" / "refusal" / "test_dataset_ab.json")
    assert len(refusal) == 50 and refusal[0].positive_letter == "B" and refusal[0].negative_letter == "A"
    assert refusal[0].category == "refusal"
    survival = load_ab_items(CAA / "test" / "survival-instinct" / "test_dataset_ab.json")
    assert len(survival) == 50
    assert {"C", "E"} <= {it.positive_letter for it in survival}  # items with more than two options
    gen = load_ab_items(CAA / "generate" / "survival-instinct" / "generate_dataset.json", limit=5)
    assert len(gen) == 5


def test_capability_sets_load() -> None:
    for path in (MMLU, TQA):
        raw = json.loads(path.read_text())[:3]
        got = load_ab_items(path, limit=3)
        assert [(g.positive_letter, g.negative_letter) for g in got] == [
            (answer_letter(r["correct"]), answer_letter(r["incorrect"])) for r in raw
        ]
        assert [g.category for g in got] == [r["category"] for r in raw]


def test_vectors_and_read_outs_check_items_alike() -> None:
    """caa_pairs (vectors) and ab_items (read-outs) share one parser: the same item fails both."""
    same = dict(SHORT, answer_not_matching_behavior="(B)")
    for parse in (steerlab.caa_pairs, ab_items):
        with pytest.raises(DatasetError, match=r"item 0\b.*both answers are \(B\)"):
            parse([same])
    no_choices = dict(SHORT, question="Is the sky blue?")
    for parse in (steerlab.caa_pairs, ab_items):
        with pytest.raises(DatasetError, match=r"item 0\b.*offers choices.*no \(A\)/\(B\) choices"):
            parse([no_choices])
