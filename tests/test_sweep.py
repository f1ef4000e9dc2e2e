"""Layer × coefficient sweeps and auto-tune (selection on one half, report on the other)."""

from __future__ import annotations

import math

import pytest

import steerlab
from steerlab.evaluate.sweep import autotune, sweep

from .conftest import CAA

OPENINGS = ["Once upon a time", "The cat", "Lily was", "Tom saw a", "The sun", "Mom said"]
TEXTS = ["Once upon a time, there was a little girl named Lily.", "The dog ran to the park.", "Tom had a red ball."]


def test_sentiment_sweep_grid_and_heatmap(lm, vec, tmp_path):
    rep = sweep(lm, vec, "sentiment", OPENINGS[:3], coefficients=[-4, 0, 4], layer_sets=[[1], [2, 3]],
                metric="mean_compound", max_new_tokens=5)
    assert rep.complete and rep.layer_sets == [[1], [2, 3]]
    assert set(rep.grids) == {"positive_share", "negative_share", "mean_compound", "continuation_ppl"}
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


def test_behavior_sweep(lm, vec):
    items = steerlab.load_caa(CAA / "test" / "sycophancy" / "test_dataset_ab.json", limit=4)
    rep = sweep(lm, vec, "behavior", items, coefficients=[-2, 0, 2], layer_sets=[[2]])
    assert all(0 < v < 1 for v in rep.grids["p_matching"][0])


def test_autotune_respects_budget_and_reports_held_out(lm, vec, tmp_path):
    rep = autotune(lm, vec, "sentiment", OPENINGS, coefficients=[1, 4, 16, -3], layer_sets=[[1], [3]],
                   budget=1.5, max_new_tokens=5)
    assert rep.n_select == 3 and rep.n_report == 3
    assert rep.coefficient in (0.0, 1.0, 4.0, 16.0)
    i = rep.selection["layer_sets"].index(rep.layers)
    j = rep.selection["coefficients"].index(rep.coefficient)
    assert rep.selection["cost"][i][j] <= 1.5 or rep.coefficient == 0.0
    assert set(rep.held_out) == {"baseline", "steered"}
    assert math.isclose(rep.held_out["baseline"]["continuation_ppl_ratio"], 1.0)
    rep.write(tmp_path, "autotune")
    assert (tmp_path / "autotune.png").is_file()


def test_autotune_errors(lm, vec):
    with pytest.raises(steerlab.DatasetError, match="cost_texts"):
        autotune(lm, vec, "behavior", [{}], coefficients=[1])
    with pytest.raises(steerlab.DatasetError, match="at least 2"):
        autotune(lm, vec, "sentiment", ["x"], coefficients=[1])
    with pytest.raises(steerlab.SteeringSpecError, match="sign"):
        autotune(lm, vec, "sentiment", OPENINGS, coefficients=[-1], direction=1)
    with pytest.raises(steerlab.SteeringSpecError, match="unknown evaluation"):
        sweep(lm, vec, "nope", OPENINGS, coefficients=[1])
