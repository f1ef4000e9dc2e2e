"""Registry of vector-extraction methods: a new method is one small module that calls
:func:`register`.

A method turns the activations of positive and negative examples at one layer into a direction:
``fit(pos [N, d], neg [N, d]) -> [d]``. Token-wise methods (ActAdd) get ``[n_tokens, d]`` arrays
of a single pair and return ``[n_tokens, d]``.

Example:
    >>> import torch
    >>> get_method("mean_diff").fit(torch.ones(2, 3), torch.zeros(2, 3))
    tensor([1., 1., 1.])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import DatasetError


@dataclass(frozen=True)
class Method:
    """One extraction method."""

    name: str
    fit: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    summary: str
    tokenwise: bool = False
    min_pairs: int = 1
    streaming: bool = False
    """True when the direction depends only on per-side sums: capture then streams in O(layers × d)
    memory and can resume from a checkpoint."""


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry (replacing one of the same name)."""
    REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method called ``name``, or a :class:`DatasetError` listing the choices."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise DatasetError(f"unknown method {name!r}; choose one of {', '.join(sorted(REGISTRY))}") from None


def scale_to_pairs(direction: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Orient a direction so positives project above negatives, and scale it to the mean
    projected difference — so coefficient 1 moves activations by about one pos→neg gap,
    comparable across methods."""
    unit = direction / direction.norm().clamp_min(1e-12)
    gap = float(((pos - neg) @ unit).mean())
    if gap < 0:
        unit, gap = -unit, -gap
    return unit * gap if gap > 0 else unit


from . import actadd, mean_diff, pca, probe  # noqa: E402,F401  (registration side effects)

__all__ = ["REGISTRY", "Method", "get_method", "register", "scale_to_pairs"]
