"""CAA (Rimsky/Panickssery et al. 2023): the mean of positive minus negative activations.

Example:
    >>> import torch
    >>> fit(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]]))
    tensor([2., 0.])
"""

from __future__ import annotations

import torch

from . import Method, register


def fit(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Mean difference ``mean(pos - neg)``."""
    return (pos - neg).mean(0)


register(Method("mean_diff", fit, "mean of positive − negative activations (CAA)", streaming=True))
