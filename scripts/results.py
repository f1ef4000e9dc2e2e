"""Reproduce docs/results.md: the effect–fluency frontier first, then pca_diff orientation, CAA and
the breakdown curve.

Sections (each writes a fragment ``docs/results/section_<name>.md``; results.md is assembled from
the fragments present, so a section can be re-run alone and the others keep their numbers and
their provenance line):

* ``frontier`` — for each model (``--models``: the default SmolLM2-135M-Instruct and
  stories260K), every method of ``--methods`` (any name ``steerlab.extract`` accepts: ``actadd``,
  ``mean_diff``, ``pca_diff``, ... and trained methods such as ``bipo`` once they exist) plus
  prompting (positive and negative prompts) and prompting + mean_diff: positive / negative share of
  held-out continuations against the continuation perplexity ratio, Pareto fronts, the best setting
  within 1.15× chosen on one half and reported on the other (``steerlab.evaluate.frontier``).
* ``orientation`` — pca_diff's two orientation rules (mean gap vs majority of pairs) against which
  sign actually moves held-out sentiment the intended way, layer by layer.
* ``caa`` — CAA behaviours: A/B p(matching) at the auto-tuned layer, MMLU capability check.
* ``breakdown`` — the breakdown curve of the happy vector.

Run:  .venv/bin/python scripts/results.py --threads 1 [--sections frontier,orientation] [--models default]
      [--methods actadd,mean_diff,pca_diff,pca_diff:majority] [--quick]
(``NAME:RULE`` = that method's vector in another orientation, see steerlab.extraction.methods.pca.reorient)
Reads ../shared/data (not copied into the repository).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

import steerlab
from steerlab.analysis import breakdown_curve
from steerlab.data.ab import load_ab_items
from steerlab.evaluate.behavior import behavior_eval, behavior_vector, capability_eval
from steerlab.evaluate.demo_run import equal_norm
from steerlab.evaluate.frontier import Contender, FrontierReport, frontier
from steerlab.evaluate.prompting import Prompt
from steerlab.evaluate.report import markdown_table
from steerlab.evaluate.scorers import get_scorer
from steerlab.evaluate.stats import bootstrap_ci
from steerlab.evaluate.sweep import autotune
from steerlab.extraction.methods.pca import RULES, reorient
from steerlab.extraction.sign import layer_signs

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REPE = SHARED / "data" / "repe"
CAA = SHARED / "data" / "caa" / "datasets"
SECTIONS = ("frontier", "orientation", "caa", "breakdown")
TRAINED = ("bipo", "reps")
SIDES = {"positive": 1, "negative": -1}
"""``reps:negative``: a trained vector for one direction (trained and evaluated on that side only)."""
BUDGET = 1.15

POSITIVE = [
    Prompt("Here is a happy story. ", name="happy"),
    Prompt("Here is a cheerful, joyful and happy story. ", name="cheerful, joyful and happy"),
    Prompt("Here is a wonderfully happy story, full of joy, love and delight. ", name="full of joy"),
]
NEGATIVE = [
    Prompt("Here is a sad story. ", name="sad"),
    Prompt("Here is a sad, gloomy and unhappy story. ", name="sad, gloomy and unhappy"),
    Prompt("Here is a terribly sad story, full of grief, sorrow and despair. ", name="full of grief"),
]

MODELS: dict[str, dict[str, Any]] = {
    "default": {
        "path": "default",
        "n_held": 48,
        "tokens": 24,
        "batch": 48,
        "mid": list(range(8, 20)),
        "sets": [list(range(8, 20)), list(range(12, 20)), list(range(12, 16))],
        "coefs": [0.25, 0.5, 1.0, 1.5, 2.5],
        "actadd_layers": [2, 6],
        "actadd_sets": [[2], [6], [2, 6]],
        "actadd_coefs": [0.25, 0.5, 1.0, 2.0, 4.0],
        "combo_sets": 2,
        "combo_coefs": [0.25, 0.5, 1.0, 1.5],
        "n_orient": 64,
        "orient_tokens": 24,
        "trained_layers": [12],
        "trained_coefs": [0.5, 1.0, 1.5, 2.0, 3.0],
        "train": {"lr": 0.02, "epochs": 6},
        "ops": {"push": [0.5, 1.0, 1.5, 2.0, 3.0], "rotate": [0.01, 0.02, 0.05, 0.1, 0.2]},
        "op_combo": {"push": [1.0], "rotate": [0.02]},
    },
    "stories260K": {
        "path": str(SHARED / "models" / "stories260K"),
        "n_held": 192,
        "tokens": 24,
        "batch": 64,
        "mid": [1, 2, 3],
        "sets": [[1, 2, 3], [1], [2], [3]],
        "coefs": [0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 16.0],
        "actadd_layers": [1, 2],
        "actadd_sets": [[1], [2], [1, 2]],
        "actadd_coefs": [0.5, 1.0, 2.0, 4.0, 8.0, 16.0],
        "combo_sets": 4,
        "combo_coefs": [1.0, 2.0, 4.0, 8.0],
        "n_orient": 128,
        "orient_tokens": 24,
        "trained_layers": [2],
        "trained_coefs": [0.05, 0.1, 0.2, 0.3, 0.5, 1.0],
        "train": {"lr": 0.05, "epochs": 6},
        "ops": {"push": [0.5, 1.0, 1.5, 2.0, 3.0, 5.0], "rotate": [0.01, 0.02, 0.05, 0.1, 0.2, 0.4]},
        "op_combo": {"push": [1.0, 2.0], "rotate": [0.02, 0.05]},
    },
}
OPERATORS = ("push", "rotate")
"""The least-push operators on the frontier, each applied to the mean_diff vector at the layers
where the pairs' two sides project with opposite signs (``steerlab.extraction.sign``)."""
KL_COEFS = (1.0, 2.5, 5.0)
"""``--kl-caps``: coefficients of the KL-capped mean_diff rows (above the add grid: the cap scales
each token's strength back, :mod:`steerlab.runtime.kl_cap`)."""
LEAN = {"sets": 2, "coefs": [0.25, 0.5, 1.0, 1.5], "prompts": 1}
"""``--lean``: the first two layer sets, four coefficients and the middle prompt of each side."""


