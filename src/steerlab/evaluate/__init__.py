"""Evaluation: does the vector move the behaviour, what does it cost, where does it break.

Every evaluation returns a :class:`~steerlab.evaluate.report.Report` subclass with
``to_json()``, ``to_markdown()``, ``plot(path)`` and ``write(out_dir)``, and follows one protocol
(:mod:`~steerlab.evaluate.protocol`): its report's ``metrics()`` gives ``{metric: [value per
coefficient]}``, so :mod:`~steerlab.evaluate.sweep` can sweep and auto-tune any of them.

* :mod:`~steerlab.evaluate.sentiment` — sentiment of continuations (``sentiment_shift``).
* :mod:`~steerlab.evaluate.behavior` — CAA A/B read-outs (``behavior_eval``, ``capability_eval``).
* :mod:`~steerlab.evaluate.cost` — off-target cost: perplexity and KL on neutral text.
* :mod:`~steerlab.evaluate.sweep` — layer × coefficient grids and auto-tuning.
* :mod:`~steerlab.evaluate.frontier` — effect against perplexity for every method, prompting
  included: Pareto fronts and the best setting within a budget (``frontier``).
* :mod:`~steerlab.evaluate.prompting` — a :class:`Prompt` (prefix or system turn): prompting as a
  method, the ``prompt=`` option of the sentiment and behaviour evaluations.
* helpers: :mod:`~steerlab.evaluate.scorers` (sentiment scorers), :mod:`~steerlab.evaluate.stats`
  (bootstrap intervals), :mod:`~steerlab.evaluate.likelihood` (continuation log-likelihoods),
  :mod:`~steerlab.evaluate.report` (the report base class).

Example:
    >>> from steerlab.evaluate import get_evaluation
    >>> get_evaluation("sentiment").effect[1]
    'positive_share'
"""

from __future__ import annotations

from . import behavior, cost, sentiment
from .frontier import Contender, FrontierReport, frontier
from .prompting import Prompt
from .protocol import Evaluation, MetricReport, get_evaluation, register, register_builtin
from .report import IncompleteReportError, Report

BUILTINS: tuple[Evaluation, ...] = (behavior.EVALUATION, cost.EVALUATION, sentiment.EVALUATION)
"""The evaluations steerlab ships, registered here, where the package is assembled: each module
declares its :class:`Evaluation`, and the registry (:mod:`~steerlab.evaluate.protocol`) imports none
of them."""
for _builtin in BUILTINS:
    register_builtin(_builtin)

__all__ = [
    "BUILTINS",
    "Contender",
    "Evaluation",
    "FrontierReport",
    "IncompleteReportError",
    "MetricReport",
    "Prompt",
    "Report",
    "frontier",
    "get_evaluation",
    "register",
]
