"""The setting ``steerlab demo`` uses: the packaged JSON, its builder from a frontier report (the
steering method with the highest held-out effect within the budget, per direction), the script
that writes it, and the demo stating the setting it used."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from steerlab.cli import app
from steerlab.data.demo_setting import DemoSettingError, load_demo_setting
from steerlab.evaluate.demo_choice import from_frontier, split_operator

from .conftest import STORIES

ROOT = Path(__file__).resolve().parent.parent
FRONTIER = ROOT / "docs" / "results" / "frontier_stories260K.json"


def _point(
    method: str, direction: int, layers: list[int], coef: float, effect: float, prompt: str = "", cost: float = 1.05
) -> dict[str, Any]:
    metric = "positive_share" if direction > 0 else "negative_share"
    return {
        "method": method,
        "direction": direction,
        "layers": layers,
        "coefficient": coef,
        "prompt": prompt,
        "effect": 0.0,
        "cost": cost,
        "selection": {metric: 0.9, "ppl": cost},
        "held_out": {metric: effect, "ppl": cost},
        "on_front": True,
    }


def synthetic() -> dict[str, Any]:
    """Prompting has the best effect each way, then a trained vector (the demo does not train), then a
    vector that fitted nothing, then the real winners."""
    best = [
        ("prompting", 1, _point("prompting", 1, [], 0.0, 0.99, prompt="happy story")),
        ("prompting+mean_diff", 1, _point("prompting+mean_diff", 1, [3], 2.0, 0.98, prompt="happy story")),
        ("bipo", 1, _point("bipo", 1, [2], 1.0, 0.85)),
        ("mean_diff", 1, _point("mean_diff", 1, [2, 3], 2.0, 0.60)),
        ("pca_diff:majority", 1, _point("pca_diff:majority", 1, [3], 1.5, 0.75)),
        ("mean_diff", -1, _point("mean_diff", -1, [1, 2, 3], -4.0, 0.50)),
        ("pca_diff:majority", -1, None),
        ("prompting", -1, _point("prompting", -1, [], 0.0, 0.95, prompt="sad story")),
    ]
    return {
        "title": "synthetic",
        "complete": True,
        "settings": {},
        "kind": "FrontierReport",
        "effect_metrics": {"1": "positive_share", "-1": "negative_share"},
        "cost_metric": "ppl",
        "budget": 1.1,
        "goal": {"1": 0.9, "-1": 0.8},
        "n_select": 8,
        "n_report": 8,
        "baseline": {"positive_share": 0.4},
        "points": [p for _, _, p in best if p is not None],
        "best": [{"method": m, "direction": d, "point": p, "reaches_goal": False} for m, d, p in best],
    }


def test_the_packaged_setting_is_what_the_default_model_frontier_found() -> None:
    s = load_demo_setting()
    # the run whose vectors were extracted on the demo's own pairs (scripts/results.py --vector-openings demo)
    built = from_frontier(json.loads((ROOT / "docs" / "results" / "frontier_default_demo.json").read_text()))
    assert s.directions == built.directions
    assert s.source.startswith(built.source) and "frontier_default_demo.json" in s.source
    assert s.directions[1].coefficient > 0 > s.directions[-1].coefficient


def test_builder_picks_the_best_steering_method_per_direction() -> None:
    s = from_frontier(synthetic())
    pos, neg = s.directions[1], s.directions[-1]
    assert (pos.method, pos.layers, pos.coefficient, pos.held_out_effect) == ("pca_diff:majority", (3,), 1.5, 0.75)
    assert (neg.method, neg.layers, neg.coefficient, neg.held_out_effect) == ("mean_diff", (1, 2, 3), -4.0, 0.5)
    assert "synthetic" in s.source and "1.1" in s.source
    # round trip through the JSON form
    assert type(s).from_dict(json.loads(json.dumps(s.to_dict()))) == s
    # a direction where no steering method fitted the budget
    report = synthetic()
    report["best"] = [b for b in report["best"] if not (b["direction"] == -1 and b["method"] == "mean_diff")]
    with pytest.raises(DemoSettingError, match="negative"):
        from_frontier(report)


def test_builder_on_the_stories260k_frontier() -> None:
    data = json.loads(FRONTIER.read_text())
    s = from_frontier(data)
    for d, key in ((1, "positive_share"), (-1, "negative_share")):
        steering = [
            b["point"]
            for b in data["best"]
            if b["direction"] == d
            and b["point"] is not None
            and b["point"]["layers"]
            and not b["point"]["prompt"]
            and split_operator(b["method"])[1].partition(":")[0] not in ("bipo", "reps")  # the demo does not train
        ]
        top = max(steering, key=lambda p: p["held_out"][key])
        got = s.directions[d]
        operator, method = split_operator(top["method"])
        assert (got.method, list(got.layers), got.coefficient, got.operator) == (
            method,
            top["layers"],
            top["coefficient"],
            operator,
        )
        assert got.held_out_effect == top["held_out"][key]
        assert all(p["held_out"][key] <= got.held_out_effect for p in steering)


def test_script_writes_the_setting(tmp_path: Path) -> None:
    src = tmp_path / "frontier.json"
    src.write_text(json.dumps(synthetic()))
    out = tmp_path / "demo_setting.json"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo_setting.py"), str(src), "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    written = load_demo_setting(out)
    assert written == from_frontier(synthetic())
    bad = copy.deepcopy(json.loads(out.read_text()))
    bad["negative"]["coefficient"] = 2.0  # wrong sign
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DemoSettingError):
        load_demo_setting(tmp_path / "bad.json")


def test_demo_states_the_setting_it_uses() -> None:
    runner = CliRunner()
    res = runner.invoke(
        app, ["--json", "demo", "--model", str(STORIES), "--layers", "1-3", "--coef", "4", "--max-new-tokens", "4"]
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert len(rows) == 3
    method = load_demo_setting().directions[1].method  # the packaged method, at the overridden layers and coef
    assert rows[0]["setting"]["positive"] == f"{method} L1-3 c=+4"
    assert rows[0]["setting"]["negative"] == f"{load_demo_setting().directions[-1].method} L1-3 c=-4"
    assert "overridden" in rows[0]["setting"]["source"]
    # each shown text's sentiment, and each column's mean over every opening the demo ran
    from steerlab.data.demo import OPENINGS
    from steerlab.evaluate.scorers import get_scorer

    assert [r["prompt"] for r in rows] == list(OPENINGS[:3])
    vader = get_scorer("vader")
    for r in rows:
        for col in ("baseline", "positive", "negative"):
            assert r["sentiment"][col] == round(vader.score([r[col].strip()])[0].compound, 3)
    assert rows[0]["mean_sentiment"] == rows[-1]["mean_sentiment"] and set(rows[0]["mean_sentiment"]) == {
        "baseline",
        "positive",
        "negative",
    }
    five = runner.invoke(
        app, ["--json", "demo", "--model", str(STORIES), "--layers", "1-3", "--show", "5", "--max-new-tokens", "2"]
    )
    assert five.exit_code == 0, five.output
    assert [r["prompt"] for r in json.loads(five.stdout)] == list(OPENINGS[:5])
    for bad in ("0", str(len(OPENINGS) + 1)):
        res = runner.invoke(app, ["demo", "--model", str(STORIES), "--show", bad])
        assert res.exit_code == 2, res.output
    human = runner.invoke(
        app, ["demo", "--model", str(STORIES), "--layers", "1-3", "--coef", "4", "--max-new-tokens", "4"]
    )
    assert human.exit_code == 0, human.output
    assert "setting:" in human.output and f"{method} L1-3 c=+4" in human.output and "source:" in human.output


@pytest.mark.parametrize("method", ["mean_diff", "pca_diff:majority", "actadd"])
def test_demo_builds_each_method_as_the_frontier_does(method: str) -> None:
    import torch

    import steerlab
    from steerlab.data.demo import OPENINGS
    from steerlab.evaluate.demo_run import demo_vector

    lm = steerlab.load_model(STORIES)
    pairs = steerlab.persona_pairs("happy", "sad", list(OPENINGS))
    vec = demo_vector(lm, pairs, method, [1, 2])
    assert vec.layers == [1, 2]
    if method != "actadd":
        md = steerlab.extract(lm, pairs, method="mean_diff", layers=[1, 2], progress=False)
        for k in (1, 2):  # every multi-pair method at the mean_diff norms
            # md.norms() rounds to 6 decimals (|error| <= 5e-7; `abs` 6e-7 covers it); mean_diff is md
            # itself (its norm differs from the rounded one by the rounding only) and the other methods are
            # rescaled to the rounded norms, float32 noise (measured |rel| <= 1.5e-7 under AVX512, AVX2 and
            # default kernels; `rel` 1e-6). At rel 1e-5 alone a norm of 0.0319 failed on AVX-512 (its
            # rounding is 1.25e-5 of it).
            assert float(vec.directions[k].norm()) == pytest.approx(md.norms()[k], rel=1e-6, abs=6e-7)
            assert float(torch.nn.functional.cosine_similarity(vec.directions[k], md.directions[k], dim=0)) > 0


def test_builder_with_a_demo_budget() -> None:
    """``budget``: the strongest vector setting over all items within that cost that does not loop."""
    from steerlab.evaluate.frontier import FrontierReport

    data = json.loads(FRONTIER.read_text())
    rep = FrontierReport.from_dict(data)
    loose = from_frontier(data, budget=1.5)
    for d in (1, -1):
        fits = [
            p
            for p in rep.points
            if p.direction == d
            and p.cost <= 1.5
            and p.layers
            and not p.prompt
            and split_operator(p.method)[1].partition(":")[0] not in ("bipo", "reps")
            and not rep.loops({m: rep.pooled(p, m) for m in rep.guard})
        ]
        best = max(fits, key=lambda p: (p.effect, -p.cost))
        got = loose.directions[d]
        operator, method = split_operator(best.method)
        assert (got.method, list(got.layers), got.coefficient, got.operator) == (
            method,
            best.layers,
            best.coefficient,
            operator,
        )
    assert "1.5" in loose.source and "does not loop" in loose.source


def test_builder_carries_a_kl_cap_winner() -> None:
    from steerlab.evaluate.demo_choice import split_kl_cap

    assert split_kl_cap("kl0.3(mean_diff)") == (0.3, "mean_diff")
    assert split_kl_cap("klx(mean_diff)") == (None, "klx(mean_diff)")
    report = synthetic()
    report["best"].append(
        {
            "method": "kl0.3(mean_diff)",
            "direction": 1,
            "point": _point("kl0.3(mean_diff)", 1, [2, 3], 5.0, 0.8),
            "reaches_goal": False,
        }
    )
    s = from_frontier(report)
    pos = s.directions[1]
    assert (pos.method, pos.kl_cap, pos.coefficient, pos.operator) == ("mean_diff", 0.3, 5.0, "add")
    assert "KL<=0.3" in pos.label
    assert type(s).from_dict(json.loads(json.dumps(s.to_dict()))) == s
    bad = s.to_dict()
    bad["positive"]["kl_cap"] = -1
    with pytest.raises(DemoSettingError, match="kl_cap"):
        type(s).from_dict(bad)