def _commit() -> str:
    """The commit the run started from (``+changes``: with uncommitted changes under src/)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


STARTED_AT = _commit()


def _provenance(minutes: float, mode: str) -> str:
    return (
        f"_Run of {date.today().isoformat()} at commit {STARTED_AT} ({mode} mode, {minutes:.0f} min, "
        f"torch {torch.get_num_threads()} thread(s) on a shared 2-core CPU machine)._"
    )


def _openings() -> list[str]:
    return steerlab.load_openings(REPE / "all_truncated_outputs.json")


def _layer_text(layers: Sequence[int]) -> str:
    layers = list(layers)
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


# --------------------------------------------------------------------------- vectors
VECTOR_OPENINGS = {
    "repe": "openings 0–127 of RepE's all_truncated_outputs.json",
    "demo": "the 24 openings of steerlab.data.demo.OPENINGS, the pairs `steerlab demo` extracts on",
}
"""``--vector-openings``: the openings whose happy − sad persona pairs the vectors are extracted on."""


def vector_openings(source: str) -> list[str]:
    """The openings of ``--vector-openings SOURCE``."""
    from steerlab.data.demo import OPENINGS

    return list(OPENINGS) if source == "demo" else _openings()[:128]


def build_vectors(
    lm: steerlab.LM, methods: Sequence[str], plan: dict[str, Any], source: str = "repe"
) -> dict[str, steerlab.SteeringVector]:
    """One happy − sad vector per method (ActAdd: the "Love" − "Hate" pair); every multi-pair
    vector but mean_diff is rescaled per layer to the mean_diff norms."""
    pairs = steerlab.persona_pairs("happy", "sad", vector_openings(source))
    md = steerlab.extract(lm, pairs, method="mean_diff", layers=plan["mid"], progress=False)
    out: dict[str, steerlab.SteeringVector] = {}
    for name in methods:
        t0 = time.perf_counter()
        method, _, rule = name.partition(":")  # "pca_diff:majority": pca_diff in the majority orientation
        if name == "mean_diff":
            out[name] = md
        elif method in TRAINED:  # "reps:negative": a vector trained for that side only
            out[name] = trained_vector(lm, method, plan, rule or None)
        elif name == "actadd":
            out[name] = steerlab.extract(
                lm, [steerlab.ContrastPair("Love", "Hate")], method="actadd", layers=plan["actadd_layers"]
            )
        else:
            vec = steerlab.extract(lm, pairs, method=method, layers=plan["mid"], progress=False)
            out[name] = equal_norm(reorient(vec, rule) if rule else vec, md.norms())
        print(f"  vector {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    out.setdefault("mean_diff", md)
    return out


SELF_CONTRAST = ("Write a cheerful, happy story.", "Write a sad, gloomy story.")
"""The two prompts whose continuations (openings 0–127) train the trained methods' vectors."""


_SELF_PAIRS: dict[str, list[Any]] = {}


