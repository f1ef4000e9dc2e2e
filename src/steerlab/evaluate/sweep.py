"""Layer × coefficient sweeps for any metric, and auto-tuning under a cost budget.

:func:`sweep` evaluates a vector restricted to each layer set (a single layer or a group) at every
coefficient, with one of the evaluations (``"sentiment"``, ``"behavior"``, ``"cost"``), and
collects every metric that evaluation yields into grids (:class:`SweepReport`, heat-map PNG).

:func:`autotune` picks the layer set and coefficient that maximise the behaviour effect while a
cost stays within budget (e.g. continuation perplexity at most 1.3x the unsteered one), choosing
on one half of the items and reporting on the other half (:class:`AutotuneReport`).

Example:
    >>> rep = sweep(lm, vec, "sentiment", openings, layer_sets=[[8], [12], [16]],
    ...             coefficients=[-2, 0, 2], metric="positive_share")  # doctest: +SKIP
    >>> rep.plot("sweep.png")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DatasetError, SteeringSpecError
from ..model import LM
from ..progress import track
from ..vector import SteeringVector
from .report import Report, new_figure, save_figure

KINDS = ("sentiment", "behavior", "cost")
METRICS = {
    "sentiment": ("positive_share", "negative_share", "mean_compound", "continuation_ppl"),
    "behavior": ("p_matching", "above_half"),
    "cost": ("ppl_ratio", "kl", "perplexity"),
}


def _layer_label(layers: Sequence[int]) -> str:
    layers = list(layers)
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(str(x) for x in layers)


def _evaluate(
    kind: str, lm: LM, vector: SteeringVector, data: Sequence[Any], coefficients: Sequence[float], **kwargs: Any
) -> dict[str, list[float]]:
    """Run one evaluation at all ``coefficients``; return ``{metric: [value per coefficient]}``."""
    coefs = list(coefficients)
    if kind == "sentiment":
        from .sentiment import sentiment_shift

        rep = sentiment_shift(lm, vector, list(data), coefficients=coefs, **kwargs)
        rows = [rep.row(c) for c in coefs]
        return {
            "positive_share": [r.positive_share for r in rows],
            "negative_share": [r.negative_share for r in rows],
            "mean_compound": [r.mean_compound for r in rows],
            "continuation_ppl": [r.mean_perplexity for r in rows],
        }
    if kind == "behavior":
        from .behavior import behavior_eval

        brep = behavior_eval(lm, vector, list(data), multipliers=coefs, **kwargs)
        points = [brep.point(c) for c in coefs]
        return {"p_matching": [p.mean for p in points], "above_half": [p.above_half for p in points]}
    if kind == "cost":
        from .cost import offtarget_cost

        crep = offtarget_cost(lm, vector, list(data), coefficients=coefs, **kwargs)
        by_coef = {c: i for i, c in enumerate(crep.coefficients)}
        return {
            "ppl_ratio": [crep.ppl_ratio[by_coef[c]] for c in coefs],
            "kl": [crep.kl[by_coef[c]] for c in coefs],
            "perplexity": [crep.perplexity[by_coef[c]] for c in coefs],
        }
    raise SteeringSpecError(f"unknown evaluation {kind!r}: use one of {', '.join(KINDS)}")


def _layer_sets(vector: SteeringVector, layer_sets: Sequence[Sequence[int]] | None) -> list[list[int]]:
    sets = [[k] for k in vector.layers] if layer_sets is None else [[int(x) for x in s] for s in layer_sets]
    if not sets or any(not s for s in sets):
        raise SteeringSpecError("layer_sets must be a non-empty list of non-empty layer lists")
    return sets


@dataclass
class SweepReport(Report):
    """Grids ``[layer set, coefficient]`` of every metric of one evaluation.

    Attributes:
        kind: ``"sentiment"``, ``"behavior"`` or ``"cost"``.
        metric: the metric shown by :meth:`plot` and :meth:`rows`.
        layer_sets: the layer sets (rows of each grid).
        coefficients: the coefficients (columns).
        grids: ``{metric: [[value]]}``.
    """

    kind: str = ""
    metric: str = ""
    layer_sets: list[list[int]] = field(default_factory=list)
    coefficients: list[float] = field(default_factory=list)
    grids: dict[str, list[list[float]]] = field(default_factory=dict)

    def value(self, layers: Sequence[int], coefficient: float, metric: str | None = None) -> float:
        """The grid value at one layer set and coefficient."""
        i = self.layer_sets.index([int(x) for x in layers])
        return self.grids[metric or self.metric][i][self.coefficients.index(coefficient)]

    def best(self, metric: str | None = None, maximize: bool = True) -> tuple[list[int], float, float]:
        """``(layers, coefficient, value)`` of the best cell of a metric."""
        grid = self.grids[metric or self.metric]
        cells = [(v, i, j) for i, row in enumerate(grid) for j, v in enumerate(row) if not math.isnan(v)]
        v, i, j = (max if maximize else min)(cells)
        return self.layer_sets[i], self.coefficients[j], v

    def rows(self) -> list[dict[str, Any]]:
        """One row per layer set: the chosen metric at each coefficient."""
        grid = self.grids.get(self.metric, [])
        return [
            {"layers": _layer_label(ls), **{f"c={c:g}": grid[i][j] for j, c in enumerate(self.coefficients)}}
            for i, ls in enumerate(self.layer_sets)
        ]

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Heat map of the chosen metric (layers down, coefficients across), values in the cells."""
        import numpy as np

        grid = np.array(self.grids[self.metric], dtype=float)
        fig = new_figure(1.2 + 0.8 * len(self.coefficients), 1.2 + 0.45 * len(self.layer_sets))
        ax = fig.add_subplot(1, 1, 1)
        im = ax.imshow(grid, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(self.coefficients)), [f"{c:g}" for c in self.coefficients])
        ax.set_yticks(range(len(self.layer_sets)), [_layer_label(s) for s in self.layer_sets])
        ax.set_xlabel("coefficient")
        ax.set_ylabel("layers")
        if grid.size <= 200:
            finite = grid[np.isfinite(grid)]
            mid = float(finite.mean()) if finite.size else 0.0
            for (i, j), v in np.ndenumerate(grid):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if v > mid else "white")
        fig.colorbar(im, ax=ax, label=self.metric)
        ax.set_title(self.title or f"{self.kind} sweep: {self.metric}")
        return save_figure(fig, path)


