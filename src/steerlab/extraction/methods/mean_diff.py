"""CAA (Rimsky/Panickssery et al. 2023): the mean of positive minus negative activations.

Example:
    >>> import torch
    >>> fit(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]]))
    tensor([2., 0.])
"""

from __future__ import annotations

import torch

from ..accumulate import Accumulator
from ..readout import ReadOutMethod
from . import register


def fit(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Mean difference ``mean(pos - neg)``."""
    return (pos - neg).mean(0)


class MeanDiffAccumulator(Accumulator):
    """Per-side sums (float64) and counts: ``mean(pos) − mean(neg)``, merged exactly."""

    def __init__(self, d_model: int) -> None:
        self.sums = torch.zeros(2, d_model, dtype=torch.float64)
        self.counts = torch.zeros(2, dtype=torch.float64)

    def update(self, acts: torch.Tensor, positive: torch.Tensor) -> None:
        a = acts.double()
        self.sums[0] += a[positive].sum(0)
        self.sums[1] += a[~positive].sum(0)
        self.counts[0] += float(positive.sum())
        self.counts[1] += float((~positive).sum())

    def merge(self, other: Accumulator) -> None:
        assert isinstance(other, MeanDiffAccumulator)
        self.sums += other.sums
        self.counts += other.counts

    def finalize(self) -> torch.Tensor:
        return (self.sums[0] / self.counts[0].clamp_min(1) - self.sums[1] / self.counts[1].clamp_min(1)).float()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"sums": self.sums.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.sums = state["sums"].clone()
        self.counts = state["counts"].clone()

    def seen(self) -> int:
        return int(self.counts.sum())


register(
    ReadOutMethod("mean_diff", fit, "mean of positive − negative activations (CAA)", accumulator=MeanDiffAccumulator)
)
