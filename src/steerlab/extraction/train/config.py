"""Settings of a trained steering vector (:class:`TrainConfig`) and the error bad ones raise.

Example:
    >>> TrainConfig(lr=0.02, epochs=4).resolved("bipo").beta
    0.1
    >>> TrainConfig(lr=-1.0).resolved("bipo")
    Traceback (most recent call last):
    ...
    steerlab.extraction.train.config.TrainingError: lr=-1.0 must be a finite number > 0 (try 0.01)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from ...errors import SteeringError

TRAIN_POSITIONS = ("generated", "all")
"""Where the vector acts during training (and must act at inference): the completion tokens
(``"generated"``, the default) or every token (``"all"``, needed to :func:`steerlab.export.bake` it)."""

DEFAULT_BETA = {"bipo": 0.1, "reps": 1.0}
"""β by objective: BiPO's DPO temperature (Cao et al. use 0.1), RePS's reward scale (Wu et al.: 1)."""

DIRECTIONS = ("sample", "both", "positive", "negative")
DEFAULT_DIRECTIONS = {"bipo": "sample", "reps": "both"}
"""Directions scored per pair and step by objective: BiPO draws ``d ~ U{−1, 1}`` per pair (half the
forward work per step), RePS scores both its steering and its suppression pair. ``"positive"`` /
``"negative"`` score one side only: a vector trained for that side alone (``+c·v`` makes the chosen
completion win; ``−c·v`` the rejected one), with RePS's weighting of that side (β₊ or β₋)."""


class TrainingError(SteeringError):
    """A trained steering vector was given a setting it cannot train with (the message says which)."""


@dataclass(frozen=True)
class TrainConfig:
    """How a trained vector (``bipo``, ``reps``) is optimised.

    Attributes:
        lr: Adam learning rate of the vector (the model is frozen).
        epochs: most passes over the training pairs.
        batch_size: preference pairs per optimiser step.
        micro_batch_size: pairs per forward pass (a step accumulates ``batch_size / micro_batch_size``
            passes); bounds memory, never changes the result beyond float rounding.
        beta: the objective's β (``None``: 0.1 for ``bipo``, 1.0 for ``reps``).
        fluency_weight: weight of the KL(unsteered ‖ steered) term on neutral text (``0``: off).
        holdout: share of pairs held out for early stopping (``0``: train on all, no early stop).
        patience: stop after this many epochs without a better held-out loss.
        seed: seeds the split, the shuffling and the sampled coefficients.
        positions: ``"generated"`` (completion tokens) or ``"all"`` (see :data:`TRAIN_POSITIONS`).
        factors: coefficients the vector is trained at, one sampled per pair and step (RePS
            samples several; ``(1.0,)`` trains ``Steering(vec, ±1)``).
        directions: ``"sample"`` (one direction ``±`` drawn per pair and step), ``"both"``, or one
            side only, ``"positive"`` / ``"negative"`` (a vector per direction: steer with ``+c``
            / ``−c``) (``None``: ``"sample"`` for ``bipo`` as in the paper, ``"both"`` for ``reps``).
    """

    lr: float = 0.01
    epochs: int = 10
    batch_size: int = 16
    micro_batch_size: int = 8
    beta: float | None = None
    fluency_weight: float = 0.0
    holdout: float = 0.2
    patience: int = 2
    seed: int = 0
    positions: str = "generated"
    factors: tuple[float, ...] = (1.0,)
    directions: str | None = None

    def resolved(self, objective: str) -> TrainConfig:
        """This config with ``beta`` filled in for ``objective``, checked.

        Raises:
            TrainingError: a setting out of range (the message names it and a usual value).
        """
        beta = DEFAULT_BETA.get(objective, 1.0) if self.beta is None else self.beta
        directions = DEFAULT_DIRECTIONS.get(objective, "both") if self.directions is None else self.directions
        factors = _as_factors(self.factors)
        out = replace(self, beta=beta, factors=factors, directions=directions)
        out.check()
        return out

    def check(self) -> None:
        """Raise :class:`TrainingError` for a setting out of range."""
        _positive("lr", self.lr, "0.01")
        _positive("beta", self.beta if self.beta is not None else 1.0, "0.1")
        for name, value, low in (
            ("epochs", self.epochs, 1),
            ("batch_size", self.batch_size, 1),
            ("micro_batch_size", self.micro_batch_size, 1),
            ("patience", self.patience, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise TrainingError(f"{name}={value!r} must be an integer >= {low}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise TrainingError(f"seed={self.seed!r} must be an integer")
        if not _finite(self.fluency_weight) or self.fluency_weight < 0:
            raise TrainingError(f"fluency_weight={self.fluency_weight!r} must be a finite number >= 0 (0 turns it off)")
        if not _finite(self.holdout) or not 0 <= self.holdout < 1:
            raise TrainingError(f"holdout={self.holdout!r} must be in [0, 1) (the share of pairs held out)")
        if self.directions is not None and self.directions not in DIRECTIONS:
            raise TrainingError(f"directions={self.directions!r}: use one of {', '.join(DIRECTIONS)}")
        if self.positions not in TRAIN_POSITIONS:
            raise TrainingError(f"positions={self.positions!r}: trained vectors use 'generated' or 'all'")

    def settings(self) -> dict[str, Any]:
        """JSON-ready settings (recorded in the vector's metadata)."""
        out = asdict(self)
        out["factors"] = list(self.factors)
        return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(name: str, value: Any, usual: str) -> None:
    if not _finite(value) or value <= 0:
        raise TrainingError(f"{name}={value!r} must be a finite number > 0 (try {usual})")


def _as_factors(factors: Any) -> tuple[float, ...]:
    items = (factors,) if _finite(factors) else tuple(factors) if isinstance(factors, Sequence) else ()
    if not items or not all(_finite(f) and f > 0 for f in items):
        raise TrainingError(f"factors={factors!r} must be one or more finite numbers > 0 (e.g. (1.0,))")
    return tuple(float(f) for f in items)


def make_config(options: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
    """Split keyword options into a :class:`TrainConfig` and the rest (unknown names raise).

    Example:
        >>> make_config({"lr": 0.05, "fluency_texts": ["Hi"]})[0].lr
        0.05
    """
    fields = set(TrainConfig.__dataclass_fields__)
    extra_known = {"fluency_texts", "on_step", "config"}
    unknown = sorted(set(options) - fields - extra_known)
    if unknown:
        raise TrainingError(
            f"unknown training option(s) {unknown}; trained methods take {sorted(fields | extra_known)}"
        )
    base = options.get("config") or TrainConfig()
    if not isinstance(base, TrainConfig):
        raise TrainingError(f"config= must be a TrainConfig, got {type(base).__name__}")
    cfg = replace(base, **{k: v for k, v in options.items() if k in fields})
    rest: dict[str, Any] = {k: options[k] for k in ("fluency_texts", "on_step") if k in options}
    return cfg, rest


StepCallback = Callable[[dict[str, Any]], None]
"""Called after every optimiser step with ``{"epoch", "step", "loss", "accuracy"}``."""
