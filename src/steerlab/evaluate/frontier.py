"""The effect–fluency frontier: how much behaviour each method buys for how much perplexity.

Every **contender** — a steering vector from any method (``mean_diff``, ``pca_diff``, ActAdd, a
trained vector...), prompting, or a prompt combined with a vector — is evaluated over its grid
(layer sets × coefficients, or several prompts) and each setting becomes a point: the effect
(sentiment: positive share when pushing up, negative share when pushing down) against the cost
(sentiment: mean continuation perplexity over the unsteered, unprompted model's). Per contender
and direction the **Pareto front** is marked (no other setting of the same contender has a higher
effect at no higher cost), and the **best setting inside the budget** is chosen on a selection
half of the data and reported on the held-out half (the split of
:func:`~steerlab.evaluate.sweep.autotune`). Points are the size-weighted mean of both halves.

It reads only the evaluation protocol (:mod:`steerlab.evaluate.protocol`): any registered
evaluation with an effect and a cost (its own, or ``cost_texts``) draws a frontier, and a new
extraction method plugs in as just another vector.

Example:
    >>> contenders = [
    ...     Contender.steering("mean_diff", happy_md, [0.5, 1, 1.5], layer_sets=[[*range(8, 20)]]),
    ...     Contender.prompting("prompting", positive=["Here is a happy story. "], negative=["Here is a sad story. "]),
    ... ]  # doctest: +SKIP
    >>> rep = frontier(lm, contenders, openings[:48], budget=1.15, max_new_tokens=24)  # doctest: +SKIP
    >>> rep.write("docs/results", "frontier")  # JSON, markdown and the plot  # doctest: +SKIP
    >>> pareto_front([(1.0, 0.3), (1.1, 0.5), (1.2, 0.4)])
    [True, True, False]
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.vector import SteeringVector
from ..errors import DatasetError, SteeringSpecError
from ..models.load import LM
from ..progress import track
from .prompting import Prompt, PromptLike, as_prompt
from .protocol import Evaluation, accepts, get_evaluation
from .report import Report, markdown_table, new_figure, save_figure
from .sweep import _layer_label, _Objective, split_halves

__all__ = ["BestSetting", "Contender", "FrontierPoint", "FrontierReport", "frontier", "pareto_front"]

DEFAULT_GOAL: dict[int, float] = {1: 0.90, -1: 0.80}
"""The issue's target: positive share ≥ 0.90 pushing up, negative share ≥ 0.80 pushing down."""

DEFAULT_GUARD: dict[str, float] = {"repeated_3gram": 0.05}
"""The degeneracy guard: a setting whose continuations repeat more than 5 points more of their
3-grams than the unsteered model's cannot be chosen (:mod:`steerlab.evaluate.degeneracy`)."""


