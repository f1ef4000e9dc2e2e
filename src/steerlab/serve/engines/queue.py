"""The waiting requests of the local engine: a FIFO of :class:`~steerlab.serve.jobs.Job` s that
request handlers fill (:meth:`JobQueue.submit`, :meth:`JobQueue.cancel`) and the worker thread's
scheduler empties (:meth:`JobQueue.take`), with the count of rows generating now.

An idle scheduler takes a burst at once: :meth:`JobQueue.take` with ``block`` waits for a first
request, then until none has arrived for ``batch_wait_ms`` (at most ten times that in all), so
that concurrent requests start together.

Example:
    >>> from steerlab.serve.metrics import Metrics
    >>> queue = JobQueue(max_queue=4, batch_wait_ms=0.0, metrics=Metrics())
    >>> queue.take(8, block=False), queue.queue_length(), queue.running()
    ([], 0, 0)
    >>> queue.close(); queue.take(8, block=True) is None
    True
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Sequence

from ..jobs import Failed, Job
from ..metrics import Metrics
from .base import check_room


class JobQueue:
    """Jobs waiting for the worker, oldest first (thread-safe).

    Args:
        max_queue: the most jobs waiting; more are refused (:class:`~steerlab.serve.engines.base.QueueFull`).
        batch_wait_ms: how long a burst may still grow (see :meth:`take`).
        metrics: where accepted, rejected, cancelled and timed-out requests are counted.
    """

    def __init__(self, max_queue: int, batch_wait_ms: float, metrics: Metrics) -> None:
        self.max_queue = max_queue
        self.quiet_s = batch_wait_ms / 1000.0
        self.metrics = metrics
        self._cond = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self._running = 0
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    # ------------------------------------------------------------------ request handlers
    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue ``jobs`` (all or none; one request's choices).

        Raises:
            QueueFull: ``max_queue`` jobs wait already, or the queue is closed
                (:func:`~steerlab.serve.engines.base.check_room`).
        """
        with self._cond:
            check_room(len(self._waiting), len(jobs), self.max_queue, self._closed, self.metrics)
            self._waiting.extend(jobs)
            self.metrics.count("accepted", len(jobs))
            self._cond.notify()
        self.metrics.count_vectors(name for job in jobs[:1] for name in job.vectors)

    def cancel(self, job: Job) -> None:
        """Stop ``job`` (its client went away): dropped from the queue, or flagged so that its row stops."""
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
        """Jobs waiting."""
        with self._cond:
            return len(self._waiting)

    def running(self) -> int:
        """Rows generating now (taken, not yet released)."""
        with self._cond:
            return self._running

    def close(self) -> None:
        """Refuse new jobs, wake the worker, and fail the jobs still waiting (503)."""
        with self._cond:
            self._closed = True
            waiting = list(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
        for job in waiting:
            job.send(Failed(job.index, 503, "the server is shutting down", "server_shutdown"))

    # ------------------------------------------------------------------ the scheduler
    def take(self, limit: int, block: bool) -> list[Job] | None:
        """Up to ``limit`` waiting jobs, oldest first (cancelled and expired ones are dropped);
        ``None`` once the queue is closed.

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
        last = time.monotonic()
        cap = last + 10 * self.quiet_s
        seen = len(self._waiting)
        while seen < limit and not self._closed:
            left = min(last + self.quiet_s, cap) - time.monotonic()
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
        """One taken row finished (its :class:`~steerlab.serve.engines.rows.RowStream` calls this)."""
        with self._cond:
            self._running = max(0, self._running - 1)

    def release_all(self) -> None:
        """Every taken row finished (a batch ended, however it ended)."""
        with self._cond:
            self._running = 0
