"""Layer × coefficient sweeps and auto-tune (selection on one half, report on the other)."""

from __future__ import annotations

import math

import pytest

import steerlab
from steerlab import Steering
from steerlab.data.ab import ab_items
from steerlab.evaluate import protocol
from steerlab.evaluate.behavior import ab_probabilities, behavior_eval
from steerlab.evaluate.cost import CostReport, offtarget_cost, text_stats
from steerlab.evaluate.protocol import EVALUATIONS, Evaluation, MetricReport, get_evaluation, metrics_at, register
from steerlab.evaluate.sentiment import sentiment_shift
from steerlab.evaluate.sweep import autotune, split_halves, sweep

from .conftest import CAA
from .context_fit import ab_records_within_context

OPENINGS = ["Once upon a time", "The cat", "Lily was", "Tom saw a", "The sun", "Mom said"]
TEXTS = ["Once upon a time, there was a little girl named Lily.", "The dog ran to the park.", "Tom had a red ball."]


def test_sentiment_sweep_grid_and_heatmap(lm, vec, tmp_path):
    rep = sweep(
        lm,
        vec,
        "sentiment",
        OPENINGS[:3],
        coefficients=[-4, 0, 4],
        layer_sets=[[1], [2, 3]],
        metric="mean_compound",
        max_new_tokens=5,
    )
    assert rep.complete and rep.layer_sets == [[1], [2, 3]]
    assert set(rep.grids) == {
        "positive_share",
        "negative_share",
        "mean_compound",
        "continuation_ppl",
        "continuation_ppl_ratio",
        "distinct_2",
        "repeated_3gram",
    }
    assert all(len(row) == 3 for row in rep.grids["mean_compound"])
    # coefficient 0 is the unsteered model whatever the layers
    assert rep.value([1], 0.0) == rep.value([2, 3], 0.0)
    rep.write(tmp_path, "sweep")
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "c=-4" in (tmp_path / "sweep.md").read_text()


def test_cost_sweep_is_zero_cost_at_zero(lm, vec):
    rep = sweep(lm, vec, "cost", TEXTS, coefficients=[0, 8], metric="kl")
    assert rep.layer_sets == [[1], [2], [3]]
    assert all(row[0] < 1e-9 and row[1] > 0 for row in rep.grids["kl"])
    _, coef, value = rep.best("kl", maximize=True)
    assert coef == 8.0 and value > 0


def test_behavior_sweep_equals_direct_evaluations(lm, vec):
    items = ab_records_within_context(lm, CAA / "test" / "sycophancy" / "test_dataset_ab.json", 4)
    coefs = [-2.0, 0.0, 2.0]
    rep = sweep(lm, vec, "behavior", items, coefficients=coefs, layer_sets=[[2], [1, 3]])
    for i, layers in enumerate(rep.layer_sets):
        # the same evaluation run by hand with the vector cut to the layer set: the same numbers
        direct = behavior_eval(lm, vec.select(layers), items, coefficients=coefs)
        assert rep.grids["p_matching"][i] == [p.mean for p in direct.points]
        assert rep.grids["above_half"][i] == [p.above_half for p in direct.points]
        # and through an independent path: one steering per call, the mean of the per-item read-outs
        for c in coefs:
            steering = Steering(vec, c, layers=layers, positions="generated") if c else None
            probs = ab_probabilities(lm, ab_items(items), steering)
            assert rep.value(layers, c, "p_matching") == pytest.approx(sum(probs) / len(probs), abs=1e-5)
    assert all(0 < v < 1 for row in rep.grids["p_matching"] for v in row)
    assert rep.value([2], 0.0) == rep.value([1, 3], 0.0)  # coefficient 0 is the unsteered model
    assert rep.value([2], 2.0) != rep.value([1, 3], 2.0)  # the layer set matters


def test_autotune_respects_budget_and_reports_held_out(lm, vec, tmp_path):
    rep = autotune(
        lm, vec, "sentiment", OPENINGS, coefficients=[1, 4, 16, -3], layer_sets=[[1], [3]], budget=1.5, max_new_tokens=5
    )
    assert rep.n_select == 3 and rep.n_report == 3
    assert rep.coefficient in (0.0, 1.0, 4.0, 16.0)
    i = rep.selection["layer_sets"].index(rep.layers)
    j = rep.selection["coefficients"].index(rep.coefficient)
    assert rep.selection["cost"][i][j] <= 1.5 or rep.coefficient == 0.0
    assert set(rep.held_out) == {"baseline", "steered"}
    assert math.isclose(rep.held_out["baseline"]["continuation_ppl_ratio"], 1.0)
    # the held-out numbers are the sentiment evaluation of the report half at the chosen setting
    report_half = split_halves(OPENINGS)[1]
    direct = sentiment_shift(
        lm, vec.select(rep.layers), report_half, coefficients=sorted({0.0, rep.coefficient}), max_new_tokens=5
    )
    for label, c in (("baseline", 0.0), ("steered", rep.coefficient)):
        assert rep.held_out[label]["positive_share"] == direct.positive_share(c)
        assert rep.held_out[label]["continuation_ppl"] == direct.row(c).mean_perplexity
    rep.write(tmp_path, "autotune")
    assert (tmp_path / "autotune.png").is_file()


KL_UNDER_PPL = Evaluation(
    "kl-under-perplexity",
    offtarget_cost,
    metrics=("kl", "perplexity"),
    data="neutral texts",
    effect={1: "kl", -1: "kl"},
    cost="perplexity",
)
"""A new evaluation plugged in without touching sweep/autotune: push the next-token distribution
as far as possible (KL) while the perplexity stays within budget."""

