"""A linear-probe direction: logistic regression separating positive from negative activations.

Example:
    >>> import torch
    >>> pos, neg = torch.randn(16, 4) + 2, torch.randn(16, 4) - 2
    >>> bool((fit(pos, neg) > 0).all())
    True
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from ...errors import DatasetError
from ..readout import ReadOutMethod
from . import register, scale_to_pairs


def fit(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Weight vector of a logistic-regression probe (standardised features), oriented and scaled."""
    if pos.shape[0] < 2:
        raise DatasetError("the probe method needs at least 2 contrast pairs")
    x = torch.cat([pos, neg]).double().numpy()
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    mean, std = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(max_iter=2000).fit((x - mean) / std, y)
    weights = torch.tensor(clf.coef_[0] / std, dtype=torch.float32)
    return scale_to_pairs(weights, pos, neg)


register(ReadOutMethod("probe", fit, "logistic-regression probe direction", min_pairs=2))
