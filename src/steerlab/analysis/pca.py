"""PCA of the residual stream: what are the main directions activations vary along?

:func:`residual_pca` reads one activation per text at one layer (after block ``layer``, the same
place steering vectors act) and fits a PCA (scikit-learn). The :class:`PCAReport` keeps the
explained-variance ratios, the components, each text's coordinates on PC1/PC2 and optional
labels; :meth:`PCAReport.direction` turns a principal direction into a
:class:`~steerlab.core.vector.SteeringVector`, so one can ask whether adding it does something
meaningful (an open problem from "Steering GPT-2-XL by adding an activation vector").

:func:`contrast_pca` runs it on contrast pairs labelled ``positive`` / ``negative`` (CAA's
interpretation section: do the two sides separate along the top PCs?).

Example:
    >>> from steerlab.analysis.pca import contrast_pca, residual_pca
    >>> r = residual_pca(lm, ["Once upon a time", "The cat sat"] * 4, layer=2)  # doctest: +SKIP
    >>> r.explained_variance_ratio[:2]  # doctest: +SKIP
    [0.41, 0.22]
    >>> v = r.direction(0)  # PC1 as a steering vector, coefficient 1 = one std  # doctest: +SKIP
    >>> steerlab.generate(lm, ["The cat"], steering=steerlab.Steering(v, 4.0))  # doctest: +SKIP
    >>> contrast_pca(lm, pairs, layer=2).separation  # doctest: +SKIP
    [2.3, 0.1, ...]
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.decomposition import PCA

from ..core.vector import SteeringVector
from ..data.pairs import ContrastPair, Read, Text, check_pairs, pair_texts, render
from ..data.pairs import data_hash as pairs_hash
from ..errors import DatasetError, InvalidVectorError
from ..evaluate.report import Report, new_figure, save_figure
from ..extraction.capture import capture, check_layers
from ..extraction.methods import center_on_midpoints
from ..models.load import LM
from .projection import cohens_d

_LABEL_COLORS = {"positive": "tab:orange", "negative": "tab:blue"}
"""Same colours as the projection histograms."""


def _label_classes(labels: Sequence[str]) -> list[str]:
    """Distinct labels in order of first appearance."""
    return list(dict.fromkeys(labels))


@dataclass
class PCAReport(Report):
    """PCA of residual-stream activations at one layer.

    Attributes:
        layer: the block whose output was read.
        n_texts: number of texts (points).
        explained_variance_ratio: per component, descending; sums to at most 1.
        explained_variance: per component (variance of the projections, ``ddof=1``).
        components: ``[k, d_model]`` unit principal directions (PC1 first).
        mean: ``[d_model]`` mean activation (the PCA centre).
        projections: ``[n_texts, min(2, k)]`` coordinates of each text on PC1 / PC2.
        labels: one label per text, or ``None``.
        separation: with exactly two label classes, Cohen's d of the first class over the second
            along each component (how well the PC separates them); else ``None``.
        model_id, d_model, n_layers: the model the activations come from.
        data_hash: hash of the data (rendered texts, or the contrast pairs).
    """

    layer: int = 0
    n_texts: int = 0
    explained_variance_ratio: list[float] = field(default_factory=list)
    explained_variance: list[float] = field(default_factory=list)
    components: torch.Tensor = field(default_factory=lambda: torch.empty(0, 0))
    mean: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    projections: torch.Tensor = field(default_factory=lambda: torch.empty(0, 0))
    labels: list[str] | None = None
    separation: list[float] | None = None
    model_id: str = ""
    d_model: int = 0
    n_layers: int = 0
    data_hash: str = ""

    @property
    def n_components(self) -> int:
        """Number of components kept."""
        return len(self.explained_variance_ratio)

    def rows(self) -> list[dict[str, Any]]:
        """One row per component: variance ratio, cumulative ratio, std (and label separation)."""
        out: list[dict[str, Any]] = []
        total = 0.0
        for i, (ratio, var) in enumerate(zip(self.explained_variance_ratio, self.explained_variance)):
            total += ratio
            row: dict[str, Any] = {
                "component": f"PC{i + 1}",
                "explained_variance_ratio": ratio,
                "cumulative": total,
                "std": math.sqrt(max(var, 0.0)),
            }
            if self.separation is not None:
                row["separation"] = self.separation[i]
            out.append(row)
        return out

    def direction(self, i: int = 0, lm: LM | None = None) -> SteeringVector:
        """Principal component ``i`` (0-based: ``0`` is PC1) as a steering vector at :attr:`layer`.

        The unit direction is scaled to the standard deviation of the projections along it, so
        coefficient 1 moves an activation by about one standard deviation of the data.

        Args:
            i: component index.
            lm: optionally, the model it will be used with (checked against the report's model).

        Raises:
            InvalidVectorError: ``i`` is not a component of this report.
            ModelMismatchError: ``lm`` is not the model the PCA was run on.

        Example:
            >>> v = report.direction(0)  # doctest: +SKIP
            >>> steerlab.generate(lm, ["The cat"], steering=steerlab.Steering(v, 3.0))  # doctest: +SKIP
        """
        if not 0 <= i < self.n_components:
            raise InvalidVectorError(
                f"component {i} does not exist: this report has {self.n_components} components "
                f"(0..{self.n_components - 1})"
            )
        std = math.sqrt(max(self.explained_variance[i], 0.0))
        unit = self.components[i].float()
        vec = SteeringVector(
            directions={self.layer: unit * std if std > 0 else unit},
            model_id=self.model_id,
            d_model=self.d_model,
            n_layers=self.n_layers,
            method="pca_residual",
            data_hash=self.data_hash,
            meta={
                "component": i,
                "explained_variance_ratio": self.explained_variance_ratio[i],
                "std": std,
                "n_texts": self.n_texts,
                "read": self.settings.get("read", "last"),
            },
        )
        if lm is not None:
            vec.check_model(lm)
        return vec

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Scatter of the texts on PC1/PC2 (coloured by label) beside the explained-variance bars."""
        fig = new_figure(10.0, 4.2)
        ax = fig.add_subplot(1, 2, 1)
        proj = self.projections.numpy()
        xs = proj[:, 0] if proj.shape[1] > 0 else np.zeros(len(proj))
        ys = proj[:, 1] if proj.shape[1] > 1 else np.zeros(len(proj))
        if self.labels is not None:
            for j, cls in enumerate(_label_classes(self.labels)):
                idx = [n for n, lab in enumerate(self.labels) if lab == cls]
                color = _LABEL_COLORS.get(cls, f"C{(j + 2) % 10}")
                ax.scatter(xs[idx], ys[idx], s=14, alpha=0.75, color=color, label=cls)
            ax.legend(fontsize=8)
        else:
            ax.scatter(xs, ys, s=14, alpha=0.75)
        ratios = self.explained_variance_ratio
        ax.set_xlabel(f"PC1 ({100 * ratios[0]:.1f}%)" if ratios else "PC1")
        ax.set_ylabel(f"PC2 ({100 * ratios[1]:.1f}%)" if len(ratios) > 1 else "PC2")
        ax.set_title(f"layer {self.layer}: {self.n_texts} texts", fontsize=10)
        bar = fig.add_subplot(1, 2, 2)
        ticks = np.arange(1, len(ratios) + 1)
        bar.bar(ticks, ratios, color="tab:gray", label="per component")
        bar.plot(ticks, np.cumsum(ratios), color="tab:red", marker="o", markersize=3, label="cumulative")
        bar.set_xticks(ticks)
        bar.set_xlabel("principal component")
        bar.set_ylabel("explained variance ratio")
        bar.set_ylim(0, 1.05)
        bar.legend(fontsize=8)
        fig.suptitle(self.title or "residual-stream PCA", fontsize=11)
        return save_figure(fig, path)


def activation_pca(
    lm: LM,
    acts: torch.Tensor,
    layer: int,
    n_components: int = 8,
    labels: Sequence[str] | None = None,
    orient_label: str | None = None,
    settings: dict[str, Any] | None = None,
    data_hash: str = "",
) -> PCAReport:
    """PCA of already-captured activations ``acts`` ``[N, d_model]`` read after block ``layer``.

    :func:`residual_pca` and :func:`contrast_pca` capture and then call this; call it directly
    to analyse one capture several ways (``lm`` only supplies the model id, width and depth).

    Args:
        lm: the model the activations come from.
        acts: one activation per row (at least 2 rows).
        layer: the block they were read after.
        n_components: components to keep (capped at ``min(N, d_model)``).
        labels: one label per row; with exactly two classes the report gives each component's
            separation (Cohen's d of the first class over the second).
        orient_label: flip each component's sign so rows with this label project above the
            others (PCA signs are otherwise arbitrary); default: scikit-learn's deterministic sign.
        settings: recorded in the report.
        data_hash: recorded in the report and in vectors made from it.

    Example:
        >>> acts = steerlab.capture(lm, texts, [2])[2]  # doctest: +SKIP
        >>> activation_pca(lm, acts, layer=2, n_components=4).explained_variance_ratio  # doctest: +SKIP
    """
    if acts.dim() != 2 or acts.shape[1] != lm.d_model:
        raise DatasetError(f"activations of shape {tuple(acts.shape)} do not fit [N, d_model={lm.d_model}]")
    if acts.shape[0] < 2:
        raise DatasetError(f"PCA needs at least 2 texts, got {acts.shape[0]}")
    if n_components < 1:
        raise DatasetError(f"n_components must be at least 1, got {n_components}")
    label_list = [str(x) for x in labels] if labels is not None else None
    if label_list is not None and len(label_list) != acts.shape[0]:
        raise DatasetError(f"{len(label_list)} labels for {acts.shape[0]} texts: give one label per text")
    if orient_label is not None and (label_list is None or orient_label not in label_list):
        raise DatasetError(f"orient_label={orient_label!r} is not one of the labels")
    (layer_idx,) = check_layers(lm, layer)
    x = acts.double().numpy()
    k = min(n_components, x.shape[0], x.shape[1])
    pca = PCA(n_components=k, svd_solver="full").fit(x)
    components = pca.components_.copy()
    scores = pca.transform(x)
    if orient_label is not None and label_list is not None:
        mask = np.array([lab == orient_label for lab in label_list])
        if (~mask).any():
            flip = scores[mask].mean(0) < scores[~mask].mean(0)
            components[flip] *= -1
            scores[:, flip] *= -1
    separation = None
    if label_list is not None:
        classes = _label_classes(label_list)
        if len(classes) == 2:
            first = np.array([lab == classes[0] for lab in label_list])
            separation = [cohens_d(scores[first, c], scores[~first, c]) for c in range(k)]
    return PCAReport(
        title=f"Residual-stream PCA at layer {layer_idx} ({x.shape[0]} texts)",
        settings={"n_components": n_components, **(settings or {})},
        layer=layer_idx,
        n_texts=x.shape[0],
        explained_variance_ratio=[float(v) for v in pca.explained_variance_ratio_],
        explained_variance=[float(v) for v in pca.explained_variance_],
        components=torch.tensor(components, dtype=torch.float32),
        mean=torch.tensor(pca.mean_, dtype=torch.float32),
        projections=torch.tensor(scores[:, : min(2, k)], dtype=torch.float32),
        labels=label_list,
        separation=separation,
        model_id=lm.model_id,
        d_model=lm.d_model,
        n_layers=lm.n_layers,
        data_hash=data_hash,
    )


def _hash_texts(texts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()[:16]


def residual_pca(
    lm: LM,
    texts: Sequence[Text],
    layer: int,
    n_components: int = 8,
    read: Read | Sequence[Read] = "last",
    batch_size: int = 32,
    progress: bool | None = None,
    labels: Sequence[str] | None = None,
    orient_label: str | None = None,
) -> PCAReport:
    """PCA of the activations of ``texts`` after block ``layer``.

    Args:
        lm: the model.
        texts: strings or :class:`~steerlab.data.pairs.ChatText` (rendered with the chat template); at
            least 2.
        layer: block index (negative from the end).
        n_components: components to keep (capped at ``min(len(texts), d_model)``).
        read: where to read each text (one :data:`~steerlab.data.pairs.Read` or one per text).
        batch_size: texts per forward pass.
        progress: show a progress bar.
        labels: one label per text (e.g. ``"positive"`` / ``"negative"``) to colour points; with
            exactly two classes the report gives each component's separation of them.
        orient_label: flip each component's sign so texts with this label project above the
            others (PCA signs are otherwise arbitrary); default: scikit-learn's deterministic sign.

    Raises:
        DatasetError: fewer than 2 texts, or labels that do not match the texts.
        LayerRangeError: ``layer`` is outside the model.

    Example:
        >>> r = residual_pca(lm, stories, layer=3, n_components=4)  # doctest: +SKIP
        >>> r.to_markdown()  # doctest: +SKIP
    """
    if len(texts) < 2:
        raise DatasetError(f"PCA needs at least 2 texts, got {len(texts)}")
    if labels is not None and len(labels) != len(texts):
        raise DatasetError(f"{len(labels)} labels for {len(texts)} texts: give one label per text")
    (layer_idx,) = check_layers(lm, layer)
    rendered = [render(t, lm) for t in texts]
    acts = capture(lm, rendered, layer_idx, read, batch_size=batch_size, progress=progress)[layer_idx]
    read_desc = read if isinstance(read, (str, int, tuple)) else sorted({repr(r) for r in read})
    return activation_pca(
        lm,
        acts,
        layer_idx,
        n_components=n_components,
        labels=labels,
        orient_label=orient_label,
        settings={"read": read_desc, "batch_size": batch_size},
        data_hash=_hash_texts(rendered),
    )


def center_pairs(acts: torch.Tensor) -> torch.Tensor:
    """Subtract each pair's midpoint from interleaved ``[pos0, neg0, pos1, neg1, ...]`` rows
    (:func:`steerlab.extraction.methods.center_on_midpoints` on the two sides, interleaved again)."""
    if acts.shape[0] % 2:
        raise DatasetError(f"{acts.shape[0]} rows cannot be interleaved positive/negative pairs")
    pos, neg = center_on_midpoints(acts[0::2], acts[1::2])
    return torch.stack([pos, neg], dim=1).flatten(0, 1)


def contrast_pca(
    lm: LM,
    pairs: Sequence[ContrastPair],
    layer: int,
    n_components: int = 8,
    center: bool = False,
    batch_size: int = 32,
    progress: bool | None = None,
) -> PCAReport:
    """:func:`residual_pca` of both sides of contrast pairs, labelled ``positive`` / ``negative``.

    Each side is read at its pair's read position. Components are oriented so positives project
    above negatives, so ``report.direction(0)`` steers towards the positive side when PC1
    separates them; ``report.separation`` gives each component's Cohen's d (positive over
    negative).

    When pairs share their content (persona pairs over the same opening), the top PCs of raw
    activations usually follow the content, not the behaviour. ``center=True`` subtracts each
    pair's midpoint first (repeng's ``pca_center`` view), so the PCs describe only the
    within-pair differences.

    Example:
        >>> pairs = steerlab.persona_pairs("happy", "sad", openings[:32])  # doctest: +SKIP
        >>> r = contrast_pca(smol, pairs, layer=15, center=True)  # doctest: +SKIP
        >>> r.separation[0]  # doctest: +SKIP
        3.0
    """
    pairs = check_pairs(pairs)
    (layer_idx,) = check_layers(lm, layer)
    texts, reads = pair_texts(lm, pairs)
    acts = capture(lm, texts, layer_idx, reads, batch_size=batch_size, progress=progress)[layer_idx]
    report = activation_pca(
        lm,
        center_pairs(acts) if center else acts,
        layer_idx,
        n_components=n_components,
        labels=["positive", "negative"] * len(pairs),
        orient_label="positive",
        settings={"read": sorted({repr(r) for r in reads}), "center": center, "batch_size": batch_size},
        data_hash=pairs_hash(pairs),
    )
    kind = "Pair-centred contrast PCA" if center else "Contrast PCA"
    report.title = f"{kind} at layer {layer_idx} ({len(pairs)} pairs)"
    return report


__all__ = ["PCAReport", "activation_pca", "center_pairs", "contrast_pca", "residual_pca"]
