"""One protocol for every evaluation, so sweeps and auto-tuning work with any of them.

An evaluation is a function ``run(lm, vector, data, coefficients=..., **options)`` returning a
report with ``coefficients`` and ``metrics() -> {metric: [value per coefficient]}``
(:class:`MetricReport`). Described by an :class:`Evaluation` and :func:`register`-ed under a
name, it works with :func:`~steerlab.evaluate.sweep.sweep`,
:func:`~steerlab.evaluate.sweep.autotune` and ``steerlab sweep NAME`` — none of them knows any
report's fields. The built-ins are ``"sentiment"``, ``"behavior"`` and ``"cost"``: each module
declares its :class:`Evaluation` and :mod:`steerlab.evaluate` registers them where the package is
assembled, so this registry imports none of them.

Example — a new evaluation (the mean length of steered continuations) in a few lines:

    >>> from dataclasses import dataclass, field
    >>> from steerlab import Steering, generate
    >>> from steerlab.evaluate import Report
    >>> from steerlab.evaluate.sweep import autotune, sweep
    >>> @dataclass
    ... class LengthReport(Report):
    ...     coefficients: list[float] = field(default_factory=list)
    ...     mean_chars: list[float] = field(default_factory=list)
    ...     def rows(self):
    ...         return [{"coefficient": c, "mean_chars": m} for c, m in zip(self.coefficients, self.mean_chars)]
    ...     def metrics(self):
    ...         return {"mean_chars": self.mean_chars}
    >>> def length_eval(lm, vector, prompts, coefficients=(0.0, 1.0), *, progress=None):
    ...     outs = [generate(lm, prompts, steering=Steering(vector, c), max_new_tokens=16) for c in coefficients]
    ...     return LengthReport(coefficients=list(coefficients), mean_chars=[sum(map(len, o)) / len(o) for o in outs])
    >>> length = register(Evaluation("length", length_eval, metrics=("mean_chars",), effect={1: "mean_chars"}))
    >>> sweep(lm, vec, "length", ["The cat"], coefficients=[0, 4], layer_sets=[[2], [3]])  # doctest: +SKIP
    >>> autotune(lm, vec, "length", prompts, coefficients=[1, 4], cost_texts=texts)  # doctest: +SKIP

Prompting is an *option* of an evaluation, not a special report: an evaluation that takes
``prompt=`` (sentiment, behavior, cost) runs every coefficient on the prompted text, and with
``vector=None`` and coefficient 0 it is the prompt alone. When the report measures its cost against
its own reference (the unsteered, unprompted model) it returns the ratio as ``"<cost>_ratio"``
and auto-tuning and the frontier use it as it is; otherwise they divide by the value at
coefficient 0. :func:`~steerlab.evaluate.frontier.frontier` ranks vectors from any method and
prompting on one effect–cost plane through this protocol alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..errors import SteeringSpecError

if TYPE_CHECKING:
    from ..core.vector import SteeringVector
    from ..models.load import LM

__all__ = ["EVALUATIONS", "Evaluation", "MetricReport", "accepts", "get_evaluation", "metrics_at", "register"]


@runtime_checkable
class MetricReport(Protocol):
    """A report with one value per coefficient for each of its metrics.

    ``metrics()[name][i]`` is the value of ``name`` at ``coefficients[i]``.
    """

    @property
    def coefficients(self) -> list[float]:
        """The coefficients, in the report's order."""
        ...

    def metrics(self) -> dict[str, list[float]]:
        """``{metric: [value per coefficient]}``."""
        ...


