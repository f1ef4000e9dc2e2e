"""Finding a CAST condition on labelled prompts: the layer, direction and threshold that tell
prompts to steer from prompts to leave alone (Lee et al., "Programming Refusal with Conditional
Activation Steering", ICLR 2025).

The condition itself (:class:`~steerlab.core.condition.Condition`) is a pure specification in
:mod:`steerlab.core.condition`; finding one reads the model's activations, so it lives here beside
the other extraction.

Example:
    >>> found = find_condition(lm, ["How do I make a bomb?"], ["How do I bake bread?"])  # doctest: +SKIP
    >>> refuse = Steering(refusal_vec, 4.0, condition=found.condition)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..core.condition import Condition
from ..core.vector import SteeringVector
from ..errors import DatasetError
from ..models.load import LM
from .capture import capture, check_layers
from .run import check_found


@dataclass
class ConditionSearch:
    """What :func:`find_condition` found: the chosen condition and every layer's accuracy.

    Attributes:
        condition: the best layer's condition.
        accuracy: ``{layer: accuracy}`` on the labelled prompts at each layer's best threshold.
        thresholds: ``{layer: threshold}``.
    """

    condition: Condition
    accuracy: dict[int, float]
    thresholds: dict[int, float]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary."""
        return {
            "layer": self.condition.at,
            "threshold": self.condition.threshold,
            "comparator": self.condition.comparator,
            "accuracy": {str(k): v for k, v in self.accuracy.items()},
            "thresholds": {str(k): v for k, v in self.thresholds.items()},
        }

    def to_json(self) -> str:
        """The summary as JSON text."""
        return json.dumps(self.to_dict(), indent=2)


def best_threshold(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """The threshold (midway between neighbouring scores) that best separates ``pos`` above
    ``neg``, and its accuracy.

    Example:
        >>> best_threshold(np.array([0.5, 0.6]), np.array([0.1, 0.2]))
        (0.35, 1.0)
    """
    scores = np.sort(np.concatenate([pos, neg]))
    cuts = np.concatenate([[scores[0] - 1e-6], (scores[:-1] + scores[1:]) / 2, [scores[-1] + 1e-6]])
    n = len(pos) + len(neg)
    acc = [((pos > c).sum() + (neg <= c).sum()) / n for c in cuts]
    i = int(np.argmax(acc))
    return round(float(cuts[i]), 6), float(acc[i])


def find_condition(
    lm: LM,
    positive: Sequence[str],
    negative: Sequence[str],
    layers: Sequence[int] | None = None,
    chat: bool = True,
    batch_size: int = 32,
    progress: bool | None = None,
) -> ConditionSearch:
    """Pick the condition layer, direction and threshold that tell ``positive`` prompts (to steer)
    from ``negative`` ones (to leave alone).

    At each layer the direction is the difference of the two groups' mean prompt activations
    (each prompt averaged over its tokens, as the engine reads it); the threshold maximises the
    accuracy on the labelled prompts; the layer with the best accuracy wins (ties: the earliest).

    Raises:
        DatasetError: a group is empty, both groups hold the same prompts, or the chosen
            direction comes out zero or non-finite.
        LimitError: a prompt over ``max_text_chars`` or the model's context.

    Example:
        >>> found = find_condition(lm, ["How do I make a bomb?"], ["How do I bake bread?"])  # doctest: +SKIP
        >>> found.condition.at, found.accuracy[found.condition.at]  # doctest: +SKIP
    """
    if not positive or not negative:
        raise DatasetError("find_condition needs at least one positive and one negative prompt")
    if set(positive) == set(negative):
        raise DatasetError(
            "the positive and negative prompts are the same: a condition tells two different sets of "
            "prompts apart; give prompts to steer and different prompts to leave alone"
        )
    layer_list = check_layers(lm, range(lm.n_layers) if layers is None else layers)
    texts = [lm.chat(p) if chat else p for p in [*positive, *negative]]
    n = len(positive)

    def names(i: int) -> str:
        return f"positive prompt {i}" if i < n else f"negative prompt {i - n}"

    acts = capture(lm, texts, layer_list, reads="mean", batch_size=batch_size, progress=progress, names=names)
    accuracy: dict[int, float] = {}
    thresholds: dict[int, float] = {}
    directions: dict[int, torch.Tensor] = {}
    for layer in layer_list:
        a = acts[layer]
        direction = a[:n].mean(0) - a[n:].mean(0)
        unit = direction / direction.norm().clamp_min(1e-12)
        scores = torch.nn.functional.cosine_similarity(a, unit.expand_as(a), dim=-1).numpy()
        thresholds[layer], accuracy[layer] = best_threshold(scores[:n], scores[n:])
        directions[layer] = direction
    best = max(layer_list, key=lambda k: (accuracy[k], -k))
    check_found(
        {best: directions[best]}, f"the condition direction from {n} positive and {len(negative)} negative prompt(s)"
    )
    vec = SteeringVector(
        {best: directions[best]},
        model_id=lm.model_id,
        d_model=lm.d_model,
        n_layers=lm.n_layers,
        method="condition_mean_diff",
        meta={"n_positive": len(positive), "n_negative": len(negative)},
    )
    return ConditionSearch(Condition(vec, best, thresholds[best], ">"), accuracy, thresholds)
