"""What a local scheduler works with (:class:`Worker`), and what a scheduler is (:class:`Scheduler`).

The local engine (:class:`~steerlab.serve.engines.local.Batcher`) runs one worker thread, and
that thread runs one scheduler: batch at a time (:class:`~steerlab.serve.engines.batch.BatchScheduler`)
or continuous (:class:`~steerlab.serve.engines.continuous.ContinuousScheduler`). Both are built on
the same :class:`Worker`: they take jobs from its queue, run the model while holding its
``model_lock``, sample each row with :meth:`Worker.sampler` and stream it with :meth:`Worker.stream`.

Example:
    >>> worker = Worker.for_model(lm, ServeSettings())  # doctest: +SKIP
    >>> ContinuousScheduler(worker).run()  # the worker thread's loop  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch

from ...models.load import LM
from ..jobs import Job
from ..metrics import Metrics
from ..settings import ServeSettings
from .queue import JobQueue
from .rows import RowStream, Sampler


class Scheduler(Protocol):
    """How the worker thread orders the model's work."""

    def run(self) -> None:
        """Serve the worker's queue until it is closed and the rows taken are finished."""
        ...


@dataclass(eq=False)
class Worker:
    """The model side of the local engine, shared by its schedulers.

    Attributes:
        lm: the served model (only the worker thread generates with it).
        settings: ``max_batch`` and the rest of the server's options.
        queue: the jobs waiting for the model.
        metrics: the server's counters.
        tok_lock: held around every tokenizer call (HF fast tokenizers are not safe to call
            from two threads at once).
        model_lock: held while the model runs (by the scheduler, or by :mod:`steerlab.serve.cost`).
        eos: the end-of-sequence token ids.
        pad_id: the id that pads prompts on the left.
    """

    lm: LM
    settings: ServeSettings
    queue: JobQueue
    metrics: Metrics
    tok_lock: threading.Lock
    model_lock: threading.Lock
    eos: frozenset[int]
    pad_id: int

    @classmethod
    def for_model(cls, lm: LM, settings: ServeSettings, tok_lock: threading.Lock | None = None) -> Worker:
        """A worker for ``lm``: an empty queue, fresh metrics and locks, the model's eos and pad ids."""
        metrics = Metrics()
        eos = eos_ids(lm)
        pad = lm.tokenizer.pad_token_id
        return cls(
            lm=lm,
            settings=settings,
            queue=JobQueue(settings.max_queue, settings.batch_wait_ms, metrics),
            metrics=metrics,
            tok_lock=tok_lock or threading.Lock(),
            model_lock=threading.Lock(),
            eos=eos,
            pad_id=int(pad) if pad is not None else (min(eos) if eos else 0),
        )

    def stream(self, job: Job) -> RowStream:
        """The :class:`~steerlab.serve.engines.rows.RowStream` of ``job`` (its end releases a queue slot)."""
        return RowStream(job, self.lm.tokenizer, self.tok_lock, self.eos, self.metrics, self.queue.release)

    def sampler(self, job: Job, device: torch.device) -> Sampler:
        """The :class:`~steerlab.serve.engines.rows.Sampler` of ``job`` (its logits are on ``device``)."""
        return Sampler(job.params, self.eos, device)


def eos_ids(lm: LM) -> frozenset[int]:
    """The model's end-of-sequence ids: its generation config's (one or several), else the tokenizer's."""
    eos = lm.model.generation_config.eos_token_id
    if eos is None:
        eos = lm.tokenizer.eos_token_id
    ids: Iterable[int] = eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos]
    return frozenset(int(i) for i in ids)
