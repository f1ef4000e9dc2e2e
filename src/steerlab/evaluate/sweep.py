"""Layer × coefficient sweeps of any evaluation, and auto-tuning under a cost budget.

:func:`sweep` runs an evaluation (any :class:`~steerlab.evaluate.protocol.Evaluation`: the
built-in ``"sentiment"``, ``"behavior"``, ``"cost"`` or one registered by you) with the vector
restricted to each layer set (a single layer or a group) at every coefficient, and collects every
metric it yields into grids (:class:`SweepReport`, heat-map PNG).

:func:`autotune` picks the layer set and coefficient that maximise the evaluation's effect metric
while a cost stays within budget (e.g. continuation perplexity at most 1.3x the unsteered one),
choosing on one half of the items and reporting on the other half (:class:`AutotuneReport`).

Neither knows any report's fields: they read ``metrics()`` and the evaluation's ``effect`` and
``cost`` (see :mod:`steerlab.evaluate.protocol`).

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

from ..core.vector import SteeringVector
from ..errors import DatasetError, SteeringSpecError
from ..executor import Executor, LocalExecutor
from ..models.load import LM
from ..progress import track
from .prompting import as_prompt
from .protocol import EVALUATIONS, Evaluation, get_evaluation
from .report import Report, new_figure, save_figure


def _layer_label(layers: Sequence[int]) -> str:
    layers = list(layers)
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(str(x) for x in layers)


@dataclass(frozen=True)
class _Setting:
    """What every layer set of one grid run reads alike (sent once to each worker)."""

    evaluation: Evaluation
    vector: SteeringVector
    data: list[object]
    coefficients: list[float]
    options: dict[str, object]


def _run_setting(lm: LM, setting: _Setting, layers: list[int]) -> dict[str, list[float]]:
    """One layer set: an executor's task (in a worker or in this process)."""
    s = setting
    return evaluate_setting(s.evaluation, lm, s.vector, s.data, layers, s.coefficients, **s.options)


def _grids(
    evaluation: Evaluation,
    lm: LM,
    vector: SteeringVector,
    data: Sequence[Any],
    sets: Sequence[Sequence[int]],
    coefficients: Sequence[float],
    *,
    progress: bool | None,
    executor: Executor | None = None,
    **options: Any,
) -> dict[str, list[list[float]]]:
    """``{metric: [[value per coefficient] per layer set]}``: the evaluation with the vector
    restricted to each layer set in turn, each a job of ``executor`` (default: this process);
    rows in the order of ``sets``."""
    executor = executor or LocalExecutor()
    setting = _Setting(evaluation, vector, list(data), [float(c) for c in coefficients], options)
    rows: list[dict[str, list[float]] | None] = [None] * len(sets)
    label = f"{evaluation.name}: {len(sets)} layer sets" + (f" on {executor.describe()}" if executor.workers else "")
    results = executor.map(lm, _run_setting, setting, [list(s) for s in sets])
    for i, row in track(results, label, total=len(sets), enabled=progress):
        rows[i] = row
    grids: dict[str, list[list[float]]] = {}
    for done in rows:
        assert done is not None  # every job gave its row (an executor raises otherwise)
        for name, values in done.items():
            grids.setdefault(name, []).append(values)
    return grids


def evaluate_setting(
    evaluation: Evaluation,
    lm: LM,
    vector: SteeringVector,
    data: Sequence[Any],
    layers: Sequence[int],
    coefficients: Sequence[float],
    **options: Any,
) -> dict[str, list[float]]:
    """One row of every grid: the evaluation with the vector cut to ``layers``, at every coefficient
    (what a sweep's executor runs for each layer set, in a worker or here)."""
    return evaluation(lm, vector.select(layers), data, coefficients, progress=False, **options)


def _layer_sets(vector: SteeringVector, layer_sets: Sequence[Sequence[int]] | None) -> list[list[int]]:
    sets = [[k] for k in vector.layers] if layer_sets is None else [[int(x) for x in s] for s in layer_sets]
    if not sets or any(not s for s in sets):
        raise SteeringSpecError("layer_sets must be a non-empty list of non-empty layer lists")
    return sets


