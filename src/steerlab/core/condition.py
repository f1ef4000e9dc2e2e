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

This module is the specification alone (no model runs here);
:func:`steerlab.extraction.condition.find_condition` picks the layer, direction and threshold from
labelled prompts.

Example:
    >>> from steerlab.extraction.condition import find_condition
    >>> cond = find_condition(lm, harmful_prompts, harmless_prompts)  # doctest: +SKIP
    >>> refuse = Steering(refusal_vec, 4.0, condition=cond.condition)  # doctest: +SKIP
    >>> steerlab.generate(lm, prompts, steering=refuse)  # doctest: +SKIP
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import LayerRangeError, SteeringSpecError
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


def _short(value: object) -> str:
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
