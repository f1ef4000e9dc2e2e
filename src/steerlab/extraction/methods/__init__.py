"""Registry of vector-extraction methods: a new method is one small module that calls
:func:`register`.

Every method is a :class:`Method`: a name, a one-line summary, and ``extract(run, data)`` — the
method runs its own path on what :func:`steerlab.extract` hands it (the model, the layers and the
options, :class:`~steerlab.extraction.run.ExtractRun`). There are two kinds:

* a **read-out** method (:class:`~steerlab.extraction.readout.ReadOutMethod`: ``mean_diff``,
  ``pca_diff``, ``pca_center``, ``probe``, ``actadd``) fits a direction to the activations of
  positive and negative examples at each layer: ``fit(pos [N, d], neg [N, d]) -> [d]``
  (token-wise methods, ActAdd, get ``[n_tokens, d]`` of a single pair). A *streaming* one also
  gives an :class:`~steerlab.extraction.accumulate.Accumulator` factory: capture feeds it batch by
  batch (``update``), memory stays ``O(layers × d)``, a run resumes from its saved state
  (``state_dict``), shards computed apart combine exactly (``merge``), and ``finalize`` gives the
  direction;
* a **trained** method (:class:`~steerlab.extraction.trained.TrainedMethod`: ``bipo``, ``reps``)
  trains its vector with the model itself (:mod:`steerlab.extraction.train`); it has no ``fit``.

Example:
    >>> import torch
    >>> get_method("mean_diff").fit(torch.ones(2, 3), torch.zeros(2, 3))
    tensor([1., 1., 1.])
    >>> [get_method(name).trained for name in ("mean_diff", "bipo")]
    [False, True]
"""

from __future__ import annotations

from typing import Protocol

import torch

from ...core.vector import SteeringVector
from ...errors import DatasetError
from ..accumulate import Accumulator
from ..readout import ReadOutMethod
from ..run import ExtractData, ExtractRun
from ..trained import TrainedMethod


class Method(Protocol):
    """One extraction method: what :func:`steerlab.extract` and the registry know of it."""

    @property
    def name(self) -> str:
        """The registry name."""
        ...

    @property
    def summary(self) -> str:
        """One line for listings."""
        ...

    @property
    def trained(self) -> bool:
        """Whether it trains its vector with the model (and reads no activations)."""
        ...

    def extract(self, run: ExtractRun, data: ExtractData) -> SteeringVector:
        """The method's vector from ``data`` on ``run.lm`` at ``run.layers`` (its own path)."""
        ...


REGISTRY: dict[str, Method] = {}


def register(method: Method, replace: bool = False) -> Method:
    """Add ``method`` (a :class:`~steerlab.extraction.readout.ReadOutMethod`, a
    :class:`~steerlab.extraction.trained.TrainedMethod` or any :class:`Method`) to the registry.

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

__all__ = [
    "REGISTRY",
    "Accumulator",
    "Method",
    "ReadOutMethod",
    "TrainedMethod",
    "center_on_midpoints",
    "get_method",
    "register",
    "scale_to_pairs",
]