def _recorded(options: dict[str, Any]) -> dict[str, Any]:
    """The options a report records: plain values, and a prompt as ``{"text", "mode", "name"}``."""
    out: dict[str, Any] = {k: v for k, v in options.items() if isinstance(v, (int, float, str))}
    prompt = as_prompt(options.get("prompt"))
    if prompt is not None:
        out["prompt"] = prompt.describe()
    return out


@dataclass
class SweepReport(Report):
    """Grids ``[layer set, coefficient]`` of every metric of one evaluation.

    Attributes:
        kind: the evaluation's name.
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
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="black" if v > mid else "white")
        fig.colorbar(im, ax=ax, label=self.metric)
        ax.set_title(self.title or f"{self.kind} sweep: {self.metric}")
        return save_figure(fig, path)


def sweep(
    lm: LM,
    vector: SteeringVector,
    kind: str | Evaluation,
    data: Sequence[Any],
    coefficients: Sequence[float],
    *,
    layer_sets: Sequence[Sequence[int]] | None = None,
    metric: str | None = None,
    progress: bool | None = None,
    executor: Executor | None = None,
    **kwargs: Any,
) -> SweepReport:
    """Evaluate ``vector`` at every (layer set, coefficient).

    Args:
        lm: the model.
        vector: the steering vector; each layer set restricts it to those layers.
        kind: the evaluation: a registered name — ``"sentiment"`` (data: sentence openings),
            ``"behavior"`` (data: CAA A/B items or :class:`~steerlab.data.ab.ABItem`),
            ``"cost"`` (data: neutral texts) — or an :class:`~steerlab.evaluate.protocol.Evaluation`.
        data: what the evaluation reads.
        coefficients: coefficients to try (include 0 for the baseline).
        layer_sets: layer groups to try (default: each layer of the vector on its own).
        metric: the metric shown in the table and heat map (default: the evaluation's first).
        progress: progress bar over layer sets.
        executor: where the layer sets run, each a job (:class:`~steerlab.executor.Executor`;
            default: this process): ``steerlab.distributed.RayExecutor(workers=N)`` runs them on
            Ray actors holding the model (``pip install steerlab[ray]``); the grids are the same.
        **kwargs: passed to the evaluation (``max_new_tokens``, ``batch_size``, ``scorer``, ...).

    Raises:
        SteeringSpecError: an unknown evaluation or metric, or empty layer sets.
        DatasetError: no data.
    """
    evaluation = get_evaluation(kind)
    metric = metric or evaluation.metrics[0]
    if metric not in evaluation.metrics:
        raise SteeringSpecError(f"{evaluation.name} sweeps measure {', '.join(evaluation.metrics)}, not {metric!r}")
    if not data:
        raise DatasetError(f"no data for the {evaluation.name} sweep")
    sets = _layer_sets(vector, layer_sets)
    coefs = [float(c) for c in coefficients]
    report = SweepReport(
        kind=evaluation.name,
        metric=metric,
        layer_sets=sets,
        coefficients=coefs,
        complete=False,
        settings=_recorded(kwargs),
    )
    report.grids = _grids(evaluation, lm, vector, data, sets, coefs, progress=progress, executor=executor, **kwargs)
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
        held_out: ``{"baseline": {...}, "steered": {...}}`` metrics on the other half
            (``baseline`` is coefficient 0: with ``prompt=`` the prompt alone).
        fits_budget: whether the chosen setting's selection cost is within budget (False only
            when nothing fitted and coefficient 0 itself breaks it, e.g. a long prompt).
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
    fits_budget: bool = True

    def rows(self) -> list[dict[str, Any]]:
        """Held-out metrics, baseline vs the chosen setting."""
        out = []
        for label, metrics in self.held_out.items():
            out.append(
                {
                    "setting": label,
                    "layers": _layer_label(self.layers) if label != "baseline" else "-",
                    "coefficient": self.coefficient if label != "baseline" else 0.0,
                    **metrics,
                }
            )
        return out

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Effect against cost for every candidate on the selection half, the budget and the choice."""
        fig = new_figure(6.5, 4.5)
        ax = fig.add_subplot(1, 1, 1)
        eff, cost = self.selection.get("effect", []), self.selection.get("cost", [])
        sets, coefs = self.selection.get("layer_sets", []), self.selection.get("coefficients", [])
        for i, ls in enumerate(sets):
            ax.plot(
                [cost[i][j] for j in range(len(coefs))],
                [eff[i][j] for j in range(len(coefs))],
                "o-",
                alpha=0.7,
                label=f"layers {_layer_label(ls)}",
            )
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


@dataclass(frozen=True)
class _Objective:
    """What auto-tune maximises and what it keeps within budget, read from the evaluations."""

    evaluation: Evaluation
    effect: str
    cost: Evaluation | None  # the evaluation run on neutral texts, or None: the evaluation's own cost
    cost_metric: str
    direction: int

    @classmethod
    def of(
        cls, kind: str | Evaluation, direction: int, cost_texts: Sequence[str] | None, cost_evaluation: str | Evaluation
    ) -> _Objective:
        evaluation = get_evaluation(kind)
        if not evaluation.effect:
            tunable = [n for n, e in EVALUATIONS.items() if e.effect]
            raise SteeringSpecError(
                f"auto-tune maximises an effect; {evaluation.name!r} measures none: use one of {', '.join(tunable)}"
            )
        if direction not in evaluation.effect:
            raise SteeringSpecError(f"direction must be one of {sorted(evaluation.effect)} for {evaluation.name}")
        if cost_texts:
            cost = get_evaluation(cost_evaluation)
            return cls(evaluation, evaluation.effect[direction], cost, cost.metrics[0], direction)
        if evaluation.cost is None:
            raise DatasetError(
                f"auto-tuning {evaluation.name} needs cost_texts (neutral text) to measure the perplexity cost"
            )
        return cls(evaluation, evaluation.effect[direction], None, f"{evaluation.cost}_ratio", direction)

    def own_costs(self, metrics: dict[str, Any], coefficients: Sequence[float]) -> Any:
        """The cost ratio from the evaluation's own metrics (a grid row or a grid): the report's
        ``<cost>_ratio`` when it measures its own reference (sentiment: the unsteered, unprompted
        model), else the cost relative to coefficient 0."""
        own = self.evaluation.cost or ""
        if f"{own}_ratio" in metrics:
            return metrics[f"{own}_ratio"]
        values = metrics[own]
        if values and isinstance(values[0], list):
            return [self.own_cost(row, coefficients) for row in values]
        return self.own_cost(values, coefficients)

    @staticmethod
    def own_cost(values: Sequence[float], coefficients: Sequence[float]) -> list[float]:
        """The evaluation's cost metric relative to its value at coefficient 0 (the unsteered model)."""
        base = values[list(coefficients).index(0.0)]
        return [v / base if base else math.nan for v in values]


def _choose(effect: list[list[float]], cost: list[list[float]], coefs: list[float], budget: float) -> tuple[int, int]:
    """``(layer set, coefficient)`` indices of the largest effect whose cost is within budget (ties:
    the smaller ``|coefficient|``, so coefficient 0 — listed first — wins a tie, then the earlier
    layer set); ``(0, 0)`` when
    nothing fits. Coefficient 0 is a candidate: auto-tune never picks a setting that does worse
    than not steering."""
    candidates = [
        (effect[i][j], -abs(coefs[j]), -j, -i, i, j)
        for i in range(len(effect))
        for j in range(len(coefs))
        if cost[i][j] <= budget and not math.isnan(effect[i][j])
    ]
    if not candidates:
        return 0, 0
    *_, i, j = max(candidates)
    return i, j


def autotune(
    lm: LM,
    vector: SteeringVector,
    kind: str | Evaluation,
    data: Sequence[Any],
    coefficients: Sequence[float],
    *,
    layer_sets: Sequence[Sequence[int]] | None = None,
    budget: float = 1.3,
    direction: int = 1,
    cost_texts: Sequence[str] | None = None,
    cost_evaluation: str | Evaluation = "cost",
    seed: int = 0,
    progress: bool | None = None,
    executor: Executor | None = None,
    **kwargs: Any,
) -> AutotuneReport:
    """Choose layers and coefficient maximising the effect with the cost within ``budget``.

    The effect is the evaluation's ``effect[direction]`` metric (sentiment: positive share for
    ``direction=+1``, negative share for ``-1``; behavior: p(matching) or 1 − p(matching)). The
    cost is, with ``cost_texts``, the first metric of ``cost_evaluation`` on them (default: the
    perplexity ratio on neutral text); without, the evaluation's own ``cost`` metric relative to
    the unsteered model (sentiment: mean continuation perplexity under the unsteered model,
    ``continuation_ppl_ratio``). An evaluation without an own cost (behavior) needs ``cost_texts``.

    The data is shuffled (``seed``) and halved: the choice is made on the first half, the chosen
    setting and the baseline are reported on the second. Coefficient 0 is a candidate too; when no
    setting fits the budget the choice is coefficient 0 (the unsteered model). With an ``executor``
    the candidate settings run as its jobs (as in :func:`sweep`); the held-out report runs here.

    Options in ``kwargs`` reach the evaluation: with ``prompt=`` (sentiment, behavior) every
    setting runs on the prompted text — prompting combined with the vector, coefficient 0 being
    the prompt alone — while the sentiment cost still compares with the unprompted model.

    Raises:
        DatasetError: fewer than 2 items, or no ``cost_texts`` for an evaluation without own cost.
        SteeringSpecError: an evaluation without an effect, a direction it lacks, or no coefficient
            with the sign of ``direction``.
    """
    objective = _Objective.of(kind, direction, cost_texts, cost_evaluation)
    coefs = sorted({0.0, *(float(c) for c in coefficients if c * direction > 0)}, key=abs)
    if len(coefs) < 2:
        raise SteeringSpecError(f"give coefficients with the sign of direction={direction:+d}")
    select, held = split_halves(data, seed)
    sets = _layer_sets(vector, layer_sets)
    grids = _grids(
        objective.evaluation, lm, vector, select, sets, coefs, progress=progress, executor=executor, **kwargs
    )
    effect = grids[objective.effect]
    if objective.cost is None:
        cost = objective.own_costs(grids, coefs)
    else:
        cost = _grids(objective.cost, lm, vector, cost_texts or [], sets, coefs, progress=progress, executor=executor)[
            objective.cost_metric
        ]
    bi, bj = _choose(effect, cost, coefs, budget)
    chosen_layers, chosen = sets[bi], coefs[bj]
    return AutotuneReport(
        title=f"auto-tune ({objective.evaluation.name}, {objective.effect}, {objective.cost_metric} ≤ {budget:g})",
        kind=objective.evaluation.name,
        effect_metric=objective.effect,
        cost_metric=objective.cost_metric,
        budget=budget,
        layers=chosen_layers,
        coefficient=chosen,
        n_select=len(select),
        n_report=len(held),
        fits_budget=bool(cost[bi][bj] <= budget),
        selection={"layer_sets": sets, "coefficients": coefs, "effect": effect, "cost": cost},
        held_out=_held_out(objective, lm, vector.select(chosen_layers), held, chosen, cost_texts, **kwargs),
        settings={"direction": direction, "seed": seed, **_recorded(kwargs)},
    )


def _held_out(
    objective: _Objective,
    lm: LM,
    vector: SteeringVector,
    held: Sequence[Any],
    chosen: float,
    cost_texts: Sequence[str] | None,
    **kwargs: Any,
) -> dict[str, dict[str, float]]:
    """Every metric of the baseline and the chosen coefficient on the held-out half (and the cost)."""
    coefs = sorted({0.0, chosen})
    final = objective.evaluation(lm, vector, held, coefs, progress=False, **kwargs)
    own = objective.evaluation.cost
    if own is not None:
        final[f"{own}_ratio"] = objective.own_costs(final, coefs)
    if objective.cost is not None:
        final[objective.cost_metric] = objective.cost(lm, vector, cost_texts or [], coefs, progress=False)[
            objective.cost_metric
        ]
    return {
        label: {name: values[coefs.index(c)] for name, values in final.items()}
        for label, c in (("baseline", 0.0), ("steered", chosen))
    }
