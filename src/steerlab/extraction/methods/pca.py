"""RepE / repeng reading vectors: the first principal component of contrast activations.

* ``pca_diff`` — PCA (centred, as scikit-learn does) of the pair differences ``pos − neg``.
* ``pca_center`` — PCA of the activations after centring each pair on its midpoint.

A principal component has no sign, so it must be **oriented**. Two rules are in use:

* ``"majority"`` (repeng): positives project above negatives in *most pairs* — the sign of the
  vote ``share((pos − neg) · u > 0) − share((pos − neg) · u < 0)`` (a tie falls back to the mean gap);
* ``"mean_gap"`` (steerlab before issue 13): positives project above negatives *on average* — the
  sign of the mean projected gap ``mean((pos − neg) · u)``, i.e. the side of the mean difference.

They disagree when the per-pair gaps are skewed: a few pairs with large gaps on one side, most
pairs with small gaps on the other — typical where PC1 is only loosely tied to the concept (on
SmolLM2-135M happy/sad persona data, layers 9, 14 and 17 of 8–19). steerlab orients by the
**majority**, the rule that generalised on held-out data: steering each layer alone with both
signs and reading the sentiment of held-out continuations (docs/results.md, "pca_diff
orientation"), the majority sign was right at 5 of the 6 layers whose effect was clear and at
both clear layers where the rules disagree, the mean-gap sign at 3 of 6 and at neither. The mean
gap is pulled by a few outlying pairs; the vote is not (a median, not a mean).

Every layer's orientation and its confidence are recorded in the vector's
``meta["per_layer"][str(layer)]`` (see :func:`orientation`): ``pair_agreement`` (share of pairs
whose gap has the stored sign), ``sign_confidence`` (share of bootstrap resamples of the pairs
whose majority keeps that sign), ``mean_gap_confidence`` (the same for the mean gap's sign),
``signs`` (each rule's sign relative to the stored direction) and ``rules_agree``.
:func:`reorient` turns a vector into the other rule's orientation from that metadata.

Both are scaled to the absolute mean projected difference (as
:func:`steerlab.extraction.methods.scale_to_pairs`), so coefficient 1 moves activations by about one gap.

Example:
    >>> import torch
    >>> _ = torch.manual_seed(1)
    >>> pos, neg = torch.randn(8, 4) + torch.tensor([3.0, 0, 0, 0]), torch.randn(8, 4)
    >>> bool(fit_pca_center(pos, neg)[0] > 0)
    True
    >>> info = orientation(pos, neg, fit_pca_diff(pos, neg))
    >>> info["rule"], info["pair_agreement"] > 0.5, info["rules_agree"]
    ('majority', True, True)
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from sklearn.decomposition import PCA

from ...errors import DatasetError, SteeringSpecError
from ..readout import ReadOutMethod
from . import center_on_midpoints, register

RULE = "majority"
"""The orientation rule steerlab uses for ``pca_diff`` / ``pca_center``."""

RULES = ("majority", "mean_gap")


def _first_pc(x: torch.Tensor) -> torch.Tensor:
    if x.shape[0] < 2:
        raise DatasetError("PCA needs at least 2 contrast pairs")
    pca = PCA(n_components=1, svd_solver="full").fit(x.double().numpy())
    return torch.tensor(pca.components_[0], dtype=torch.float32)


def _gaps(pos: torch.Tensor, neg: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Each pair's projected gap ``(pos − neg) · u`` on the unit direction (float64)."""
    unit = direction.double() / direction.double().norm().clamp_min(1e-12)
    return (pos.double() - neg.double()) @ unit


def _vote(gaps: torch.Tensor) -> int:
    """The majority rule's sign: +1 when more pairs have a positive gap, -1 when fewer, else the
    mean gap's sign."""
    above, below = int((gaps > 0).sum()), int((gaps < 0).sum())
    if above != below:
        return 1 if above > below else -1
    return 1 if float(gaps.mean()) >= 0 else -1


def oriented(direction: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, rule: str = RULE) -> torch.Tensor:
    """``direction`` oriented by ``rule`` and scaled to the absolute mean projected gap.

    Example:
        >>> pos = torch.tensor([[1.0], [1.0], [1.0], [-9.0]]); neg = torch.zeros(4, 1)
        >>> oriented(torch.tensor([1.0]), pos, neg), oriented(torch.tensor([1.0]), pos, neg, "mean_gap")
        (tensor([1.5000]), tensor([-1.5000]))
    """
    if rule not in RULES:
        raise SteeringSpecError(f"orientation rule {rule!r}: use one of {', '.join(RULES)}")
    unit = direction.float() / direction.float().norm().clamp_min(1e-12)
    gaps = _gaps(pos, neg, unit)
    mean = float(gaps.mean())
    sign = _vote(gaps) if rule == "majority" else (1 if mean >= 0 else -1)
    scale = abs(mean)
    return sign * unit * (scale if scale > 0 else 1.0)


