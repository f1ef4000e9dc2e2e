"""Glue between the method registry and :mod:`steerlab.extraction.train` for trained methods.

Example:
    >>> needs_model(None, None)
    Traceback (most recent call last):
    ...
    steerlab.errors.DatasetError: a trained method needs the model: use steerlab.extract(lm, pairs, method=...)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ...errors import DatasetError


def needs_model(pos: Any, neg: Any) -> torch.Tensor:
    """The ``fit`` of a trained method: there are no activations to fit, so it refuses."""
    raise DatasetError("a trained method needs the model: use steerlab.extract(lm, pairs, method=...)")


def trainer(objective: str) -> Callable[..., Any]:
    """``trainer(lm, data, layers, *, batch_size, progress, checkpoint, share_prefix, **options)``
    for :func:`steerlab.extract`: options are :class:`~steerlab.extraction.train.TrainConfig` fields plus
    ``config``, ``fluency_texts`` and ``on_step``."""

    def run(
        lm: Any,
        data: Sequence[Any],
        layers: list[int],
        *,
        batch_size: int | None = None,
        progress: bool | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        share_prefix: bool = True,
        **options: Any,
    ) -> Any:
        from ..train import make_config, train_vector

        if batch_size is not None:
            options.setdefault("batch_size", batch_size)
        cfg, rest = make_config(options)
        return train_vector(
            lm,
            data,
            objective,
            layers,
            cfg,
            checkpoint=checkpoint,
            progress=progress,
            share_prefix=share_prefix,
            **rest,
        )

    return run