# --------------------------------------------------------------------------- contenders
@dataclass(frozen=True)
class Contender:
    """One method on the frontier: a vector, prompts, or both, and the grid to try.

    Attributes:
        name: its label (``"mean_diff"``, ``"prompting"``, ``"prompting+mean_diff"``...).
        vector: a steering vector from any method, or ``None`` (prompting alone).
        coefficients: coefficient magnitudes; each direction uses them with its own sign.
        layer_sets: layer groups of the vector to try (default: all its layers together).
        prompts: ``{direction: [prompt, ...]}`` (``+1``: prompts pushing the effect up, ``-1``:
            down). With a vector, every coefficient runs on each prompt of its direction.
        options: extra options of the evaluation for this contender (e.g. ``positions``).
        sides: the directions it runs in (a vector trained for one side: ``(-1,)``).
    """

    name: str
    vector: SteeringVector | None = None
    coefficients: tuple[float, ...] = ()
    layer_sets: tuple[tuple[int, ...], ...] | None = None
    prompts: Mapping[int, tuple[Prompt, ...]] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    sides: tuple[int, ...] = (1, -1)

    def __post_init__(self) -> None:
        if not self.name:
            raise SteeringSpecError("a contender needs a name")
        if self.vector is None and not self.prompts:
            raise SteeringSpecError(f"contender {self.name!r} has neither a vector nor prompts")
        if self.vector is not None and not self.coefficients:
            raise SteeringSpecError(f"contender {self.name!r}: give coefficient magnitudes, e.g. (0.5, 1, 2)")
        if any(c <= 0 for c in self.coefficients):
            raise SteeringSpecError(
                f"contender {self.name!r}: coefficients are magnitudes (> 0); each direction applies its sign"
            )
        if not self.sides or any(d not in (1, -1) for d in (*self.prompts, *self.sides)):
            raise SteeringSpecError(f"contender {self.name!r}: prompts and sides are directions +1 / -1")

    @classmethod
    def steering(
        cls,
        name: str,
        vector: SteeringVector,
        coefficients: Sequence[float],
        layer_sets: Sequence[Sequence[int]] | None = None,
        **options: Any,
    ) -> Contender:
        """A steering vector at each layer set × coefficient (both signs)."""
        return cls(name, vector, _magnitudes(coefficients), _sets(layer_sets), {}, options)

    @classmethod
    def prompting(
        cls, name: str, positive: Sequence[PromptLike] = (), negative: Sequence[PromptLike] = (), **options: Any
    ) -> Contender:
        """Prompting alone: each prompt is one setting of its direction."""
        return cls(name, None, (), None, _prompt_map(positive, negative), options)

    @classmethod
    def combined(
        cls,
        name: str,
        vector: SteeringVector,
        coefficients: Sequence[float],
        positive: Sequence[PromptLike] = (),
        negative: Sequence[PromptLike] = (),
        layer_sets: Sequence[Sequence[int]] | None = None,
        **options: Any,
    ) -> Contender:
        """A prompt and a vector together: every coefficient runs on the prompted text."""
        return cls(name, vector, _magnitudes(coefficients), _sets(layer_sets), _prompt_map(positive, negative), options)

    def directions(self, wanted: Sequence[int]) -> list[int]:
        """The directions of ``wanted`` this contender has settings for."""
        return [d for d in wanted if d in self.sides and (not self.prompts or self.prompts.get(d))]


def _magnitudes(coefficients: Sequence[float]) -> tuple[float, ...]:
    return tuple(dict.fromkeys(abs(float(c)) for c in coefficients if c != 0))


def _sets(layer_sets: Sequence[Sequence[int]] | None) -> tuple[tuple[int, ...], ...] | None:
    return None if layer_sets is None else tuple(tuple(int(x) for x in s) for s in layer_sets)


def _prompt_map(positive: Sequence[PromptLike], negative: Sequence[PromptLike]) -> dict[int, tuple[Prompt, ...]]:
    out: dict[int, tuple[Prompt, ...]] = {}
    for direction, prompts in ((1, positive), (-1, negative)):
        items = [prompts] if isinstance(prompts, (str, Prompt)) else list(prompts)
        if items:
            out[direction] = tuple(p for p in (as_prompt(x) for x in items) if p is not None)
    return out