def sweep(
    lm: LM,
    vector: SteeringVector,
    kind: str,
    data: Sequence[Any],
    coefficients: Sequence[float],
    layer_sets: Sequence[Sequence[int]] | None = None,
    metric: str | None = None,
    progress: bool | None = None,
    **kwargs: Any,
) -> SweepReport:
    """Evaluate ``vector`` at every (layer set, coefficient).

    Args:
        lm: the model.
        vector: the steering vector; each layer set restricts it to those layers.
        kind: ``"sentiment"`` (data: sentence openings), ``"behavior"`` (data: CAA A/B items or
            :class:`~steerlab.evaluate.behavior.ABItem`) or ``"cost"`` (data: neutral texts).
        coefficients: coefficients to try (include 0 for the baseline).
        layer_sets: layer groups to try (default: each layer of the vector on its own).
        metric: the metric shown in the table and heat map (default: the kind's first).
        progress: progress bar over layer sets.
        **kwargs: passed to the evaluation (``max_new_tokens``, ``batch_size``, ``scorer``, ...).
    """
    if kind not in KINDS:
        raise SteeringSpecError(f"unknown evaluation {kind!r}: use one of {', '.join(KINDS)}")
    metric = metric or METRICS[kind][0]
    if metric not in METRICS[kind]:
        raise SteeringSpecError(f"{kind} sweeps measure {', '.join(METRICS[kind])}, not {metric!r}")
    if not data:
        raise DatasetError(f"no data for the {kind} sweep")
    sets = _layer_sets(vector, layer_sets)
    coefs = [float(c) for c in coefficients]
    report = SweepReport(kind=kind, metric=metric, layer_sets=sets, coefficients=coefs, complete=False,
                         settings={k: v for k, v in kwargs.items() if isinstance(v, (int, float, str))})
    for ls in track(sets, f"{kind} sweep over {len(sets)} layer sets", enabled=progress):
        values = _evaluate(kind, lm, vector.select(ls), data, coefs, progress=False, **kwargs)
        for name, row in values.items():
            report.grids.setdefault(name, []).append(row)
    report.complete = True
    return report


