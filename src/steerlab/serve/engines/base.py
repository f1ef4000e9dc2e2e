"""What the server needs of a generation engine: the :class:`Engine` protocol, the
:class:`EngineFactory` that builds one, and :class:`QueueFull`, the refusal every engine raises
when it cannot take more requests.

Two kinds implement it: the local engine (:class:`~steerlab.serve.engines.local.Batcher`: the
model runs in this process, batch at a time or with continuous batching) and the vLLM engine
(:class:`~steerlab.serve.engines.vllm.VLLMEngine`: vLLM generates, a vLLM plugin steers). The
routes, the cost service and ``/metrics`` see only this protocol.

Example:
    >>> from steerlab.serve.engines.local import local_engine
    >>> factory: EngineFactory = local_engine
    >>> engine = factory(lm, ServeSettings(), threading.Lock(), store)  # doctest: +SKIP
    >>> engine.submit([job]); engine.snapshot()["queue_length"]  # doctest: +SKIP
    0
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol

from ...errors import SteeringError
from ...models.load import LM
from ..jobs import Job
from ..metrics import Metrics
from ..settings import ServeSettings
from ..store import VectorStore


class QueueFull(SteeringError):
    """The queue cannot take the request(s) now: retry later."""

    code = "queue_full"


def check_room(waiting: int, adding: int, max_queue: int, closed: bool, metrics: Metrics) -> None:
    """Whether an engine may queue ``adding`` more requests beside the ``waiting`` ones (every
    engine refuses the same way).

    Raises:
        QueueFull: the engine is closing, or they would pass ``max_queue`` (counted as ``rejected``).

    Example:
        >>> check_room(waiting=1, adding=2, max_queue=4, closed=False, metrics=Metrics())  # they fit
        >>> try:
        ...     check_room(waiting=3, adding=2, max_queue=4, closed=False, metrics=Metrics())
        ... except QueueFull as exc:
        ...     print(exc)
        the server is busy: 3 requests are waiting (max_queue=4); retry later
    """
    if closed:
        raise QueueFull("the server is shutting down")
    if waiting + adding > max_queue:
        metrics.count("rejected")
        raise QueueFull(f"the server is busy: {waiting} requests are waiting (max_queue={max_queue}); retry later")


class Engine(Protocol):
    """A generation engine of the server: takes :class:`~steerlab.serve.jobs.Job` s, answers each
    with :class:`~steerlab.serve.jobs.Delta` / ``Done`` / ``Failed`` events on the job's queue."""

    @property
    def metrics(self) -> Metrics:
        """The server's counters (the engine records tokens, batches and outcomes there)."""
        ...

    @property
    def model_lock(self) -> threading.Lock | None:
        """Held while the model runs in this process (others who run it, e.g. the cost service,
        take it too); ``None``: the model does not run here (vLLM)."""
        ...

    @property
    def alive(self) -> bool:
        """Whether the engine serves (its worker runs and it is not closed)."""
        ...

    @property
    def description(self) -> str:
        """Where generation happens, in words (``steerlab serve`` prints it)."""
        ...

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue ``jobs`` (all or none: one request's choices).

        Raises:
            QueueFull: too many requests wait already, or the engine is closing.
            APIError: the engine cannot serve one of the jobs as asked (a 400).
        """
        ...

    def cancel(self, job: Job) -> None:
        """Stop ``job`` (its client went away); nothing if it is finished."""
        ...

    def queue_length(self) -> int:
        """Requests waiting to start."""
        ...

    def running(self) -> int:
        """Requests generating now."""
        ...

    def close(self, timeout: float = 10.0) -> None:
        """Stop serving; requests still waiting fail with a 503."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """The metrics plus the queue's state, JSON-ready (``GET /metrics?format=json``)."""
        ...


class EngineFactory(Protocol):
    """Builds the server's engine: what :func:`steerlab.serve.create_app` takes as ``engine=``."""

    def __call__(self, lm: LM, settings: ServeSettings, tok_lock: threading.Lock, store: VectorStore, /) -> Engine:
        """The engine serving ``lm`` (``tok_lock``: held around every tokenizer call; ``store``:
        the server's vectors). The arguments are passed by position."""
        ...
