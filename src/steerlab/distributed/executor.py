"""Ray as a :class:`~steerlab.executor.Executor`: jobs run on model-holding Ray actors.

Hand it to :func:`steerlab.extract` (shards of contrast pairs) or to
:func:`~steerlab.evaluate.sweep.sweep` / :func:`~steerlab.evaluate.sweep.autotune` (layer sets):

* the actors come from :func:`~steerlab.distributed.cluster.actors` (each loads the model once,
  by name; one pool is kept between calls, so a sweep after an extraction reuses it);
* ``shared`` goes to Ray's object store once (``ray.put``), each job as its own call, sent to
  whichever actor is free; results come back as they complete;
* a killed actor is restarted and its job sent again (``max_task_retries``); workers dying more
  often raise :class:`~steerlab.distributed.cluster.DistributedError`; an error a job raised is
  raised as itself (a :class:`~steerlab.errors.SteeringError` without Ray's wrapping).

Without ``address`` the running Ray session is reused, else the cluster Ray finds itself
(``RAY_ADDRESS``, or one ``ray start`` started on this machine) is joined, else a local instance
with ``workers`` CPUs is started; with one, the cluster at that address is joined.

Example:
    >>> executor = RayExecutor(workers=2)  # doctest: +SKIP
    >>> vec = steerlab.extract(lm, steerlab.open_pairs("pairs.jsonl"), executor=executor)  # doctest: +SKIP
    >>> rep = sweep(lm, vec, "sentiment", openings, [-1, 0, 1], executor=executor)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from ..errors import SteeringError
from ..models.load import LM
from .cluster import actor_pool, check_workers, died, ray_errors, require_ray

S = TypeVar("S")
J = TypeVar("J")
R = TypeVar("R")


class RayExecutor:
    """Jobs on ``workers`` Ray actors (see the module docs).

    Args:
        workers: how many actors (each holds one model and reserves one CPU).
        address: a Ray cluster to join (``"auto"``, ``"HOST:PORT"``, ``"ray://…"``).

    Raises:
        DistributedError: Ray is not installed, or ``workers`` is not a positive number.
    """

    def __init__(self, workers: int, address: str | None = None) -> None:
        require_ray()
        self._workers = check_workers(workers)
        self.address = address

    @property
    def workers(self) -> int:
        return self._workers

    def describe(self) -> str:
        return f"{self._workers} Ray workers" + (f" at {self.address}" if self.address else "")

    def map(self, lm: LM, task: Callable[[LM, S, J], R], shared: S, jobs: Sequence[J]) -> Iterator[tuple[int, R]]:
        pool = actor_pool(lm, self._workers, self.address)
        ray = require_ray()
        from ray.exceptions import RayTaskError

        shared_ref = ray.put(shared)
        calls = list(enumerate(jobs))
        try:
            yield from pool.map_unordered(lambda actor, call: actor.run.remote(task, shared_ref, *call), calls)
        except ray_errors() as exc:
            raise died(exc) from exc
        except RayTaskError as exc:  # a job refused its input: the worker's own error, not Ray's traceback of it
            if isinstance(exc.cause, SteeringError):
                raise exc.cause from None
            raise

    def __repr__(self) -> str:
        return f"RayExecutor(workers={self._workers}, address={self.address!r})"