# --------------------------------------------------------------------------- pareto
def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which ``(cost, effect)`` points are on the Pareto front (lower cost, higher effect is better):
    a point is on it unless another has cost ≤ and effect ≥ with one of them strictly. Points with
    a NaN are never on it; identical points are both on it.

    Example:
        >>> pareto_front([(1.0, 0.3), (1.2, 0.3), (1.1, 0.6), (2.0, 0.6), (float("nan"), 0.9)])
        [True, False, True, False, False]
    """
    flags = []
    for i, (c, e) in enumerate(points):
        if math.isnan(c) or math.isnan(e):
            flags.append(False)
            continue
        dominated = any(
            j != i and oc <= c and oe >= e and (oc < c or oe > e)
            for j, (oc, oe) in enumerate(points)
            if not (math.isnan(oc) or math.isnan(oe))
        )
        flags.append(not dominated)
    return flags


# --------------------------------------------------------------------------- report
@dataclass
class FrontierPoint:
    """One setting of one contender in one direction.

    Attributes:
        method: the contender's name.
        direction: ``+1`` or ``-1``.
        layers: the vector's layers (empty for prompting alone).
        coefficient: the signed coefficient (``0``: no vector).
        prompt: the prompt's label, or ``""``.
        effect, cost: the pooled (both halves) effect and cost — the point's coordinates.
        selection, held_out: every metric on the selection and the held-out half.
        on_front: on the Pareto front of its contender and direction.
    """

    method: str
    direction: int
    layers: list[int]
    coefficient: float
    prompt: str
    effect: float
    cost: float
    selection: dict[str, float] = field(default_factory=dict)
    held_out: dict[str, float] = field(default_factory=dict)
    on_front: bool = False

    @property
    def setting(self) -> str:
        """A short description: layers, coefficient, prompt."""
        parts = []
        if self.layers:
            parts.append(f"L{_layer_label(self.layers)} c={self.coefficient:g}")
        if self.prompt:
            parts.append(self.prompt)
        return ", ".join(parts) or "unsteered"


@dataclass
class BestSetting:
    """The auto-tuned choice of one contender and direction: best selection-half effect within
    the budget, with its held-out numbers (``point`` is ``None`` when nothing fitted)."""

    method: str
    direction: int
    point: FrontierPoint | None
    reaches_goal: bool = False


@dataclass
class FrontierReport(Report):
    """Effect against cost for every setting of every contender, fronts and budgeted choices.

    Attributes:
        evaluation: the evaluation's name (``"sentiment"``, ...).
        effect_metrics: ``{direction: metric}``.
        cost_metric: the cost (x axis), a ratio to the unsteered, unprompted model.
        budget: the cost budget (vertical line); goal: ``{direction: effect}`` (horizontal lines).
        n_select, n_report: sizes of the selection and held-out halves.
        baseline: the unsteered, unprompted model's pooled metrics.
        points: every setting.
        best: one :class:`BestSetting` per contender and direction.
        plot_max_cost: where the plot's x axis ends (settings beyond sit on its edge as ▶).
    """

    evaluation: str = ""
    effect_metrics: dict[int, str] = field(default_factory=dict)
    cost_metric: str = ""
    budget: float = math.nan
    goal: dict[int, float] = field(default_factory=dict)
    n_select: int = 0
    n_report: int = 0
    baseline: dict[str, float] = field(default_factory=dict)
    points: list[FrontierPoint] = field(default_factory=list)
    best: list[BestSetting] = field(default_factory=list)
    guard: dict[str, float] = field(default_factory=dict)

    def loops(self, metrics: Mapping[str, float], reference: Mapping[str, float] | None = None) -> bool:
        """True when ``metrics`` break the degeneracy guard: a guarded metric (e.g. the share of
        repeated 3-grams) more than its allowance above ``reference``'s (default: the baseline's),
        or not measurable (``nan``: no continuation long enough, e.g. one glued word or nothing)
        where the reference's is — continuations that collapsed cannot win either.

        Example:
            >>> rep = FrontierReport(guard={"repeated_3gram": 0.05}, baseline={"repeated_3gram": 0.02})
            >>> rep.loops({"repeated_3gram": 0.30}), rep.loops({"repeated_3gram": 0.04}), rep.loops({})
            (True, False, False)
            >>> rep.loops({"repeated_3gram": float("nan")})
            True
        """
        ref = self.baseline if reference is None else reference

        def breaks(metric: str, allowance: float) -> bool:
            if metric not in metrics or metric not in ref or math.isnan(ref[metric]):
                return False
            return math.isnan(metrics[metric]) or metrics[metric] > ref[metric] + allowance

        return any(breaks(m, allowance) for m, allowance in self.guard.items())

    def within(self, p: FrontierPoint) -> str:
        """``"yes"`` when a point's pooled cost is within the budget and it does not loop, else why not."""
        if not p.cost <= self.budget:
            return "no"
        return "no (loops)" if self.loops({**p.selection, **{k: self.pooled(p, k) for k in self.guard}}) else "yes"

    def pooled(self, p: FrontierPoint, metric: str) -> float:
        """A metric of ``p`` over all items (both halves, size-weighted)."""
        n = self.n_select + self.n_report
        sel, held = p.selection.get(metric, math.nan), p.held_out.get(metric, math.nan)
        return (self.n_select * sel + self.n_report * held) / n if n else math.nan

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FrontierReport:
        """A report back from its :meth:`to_dict` / JSON (to redraw it, or to add points to it).

        Example:
            >>> rep = FrontierReport.from_dict(json.loads(Path("frontier.json").read_text()))  # doctest: +SKIP
            >>> rep.plot("frontier.png")  # doctest: +SKIP
        """

        def num(x: Any) -> float:
            return math.nan if x is None else float(x)

        def point(p: Mapping[str, Any]) -> FrontierPoint:
            return FrontierPoint(
                p["method"],
                int(p["direction"]),
                list(p["layers"]),
                num(p["coefficient"]),
                p["prompt"],
                num(p["effect"]),
                num(p["cost"]),
                {k: num(v) for k, v in p["selection"].items()},
                {k: num(v) for k, v in p["held_out"].items()},
                bool(p["on_front"]),
            )

        points = [point(p) for p in data["points"]]
        best = [
            BestSetting(
                b["method"],
                int(b["direction"]),
                None if b["point"] is None else point(b["point"]),
                bool(b["reaches_goal"]),
            )
            for b in data["best"]
        ]
        return cls(
            title=data.get("title", ""),
            complete=bool(data.get("complete", True)),
            settings=dict(data["settings"]),
            evaluation=data.get("evaluation", ""),
            effect_metrics={int(k): v for k, v in data["effect_metrics"].items()},
            cost_metric=data["cost_metric"],
            budget=num(data["budget"]),
            goal={int(k): num(v) for k, v in data["goal"].items()},
            n_select=int(data["n_select"]),
            n_report=int(data["n_report"]),
            baseline={k: num(v) for k, v in data["baseline"].items()},
            points=points,
            best=best,
            guard={k: float(v) for k, v in data.get("guard", {}).items()},
        )

    def methods(self) -> list[str]:
        """Contender names, in the order given."""
        return list(dict.fromkeys(p.method for p in self.points))

    def front(self, method: str, direction: int) -> list[FrontierPoint]:
        """The Pareto-front points of one contender and direction, by increasing cost."""
        pts = [p for p in self.points if p.method == method and p.direction == direction and p.on_front]
        return sorted(pts, key=lambda p: (p.cost, p.effect))

    def best_of(self, method: str, direction: int) -> BestSetting | None:
        """The budgeted choice of one contender and direction."""
        return next((b for b in self.best if b.method == method and b.direction == direction), None)

    def rows(self) -> list[dict[str, Any]]:
        """One row per setting: pooled effect and cost, and whether it is on its front."""
        return [
            {
                "method": p.method,
                "direction": f"{p.direction:+d}",
                "setting": p.setting,
                "effect": p.effect,
                "cost": p.cost,
                "front": "●" if p.on_front else "",
            }
            for p in self.points
        ]

    def best_rows(self) -> list[dict[str, Any]]:
        """The budgeted choice per contender and direction: selection and held-out numbers."""
        rows = []
        for b in self.best:
            p, metric = b.point, self.effect_metrics.get(b.direction, "")
            base = self.baseline.get(metric, math.nan)
            rows.append(
                {
                    "method": b.method,
                    "direction": f"{b.direction:+d} ({metric})",
                    "setting": "nothing within budget" if p is None else p.setting,
                    "selection effect": math.nan if p is None else p.selection.get(metric, math.nan),
                    "held-out effect": math.nan if p is None else p.held_out.get(metric, math.nan),
                    "held-out cost": math.nan if p is None else p.held_out.get(self.cost_metric, math.nan),
                    "held-out distinct-2": math.nan if p is None else p.held_out.get("distinct_2", math.nan),
                    "held-out repeated 3-grams": math.nan if p is None else p.held_out.get("repeated_3gram", math.nan),
                    "baseline": base,
                    "goal": f"{'reached' if b.reaches_goal else 'not reached'} (≥ {self._goal(b.direction):g})",
                }
            )
        return rows

    def _goal(self, direction: int) -> float:
        return self.goal.get(direction, math.nan)

    def to_markdown(self) -> str:
        """The budgeted choices, then each contender's Pareto front."""
        guarded = ", ".join(f"{m} ≤ unsteered + {a:g}" for m, a in self.guard.items())
        head = f"### {self.title}\n\n" if self.title else ""
        fronts = [
            {
                "method": p.method,
                "direction": f"{p.direction:+d}",
                "setting": p.setting,
                "effect": p.effect,
                "cost": p.cost,
                "distinct-2": self.pooled(p, "distinct_2"),
                "repeated 3-grams": self.pooled(p, "repeated_3gram"),
                "within budget": self.within(p),
            }
            for m in self.methods()
            for d in sorted(self.effect_metrics, reverse=True)
            for p in self.front(m, d)
        ]
        note = "" if self.complete else "\n\n**INCOMPLETE RUN — numbers cover only part of the data.**"
        return (
            f"{head}Best inside the budget ({self.cost_metric} ≤ {self.budget:g}"
            + (f"; degeneracy guard: {guarded}" if guarded else "")
            + "), chosen on the selection half "
            f"({self.n_select} items) and reported on the held-out half ({self.n_report} items):\n\n"
            + markdown_table(self.best_rows())
            + f"\n\nPareto fronts (effect and cost over all {self.n_select + self.n_report} items; "
            f"{len(self.points)} settings in all, in the JSON):\n\n" + markdown_table(fronts) + note
        )

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """One panel per direction: every setting as a point, each contender's front as a line,
        the budget as a vertical line, the goal as a horizontal line, the baseline as a star."""
        directions = sorted(self.effect_metrics, reverse=True)
        fig = new_figure(6.0 * len(directions), 4.8)
        colors = {m: f"C{i % 10}" for i, m in enumerate(self.methods())}
        for k, direction in enumerate(directions):
            ax = fig.add_subplot(1, len(directions), k + 1)
            self._panel(ax, direction, colors)
        fig.suptitle(self.title or f"{self.evaluation}: effect against {self.cost_metric}")
        return save_figure(fig, path)

    plot_max_cost: float = 8.0

    def _panel(self, ax: Any, direction: int, colors: dict[str, str]) -> None:
        metric = self.effect_metrics[direction]
        finite = [p.cost for p in self.points if math.isfinite(p.cost)]
        xmax = max(1.5 * self.budget, min(self.plot_max_cost, 1.05 * max(finite, default=1.0)))

        def x(points: Sequence[FrontierPoint]) -> list[float]:  # settings past the axis sit on its edge
            return [min(p.cost, xmax) for p in points]

        for method, color in colors.items():
            pts = [p for p in self.points if p.method == method and p.direction == direction]
            if not pts:
                continue
            inside = [p for p in pts if p.cost <= xmax]
            beyond = [p for p in pts if p.cost > xmax]
            ax.scatter(x(inside), [p.effect for p in inside], s=14, alpha=0.35, color=color)
            ax.scatter(x(beyond), [p.effect for p in beyond], s=22, alpha=0.5, color=color, marker=">")
            front = self.front(method, direction)
            ax.plot(x(front), [p.effect for p in front], "o-", ms=4, lw=1.6, color=color, label=method)
            best = self.best_of(method, direction)
            if best is not None and best.point is not None:
                ax.plot(x([best.point]), [best.point.effect], "o", ms=11, mfc="none", mec=color, mew=1.8)
        if metric in self.baseline and self.cost_metric in self.baseline:
            ax.plot(
                [self.baseline[self.cost_metric]], [self.baseline[metric]], "*", ms=14, color="black", label="unsteered"
            )
        ax.axvline(self.budget, color="red", ls="--", lw=1, label=f"budget {self.budget:g}×")
        if direction in self.goal:
            ax.axhline(self.goal[direction], color="green", ls=":", lw=1.2, label=f"goal {self.goal[direction]:g}")
        from matplotlib.ticker import FixedLocator, NullFormatter, StrMethodFormatter

        ax.set_xscale("log")
        ax.set_xlim(right=xmax * 1.08)
        ticks = (0.8, 0.9, 1, 1.15, 1.3, 1.5, 2, 3, 5, 8, 15, 30)
        ax.xaxis.set_major_locator(FixedLocator([t for t in ticks if t <= xmax * 1.08]))
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"{self.cost_metric} (log scale; ▶ = beyond {xmax:.3g}×)")
        ax.set_ylabel(metric)
        if metric.endswith("share"):
            ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="best")
        ax.set_title(f"direction {direction:+d}: {metric} (circled: budgeted choice)", fontsize=9)


