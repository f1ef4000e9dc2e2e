"""Conditional steering (CAST: Lee et al., "Programming Refusal with Conditional Activation
Steering", ICLR 2025): a steering that applies to a row only when the row's *prompt* matches a
condition.

A :class:`Condition` holds a direction at one layer, a threshold and a comparator. When a
sequence's prompt runs, the engine averages each row's prompt activations at that layer (the
block's output) and scores them by cosine similarity with the direction; rows whose score passes
the threshold are steered, the others are not — decided per row, so rows of one batch decide
independently, and kept for the generated tokens that follow (the KV cache never changes it). A
conditional steering acts on generated tokens (``positions="generated"``): the prompt itself is
read, not steered.

:func:`find_condition` picks the layer, direction and threshold from labelled prompts.

Example:
    >>> cond = find_condition(lm, harmful_prompts, harmless_prompts)  # doctest: +SKIP
    >>> refuse = Steering(refusal_vec, 4.0, condition=cond.condition)  # doctest: +SKIP
    >>> steerlab.generate(lm, prompts, steering=refuse)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DatasetError, LayerRangeError, SteeringSpecError
from .vector import SteeringVector

COMPARATORS = (">", "<")


@dataclass(frozen=True, eq=False)
class Condition:
    """A per-row test on the prompt: ``cos(mean prompt activation at layer, direction) > threshold``.

    Args:
        vector: holds the condition direction at ``layer`` (a :class:`SteeringVector`).
        layer: the block whose output is read (default: the vector's only layer).
        threshold: the cosine similarity to compare with.
        comparator: ``">"`` (steer rows scoring above) or ``"<"`` (below).

    Example:
        >>> v = SteeringVector({2: torch.tensor([1.0, 0.0])}, "m", 2, 4)
        >>> Condition(v, threshold=0.5).holds(torch.tensor([0.9, 0.1])).tolist()
        [True, False]
    """

    vector: SteeringVector
    layer: int | None = None
    threshold: float = 0.0
    comparator: str = ">"
    _layer: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.vector, SteeringVector):
            raise SteeringSpecError(f"a Condition needs a SteeringVector, got {type(self.vector).__name__}")
        if self.vector.tokenwise:
            raise SteeringSpecError("a condition direction cannot be token-wise; use vector.token_mean()")
        layer = self.layer
        if layer is None:
            if len(self.vector.layers) != 1:
                raise SteeringSpecError(
                    f"the condition vector has layers {self.vector.layers}: pass layer= to choose one"
                )
            layer = self.vector.layers[0]
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise SteeringSpecError(f"condition layer={_short(layer)} is not a layer index (an integer)")
        if layer not in self.vector.directions:
            raise LayerRangeError(f"condition layer {layer} is not in the vector (it has {self.vector.layers})")
        if not isinstance(self.comparator, str) or self.comparator not in COMPARATORS:
            raise SteeringSpecError(f"comparator={_short(self.comparator)}: use '>' or '<'")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, numbers.Real):
            raise SteeringSpecError(f"threshold={_short(self.threshold)} is not a number")
        threshold = float(self.threshold)
        if not -1.0 <= threshold <= 1.0:  # NaN fails too
            raise SteeringSpecError(f"threshold={threshold}: a cosine similarity lies in [-1, 1]")
        object.__setattr__(self, "threshold", threshold)
        object.__setattr__(self, "_layer", int(layer))

    @property
    def at(self) -> int:
        """The layer whose output is read."""
        return self._layer

    def direction(self) -> torch.Tensor:
        """The unit condition direction (float32)."""
        v = self.vector.directions[self._layer].float()
        return v / v.norm().clamp_min(1e-12)

    def holds(self, scores: torch.Tensor) -> torch.Tensor:
        """Per-row decisions for cosine ``scores``."""
        return scores > self.threshold if self.comparator == ">" else scores < self.threshold

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Save as a vector folder whose metadata holds layer, threshold and comparator."""
        meta = {
            **self.vector.meta,
            "condition": {"layer": self._layer, "threshold": self.threshold, "comparator": self.comparator},
        }
        return replace(self.vector.select([self._layer]), meta=meta).save(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], threshold: float | None = None) -> Condition:
        """Read a condition saved by :meth:`save` (``threshold`` overrides the saved one).

        Raises:
            VectorFileError: the folder is not a readable vector.
            SteeringSpecError: the vector carries no condition settings and none are given.
        """
        vec = SteeringVector.load(directory)
        if saved_settings(vec) is None and threshold is None:
            raise SteeringSpecError(f"{directory} is a plain vector, not a saved condition: give a threshold")
        return cls.from_saved(vec, threshold)

    @classmethod
    def from_saved(cls, vector: SteeringVector, threshold: float | None = None) -> Condition:
        """The condition a vector's saved settings (``meta["condition"]``, written by :meth:`save`)
        describe, ``threshold`` overriding the saved one; a vector without settings gives a
        condition at its only layer with ``threshold`` (default 0).

        Every setting is checked as written, never coerced: ``layer`` an integer of the vector,
        ``threshold`` a finite number in ``[-1, 1]``, ``comparator`` ``">"`` or ``"<"``, and no
        other keys.

        Raises:
            SteeringSpecError / LayerRangeError: malformed settings, naming the field.

        Example:
            >>> v = SteeringVector({2: torch.tensor([1.0, 0.0])}, "m", 2, 4, meta={"condition": {"layer": [2]}})
            >>> Condition.from_saved(v)
            Traceback (most recent call last):
            ...
            steerlab.errors.SteeringSpecError: condition layer=[2] is not a layer index (an integer)
        """
        saved = saved_settings(vector) or {}
        return cls(
            vector,
            layer=saved.get("layer"),
            threshold=saved.get("threshold", 0.0) if threshold is None else threshold,
            comparator=saved.get("comparator", ">"),
        )


