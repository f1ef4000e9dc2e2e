"""Analysis tools: residual-stream PCA, per-layer projections, cosine similarity of vectors."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

import steerlab
from steerlab.analysis.pca import PCAReport, activation_pca, center_pairs, contrast_pca, residual_pca
from steerlab.analysis.projection import ProjectionReport, best_threshold, cohens_d, projection
from steerlab.analysis.similarity import SimilarityReport, layer_similarity, vector_similarity
from steerlab.data.pairs import pair_texts
from steerlab.extraction.methods import center_on_midpoints

from .conftest import REPE

PNG = b"\x89PNG\r\n\x1a\n"

STORIES = [
    "Once upon a time, there was a little girl",
    "The cat sat on the mat",
    "Tom and his mom went to the park and",
    "Lily liked to play with her ball",
    "One day, a big dog came to the house",
    "The sun was hot and the sky was blue",
    "Ben had a red car. He",
    "Sue went to the shop to buy",
    "The bird flew up high in the tree",
    'Mom said, "Be careful!"',
]

POSITIVE = [
    "Lily was happy",
    "The dog was glad",
    "Tom smiled, he was happy",
    "Sue was very happy and she laughed",
    "Ben loved the sun, he was glad",
    "The cat was happy to play",
]
NEGATIVE = [
    "Lily was sad",
    "The dog was upset",
    "Tom cried, he was sad",
    "Sue was very sad and she cried",
    "Ben hated the rain, he was upset",
    "The cat was sad to stay",
]


@pytest.fixture(scope="module")
def pairs() -> list[steerlab.ContrastPair]:
    return steerlab.pairs_from_lists(POSITIVE, NEGATIVE)


@pytest.fixture(scope="module")
def pca_report(lm: steerlab.LM) -> PCAReport:
    return residual_pca(lm, STORIES, layer=2, n_components=4)


@pytest.fixture(scope="module")
def proj_report(lm: steerlab.LM, pairs, vec) -> ProjectionReport:
    return projection(lm, pairs, vec)


def _other_model_vector() -> steerlab.SteeringVector:
    return steerlab.SteeringVector({1: torch.ones(64)}, model_id="other-model", d_model=64, n_layers=5)


def _check_outputs(report, tmp_path) -> None:
    data = json.loads(report.to_json())
    assert data["kind"] == type(report).__name__ and data["rows"]
    md = report.to_markdown()
    assert md.startswith("### ") and "|" in md
    png = report.plot(tmp_path / f"{type(report).__name__}.png")
    assert png.read_bytes()[:8] == PNG


# ----------------------------------------------------------------------------- PCA
def test_residual_pca_variance_and_shapes(lm, pca_report):
    r = pca_report
    ratios = r.explained_variance_ratio
    assert r.n_components == 4 and len(ratios) == 4
    assert sum(ratios) <= 1.0 + 1e-9
    assert all(a >= b for a, b in itertools.pairwise(ratios))
    assert r.components.shape == (4, lm.d_model)
    assert torch.allclose(r.components.norm(dim=1), torch.ones(4), atol=1e-5)
    assert r.projections.shape == (len(STORIES), 2)
    assert (r.model_id, r.d_model, r.n_layers, r.layer) == (lm.model_id, lm.d_model, lm.n_layers, 2)
    # the projections are the centred activations on the components
    acts = steerlab.capture(lm, STORIES, 2)[2]
    expect = (acts - r.mean) @ r.components[:2].T
    assert torch.allclose(r.projections, expect, atol=1e-3)
    assert [row["component"] for row in r.rows()] == ["PC1", "PC2", "PC3", "PC4"]


def test_pca_direction_is_a_usable_steering_vector(lm, pca_report):
    v = pca_report.direction(0, lm)
    assert isinstance(v, steerlab.SteeringVector)
    assert v.layers == [2] and v.method == "pca_residual" and v.model_id == lm.model_id
    # coefficient 1 = one standard deviation of the projections along PC1
    std = float(pca_report.projections[:, 0].std())
    assert math.isclose(v.norms()[2], std, rel_tol=1e-3)
    v.check_model(lm)
    base = steerlab.generate(lm, ["Once upon a time"], max_new_tokens=6)
    steered = steerlab.generate(lm, ["Once upon a time"], steering=steerlab.Steering(v, 8.0), max_new_tokens=6)
    assert isinstance(steered[0], str) and steered != base
    with pytest.raises(steerlab.InvalidVectorError, match="component 4"):
        pca_report.direction(4)


def test_pca_caps_components_and_validates(lm):
    r = residual_pca(lm, STORIES[:3], layer=-1, n_components=8)
    assert r.n_components == 3 and r.layer == lm.n_layers - 1
    with pytest.raises(steerlab.DatasetError):
        residual_pca(lm, STORIES[:1], layer=1)
    with pytest.raises(steerlab.DatasetError, match="labels"):
        residual_pca(lm, STORIES, layer=1, labels=["a"])
    with pytest.raises(steerlab.LayerRangeError):
        residual_pca(lm, STORIES, layer=lm.n_layers)


def test_contrast_pca_labels_and_orientation(lm, pairs):
    r = contrast_pca(lm, pairs, layer=3, n_components=4)
    assert r.labels == ["positive", "negative"] * len(pairs)
    assert r.separation is not None and len(r.separation) == 4
    pos, neg = r.projections[0::2], r.projections[1::2]
    # components are oriented so positives project above negatives
    assert (pos.mean(0) >= neg.mean(0)).all()
    assert all(s >= 0 for s in r.separation)
    assert "separation" in r.rows()[0]
    centred = contrast_pca(lm, pairs, layer=3, n_components=4, center=True)
    assert centred.settings["center"] is True and centred.title.startswith("Pair-centred")
    pos, neg = centred.projections[0::2, 0], centred.projections[1::2, 0]
    assert torch.allclose(pos, -neg, atol=1e-3)  # pair-centred points mirror each other
    assert centred.separation is not None and centred.separation[0] > 0


def test_activation_pca_and_center_pairs(lm):
    acts = torch.randn(6, lm.d_model, generator=torch.Generator().manual_seed(0))
    centred = center_pairs(acts)
    assert torch.allclose(centred[0::2], -centred[1::2], atol=1e-6)
    # the interleaved view and the extraction method's centring are the same numbers
    pos, neg = center_on_midpoints(acts[0::2], acts[1::2])
    assert torch.equal(centred[0::2], pos) and torch.equal(centred[1::2], neg)
    assert torch.equal(centred, acts - ((acts[0::2] + acts[1::2]) / 2).repeat_interleave(2, dim=0))
    r = activation_pca(lm, acts, layer=1, n_components=2, labels=list("ababab"), orient_label="a")
    assert r.separation is not None and all(s >= 0 for s in r.separation)
    with pytest.raises(steerlab.DatasetError):
        center_pairs(acts[:5])
    with pytest.raises(steerlab.DatasetError, match="d_model"):
        activation_pca(lm, torch.randn(4, 3), layer=1)
    with pytest.raises(steerlab.DatasetError, match="orient_label"):
        activation_pca(lm, acts, layer=1, labels=list("ababab"), orient_label="c")


def test_pca_outputs(pca_report, lm, pairs, tmp_path):
    _check_outputs(pca_report, tmp_path)
    labelled = contrast_pca(lm, pairs, layer=1, n_components=3)
    data = json.loads(labelled.to_json())
    assert data["labels"][:2] == ["positive", "negative"] and len(data["components"]) == 3
    assert labelled.plot(tmp_path / "contrast.png").read_bytes()[:8] == PNG


# ----------------------------------------------------------------------------- projection
def test_projection_separates_at_vector_layers(proj_report, pairs, vec):
    r = proj_report
    assert r.layers == vec.layers and r.n_pairs == len(pairs)
    for p in r.per_layer:
        assert len(p.positive) == len(p.negative) == len(pairs)
        assert p.pos_mean > p.neg_mean
        assert p.cohens_d > 0
        assert 0.5 <= p.midpoint_accuracy <= 1.0 and p.best_accuracy >= p.midpoint_accuracy
    assert r.best_layer in vec.layers
    assert [row["layer"] for row in r.rows()] == vec.layers


def test_projection_layer_subset_and_errors(lm, pairs, vec):
    r = projection(lm, pairs, vec, layers=[2])
    assert r.layers == [2]
    assert math.isclose(r.layer(2).pos_mean, projection(lm, pairs, vec).layer(2).pos_mean, rel_tol=1e-5)
    with pytest.raises(steerlab.LayerRangeError):
        projection(lm, pairs, vec, layers=[4])
    with pytest.raises(steerlab.ModelMismatchError):
        projection(lm, pairs, _other_model_vector())
    with pytest.raises(steerlab.DatasetError):
        projection(lm, pairs[:1], vec)


def test_projection_statistics_helpers():
    assert math.isclose(cohens_d([1.0, 2.0, 3.0], [0.0, 1.0, 2.0]), 1.0)
    assert math.isnan(cohens_d([1.0], [0.0, 1.0]))
    _t, acc = best_threshold(np.array([2.0, 3.0, 0.5]), np.array([0.0, 1.0, 2.5]))
    assert acc == pytest.approx(4 / 6)
    assert best_threshold(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == (1.5, 1.0)


def test_projection_outputs(proj_report, tmp_path):
    _check_outputs(proj_report, tmp_path)
    data = json.loads(proj_report.to_json())
    assert len(data["per_layer"][0]["positive"]) == 6


# ----------------------------------------------------------------------------- similarity
def test_layer_similarity_is_symmetric_with_unit_diagonal(vec, actadd_vec):
    r = layer_similarity(vec)
    assert r.labels == ["layer 1", "layer 2", "layer 3"]
    m = torch.tensor(r.matrix)
    assert torch.allclose(m.diagonal(), torch.ones(3), atol=1e-6)
    assert torch.allclose(m, m.T, atol=1e-9)
    assert (m.abs() <= 1.0).all()
    tokenwise = layer_similarity(actadd_vec)  # collapsed with token_mean()
    assert tokenwise.matrix[0][0] == pytest.approx(1.0)


def test_vector_similarity_scaled_and_negated(vec):
    r = vector_similarity({"v": vec, "2v": 2 * vec, "-v": -vec})
    assert r.get("v", "2v") == pytest.approx(1.0)
    assert r.get("v", "-v") == pytest.approx(-1.0)
    assert r.layers == vec.layers
    at = vector_similarity({"v": vec, "-v": -vec}, layer=2)
    assert at.layers == [2] and at.get("-v", "v") == pytest.approx(-1.0)


def test_vector_similarity_errors(vec):
    with pytest.raises(steerlab.InvalidVectorError, match="share no layer"):
        vector_similarity({"a": vec.select([1]), "b": vec.select([3])})
    with pytest.raises(steerlab.InvalidVectorError, match="layer 4"):
        vector_similarity({"a": vec, "b": vec}, layer=4)
    with pytest.raises(steerlab.ModelMismatchError):
        vector_similarity({"a": vec, "b": _other_model_vector()})
    with pytest.raises(steerlab.InvalidVectorError):
        vector_similarity({})


def test_similarity_outputs(vec, tmp_path):
    r = vector_similarity({"v": vec, "-v": -vec})
    assert isinstance(r, SimilarityReport)
    _check_outputs(r, tmp_path)
    _check_outputs(layer_similarity(vec), tmp_path)
    assert r.rows()[0] == {"": "v", "v": pytest.approx(1.0), "-v": pytest.approx(-1.0)}


# ----------------------------------------------------------------------------- real model
def _separation(scores: torch.Tensor) -> float:
    """|mean(pos) − mean(neg)| / pooled std of interleaved [pos, neg, ...] scores."""
    pos, neg = scores[0::2].double(), scores[1::2].double()
    return abs(float(pos.mean() - neg.mean())) / math.sqrt(float(pos.var() + neg.var()) / 2)


@pytest.mark.slow
def test_contrast_pca_separates_happy_sad_on_default_model():
    """CAA's interpretation question on SmolLM2-135M, layer 15, 32 happy/sad persona pairs.

    Raw activations: the top PCs follow the sentence opening (shared by both sides of a pair),
    not the persona, so PC1 does not separate the labels. Pair-centred (contrast_pca(center=True)):
    PC1 separates them cleanly.
    """
    smol = steerlab.load_model("default")
    openings = steerlab.load_openings(REPE / "all_truncated_outputs.json")[:32]
    pairs = steerlab.persona_pairs("happy", "sad", openings)
    texts, reads = pair_texts(smol, pairs)
    acts = steerlab.capture(smol, texts, 15, reads)[15]  # one capture, analysed both ways
    labels = ["positive", "negative"] * len(pairs)
    raw = activation_pca(smol, acts, 15, labels=labels, orient_label="positive")
    centred = activation_pca(smol, center_pairs(acts), 15, labels=labels, orient_label="positive")
    raw_sep, centred_sep = _separation(raw.projections[:, 0]), _separation(centred.projections[:, 0])
    for name, r, sep in (("raw", raw, raw_sep), ("pair-centred", centred, centred_sep)):
        print(
            f"\n{name}: explained variance ratio {[round(x, 3) for x in r.explained_variance_ratio]}"
            f"\n  PC1 |mean diff| / pooled std = {sep:.2f}; Cohen's d per PC "
            f"{[round(x, 2) for x in r.separation or []]}"
        )
    assert centred_sep > 1.0
    assert raw_sep < centred_sep
    assert centred.direction(0, smol).layers == [15]
