"""The local engine: the model runs in this process, one worker thread owns it and serves the
queued requests (:class:`Batcher`, the server's default :class:`~steerlab.serve.engines.base.Engine`).

Requests (:class:`~steerlab.serve.jobs.Job`) wait in a FIFO queue
(:class:`~steerlab.serve.engines.queue.JobQueue`); the worker serves them with one of two
schedulers (``ServeSettings.scheduler``), siblings built on the same
:class:`~steerlab.serve.engines.worker.Worker`:

* ``"continuous"`` (the default, :class:`~steerlab.serve.engines.continuous.ContinuousScheduler`):
  the worker runs its own decoding loop; a request that arrives while others generate joins the
  running batch at the next step (its prompt runs, steered with its own steering, and its KV
  cache is merged into the batch's), and a finished one leaves at once. Models whose caches
  cannot be merged (sliding-window or other non-dynamic caches, or no ``position_ids``) fall back
  to the batch scheduler, logged once and reported by ``/metrics``.
  With ``ServeSettings.compiled`` on, the continuous scheduler is
  :class:`~steerlab.serve.engines.compiled.CompiledScheduler`: rows whose steering is plain adds
  decode through one compiled step over a static cache (``"auto"``:
  :func:`~steerlab.serve.engines.compiled.pays`); ``live()`` reports ``compiled`` and the
  compiled step shapes.
* ``"batch"`` (:class:`~steerlab.serve.engines.batch.BatchScheduler`): batch at a time, one
  ``generate`` call per batch; a request that arrives meanwhile waits for the whole batch to end.

Either way each row has its own steering, ``max_tokens``, stop strings and sampler
(:mod:`steerlab.serve.engines.rows`), streams its text to its request's asyncio queue
(``loop.call_soon_threadsafe``) and stops on its own (``max_tokens``, a stop string, its deadline
or a client that went away); greedy rows give the text of the same request served alone.

Example:
    >>> batcher = Batcher(lm, ServeSettings())  # doctest: +SKIP
    >>> job = Job(prompt_ids=[1, 403, 407], steering=None, params=GenParams(max_tokens=8),
    ...           loop=loop, events=queue)  # doctest: +SKIP
    >>> batcher.submit([job])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import torch

from ...models.load import LM
from ..jobs import Job
from ..metrics import Metrics
from ..settings import ServeSettings
from ..store import VectorStore
from .batch import BatchScheduler
from .compiled import CompiledScheduler, pays
from .continuous import ContinuousScheduler, unsupported
from .worker import Scheduler, Worker

__all__ = ["Batcher", "local_engine"]

log = logging.getLogger("steerlab.serve")


class Batcher:
    """The local engine: a worker thread, its queue and its scheduler.

    Args:
        lm: the served model (only the worker thread generates with it).
        settings: ``scheduler``, ``max_batch``, ``max_queue``, ``batch_wait_ms``.
        tok_lock: a lock held around every tokenizer call (HF fast tokenizers are not safe to
            call from two threads at once).
    """

    def __init__(self, lm: LM, settings: ServeSettings, tok_lock: threading.Lock | None = None) -> None:
        self.lm = lm
        self.settings = settings
        self.worker = Worker.for_model(lm, settings, tok_lock)
        self.queue = self.worker.queue
        self.scheduler = settings.scheduler
        self.fallback: str | None = None  # why a continuous server runs batch at a time
        self.compiled = False  # whether the continuous scheduler decodes through a compiled step
        self.active: Scheduler | None = None  # the worker's scheduler, once chosen
        self._thread = threading.Thread(target=self._loop, name="steerlab-serve-worker", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ Engine
    @property
    def metrics(self) -> Metrics:
        """The server's counters."""
        return self.worker.metrics

    @property
    def model_lock(self) -> threading.Lock:
        """Held while the model runs (the worker, or :mod:`steerlab.serve.cost`)."""
        return self.worker.model_lock

    @property
    def alive(self) -> bool:
        """Whether the worker thread runs."""
        return self._thread.is_alive() and not self.queue.closed

    @property
    def description(self) -> str:
        """The model's device and the scheduler."""
        return f"transformers on {self.lm.device}, {self.scheduler} scheduler"

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue ``jobs`` (all or none; one request's choices).

        Raises:
            QueueFull: the queue holds ``max_queue`` requests already, or the server is closing.
        """
        self.queue.submit(jobs)

    def cancel(self, job: Job) -> None:
        """Stop ``job`` (its client went away): dropped from the queue, or its row stops."""
        self.queue.cancel(job)

    def queue_length(self) -> int:
        """Requests waiting for a batch."""
        return self.queue.queue_length()

    def running(self) -> int:
        """Rows generating now."""
        return self.queue.running()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker (once the rows generating now are finished) and fail the waiting requests."""
        self.queue.close()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def live(self) -> dict[str, Any]:
        """The queue's state now: queue length, rows generating, limits and the scheduler."""
        out: dict[str, Any] = {"queue_length": self.queue.queue_length(), "running": self.queue.running()}
        out.update(max_batch=self.settings.max_batch, max_queue=self.settings.max_queue, scheduler=self.scheduler)
        out["compiled"] = self.compiled
        if isinstance(self.active, CompiledScheduler):
            out["compiled_shapes"] = self.active.shapes()
        if self.fallback:
            out["scheduler_fallback"] = self.fallback
        return out

    def snapshot(self) -> dict[str, Any]:
        """Metrics plus queue state."""
        return {**self.metrics.snapshot(), **self.live()}

    # ------------------------------------------------------------------ worker
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        self.active = self._scheduler()
        self.active.run()

    def _scheduler(self) -> Scheduler:
        """The scheduler asked for, or batch at a time where continuous batching cannot serve the model."""
        if self.scheduler == "continuous":
            with self.worker.model_lock:
                why = unsupported(self.lm)
            if why is None:
                setting = self.settings.compiled
                self.compiled = setting == "on" or (setting == "auto" and pays(self.lm, self.settings))
                if self.compiled:
                    return CompiledScheduler(self.worker)
                return ContinuousScheduler(self.worker)
            self.fallback = why
            self.scheduler = "batch"
            log.warning(
                "continuous batching is not available for %s (%s): serving batch at a time", self.lm.model_id, why
            )
        return BatchScheduler(self.worker)


def local_engine(lm: LM, settings: ServeSettings, tok_lock: threading.Lock, store: VectorStore) -> Batcher:
    """The default :class:`~steerlab.serve.engines.base.EngineFactory`: a :class:`Batcher` for ``lm``
    (the store is not needed: steering arrives resolved in each job)."""
    return Batcher(lm, settings, tok_lock)
