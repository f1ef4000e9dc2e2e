"""Where model-holding work runs: an :class:`Executor` handed to :func:`steerlab.extract` and
:func:`~steerlab.evaluate.sweep.sweep` / :func:`~steerlab.evaluate.sweep.autotune`.

The work is cut into jobs that each need the model: a shard of contrast pairs, a layer set of a
sweep. An executor runs ``task(model, shared, job)`` for every job and yields ``(index, result)``
as each completes, in any order; the caller merges (a shard) or places (a sweep row) each result.
``shared`` is what every job reads (the method, the vector, the data): sent once, not per job.

* :class:`LocalExecutor` — this process, one job after another, with the caller's model.
* ``steerlab.distributed.RayExecutor`` — Ray actors, each loading the model once by name
  (``pip install steerlab[ray]``).

extract and sweep know only this protocol; they never import :mod:`steerlab.distributed`, which
implements it. A task must be a module-level function (an executor may send it to another
process), and shared data and jobs must pickle.

Example:
    >>> list(LocalExecutor().map(None, lambda lm, shared, job: shared * job, 10, [1, 2, 3]))
    [(0, 10), (1, 20), (2, 30)]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from .models.load import LM

S = TypeVar("S")
J = TypeVar("J")
R = TypeVar("R")


class Executor(Protocol):
    """Runs model-holding jobs (see the module docs)."""

    @property
    def workers(self) -> int | None:
        """How many processes run jobs at once (``None``: this process)."""
        ...

    def describe(self) -> str:
        """Where the jobs run, for progress lines (``"this process"``, ``"2 Ray workers"``)."""
        ...

    def map(self, lm: LM, task: Callable[[LM, S, J], R], shared: S, jobs: Sequence[J]) -> Iterator[tuple[int, R]]:
        """``(index into jobs, task(model, shared, job))`` for every job, as each completes.

        ``lm`` is the caller's model: run here, or named (``lm.spec``) for workers to load. An
        error a job raises is raised here (a :class:`~steerlab.errors.SteeringError` as itself).
        """
        ...


class LocalExecutor:
    """Every job in this process, in order, with the caller's model."""

    workers: int | None = None

    def describe(self) -> str:
        return "this process"

    def map(self, lm: LM, task: Callable[[LM, S, J], R], shared: S, jobs: Sequence[J]) -> Iterator[tuple[int, R]]:
        for i, job in enumerate(jobs):
            yield i, task(lm, shared, job)
