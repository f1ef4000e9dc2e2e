"""Dynamic batching: one worker thread owns the model and serves queued requests in batches.

Requests (:class:`Job`) wait in a FIFO queue. The worker takes up to ``max_batch`` of them
(a batch that is not full waits until no request has arrived for ``batch_wait_ms``, at most
ten times that in all, so that a burst of concurrent requests lands in one batch), pads their prompts on
the left and runs ONE ``model.generate`` call with one steering per row
(:func:`steerlab.steer_rows`, opened in the worker thread, where steering hooks act). Rows may
ask for different ``max_tokens``: the batch runs to the largest and every row stops on its own.
A :class:`transformers.generation.streamers.BaseStreamer` receives the ``[B]`` new token ids at
each step, decodes each row incrementally and pushes text deltas to that request's asyncio
queue (``loop.call_soon_threadsafe``); the same object is a per-row stopping criterion, so rows
that hit ``max_tokens``, a stop string, their deadline or whose client went away stop, and the
batch ends as soon as every row has.

Greedy rows are plain argmax; sampled rows (``temperature > 0``) draw their token from their own
seeded generator inside a logits processor, so rows with and without sampling share a batch and a
seeded request gives the same text whatever it is batched with.

Example:
    >>> batcher = Batcher(lm, ServeSettings())  # doctest: +SKIP
    >>> job = Job(prompt_ids=[1, 403, 407], steering=None, params=GenParams(max_tokens=8),
    ...           loop=loop, events=queue)  # doctest: +SKIP
    >>> batcher.submit([job])  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ..engine import steer_rows
from ..errors import SteeringError
from ..model import LM
from ..steering import SteeringLike
from ..tokens import pad_token_ids
from .settings import ServeSettings

log = logging.getLogger("steerlab.serve")


class QueueFull(SteeringError):
    """The queue cannot take the request(s) now: retry later."""

    code = "queue_full"


@dataclass(frozen=True)
class GenParams:
    """How one row is generated.

    Attributes:
        max_tokens: the most new tokens.
        temperature: 0 for greedy, else sampling temperature.
        top_p: nucleus sampling mass (sampling only).
        seed: seed of this row's sampler (random when ``None``).
        stop: strings that end the row (not included in its text).
        ignore_eos: keep generating past the end-of-sequence token.
    """

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass(frozen=True)
class Delta:
    """New text for choice ``index``."""

    index: int
    text: str


@dataclass(frozen=True)
class Done:
    """Choice ``index`` is finished (``finish_reason``: ``stop``, ``length`` or ``timeout``)."""

    index: int
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    """Choice ``index`` failed; ``status`` is the HTTP status to report."""

    index: int
    status: int
    message: str
    code: str


Event = Delta | Done | Failed


@dataclass(eq=False)
class Job:
    """One completion (one choice of one request) waiting for or going through the worker."""

    prompt_ids: list[int]
    steering: SteeringLike | None
    params: GenParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event]
    index: int = 0
    deadline: float = float("inf")
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: bool = False
    submitted: float = field(default_factory=time.monotonic)

    def send(self, event: Event) -> None:
        """Hand ``event`` to the request's event loop (thread-safe; a closed loop cancels the job)."""
        if isinstance(event, (Done, Failed)):
            self.finished = True
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the request's loop is gone
            self.cancelled.set()


