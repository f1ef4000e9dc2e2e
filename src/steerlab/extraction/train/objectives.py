"""The bidirectional preference objectives trained steering vectors minimise.

Each pair is scored under ``+c·v`` and/or ``−c·v`` with the model frozen (a *direction*
``d = ±1``); ``w`` is the chosen (preferred) completion, ``l`` the rejected one, ``log p_d(y)`` the
summed token log-probability of a completion under ``d·c·v`` and ``log p₀(y)`` under the unsteered
model (the reference, computed once). A pair's loss is the mean over the directions it was scored
in (both, or one drawn at random per step — BiPO's ``d ~ U{−1, 1}``).

* **BiPO** (Cao et al., NeurIPS 2024, "Personalized Steering of Large Language Models: Versatile
  Steering Vectors Through Bi-directional Preference Optimization"): DPO with the unsteered model
  as the reference, in both directions — ``+v`` must raise ``w`` over ``l`` relative to the
  reference, ``−v`` the reverse::

      m_d = [log p_d(w) − log p₀(w)] − [log p_d(l) − log p₀(l)]
      L_d = −log σ(d · β · m_d)

* **RePS** (Wu et al. 2025, "Improved Representation Steering for Language Models"):
  reference-free and length-normalised (SimPO-like); the reference only scales the winning term
  by how unlikely the unsteered model finds it::

      under +v (w wins): Δ₊ = β₊ · log p₊(w)/|w| − log p₊(l)/|l|,  β₊ = max(log p₀(l) − log p₀(w), 1)
      under −v (l wins): Δ₋ = β₋ · log p₋(l)/|l| − log p₋(w)/|w|,  β₋ = max(log p₀(w) − log p₀(l), 1)
      L_d = −log σ(β · Δ_d)

  (``β`` multiplies the reward margin as in SimPO; AxBench's RePS runs use 1.)

Example:
    >>> import torch
    >>> t = torch.tensor
    >>> two = lambda x: t([x, x])
    >>> s = Scores(t([1.0, -1.0]), t([-1.0, -3.0]), t([-3.0, -1.0]), two(-2.0), two(-2.0), two(2.0), two(2.0))
    >>> [round(x, 4) for x in OBJECTIVES["bipo"].loss(s, 1.0).tolist()]  # both directions right by 2
    [0.1269, 0.1269]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Scores:
    """Summed completion log-probabilities, one entry per (pair, direction) (each ``[m]``).

    Attributes:
        sign: the direction ``d``: ``+1`` for ``+c·v``, ``−1`` for ``−c·v``.
        lp_w, lp_l: log-probability of the chosen / rejected completion under ``d·c·v``.
        ref_w, ref_l: the same under the unsteered model.
        len_w, len_l: completion lengths in tokens.
    """

    sign: torch.Tensor
    lp_w: torch.Tensor
    lp_l: torch.Tensor
    ref_w: torch.Tensor
    ref_l: torch.Tensor
    len_w: torch.Tensor
    len_l: torch.Tensor

    def accuracy(self) -> torch.Tensor:
        """1 where the steering moved the preference the right way relative to the reference
        (``d · m_d > 0``: ``+v`` raised ``w`` over ``l``, ``−v`` raised ``l`` over ``w``)."""
        margin = (self.lp_w - self.ref_w) - (self.lp_l - self.ref_l)
        return (self.sign * margin > 0).float()


def bipo_loss(s: Scores, beta: float) -> torch.Tensor:
    """BiPO loss per (pair, direction) (see the module docs)."""
    margin = (s.lp_w - s.ref_w) - (s.lp_l - s.ref_l)
    return -F.logsigmoid(s.sign * beta * margin)


def reps_loss(s: Scores, beta: float) -> torch.Tensor:
    """RePS loss per (pair, direction) (see the module docs)."""
    positive = s.sign > 0
    win, lose = torch.where(positive, s.lp_w, s.lp_l), torch.where(positive, s.lp_l, s.lp_w)
    win_len, lose_len = torch.where(positive, s.len_w, s.len_l), torch.where(positive, s.len_l, s.len_w)
    ref_win, ref_lose = torch.where(positive, s.ref_w, s.ref_l), torch.where(positive, s.ref_l, s.ref_w)
    scale = (ref_lose - ref_win).clamp_min(1.0)
    return -F.logsigmoid(beta * (scale * win / win_len - lose / lose_len))


@dataclass(frozen=True)
class Objective:
    """A training objective: its name, a one-line summary and the loss per (pair, direction)."""

    name: str
    summary: str
    loss: Callable[[Scores, float], torch.Tensor]


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("bipo", "bi-directional preference optimisation (DPO vs the unsteered model, ±v)", bipo_loss),
        Objective("reps", "reference-free preference steering (length-normalised, scaled, ±v)", reps_loss),
    )
}
