"""Trained steering vectors: optimise a vector per layer on preference pairs, the model frozen.

Read-out methods (``mean_diff``, ``pca_diff``, ``probe``) take a direction from activations;
trained methods ask the model instead: the vector is adjusted by gradient descent until ``+v``
makes the preferred completions more likely than the dispreferred ones and ``−v`` the reverse.

* :func:`train_vector` — the training loop (:mod:`steerlab.extraction.train.loop`); reached through
  ``steerlab.extract(lm, pairs, method="bipo" | "reps", layers=..., lr=..., epochs=...)``;
* :mod:`~steerlab.extraction.train.objectives` — BiPO and RePS;
* :func:`preference_margin` — how well a vector (trained or not) separates held-out pairs.

Example:
    >>> pairs = steerlab.self_contrast(lm, openings, "Write a cheerful story.", "Write a sad story.")  # doctest: +SKIP
    >>> vec = steerlab.extract(lm, pairs, method="bipo", layers=[12], epochs=4)  # doctest: +SKIP
    >>> s = steerlab.Steering(vec, 1.0, positions="generated")  # doctest: +SKIP
    >>> steerlab.generate(lm, ["The day"], steering=s)  # doctest: +SKIP
"""

from __future__ import annotations

from .config import TRAIN_POSITIONS, TrainConfig, TrainingError, make_config
from .loop import train_vector
from .metrics import PreferenceMargin, preference_margin
from .objectives import OBJECTIVES, Objective, Scores

__all__ = [
    "OBJECTIVES",
    "TRAIN_POSITIONS",
    "Objective",
    "PreferenceMargin",
    "Scores",
    "TrainConfig",
    "TrainingError",
    "make_config",
    "preference_margin",
    "train_vector",
]
