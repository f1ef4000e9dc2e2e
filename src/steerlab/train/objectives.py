"""The bidirectional preference objectives trained steering vectors minimise.

Both score every pair under ``+c·v`` and ``−c·v`` with the model frozen; ``w`` is the chosen
(preferred) completion, ``l`` the rejected one, ``log p±(y)`` the summed token log-probability of a
completion under ``±c·v`` and ``log p₀(y)`` under the unsteered model (the reference, computed once).

* **BiPO** (Cao et al., NeurIPS 2024, "Personalized Steering of Large Language Models: Versatile
  Steering Vectors Through Bi-directional Preference Optimization"): DPO with the unsteered model
  as the reference, in both directions — ``+v`` must raise ``w`` over ``l`` relative to the
  reference, ``−v`` the reverse::

      m± = [log p±(w) − log p₀(w)] − [log p±(l) − log p₀(l)]
      L  = ½ [−log σ(β m₊) − log σ(−β m₋)]

* **RePS** (Wu et al. 2025, "Improved Representation Steering for Language Models"):
  reference-free and length-normalised (SimPO-like); the reference only scales the winning term
  by how unlikely the unsteered model finds it, ``β₊ = max(log p₀(l) − log p₀(w), 1)``::

      Δ₊ = β₊ · log p₊(w)/|w| − log p₊(l)/|l|        (under +v, w wins)
      Δ₋ = β₋ · log p₋(l)/|l| − log p₋(w)/|w|,  β₋ = max(log p₀(w) − log p₀(l), 1)
      L  = ½ [−log σ(β Δ₊) − log σ(β Δ₋)]

  (``β`` multiplies the reward margin as in SimPO; AxBench's RePS runs use 1.)

Example:
    >>> import torch
    >>> s = Scores(*(torch.tensor([x]) for x in (-1.0, -3.0, -3.0, -1.0, -2.0, -2.0, 2.0, 2.0)))
    >>> round(float(OBJECTIVES["bipo"].loss(s, 1.0)), 4)  # both directions right by a margin of 2
    0.1269
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Scores:
    """Summed completion log-probabilities of a batch of pairs (each ``[n]``)."""

    pos_w: torch.Tensor
    pos_l: torch.Tensor
    neg_w: torch.Tensor
    neg_l: torch.Tensor
    ref_w: torch.Tensor
    ref_l: torch.Tensor
    len_w: torch.Tensor
    len_l: torch.Tensor

    def accuracy(self) -> torch.Tensor:
        """Per pair, 1 when ``+v`` prefers ``w`` more than ``−v`` does (the steering margin is positive)."""
        margin = (self.pos_w - self.pos_l) - (self.neg_w - self.neg_l)
        return (margin > 0).float()


def bipo_loss(s: Scores, beta: float) -> torch.Tensor:
    """Per-pair BiPO loss (see the module docs)."""
    m_pos = (s.pos_w - s.ref_w) - (s.pos_l - s.ref_l)
    m_neg = (s.neg_w - s.ref_w) - (s.neg_l - s.ref_l)
    return -(F.logsigmoid(beta * m_pos) + F.logsigmoid(-beta * m_neg)) / 2


def reps_loss(s: Scores, beta: float) -> torch.Tensor:
    """Per-pair RePS loss (see the module docs)."""
    scale_pos = (s.ref_l - s.ref_w).clamp_min(1.0)
    scale_neg = (s.ref_w - s.ref_l).clamp_min(1.0)
    d_pos = scale_pos * s.pos_w / s.len_w - s.pos_l / s.len_l
    d_neg = scale_neg * s.neg_l / s.len_l - s.neg_w / s.len_w
    return -(F.logsigmoid(beta * d_pos) + F.logsigmoid(beta * d_neg)) / 2


@dataclass(frozen=True)
class Objective:
    """A training objective: its name, a one-line summary and the per-pair loss."""

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
