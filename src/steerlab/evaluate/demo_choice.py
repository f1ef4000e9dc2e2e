"""The setting ``steerlab demo`` shows, chosen from a frontier report: per direction, among the
budgeted choices of the steering contenders (a vector, no prompt, from a read-out method), the one
with the highest held-out effect.

The setting itself (:class:`~steerlab.data.demo_setting.DemoSetting`, its packaged JSON) is data
(:mod:`steerlab.data.demo_setting`); choosing it reads a
:class:`~steerlab.evaluate.frontier.FrontierReport`, so it lives here. ``scripts/demo_setting.py
FRONTIER_JSON`` writes the choice into the package.

Example:
    >>> import json
    >>> report = json.loads(open("docs/results/frontier_stories260K.json").read())  # doctest: +SKIP
    >>> from_frontier(report).directions[1].label  # doctest: +SKIP
    'mean_diff L1-3 c=+4'
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from ..core.operators import OPERATORS
from ..data.demo_setting import KEYS, DemoSetting, DemoSettingError, DirectionSetting, held_out_value
from ..errors import DatasetError
from ..extraction.methods import get_method
from .frontier import FrontierReport


def from_frontier(report: Mapping[str, Any], source: str | None = None) -> DemoSetting:
    """The demo setting a frontier report finds: per direction, the steering contender (a vector,
    no prompt, from a read-out method: the demo does not train) whose budgeted choice has the
    highest held-out effect.

    Args:
        report: a :meth:`FrontierReport.to_dict <steerlab.evaluate.frontier.FrontierReport.to_dict>`.
        source: the ``source`` text (default: the report's title, budget and effect metrics).

    Raises:
        DemoSettingError: a direction where no steering contender fitted the budget.
    """
    rep = FrontierReport.from_dict(report)
    directions: dict[int, DirectionSetting] = {}
    for d, key in KEYS.items():
        metric = rep.effect_metrics.get(d, "")
        scored = []
        for b in rep.best:
            p = b.point
            if b.direction != d or p is None or not p.layers or p.prompt or p.coefficient * d <= 0:
                continue  # nothing within budget, prompting (alone or with a vector), or no vector
            if _trained(p.method):
                continue  # the demo extracts its vectors in seconds: no training run
            effect = p.held_out.get(metric, math.nan)
            if not math.isnan(effect):
                scored.append((effect, p))
        if not scored:
            raise DemoSettingError(
                f"the frontier report has no steering setting within its budget for the {key} direction ({metric})"
            )
        effect, p = max(scored, key=lambda t: t[0])  # the first contender wins a tie
        operator, method = split_operator(p.method)
        directions[d] = DirectionSetting(
            method,
            tuple(p.layers),
            p.coefficient,
            effect,
            held_out_value(p.held_out.get(rep.cost_metric)),
            operator,
        )
    if source is None:
        metrics = ", ".join(f"{KEYS[d]}: {m}" for d, m in sorted(rep.effect_metrics.items(), reverse=True))
        source = (
            f"frontier report '{rep.title}': per direction the steering method with the highest held-out "
            f"effect ({metrics}) within the budget {rep.cost_metric} <= {rep.budget:g}"
        )
    return DemoSetting(directions, source)


def split_operator(name: str) -> tuple[str, str]:
    """``(operator, method)`` of a contender name: ``"push(mean_diff)"`` is the push operator on a
    mean_diff vector (as scripts/results.py names them); a plain name is ``"add"``.

    Example:
        >>> split_operator("push(mean_diff)"), split_operator("pca_diff")
        (('push', 'mean_diff'), ('add', 'pca_diff'))
    """
    match = re.fullmatch(r"(\w+)\((.+)\)", name)
    if match and match.group(1) in OPERATORS:
        return match.group(1), match.group(2)
    return "add", name


def _trained(name: str) -> bool:
    """Whether a contender named ``name`` (``method`` or ``method:rule``) is a trained method."""
    try:
        return get_method(split_operator(name)[1].partition(":")[0]).trained
    except DatasetError:
        return False