def trained_vector(
    lm: steerlab.LM, method: str, plan: dict[str, Any], side: str | None = None
) -> steerlab.SteeringVector:
    """A trained (bipo / reps) vector distilled from prompting: preference pairs the model writes
    itself under a cheerful and a sad prompt (:func:`steerlab.self_contrast`, written once per
    model), one vector at ``plan["trained_layers"]``, steering the generated tokens (as it was
    trained); ``side`` (``"positive"`` / ``"negative"``) trains a vector for that direction only."""
    t0 = time.perf_counter()
    if lm.model_id not in _SELF_PAIRS:
        _SELF_PAIRS[lm.model_id] = steerlab.self_contrast(
            lm, _openings()[:128], *SELF_CONTRAST, max_new_tokens=plan["tokens"], batch_size=64
        )
    pairs = _SELF_PAIRS[lm.model_id]
    t1 = time.perf_counter()
    extra = {} if side is None else {"directions": side}
    vec = steerlab.extract(lm, pairs, method=method, layers=plan["trained_layers"], seed=0, **plan["train"], **extra)
    t2 = time.perf_counter()
    vec.meta["timing_s"] = {"self_contrast": round(t1 - t0, 1), "training": round(t2 - t1, 1)}
    print(
        f"  {method}: {len(pairs)} self-contrast pairs in {t1 - t0:.0f} s, trained in {t2 - t1:.0f} s "
        f"({vec.meta.get('epochs_run', '?')} epochs)",
        flush=True,
    )
    return vec


def operator_contenders(
    md: steerlab.SteeringVector, operators: Sequence[str], plan: dict[str, Any], sign_sets: list[list[int]], quick: bool
) -> list[Contender]:
    """Each operator on the mean_diff vector at ``sign_sets``, alone and with the middle prompt."""
    out = []
    for op in operators:
        coefs, combo = plan["ops"][op], plan["op_combo"][op]
        if quick:
            coefs, combo = coefs[1:3], combo[:1]
        out.append(Contender.steering(f"{op}(mean_diff)", md, coefs, layer_sets=sign_sets, operator=op))
        out.append(
            Contender.combined(
                f"prompting+{op}(mean_diff)",
                md,
                combo,
                positive=POSITIVE[1:2],
                negative=NEGATIVE[1:2],
                layer_sets=sign_sets[:1],
                operator=op,
            )
        )
    return out


def contenders(
    vectors: dict[str, steerlab.SteeringVector],
    methods: Sequence[str],
    plan: dict[str, Any],
    quick: bool,
    lean: bool = False,
) -> list[Contender]:
    sets, coefs = plan["sets"], plan["coefs"]
    act_sets, act_coefs = plan["actadd_sets"], plan["actadd_coefs"]
    combo_sets, combo_coefs = sets[: plan["combo_sets"]], plan["combo_coefs"]
    pos, neg = POSITIVE, NEGATIVE
    if lean:
        sets, coefs, pos, neg = sets[: LEAN["sets"]], LEAN["coefs"], POSITIVE[1:2], NEGATIVE[1:2]
        combo_sets, combo_coefs = sets[1:2], combo_coefs[:2]
    if quick:
        sets, coefs, act_sets, act_coefs = sets[:1], coefs[1:3], act_sets[:1], act_coefs[1:3]
        combo_sets, combo_coefs, pos, neg = sets[:1], combo_coefs[1:2], POSITIVE[1:2], NEGATIVE[1:2]
    out = []
    for name in methods:
        if name == "actadd":
            out.append(Contender.steering(name, vectors[name], act_coefs, layer_sets=act_sets))
        elif name.partition(":")[0] in TRAINED:
            tc = plan["trained_coefs"][1:3] if quick else plan["trained_coefs"]
            side = name.partition(":")[2]
            con = Contender.steering(
                name, vectors[name], tc, layer_sets=[plan["trained_layers"]], positions="generated"
            )
            out.append(dataclasses.replace(con, sides=(SIDES[side],)) if side else con)
        else:
            out.append(Contender.steering(name, vectors[name], coefs, layer_sets=sets))
    out.append(Contender.prompting("prompting", positive=pos, negative=neg))
    out.append(
        Contender.combined(
            "prompting+mean_diff",
            vectors["mean_diff"],
            combo_coefs,
            positive=POSITIVE[1:2],
            negative=NEGATIVE[1:2],
            layer_sets=combo_sets,
        )
    )
    return out


