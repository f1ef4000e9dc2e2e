"""Off-target cost: perplexity and KL of neutral text under steering (steerlab.evaluate.cost)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

import steerlab
from steerlab import Steering
from steerlab.evaluate.cost import CostReport, load_texts, offtarget_cost, run_stats, text_stats
from steerlab.evaluate.likelihood import continuation_nll, pooled_perplexity
from steerlab.runtime.generate import encode
from tests.conftest import REPE

TEXTS = [
    "Once upon a time, there was a little girl named Lily.",
    "The dog ran to the park.",
    "Tom had a big red ball.",
]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, OpenMP threads spinning against other
    processes make this tiny model ~40x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_zero_coefficient_is_exactly_unsteered(lm, vec):
    plain = text_stats(lm, TEXTS)
    zero = text_stats(lm, TEXTS, Steering(vec, 0.0))
    assert plain.kl is None and zero.kl == 0.0
    assert zero.perplexity == plain.perplexity == zero.base_perplexity
    assert zero.ppl_ratio == 1.0
    assert (plain.n_texts, plain.skipped) == (3, 0)
    # every real token after the first is predicted once
    lengths = [len(x) for x in lm.tokenizer(TEXTS)["input_ids"]]
    assert plain.n_tokens == sum(n - 1 for n in lengths)


def test_perplexity_matches_continuation_nll(lm, vec):
    """Cross-check against likelihood.continuation_nll (prompt = BOS only), plain and steered."""
    ref = pooled_perplexity(continuation_nll(lm, [""] * len(TEXTS), TEXTS))
    assert text_stats(lm, TEXTS).perplexity == pytest.approx(ref, rel=1e-5)
    s = Steering(vec, 2.0)
    with steerlab.steer(lm, s):
        ref_steered = pooled_perplexity(continuation_nll(lm, [""] * len(TEXTS), TEXTS))
    stats = text_stats(lm, TEXTS, s)
    assert stats.perplexity == pytest.approx(ref_steered, rel=1e-5)
    assert stats.base_perplexity == pytest.approx(ref, rel=1e-5)


def test_kl_matches_direct_computation_and_ignores_padding(lm, vec):
    s = Steering(vec, 1.5)
    total, count = 0.0, 0
    for text in TEXTS:  # one text at a time: no padding at all
        ids, mask = encode(lm, [text], "right")
        with torch.inference_mode():
            base = torch.log_softmax(lm.model(input_ids=ids, attention_mask=mask).logits[0, :-1].float(), -1)
            with steerlab.steer(lm, s):
                steered = torch.log_softmax(lm.model(input_ids=ids, attention_mask=mask).logits[0, :-1].float(), -1)
        kl = torch.nn.functional.kl_div(steered, base, log_target=True, reduction="none").sum(-1)
        total += float(kl.sum())
        count += kl.numel()
    batched = text_stats(lm, TEXTS, s, batch_size=16)
    single = text_stats(lm, TEXTS, s, batch_size=1)
    assert batched.kl == pytest.approx(total / count, rel=1e-4)
    assert single.kl == pytest.approx(batched.kl, rel=1e-4)
    assert single.perplexity == pytest.approx(batched.perplexity, rel=1e-5)


def test_cost_grows_with_coefficient(lm, vec):
    coefs = [0.0, 2.0, 8.0, 32.0]
    stats, _ = run_stats(lm, TEXTS, [Steering(vec, c) for c in coefs])
    kls = [s.kl for s in stats]
    ratios = [s.ppl_ratio for s in stats]
    assert kls[0] == 0.0
    assert all(b is not None and a is not None and b >= a for a, b in itertools.pairwise(kls)), kls
    assert all(b >= a for a, b in itertools.pairwise(ratios)), ratios
    assert ratios[-1] > 2.0


def test_short_texts_are_skipped(lm, vec):
    stats = text_stats(lm, ["", *TEXTS], Steering(vec, 1.0))  # "" is only BOS: nothing to predict
    assert (stats.n_texts, stats.skipped) == (3, 1)
    assert stats.perplexity == pytest.approx(text_stats(lm, TEXTS, Steering(vec, 1.0)).perplexity)


def test_no_texts_raise(lm, vec):
    with pytest.raises(steerlab.DatasetError):
        text_stats(lm, [])
    with pytest.raises(steerlab.DatasetError):
        text_stats(lm, [""])
    with pytest.raises(steerlab.DatasetError):
        offtarget_cost(lm, vec, [])


def test_offtarget_cost_report(lm, vec, tmp_path):
    rep = offtarget_cost(lm, vec, TEXTS, coefficients=(-2, 0, 2), batch_size=2)
    assert isinstance(rep, CostReport)
    rows = rep.rows()
    assert [r["coefficient"] for r in rows] == [-2.0, 0.0, 2.0]
    assert rows[1]["ppl_ratio"] == 1.0 and rows[1]["kl"] == 0.0
    assert rows[1]["perplexity"] == pytest.approx(rep.base_perplexity)
    assert all(r["kl"] > 0 and r["ppl_ratio"] > 1 for r in (rows[0], rows[2]))
    data = json.loads(rep.to_json())
    assert data["kind"] == "CostReport" and len(data["rows"]) == 3 and data["settings"]["layers"] == [1, 2, 3]
    assert "| coefficient | perplexity | ppl_ratio | kl |" in rep.to_markdown()
    png = rep.plot(tmp_path / "cost.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = rep.write(tmp_path / "report")
    assert sorted(p.name for p in out.iterdir()) == ["costreport.json", "costreport.md", "costreport.png"]


def test_offtarget_cost_options(lm, vec):
    rep = offtarget_cost(lm, vec, TEXTS, coefficients=(1.0,), layers=[2], positions=(0, 3), operator="add")
    direct = text_stats(lm, TEXTS, Steering(vec, 1.0, layers=[2], positions=(0, 3)))
    assert rep.kl[0] == pytest.approx(direct.kl) and rep.settings["layers"] == [2]
    ablate = offtarget_cost(lm, vec, TEXTS, coefficients=(0.0, 1.0), operator="ablate")
    assert ablate.kl[0] == 0.0 and ablate.kl[1] > 0


def test_load_texts_formats(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("first line\n\n  second line  \n   \n", encoding="utf-8")
    assert load_texts(txt) == ["first line", "second line"]
    js = tmp_path / "a.json"
    js.write_text(json.dumps(["one", "", "two", {"text": "three"}]), encoding="utf-8")
    assert load_texts(js) == ["one", "two", "three"]
    assert load_texts(js, limit=1) == ["one"]
    csv_path = tmp_path / "a.csv"
    csv_path.write_text('text,label\nhello there,1\n"a, b",0\n,1\n', encoding="utf-8")
    assert load_texts(csv_path) == ["hello there", "a, b"]
    facts = load_texts(REPE / "facts_true_false.csv", limit=5)
    assert len(facts) == 5 and facts[0].startswith("The Earth's atmosphere")


def test_load_texts_errors(tmp_path):
    with pytest.raises(steerlab.DatasetError, match="not found"):
        load_texts(tmp_path / "missing.txt")
    bad_csv = tmp_path / "b.csv"
    bad_csv.write_text("sentence,label\nx,1\n", encoding="utf-8")
    with pytest.raises(steerlab.DatasetError, match="column"):
        load_texts(bad_csv)
    bad_json = tmp_path / "b.json"
    bad_json.write_text('{"text": "x"}', encoding="utf-8")
    with pytest.raises(steerlab.DatasetError, match="list"):
        load_texts(bad_json)
    empty = tmp_path / "e.txt"
    empty.write_text("\n \n", encoding="utf-8")
    with pytest.raises(steerlab.DatasetError, match="no non-empty"):
        load_texts(empty)
    other = tmp_path / "x.parquet"
    other.write_text("x", encoding="utf-8")
    with pytest.raises(steerlab.DatasetError, match="format"):
        load_texts(other)


def test_kl_is_finite_at_huge_coefficient(lm, vec):
    stats = text_stats(lm, TEXTS[:1], Steering(vec, 1e4))
    assert stats.kl is not None and math.isfinite(stats.kl) and math.isfinite(stats.perplexity)


def test_openings_and_texts_share_one_loader(tmp_path):
    """load_openings is load_texts without stripping: the same formats, errors and blank-line rule."""
    js = tmp_path / "o.json"
    js.write_text(json.dumps(["That game ", "  ", {"text": "I can see"}]), encoding="utf-8")
    assert steerlab.load_openings(js) == ["That game ", "I can see"]  # the trailing space matters to generation
    assert steerlab.load_texts(js) == load_texts(js) == ["That game", "I can see"]
    broken = tmp_path / "b.json"
    broken.write_text('["a", ', encoding="utf-8")
    for loader in (steerlab.load_openings, steerlab.load_texts):
        with pytest.raises(steerlab.DatasetError, match="not valid JSON"):
            loader(broken)
    csv_path = tmp_path / "o.csv"
    csv_path.write_text("statement,label\nThe sky is,1\n", encoding="utf-8")
    assert steerlab.load_openings(csv_path) == ["The sky is"]
