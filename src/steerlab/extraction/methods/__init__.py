"""Registry of vector-extraction methods: a new method is one small module that calls
:func:`register`.

A method turns the activations of positive and negative examples at one layer into a direction:
``fit(pos [N, d], neg [N, d]) -> [d]``. Token-wise methods (ActAdd) get ``[n_tokens, d]`` arrays
of a single pair and return ``[n_tokens, d]``.

A **streaming** method also gives an :class:`Accumulator` factory: capture then feeds it batch by
batch (``update``), memory stays ``O(layers × d)``, a run resumes from its saved state
(``state_dict``), shards computed apart combine exactly (``merge``), and ``finalize`` gives the
direction. :func:`steerlab.extract` uses the accumulator of a streaming method and never assumes
what it computes.

A **trained** method (``bipo``, ``reps``) needs the model itself, not activations: it gives a
``trainer(lm, data, layers, **options) -> SteeringVector`` that :func:`steerlab.extract` hands the
whole job to (see :mod:`steerlab.extraction.train`).

Example:
    >>> import torch
    >>> get_method("mean_diff").fit(torch.ones(2, 3), torch.zeros(2, 3))
    tensor([1., 1., 1.])
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import DatasetError


class Accumulator(ABC):
    """The running state of a streaming method at one layer.

    Example:
        >>> acc = get_method("mean_diff").accumulator(2)
        >>> acc.update(torch.tensor([[2.0, 0.0], [0.0, 0.0]]), torch.tensor([True, False]))
        >>> acc.finalize()
        tensor([2., 0.])
    """

    @abstractmethod
    def update(self, acts: torch.Tensor, positive: torch.Tensor) -> None:
        """Add a batch: ``acts [n, d]`` with ``positive [n]`` True for positive texts."""

    @abstractmethod
    def merge(self, other: Accumulator) -> None:
        """Add what another accumulator of the same method saw (a shard computed elsewhere)."""

    @abstractmethod
    def finalize(self) -> torch.Tensor:
        """The direction ``[d]``."""

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that :meth:`load_state_dict` restores exactly (for checkpoints)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the state saved by :meth:`state_dict`."""

    def seen(self) -> int | None:
        """How many texts it was fed (``None``: it does not count); a resumed checkpoint is
        checked against it."""
        return None


@dataclass(frozen=True)
class Method:
    """One extraction method.

    Attributes:
        name: the registry name.
        fit: ``fit(pos, neg) -> direction`` on all read activations of one layer.
        summary: one line for listings.
        tokenwise: one pair, one row per token (ActAdd).
        min_pairs: fewest pairs it works with.
        accumulator: for streaming methods, ``accumulator(d_model)`` makes an empty
            :class:`Accumulator` (its ``finalize`` must equal ``fit`` on the same data).
        trainer: for trained methods, ``trainer(lm, data, layers, **options)`` returns the
            :class:`~steerlab.core.vector.SteeringVector` (``fit`` is then never called).
        diagnose: optional ``diagnose(pos, neg, direction) -> dict`` (JSON-ready) describing a
            fitted layer, e.g. how sure its sign is; :func:`steerlab.extract` stores it in the
            vector's ``meta["per_layer"][str(layer)]`` (non-streaming methods).
    """

    name: str
    fit: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    summary: str
    tokenwise: bool = False
    min_pairs: int = 1
    accumulator: Callable[[int], Accumulator] | None = None
    trainer: Callable[..., Any] | None = None
    diagnose: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, Any]] | None = None

    @property
    def trained(self) -> bool:
        """Whether the method trains a vector with the model (and needs no activations)."""
        return self.trainer is not None

    @property
    def streaming(self) -> bool:
        """Whether capture can stream into an :class:`Accumulator` (memory ``O(layers × d)``)."""
        return self.accumulator is not None


REGISTRY: dict[str, Method] = {}


def register(method: Method, replace: bool = False) -> Method:
    """Add ``method`` to the registry.

    Raises:
        DatasetError: a method of that name exists and ``replace`` is False.
    """
    if method.name in REGISTRY and not replace:
        raise DatasetError(f"a method called {method.name!r} is registered: pass replace=True to swap it")
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


def center_on_midpoints(pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pair's two activations minus the pair's midpoint: ``(pos − mid, neg − mid)``.

    What is left is only the within-pair (behaviour) difference: ``pos − mid = −(neg − mid)``.

    Example:
        >>> center_on_midpoints(torch.tensor([[3.0]]), torch.tensor([[1.0]]))
        (tensor([[1.]]), tensor([[-1.]]))
    """
    mid = (pos + neg) / 2
    return pos - mid, neg - mid


from . import actadd, bipo, mean_diff, pca, probe, reps  # noqa: E402,F401  (registration side effects)

__all__ = ["REGISTRY", "Accumulator", "Method", "center_on_midpoints", "get_method", "register", "scale_to_pairs"]
