"""Statistics shared by the evaluations: bootstrap intervals and NaN-aware summaries.

Example:
    >>> idx = resample_indices(4, n_bootstrap=200, seed=0)
    >>> lo, hi = bootstrap_ci([0.0, 1.0, 1.0, 0.0], indices=idx)
    >>> 0.0 <= lo <= 0.5 <= hi <= 1.0
    True
    >>> finite_stat([1.0, float("nan"), 3.0], np.mean)
    2.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["bootstrap_ci", "finite_stat", "resample_indices"]


def resample_indices(n: int, n_bootstrap: int = 1000, seed: int = 0) -> np.ndarray:
    """``[n_bootstrap, n]`` item indices drawn with replacement (seeded): one bootstrap resample a row.

    Passing the same indices to :func:`bootstrap_ci` for several metrics of the same items resamples
    them together. ``n_bootstrap <= 0`` gives no rows.

    Example:
        >>> resample_indices(3, n_bootstrap=2).shape
        (2, 3)
    """
    return np.random.default_rng(seed).integers(0, n, size=(max(0, n_bootstrap), n))


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    n_bootstrap: int = 1000,
    seed: int = 0,
    indices: np.ndarray | None = None,
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of ``values``.

    The items are resampled with replacement ``n_bootstrap`` times (seeded), or along the rows of
    ``indices`` (from :func:`resample_indices`) when given. ``(nan, nan)`` when there is nothing to
    resample: no values, or no resamples.

    Example:
        >>> bootstrap_ci([0.5, 0.5, 0.5])
        (0.5, 0.5)
        >>> bootstrap_ci([0.1, 0.9], n_bootstrap=0)
        (nan, nan)
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (math.nan, math.nan)
    if indices is None:
        indices = resample_indices(x.size, n_bootstrap, seed)
    if indices.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.percentile(x[indices].mean(axis=1), [2.5, 97.5])
    return (float(lo), float(hi))


def finite_stat(values: Sequence[float], fn: Callable[[list[float]], Any]) -> float:
    """``fn`` (e.g. ``np.median``) of the values that are not NaN; NaN when none is.

    Example:
        >>> finite_stat([float("nan")], np.median)
        nan
    """
    finite = [v for v in values if not math.isnan(v)]
    return float(fn(finite)) if finite else math.nan
