"""Cosine similarity of steering directions: across the layers of one vector, or between vectors.

* :func:`layer_similarity` — how much a vector's direction changes from layer to layer.
* :func:`vector_similarity` — whether different vectors (methods, behaviours, datasets) point the
  same way, at one common layer or averaged over all their common layers.

Both return a :class:`SimilarityReport` (a labelled square matrix) with ``rows()``,
``to_markdown()``, ``to_json()`` and ``plot(path)`` (an annotated heat map).

Example:
    >>> from steerlab.analysis.similarity import layer_similarity, vector_similarity
    >>> import torch; from steerlab import SteeringVector
    >>> v = SteeringVector({1: torch.ones(4), 2: torch.tensor([1.0, 1, 0, 0])}, "m", 4, 3)
    >>> round(layer_similarity(v).matrix[0][1], 3)
    0.707
    >>> vector_similarity({"v": v, "-v": -v}).matrix[0][1]
    -1.0
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.vector import SteeringVector
from ..errors import InvalidVectorError, ModelMismatchError
from ..evaluate.report import Report, new_figure, save_figure

ANNOTATE_MAX = 12
"""Heat maps with at most this many rows get the values written in their cells."""


def _unit(t: torch.Tensor, where: str) -> torch.Tensor:
    t = t.double()
    if t.dim() == 2:
        t = t.mean(0)
    norm = float(t.norm())
    if norm == 0.0:
        raise InvalidVectorError(f"{where} is the zero vector: cosine similarity is undefined")
    return t / norm


def _cosines(units: list[torch.Tensor]) -> np.ndarray:
    m = torch.stack(units)
    return (m @ m.T).clamp(-1.0, 1.0).numpy()


def _tidy(m: np.ndarray) -> list[list[float]]:
    """Round away float noise (so a diagonal reads exactly 1.0 and ``v`` vs ``-v`` exactly -1.0)."""
    return np.round(m, 10).tolist()


@dataclass
class SimilarityReport(Report):
    """A labelled square matrix of cosine similarities.

    Attributes:
        labels: row / column names (``"layer k"`` or the vectors' names).
        matrix: ``matrix[i][j]`` is the cosine similarity of items ``i`` and ``j``.
        layers: for layer similarity, the layers; for vector similarity, the common layer(s)
            compared (the matrix is the mean over them).
        mode: ``"layers"`` or ``"vectors"``.
        model_id: the model of the vector(s).
    """

    labels: list[str] = field(default_factory=list)
    matrix: list[list[float]] = field(default_factory=list)
    layers: list[int] = field(default_factory=list)
    mode: str = "layers"
    model_id: str = ""

    def rows(self) -> list[dict[str, Any]]:
        """One row per item: its name, then its similarity with every item (a square table)."""
        return [{"": a, **{b: self.matrix[i][j] for j, b in enumerate(self.labels)}} for i, a in enumerate(self.labels)]

    def get(self, a: str, b: str) -> float:
        """Similarity of the items named ``a`` and ``b``."""
        return self.matrix[self.labels.index(a)][self.labels.index(b)]

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Heat map (diverging colours over [-1, 1]); values are written in the cells when small."""
        n = len(self.labels)
        size = min(3.0 + 0.45 * n, 14.0)
        fig = new_figure(size + 1.2, size)
        ax = fig.add_subplot(1, 1, 1)
        m = np.array(self.matrix, dtype=float)
        im = ax.imshow(m, cmap="RdBu_r", vmin=-1.0, vmax=1.0)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        ax.set_xticklabels(self.labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticklabels(self.labels, fontsize=8)
        if n <= ANNOTATE_MAX:
            for i in range(n):
                for j in range(n):
                    v = m[i, j]
                    ax.text(
                        j,
                        i,
                        f"{v:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if abs(v) > 0.6 else "black",
                    )
        ax.set_title(self.title or "cosine similarity", fontsize=10)
        return save_figure(fig, path)


def layer_similarity(vector: SteeringVector) -> SimilarityReport:
    """Cosine similarity between ``vector``'s directions at every pair of its layers.

    Token-wise (ActAdd) vectors are collapsed with :meth:`SteeringVector.token_mean`.

    Raises:
        InvalidVectorError: the vector is zero at some layer.

    Example:
        >>> r = layer_similarity(vec)  # doctest: +SKIP
        >>> r.get("layer 1", "layer 3")  # doctest: +SKIP
        0.42
    """
    vec = vector.token_mean() if vector.tokenwise else vector
    units = [_unit(t, f"layer {k} of the vector") for k, t in vec.directions.items()]
    return SimilarityReport(
        title=f"Cosine similarity across the layers of the {vector.method} vector",
        settings={"method": vector.method, "tokenwise": vector.tokenwise},
        labels=[f"layer {k}" for k in vec.layers],
        matrix=_tidy(_cosines(units)),
        layers=vec.layers,
        mode="layers",
        model_id=vector.model_id,
    )


def vector_similarity(vectors: Mapping[str, SteeringVector], layer: int | None = None) -> SimilarityReport:
    """Cosine similarity between named vectors at ``layer``, or averaged over their common layers.

    Args:
        vectors: ``{name: vector}``, all made for the same model.
        layer: the layer to compare at (every vector must have it); default: the mean of the
            per-layer cosines over all layers the vectors share.

    Raises:
        InvalidVectorError: no vectors, no common layer (or a vector lacks ``layer``), or a zero
            direction.
        ModelMismatchError: the vectors were made for different models.

    Example:
        >>> r = vector_similarity({"mean_diff": v1, "pca_diff": v2}, layer=3)  # doctest: +SKIP
        >>> r.get("mean_diff", "pca_diff")  # doctest: +SKIP
        0.93
    """
    if not vectors:
        raise InvalidVectorError("vector_similarity needs at least one vector")
    names = list(vectors)
    first = vectors[names[0]]
    ref = (first.model_id, first.d_model, first.n_layers)
    for name in names[1:]:
        v = vectors[name]
        if (v.model_id, v.d_model, v.n_layers) != ref:
            raise ModelMismatchError(
                f"vector {name!r} was made for {v.model_id!r} (d_model={v.d_model}, {v.n_layers} layers) "
                f"but {names[0]!r} for {first.model_id!r} (d_model={first.d_model}, {first.n_layers} layers): "
                "directions of different models cannot be compared"
            )
    if layer is not None:
        lacking = [n for n in names if int(layer) not in vectors[n].directions]
        if lacking:
            raise InvalidVectorError(
                f"vector(s) {lacking} have no direction at layer {layer}; "
                + "; ".join(f"{n!r} has layers {vectors[n].layers}" for n in lacking)
            )
        common = [int(layer)]
    else:
        shared = set(first.layers)
        for n in names[1:]:
            shared &= set(vectors[n].layers)
        if not shared:
            raise InvalidVectorError(
                "the vectors share no layer, so they cannot be compared: "
                + "; ".join(f"{n!r} has layers {vectors[n].layers}" for n in names)
            )
        common = sorted(shared)
    total = np.zeros((len(names), len(names)))
    for k in common:
        total += _cosines([_unit(vectors[n].directions[k], f"vector {n!r} at layer {k}") for n in names])
    matrix = total / len(common)
    where = f"layer {common[0]}" if len(common) == 1 else f"mean over {len(common)} common layers"
    return SimilarityReport(
        title=f"Cosine similarity between vectors ({where})",
        settings={"layer": layer, "methods": {n: vectors[n].method for n in names}},
        labels=names,
        matrix=_tidy(matrix),
        layers=common,
        mode="vectors",
        model_id=first.model_id,
    )


__all__ = ["SimilarityReport", "layer_similarity", "vector_similarity"]