# --------------------------------------------------------------------------- running
@dataclass
class _Call:
    """One evaluation call: a contender's vector at one layer set and one prompt, all coefficients."""

    contender: Contender
    layers: tuple[int, ...]
    prompt: Prompt | None
    settings: list[tuple[int, float]]  # (direction, signed coefficient)

    @property
    def coefficients(self) -> list[float]:
        """What the call runs: its settings' coefficients, plus 0 for an unprompted vector (the
        unsteered model, which the sentiment evaluation needs as its cost reference anyway)."""
        zero = {0.0} if self.prompt is None and self.contender.vector is not None else set()
        return sorted({c for _, c in self.settings} | zero, key=lambda c: (abs(c), c))

    def describe(self) -> str:
        where = f" layers {_layer_label(list(self.layers))}" if self.layers else ""
        return f"{self.contender.name}{where}{'' if self.prompt is None else ' + ' + self.prompt.label}"


def _calls(contenders: Sequence[Contender], directions: Sequence[int]) -> list[_Call]:
    """The evaluation calls of every contender: one per (layer set, prompt), both directions of an
    unprompted vector in the same call (with coefficient 0, the unsteered model)."""
    calls: list[_Call] = []
    for con in contenders:
        dirs = con.directions(directions)
        if con.vector is None:
            calls += [_Call(con, (), p, [(d, 0.0)]) for d in dirs for p in con.prompts[d]]
            continue
        sets = con.layer_sets or (tuple(con.vector.layers),)
        for i, layers in enumerate(sets):
            if con.prompts:
                calls += [
                    _Call(con, layers, p, [(d, d * c) for c in con.coefficients]) for d in dirs for p in con.prompts[d]
                ]
            else:  # the unsteered point once per contender (it is the same at every layer set)
                zero = [(d, 0.0) for d in dirs] if i == 0 else []
                calls.append(_Call(con, layers, None, zero + [(d, d * c) for d in dirs for c in con.coefficients]))
    return calls


