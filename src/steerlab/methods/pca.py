"""RepE / repeng reading vectors: the first principal component of contrast activations.

* ``pca_diff`` — PCA (centred, as scikit-learn does) of the pair differences ``pos − neg``.
* ``pca_center`` — PCA of the activations after centring each pair on its midpoint.

A principal component has no sign, so it must be **oriented**. Two rules are in use:

* ``"mean_gap"`` (steerlab): positives project above negatives *on average* — the sign of the mean
  projected gap ``mean((pos − neg) · u)``, i.e. the side of the mean-difference vector;
* ``"majority"`` (repeng): positives project above negatives in *most pairs* — the sign of the
  median-like vote ``share((pos − neg) · u > 0) − ½``.

They disagree when the per-pair gaps are skewed (a few pairs with large gaps on one side, most
pairs with small gaps on the other). steerlab keeps ``"mean_gap"``: on held-out sentiment it is
the rule that generalises (docs/results.md, "pca_diff orientation": steering each layer with
the two signs, the mean-gap sign moved held-out continuations the intended way where the rules
disagreed; see ``scripts/results.py``). Whatever the rule, every layer's orientation and its
confidence are recorded in the vector's ``meta["per_layer"][layer]`` (see :func:`orientation`):
``pair_agreement`` (share of pairs whose gap has the chosen sign), ``sign_confidence`` (share
of bootstrap resamples of the pairs whose mean gap keeps the sign) and ``rules_agree``.
:func:`reorient` turns a vector into the other rule's orientation from that metadata.

Both are scaled to the mean projected difference (see :func:`steerlab.methods.scale_to_pairs`).

Example:
    >>> import torch
    >>> pos, neg = torch.randn(8, 4) + torch.tensor([3.0, 0, 0, 0]), torch.randn(8, 4)
    >>> bool(fit_pca_center(pos, neg)[0] > 0)
    True
    >>> info = orientation(pos, neg, fit_pca_diff(pos, neg))
    >>> info["rule"], info["sign_confidence"] > 0.5
    ('mean_gap', True)
"""

from __future__ import annotations

from typing import Any

import torch
from sklearn.decomposition import PCA

from ..errors import DatasetError, SteeringSpecError
from . import Method, center_on_midpoints, register, scale_to_pairs

RULE = "mean_gap"
"""The orientation rule steerlab uses for ``pca_diff`` / ``pca_center``."""

RULES = ("mean_gap", "majority")


def _first_pc(x: torch.Tensor) -> torch.Tensor:
    if x.shape[0] < 2:
        raise DatasetError("PCA needs at least 2 contrast pairs")
    pca = PCA(n_components=1, svd_solver="full").fit(x.double().numpy())
    return torch.tensor(pca.components_[0], dtype=torch.float32)


def fit_pca_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """First principal component of ``pos − neg`` (centred), oriented by the mean gap and scaled."""
    return scale_to_pairs(_first_pc(pos - neg), pos, neg)


def fit_pca_center(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """First principal component of pair-centred activations, oriented by the mean gap and scaled."""
    return scale_to_pairs(_first_pc(torch.cat(center_on_midpoints(pos, neg))), pos, neg)


def orientation(
    pos: torch.Tensor, neg: torch.Tensor, direction: torch.Tensor, n_bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """How sure the sign of ``direction`` is, from the pairs it was fitted on.

    Returns:
        ``rule`` (the rule that oriented it), ``mean_gap`` (mean projected gap on the unit
        direction), ``pair_agreement`` (share of pairs with a positive gap), ``sign_confidence``
        (share of ``n_bootstrap`` resamples of the pairs whose mean gap is positive),
        ``majority_sign`` (``+1`` when most pairs agree with the stored sign, ``-1`` when the
        majority rule would flip it, ``0`` on a tie) and ``rules_agree``.

    Example:
        >>> pos = torch.tensor([[1.0], [1.0], [1.0], [-9.0]]); neg = torch.zeros(4, 1)
        >>> o = orientation(pos, neg, torch.tensor([-1.0]))  # mean gap says -, most pairs say +
        >>> o["pair_agreement"], o["majority_sign"], o["rules_agree"]
        (0.25, -1, False)
    """
    unit = direction.float() / direction.float().norm().clamp_min(1e-12)
    gaps = ((pos.float() - neg.float()) @ unit).double()
    n = gaps.shape[0]
    above, below = int((gaps > 0).sum()), int((gaps < 0).sum())
    generator = torch.Generator().manual_seed(seed)
    if n_bootstrap > 0 and n > 0:
        idx = torch.randint(0, n, (n_bootstrap, n), generator=generator)
        confidence = float((gaps[idx].mean(1) > 0).double().mean())
    else:
        confidence = float("nan")
    majority = 1 if above > below else -1 if below > above else 0
    return {
        "rule": RULE,
        "mean_gap": float(gaps.mean()) if n else float("nan"),
        "pair_agreement": above / n if n else float("nan"),
        "sign_confidence": confidence,
        "majority_sign": majority,
        "rules_agree": majority >= 0,
    }


def reorient(vector: Any, rule: str) -> Any:
    """``vector`` oriented by ``rule`` (``"mean_gap"`` or ``"majority"``), from the orientation
    metadata :func:`steerlab.extract` stored per layer; layers without it are kept as they are.

    Example:
        >>> repeng_like = reorient(vec, "majority")  # doctest: +SKIP
        >>> repeng_like.meta["orientation"]  # doctest: +SKIP
        'majority'

    Raises:
        SteeringSpecError: an unknown rule.
    """
    if rule not in RULES:
        raise SteeringSpecError(f"orientation rule {rule!r}: use one of {', '.join(RULES)}")
    per_layer = vector.meta.get("per_layer", {})
    flips = []
    directions = {}
    for layer, t in vector.directions.items():
        info = per_layer.get(str(layer)) or per_layer.get(layer) or {}
        flip = rule == "majority" and info.get("majority_sign", 1) < 0
        directions[layer] = -t if flip else t
        if flip:
            flips.append(layer)
    from dataclasses import replace

    return replace(vector, directions=directions, meta={**vector.meta, "orientation": rule, "flipped_layers": flips})


register(Method("pca_diff", fit_pca_diff, "first PC of pair differences (RepE/repeng)", min_pairs=2,
                diagnose=orientation))
register(Method("pca_center", fit_pca_center, "first PC of pair-centred activations (repeng)", min_pairs=2,
                diagnose=orientation))