@dataclass
class AutotuneReport(Report):
    """The chosen setting, how it was chosen, and how it does on held-out items.

    Attributes:
        kind: the evaluation.
        effect_metric: what was maximised; cost_metric / budget: the constraint (cost ≤ budget).
        layers, coefficient: the chosen setting.
        selection: the sweep on the selection half (effect and cost grids).
        held_out: ``{"baseline": {...}, "steered": {...}}`` metrics on the other half.
    """

    kind: str = ""
    effect_metric: str = ""
    cost_metric: str = ""
    budget: float = math.nan
    layers: list[int] = field(default_factory=list)
    coefficient: float = 0.0
    n_select: int = 0
    n_report: int = 0
    selection: dict[str, Any] = field(default_factory=dict)
    held_out: dict[str, dict[str, float]] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """Held-out metrics, baseline vs the chosen setting."""
        out = []
        for label, metrics in self.held_out.items():
            out.append({"setting": label, "layers": _layer_label(self.layers) if label != "baseline" else "-",
                        "coefficient": self.coefficient if label != "baseline" else 0.0, **metrics})
        return out

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Effect against cost for every candidate on the selection half, the budget and the choice."""
        fig = new_figure(6.5, 4.5)
        ax = fig.add_subplot(1, 1, 1)
        eff, cost = self.selection.get("effect", []), self.selection.get("cost", [])
        sets, coefs = self.selection.get("layer_sets", []), self.selection.get("coefficients", [])
        for i, ls in enumerate(sets):
            ax.plot([cost[i][j] for j in range(len(coefs))], [eff[i][j] for j in range(len(coefs))], "o-",
                    alpha=0.7, label=f"layers {_layer_label(ls)}")
        ax.axvline(self.budget, color="red", ls="--", lw=1, label=f"budget {self.cost_metric} ≤ {self.budget:g}")
        if sets:
            i, j = sets.index(self.layers), coefs.index(self.coefficient)
            ax.plot([cost[i][j]], [eff[i][j]], "*", ms=16, color="gold", mec="black", label="chosen")
        ax.set_xlabel(f"{self.cost_metric} (selection half)")
        ax.set_ylabel(f"{self.effect_metric} (selection half)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(self.title or f"auto-tune: layers {_layer_label(self.layers)}, coefficient {self.coefficient:g}")
        return save_figure(fig, path)


def split_halves(data: Sequence[Any], seed: int = 0) -> tuple[list[Any], list[Any]]:
    """The (selection, report) halves :func:`autotune` uses: shuffled with ``seed``, then halved."""
    items = list(data)
    random.Random(seed).shuffle(items)
    half = len(items) // 2
    if half == 0:
        raise DatasetError("auto-tune needs at least 2 items (it selects on one half and reports on the other)")
    return items[:half], items[half:]


def autotune(
    lm: LM,
    vector: SteeringVector,
    kind: str,
    data: Sequence[Any],
    coefficients: Sequence[float],
    layer_sets: Sequence[Sequence[int]] | None = None,
    budget: float = 1.3,
    direction: int = 1,
    cost_texts: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool | None = None,
    **kwargs: Any,
) -> AutotuneReport:
    """Choose layers and coefficient maximising the effect with the cost within ``budget``.

    * ``kind="sentiment"``: effect = positive share (``direction=+1``) or negative share (``-1``);
      cost = mean perplexity of the steered continuations under the unsteered model, relative to
      the unsteered continuations' (or, with ``cost_texts``, perplexity ratio on neutral text).
    * ``kind="behavior"``: effect = mean p(matching) (``+1``) or 1 − p(matching) (``-1``); cost =
      perplexity ratio on ``cost_texts`` (required).

    The data is shuffled (``seed``) and halved: the choice is made on the first half, the chosen
    setting and the baseline are reported on the second.

    Raises:
        DatasetError: fewer than 2 items, or ``kind="behavior"`` without ``cost_texts``.
    """
    if kind not in ("sentiment", "behavior"):
        raise SteeringSpecError("auto-tune optimises 'sentiment' or 'behavior'")
    if direction not in (1, -1):
        raise SteeringSpecError("direction must be +1 or -1")
    if kind == "behavior" and not cost_texts:
        raise DatasetError("auto-tuning a behaviour needs cost_texts (neutral text) to measure the perplexity cost")
    coefs = sorted({0.0, *(float(c) for c in coefficients if c * direction > 0)}, key=abs)
    if len(coefs) < 2:
        raise SteeringSpecError(f"give coefficients with the sign of direction={direction:+d}")
    select, held = split_halves(data, seed)
    sets = _layer_sets(vector, layer_sets)
    effect_metric = {("sentiment", 1): "positive_share", ("sentiment", -1): "negative_share",
                     ("behavior", 1): "p_matching", ("behavior", -1): "p_not_matching"}[(kind, direction)]
    cost_metric = "ppl_ratio" if cost_texts else "continuation_ppl_ratio"
    effect: list[list[float]] = []
    cost: list[list[float]] = []
    for ls in track(sets, f"auto-tune: {len(sets)} layer sets", enabled=progress):
        sub = vector.select(ls)
        values = _evaluate(kind, lm, sub, select, coefs, progress=False, **kwargs)
        if kind == "sentiment":
            row_effect = values[effect_metric]
        else:
            row_effect = [p if direction > 0 else 1 - p for p in values["p_matching"]]
        if cost_texts:
            row_cost = _evaluate("cost", lm, sub, cost_texts, coefs, progress=False)["ppl_ratio"]
        else:
            ppl = values["continuation_ppl"]
            row_cost = [p / ppl[0] if ppl[0] else math.nan for p in ppl]
        effect.append(row_effect)
        cost.append(row_cost)
    candidates = [
        (effect[i][j], -abs(coefs[j]), i, j)
        for i in range(len(sets)) for j in range(1, len(coefs))
        if cost[i][j] <= budget and not math.isnan(effect[i][j])
    ]
    if candidates:
        _, _, bi, bj = max(candidates)
        chosen_layers, chosen = sets[bi], coefs[bj]
    else:  # nothing fits the budget: the unsteered model is the honest answer
        chosen_layers, chosen = sets[0], 0.0
    final = _evaluate(kind, lm, vector.select(chosen_layers), held, sorted({0.0, chosen}), progress=False, **kwargs)
    idx = {c: k for k, c in enumerate(sorted({0.0, chosen}))}
    held_out: dict[str, dict[str, float]] = {}
    for label, c in (("baseline", 0.0), ("steered", chosen)):
        metrics = {name: vals[idx[c]] for name, vals in final.items()}
        if kind == "sentiment":
            base_ppl = final["continuation_ppl"][idx[0.0]]
            metrics["continuation_ppl_ratio"] = metrics["continuation_ppl"] / base_ppl if base_ppl else math.nan
        held_out[label] = metrics
    if cost_texts:
        ratios = _evaluate("cost", lm, vector.select(chosen_layers), cost_texts, sorted({0.0, chosen}),
                           progress=False)["ppl_ratio"]
        for label, c in (("baseline", 0.0), ("steered", chosen)):
            held_out[label]["ppl_ratio"] = ratios[idx[c]]
    return AutotuneReport(
        title=f"auto-tune ({kind}, {effect_metric}, {cost_metric} ≤ {budget:g})",
        kind=kind, effect_metric=effect_metric, cost_metric=cost_metric, budget=budget,
        layers=chosen_layers, coefficient=chosen, n_select=len(select), n_report=len(held),
        selection={"layer_sets": sets, "coefficients": coefs, "effect": effect, "cost": cost},
        held_out=held_out, settings={"direction": direction, "seed": seed},
    )