@dataclass
class _Halves:
    """The data split and what the frontier measures on it."""

    select: list[Any]
    held: list[Any]
    objectives: dict[int, _Objective]
    cost_texts: Sequence[str] | None
    options: dict[str, Any]

    @property
    def weights(self) -> tuple[float, float]:
        n = len(self.select) + len(self.held)
        return len(self.select) / n, len(self.held) / n


Measured = tuple[list[dict[str, float]], list[dict[str, float]]]


def _measure(
    lm: LM,
    vector: SteeringVector | None,
    coefs: list[float],
    prompt: Prompt | None,
    options: Mapping[str, Any],
    halves: _Halves,
) -> Measured:
    """Every metric (and the cost) per coefficient on the selection and held-out halves."""
    extra = {"prompt": prompt} if prompt is not None else {}
    objective = next(iter(halves.objectives.values()))
    out = []
    for part in (halves.select, halves.held):
        metrics = objective.evaluation(lm, vector, part, coefs, progress=False, **options, **extra)
        if objective.cost is None:
            metrics[objective.cost_metric] = list(objective.own_costs(metrics, coefs))
        else:
            metrics[objective.cost_metric] = objective.cost(
                lm, vector, halves.cost_texts or [], coefs, progress=False, **extra
            )[objective.cost_metric]
        out.append([{name: values[j] for name, values in metrics.items()} for j in range(len(coefs))])
    return out[0], out[1]


