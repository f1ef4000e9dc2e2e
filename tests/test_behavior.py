"""CAA A/B behaviour read-out (evaluate.behavior) on the tiny stories260K model; one slow test on
the default model."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import pytest
import torch

import steerlab
from steerlab import Steering
from steerlab.data.ab import ABItem, ab_item, ab_items, answer_letter, load_ab_items
from steerlab.errors import DatasetError, SteeringSpecError
from steerlab.evaluate.behavior import BehaviorReport, ab_probabilities, behavior_eval, behavior_vector, capability_eval
from steerlab.evaluate.stats import bootstrap_ci

from .conftest import CAA
from .context_fit import ab_records_within_context
from .test_ab_items import SHORT, TQA

SYC_TEST = CAA / "test" / "sycophancy" / "test_dataset_ab.json"
SYC_GEN = CAA / "generate" / "sycophancy" / "generate_dataset.json"
GEN_FITS = CAA / "generate" / "myopic-reward" / "generate_dataset.json"  # fits stories260K's 512-token context


@pytest.fixture(scope="module")
def syc_records(lm: steerlab.LM) -> list[dict]:
    return ab_records_within_context(lm, SYC_TEST, 8)


@pytest.fixture(scope="module")
def items(syc_records: list[dict]) -> list[ABItem]:
    return ab_items(syc_records, category="sycophancy")


@pytest.fixture(scope="module")
def svec(lm: steerlab.LM) -> steerlab.SteeringVector:
    return behavior_vector(lm, GEN_FITS, layers=[1, 2], limit=8)


@pytest.fixture(scope="module")
def base(lm: steerlab.LM, items: list[ABItem]) -> list[float]:
    return ab_probabilities(lm, items)


@pytest.fixture(scope="module")
def report(lm: steerlab.LM, svec: steerlab.SteeringVector, items: list[ABItem]) -> BehaviorReport:
    return behavior_eval(lm, svec, items, coefficients=(-1.0, 0.0, 1.0), n_bootstrap=200)


def test_items_and_vector(items: list[ABItem], svec: steerlab.SteeringVector, syc_records: list[dict]) -> None:
    raw = syc_records
    assert len(items) == 8 and all(it.category == "sycophancy" for it in items)
    assert [it.positive_letter for it in items] == [answer_letter(r["answer_matching_behavior"]) for r in raw]
    assert [it.prompt for it in items] == [r["question"] for r in raw]
    assert svec.layers == [1, 2] and svec.meta["read"] == "'answer'" and svec.meta["n_pairs"] == 8


def test_probabilities_in_unit_interval(base: list[float]) -> None:
    assert len(base) == 8
    assert all(0.0 < p < 1.0 for p in base)


def test_coefficient_zero_is_exactly_unsteered(
    lm: steerlab.LM, svec: steerlab.SteeringVector, items: list[ABItem], report: BehaviorReport, base: list[float]
) -> None:
    # bit for bit against the same batch layout with every row unsteered (a batch of another shape
    # may round differently in the matrix kernels, so the separate read-out matches to tolerance)
    zero = behavior_eval(lm, svec * 0.0, items, coefficients=(-1.0, 0.0, 1.0), n_bootstrap=200)
    assert report.point(0.0).probabilities == zero.point(-1.0).probabilities == zero.point(0.0).probabilities
    assert report.point(0.0).probabilities == pytest.approx(base, rel=1e-6, abs=1e-9)
    assert report.point(1.0).probabilities != base and report.point(-1.0).probabilities != base


def test_batched_equals_one_by_one(
    lm: steerlab.LM, svec: steerlab.SteeringVector, items: list[ABItem], report: BehaviorReport, base: list[float]
) -> None:
    # unsteered, one item per forward pass (no padding) vs the padded batch (two short items)
    single = ab_probabilities(lm, [items[5], items[7]], batch_size=1)
    assert max(abs(single[0] - base[5]), abs(single[1] - base[7])) < 1e-5
    # one coefficient at a time, one item at a time vs all coefficients as rows of one batch
    s = Steering(svec, 1.0, positions="generated")
    steered = ab_probabilities(lm, items, s, batch_size=1)
    assert max(abs(a - b) for a, b in zip(steered, report.point(1.0).probabilities)) < 1e-5


def test_instruction_positions_are_not_steered(lm: steerlab.LM, svec: steerlab.SteeringVector) -> None:
    item = ab_item(SHORT)
    n_instr = len(lm.tokenizer(lm.chat(item.prompt, ""))["input_ids"])
    n_primed = len(lm.tokenizer(lm.chat(item.prompt, "("))["input_ids"])
    assert n_primed == n_instr + 1  # only the "(" is after the instruction
    seen: list[torch.Tensor] = []

    def record(_m: Any, _a: Any, out: Any) -> None:
        seen.append(out[0] if isinstance(out, tuple) else out)

    handle = lm.blocks[3].register_forward_hook(record)
    try:
        plain = ab_probabilities(lm, [item])
        gen = ab_probabilities(lm, [item], Steering(svec, 8.0, positions="generated"))
        window = ab_probabilities(lm, [item], Steering(svec, 8.0, positions=(n_instr, None)))
        everywhere = ab_probabilities(lm, [item], Steering(svec, 8.0, positions="all"))
    finally:
        handle.remove()
    h_plain, h_gen = seen[0][0], seen[1][0]
    assert h_plain.shape[0] == n_primed
    assert torch.equal(h_plain[:n_instr], h_gen[:n_instr])  # the question is untouched
    assert not torch.allclose(h_plain[n_instr:], h_gen[n_instr:])  # the "(" is steered
    assert gen == window and gen != plain and gen != everywhere


def test_per_item_steering_list(lm: steerlab.LM, svec: steerlab.SteeringVector) -> None:
    two = ab_items([SHORT, dict(SHORT, question="Do cats bark?\n\nChoices:\n (A) No, they meow\n (B) Yes")])
    s = Steering(svec, 1.0, positions="generated")
    mixed = ab_probabilities(lm, two, [s, None])
    assert mixed[0] == pytest.approx(ab_probabilities(lm, two[:1], s)[0], abs=1e-5)
    assert mixed[1] == pytest.approx(ab_probabilities(lm, two[1:])[0], abs=1e-5)
    with pytest.raises(SteeringSpecError, match="3 steerings for 2 items"):
        ab_probabilities(lm, two, [s, s, s])


def test_letter_tokens_after_the_paren(lm: steerlab.LM) -> None:
    from steerlab.evaluate.behavior import _prepare

    (prep,) = _prepare(lm, [ab_item(SHORT)])
    tok = lm.tokenizer
    assert tok.convert_ids_to_tokens(prep.ids[-1]) == "("
    assert tok.convert_ids_to_tokens([prep.positive_id, prep.negative_id]) == ["B", "A"]
    assert prep.prompt_length == len(prep.ids) - 1


class _MergingTokenizer:
    """A tokenizer where "(A" and "(B" are single tokens (ids 300 and 301 here)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.paren = inner.convert_tokens_to_ids("(")
        self.merge = {inner.convert_tokens_to_ids("A"): 300, inner.convert_tokens_to_ids("B"): 301}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _fix(self, ids: list[int]) -> list[int]:
        out: list[int] = []
        for t in ids:
            if out and out[-1] == self.paren and t in self.merge:
                out[-1] = self.merge[t]
            else:
                out.append(t)
        return out

    def __call__(self, texts: Any, **kw: Any) -> dict[str, Any]:
        enc = self.inner(texts, **kw)
        ids = enc["input_ids"]
        return {"input_ids": self._fix(ids) if isinstance(texts, str) else [self._fix(x) for x in ids]}


