"""BiPO (Cao et al., NeurIPS 2024): a vector trained so that ``+v`` raises the preferred
completion over the dispreferred one relative to the unsteered model and ``−v`` the reverse.

A trained method: ``steerlab.extract(lm, pairs, method="bipo", layers=[...], lr=..., epochs=...)``
(see :mod:`steerlab.extraction.train`). Steer with ``Steering(vec, ±c, positions="generated")`` (the default
training positions; ``vec.meta["inference"]`` says which).

Example:
    >>> from steerlab.extraction.methods import get_method
    >>> get_method("bipo").trained
    True
"""

from __future__ import annotations

from ..trained import TrainedMethod
from . import register

register(
    TrainedMethod(
        "bipo",
        "trained: bi-directional preference optimisation (DPO vs the unsteered model, ±v)",
        objective="bipo",
        min_pairs=1,
    )
)
