"""Relative coefficients: a vector rescaled to the residual norm at each layer, so a coefficient is a
fraction of the residual stream's typical norm whatever the layer, method or model."""

from __future__ import annotations

import pytest
import torch

import steerlab
from steerlab import Steering
from steerlab.analysis import breakdown_curve


def test_relative_vector_has_the_residual_norms(lm, vec):
    norms = steerlab.residual_norms(lm)
    assert set(norms) == set(range(lm.n_layers)) and all(n > 0 for n in norms.values())
    rel = steerlab.relative(vec, lm)
    for k in vec.layers:
        # float noise of a float32 rescale: measured |relative difference| <= 1.4e-7 (AVX512, AVX2, default)
        assert float(rel.directions[k].norm()) == pytest.approx(norms[k], rel=1e-5)
        cos = torch.nn.functional.cosine_similarity(rel.directions[k], vec.directions[k], dim=0)
        # float noise: measured |1 - cos| <= 1.2e-7 (AVX512, AVX2, default): 8x margin
        assert float(cos) == pytest.approx(1.0, abs=1e-6)
    assert rel.meta["scale"] == "residual"


def test_a_relative_coefficient_is_the_added_share_of_the_residual_norm(lm, vec):
    rel = steerlab.relative(vec, lm)
    text = "The capital of France is Paris, and the city lies on the river Seine."
    rep = breakdown_curve(lm, rel, [text], coefficients=[0.0, 0.1, 0.5])
    for k in rel.layers:  # the norm ratio breakdown measures on the same kind of text
        ratios = rep.layer_norm_ratio[k]
        assert ratios[1] == pytest.approx(0.1, rel=0.25) and ratios[2] == pytest.approx(0.5, rel=0.25)
    plain = steerlab.generate(lm, ["Once upon a time"], max_new_tokens=8)
    assert steerlab.generate(lm, ["Once upon a time"], steering=Steering(rel, 0.0), max_new_tokens=8) == plain


def test_norms_are_measured_once_per_model(lm, monkeypatch):
    import importlib

    capture_mod = importlib.import_module("steerlab.extraction.capture")
    steerlab.residual_norms(lm)
    calls = []
    real = capture_mod.capture_tokens
    monkeypatch.setattr(capture_mod, "capture_tokens", lambda *a, **k: calls.append(1) or real(*a, **k))
    steerlab.residual_norms(lm)
    assert calls == []
    steerlab.residual_norms(lm, ["Some other neutral text here."])
    assert calls == [1]


def test_errors(lm, vec, actadd_vec):
    with pytest.raises(steerlab.InvalidVectorError, match="token_mean"):
        steerlab.relative(actadd_vec, lm)
    with pytest.raises(steerlab.InvalidVectorError, match="no direction"):
        steerlab.relative(vec * 0.0, lm)
    with pytest.raises(steerlab.InvalidVectorError, match="two or more tokens"):
        steerlab.residual_norms(lm, [""])