TUNE_TEXTS = [
    *TEXTS,
    "Lily liked to play with her toys.",
    "The sun was warm and the sky was blue.",
    "Mom made a cake for the party.",
]


def _selection_grid(lm, vec, sets, coefs):
    """KL and perplexity ratio of each (layer set, coefficient) on auto-tune's selection half,
    measured directly with text_stats (one steering at a time)."""
    select = split_halves(TUNE_TEXTS)[0]
    stats = {(tuple(ls), c): text_stats(lm, select, Steering(vec, c, layers=ls)) for ls in sets for c in coefs}
    return {k: (s.kl, s.ppl_ratio) for k, s in stats.items()}


def test_autotune_picks_the_known_best_setting_within_budget(lm, vec):
    sets, coefs = [[1], [3]], [1.0, 4.0, 16.0]
    grid = _selection_grid(lm, vec, sets, coefs)
    # a budget that admits some steered settings but not the strongest one
    ratios = sorted(r for _, r in grid.values())
    budget = (ratios[len(ratios) // 2] + ratios[len(ratios) // 2 + 1]) / 2
    fits = {k: kl for k, (kl, r) in grid.items() if r <= budget}
    assert fits and len(fits) < len(grid)
    best_layers, best_coef = max(fits, key=lambda k: fits[k])
    rep = autotune(lm, vec, KL_UNDER_PPL, TUNE_TEXTS, coefficients=coefs, layer_sets=sets, budget=budget)
    assert (tuple(rep.layers), rep.coefficient) == (best_layers, best_coef)
    assert rep.coefficient != 0.0 and rep.cost_metric == "perplexity_ratio" and rep.effect_metric == "kl"
    assert rep.held_out["steered"]["kl"] > rep.held_out["baseline"]["kl"] == 0.0


def test_autotune_returns_the_baseline_when_every_setting_breaks_the_budget(lm, vec):
    sets, coefs = [[1], [3]], [1.0, 4.0]
    grid = _selection_grid(lm, vec, sets, coefs)
    budget = min(r for _, r in grid.values()) * 0.999  # below every steered setting's cost
    assert budget > 1.0  # ... yet the unsteered model (ratio 1) is within it
    rep = autotune(lm, vec, KL_UNDER_PPL, TUNE_TEXTS, coefficients=coefs, layer_sets=sets, budget=budget)
    assert rep.coefficient == 0.0
    assert rep.held_out["steered"] == rep.held_out["baseline"]


def test_evaluation_protocol():
    get_evaluation("cost")  # the built-ins are registered when steerlab.evaluate is imported
    assert set(EVALUATIONS) >= {"sentiment", "behavior", "cost"}
    report = CostReport(coefficients=[0.0, 2.0], perplexity=[5.0, 9.0], ppl_ratio=[1.0, 1.8], kl=[0.0, 0.4])
    assert isinstance(report, MetricReport)
    # columns follow the coefficients asked for, not the report's order
    assert metrics_at(report, [2.0, 0.0, 2.0]) == {
        "ppl_ratio": [1.8, 1.0, 1.8],
        "kl": [0.4, 0.0, 0.4],
        "perplexity": [9.0, 5.0, 9.0],
    }
    with pytest.raises(steerlab.SteeringSpecError, match=r"no coefficients \[1.0\]"):
        metrics_at(report, [1.0])
    with pytest.raises(steerlab.SteeringSpecError, match="among its metrics"):
        Evaluation("bad", offtarget_cost, metrics=("kl",), effect={1: "ppl_ratio"})
    with pytest.raises(steerlab.SteeringSpecError, match="unknown evaluation 'nope'"):
        get_evaluation("nope")


def test_register_refuses_a_taken_name_unless_replace(monkeypatch):
    get_evaluation("cost")  # the built-ins are registered
    monkeypatch.setattr(protocol, "EVALUATIONS", dict(protocol.EVALUATIONS))
    mine = Evaluation("cost", offtarget_cost, metrics=("kl",))
    with pytest.raises(steerlab.SteeringSpecError, match="replace=True"):
        register(mine)
    assert register(mine, replace=True) is mine and get_evaluation("cost") is mine
    # registering a built-in (as steerlab.evaluate does) never replaces it
    builtin = Evaluation("cost", offtarget_cost, metrics=("ppl_ratio",))
    assert protocol.register_builtin(builtin) is mine and get_evaluation("cost") is mine


def test_autotune_errors(lm, vec):
    with pytest.raises(steerlab.DatasetError, match="cost_texts"):
        autotune(lm, vec, "behavior", [{}], coefficients=[1])
    with pytest.raises(steerlab.DatasetError, match="at least 2"):
        autotune(lm, vec, "sentiment", ["x"], coefficients=[1])
    with pytest.raises(steerlab.SteeringSpecError, match="sign"):
        autotune(lm, vec, "sentiment", OPENINGS, coefficients=[-1], direction=1)
    with pytest.raises(steerlab.SteeringSpecError, match="unknown evaluation"):
        sweep(lm, vec, "nope", OPENINGS, coefficients=[1])
    with pytest.raises(steerlab.SteeringSpecError, match="measures none"):
        autotune(lm, vec, "cost", TEXTS, coefficients=[1])
    with pytest.raises(steerlab.SteeringSpecError, match="measure ppl_ratio, kl, perplexity, not 'p_matching'"):
        sweep(lm, vec, "cost", TEXTS, coefficients=[1], metric="p_matching")
