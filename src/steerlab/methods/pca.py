"""RepE / repeng reading vectors: the first principal component of contrast activations.

* ``pca_diff`` — PCA (centred, as scikit-learn does) of the pair differences ``pos − neg``.
* ``pca_center`` — PCA of the activations after centring each pair on its midpoint.

Both are sign-corrected (positives project above negatives) and scaled to the mean projected
difference (see :func:`steerlab.methods.scale_to_pairs`).

Example:
    >>> import torch
    >>> pos, neg = torch.randn(8, 4) + torch.tensor([3.0, 0, 0, 0]), torch.randn(8, 4)
    >>> bool(fit_pca_center(pos, neg)[0] > 0)
    True
"""

from __future__ import annotations

import torch
from sklearn.decomposition import PCA

from ..errors import DatasetError
from . import Method, center_on_midpoints, register, scale_to_pairs


def _first_pc(x: torch.Tensor) -> torch.Tensor:
    if x.shape[0] < 2:
        raise DatasetError("PCA needs at least 2 contrast pairs")
    pca = PCA(n_components=1, svd_solver="full").fit(x.double().numpy())
    return torch.tensor(pca.components_[0], dtype=torch.float32)


def fit_pca_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """First principal component of ``pos − neg`` (centred), oriented and scaled."""
    return scale_to_pairs(_first_pc(pos - neg), pos, neg)


def fit_pca_center(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """First principal component of pair-centred activations, oriented and scaled."""
    return scale_to_pairs(_first_pc(torch.cat(center_on_midpoints(pos, neg))), pos, neg)


register(Method("pca_diff", fit_pca_diff, "first PC of pair differences (RepE/repeng)", min_pairs=2))
register(Method("pca_center", fit_pca_center, "first PC of pair-centred activations (repeng)", min_pairs=2))