class _Row:
    """Decoding state of one batch row."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.ids: list[int] = []
        self.sent = ""
        self.done = False
        self.max_stop = max((len(s) for s in job.params.stop), default=0)


class _Tracker(BaseStreamer, StoppingCriteria):
    """Per-row streamer and stopping criterion of one batch."""

    def __init__(self, jobs: Sequence[Job], tokenizer: Any, tok_lock: threading.Lock, eos: set[int],
                 metrics: Metrics, release: Callable[[], None] = lambda: None) -> None:
        self.rows = [_Row(j) for j in jobs]
        self.release = release  # called once per row as it finishes, before its last event
        self.tokenizer = tokenizer
        self.tok_lock = tok_lock
        self.eos = eos
        self.metrics = metrics
        self.done = torch.zeros(len(jobs), dtype=torch.bool)
        self.seen_prompt = False

    def _decode(self, ids: list[int]) -> str:
        with self.tok_lock:
            return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def _finish(self, i: int, reason: str, text: str | None = None) -> None:
        row = self.rows[i]
        row.done = True
        self.done[i] = True
        self.release()
        job = row.job
        if reason == "cancelled":
            self.metrics.count("cancelled")
            job.finished = True
            return
        if text is None:
            text = self._decode(row.ids)
        if text.startswith(row.sent) and len(text) > len(row.sent):
            job.send(Delta(job.index, text[len(row.sent):]))
        row.sent = text
        if reason == "timeout":
            self.metrics.count("timed_out")
            job.send(Failed(job.index, 504, "the request ran past the server's request timeout", "timeout"))
            return
        job.send(Done(job.index, text, reason, len(job.prompt_ids), len(row.ids)))

    def put(self, value: torch.Tensor) -> None:
        """Receive the prompt (first call, ignored) or the ``[B]`` tokens of one step."""
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        tokens = value.reshape(-1).tolist()
        now = time.monotonic()
        for i, tok in enumerate(tokens):
            row = self.rows[i]
            if row.done:
                continue
            job, params = row.job, row.job.params
            if job.cancelled.is_set():
                self._finish(i, "cancelled")
                continue
            if tok in self.eos and not params.ignore_eos:
                self._finish(i, "stop")
                continue
            row.ids.append(int(tok))
            self.metrics.add_tokens(1)  # before the row's events: a client may read /metrics right after
            text = self._decode(row.ids)
            if params.stop:
                hits = [p for p in (text.find(s, max(0, len(row.sent) - row.max_stop)) for s in params.stop) if p >= 0]
                if hits:
                    self._finish(i, "stop", text[: min(hits)])
                    continue
            if len(row.ids) >= params.max_tokens:
                self._finish(i, "length", text)
                continue
            if now > job.deadline:
                self._finish(i, "timeout", text)
                continue
            ready = len(text) - max(0, row.max_stop - 1)
            while ready > len(row.sent) and text[ready - 1] == "\ufffd":
                ready -= 1  # an incomplete multi-byte character: wait for its other bytes
            if ready > len(row.sent) and text.startswith(row.sent):
                job.send(Delta(job.index, text[len(row.sent):ready]))
                row.sent = text[:ready]

    def end(self) -> None:
        """Called by ``generate`` when it stops: rows still open ran to the batch's length."""
        for i, row in enumerate(self.rows):
            if not row.done:
                self._finish(i, "cancelled" if row.job.cancelled.is_set() else "length")

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        """Per-row "is done" flags for ``generate``'s stopping logic."""
        return self.done.to(input_ids.device)

    def fail(self, exc: BaseException) -> None:
        """Report a failed batch to every row still open."""
        for row in self.rows:
            if not row.done:
                row.done = True
                self.release()
                row.job.send(Failed(row.job.index, 500, f"generation failed: {type(exc).__name__}: {exc}",
                                    "server_error"))


class _RowSampler(LogitsProcessor):
    """Per-row sampling (own temperature, top-p and seeded generator) and ``ignore_eos``.

    A sampled row's scores become ``-inf`` except at the drawn token, so ``generate``'s greedy
    argmax picks exactly that token; greedy rows are left alone.
    """

    def __init__(self, jobs: Sequence[Job], eos: set[int], device: torch.device) -> None:
        self.params = [j.params for j in jobs]
        self.eos = sorted(eos)
        self.gens: list[torch.Generator | None] = []
        for p in self.params:
            if p.temperature > 0:
                g = torch.Generator(device=device)
                g.manual_seed(p.seed if p.seed is not None else int(torch.randint(0, 2**62, ()).item()))
                self.gens.append(g)
            else:
                self.gens.append(None)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        for i, p in enumerate(self.params):
            if p.ignore_eos and self.eos:
                scores[i, self.eos] = float("-inf")
            g = self.gens[i]
            if g is None:
                continue
            logits = scores[i].float() / p.temperature
            probs = torch.softmax(logits, dim=-1)
            if p.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                keep = sorted_probs.cumsum(-1) - sorted_probs < p.top_p
                keep[0] = True
                mask = torch.zeros_like(probs, dtype=torch.bool)
                mask[order[keep]] = True
                probs = torch.where(mask, probs, torch.zeros_like(probs))
                probs = probs / probs.sum()
            tok = int(torch.multinomial(probs, 1, generator=g).item())
            scores[i] = float("-inf")
            scores[i, tok] = 0.0
        return scores


