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


def from_frontier(report: Mapping[str, Any], source: str | None = None, budget: float | None = None) -> DemoSetting:
    """The demo setting a frontier report finds: per direction, the steering contender (a vector,
    no prompt, from a read-out method: the demo does not train) whose budgeted choice has the
    highest held-out effect; with ``budget``, the vector setting with the highest effect over all
    items among every setting whose cost is within ``budget`` and that does not loop (the report's
    degeneracy guard) — a demo may spend more than the frontier's budget to read clearly.

    Args:
        report: a :meth:`FrontierReport.to_dict <steerlab.evaluate.frontier.FrontierReport.to_dict>`.
        source: the ``source`` text (default: the report's title, budget and effect metrics).
        budget: choose among all settings within this cost (default: the report's budgeted choices).

    Raises:
        DemoSettingError: a direction where no steering contender fitted the budget.
    """
    rep = FrontierReport.from_dict(report)
    directions: dict[int, DirectionSetting] = {}
    for d, key in KEYS.items():
        metric = rep.effect_metrics.get(d, "")
        scored = []
        if budget is None:
            candidates = [(b.point, b.point.held_out.get(metric, math.nan)) for b in rep.best if b.point is not None]
        else:
            candidates = [(p, p.effect) for p in rep.points if p.cost <= budget and not _loops(rep, p)]
        for p, effect in candidates:
            if p.direction != d or not p.layers or p.prompt or p.coefficient * d <= 0:
                continue  # prompting (alone or with a vector), or no vector
            if _trained(p.method):
                continue  # the demo extracts its vectors in seconds: no training run
            if not math.isnan(effect):
                scored.append((effect, -p.cost, p))
        if not scored:
            raise DemoSettingError(
                f"the frontier report has no steering setting within its budget for the {key} direction ({metric})"
            )
        effect, _, p = max(scored, key=lambda t: t[:2])  # ties: the cheaper, then the first
        operator, method = split_operator(p.method)
        cap, method = split_kl_cap(method)
        directions[d] = DirectionSetting(
            method,
            tuple(p.layers),
            p.coefficient,
            held_out_value(p.held_out.get(metric)),
            held_out_value(p.held_out.get(rep.cost_metric)),
            operator,
            cap,
        )
    if source is None:
        metrics = ", ".join(f"{KEYS[d]}: {m}" for d, m in sorted(rep.effect_metrics.items(), reverse=True))
        how = (
            f"the steering method with the highest held-out effect ({metrics}) within the budget "
            f"{rep.cost_metric} <= {rep.budget:g}"
            if budget is None
            else f"the steering setting with the highest effect over all items ({metrics}) within "
            f"{rep.cost_metric} <= {budget:g} that does not loop"
        )
        source = f"frontier report '{rep.title}': per direction {how}"
    return DemoSetting(directions, source)


def _loops(rep: FrontierReport, p: Any) -> bool:
    """``p`` breaks the report's degeneracy guard over all items."""
    return rep.loops({m: rep.pooled(p, m) for m in rep.guard})


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


def split_kl_cap(name: str) -> tuple[float | None, str]:
    """``(kl_cap, method)`` of a contender name: ``"kl0.3(mean_diff)"`` is mean_diff with a per-token
    KL cap of 0.3 nats (as scripts/results.py ``--kl-caps`` names them); a plain name has none.

    Example:
        >>> split_kl_cap("kl0.3(mean_diff)"), split_kl_cap("pca_diff")
        ((0.3, 'mean_diff'), (None, 'pca_diff'))
    """
    match = re.fullmatch(r"kl([0-9.eE+-]+)\((.+)\)", name)
    if match:
        try:
            return float(match.group(1)), match.group(2)
        except ValueError:
            pass
    return None, name


def _trained(name: str) -> bool:
    """Whether a contender named ``name`` (``method`` or ``method:rule``) is a trained method."""
    try:
        return get_method(split_kl_cap(split_operator(name)[1])[1].partition(":")[0]).trained
    except DatasetError:
        return False
