"""Trained methods (``bipo``, ``reps``): a vector fitted by training with the model itself, not read
from activations (see :mod:`steerlab.extraction.train`).

A :class:`TrainedMethod` runs its own path in :func:`steerlab.extract`: the run's options are
:class:`~steerlab.extraction.train.TrainConfig` fields (plus ``config``, ``fluency_texts`` and
``on_step``), its ``batch_size`` counts preference pairs per optimiser step, and its checkpoint
holds the training state.

Example:
    >>> m = TrainedMethod("bipo", "bi-directional preference optimisation", objective="bipo")
    >>> m.trained, m.objective
    (True, 'bipo')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..core.vector import SteeringVector
from ..data.sources import PairSource
from ..errors import DatasetError
from .run import ExtractData, ExtractRun
from .train import make_config, train_vector


@dataclass(frozen=True)
class TrainedMethod:
    """A method that trains its vector (see the module docs).

    Attributes:
        name: the registry name.
        summary: one line for listings.
        objective: the training objective (:data:`steerlab.extraction.train.OBJECTIVES`).
        min_pairs: fewest preference pairs it works with.
    """

    name: str
    summary: str
    objective: str
    min_pairs: int = 1
    trained: ClassVar[bool] = True

    def extract(self, run: ExtractRun, data: ExtractData) -> SteeringVector:
        """The vector trained on ``data`` (preference pairs, CAA items or contrast pairs).

        Raises:
            DatasetError: an executor or a streamed source (training runs in one process, on pairs
                held in memory), or data the training cannot use.
            TrainingError: a training setting out of range.
        """
        if run.executor is not None or isinstance(data, PairSource):
            raise DatasetError(
                f"method {self.name!r} cannot run on an executor or a streamed source; trained methods "
                "(bipo, reps) take an in-memory list of pairs in one process"
            )
        options = dict(run.options)
        if run.batch_size is not None:
            options.setdefault("batch_size", run.batch_size)
        cfg, rest = make_config(options)
        return train_vector(
            run.lm,
            data,
            self.objective,
            run.layers,
            cfg,
            checkpoint=run.checkpoint,
            progress=run.progress,
            share_prefix=run.share_prefix,
            **rest,
        )