class Metrics:
    """Counters of the server (thread-safe), reported by ``GET /metrics``."""

    WINDOW_S = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.counters: dict[str, int] = collections.defaultdict(int)
        self.completion_tokens = 0
        self.prompt_tokens = 0
        self.busy_s = 0.0
        self.batches = 0
        self.batched_rows = 0
        self._recent: collections.deque[tuple[float, int]] = collections.deque()

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name``."""
        with self._lock:
            self.counters[name] += n

    def add_tokens(self, n: int) -> None:
        """Record ``n`` generated tokens (now)."""
        if n:
            now = time.monotonic()
            with self._lock:
                self.completion_tokens += n
                self._recent.append((now, n))

    def add_batch(self, rows: int, prompt_tokens: int, seconds: float) -> None:
        """Record one finished batch."""
        with self._lock:
            self.batches += 1
            self.batched_rows += rows
            self.prompt_tokens += prompt_tokens
            self.busy_s += seconds

    def snapshot(self) -> dict[str, Any]:
        """Everything, JSON-ready."""
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - self.WINDOW_S:
                self._recent.popleft()
            recent = sum(n for _, n in self._recent)
            uptime = now - self.started
            return {
                "uptime_s": round(uptime, 3),
                "requests": dict(self.counters),
                "completion_tokens_total": self.completion_tokens,
                "prompt_tokens_total": self.prompt_tokens,
                "tokens_per_second": round(recent / max(1e-9, min(self.WINDOW_S, uptime)), 3),
                "tokens_per_second_busy": round(self.completion_tokens / self.busy_s, 3) if self.busy_s else 0.0,
                "batches_total": self.batches,
                "mean_batch_size": round(self.batched_rows / self.batches, 3) if self.batches else 0.0,
                "busy_s": round(self.busy_s, 3),
            }


class Batcher:
    """The worker thread and its queue.

    Args:
        lm: the served model (only the worker thread runs it).
        settings: ``max_batch``, ``max_queue``, ``batch_wait_ms``.
        tok_lock: a lock held around every tokenizer call (HF fast tokenizers are not safe to
            call from two threads at once).
    """

    def __init__(self, lm: LM, settings: ServeSettings, tok_lock: threading.Lock | None = None) -> None:
        self.lm = lm
        self.settings = settings
        self.tok_lock = tok_lock or threading.Lock()
        self.metrics = Metrics()
        self._cond = threading.Condition()
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
        """Queue ``jobs`` (all or none).

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
        """Rows of the current batch still generating."""
        with self._cond:
            return self._running

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker (after the current batch) and fail the waiting requests."""
        with self._cond:
            self._closed = True
            waiting = list(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
        for job in waiting:
            job.send(Failed(job.index, 503, "the server is shutting down", "server_shutdown"))
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def snapshot(self) -> dict[str, Any]:
        """Metrics plus queue state."""
        out = self.metrics.snapshot()
        with self._cond:
            out["queue_length"] = len(self._waiting)
            out["running"] = self._running
        out["max_batch"] = self.settings.max_batch
        out["max_queue"] = self.settings.max_queue
        return out

    # ------------------------------------------------------------------ worker
    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._waiting and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            # Gather a burst: wait until no request has arrived for batch_wait_ms (at most 10× that
            # in all), unless the batch is full.
            quiet_s = self.settings.batch_wait_ms / 1000.0
            last = time.monotonic()
            cap = last + 10 * quiet_s
            seen = len(self._waiting)
            while seen < self.settings.max_batch and not self._closed:
                left = min(last + quiet_s, cap) - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
                if len(self._waiting) != seen:
                    seen = len(self._waiting)
                    last = time.monotonic()
            batch: list[Job] = []
            now = time.monotonic()
            while self._waiting and len(batch) < self.settings.max_batch:
                job = self._waiting.popleft()
                if job.cancelled.is_set():
                    job.finished = True
                    self.metrics.count("cancelled")
                elif now > job.deadline:
                    self.metrics.count("timed_out")
                    job.send(Failed(job.index, 504, "the request waited past the server's request timeout",
                                    "timeout"))
                else:
                    batch.append(job)
            self._running = len(batch)
            return batch

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            batch = self._take()
            if batch is None:
                return
            if not batch:
                continue
            start = time.monotonic()
            try:
                self._run(batch)
            except BaseException:  # the worker must survive anything a batch does
                log.exception("batch failed")
            finally:
                self.metrics.add_batch(len(batch), sum(len(j.prompt_ids) for j in batch), time.monotonic() - start)
                with self._cond:
                    self._running = 0

    def _release(self) -> None:
        with self._cond:
            self._running = max(0, self._running - 1)

    def _inputs(self, batch: Sequence[Job]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = pad_token_ids([j.prompt_ids for j in batch], self.pad_id, "left")
        return ids.to(self.lm.device), mask.to(self.lm.device)

    def _run(self, batch: list[Job]) -> None:
        """One batched, per-row steered ``generate`` call (same defaults as :func:`steerlab.generate`)."""
        tracker = _Tracker(batch, self.lm.tokenizer, self.tok_lock, self.eos, self.metrics, self._release)
        try:
            ids, mask = self._inputs(batch)
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
            if any(j.params.temperature > 0 or j.params.ignore_eos for j in batch):
                kwargs["logits_processor"] = LogitsProcessorList([_RowSampler(batch, self.eos, ids.device)])
            rows = [j.steering for j in batch]
            with steer_rows(self.lm, rows, prompt_length=mask.sum(-1)), torch.inference_mode():
                self.lm.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        except Exception as exc:
            log.exception("generation failed")
            tracker.fail(exc)
            return
        tracker.end()
