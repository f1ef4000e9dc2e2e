"""What :func:`steerlab.extract` hands a method: :class:`ExtractRun` (the model, the layers to read,
the run's options), and the checks every method's directions pass before they become a vector.

Example:
    >>> check_found({3: torch.zeros(4)}, "mean_diff on 2 pairs")
    Traceback (most recent call last):
    ...
    steerlab.errors.DatasetError: mean_diff on 2 pairs: the direction at layer 3 is zero: ...
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.vector import SteeringVector
from ..data.sources import PairSource
from ..errors import DatasetError
from ..executor import Executor
from ..models.load import LM

ExtractData = Sequence[object] | PairSource
"""What a method reads: contrast pairs (or, for trained methods, preference pairs and CAA items),
or a :class:`~steerlab.data.sources.PairSource` streamed shard by shard."""


@dataclass(frozen=True)
class ExtractRun:
    """One extraction's model and options, as :func:`steerlab.extract` checked them.

    Attributes:
        lm: the model.
        layers: the (checked) layers to read or train.
        batch_size: texts per forward pass (read-out; default 32) or preference pairs per step
            (trained; default 16); ``None``: the method's default.
        progress: show a progress bar.
        checkpoint: where a streaming or trained method saves its running state.
        share_prefix: compute each distinct token prefix once (:mod:`steerlab.extraction.trie`).
        executor: where shards of a read-out run (``None``: all pairs at once, in this process).
        options: trained methods' options (:class:`~steerlab.extraction.train.TrainConfig` fields,
            ``config``, ``fluency_texts``, ``on_step``); read-out methods take none.
    """

    lm: LM
    layers: list[int]
    batch_size: int | None = None
    progress: bool | None = None
    checkpoint: str | os.PathLike[str] | None = None
    share_prefix: bool = True
    executor: Executor | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def vector(
        self, directions: dict[int, torch.Tensor], method: str, data_hash: str, meta: dict[str, object]
    ) -> SteeringVector:
        """The :class:`~steerlab.core.vector.SteeringVector` of ``directions`` found on this model."""
        check_found(directions, f"{method} on {meta.get('n_pairs', '?')} pair(s)")
        return SteeringVector(
            directions=directions,
            model_id=self.lm.model_id,
            d_model=self.lm.d_model,
            n_layers=self.lm.n_layers,
            method=method,
            data_hash=data_hash,
            meta=meta,
        )


def check_found(directions: dict[int, torch.Tensor], what: str) -> None:
    """Refuse directions that came out zero or non-finite at a layer: no vector is made of them.

    Raises:
        DatasetError: naming the layer; a zero direction means the positive and negative texts
            read the same activations there (identical pairs, or pairs that differ only after the
            read position).
    """
    for k, d in directions.items():
        if not bool(torch.isfinite(d).all()):
            raise DatasetError(
                f"{what}: the direction at layer {k} holds NaN or inf values (the activations "
                "overflow there): use other layers or a float32 model"
            )
        if not bool(d.ne(0).any()):
            raise DatasetError(
                f"{what}: the direction at layer {k} is zero: the positive and negative texts read the "
                "same activations there (identical texts, or texts that differ only after the read "
                "position); fix the pairs or the read positions"
            )
