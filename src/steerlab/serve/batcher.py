"""Dynamic batching: one worker thread owns the model and serves the queued requests.

Requests (:class:`Job`) wait in a FIFO queue; the worker serves them with one of two schedulers
(``ServeSettings.scheduler``):

* ``"continuous"`` (the default, :class:`~steerlab.serve.scheduler.ContinuousScheduler`): the
  worker runs its own decoding loop; a request that arrives while others generate joins the
  running batch at the next step (its prompt runs, steered with its own steering, and its KV
  cache is merged into the batch's), and a finished one leaves at once. Models whose caches
  cannot be merged (sliding-window or other non-dynamic caches, or no ``position_ids``) fall back
  to the batch scheduler, logged once and reported by ``/metrics``.
* ``"batch"``: batch at a time. The worker takes up to ``max_batch`` requests (a batch that is not
  full waits until no request has arrived for ``batch_wait_ms``, at most ten times that in all, so
  that a burst of concurrent requests lands in one batch), pads their prompts on the left and
  runs ONE ``model.generate`` call with one steering per row (:func:`steerlab.steer_rows`). A
  request that arrives meanwhile waits for the whole batch to end.

Either way each row has its own steering, ``max_tokens``, stop strings and sampler
(:mod:`steerlab.serve.rows`), streams its text to its request's asyncio queue
(``loop.call_soon_threadsafe``) and stops on its own (``max_tokens``, a stop string, its deadline
or a client that went away); greedy rows give the text of the same request served alone.

Example:
    >>> batcher = Batcher(lm, ServeSettings())  # doctest: +SKIP
    >>> job = Job(prompt_ids=[1, 403, 407], steering=None, params=GenParams(max_tokens=8),
    ...           loop=loop, events=queue)  # doctest: +SKIP
    >>> batcher.submit([job])  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ..errors import SteeringError
from ..models.load import LM
from ..models.tokens import pad_token_ids
from ..runtime.finite import finite, peaks
from ..runtime.session import steer_rows
from .jobs import Delta, Done, Event, Failed, GenParams, Job
from .metrics import Metrics
from .rows import RowStream, Sampler, mask_eos, shared_steerings
from .settings import ServeSettings

__all__ = ["Batcher", "Delta", "Done", "Event", "Failed", "GenParams", "Job", "Metrics", "QueueFull"]

log = logging.getLogger("steerlab.serve")


class QueueFull(SteeringError):
    """The queue cannot take the request(s) now: retry later."""

    code = "queue_full"


class _Tracker(BaseStreamer, StoppingCriteria):
    """Per-row streamer and stopping criterion of one ``generate`` batch."""

    def __init__(self, rows: Sequence[RowStream], metrics: Metrics) -> None:
        self.rows = list(rows)
        self.metrics = metrics
        self.done = torch.zeros(len(rows), dtype=torch.bool)
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        """Receive the prompt (first call, ignored) or the ``[B]`` tokens of one step."""
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        self.metrics.add_step(len(self.rows))  # every row of a generate call runs every step
        for i, tok in enumerate(value.reshape(-1).tolist()):
            if not self.rows[i].done and self.rows[i].push(tok):
                self.done[i] = True

    def end(self) -> None:
        """Called by ``generate`` when it stops: rows still open ran to the batch's length."""
        for row in self.rows:
            row.finish("cancelled" if row.job.cancelled.is_set() else "length")

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        """Per-row "is done" flags for ``generate``'s stopping logic."""
        return self.done.to(input_ids.device)


class _RowSampler(LogitsProcessor):
    """The rows' :class:`~steerlab.serve.rows.Sampler` inside ``generate``: ``ignore_eos`` rows
    lose their eos scores, and a sampled row's scores become ``-inf`` except at its drawn token,
    so ``generate``'s greedy argmax picks exactly that token; greedy rows are left alone.

    A row whose scores are NaN or infinite (one reduction per step, :mod:`steerlab.runtime.finite`) fails
    alone: its request gets the error, the tracker stops it, and its scores are replaced so that
    nothing is sampled from them; the other rows go on."""

    def __init__(self, samplers: Sequence[Sampler], tracker: _Tracker) -> None:
        self.samplers = list(samplers)
        self.tracker = tracker

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = mask_eos(scores, self.samplers)
        ok = finite(peaks(scores)[0])
        bad = set() if bool(ok.all()) else set((~ok).nonzero().flatten().tolist())
        for i in bad:
            self.tracker.rows[i].overflow()
            self.tracker.done[i] = True
        drawn = [(i, s.draw(scores[i])) for i, s in enumerate(self.samplers) if not s.greedy and i not in bad]
        if drawn or bad:
            scores = scores.clone()
            for i, tok in [*drawn, *((i, 0) for i in bad)]:
                scores[i] = float("-inf")
                scores[i, tok] = 0.0
        return scores