def _run(lm: LM, call: _Call, halves: _Halves) -> Measured:
    con = call.contender
    vector = None if con.vector is None else con.vector.select(call.layers)
    return _measure(lm, vector, call.coefficients, call.prompt, {**halves.options, **con.options}, halves)


def _points(call: _Call, measured: Measured, halves: _Halves) -> list[FrontierPoint]:
    coefs = call.coefficients
    ws, wh = halves.weights
    points = []
    for direction, c in call.settings:
        objective = halves.objectives[direction]
        sel, held = measured[0][coefs.index(c)], measured[1][coefs.index(c)]
        pooled = {name: ws * sel[name] + wh * held[name] for name in sel}
        points.append(
            FrontierPoint(
                method=call.contender.name,
                direction=direction,
                layers=list(call.layers) if c else [],
                coefficient=c,
                prompt="" if call.prompt is None else call.prompt.label,
                effect=pooled[objective.effect],
                cost=pooled[objective.cost_metric],
                selection=sel,
                held_out=held,
            )
        )
    return points


def _choose(
    points: Sequence[FrontierPoint],
    effect: str,
    cost: str,
    budget: float,
    loops: Callable[[Mapping[str, float]], bool] = lambda metrics: False,
) -> FrontierPoint | None:
    """The largest selection-half effect with selection-half cost within budget and no loops on the
    selection half (ties: the smaller ``|coefficient|``, then the earlier setting)."""
    fits = [
        (p.selection[effect], -abs(p.coefficient), -i, p)
        for i, p in enumerate(points)
        if p.selection[cost] <= budget and not math.isnan(p.selection[effect]) and not loops(p.selection)
    ]
    return max(fits, key=lambda t: t[:3])[3] if fits else None