# --------------------------------------------------------------------------- frontier
def _goal_reading(rep: FrontierReport, direction: int) -> str:
    """What the curves say about the goal in one direction."""
    metric = rep.effect_metrics[direction]
    goal = rep.goal[direction]
    base = rep.baseline.get(metric, math.nan)
    pts = [p for p in rep.points if p.direction == direction and p.on_front]
    reach = sorted((p for p in pts if p.effect >= goal), key=lambda p: p.cost)
    top = max(pts, key=lambda p: p.effect) if pts else None
    inside = [p for p in pts if rep.within(p) == "yes"]
    best_in = max(inside, key=lambda p: p.effect) if inside else None
    parts = []
    if best_in is not None:
        parts.append(
            f"the highest point inside {rep.budget:g}× over all items is {best_in.effect:.2f} "
            f"({best_in.method}, {best_in.setting}, {best_in.cost:.2f}×)"
        )
    if reach:
        p = reach[0]
        parts.append(f"the cheapest setting that reaches the goal costs {p.cost:.2f}× ({p.method}, {p.setting})")
    elif top is not None:
        parts.append(
            f"no setting reaches the goal at any cost tried; the highest is {top.effect:.2f} "
            f"({top.method}, {top.setting}) at {top.cost:.2f}×"
        )
    return f"**{metric}** (goal ≥ {goal:g}, unsteered {base:.2f}): " + "; ".join(parts) + "."


def _vs_prompting(rep: FrontierReport, direction: int) -> str:
    """Each steering method's best held-out effect within budget against prompting's."""
    metric = rep.effect_metrics[direction]
    rows = []
    for b in rep.best:
        if b.direction != direction:
            continue
        value = math.nan if b.point is None else b.point.held_out[metric]
        rows.append(f"{b.method} {value:.2f}" if not math.isnan(value) else f"{b.method} — (nothing within budget)")
    return f"Held-out {metric} of each method's budgeted choice: " + ", ".join(rows) + "."


def _trained_text(method: str, vec: steerlab.SteeringVector, plan: dict[str, Any]) -> str:
    timing = vec.meta.get("timing_s", {})
    return (
        f" `{method}`: trained at layer(s) {_layer_text(plan['trained_layers'])} on {vec.meta.get('n_pairs', '?')} "
        f"preference pairs the model wrote itself (openings 0–127 continued under “{SELF_CONTRAST[0]}” vs "
        f"“{SELF_CONTRAST[1]}”, `steerlab.self_contrast`), {plan['train']}, {vec.meta.get('epochs_run', '?')} "
        f"epochs run, steering the generated tokens; pairs written in {timing.get('self_contrast', '?')} s, "
        f"trained in {timing.get('training', '?')} s."
    )


def sign_layer_sets(lm: steerlab.LM, md: steerlab.SteeringVector, plan: dict[str, Any]) -> tuple[list[list[int]], str]:
    """Where the operators act: the layers at which the persona pairs' two sides project on the
    mean_diff direction with opposite signs (Selective Steering's layer rule), or, where there are
    none, the model's middle layers; and a sentence saying which."""
    pairs = steerlab.persona_pairs("happy", "sad", _openings()[:128])
    signs = layer_signs(lm, pairs, md)
    table = ", ".join(f"L{s.layer} {s.positive:+.2f}/{s.negative:+.2f}" for s in signs)
    opposite = [s.layer for s in signs if s.opposite]
    if opposite:
        return [opposite], (
            f" The operators act at layers {_layer_text(opposite)}, where the persona pairs' positive and negative "
            f"examples project on the mean_diff direction with opposite signs (mean projections in units of |v|, "
            f"positive/negative: {table})."
        )
    return [plan["mid"]], (
        f" No layer has the persona pairs' two sides projecting with opposite signs on the mean_diff direction "
        f"({table}), so the operators act at layers {_layer_text(plan['mid'])}, where the sign condition is "
        "dominated by a common offset."
    )


def kl_contenders(
    md: steerlab.SteeringVector, caps: Sequence[float], plan: dict[str, Any], quick: bool, lean: bool
) -> list[Contender]:
    """mean_diff with each per-token KL cap (``kl0.3(mean_diff)``), at the add grid's first layer sets."""
    sets = plan["sets"][: 1 if quick else LEAN["sets"] if lean else len(plan["sets"])]
    coefs = KL_COEFS[:2] if quick else KL_COEFS
    return [Contender.steering(f"kl{cap:g}(mean_diff)", md, coefs, layer_sets=sets, kl_cap=cap) for cap in caps]


