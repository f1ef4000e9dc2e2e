"""What the server's worker is asked to do and what it answers: a :class:`Job` per choice, its
:class:`GenParams`, and the events (:class:`Delta`, :class:`Done`, :class:`Failed`) it sends back
to the request's event loop.

Example:
    >>> job = Job(prompt_ids=[1, 403, 407], steering=None, params=GenParams(max_tokens=8),
    ...           loop=loop, events=queue)  # doctest: +SKIP
    >>> job.send(Delta(0, " there"))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

from ..core.steering import SteeringLike


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
    """One completion (one choice of one request) waiting for or going through the worker.

    ``vectors`` names the store vectors its steering uses (for the per-vector request counts of
    ``/metrics``).
    """

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
    vectors: tuple[str, ...] = ()

    def send(self, event: Event) -> None:
        """Hand ``event`` to the request's event loop (thread-safe; a closed loop cancels the job)."""
        if isinstance(event, (Done, Failed)):
            self.finished = True
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the request's loop is gone
            self.cancelled.set()
