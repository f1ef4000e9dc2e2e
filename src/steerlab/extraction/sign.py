"""Where the sign of a projection tells the two sides apart: the layers at which the ``push`` and
``rotate`` operators' sign condition means something.

Selective Steering (arXiv 2601.19375) steers only at layers where positive and negative examples
project on the direction with *opposite signs*: there ``h·u > 0`` reads as "already on the positive
side", so an operator that moves only tokens of the wrong sign (:class:`~steerlab.core.operators.Push`
with ``|c| = 1``, :class:`~steerlab.core.operators.Rotate` with ``selective=1``) spends its push only
where the model is not there yet. At the other layers a common offset puts both sides on one side
of zero, and the sign condition would move every token (or none).

Example:
    >>> split = LayerSign(layer=17, positive=0.29, negative=-0.71, separated=0.75)
    >>> split.opposite
    True
    >>> LayerSign(layer=13, positive=-3.3, negative=-4.3, separated=0.5).opposite
    False
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..core.vector import SteeringVector
from ..data.pairs import ContrastPair, pair_texts
from ..models.load import LM
from .capture import capture

__all__ = ["LayerSign", "layer_signs", "opposite_sign_layers"]


@dataclass(frozen=True)
class LayerSign:
    """How the two sides of the pairs project on one layer's unit direction, in units of ``|v|``.

    Attributes:
        layer: the block.
        positive, negative: the mean projection of the positive / negative examples (``h·u / |v|``).
        separated: the share of examples on their own side of zero (positives ``> 0``, negatives ``< 0``).
    """

    layer: int
    positive: float
    negative: float
    separated: float

    @property
    def opposite(self) -> bool:
        """The two sides' mean projections have opposite signs, positive above negative."""
        return self.positive > 0.0 > self.negative


def layer_signs(lm: LM, pairs: Sequence[ContrastPair], vector: SteeringVector, batch_size: int = 32) -> list[LayerSign]:
    """Each layer of ``vector``: the pairs' mean projections on its unit direction at their read positions.

    Raises:
        DatasetError / LimitError: as :func:`~steerlab.extraction.capture.capture` for bad pairs.
    """
    texts, reads = pair_texts(lm, pairs)
    acts = capture(lm, texts, vector.layers, reads, batch_size=batch_size, progress=False)
    out = []
    for layer in vector.layers:
        v = vector.directions[layer].float()
        norm = float(v.norm())
        proj = acts[layer] @ (v / max(norm, 1e-12)) / max(norm, 1e-12)
        pos, neg = proj[0::2], proj[1::2]
        separated = float(torch.cat([pos > 0, neg < 0]).float().mean())
        out.append(LayerSign(layer, float(pos.mean()), float(neg.mean()), separated))
    return out


def opposite_sign_layers(lm: LM, pairs: Sequence[ContrastPair], vector: SteeringVector) -> list[int]:
    """The layers of ``vector`` at which the pairs' positive and negative examples project with
    opposite signs (see :func:`layer_signs`); ``[]`` when there are none.

    Example:
        >>> opposite_sign_layers(lm, pairs, happy_md)  # doctest: +SKIP
        [12, 17, 18]
    """
    return [s.layer for s in layer_signs(lm, pairs, vector) if s.opposite]