def test_merged_paren_letter_falls_back_to_full_text_tokens(lm: steerlab.LM) -> None:
    from steerlab.evaluate.behavior import _prepare

    merged = dataclasses.replace(lm, tokenizer=_MergingTokenizer(lm.tokenizer))
    item = ab_item(SHORT)
    (prep,) = _prepare(merged, [item])
    primed = merged.tokenizer(lm.chat(item.prompt, "("))["input_ids"]
    assert lm.tokenizer.convert_ids_to_tokens(primed[-1]) == "("
    assert prep.ids == primed[:-1]  # read before the "(": p("(B") vs p("(A")
    assert (prep.positive_id, prep.negative_id) == (301, 300)
    assert prep.prompt_length == len(prep.ids) - 1  # the read position is still steered
    (p,) = ab_probabilities(merged, [item])
    assert 0.0 < p < 1.0


def test_capability_eval(lm: steerlab.LM, svec: steerlab.SteeringVector) -> None:
    rep = capability_eval(lm, svec, TQA, coefficients=(0.0, 1.0), layers=[2], limit=3, n_bootstrap=20)
    assert rep.capability and rep.settings["capability"] and rep.settings["set"] == "capability"
    assert rep.behavior == "truthful_qa" and rep.settings["layers"] == [2] and rep.settings["limit"] == 3
    rows = rep.rows()
    assert [r["coefficient"] for r in rows] == [0.0, 1.0] and "accuracy" in rows[0] and "p_correct" in rows[0]
    assert all(r["n"] == 3 and 0.0 <= r["accuracy"] <= 1.0 for r in rows)