def _mark_and_choose(report: FrontierReport, contenders: Sequence[Contender], directions: Sequence[int]) -> None:
    zero = next((p for p in report.points if p.coefficient == 0.0 and not p.prompt), None)
    reference = report.baseline if zero is None else zero.selection  # the guard's reference on the selection half
    for con in contenders:
        for d in con.directions(directions):
            pts = [p for p in report.points if p.method == con.name and p.direction == d]
            for p, flag in zip(pts, pareto_front([(p.cost, p.effect) for p in pts])):
                p.on_front = flag
            chosen = _choose(
                pts,
                report.effect_metrics[d],
                report.cost_metric,
                report.budget,
                lambda metrics: report.loops(metrics, reference),
            )
            goal = report.goal.get(d, math.inf)
            reached = chosen is not None and chosen.held_out[report.effect_metrics[d]] >= goal
            report.best.append(BestSetting(con.name, d, chosen, reached))


def _baseline(lm: LM, report: FrontierReport, halves: _Halves) -> dict[str, float]:
    """The unsteered, unprompted model's pooled metrics: from a coefficient-0 point when a vector
    contender has one, else measured."""
    ws, wh = halves.weights
    zero = next((p for p in report.points if p.coefficient == 0.0 and not p.prompt), None)
    if zero is not None:
        sel, held = zero.selection, zero.held_out
    else:
        measured = _measure(lm, None, [0.0], None, halves.options, halves)
        sel, held = measured[0][0], measured[1][0]
    return {name: ws * sel[name] + wh * held[name] for name in sel}


def _checked(evaluation: Evaluation, contenders: Sequence[Contender], directions: Sequence[int]) -> None:
    if not contenders:
        raise SteeringSpecError("no contenders: give at least one Contender (a vector, prompts or both)")
    names = [c.name for c in contenders]
    if len(set(names)) != len(names):
        raise SteeringSpecError(f"contender names must differ: {names}")
    if any(c.prompts for c in contenders) and not accepts(evaluation, "prompt"):
        raise SteeringSpecError(f"the {evaluation.name} evaluation takes no prompt= option: it cannot rank prompting")
    if not directions or any(d not in evaluation.effect for d in directions):
        raise SteeringSpecError(f"directions must be among {sorted(evaluation.effect)} for {evaluation.name}")


