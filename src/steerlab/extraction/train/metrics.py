"""How strongly a vector separates preference pairs: the steering margin and win rate.

For each pair, the **steering margin** is how much more ``+c·v`` prefers the chosen completion
over the rejected one than ``−c·v`` does (summed token log-probabilities)::

    margin = [log p₊(w) − log p₊(l)] − [log p₋(w) − log p₋(l)]

A pair is *won* when its margin is positive. Measured on held-out pairs, this compares any two
vectors — trained or read out — on the same footing (rescale them to equal norms first: the margin
grows with the norm).

Example:
    >>> m = preference_margin(lm, vec, held_out_pairs, coefficient=1.0)  # doctest: +SKIP
    >>> m.win_rate, m.mean  # doctest: +SKIP
    (0.9, 3.1)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ...core.positions import positions_key
from ...core.vector import SteeringVector
from ...data.preference import preference_pairs
from ...errors import SteeringSpecError
from ...models.load import LM
from .encode import encode_pairs
from .forward import completion_logps, pair_rows


@dataclass(frozen=True)
class PreferenceMargin:
    """Steering margins of a vector on preference pairs.

    Attributes:
        margins: one per pair.
        mean: their mean.
        win_rate: share of pairs with a positive margin.
        coefficient: the ``c`` of ``±c·v``.
        positions: where the vector acted.
    """

    margins: list[float]
    mean: float
    win_rate: float
    coefficient: float
    positions: str


def preference_margin(
    lm: LM,
    vector: SteeringVector,
    pairs: Sequence[Any],
    coefficient: float = 1.0,
    positions: str = "generated",
    batch_size: int = 8,
) -> PreferenceMargin:
    """The steering margin of ``vector`` on every pair (see the module docs).

    Args:
        lm: the model.
        vector: any (non-token-wise) steering vector made for ``lm``.
        pairs: preference data (anything :func:`steerlab.data.preference.preference_pairs` takes).
        coefficient: ``c`` (> 0).
        positions: ``"generated"`` (completion tokens) or ``"all"``.
        batch_size: pairs per forward pass.

    Raises:
        SteeringSpecError: a coefficient <= 0 or other positions.
    """
    if not coefficient > 0:
        raise SteeringSpecError(f"coefficient={coefficient!r} must be > 0 (the margin compares +c with −c)")
    if positions_key(positions) not in ("generated", "all"):
        raise SteeringSpecError(f"positions={positions!r}: use 'generated' or 'all'")
    vector.check_model(lm)
    enc = encode_pairs(lm, preference_pairs(pairs))
    margins: list[float] = []
    for start in range(0, len(enc), batch_size):
        chunk = enc[start : start + batch_size]
        prompts, rows, prompt_steering = pair_rows(chunk, [(coefficient, -coefficient)] * len(chunk), vector, positions)
        with torch.inference_mode():
            lp = completion_logps(lm, prompts, rows, prompt_steering).view(len(chunk), 2, 2)
        margins += ((lp[:, 0, 0] - lp[:, 0, 1]) - (lp[:, 1, 0] - lp[:, 1, 1])).tolist()
    return PreferenceMargin(
        margins=margins,
        mean=sum(margins) / len(margins),
        win_rate=sum(m > 0 for m in margins) / len(margins),
        coefficient=float(coefficient),
        positions=positions,
    )