def test_malformed_items_name_the_index(lm: steerlab.LM, svec: steerlab.SteeringVector, tmp_path: Any) -> None:
    no_choices = {
        "question": "What do you think?",
        "answer_matching_behavior": "(A)",
        "answer_not_matching_behavior": "(B)",
    }
    with pytest.raises(DatasetError, match=r"item 1\b.*no \(A\)/\(B\) choices"):
        ab_items([SHORT, no_choices])
    with pytest.raises(DatasetError, match=r"item 2\b"):
        behavior_eval(lm, svec, [SHORT, SHORT, no_choices])
    acronyms = dict(no_choices, question="Will (AGI) and (BCI) be safe?")  # not choices
    with pytest.raises(DatasetError, match=r"item 5\b.*no \(A\)/\(B\) choices"):
        ab_item(acronyms, 5)
    no_letter = dict(SHORT, answer_not_matching_behavior="No")
    with pytest.raises(DatasetError, match=r"item 0\b.*no '\(X\)' letter"):
        ab_items([no_letter])
    not_offered = dict(SHORT, answer_matching_behavior="(C)")
    with pytest.raises(DatasetError, match=r"item 0\b.*not \(C\)"):
        ab_items([not_offered])
    with pytest.raises(DatasetError, match="lacks 'incorrect'"):
        ab_item({"prompt": "Q\n(A) x\n(B) y", "correct": "(A)"}, 4)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([SHORT, SHORT, SHORT, no_choices]))
    with pytest.raises(DatasetError, match=r"bad\.json item 3\b"):
        load_ab_items(bad)


def test_option_errors(lm: steerlab.LM, svec: steerlab.SteeringVector) -> None:
    with pytest.raises(SteeringSpecError, match="repeat"):
        behavior_eval(lm, svec, [SHORT], coefficients=(1.0, 1))
    with pytest.raises(SteeringSpecError, match="no coefficients"):
        behavior_eval(lm, svec, [SHORT], coefficients=())
    with pytest.raises(steerlab.LayerRangeError):
        behavior_eval(lm, svec, [SHORT], layers=[4])
    with pytest.raises(DatasetError, match="no A/B items"):
        ab_probabilities(lm, [])


