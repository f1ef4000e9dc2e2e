"""Sentiment-shift evaluation: scorers, batched per-row generation, bootstrap report, plot."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import pytest
import torch

import steerlab
from steerlab.evaluate import sentiment as sentiment_mod
from steerlab.evaluate.report import Report
from steerlab.evaluate.scorers import (
    HFScorer,
    Scorer,
    ScorerLoadError,
    SentimentScore,
    VaderScorer,
    get_scorer,
    label_classes,
)
from steerlab.evaluate.sentiment import SentimentReport, coefficient_label, sentiment_shift
from steerlab.evaluate.stats import bootstrap_ci
from tests.conftest import REPE, STORIES

OPENINGS = ["Once upon a time", "The cat", "Lily was"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(lm, vec) -> SentimentReport:
    return sentiment_shift(lm, vec, OPENINGS, coefficients=(-1.0, 0.0, 1.0), max_new_tokens=6, n_bootstrap=200)


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory) -> str:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-sentiment")
    id2label = {0: "negative", 1: "neutral", 2: "positive"}
    settings: dict[str, Any] = dict(
        vocab_size=512,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_labels=3,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        pad_token_id=0,
    )
    config = LlamaConfig(**settings)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(STORIES).save_pretrained(folder)
    return str(folder)


class LengthScorer:
    """A fake scorer: long texts are positive, short ones negative."""

    name = "length"

    def score(self, texts: Sequence[str]) -> list[SentimentScore]:
        pos, neg = SentimentScore(0.0, 0.0, 1.0, 1.0, "positive"), SentimentScore(1.0, 0.0, 0.0, -1.0, "negative")
        return [pos if len(t) > 10 else neg for t in texts]


# --------------------------------------------------------------------------- report
def test_report_structure(report):
    assert isinstance(report, Report) and report.complete and report.scorer == "vader"
    assert [r.coefficient for r in report.by_coefficient] == [-1.0, 0.0, 1.0]
    for r in report.by_coefficient:
        assert r.n == len(OPENINGS)
        assert -1.0 <= r.mean_compound <= 1.0
        assert math.isclose(r.positive_share + r.neutral_share + r.negative_share, 1.0)
        assert math.isclose(r.mean_negative + r.mean_neutral + r.mean_positive, 1.0, abs_tol=1e-6)
        assert r.median_perplexity > 1.0 and r.mean_perplexity > 1.0
    assert set(report.examples) == {"-1.0", "0.0", "1.0"}
    assert all([o for o, _ in ex] == OPENINGS for ex in report.examples.values())
    assert report.positive_share(1) == report.row(1.0).positive_share
    assert report.negative_share(-1.0) == report.by_coefficient[0].negative_share
    with pytest.raises(KeyError):
        report.row(2.0)
    assert report.settings["max_new_tokens"] == 6 and report.settings["coefficients"] == [-1.0, 0.0, 1.0]


def test_report_json_markdown_plot(report, tmp_path):
    data = json.loads(report.to_json())
    assert data["kind"] == "SentimentReport" and len(data["rows"]) == 3
    assert data["rows"][1]["coef"] == 0.0 and len(data["by_coefficient"][0]["compound_ci"]) == 2
    assert data["examples"]["0.0"][0][0] == OPENINGS[0]
    md = report.to_markdown()
    assert "| coef | n | mean_compound | ci | positive | neutral | negative | ppl | ppl_ratio |" in md
    assert md.count("\n| ") == 4  # header + 3 coefficients

    import matplotlib.image

    path = report.plot(tmp_path / "sentiment.png")
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert matplotlib.image.imread(path).ndim == 3
    out = report.write(tmp_path / "out", name="s")
    assert {p.name for p in out.iterdir()} == {"s.json", "s.md", "s.png"}


def test_rows_match_plain_generation(lm, vec, report):
    base = steerlab.generate(lm, OPENINGS, max_new_tokens=6)
    assert [c for _, c in report.examples["0.0"]] == base
    up = steerlab.generate(lm, OPENINGS, steering=steerlab.Steering(vec, 1.0), max_new_tokens=6)
    assert [c for _, c in report.examples["1.0"]] == up


def test_bootstrap_ci_contains_the_mean(report):
    for r in report.by_coefficient:
        for value, (lo, hi) in [
            (r.mean_compound, r.compound_ci),
            (r.positive_share, r.positive_ci),
            (r.neutral_share, r.neutral_ci),
            (r.negative_share, r.negative_ci),
        ]:
            assert lo - 1e-9 <= value <= hi + 1e-9


def test_bootstrap_ci_helper():
    values = [0.1, -0.4, 0.9, 0.3, 0.0, -0.2]
    lo, hi = bootstrap_ci(values, n_bootstrap=500, seed=3)
    assert lo < sum(values) / len(values) < hi
    assert bootstrap_ci(values, n_bootstrap=500, seed=3) == (lo, hi)
    assert bootstrap_ci([0.5, 0.5], n_bootstrap=50) == (0.5, 0.5)
    assert all(math.isnan(x) for x in bootstrap_ci([], n_bootstrap=50))
    assert all(math.isnan(x) for x in bootstrap_ci(values, n_bootstrap=0))


def test_fluency_off_and_custom_scorer(lm, vec):
    r = sentiment_shift(
        lm,
        vec,
        OPENINGS,
        coefficients=(0.0, 2.0, 2.0),
        max_new_tokens=6,
        scorer=LengthScorer(),
        fluency=False,
        batch_size=4,
        n_bootstrap=0,
    )
    assert r.scorer == "length" and [x.coefficient for x in r.by_coefficient] == [0.0, 2.0]
    for row in r.by_coefficient:
        assert math.isnan(row.median_perplexity) and math.isnan(row.compound_ci[0])
        assert row.positive_share + row.negative_share == 1.0 and row.neutral_share == 0.0
    assert "nan" in r.to_markdown()
    json.loads(r.to_json())


def test_coefficient_labels():
    assert [coefficient_label(c) for c in (0.0, 2.0, -0.5)] == ["baseline", "+2 steering", "−0.5 steering"]


# --------------------------------------------------------------------------- errors
def test_empty_openings_raise(lm, vec):
    with pytest.raises(steerlab.DatasetError):
        sentiment_shift(lm, vec, [])


def test_mismatched_vector_raises_before_generating(lm, monkeypatch):
    other = steerlab.SteeringVector(
        {1: torch.ones(lm.d_model + 4)}, model_id=lm.model_id, d_model=lm.d_model + 4, n_layers=lm.n_layers
    )

    def no_generation(*_a: object, **_k: object) -> list[str]:
        raise AssertionError("generated before checking the vector")

    monkeypatch.setattr(sentiment_mod, "generate", no_generation)
    with pytest.raises(steerlab.ModelMismatchError):
        sentiment_shift(lm, other, OPENINGS)


def test_bad_scorer_spec(tmp_path):
    with pytest.raises(ScorerLoadError, match="not found"):
        get_scorer(str(tmp_path / "no-such-model"))
    with pytest.raises(ScorerLoadError, match=r"config\.json"):
        HFScorer(tmp_path)
    with pytest.raises(ScorerLoadError):
        get_scorer(42)
    assert issubclass(ScorerLoadError, steerlab.SteeringError)


# --------------------------------------------------------------------------- scorers
def test_vader_labels_obvious_sentences():
    scorer = get_scorer("VADER")
    assert isinstance(scorer, VaderScorer) and isinstance(get_scorer(None), VaderScorer)
    pos, neg, empty = scorer.score(["I love this, wonderful!", "This is terrible and I hate it.", ""])
    assert pos.label == "positive" and pos.compound > 0.5 and pos.positive > pos.negative
    assert neg.label == "negative" and neg.compound < -0.5 and neg.negative > neg.positive
    assert empty.label == "neutral" and empty.neutral == 1.0
    for s in (pos, neg, empty):
        assert math.isclose(s.negative + s.neutral + s.positive, 1.0)
    fake = LengthScorer()
    assert isinstance(fake, Scorer) and get_scorer(fake) is fake


def test_label_classes():
    assert label_classes({0: "negative", 1: "neutral", 2: "positive"}) == ["negative", "neutral", "positive"]
    assert label_classes({0: "POSITIVE", 1: "NEG"}) == ["positive", "negative"]
    assert label_classes({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}) == ["negative", "neutral", "positive"]
    assert label_classes({0: "LABEL_0", 1: "LABEL_1"}) == ["negative", "positive"]
    with pytest.raises(ScorerLoadError):
        label_classes({i: f"{i + 1} stars" for i in range(5)})


def test_hf_scorer_on_tiny_classifier(tiny_classifier, lm, vec):
    scorer = get_scorer(tiny_classifier)
    assert isinstance(scorer, HFScorer) and scorer.classes == ["negative", "neutral", "positive"]
    scorer.batch_size = 2
    texts = ["I love this, wonderful!", "This is terrible and I hate it.", "", "The cat sat on the mat."]
    scores = scorer.score(texts)
    assert len(scores) == len(texts) and scores[2].label == "neutral" and scores[2].neutral == 1.0
    for s in scores:
        assert math.isclose(s.negative + s.neutral + s.positive, 1.0, abs_tol=1e-6)
        assert s.label in ("negative", "neutral", "positive")
        assert math.isclose(s.compound, s.positive - s.negative, abs_tol=1e-6) and -1 <= s.compound <= 1
    # batching (with padding) does not change a text's score
    alone = scorer.score([texts[3]])[0]
    assert math.isclose(alone.positive, scores[3].positive, abs_tol=1e-5)
    r = sentiment_shift(lm, vec, OPENINGS[:2], coefficients=(0, 1), max_new_tokens=4, scorer=scorer, fluency=False)
    assert r.scorer == tiny_classifier and r.by_coefficient[0].n == 2


# --------------------------------------------------------------------------- real model
@pytest.mark.slow
def test_happy_vector_orders_sentiment_on_default_model():
    smol = steerlab.load_model("default")
    openings = steerlab.load_openings(REPE / "all_truncated_outputs.json")
    threads = torch.get_num_threads()
    if smol.device.type == "cpu":
        torch.set_num_threads(1)  # on a busy 2-core machine one thread is ~5x faster (no OpenMP spinning)
    try:
        happy = steerlab.extract(
            smol, steerlab.persona_pairs("happy", "sad", openings[:32]), method="mean_diff", layers=range(8, 20)
        )
        r = sentiment_shift(smol, happy, openings[32:48], coefficients=(-1, 0, 1), max_new_tokens=16, batch_size=48)
    finally:
        torch.set_num_threads(threads)
    print()
    print(r.to_markdown())
    assert r.mean_compound(-1) < r.mean_compound(0) < r.mean_compound(1)