class Batcher:
    """The worker thread and its queue.

    Args:
        lm: the served model (only the worker thread runs it).
        settings: ``scheduler``, ``max_batch``, ``max_queue``, ``batch_wait_ms``.
        tok_lock: a lock held around every tokenizer call (HF fast tokenizers are not safe to
            call from two threads at once).
    """

    def __init__(self, lm: LM, settings: ServeSettings, tok_lock: threading.Lock | None = None) -> None:
        self.lm = lm
        self.settings = settings
        self.tok_lock = tok_lock or threading.Lock()
        self.metrics = Metrics()
        self.scheduler = settings.scheduler
        self.fallback: str | None = None  # why a continuous server runs batch at a time
        self._cond = threading.Condition()
        self.model_lock = threading.Lock()  # held while the model runs (the worker, or serve.cost)
        self._waiting: collections.deque[Job] = collections.deque()
        self._running = 0
        self._closed = False
        eos = lm.model.generation_config.eos_token_id
        if eos is None:
            eos = lm.tokenizer.eos_token_id
        self.eos: set[int] = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        pad = lm.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else (min(self.eos) if self.eos else 0)
        self._thread = threading.Thread(target=self._loop, name="steerlab-serve-worker", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ API
    @property
    def alive(self) -> bool:
        """Whether the worker thread runs."""
        return self._thread.is_alive() and not self._closed

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue ``jobs`` (all or none; one request's choices).

        Raises:
            QueueFull: the queue holds ``max_queue`` requests already, or the server is closing.
        """
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) + len(jobs) > self.settings.max_queue:
                self.metrics.count("rejected")
                raise QueueFull(
                    f"the server is busy: {len(self._waiting)} requests are waiting (max_queue="
                    f"{self.settings.max_queue}); retry later"
                )
            self._waiting.extend(jobs)
            self.metrics.count("accepted", len(jobs))
            self._cond.notify()
        self.metrics.count_vectors(name for job in jobs[:1] for name in job.vectors)

    def cancel(self, job: Job) -> None:
        """Stop ``job`` (its client went away): dropped from the queue, or its row stops."""
        if job.finished:
            return
        job.cancelled.set()
        with self._cond:
            try:
                self._waiting.remove(job)
            except ValueError:
                return
        job.finished = True
        self.metrics.count("cancelled")

    def queue_length(self) -> int:
        """Requests waiting for a batch."""
        with self._cond:
            return len(self._waiting)

    def running(self) -> int:
        """Rows generating now."""
        with self._cond:
            return self._running

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker (once the rows generating now are finished) and fail the waiting requests."""
        with self._cond:
            self._closed = True
            waiting = list(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
        for job in waiting:
            job.send(Failed(job.index, 503, "the server is shutting down", "server_shutdown"))
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def live(self) -> dict[str, Any]:
        """The queue's state now: queue length, rows generating, limits and the scheduler."""
        with self._cond:
            out: dict[str, Any] = {"queue_length": len(self._waiting), "running": self._running}
        out.update(max_batch=self.settings.max_batch, max_queue=self.settings.max_queue, scheduler=self.scheduler)
        if self.fallback:
            out["scheduler_fallback"] = self.fallback
        return out

    def snapshot(self) -> dict[str, Any]:
        """Metrics plus queue state."""
        return {**self.metrics.snapshot(), **self.live()}

    # ------------------------------------------------------------------ the queue, for the schedulers
    def take(self, limit: int, block: bool) -> list[Job] | None:
        """Up to ``limit`` waiting jobs, oldest first (cancelled and expired ones are dropped);
        ``None`` once the batcher is closed.

        With ``block`` (the worker is idle), wait until one arrives, then gather a burst: wait
        until no request has arrived for ``batch_wait_ms`` (at most 10× that in all) or ``limit``
        are waiting, so that concurrent requests start together.
        """
        with self._cond:
            if block:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                self._gather(limit)
            if self._closed:
                return None
            return self._pop(limit)

    def _gather(self, limit: int) -> None:
        """Wait (holding the condition) while a burst of requests is still arriving."""
        quiet_s = self.settings.batch_wait_ms / 1000.0
        last = time.monotonic()
        cap = last + 10 * quiet_s
        seen = len(self._waiting)
        while seen < limit and not self._closed:
            left = min(last + quiet_s, cap) - time.monotonic()
            if left <= 0:
                break
            self._cond.wait(left)
            if len(self._waiting) != seen:
                seen = len(self._waiting)
                last = time.monotonic()

    def _pop(self, limit: int) -> list[Job]:
        out: list[Job] = []
        now = time.monotonic()
        while self._waiting and len(out) < limit:
            job = self._waiting.popleft()
            if job.cancelled.is_set():
                job.finished = True
                self.metrics.count("cancelled")
            elif now > job.deadline:
                self.metrics.count("timed_out")
                job.send(Failed(job.index, 504, "the request waited past the server's request timeout", "timeout"))
            else:
                out.append(job)
        self._running += len(out)
        return out

    def release(self) -> None:
        """One row finished (called by its :class:`~steerlab.serve.rows.RowStream`)."""
        with self._cond:
            self._running = max(0, self._running - 1)

    def stream(self, job: Job) -> RowStream:
        """The :class:`~steerlab.serve.rows.RowStream` of ``job`` on this server."""
        return RowStream(job, self.lm.tokenizer, self.tok_lock, self.eos, self.metrics, self.release)

    # ------------------------------------------------------------------ worker
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        if self.scheduler == "continuous":
            from .scheduler import ContinuousScheduler, unsupported

            with self.model_lock:
                why = unsupported(self.lm)
            if why is None:
                ContinuousScheduler(self).run()
                return
            self.fallback = why
            self.scheduler = "batch"
            log.warning(
                "continuous batching is not available for %s (%s): serving batch at a time", self.lm.model_id, why
            )
        self._batch_loop()

    def _batch_loop(self) -> None:
        while True:
            batch = self.take(self.settings.max_batch, block=True)
            if batch is None:
                return
            if not batch:
                continue
            start = time.monotonic()
            try:
                with self.model_lock:
                    self._run(batch)
            except BaseException:  # the worker must survive anything a batch does
                log.exception("batch failed")
            finally:
                self.metrics.add_busy(time.monotonic() - start)
                with self._cond:
                    self._running = 0

    def _run(self, batch: list[Job]) -> None:
        """One batched, per-row steered ``generate`` call (same defaults as :func:`steerlab.generate`)."""
        rows = [self.stream(j) for j in batch]
        tracker = _Tracker(rows, self.metrics)
        try:
            ids, mask = pad_token_ids([j.prompt_ids for j in batch], self.pad_id, "left")
            ids, mask = ids.to(self.lm.device), mask.to(self.lm.device)
            self.metrics.add_batch(len(batch), sum(len(j.prompt_ids) for j in batch))
            kwargs: dict[str, Any] = {
                "do_sample": False,
                "temperature": None,
                "top_p": None,
                "top_k": None,
                "pad_token_id": self.pad_id,
                "max_new_tokens": max(j.params.max_tokens for j in batch),
                "streamer": tracker,
                "stopping_criteria": StoppingCriteriaList([tracker]),
            }
            samplers = [Sampler(j.params, self.eos, ids.device) for j in batch]
            kwargs["logits_processor"] = LogitsProcessorList([_RowSampler(samplers, tracker)])
            steerings = shared_steerings([j.steering for j in batch])
            with steer_rows(self.lm, steerings, prompt_length=mask.sum(-1)), torch.inference_mode():
                self.lm.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        except Exception as exc:
            log.exception("generation failed")
            for row in rows:
                row.fail(exc)
            return
        tracker.end()