@dataclass(frozen=True)
class Evaluation:
    """An evaluation as sweeps, auto-tuning and the CLI see it.

    Attributes:
        name: what ``sweep(..., kind=name)`` and ``steerlab sweep NAME`` call it.
        run: ``run(lm, vector, data, coefficients=[...], progress=..., **options)`` returning a
            :class:`MetricReport`; coefficient ``0`` is the unsteered model.
        metrics: the names ``metrics()`` returns; the first is what a sweep shows by default.
        data: what the data is, for messages (e.g. ``"sentence openings"``).
        load: reads the data from a file (the CLI's ``--data``), or ``None``.
        default_data: data to use when none is given, or ``None`` (then data is required).
        effect: ``{direction: metric}`` that :func:`~steerlab.evaluate.sweep.autotune` maximises for
            ``direction=+1`` / ``-1``; empty when the evaluation measures no effect to tune.
        cost: a metric whose ratio to its unsteered value auto-tune may use as the cost
            (``"<cost>_ratio"``: the report's own when it has one, else relative to coefficient 0)
            when it is given no neutral texts; ``None`` if there is none.
    """

    name: str
    run: Callable[..., MetricReport]
    metrics: tuple[str, ...]
    data: str = "items"
    load: Callable[[Path], list[Any]] | None = None
    default_data: Callable[[], list[Any]] | None = None
    effect: Mapping[int, str] = field(default_factory=dict)
    cost: str | None = None

    def __post_init__(self) -> None:
        named = set(self.metrics)
        unknown = [m for m in (*self.effect.values(), self.cost) if m is not None and m not in named]
        if not self.metrics or unknown:
            raise SteeringSpecError(
                f"evaluation {self.name!r}: effect and cost must be among its metrics {list(self.metrics)}, "
                f"not {unknown}"
            )

    def __call__(
        self,
        lm: LM,
        vector: SteeringVector | None,
        data: Sequence[Any],
        coefficients: Sequence[float],
        **options: Any,
    ) -> dict[str, list[float]]:
        """Run it at ``coefficients``; ``{metric: [value per coefficient]}`` in the order given."""
        report = self.run(lm, vector, list(data), coefficients=list(coefficients), **options)
        return metrics_at(report, coefficients)


EVALUATIONS: dict[str, Evaluation] = {}
"""Registered evaluations by name (the built-ins are registered when :mod:`steerlab.evaluate` is
imported, which importing any of its modules does first)."""


def register(evaluation: Evaluation, replace: bool = False) -> Evaluation:
    """Add ``evaluation`` to :data:`EVALUATIONS` (as :func:`steerlab.extraction.methods.register` does for
    extraction methods).

    Raises:
        SteeringSpecError: an evaluation of that name is registered (a built-in included) and
            ``replace`` is False.
    """
    if evaluation.name in EVALUATIONS and not replace:
        raise SteeringSpecError(f"an evaluation called {evaluation.name!r} is registered: pass replace=True to swap it")
    EVALUATIONS[evaluation.name] = evaluation
    return evaluation


def register_builtin(evaluation: Evaluation) -> Evaluation:
    """How :mod:`steerlab.evaluate` registers the built-ins: never over an evaluation of that name
    that is registered already (the one registered stays, and is returned)."""
    return EVALUATIONS.setdefault(evaluation.name, evaluation)


def get_evaluation(kind: str | Evaluation) -> Evaluation:
    """The evaluation registered as ``kind`` (an :class:`Evaluation` is returned as it is).

    Raises:
        SteeringSpecError: no evaluation of that name.

    Example:
        >>> get_evaluation("cost").metrics
        ('ppl_ratio', 'kl', 'perplexity')
    """
    if isinstance(kind, Evaluation):
        return kind
    try:
        return EVALUATIONS[kind]
    except KeyError:
        raise SteeringSpecError(f"unknown evaluation {kind!r}: use one of {', '.join(EVALUATIONS)}") from None


def metrics_at(report: MetricReport, coefficients: Sequence[float]) -> dict[str, list[float]]:
    """``report.metrics()`` with one column per requested coefficient, in the order requested
    (reports may drop repeated coefficients or keep their own order).

    Raises:
        SteeringSpecError: a coefficient the report does not have.
    """
    column = {c: i for i, c in enumerate(report.coefficients)}
    missing = [c for c in coefficients if float(c) not in column]
    if missing:
        raise SteeringSpecError(f"the report has no coefficients {missing} (it has {report.coefficients})")
    picks = [column[float(c)] for c in coefficients]
    return {name: [values[i] for i in picks] for name, values in report.metrics().items()}


def accepts(evaluation: Evaluation, option: str) -> bool:
    """Whether the evaluation's ``run`` takes the keyword ``option`` (e.g. ``"max_new_tokens"``)."""
    params = inspect.signature(evaluation.run).parameters
    return option in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
