"""RePS (Wu et al. 2025, "Improved Representation Steering for Language Models"): a vector trained
with a reference-free, length-normalised bidirectional preference objective.

A trained method: ``steerlab.extract(lm, pairs, method="reps", layers=[...], factors=(...))``
(see :mod:`steerlab.extraction.train` and :mod:`steerlab.extraction.train.objectives`).

Example:
    >>> from steerlab.extraction.methods import get_method
    >>> get_method("reps").trained
    True
"""

from __future__ import annotations

from ..trained import TrainedMethod
from . import register

register(TrainedMethod("reps", "trained: reference-free preference steering (RePS, ±v)", objective="reps", min_pairs=1))