def frontier(
    lm: LM,
    contenders: Sequence[Contender],
    data: Sequence[Any] | None = None,
    *,
    kind: str | Evaluation = "sentiment",
    budget: float = 1.15,
    goal: Mapping[int, float] | None = None,
    directions: Sequence[int] = (1, -1),
    cost_texts: Sequence[str] | None = None,
    cost_evaluation: str | Evaluation = "cost",
    guard: Mapping[str, float] | None = None,
    seed: int = 0,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> FrontierReport:
    """Evaluate every contender's settings, mark each one's Pareto front and choose its best
    setting within ``budget`` (on the selection half; reported on the held-out half).

    Args:
        lm: the model.
        contenders: the methods (:class:`Contender`: vectors, prompting, both).
        data: what the evaluation reads (default: the evaluation's default data).
        kind: the evaluation (``"sentiment"`` by default; ``"behavior"`` with ``cost_texts``).
        budget: the largest cost ratio allowed (e.g. continuation perplexity ≤ 1.15×).
        goal: ``{direction: effect}`` drawn as a target (default: 0.90 up, 0.80 down).
        directions: which ways to push (``+1``, ``-1``).
        cost_texts: neutral texts for an evaluation without its own cost (as in autotune).
        cost_evaluation: what measures the cost on ``cost_texts``.
        guard: the degeneracy guard, ``{metric: allowance}``: a setting whose metric is more than
            the allowance above the unsteered model's is not chosen and not "within budget"
            (default :data:`DEFAULT_GUARD`: repeated 3-grams of the continuations, where the
            evaluation reports them).
        seed: the shuffle of the selection / held-out split.
        progress: progress bar over the evaluation calls.
        log: called with one line per finished call (what ran, how long it took).
        **options: passed to every evaluation call (``max_new_tokens``, ``batch_size``, ...).

    Raises:
        SteeringSpecError: no or duplicate contenders, prompts for an evaluation without
            ``prompt=``, or a direction the evaluation has no effect for.
        DatasetError: fewer than 2 items, or no cost for the evaluation.
    """
    evaluation = get_evaluation(kind)
    _checked(evaluation, contenders, directions)
    items = list(data) if data is not None else (evaluation.default_data() if evaluation.default_data else [])
    if not items:
        raise DatasetError(f"no data for the {evaluation.name} frontier ({evaluation.data})")
    select, held = split_halves(items, seed)
    objectives = {d: _Objective.of(evaluation, d, cost_texts, cost_evaluation) for d in directions}
    halves = _Halves(select, held, objectives, cost_texts, dict(options))
    first = objectives[directions[0]]
    report = FrontierReport(
        title=f"{evaluation.name} frontier on {lm.model_id}: effect against {first.cost_metric}",
        evaluation=evaluation.name,
        effect_metrics={d: o.effect for d, o in objectives.items()},
        cost_metric=first.cost_metric,
        budget=budget,
        goal=dict(DEFAULT_GOAL if goal is None else goal),
        n_select=len(select),
        n_report=len(held),
        guard=dict(DEFAULT_GUARD if guard is None else guard),
        complete=False,
        settings={
            "seed": seed,
            "directions": list(directions),
            "model_id": lm.model_id,
            "contenders": [_describe(c) for c in contenders],
            **{k: v for k, v in options.items() if isinstance(v, (int, float, str))},
        },
    )
    calls = _calls(contenders, directions)
    for call in track(calls, f"{evaluation.name} frontier: {len(calls)} calls", enabled=progress):
        t0 = time.perf_counter()
        report.points += _points(call, _run(lm, call, halves), halves)
        if log is not None:
            log(f"{call.describe()}: {len(call.coefficients)} settings, {time.perf_counter() - t0:.0f} s")
    report.baseline = _baseline(lm, report, halves)
    _mark_and_choose(report, contenders, directions)
    report.complete = True
    return report


def _describe(con: Contender) -> dict[str, Any]:
    vec = con.vector
    return {
        "name": con.name,
        "vector": None if vec is None else {"method": vec.method, "layers": vec.layers, "data_hash": vec.data_hash},
        "coefficients": list(con.coefficients),
        "layer_sets": None if con.layer_sets is None else [list(s) for s in con.layer_sets],
        "prompts": {f"{d:+d}": [p.describe() for p in ps] for d, ps in con.prompts.items()},
        "options": {k: v for k, v in con.options.items() if isinstance(v, (int, float, str))},
    }