SETTING_KEYS = ("layer", "threshold", "comparator")
"""The keys of a saved condition's settings (``meta["condition"]``)."""


def saved_settings(vector: SteeringVector) -> dict[str, Any] | None:
    """A vector's saved condition settings (``meta["condition"]``), ``None`` for a plain vector.

    Raises:
        SteeringSpecError: ``meta["condition"]`` is there but not an object of the known keys.
    """
    meta = vector.meta if isinstance(vector.meta, dict) else {}
    if "condition" not in meta or meta["condition"] is None:
        return None
    saved = meta["condition"]
    if not isinstance(saved, dict):
        raise SteeringSpecError(
            f"meta.condition must be an object of {', '.join(SETTING_KEYS)}, not {_short(saved)}; re-save the condition"
        )
    unknown = sorted(str(k) for k in saved if k not in SETTING_KEYS)
    if unknown:
        raise SteeringSpecError(
            f"meta.condition has unknown keys {unknown} (it holds {', '.join(SETTING_KEYS)}); re-save the condition"
        )
    return saved


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def prompt_scores(condition: Condition, h: torch.Tensor, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine scores of each row's mean prompt activation, and which rows had prompt tokens.

    Args:
        condition: the condition.
        h: ``[batch, length, d]`` block output at ``condition.at``.
        prompt: ``[batch, length]`` bool, the row's prompt tokens in this call.
    """
    w = prompt.to(h.dtype).unsqueeze(-1)
    counts = w.sum(1)
    mean = (h * w).sum(1) / counts.clamp_min(1.0)
    u = condition.direction().to(device=h.device, dtype=h.dtype)
    scores = torch.nn.functional.cosine_similarity(mean, u.expand_as(mean), dim=-1)
    return scores, counts.squeeze(-1) > 0


# ------------------------------------------------------------------------------------------ finding
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

    def to_dict(self) -> dict[str, Any]:
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
    lm: Any,
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
    from ..extraction.capture import capture, check_layers
    from ..extraction.run import check_found

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