def frontier_section(
    key: str,
    methods: Sequence[str],
    out: Path,
    quick: bool,
    operators: Sequence[str] = (),
    lean: bool = False,
    kl_caps: Sequence[float] = (),
    source: str = "repe",
) -> tuple[str, dict[str, Any]]:
    plan = MODELS[key]
    t0 = time.perf_counter()
    lm = steerlab.load_model(plan["path"])
    vectors = build_vectors(lm, methods, plan, source)
    held = _openings()[200 : 200 + (8 if quick else plan["n_held"])]
    cons = contenders(vectors, methods, plan, quick, lean)
    sign_text = ""
    if operators:
        sign_sets, sign_text = sign_layer_sets(lm, vectors["mean_diff"], plan)
        print(f"  {key}:{sign_text}", flush=True)
        cons += operator_contenders(vectors["mean_diff"], operators, plan, sign_sets, quick)
    if kl_caps:
        cons += kl_contenders(vectors["mean_diff"], kl_caps, plan, quick, lean)
    rep = frontier(
        lm,
        cons,
        held,
        budget=BUDGET,
        max_new_tokens=plan["tokens"],
        batch_size=plan["batch"],
        progress=False,
        log=lambda line: print(f"  {key}: {line}", flush=True),
    )
    rep.title = f"Effect–fluency frontier on {lm.model_id}"
    rep.write(out / "results", f"frontier_{key}")
    minutes = (time.perf_counter() - t0) / 60
    trained = [m for m in methods if m.partition(":")[0] in TRAINED]
    slot = (
        ""
        if trained
        else "\n\n> **Trained methods** are not in this run: "
        f"`scripts/results.py --sections frontier --models {key} --methods "
        f"{','.join([*methods, 'bipo', 'reps:positive', 'reps:negative'])}` adds them."
    )
    md = (
        f"{_provenance(minutes, 'quick' if quick else 'full')}\n\n"
        f"Held-out openings: {len(held)} (openings 200+ of RepE's all_truncated_outputs.json; vectors use "
        f"{VECTOR_OPENINGS[source]}), greedy, {plan['tokens']} new tokens, VADER. Cost = mean perplexity of the "
        "continuations under the "
        "unsteered, unprompted model given the plain opening, over that of its own continuations — the same for "
        "steered, prompted and prompted + steered rows. Methods: "
        + ", ".join(f"`{c.name}`" for c in cons)
        + f" (multi-pair vectors other than mean_diff rescaled per layer to the mean_diff norms; ActAdd = "
        f"'Love' − 'Hate' at layers {plan['actadd_layers']}). Prompts: "
        + "; ".join(f"+ “{p.text.strip()}”" for p in POSITIVE)
        + "; "
        + "; ".join(f"− “{p.text.strip()}”" for p in NEGATIVE)
        + ". Prompting + a vector uses the middle prompt of each side."
        + (" Lean grid (`--lean`): two layer sets, four coefficients, the middle prompt of each side." if lean else "")
        + sign_text
        + "".join(_trained_text(m, vectors[m], plan) for m in trained)
        + "\n\n"
        + rep.to_markdown().split("\n\n", 1)[1]
        + f"\n\n![frontier {key}](results/frontier_{key}.png)\n\n"
        + "\n".join(f"* {_goal_reading(rep, d)} {_vs_prompting(rep, d)}" for d in (1, -1))
        + slot
    )
    summary = {
        "minutes": round(minutes, 1),
        "baseline": rep.baseline,
        "best": {
            f"{b.method}{b.direction:+d}": None
            if b.point is None
            else {"setting": b.point.setting, "held_out": b.point.held_out, "selection": b.point.selection}
            for b in rep.best
        },
    }
    return md, summary


# --------------------------------------------------------------------------- orientation
def _residual_norms(lm: steerlab.LM, layers: Sequence[int]) -> dict[int, float]:
    from steerlab.evaluate.cost import run_stats

    texts = steerlab.load_texts(REPE / "facts_true_false.csv", limit=32)
    return run_stats(lm, texts, [None], norm_layers=list(layers))[1]


