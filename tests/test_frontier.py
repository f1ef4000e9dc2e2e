"""Prompting as a method, the effect–fluency frontier, and pca_diff orientation metadata."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
import torch
from typer.testing import CliRunner

import steerlab
from steerlab import Steering
from steerlab.cli import app
from steerlab.data.ab import ab_items
from steerlab.evaluate import Contender, Prompt, frontier
from steerlab.evaluate.behavior import ab_probabilities, behavior_eval
from steerlab.evaluate.cost import offtarget_cost, text_stats
from steerlab.evaluate.frontier import FrontierPoint, FrontierReport, _choose, _mark_and_choose, pareto_front
from steerlab.evaluate.likelihood import continuation_nll, perplexities, pooled_perplexity
from steerlab.evaluate.prompting import as_prompt
from steerlab.evaluate.sentiment import sentiment_shift
from steerlab.evaluate.sweep import _choose as autotune_choose
from steerlab.evaluate.sweep import autotune, split_halves
from steerlab.extraction.methods.pca import orientation, oriented, reorient

from .conftest import CAA, STORIES
from .context_fit import ab_records_within_context

OPENINGS = ["Once upon a time", "The cat", "Lily was", "Tom saw a", "The sun", "Mom said"]
HAPPY = Prompt("Here is a happy story. ", name="happy")
SAD = Prompt("Here is a sad story. ", name="sad")


# --------------------------------------------------------------------------- prompting rows
def test_prompted_continuations_are_scored_under_the_plain_model(lm):
    openings = OPENINGS[:4]
    rep = sentiment_shift(lm, None, openings, coefficients=[0], prompt=HAPPY, max_new_tokens=6, n_bootstrap=0)
    prompted = steerlab.generate(lm, [HAPPY.text + o for o in openings], max_new_tokens=6)
    assert [c for _, c in rep.examples["0.0"]] == prompted
    # the cost of a prompted continuation: its perplexity under the unprompted model given the plain opening
    under_plain = perplexities(continuation_nll(lm, openings, prompted))
    under_prompt = perplexities(continuation_nll(lm, [HAPPY.text + o for o in openings], prompted))
    row = rep.by_coefficient[0]
    assert row.mean_perplexity == pytest.approx(sum(under_plain) / len(under_plain), rel=1e-4)
    assert row.mean_perplexity != pytest.approx(sum(under_prompt) / len(under_prompt), rel=1e-3)
    # ... divided by the plain model's own continuations' (the reference row), as for steered rows
    plain = steerlab.generate(lm, openings, max_new_tokens=6)
    ref = perplexities(continuation_nll(lm, openings, plain))
    assert rep.reference is not None and rep.reference.mean_perplexity == pytest.approx(sum(ref) / len(ref), rel=1e-4)
    assert row.ppl_ratio == pytest.approx(row.mean_perplexity / rep.reference.mean_perplexity)
    assert rep.metrics()["continuation_ppl_ratio"] == [row.ppl_ratio]
    assert rep.prompt == HAPPY.describe() and rep.rows()[0]["prompt"] == "happy"
    assert rep.settings["vector_method"] == "prompting"


def test_prompt_combined_with_a_vector(lm, vec):
    openings = OPENINGS[:3]
    rep = sentiment_shift(lm, vec, openings, coefficients=[0, 2], prompt=HAPPY, max_new_tokens=5, n_bootstrap=0)
    texts = [HAPPY.text + o for o in openings]
    assert [c for _, c in rep.examples["0.0"]] == steerlab.generate(lm, texts, max_new_tokens=5)
    steered = steerlab.generate(lm, texts, steering=Steering(vec, 2.0), max_new_tokens=5)
    assert [c for _, c in rep.examples["2.0"]] == steered
    expected = perplexities(continuation_nll(lm, openings, steered))  # plain opening, unsteered model
    assert rep.row(2).mean_perplexity == pytest.approx(sum(expected) / len(expected), rel=1e-4)
    # coefficient 0 with a prompt is the prompt alone, not the reference: its ratio is not 1
    assert rep.row(0).ppl_ratio != 1.0 and rep.reference is not None and rep.reference.ppl_ratio == 1.0


def test_unprompted_reference_is_the_coefficient_zero_row(lm, vec):
    rep = sentiment_shift(lm, vec, OPENINGS[:3], coefficients=[-1, 0, 1], max_new_tokens=4, n_bootstrap=0)
    assert rep.row(0).ppl_ratio == 1.0 and rep.reference is not None
    assert rep.reference.mean_perplexity == rep.row(0).mean_perplexity
    without_zero = sentiment_shift(lm, vec, OPENINGS[:3], coefficients=[1], max_new_tokens=4, n_bootstrap=0)
    assert without_zero.row(1).ppl_ratio == pytest.approx(rep.row(1).ppl_ratio)


def test_prompt_errors(lm, vec):
    with pytest.raises(steerlab.SteeringSpecError, match="need a vector"):
        sentiment_shift(lm, None, OPENINGS[:2], coefficients=[0, 1], prompt=HAPPY)
    with pytest.raises(steerlab.SteeringSpecError, match="chat=True"):
        sentiment_shift(lm, None, OPENINGS[:2], coefficients=[0], prompt=Prompt("Be happy.", "system"))
    with pytest.raises(steerlab.SteeringSpecError, match="non-empty"):
        Prompt("  ")
    with pytest.raises(steerlab.SteeringSpecError, match="mode"):
        Prompt("x", "suffix")  # type: ignore[arg-type]
    assert as_prompt("Hi. ") == Prompt("Hi. ") and as_prompt({"text": "Hi.", "mode": "system"}).mode == "system"
    with pytest.raises(steerlab.SteeringSpecError, match="need a vector"):
        behavior_eval(lm, None, ab_items(_caa_items(lm)), coefficients=[0, 1], prompt=HAPPY)


def _caa_items(lm, n=3):
    return ab_records_within_context(lm, CAA / "test" / "sycophancy" / "test_dataset_ab.json", n)


def test_behavior_prompt_alone_and_with_a_vector(lm, vec):
    items = ab_items(_caa_items(lm))
    prefixed = [type(it)(HAPPY.text + it.prompt, it.positive_letter, it.negative_letter, it.category) for it in items]
    alone = behavior_eval(lm, None, items, coefficients=[0], prompt=HAPPY, n_bootstrap=0)
    assert alone.points[0].probabilities == pytest.approx(ab_probabilities(lm, prefixed), abs=1e-6)
    plain = behavior_eval(lm, vec, items, coefficients=[0], n_bootstrap=0)
    assert plain.points[0].probabilities != pytest.approx(alone.points[0].probabilities, abs=1e-6)
    both = behavior_eval(lm, vec, items, coefficients=[0, 2], prompt=HAPPY, n_bootstrap=0)
    steered = ab_probabilities(lm, prefixed, Steering(vec, 2.0, positions="generated"))
    assert both.point(2).probabilities == pytest.approx(steered, abs=1e-6)
    assert both.prompt == HAPPY.describe() and both.rows()[0]["prompt"] == "happy"


def test_autotune_with_a_prompt_costs_against_the_unprompted_model(lm, vec):
    rep = autotune(
        lm,
        vec,
        "sentiment",
        OPENINGS,
        coefficients=[1, 4],
        layer_sets=[[1, 2, 3]],
        budget=1e9,
        prompt=HAPPY,
        max_new_tokens=4,
    )
    report_half = split_halves(OPENINGS)[1]
    direct = sentiment_shift(
        lm,
        vec.select(rep.layers),
        report_half,
        coefficients=sorted({0.0, rep.coefficient}),
        prompt=HAPPY,
        max_new_tokens=4,
    )
    assert rep.held_out["baseline"]["continuation_ppl_ratio"] == pytest.approx(direct.row(0).ppl_ratio)
    assert rep.held_out["baseline"]["continuation_ppl_ratio"] != 1.0
    assert rep.fits_budget and rep.settings["prompt"] == HAPPY.describe()


def test_autotune_choice_never_does_worse_than_coefficient_zero():
    effect = [[0.5, 0.3, 0.4], [0.5, 0.2, 0.45]]
    cost = [[1.0, 1.05, 1.1], [1.0, 1.02, 1.4]]
    assert autotune_choose(effect, cost, [0.0, 1.0, 2.0], budget=1.2) == (0, 0)
    effect[0][2] = 0.6
    assert autotune_choose(effect, cost, [0.0, 1.0, 2.0], budget=1.2) == (0, 2)
    assert autotune_choose(effect, [[9.0] * 3] * 2, [0.0, 1.0, 2.0], budget=1.2) == (0, 0)  # nothing fits


NEUTRAL = ["Once upon a time, there was a little girl named Lily.", "The dog ran to the park.", "Tom had a red ball."]


def test_prompt_cost_on_neutral_text(lm, vec):
    alone = offtarget_cost(lm, None, NEUTRAL, [0], prompt=HAPPY)
    # the texts read after the prompt, against the plain texts under the unsteered model
    assert alone.perplexity[0] == pytest.approx(
        pooled_perplexity(continuation_nll(lm, [HAPPY.text] * 3, NEUTRAL)), rel=1e-4
    )
    plain = text_stats(lm, NEUTRAL)
    assert alone.base_perplexity == pytest.approx(plain.perplexity, rel=1e-4)
    assert alone.ppl_ratio[0] == pytest.approx(alone.perplexity[0] / plain.perplexity)
    assert alone.kl[0] > 0 and alone.settings["prompt"]["text"] == HAPPY.text
    both = offtarget_cost(lm, vec, NEUTRAL, [0, 2], prompt=HAPPY)
    assert both.perplexity[0] == pytest.approx(alone.perplexity[0], rel=1e-5)
    with steerlab.steer(lm, Steering(vec, 2.0)):
        steered = pooled_perplexity(continuation_nll(lm, [HAPPY.text] * 3, NEUTRAL))
    assert both.perplexity[1] == pytest.approx(steered, rel=1e-4)
    with pytest.raises(steerlab.SteeringSpecError, match="prefix prompts only"):
        offtarget_cost(lm, None, NEUTRAL, [0], prompt=Prompt("Be happy.", "system"))
    with pytest.raises(steerlab.SteeringSpecError, match="need a vector"):
        offtarget_cost(lm, None, NEUTRAL, [0, 1], prompt=HAPPY)


def test_behavior_frontier_with_prompting_and_neutral_text_cost(lm, vec):
    items = _caa_items(lm, 5)
    rep = frontier(
        lm,
        [
            Contender.steering("mean_diff", vec, [2], layer_sets=[[2]]),
            Contender.prompting("prompting", positive=[HAPPY], negative=[SAD]),
        ],
        items,
        kind="behavior",
        cost_texts=NEUTRAL,
        budget=3.0,
        n_bootstrap=0,
    )
    assert rep.cost_metric == "ppl_ratio" and rep.effect_metrics == {1: "p_matching", -1: "p_not_matching"}
    p = next(p for p in rep.points if p.method == "prompting" and p.direction == 1)
    assert p.cost == pytest.approx(offtarget_cost(lm, None, NEUTRAL, [0], prompt=HAPPY).ppl_ratio[0])
    select = split_halves(items)[0]
    direct = behavior_eval(lm, None, select, coefficients=[0], prompt=HAPPY, n_bootstrap=0)
    assert p.selection["p_matching"] == pytest.approx(direct.points[0].mean)
    assert rep.baseline["ppl_ratio"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- pareto, choice
def _dominated(p: tuple[float, float], others: list[tuple[float, float]]) -> bool:
    return any(o[0] <= p[0] and o[1] >= p[1] and o != p for o in others)


def test_pareto_front_on_synthetic_points():
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 0.3), (1.1, 0.5), (1.2, 0.4), (1.0, 0.3)]) == [True, True, False, True]
    assert pareto_front([(1.0, 0.5), (1.0, 0.6)]) == [False, True]  # same cost, higher effect wins
    assert pareto_front([(1.2, 0.5), (1.0, 0.5)]) == [False, True]  # same effect, lower cost wins
    rng = random.Random(0)
    for _ in range(20):
        pts = [(round(rng.uniform(0.9, 3), 2), round(rng.random(), 2)) for _ in range(25)]
        flags = pareto_front(pts)
        for p, on in zip(pts, flags):
            assert on == (not _dominated(p, pts))
        front = sorted(p for p, on in zip(pts, flags) if on)
        assert all(a[1] <= b[1] for a, b in itertools.pairwise(front))  # effect rises along the front


def _point(method: str, d: int, c: float, sel: tuple[float, float], held: tuple[float, float]) -> FrontierPoint:
    ws = 0.5
    eff, cost = ws * sel[0] + (1 - ws) * held[0], ws * sel[1] + (1 - ws) * held[1]
    return FrontierPoint(
        method,
        d,
        [1],
        c,
        "",
        eff,
        cost,
        {"positive_share": sel[0], "ratio": sel[1]},
        {"positive_share": held[0], "ratio": held[1]},
    )


def test_marking_and_choice_on_synthetic_points():
    pts = [
        _point("a", 1, 0.0, (0.3, 1.0), (0.3, 1.0)),
        _point("a", 1, 1.0, (0.6, 1.1), (0.5, 1.2)),  # best within budget on the selection half
        _point("a", 1, 2.0, (0.9, 1.6), (0.9, 1.7)),  # higher, but over budget
        _point("a", 1, 0.5, (0.2, 1.3), (0.2, 1.3)),  # dominated
        _point("b", 1, 1.0, (0.2, 2.0), (0.2, 2.0)),  # another method: its own front
    ]
    report = FrontierReport(
        effect_metrics={1: "positive_share"}, cost_metric="ratio", budget=1.15, goal={1: 0.5}, points=pts
    )
    _mark_and_choose(report, [Contender("a", prompts={1: (HAPPY,)}), Contender("b", prompts={1: (HAPPY,)})], [1])
    assert [p.on_front for p in pts] == [True, True, True, False, True]
    best = report.best_of("a", 1)
    assert best is not None and best.point is pts[1] and best.reaches_goal  # held-out 0.5 ≥ goal 0.5
    assert report.front("a", 1) == [pts[0], pts[1], pts[2]]
    assert _choose(pts[2:3], "positive_share", "ratio", 1.15) is None
    ties = [_point("a", 1, 2.0, (0.6, 1.0), (0.6, 1.0)), _point("a", 1, -1.0, (0.6, 1.1), (0.6, 1.0))]
    assert _choose(ties, "positive_share", "ratio", 1.15) is ties[1]  # equal effect: the smaller |coefficient|
    md = report.to_markdown()
    assert "Pareto fronts" in md and "nothing within budget" in md  # b has nothing within budget


# --------------------------------------------------------------------------- frontier end to end
@pytest.fixture(scope="module")
def small_frontier(lm, vec):
    contenders = [
        Contender.steering("mean_diff", vec, [1, 4], layer_sets=[[1, 2, 3], [2]]),
        Contender.prompting("prompting", positive=[HAPPY], negative=[SAD]),
        Contender.combined("prompting+mean_diff", vec, [2], positive=[HAPPY], negative=[SAD], layer_sets=[[2]]),
    ]
    return frontier(lm, contenders, OPENINGS, budget=1.5, max_new_tokens=5, n_bootstrap=0)


def test_frontier_end_to_end_on_stories(lm, vec, small_frontier, tmp_path):
    rep = small_frontier
    assert rep.complete and rep.methods() == ["mean_diff", "prompting", "prompting+mean_diff"]
    assert rep.n_select == 3 and rep.n_report == 3
    md_pts = [p for p in rep.points if p.method == "mean_diff"]
    # one unsteered point per direction, then 2 layer sets × 2 coefficients per direction
    assert len(md_pts) == 2 + 2 * 2 * 2
    assert sorted({p.coefficient for p in md_pts}) == [-4.0, -1.0, 0.0, 1.0, 4.0]
    assert len([p for p in rep.points if p.method == "prompting"]) == 2
    # a point's numbers are the sentiment evaluation on each half
    select, held = split_halves(OPENINGS)
    p = next(p for p in md_pts if p.layers == [2] and p.coefficient == 4.0)
    direct = sentiment_shift(lm, vec.select([2]), held, coefficients=[0, 4], max_new_tokens=5, n_bootstrap=0)
    assert p.held_out["positive_share"] == direct.positive_share(4)
    assert p.held_out["continuation_ppl_ratio"] == pytest.approx(direct.row(4).ppl_ratio)
    assert p.effect == pytest.approx((p.selection["positive_share"] + p.held_out["positive_share"]) / 2)
    q = next(p for p in rep.points if p.method == "prompting" and p.direction == -1)
    direct = sentiment_shift(lm, None, select, coefficients=[0], prompt=SAD, max_new_tokens=5, n_bootstrap=0)
    assert q.prompt == "sad" and q.selection["negative_share"] == direct.negative_share(0)
    assert q.selection["continuation_ppl_ratio"] == pytest.approx(direct.row(0).ppl_ratio)
    # fronts and choices follow their definitions
    for method in rep.methods():
        for d in (1, -1):
            pts = [p for p in rep.points if p.method == method and p.direction == d]
            assert [p.on_front for p in pts] == pareto_front([(p.cost, p.effect) for p in pts])
            best = rep.best_of(method, d)
            assert best is not None
            if best.point is not None:
                metric = rep.effect_metrics[d]
                assert best.point.selection["continuation_ppl_ratio"] <= rep.budget
                fits = [p.selection[metric] for p in pts if p.selection["continuation_ppl_ratio"] <= rep.budget]
                assert best.point.selection[metric] == max(fits)
    assert rep.baseline["continuation_ppl_ratio"] == pytest.approx(1.0)
    out = rep.write(tmp_path, "frontier")
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((out / "frontier.json").read_text())
    assert data["kind"] == "FrontierReport" and len(data["points"]) == len(rep.points)
    assert data["evaluation"] == "sentiment"
    again = FrontierReport.from_dict(data)  # back from JSON: the same report, drawable again
    assert again.to_dict() == data and again.plot(tmp_path / "again.png").is_file()
    assert "Best inside the budget" in (out / "frontier.md").read_text()


def test_frontier_errors(lm, vec):
    with pytest.raises(steerlab.SteeringSpecError, match="no contenders"):
        frontier(lm, [], OPENINGS)
    with pytest.raises(steerlab.SteeringSpecError, match="differ"):
        frontier(lm, [Contender.steering("a", vec, [1]), Contender.steering("a", vec, [2])], OPENINGS)
    with pytest.raises(steerlab.SteeringSpecError, match=r"directions must be among \[\] for cost"):
        frontier(lm, [Contender.prompting("p", positive=[HAPPY])], ["x", "y"], kind="cost")  # no effect to rank
    with pytest.raises(steerlab.SteeringSpecError, match="magnitudes"):
        Contender("a", vec, (-1.0,))
    with pytest.raises(steerlab.DatasetError, match="at least 2"):
        frontier(lm, [Contender.steering("a", vec, [1])], ["x"])


def test_cli_frontier_json_equals_the_python_report(lm, vec, tmp_path):
    vec_dir = vec.save(tmp_path / "md")
    openings = tmp_path / "openings.txt"
    openings.write_text("\n".join(OPENINGS[:4]) + "\n")
    res = CliRunner().invoke(
        app,
        [
            "--json",
            "eval",
            "frontier",
            "--model",
            str(STORIES),
            "--vector",
            f"mean_diff={vec_dir}",
            "--openings",
            str(openings),
            "--coefs",
            "1,4",
            "--layer-sets",
            "1-3;2",
            "--positive-prompt",
            HAPPY.text,
            "--negative-prompt",
            SAD.text,
            "--combine",
            "mean_diff",
            "--max-new-tokens",
            "4",
            "--budget",
            "1.3",
            "--out",
            str(tmp_path / "fr"),
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    python = frontier(
        lm,
        [
            Contender.steering("mean_diff", steerlab.SteeringVector.load(vec_dir), [1, 4], layer_sets=[[1, 2, 3], [2]]),
            Contender.prompting("prompting", positive=[HAPPY.text], negative=[SAD.text]),
            Contender.combined(
                "prompting+mean_diff",
                steerlab.SteeringVector.load(vec_dir),
                [1, 4],
                positive=[HAPPY.text],
                negative=[SAD.text],
                layer_sets=[[1, 2, 3], [2]],
            ),
        ],
        steerlab.load_openings(openings),
        budget=1.3,
        max_new_tokens=4,
        batch_size=32,
    )
    assert data == json.loads(json.dumps(python.to_dict()))
    assert {p.name for p in (tmp_path / "fr").iterdir()} >= {"frontier.json", "frontier.md", "frontier.png", "run.json"}


def test_cli_prompt_options(vec, tmp_path):
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "--json",
            "eval",
            "sentiment",
            "--model",
            str(STORIES),
            "--prompt",
            HAPPY.text,
            "--limit",
            "2",
            "--max-new-tokens",
            "3",
            "--out",
            str(tmp_path / "s"),
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["prompt"]["text"] == HAPPY.text and [r["coef"] for r in data["rows"]] == [0.0]
    res = runner.invoke(app, ["eval", "sentiment", "--model", str(STORIES), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--vector, --prompt or both" in res.output
    res = runner.invoke(
        app,
        [
            "eval",
            "frontier",
            "--model",
            str(STORIES),
            "--vector",
            "x=a",
            "--combine",
            "y",
            "--positive-prompt",
            "Hi. ",
            "--out",
            str(tmp_path / "y"),
        ],
    )
    assert res.exit_code != 0


# --------------------------------------------------------------------------- pca orientation
def test_orientation_rules_on_synthetic_pairs():
    # most pairs agree a little with +u, one pair disagrees a lot: the majority says +, the mean gap −
    pos = torch.tensor([[1.0], [1.0], [1.0], [-9.0]])
    neg = torch.zeros(4, 1)
    info = orientation(pos, neg, torch.tensor([1.0]))
    assert info["rule"] == "majority" and info["mean_gap"] == pytest.approx(-1.5)
    assert info["pair_agreement"] == 0.75 and info["signs"] == {"majority": 1, "mean_gap": -1}
    assert not info["rules_agree"] and 0.0 <= info["mean_gap_confidence"] < 0.5 < info["sign_confidence"]
    flipped = orientation(pos, neg, torch.tensor([-1.0]))
    assert flipped["signs"] == {"majority": -1, "mean_gap": 1} and flipped["pair_agreement"] == 0.25
    # the fitted direction follows the majority, scaled to the absolute mean gap
    assert oriented(torch.tensor([-2.0]), pos, neg).tolist() == [1.5]
    assert oriented(torch.tensor([-2.0]), pos, neg, "mean_gap").tolist() == [-1.5]
    tie = torch.tensor([[1.0], [-3.0]])  # one pair each way: the mean gap decides
    assert oriented(torch.tensor([1.0]), tie, torch.zeros(2, 1)).tolist() == [-1.0]
    # seeded: unseeded draws failed now and then (more than 8 of 40 pairs against +x has P = 0.003 alone)
    g = torch.Generator().manual_seed(0)
    clear_pos = torch.randn(40, 3, generator=g) + torch.tensor([2.0, 0, 0])
    clear = orientation(clear_pos, torch.randn(40, 3, generator=g), torch.tensor([1.0, 0, 0]))
    assert clear["rules_agree"] and clear["pair_agreement"] > 0.8 and clear["sign_confidence"] == 1.0


def test_pca_diff_follows_the_majority_where_the_rules_disagree():
    torch.manual_seed(0)
    # pairs differ along x by +1 mostly and by −12 in a few: PC1 is x; most pairs say +x, the mean says −x
    diffs = torch.tensor([[1.0, 0.0]] * 9 + [[-12.0, 0.0]] * 2) + 0.01 * torch.randn(11, 2)
    neg = torch.randn(11, 2)
    pos = neg + diffs
    from steerlab.extraction.methods import get_method

    for name in ("pca_diff", "pca_center"):
        direction = get_method(name).fit(pos, neg)
        assert float(direction[0]) > 0, name
        info = orientation(pos, neg, direction)
        assert info["signs"] == {"majority": 1, "mean_gap": -1}


def test_pca_vectors_carry_orientation_metadata(lm, tmp_path):
    from steerlab.data.pairs import pair_texts
    from steerlab.extraction.capture import capture

    pairs = steerlab.persona_pairs("happy", "sad", OPENINGS)
    vec = steerlab.extract(lm, pairs, method="pca_diff", layers=[1, 2, 3])
    per_layer = vec.meta["per_layer"]
    assert set(per_layer) == {"1", "2", "3"}
    texts, reads = pair_texts(lm, pairs)
    acts = capture(lm, texts, [1, 2, 3], reads)
    for k in (1, 2, 3):
        info = per_layer[str(k)]
        gaps = (acts[k][0::2] - acts[k][1::2]) @ (vec.directions[k] / vec.directions[k].norm())
        assert info["pair_agreement"] == pytest.approx(float((gaps > 0).double().mean()))
        assert info["mean_gap"] == pytest.approx(float(gaps.mean()), rel=1e-4, abs=1e-6)
        assert info["signs"]["majority"] == 1  # the stored orientation is the majority's
        assert info["rules_agree"] == (info["signs"]["mean_gap"] == 1)
        assert 0.0 <= info["sign_confidence"] <= 1.0 and 0.0 <= info["mean_gap_confidence"] <= 1.0
    # the metadata survives saving, and reorient follows it
    back = steerlab.SteeringVector.load(vec.save(tmp_path / "pca"))
    assert back.meta["per_layer"] == json.loads(json.dumps(per_layer))
    old_style = reorient(back, "mean_gap")
    for k in (1, 2, 3):
        sign = float(per_layer[str(k)]["signs"]["mean_gap"])
        assert torch.equal(old_style.directions[k], sign * back.directions[k])
    assert old_style.meta["orientation"] == "mean_gap"
    assert "per_layer" not in steerlab.extract(lm, pairs, method="mean_diff", layers=[1]).meta
    with pytest.raises(steerlab.SteeringSpecError, match="rule"):
        reorient(vec, "median")


def test_reorient_flips_exactly_the_disagreeing_layers():
    signs = [{"majority": 1, "mean_gap": 1}, {"majority": 1, "mean_gap": -1}, {"majority": 1, "mean_gap": 1}]
    vec = steerlab.SteeringVector(
        {k: torch.ones(4) for k in range(3)},
        "m",
        4,
        3,
        meta={"per_layer": {str(k): {"signs": s} for k, s in enumerate(signs)}},
    )
    out = reorient(vec, "mean_gap")
    assert [float(out.directions[k][0]) for k in (0, 1, 2)] == [1.0, -1.0, 1.0]
    assert out.meta["flipped_layers"] == [1]
    assert math.isclose(float(reorient(vec, "majority").directions[1][0]), 1.0)


# ----------------------------------------------------------------------------- degeneracy guard, one-sided contenders
def test_degeneracy_measures() -> None:
    from steerlab.evaluate.degeneracy import distinct_n, repeated_ngrams

    assert distinct_n(["a b c d"], 2) == 1.0 and repeated_ngrams(["a b c d"], 3) == 0.0
    assert distinct_n(["go go go go go"], 2) == 0.25  # 4 bigrams, 1 distinct
    assert repeated_ngrams(["go go go go go"], 3) == pytest.approx(2 / 3)  # 3 trigrams, 2 seen before
    assert math.isnan(distinct_n(["one"], 2)) and math.isnan(repeated_ngrams([], 3))
    assert distinct_n(["one", "a b"], 2) == 1.0  # a text too short to have a bigram is left out


def test_guard_keeps_a_looping_setting_out(vec: steerlab.SteeringVector) -> None:
    rep = FrontierReport(guard={"repeated_3gram": 0.05}, baseline={"repeated_3gram": 0.1}, budget=1.15, n_select=1)
    assert rep.loops({"repeated_3gram": 0.2}) and not rep.loops({"repeated_3gram": 0.14}) and not rep.loops({})

    def point(effect: float, rep3: float) -> FrontierPoint:
        sel = {"positive_share": effect, "cost": 1.0, "repeated_3gram": rep3}
        return FrontierPoint("m", 1, [1], 1.0, "", effect, 1.0, sel, dict(sel))

    looping, fluent = point(0.9, 0.5), point(0.6, 0.1)
    assert _choose([looping, fluent], "positive_share", "cost", 1.15) is looping  # no guard
    assert _choose([looping, fluent], "positive_share", "cost", 1.15, rep.loops) is fluent
    rep.cost_metric = "cost"
    assert rep.within(looping) == "no (loops)" and rep.within(fluent) == "yes"
    one = Contender.steering("neg", vec, [1.0])
    assert one.directions([1, -1]) == [1, -1]
    assert Contender("neg", vec, (1.0,), sides=(-1,)).directions([1, -1]) == [-1]
    with pytest.raises(steerlab.SteeringSpecError, match="sides"):
        Contender("neg", vec, (1.0,), sides=(2,))
