"""Analysis tools for the seeds' open problems: what is in the residual stream, which layer
separates a behaviour, how vectors relate, and why too large a coefficient breaks the model.

* :func:`residual_pca` / :func:`contrast_pca` — PCA of residual activations; principal directions
  usable directly as steering vectors (:meth:`PCAReport.direction`).
* :func:`projection` — positive vs negative activations projected on a vector, per layer.
* :func:`layer_similarity` / :func:`vector_similarity` — cosine similarity heat maps.
* :func:`breakdown_curve` — coefficient against added-norm / residual-norm ratio, perplexity and KL.

Example:
    >>> from steerlab.analysis import breakdown_curve
    >>> rep = breakdown_curve(lm, vec, texts)  # doctest: +SKIP
    >>> rep.plot("breakdown.png")  # doctest: +SKIP
"""

from __future__ import annotations

from .breakdown import BreakdownReport, breakdown_curve
from .pca import PCAReport, activation_pca, center_pairs, contrast_pca, residual_pca
from .projection import LayerProjection, ProjectionReport, projection
from .similarity import SimilarityReport, layer_similarity, vector_similarity

__all__ = [
    "BreakdownReport",
    "LayerProjection",
    "PCAReport",
    "ProjectionReport",
    "SimilarityReport",
    "activation_pca",
    "breakdown_curve",
    "center_pairs",
    "contrast_pca",
    "layer_similarity",
    "projection",
    "residual_pca",
    "vector_similarity",
]