def orientation_rows(
    lm: steerlab.LM,
    plan: dict[str, Any],
    openings: list[str],
    fraction: float,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per layer: the two rules' signs, their confidence, and which sign moves held-out sentiment up."""
    pairs = steerlab.persona_pairs("happy", "sad", _openings()[:128])
    pca = steerlab.extract(lm, pairs, method="pca_diff", layers=plan["mid"], progress=False)
    norms = _residual_norms(lm, pca.layers)
    rows_steer: list[steerlab.Steering | None] = []
    for k in pca.layers:
        unit = pca.select([k]) / float(pca.directions[k].norm())
        rows_steer += [steerlab.Steering(unit, fraction * norms[k]), steerlab.Steering(unit, -fraction * norms[k])]
    prompts = [o for o in openings for _ in rows_steer]
    steer = [s for _ in openings for s in rows_steer]
    conts: list[str] = []
    for i in range(0, len(prompts), 64):
        conts += steerlab.generate(
            lm, prompts[i : i + 64], steering=steer[i : i + 64], max_new_tokens=plan["orient_tokens"]
        )
    comp = np.array([s.compound for s in get_scorer("vader").score([c.strip() for c in conts])])
    comp = comp.reshape(len(openings), len(rows_steer))
    rows, summary = [], {}
    for j, k in enumerate(pca.layers):
        info = pca.meta["per_layer"][str(k)]
        diff = comp[:, 2 * j] - comp[:, 2 * j + 1]  # paired: +u minus −u, per opening
        lo, hi = bootstrap_ci(diff, n_bootstrap=2000, seed=k)
        observed = 1 if lo > 0 else -1 if hi < 0 else 0  # +1: the stored (majority) sign moves sentiment up
        right = [r for r in RULES if info["signs"][r] * observed > 0]
        rows.append(
            {
                "layer": k,
                "pair agreement": info["pair_agreement"],
                "majority confidence": info["sign_confidence"],
                "mean-gap confidence": info["mean_gap_confidence"],
                "rules": "agree" if info["rules_agree"] else "disagree",
                "Δ compound (+u − −u)": f"{diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]",
                "right on held-out": "unclear" if observed == 0 else (" and ".join(right) or "neither"),
            }
        )
        summary[str(k)] = {**info, "delta_compound": float(diff.mean()), "ci": [lo, hi], "observed_sign": observed}
    return rows, summary


def _tally(summary: dict[str, Any]) -> dict[str, int]:
    clear = [v for v in summary.values() if v["observed_sign"] != 0]
    split = [v for v in clear if not v["rules_agree"]]
    return {
        "layers": len(summary),
        "clear": len(clear),
        "majority_right": sum(v["signs"]["majority"] == v["observed_sign"] for v in clear),
        "mean_gap_right": sum(v["signs"]["mean_gap"] == v["observed_sign"] for v in clear),
        "disagree": sum(not v["rules_agree"] for v in summary.values()),
        "disagree_clear": len(split),
        "disagree_majority_right": sum(v["signs"]["majority"] == v["observed_sign"] for v in split),
        "disagree_mean_gap_right": sum(v["signs"]["mean_gap"] == v["observed_sign"] for v in split),
    }


def orientation_section(keys: Sequence[str], out: Path, quick: bool) -> tuple[str, dict[str, Any]]:
    t0 = time.perf_counter()
    parts, summary = [], {}
    fraction = 0.10
    for key in keys:
        plan = MODELS[key]
        lm = steerlab.load_model(plan["path"])
        n = 8 if quick else plan["n_orient"]
        rows, per_layer = orientation_rows(lm, plan, _openings()[400 : 400 + n], fraction)
        tally = _tally(per_layer)
        summary[key] = {"per_layer": per_layer, "tally": tally}
        (out / "results").mkdir(parents=True, exist_ok=True)
        (out / "results" / f"orientation_{key}.json").write_text(json.dumps(summary[key], indent=2, default=str))
        parts.append(
            f"**{lm.model_id}** ({n} openings 400+, {plan['orient_tokens']} new tokens): the rules disagree at "
            f"{tally['disagree']} of {tally['layers']} layers. The steered sign is clear (95% CI excludes 0) at "
            f"{tally['clear']} layers: the majority orientation is right at {tally['majority_right']} of them, the "
            f"mean-gap orientation at {tally['mean_gap_right']}; where the rules disagree and the sign is clear "
            f"({tally['disagree_clear']} layers) the majority is right at {tally['disagree_majority_right']}, the "
            f"mean gap at {tally['disagree_mean_gap_right']}.\n\n" + markdown_table(rows)
        )
        print(f"  orientation {key}: {tally}", flush=True)
    minutes = (time.perf_counter() - t0) / 60
    md = (
        f"{_provenance(minutes, 'quick' if quick else 'full')}\n\n"
        "pca_diff (happy − sad persona pairs, openings 0–127) at each layer alone, as a unit direction u in its "
        f"stored orientation (majority of pairs) added with ± {fraction:.0%} of the layer's mean residual norm; "
        "Δ compound is the paired difference of VADER compound (+u minus −u) per held-out opening with a bootstrap "
        "95% CI; a rule is right at a layer when its sign agrees with the sign of a clear Δ. `pair agreement` = "
        "share of training pairs whose projected gap has the stored sign; `majority confidence` / `mean-gap "
        "confidence` = share of bootstrap resamples of the pairs in which that rule gives the stored sign (all "
        "stored in the vector's `meta['per_layer']`).\n\n" + "\n\n".join(parts)
    )
    return md, summary


# --------------------------------------------------------------------------- CAA, breakdown (unchanged)
def caa_section(lm: steerlab.LM, out: Path, quick: bool) -> tuple[str, dict[str, Any]]:
    t0 = time.perf_counter()
    behaviors = ["corrigible-neutral-HHH", "refusal", "survival-instinct"]
    if quick:
        behaviors = behaviors[:1]
    cost_texts = steerlab.load_texts(REPE / "facts_true_false.csv", limit=8 if quick else 32)
    layers = [10, 14] if quick else [6, 9, 12, 15, 18]
    rows, summary, capability_rows = [], {}, []
    for name in behaviors:
        vec = behavior_vector(
            lm, CAA / "generate" / name / "generate_dataset.json", layers=layers, limit=32 if quick else 150
        )
        items = load_ab_items(CAA / "test" / name / "test_dataset_ab.json")
        tune = autotune(
            lm,
            vec,
            "behavior",
            items,
            coefficients=[1.0],
            layer_sets=[[k] for k in layers],
            budget=1.3,
            direction=1,
            cost_texts=cost_texts,
            progress=False,
        )
        layer = tune.layers[0]
        rep = behavior_eval(lm, vec.select([layer]), items, coefficients=(-1.0, 0.0, 1.0), progress=False, name=name)
        rep.write(out / "results", f"caa_{name}")
        pts = {p.coefficient: p for p in rep.points}
        rows.append(
            {
                "behavior": name,
                "layer": layer,
                "p(match) −1": pts[-1.0].mean,
                "0": pts[0.0].mean,
                "+1": pts[1.0].mean,
                "letter mass": pts[0.0].letter_mass,
                "n": pts[0.0].n,
            }
        )
        summary[name] = {"layer": layer, "points": {m: p.mean for m, p in pts.items()}}
        if name == behaviors[0]:
            mmlu = capability_eval(
                lm,
                vec.select([layer]),
                CAA / "test" / "mmlu" / "mmlu.json",
                coefficients=(-1.0, 0.0, 1.0),
                limit=20 if quick else 100,
            )
            mmlu.write(out / "results", "caa_mmlu")
            capability_rows = [
                {
                    "set": "MMLU (A/B)",
                    "vector": name,
                    "layer": layer,
                    **{f"acc {p.coefficient:+g}": p.above_half for p in mmlu.points},
                    "n": mmlu.points[0].n,
                }
            ]
        print(f"  {name}: layer {layer}", flush=True)
    md = (
        f"{_provenance((time.perf_counter() - t0) / 60, 'quick' if quick else 'full')}\n\n"
        "Vectors: mean difference at the answer letter over the behaviour's generate_dataset.json "
        f"({32 if quick else 150} items), candidate layers {layers}. The layer is "
        "auto-tuned for p(matching) at +1 with perplexity on neutral statements ≤ 1.3× (selection on half of "
        "the 50 held-out A/B items). The table reads all 50 items at that layer; steering acts on every "
        "position after the instruction; answers primed with '('.\n\n"
        + markdown_table(rows)
        + "\n\nCapability check at the same layer (MMLU items in CAA's A/B format; accuracy = p(correct) > 0.5):\n\n"
        + markdown_table(capability_rows)
        + "\n\n"
        + "".join(f"![{n}](results/caa_{n}.png)\n" for n in behaviors)
    )
    return md, summary


def breakdown_section(lm: steerlab.LM, out: Path, quick: bool) -> tuple[str, dict[str, Any]]:
    t0 = time.perf_counter()
    openings = _openings()
    vec = steerlab.extract(lm, steerlab.persona_pairs("happy", "sad", openings[:128]), layers=range(8, 20))
    texts = steerlab.load_texts(REPE / "facts_true_false.csv", limit=16 if quick else 64)
    rep = breakdown_curve(lm, vec, texts, progress=False)
    rep.write(out / "results", "breakdown")
    bp = rep.breaking_point
    md = (
        f"{_provenance((time.perf_counter() - t0) / 60, 'quick' if quick else 'full')}\n\n"
        "Happy − sad mean_diff vector on layers 8–19, added at every position of "
        f"{len(texts)} neutral statements (RepE facts). x: coefficient; the added norm relative to the residual "
        "norm is the top axis. Breaking point (perplexity > 2× unsteered): "
        f"{'none in range' if bp is None else f'|c| = {bp:g}'}.\n\n"
        + rep.to_markdown()
        + "\n\n![breakdown](results/breakdown.png)\n"
    )
    return md, {"breaking_point": bp}


# --------------------------------------------------------------------------- assembly
def _fragment(out: Path, name: str) -> str:
    path = out / "results" / f"section_{name}.md"
    return (
        path.read_text(encoding="utf-8").strip()
        if path.is_file()
        else f"_Not run yet: `scripts/results.py --sections {name.split('_')[0]}`._"
    )


def assemble(out: Path) -> Path:
    reading = out / "results" / "reading.md"
    text = (
        (ROOT / "scripts" / "results_template.md")
        .read_text(encoding="utf-8")
        .format(
            frontier_default=_fragment(out, "frontier_default"),
            frontier_stories=_fragment(out, "frontier_stories260K"),
            frontier_default_trained=_fragment(out, "frontier_default_trained"),
            frontier_default_demo=_fragment(out, "frontier_default_demo"),
            frontier_default_kl=_fragment(out, "frontier_default_kl"),
            frontier_stories_kl=_fragment(out, "frontier_stories260K_kl"),
            orientation=_fragment(out, "orientation"),
            caa=_fragment(out, "caa"),
            breakdown=_fragment(out, "breakdown"),
            reading=reading.read_text(encoding="utf-8").strip() if reading.is_file() else "_(no reading written)_",
        )
    )
    path = out / "results.md"
    path.write_text(text, encoding="utf-8")
    return path


def _save(out: Path, name: str, md: str, summary: dict[str, Any]) -> None:
    (out / "results").mkdir(parents=True, exist_ok=True)
    (out / "results" / f"section_{name}.md").write_text(md + "\n", encoding="utf-8")
    path = out / "results" / "summary.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[name] = summary
    path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")


def _check_methods(methods: Sequence[str]) -> None:
    from steerlab.extraction.methods import get_method

    for name in methods:
        method, _, rule = name.partition(":")
        get_method(method)  # an unknown method fails here, before any model runs, listing the choices
        if method in TRAINED and rule and rule not in SIDES:
            raise SystemExit(f"{name}: a trained vector's side is one of {', '.join(SIDES)}")
        if method not in TRAINED and rule and rule not in RULES:
            raise SystemExit(f"{name}: orientation rule {rule!r} is not one of {', '.join(RULES)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer items and settings (a smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--models", default="stories260K,default", help="frontier / orientation models")
    parser.add_argument("--replot", action="store_true", help="only redraw the frontier plots from their JSON")
    parser.add_argument(
        "--operators", default=",".join(OPERATORS), help="least-push operators on the frontier ('' for none)"
    )
    parser.add_argument("--lean", action="store_true", help="fewer layer sets, coefficients and prompts")
    parser.add_argument(
        "--vector-openings",
        choices=sorted(VECTOR_OPENINGS),
        default="repe",
        help="the openings of the persona pairs the vectors are extracted on ('demo': those steerlab demo uses)",
    )
    parser.add_argument(
        "--kl-caps", default="", help="per-token KL caps (nats) of mean_diff rows on the frontier, e.g. 0.1,0.3"
    )
    parser.add_argument(
        "--methods",
        default="actadd,mean_diff,pca_diff",
        help="extraction methods on the frontier (any name steerlab.extract accepts)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = [s for s in args.sections.split(",") if s]
    keys = [k for k in args.models.split(",") if k]
    methods = [m for m in args.methods.split(",") if m]
    unknown = [s for s in sections if s not in SECTIONS] + [k for k in keys if k not in MODELS]
    if unknown:
        parser.error(f"unknown sections / models {unknown}")
    _check_methods(methods)
    out: Path = args.out
    if args.replot:
        for key in keys:
            path = out / "results" / f"frontier_{key}.json"
            FrontierReport.from_dict(json.loads(path.read_text())).plot(path.with_suffix(".png"))
        return
    t0 = time.perf_counter()
    if "frontier" in sections:
        for key in keys:
            print(f"frontier on {key} ...", flush=True)
            ops = [o for o in args.operators.split(",") if o]
            caps = [float(c) for c in args.kl_caps.split(",") if c]
            section = frontier_section(key, methods, out, args.quick, ops, args.lean, caps, args.vector_openings)
            _save(out, f"frontier_{key}", *section)
    if "orientation" in sections:
        print("pca_diff orientation ...", flush=True)
        _save(out, "orientation", *orientation_section(keys, out, args.quick))
    if "caa" in sections or "breakdown" in sections:
        lm = steerlab.load_model("default")
        if "breakdown" in sections:
            print("breakdown ...", flush=True)
            _save(out, "breakdown", *breakdown_section(lm, out, args.quick))
        if "caa" in sections:
            print("CAA behaviours ...", flush=True)
            _save(out, "caa", *caa_section(lm, out, args.quick))
    path = assemble(out)
    print(f"wrote {path} in {(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
