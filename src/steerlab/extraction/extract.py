"""Turn contrast pairs into a :class:`~steerlab.core.vector.SteeringVector` with any registered method.

:func:`extract` checks the model and layers, gathers the run's options into one
:class:`~steerlab.extraction.run.ExtractRun`, and hands it to the method, which runs its own path:
a read-out method (:mod:`steerlab.extraction.readout`) captures positive and negative texts in
**one** batched capture (length-bucketed, truncated forward) and fits each layer, or reads shards
on an executor; a trained method (:mod:`steerlab.extraction.trained`) trains with the model.

Example:
    >>> pairs = steerlab.persona_pairs("happy", "sad", openings)  # doctest: +SKIP
    >>> vec = steerlab.extract(lm, pairs, method="mean_diff", layers=range(8, 20))  # doctest: +SKIP
    >>> from steerlab.distributed import RayExecutor  # doctest: +SKIP
    >>> big = steerlab.open_pairs("pairs.jsonl")  # doctest: +SKIP
    >>> vec = steerlab.extract(lm, big, executor=RayExecutor(workers=2))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..core.vector import SteeringVector
from ..errors import DatasetError
from ..executor import Executor
from ..models.load import LM
from .capture import check_layers
from .methods import get_method
from .run import ExtractData, ExtractRun

MOVED = {"workers": "executor=RayExecutor(workers=N)", "ray_address": "executor=RayExecutor(workers=N, address=...)"}
"""Options that became an executor (``steerlab.distributed.RayExecutor``): refused with the new spelling."""


def extract(
    lm: LM,
    pairs: ExtractData,
    method: str = "mean_diff",
    layers: Sequence[int] | range | int | None = None,
    *,
    batch_size: int | None = None,
    progress: bool | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    share_prefix: bool = True,
    executor: Executor | None = None,
    **train_options: Any,
) -> SteeringVector:
    """Build a steering vector from contrast pairs (or, for trained methods, preference pairs).

    Args:
        lm: the model (from :func:`steerlab.load_model`).
        pairs: contrast pairs (:func:`steerlab.persona_pairs`, :func:`steerlab.caa_pairs`, ...), or a
            :class:`~steerlab.data.sources.PairSource` (a streamed file or dataset, read shard by
            shard); trained methods also take :class:`steerlab.PreferencePair` objects and CAA
            items (:func:`steerlab.self_contrast`, :func:`steerlab.preference_pairs`).
        method: a registered method: ``mean_diff``, ``pca_diff``, ``pca_center``, ``probe``,
            ``actadd``, or a trained one: ``bipo``, ``reps``.
        layers: block indices to read (default: all).
        batch_size: texts per forward pass during capture (default 32); for trained methods,
            preference pairs per optimiser step (default 16).
        progress: show a progress bar.
        checkpoint: for streaming methods (``mean_diff``), a file where running sums are saved
            after every batch; for trained methods, the training state after every step. An
            interrupted run called again with the same arguments resumes from it. Deleted when the
            vector is done.
        share_prefix: compute every distinct token prefix of the dataset once (the chat
            template's system turn, a CAA pair's question, openings that are prefixes of one
            another), continuing from key/value caches (:mod:`steerlab.extraction.trie`); the
            activations equal a full forward's up to float rounding. ``False`` runs every token of
            every text.
        executor: read-out methods: split the pairs into shards and read each as a job of this
            :class:`~steerlab.executor.Executor` — ``steerlab.distributed.RayExecutor(workers=N)``
            for Ray actors each loading the model once (``pip install steerlab[ray]``), or
            :class:`~steerlab.executor.LocalExecutor` for this process. Default: all pairs at once
            here (a ``PairSource`` is still read shard by shard).
        **train_options: trained methods only: :class:`steerlab.extraction.train.TrainConfig` fields (``lr``,
            ``epochs``, ``beta``, ``fluency_weight``, ``holdout``, ``patience``, ``seed``,
            ``positions``, ``factors``, ...), ``config=``, ``fluency_texts=`` and ``on_step=``.

    Raises:
        DatasetError: empty or one-sided data, too few pairs for the method, unknown method,
            training options given to a read-out method, or an executor for a trained method.
        LayerRangeError: a layer outside the model.
        TrainingError: a training setting out of range.
    """
    moved = sorted(set(MOVED) & set(train_options))
    if moved:
        raise DatasetError(
            f"{moved[0]}= is gone: pass {MOVED[moved[0]]} (from steerlab.distributed) to run on Ray workers"
        )
    spec = get_method(method)
    layer_list = check_layers(lm, range(lm.n_layers) if layers is None else layers)
    run = ExtractRun(
        lm,
        layer_list,
        batch_size=batch_size,
        progress=progress,
        checkpoint=checkpoint,
        share_prefix=share_prefix,
        executor=executor,
        options=dict(train_options),
    )
    return spec.extract(run, pairs)
