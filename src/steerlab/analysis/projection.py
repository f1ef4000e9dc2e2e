"""Which layer separates the behaviour best? Project contrast activations onto a vector.

For every layer of a :class:`~steerlab.core.vector.SteeringVector`, the positive and negative texts of
contrast pairs are read (one batched capture, at each pair's read position) and projected onto the
vector's **unit** direction at that layer. Per layer the report gives the mean and standard
deviation of each side, the gap, the separation (Cohen's d), the accuracy of the midpoint
threshold and of the best threshold, and the fraction of pairs whose positive projects above its
negative.

Example:
    >>> from steerlab.analysis.projection import projection
    >>> report = projection(lm, pairs, vec)  # doctest: +SKIP
    >>> report.best_layer, report.rows()[0]["cohens_d"]  # doctest: +SKIP
    (2, 1.87)
    >>> report.plot("projection.png")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.vector import SteeringVector
from ..data.pairs import ContrastPair, check_pairs, pair_texts
from ..errors import DatasetError, InvalidVectorError
from ..evaluate.report import Report, new_figure, save_figure
from ..extraction.capture import capture
from ..models.load import LM


def cohens_d(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Cohen's d of ``a`` over ``b``: ``(mean(a) − mean(b)) / pooled std`` (``ddof=1``).

    ``nan`` when a side has fewer than 2 values or both sides are constant and equal; ``±inf``
    when both are constant but differ.

    Example:
        >>> round(cohens_d([1.0, 2.0, 3.0], [0.0, 1.0, 2.0]), 3)
        1.0
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        return float("nan")
    diff = float(x.mean() - y.mean())
    pooled = math.sqrt(((len(x) - 1) * x.var(ddof=1) + (len(y) - 1) * y.var(ddof=1)) / (len(x) + len(y) - 2))
    if pooled == 0.0:
        return float("nan") if diff == 0.0 else math.copysign(math.inf, diff)
    return diff / pooled


def threshold_accuracy(pos: np.ndarray, neg: np.ndarray, threshold: float) -> float:
    """Fraction classified right when ``> threshold`` means positive."""
    return float(((pos > threshold).sum() + (neg <= threshold).sum()) / (len(pos) + len(neg)))


def best_threshold(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """The threshold (``> t`` means positive) with the highest accuracy, and that accuracy.

    Every distinct value (and ``-inf``) is tried; the threshold returned is the midpoint between
    the best cut value and the next larger value, so it generalises a little better.

    Example:
        >>> best_threshold(np.array([2.0, 3.0]), np.array([0.0, 1.0]))
        (1.5, 1.0)
    """
    values = np.unique(np.concatenate([pos, neg]))
    cuts = np.concatenate([[-np.inf], values])
    pos_s, neg_s = np.sort(pos), np.sort(neg)
    pos_above = len(pos_s) - np.searchsorted(pos_s, cuts, side="right")
    neg_below = np.searchsorted(neg_s, cuts, side="right")
    acc = (pos_above + neg_below) / (len(pos) + len(neg))
    j = int(np.argmax(acc))
    if j == 0:
        t = float(values[0]) - 1.0
    elif j == len(values):
        t = float(values[-1]) + 1.0
    else:
        t = float((values[j - 1] + values[j]) / 2)
    return t, float(acc[j])


@dataclass
class LayerProjection:
    """Projections of one layer: the raw values and their summary statistics."""

    layer: int = 0
    positive: list[float] = field(default_factory=list)
    negative: list[float] = field(default_factory=list)
    pos_mean: float = 0.0
    pos_std: float = 0.0
    neg_mean: float = 0.0
    neg_std: float = 0.0
    gap: float = 0.0
    cohens_d: float = 0.0
    threshold: float = 0.0
    midpoint_accuracy: float = 0.0
    best_threshold: float = 0.0
    best_accuracy: float = 0.0
    pair_accuracy: float = 0.0

    @classmethod
    def from_values(cls, layer: int, pos: np.ndarray, neg: np.ndarray) -> LayerProjection:
        """Statistics of positive and negative projections ``pos`` / ``neg`` (paired, same length)."""
        pos_mean, neg_mean = float(pos.mean()), float(neg.mean())
        mid = (pos_mean + neg_mean) / 2
        best_t, best_acc = best_threshold(pos, neg)
        return cls(
            layer=layer,
            positive=[float(x) for x in pos],
            negative=[float(x) for x in neg],
            pos_mean=pos_mean,
            pos_std=float(pos.std(ddof=1)) if len(pos) > 1 else 0.0,
            neg_mean=neg_mean,
            neg_std=float(neg.std(ddof=1)) if len(neg) > 1 else 0.0,
            gap=pos_mean - neg_mean,
            cohens_d=cohens_d(pos, neg),
            threshold=mid,
            midpoint_accuracy=threshold_accuracy(pos, neg, mid),
            best_threshold=best_t,
            best_accuracy=best_acc,
            pair_accuracy=float((pos > neg).mean()),
        )

    def summary(self) -> dict[str, Any]:
        """The statistics without the raw projections (one table row)."""
        return {
            "layer": self.layer,
            "pos_mean": self.pos_mean,
            "pos_std": self.pos_std,
            "neg_mean": self.neg_mean,
            "neg_std": self.neg_std,
            "gap": self.gap,
            "cohens_d": self.cohens_d,
            "midpoint_accuracy": self.midpoint_accuracy,
            "best_accuracy": self.best_accuracy,
            "pair_accuracy": self.pair_accuracy,
        }


@dataclass
class ProjectionReport(Report):
    """Per-layer projections of contrast activations onto a steering vector.

    Attributes:
        layers: the layers analysed, ascending.
        per_layer: one :class:`LayerProjection` per layer (same order).
        n_pairs: number of contrast pairs.
        model_id: the model the activations (and the vector) come from.
        vector_method: how the vector was made.
    """

    layers: list[int] = field(default_factory=list)
    per_layer: list[LayerProjection] = field(default_factory=list)
    n_pairs: int = 0
    model_id: str = ""
    vector_method: str = ""

    def rows(self) -> list[dict[str, Any]]:
        """One row per layer: means, stds, gap, Cohen's d and accuracies."""
        return [p.summary() for p in self.per_layer]

    def layer(self, layer: int) -> LayerProjection:
        """The :class:`LayerProjection` of ``layer``."""
        for p in self.per_layer:
            if p.layer == layer:
                return p
        raise KeyError(f"layer {layer} is not in this report (it has {self.layers})")

    @property
    def best_layer(self) -> int:
        """The layer with the largest separation (Cohen's d; NaN counts as lowest)."""
        scores = [(-math.inf if math.isnan(p.cohens_d) else p.cohens_d) for p in self.per_layer]
        return self.per_layer[int(np.argmax(scores))].layer

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Small multiples: one histogram per layer, positives vs negatives overlaid."""
        n = len(self.per_layer)
        cols = min(4, n)
        rows = math.ceil(n / cols)
        fig = new_figure(3.0 * cols, 2.4 * rows + 0.4)
        for i, p in enumerate(self.per_layer):
            ax = fig.add_subplot(rows, cols, i + 1)
            both = np.array(p.positive + p.negative)
            bins = np.linspace(float(both.min()), float(both.max()), 21) if np.ptp(both) > 0 else 10
            ax.hist(p.negative, bins=bins, alpha=0.55, color="tab:blue", label="negative")
            ax.hist(p.positive, bins=bins, alpha=0.55, color="tab:orange", label="positive")
            ax.axvline(p.threshold, color="black", linestyle="--", linewidth=0.8)
            ax.set_title(f"layer {p.layer}  d={p.cohens_d:.2f}  acc={p.midpoint_accuracy:.2f}", fontsize=8)
            ax.tick_params(labelsize=7)
            if i % cols == 0:
                ax.set_ylabel("count", fontsize=8)
            if i == 0:
                ax.legend(fontsize=7)
        fig.suptitle(self.title or "projection onto the steering vector", fontsize=10)
        return save_figure(fig, path)


def projection(
    lm: LM,
    pairs: Sequence[ContrastPair],
    vector: SteeringVector,
    layers: Sequence[int] | range | None = None,
    batch_size: int = 32,
    progress: bool | None = None,
) -> ProjectionReport:
    """Project positive and negative activations onto ``vector``'s unit direction, layer by layer.

    Token-wise (ActAdd) vectors are collapsed with :meth:`SteeringVector.token_mean` first.

    Args:
        lm: the model the vector was made for.
        pairs: contrast pairs (at least 2); each side is read at the pair's ``read`` position.
        vector: the steering vector.
        layers: a subset of the vector's layers (default: all of them).
        batch_size: texts per forward pass.
        progress: show a progress bar.

    Raises:
        ModelMismatchError: the vector was made for another model.
        LayerRangeError: a requested layer is not in the vector.
        InvalidVectorError: the vector is zero at a requested layer.
        DatasetError: fewer than 2 pairs.

    Example:
        >>> r = projection(lm, pairs, vec, layers=[2, 3])  # doctest: +SKIP
        >>> [round(x["cohens_d"], 2) for x in r.rows()]  # doctest: +SKIP
        [1.4, 2.1]
    """
    vector.check_model(lm)
    pairs = check_pairs(pairs)
    if len(pairs) < 2:
        raise DatasetError(f"projection needs at least 2 contrast pairs to estimate spreads, got {len(pairs)}")
    vec = vector.token_mean() if vector.tokenwise else vector
    if layers is not None:
        vec = vec.select(layers)
    units: dict[int, torch.Tensor] = {}
    for k, d in vec.directions.items():
        norm = float(d.norm())
        if norm == 0.0:
            raise InvalidVectorError(f"the vector is zero at layer {k}: it has no direction to project onto")
        units[k] = d / norm
    texts, reads = pair_texts(lm, pairs)
    acts = capture(lm, texts, list(units), reads, batch_size=batch_size, progress=progress)
    per_layer = []
    for k, unit in units.items():
        proj = (acts[k].double() @ unit.double()).numpy()
        per_layer.append(LayerProjection.from_values(k, proj[0::2], proj[1::2]))
    return ProjectionReport(
        title=f"Projection of {len(pairs)} contrast pairs onto the {vector.method} vector",
        settings={"batch_size": batch_size, "reads": sorted({repr(r) for r in reads})},
        layers=list(units),
        per_layer=per_layer,
        n_pairs=len(pairs),
        model_id=lm.model_id,
        vector_method=vector.method,
    )


__all__ = ["LayerProjection", "ProjectionReport", "best_threshold", "cohens_d", "projection"]