def fit_pca_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """First principal component of ``pos − neg`` (centred), oriented by the majority of pairs and scaled."""
    return oriented(_first_pc(pos - neg), pos, neg)


def fit_pca_center(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """First principal component of pair-centred activations, oriented by the majority of pairs and scaled."""
    return oriented(_first_pc(torch.cat(center_on_midpoints(pos, neg))), pos, neg)


def orientation(
    pos: torch.Tensor, neg: torch.Tensor, direction: torch.Tensor, n_bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """How sure the sign of ``direction`` is, from the pairs it was fitted on.

    Returns:
        ``rule`` (the rule steerlab orients by), ``mean_gap`` (mean projected gap on the unit
        direction), ``pair_agreement`` (share of pairs with a positive gap), ``sign_confidence``
        (share of ``n_bootstrap`` resamples of the pairs whose majority vote is positive),
        ``mean_gap_confidence`` (share of resamples whose mean gap is positive), ``signs``
        (``{rule: +1 or -1}``: whether each rule keeps or flips the stored direction) and
        ``rules_agree``.

    Example:
        >>> pos = torch.tensor([[1.0], [1.0], [1.0], [-9.0]]); neg = torch.zeros(4, 1)
        >>> o = orientation(pos, neg, torch.tensor([1.0]))  # most pairs say +, the mean gap says -
        >>> o["pair_agreement"], o["signs"], o["rules_agree"]
        (0.75, {'majority': 1, 'mean_gap': -1}, False)
    """
    gaps = _gaps(pos, neg, direction)
    n = gaps.shape[0]
    if n == 0:
        raise DatasetError("orientation needs at least one pair")
    signs = {"majority": _vote(gaps), "mean_gap": 1 if float(gaps.mean()) >= 0 else -1}
    vote_conf = gap_conf = float("nan")
    if n_bootstrap > 0:
        idx = torch.randint(0, n, (n_bootstrap, n), generator=torch.Generator().manual_seed(seed))
        sample = gaps[idx]
        votes = (sample > 0).sum(1) - (sample < 0).sum(1)
        vote_conf = float(((votes > 0) | ((votes == 0) & (sample.mean(1) >= 0))).double().mean())
        gap_conf = float((sample.mean(1) >= 0).double().mean())
    return {
        "rule": RULE,
        "mean_gap": float(gaps.mean()),
        "pair_agreement": float((gaps > 0).double().mean()),
        "sign_confidence": vote_conf,
        "mean_gap_confidence": gap_conf,
        "signs": signs,
        "rules_agree": signs["majority"] == signs["mean_gap"],
    }


def reorient(vector: Any, rule: str) -> Any:
    """``vector`` oriented by ``rule`` (``"majority"`` or ``"mean_gap"``), from the orientation
    metadata :func:`steerlab.extract` stored per layer; layers without it are kept as they are.

    Example:
        >>> old_style = reorient(vec, "mean_gap")  # doctest: +SKIP
        >>> old_style.meta["orientation"], old_style.meta["flipped_layers"]  # doctest: +SKIP
        ('mean_gap', [9, 14, 17])

    Raises:
        SteeringSpecError: an unknown rule.
    """
    if rule not in RULES:
        raise SteeringSpecError(f"orientation rule {rule!r}: use one of {', '.join(RULES)}")
    per_layer = vector.meta.get("per_layer", {})
    flips = [k for k in vector.layers if (per_layer.get(str(k)) or {}).get("signs", {}).get(rule, 1) < 0]
    directions = {k: -t if k in flips else t for k, t in vector.directions.items()}
    return replace(vector, directions=directions, meta={**vector.meta, "orientation": rule, "flipped_layers": flips})


register(
    ReadOutMethod(
        "pca_diff", fit_pca_diff, "first PC of pair differences (RepE/repeng)", min_pairs=2, diagnose=orientation
    )
)
register(
    ReadOutMethod(
        "pca_center", fit_pca_center, "first PC of pair-centred activations (repeng)", min_pairs=2, diagnose=orientation
    )
)
