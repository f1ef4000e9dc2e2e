"""Why too large a coefficient breaks the model (steerlab.analysis.breakdown)."""

from __future__ import annotations

import json
import time

import pytest
import torch

import steerlab
from steerlab.analysis import BreakdownReport, breakdown_curve
from steerlab.analysis.breakdown import DEFAULT_COEFFICIENTS
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


@pytest.fixture(scope="module")
def full(lm, vec) -> BreakdownReport:
    return breakdown_curve(lm, vec, TEXTS)  # the default symmetric grid


def test_norm_ratio_is_linear_in_the_coefficient(lm, vec):
    rep = breakdown_curve(lm, vec, TEXTS, coefficients=(0, 1, 2, -2, 0.5))
    r = dict(zip(rep.coefficients, rep.norm_ratio))
    assert r[0.0] == 0.0
    assert r[2.0] == pytest.approx(2 * r[1.0], abs=1e-5)
    assert r[1.0] == pytest.approx(2 * r[0.5], abs=1e-5)
    assert r[-2.0] == pytest.approx(r[2.0], abs=1e-9)
    for k, per in rep.layer_norm_ratio.items():
        assert per[1] == pytest.approx(rep.vector_norm[k] / rep.residual_norm[k], rel=1e-6)
    assert rep.norm_ratio[1] == pytest.approx(max(per[1] for per in rep.layer_norm_ratio.values()))
    assert rep.ratio_per_unit == pytest.approx(r[1.0])
    # cumulative: the stream at layer l carries c·(v_1 + ... + v_l)
    cum = max(
        float(sum(vec.directions[j] for j in vec.layers if j <= k).norm()) / rep.residual_norm[k] for k in vec.layers
    )
    assert rep.cumulative_norm_ratio[1] == pytest.approx(cum, rel=1e-6)
    assert rep.cumulative_norm_ratio[2] == pytest.approx(2 * cum, rel=1e-6)
    single = breakdown_curve(lm, vec, TEXTS, coefficients=(1,), layers=[2])
    assert single.cumulative_norm_ratio == pytest.approx(single.norm_ratio)


def test_residual_norm_is_the_mean_token_norm(lm, vec):
    rep = breakdown_curve(lm, vec, TEXTS, coefficients=(0,))
    with_first = breakdown_curve(lm, vec, TEXTS, coefficients=(0,), include_first_token=True)
    for layer in vec.layers:
        norms = [steerlab.capture_tokens(lm, t, [layer])[layer].norm(dim=-1) for t in TEXTS]
        expected = float(sum(n[1:].sum() for n in norms)) / sum(len(n) - 1 for n in norms)
        expected_all = float(sum(n.sum() for n in norms)) / sum(len(n) for n in norms)
        assert rep.residual_norm[layer] == pytest.approx(expected, rel=1e-5)
        assert with_first.residual_norm[layer] == pytest.approx(expected_all, rel=1e-5)
        assert rep.vector_norm[layer] == pytest.approx(float(vec.directions[layer].norm()))


def test_default_grid_finds_the_breaking_point(full):
    assert full.coefficients == list(DEFAULT_COEFFICIENTS)
    zero = full.coefficients.index(0.0)
    assert full.kl[zero] == 0.0 and full.ppl_ratio[zero] == 1.0
    assert full.perplexity[zero] == pytest.approx(full.base_perplexity)
    bp = full.breaking_point
    assert bp is not None
    for c, r in zip(full.coefficients, full.ppl_ratio):
        if abs(c) < bp:
            assert r <= 2.0
    assert any(abs(c) == bp and r > 2.0 for c, r in zip(full.coefficients, full.ppl_ratio))
    assert full.breaking_norm_ratio == pytest.approx(bp * full.ratio_per_unit)
    assert bp in (full.breaking_point_positive, full.breaking_point_negative)
    # KL grows with |c| on each side over the large range (0, 2, 8 ...)
    pos = [k for c, k in zip(full.coefficients, full.kl) if c in (0.0, 2.0, 8.0, 16.0)]
    neg = [k for c, k in zip(full.coefficients, full.kl) if c in (0.0, -2.0, -8.0, -16.0)][::-1]
    assert pos == sorted(pos) and neg == sorted(neg)


def test_no_breaking_point_for_a_tiny_vector(lm, vec):
    rep = breakdown_curve(lm, vec.normalized(0.01), TEXTS, coefficients=(0, 0.5, 1))
    assert rep.breaking_point is None and rep.breaking_norm_ratio is None
    assert "never" in rep.to_markdown()


def test_report_outputs(full, tmp_path):
    rows = full.rows()
    assert list(rows[0]) == ["coefficient", "norm_ratio", "ppl", "ppl_ratio", "kl"]
    data = json.loads(full.to_json())
    assert data["kind"] == "BreakdownReport" and len(data["rows"]) == len(DEFAULT_COEFFICIENTS)
    assert set(data["residual_norm"]) == {"1", "2", "3"}
    md = full.to_markdown()
    assert "Breaking point" in md and "| coefficient | norm_ratio |" in md
    assert full.plot(tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = full.write(tmp_path / "rep", name="breakdown")
    assert (out / "breakdown.png").is_file() and (out / "breakdown.json").is_file()


def test_layer_subset_and_linear_grid_plot(lm, vec, tmp_path):
    rep = breakdown_curve(lm, vec, TEXTS, coefficients=(0, 1, 2, 3), layers=[2])
    assert list(rep.residual_norm) == [2] and rep.settings["layers"] == [2]
    assert rep.plot(tmp_path / "lin.png").read_bytes()[:4] == b"\x89PNG"


def test_errors(lm, vec, actadd_vec):
    with pytest.raises(steerlab.DatasetError):
        breakdown_curve(lm, vec, [])
    with pytest.raises(steerlab.LayerRangeError):
        breakdown_curve(lm, vec, TEXTS, layers=[4])
    with pytest.raises(steerlab.SteeringSpecError):
        breakdown_curve(lm, actadd_vec, TEXTS, coefficients=(1,))


@pytest.mark.slow
def test_breakdown_on_default_model():
    from steerlab.evaluate.cost import load_texts

    smol = steerlab.load_model("default")
    openings = steerlab.load_openings(REPE / "all_truncated_outputs.json")
    pairs = steerlab.persona_pairs("happy", "sad", openings[:16])
    happy = steerlab.extract(smol, pairs, method="mean_diff", layers=range(8, 20))
    facts = load_texts(REPE / "facts_true_false.csv", limit=8)
    start = time.perf_counter()
    rep = breakdown_curve(smol, happy, facts, coefficients=(0, 1, 4, 16))
    elapsed = time.perf_counter() - start
    print()
    print(rep.to_markdown())
    print(f"breakdown_curve took {elapsed:.1f} s")
    ratio = dict(zip(rep.coefficients, rep.ppl_ratio))
    assert ratio[0.0] == 1.0
    assert ratio[16.0] > ratio[1.0]
    assert elapsed < 60
