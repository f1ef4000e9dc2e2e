"""Why too large a coefficient breaks the model: added norm against residual-stream norm.

Adding ``c·v`` to the residual stream is harmless while ``|c·v|`` is small next to the typical
norm of the stream at that layer; once it is comparable, the added direction swamps what the
model wrote there and the next-token distributions collapse. :func:`breakdown_curve` measures,
for each coefficient ``c``:

* the **norm ratio** ``|c·v_l| / mean_t |h_l(t)|`` at every steered layer ``l`` (the mean is
  over real tokens of the texts, unsteered, leaving out each text's first token — an attention
  sink with an outsized norm), and its maximum over the layers; also the *cumulative* ratio
  ``|c·sum_{k<=l} v_k| / mean |h_l|``, since with several steered layers the stream at layer
  ``l`` carries all the additions made up to it;
* the **perplexity** of the texts under the steered model and its ratio to the unsteered one;
* the mean per-token **KL(unsteered || steered)** of next-token distributions;

and the **breaking point**: the smallest ``|c|`` whose perplexity exceeds ``threshold`` (2) times
the unsteered perplexity.

Example:
    >>> from steerlab.analysis import breakdown_curve
    >>> from steerlab import load_texts
    >>> texts = load_texts("../shared/data/repe/facts_true_false.csv", limit=8)  # doctest: +SKIP
    >>> rep = breakdown_curve(lm, vec, texts, coefficients=(0, 1, 4, 16))  # doctest: +SKIP
    >>> rep.breaking_point, round(rep.breaking_norm_ratio, 2)  # SmolLM2, happy/sad, layers 8-19  # doctest: +SKIP
    (4.0, 0.22)
    >>> rep.plot("breakdown.png")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.steering import Steering, SteeringLike
from ..core.vector import SteeringVector
from ..evaluate.cost import CostReport, cost_curve, cost_settings, run_stats
from ..evaluate.report import fmt, new_figure, save_figure
from ..models.load import LM

DEFAULT_COEFFICIENTS: tuple[float, ...] = (
    -16.0, -8.0, -4.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0,
)  # fmt: skip
"""Log-spaced symmetric grid used when no coefficients are given."""

BREAK_THRESHOLD = 2.0
"""Perplexity ratio above which the model counts as broken."""


def _log_minor() -> Any:
    from matplotlib.ticker import LogLocator

    return LogLocator(base=10.0, subs=tuple(range(2, 10)))


def _smallest_breaking(coefs: Sequence[float], ratios: Sequence[float], threshold: float) -> float | None:
    broken = [abs(c) for c, r in zip(coefs, ratios) if r > threshold]
    return min(broken) if broken else None


@dataclass
class BreakdownReport(CostReport):
    """Norm ratio, perplexity and KL per coefficient, and where the model breaks: a
    :class:`~steerlab.evaluate.cost.CostReport` (coefficients, perplexity, ppl_ratio, kl,
    base_perplexity, text counts) with the norms and breaking points.

    Attributes:
        norm_ratio: ``max_l |c·v_l| / mean |h_l|`` per coefficient.
        cumulative_norm_ratio: ``max_l |c·sum_{k<=l} v_k| / mean |h_l|`` per coefficient (over
            the steered layers ``k``): what the stream at layer ``l`` carries when several layers
            are steered.
        layer_norm_ratio: ``{layer: [|c·v_l| / mean |h_l| per coefficient]}``.
        residual_norm: ``{layer: mean per-token residual norm}`` (unsteered).
        vector_norm: ``{layer: |v_l|}``.
        threshold: the perplexity ratio that counts as broken.
        breaking_point: smallest ``|c|`` with ``ppl_ratio > threshold`` (``None``: never).
        breaking_point_positive, breaking_point_negative: the same per sign of ``c``.
        breaking_norm_ratio: the norm ratio at ``breaking_point``.
    """

    norm_ratio: list[float] = field(default_factory=list)
    cumulative_norm_ratio: list[float] = field(default_factory=list)
    layer_norm_ratio: dict[int, list[float]] = field(default_factory=dict)
    residual_norm: dict[int, float] = field(default_factory=dict)
    vector_norm: dict[int, float] = field(default_factory=dict)
    threshold: float = BREAK_THRESHOLD
    breaking_point: float | None = None
    breaking_point_positive: float | None = None
    breaking_point_negative: float | None = None
    breaking_norm_ratio: float | None = None

    @property
    def ratio_per_unit(self) -> float:
        """Norm ratio added per unit of ``|c|`` (max over layers of ``|v_l| / mean |h_l|``)."""
        return max(
            (self.vector_norm[k] / n for k, n in self.residual_norm.items() if n > 0),
            default=float("nan"),
        )

    def rows(self) -> list[dict[str, Any]]:
        """One row per coefficient: ``coefficient, norm_ratio, ppl, ppl_ratio, kl``."""
        return [
            {"coefficient": c, "norm_ratio": nr, "ppl": p, "ppl_ratio": r, "kl": k}
            for c, nr, p, r, k in zip(self.coefficients, self.norm_ratio, self.perplexity, self.ppl_ratio, self.kl)
        ]

    def to_markdown(self) -> str:
        """The table, the breaking point and the per-layer norms."""
        if self.breaking_point is None:
            bp = "never"
        else:
            i = [abs(c) for c in self.coefficients].index(self.breaking_point)
            bp = (
                f"|c| = {fmt(self.breaking_point)} (norm ratio {fmt(self.breaking_norm_ratio)}, "
                f"cumulative over the steered layers {fmt(self.cumulative_norm_ratio[i])})"
            )
        layers = ", ".join(
            f"L{k}: |v|={self.vector_norm[k]:.3g}, mean |h|={self.residual_norm[k]:.3g}" for k in self.residual_norm
        )
        summary = (
            f"\n\nUnsteered perplexity {self.base_perplexity:.4g} on {self.n_texts} texts "
            f"({self.n_tokens} predicted tokens, {self.skipped} skipped). "
            f"Breaking point (perplexity > {self.threshold:g}x unsteered): {bp}; "
            f"positive side {fmt(self.breaking_point_positive)}, negative side {fmt(self.breaking_point_negative)}."
            f"\n\nPer layer: {layers}."
        )
        return super().to_markdown() + summary

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Perplexity ratio (log scale, left) and KL (right) against the coefficient, the norm
        ratio on the top axis, the breaking point as a vertical line."""
        order = sorted(range(len(self.coefficients)), key=lambda i: self.coefficients[i])
        xs = [self.coefficients[i] for i in order]
        ppl = [self.ppl_ratio[i] for i in order]
        kl = [self.kl[i] for i in order]
        nr = [self.norm_ratio[i] for i in order]
        fig = new_figure(8.0, 5.0)
        ax = fig.add_subplot(1, 1, 1)
        nonzero = sorted(abs(x) for x in xs if x != 0)
        symlog = bool(nonzero) and nonzero[-1] / nonzero[0] >= 8
        if symlog:
            ax.set_xscale("symlog", linthresh=nonzero[0], linscale=0.5)
        ax.plot(xs, ppl, "o-", color="tab:blue", label="perplexity ratio (left)")
        ax.axhline(self.threshold, color="tab:blue", lw=0.8, ls="--", label=f"{self.threshold:g}x perplexity")
        ax.axhline(1.0, color="grey", lw=0.6, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel("steering coefficient c" + (" (symlog scale)" if symlog else ""))
        ax.set_ylabel("perplexity / unsteered perplexity (log)", color="tab:blue")
        ax.grid(alpha=0.3, which="both")
        right = ax.twinx()
        right.plot(xs, kl, "s-", color="tab:red", label="KL(unsteered || steered) (right)")
        right.set_ylabel("mean KL [nats/token]", color="tab:red")
        right.set_ylim(bottom=0)
        lo, hi = ax.get_xlim()
        if self.breaking_point is not None:
            for side, bp in ((1, self.breaking_point_positive), (-1, self.breaking_point_negative)):
                if bp is None:
                    continue
                ax.axvline(side * bp, color="black", lw=1.2, ls="-.")
                ax.axvspan(side * bp, hi if side > 0 else lo, color="tab:red", alpha=0.06)
            ax.plot([], [], color="black", ls="-.", label=f"breaking point |c|={self.breaking_point:g}")
        ax.set_xlim(lo, hi)
        # the same ticks below (coefficient) and on top (norm ratio), thinned to about 9
        step = max(1, math.ceil(len(xs) / 9))
        anchor = min(range(len(xs)), key=lambda i: abs(xs[i]))  # keep the tick closest to 0
        picked = [i for i in range(len(xs)) if (i - anchor) % step == 0]
        ax.set_xticks([xs[i] for i in picked])
        ax.set_xticklabels([f"{xs[i]:g}" for i in picked])
        ax.minorticks_off()
        ax.yaxis.set_minor_locator(_log_minor())
        top = ax.twiny()
        if symlog:
            top.set_xscale("symlog", linthresh=nonzero[0], linscale=0.5)
        top.set_xlim(lo, hi)
        top.set_xticks([xs[i] for i in picked])
        top.set_xticklabels([f"{nr[i]:.2g}" for i in picked], fontsize=8)
        top.minorticks_off()
        top.set_xlabel("added norm / mean residual norm  |c·v_l| / mean|h_l|  (max over steered layers)")
        handles, labels = ax.get_legend_handles_labels()
        h2, l2 = right.get_legend_handles_labels()
        ax.legend(handles + h2, labels + l2, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8)
        title = self.title or "steering breakdown"
        fig.suptitle(f"{title}\nunsteered ppl {self.base_perplexity:.3g} on {self.n_texts} texts", fontsize=10)
        return save_figure(fig, path)


def breakdown_curve(
    lm: LM,
    vector: SteeringVector,
    texts: Sequence[str],
    coefficients: Sequence[float] | None = None,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool | None = None,
    threshold: float = BREAK_THRESHOLD,
    include_first_token: bool = False,
) -> BreakdownReport:
    """Sweep the coefficient of ``vector`` (added at every position of ``layers``) on ``texts``
    and measure norm ratio, perplexity and KL; find where perplexity passes ``threshold`` x.

    Args:
        lm: the model.
        vector: a one-direction steering vector (``method="actadd"`` vectors: use
            ``vector.token_mean()``).
        texts: neutral held-out texts (see :func:`steerlab.load_texts`).
        coefficients: the grid (default :data:`DEFAULT_COEFFICIENTS`, 0 and ±0.25 ... ±16).
        layers: the vector's layers to steer (default: all of them).
        batch_size: texts per forward pass.
        progress: show a progress bar.
        threshold: perplexity ratio that counts as broken.
        include_first_token: count each text's first token in the mean residual norm (it is an
            attention sink with an outsized norm in most models, so it is left out by default).

    Example:
        >>> rep = breakdown_curve(lm, vec, ["The dog ran to the park."], coefficients=(0, 2, 8))  # doctest: +SKIP
        >>> [r["norm_ratio"] for r in rep.rows()]  # linear in |c|  # doctest: +SKIP
        [0.0, 1.3, 5.2]

    Raises:
        DatasetError: no texts, or none with 2 or more tokens.
        LayerRangeError: ``layers`` not in the vector.
        SteeringSpecError: a token-wise vector.
    """
    coefs = [float(c) for c in (DEFAULT_COEFFICIENTS if coefficients is None else coefficients)]
    used = list(Steering(vector, 0.0, layers=layers, positions="all").active_layers)
    steerings: list[SteeringLike | None] = [Steering(vector, c, layers=used, positions="all") for c in coefs]
    stats, residual = run_stats(
        lm, texts, steerings, batch_size=batch_size, progress=progress,
        norm_layers=used, norm_skip_first=not include_first_token,
    )  # fmt: skip
    vnorm = {k: float(vector.directions[k].norm()) for k in used}
    unit_per_layer = {k: vnorm[k] / residual[k] if residual[k] > 0 else float("inf") for k in used}
    per_layer = {k: [abs(c) * unit_per_layer[k] for c in coefs] for k in used}
    ratio = [max(per_layer[k][i] for k in used) for i in range(len(coefs))]
    curve = cost_curve(coefs, stats)
    ppl_ratio = curve["ppl_ratio"]
    bp = _smallest_breaking(coefs, ppl_ratio, threshold)
    pos = _smallest_breaking([c for c in coefs if c > 0], [r for c, r in zip(coefs, ppl_ratio) if c > 0], threshold)
    neg = _smallest_breaking([c for c in coefs if c < 0], [r for c, r in zip(coefs, ppl_ratio) if c < 0], threshold)
    unit = max(unit_per_layer.values())
    # with several steered layers the stream at layer l carries every addition made at or before
    # it: |c·sum_{k<=l} v_k| / mean|h_l| is the perturbation the model actually sees there
    running = torch.zeros_like(vector.directions[used[0]])
    cum_unit = 0.0
    for k in used:
        running = running + vector.directions[k]
        cum_unit = max(cum_unit, float(running.norm()) / residual[k] if residual[k] > 0 else float("inf"))
    contiguous = used == list(range(used[0], used[-1] + 1))
    span = f"{used[0]}-{used[-1]}" if contiguous and len(used) > 1 else ", ".join(map(str, used))
    return BreakdownReport(
        title=f"breakdown of a {vector.method} vector on {lm.model_id} (layers {span})",
        settings={
            **cost_settings(lm, vector, layers=used, positions="all", operator="add", batch_size=batch_size),
            "include_first_token": include_first_token,
        },
        **curve,
        norm_ratio=ratio,
        cumulative_norm_ratio=[abs(c) * cum_unit for c in coefs],
        layer_norm_ratio=per_layer,
        residual_norm=residual,
        vector_norm=vnorm,
        threshold=threshold,
        breaking_point=bp,
        breaking_point_positive=pos,
        breaking_point_negative=neg,
        breaking_norm_ratio=None if bp is None else bp * unit,
    )