def test_deprecated_multipliers_alias(
    lm: steerlab.LM, svec: steerlab.SteeringVector, report: BehaviorReport, items: list[ABItem]
) -> None:
    with pytest.warns(DeprecationWarning, match="coefficients="):
        old = behavior_eval(lm, svec, items, multipliers=(-1.0, 0.0, 1.0), n_bootstrap=200)
    assert old.points == report.points
    with pytest.warns(DeprecationWarning, match=r"\.coefficient"):
        assert old.points[2].multiplier == 1.0


def test_bootstrap_ci() -> None:
    vals = [0.1, 0.9, 0.4, 0.6, 0.5]
    lo, hi = bootstrap_ci(vals, 500, seed=3)
    assert (lo, hi) == bootstrap_ci(vals, 500, seed=3)
    assert lo <= sum(vals) / len(vals) <= hi
    assert bootstrap_ci([0.7], 100) == (0.7, 0.7)
    assert all(x != x for x in bootstrap_ci(vals, 0))  # nan without resamples


def test_report_outputs(report: BehaviorReport, tmp_path: Any) -> None:
    assert report.behavior == "sycophancy" and not report.capability
    for p in report.points:
        assert p.n == 8 and p.ci_low <= p.mean <= p.ci_high and 0.0 <= p.above_half <= 1.0
        assert 0.0 < p.letter_mass <= 1.0
    rows = report.rows()
    assert [r["coefficient"] for r in rows] == [-1.0, 0.0, 1.0]
    data = json.loads(report.to_json())
    assert data["kind"] == "BehaviorReport" and data["behavior"] == "sycophancy"
    # to_json rounds to 6 decimals: |error| <= 5e-7 (measured up to 5.0e-7), within abs 1e-6
    assert data["rows"][1]["p_matching"] == pytest.approx(report.point(0.0).mean, abs=1e-6)
    assert len(data["points"][0]["probabilities"]) == 8 and data["settings"]["layers"] == [1, 2]
    md = report.to_markdown()
    assert "p_matching" in md and "share_above_0.5" in md and "sycophancy" in md
    png = report.plot(tmp_path / "b.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = report.write(tmp_path / "out", name="syc")
    assert {p.name for p in out.iterdir()} == {"syc.json", "syc.md", "syc.png"}
    with pytest.raises(KeyError):
        report.point(2.0)


@pytest.mark.slow
def test_default_model_sycophancy_read_out() -> None:
    """The CAA protocol end to end on SmolLM2-135M: layer-13 vector from 64 generate items, 20 test
    items, coefficients -1 / 0 / +1.

    Measured here: mean p(matching) .462 / .457 / .453, letter mass ~.8. A 135M model barely
    moves at |coefficient| = 1 (Llama-2-7b-chat in the CAA paper: .64 / .76 / .81), and the +1 vs
    -1 gap is within noise and slightly negative, so only "no large reversal" is asserted.
    """
    t0 = time.time()
    smol = steerlab.load_model("default")
    vec = behavior_vector(smol, SYC_GEN, layers=[13], limit=64)
    rep = behavior_eval(smol, vec, load_ab_items(SYC_TEST, limit=20), coefficients=(-1.0, 0.0, 1.0))
    print(rep.to_markdown(), f"\n({time.time() - t0:.1f} s)")
    lo, mid, hi = (rep.point(m) for m in (-1.0, 0.0, 1.0))
    assert mid.letter_mass > 0.5  # the model does answer with a letter
    assert lo.probabilities != mid.probabilities != hi.probabilities  # steering acts
    assert all(0.0 < p < 1.0 for pt in rep.points for p in pt.probabilities)
    assert hi.mean >= lo.mean - 0.05


def test_an_item_longer_than_the_context_is_refused_before_any_forward(lm: steerlab.LM) -> None:
    # past its 512-token context stories260K reads garbage positions: refused, naming the item, not truncated
    long = dict(SHORT, question="Is the sky blue? " * 200 + "\n\nChoices:\n (A) Yes\n (B) No")
    with pytest.raises(steerlab.LimitError, match=r"item 1 \(answered\) has \d+ tokens: more than the model's context"):
        ab_probabilities(lm, [SHORT, long])
