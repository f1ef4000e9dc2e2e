"""Ray plumbing: connect to (or start) Ray, and a pool of model-holding actors.

Every actor loads the model once, by name (:class:`~steerlab.models.load.LoadSpec`, recorded by
:func:`steerlab.load_model`); model objects are never shipped. An actor runs whatever task an
executor sends it (:meth:`Worker.run`): it knows nothing of extraction or sweeps. A killed or crashed actor is
restarted by Ray (``max_restarts``) and the call it was running is sent again
(``max_task_retries``), so a shard or sweep setting is redone, never half-counted.

One pool is kept alive between calls (a sweep after an extraction reuses the loaded models);
asking for another model or worker count replaces it, so a local instance never waits for CPUs
held by idle actors.

Example:
    >>> handles = actors(lm, workers=2)  # doctest: +SKIP
    >>> ray.get([h.pid.remote() for h in handles])  # doctest: +SKIP
    [4711, 4712]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

from ..errors import SteeringError
from ..models.load import LM, LoadSpec

log = logging.getLogger("steerlab.distributed")

S = TypeVar("S")
J = TypeVar("J")
R = TypeVar("R")

MAX_RESTARTS = 3
"""How often Ray restarts a dead actor (and resends the call it was running)."""

THREADS_PER_WORKER = 1
"""CPUs each actor reserves from Ray, and its torch threads. A worker's results equal a single
process's bit for bit at the same torch thread count (``torch.set_num_threads``); at another count
float sums are split differently (relative differences ~1e-7)."""


class DistributedError(SteeringError):
    """Ray is missing, a model cannot be loaded by workers, or workers died too often."""


def require_ray() -> ModuleType:
    """The ``ray`` module, or a :class:`DistributedError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise DistributedError(
            "distributed extraction and sweeps use Ray, which is not installed: pip install steerlab[ray]"
        ) from None
    return ray


def load_spec(lm: LM) -> LoadSpec:
    """How workers load ``lm``; a :class:`DistributedError` for a model they cannot re-create."""
    if lm.spec is None:
        raise DistributedError(
            f"{lm.model_id!r} was wrapped with wrap_model(): Ray workers load the model themselves by name, so "
            "load it with steerlab.load_model(name_or_path) to distribute the work, or drop workers"
        )
    return lm.spec


def check_workers(workers: int) -> int:
    """``workers`` as a positive int (a :class:`DistributedError` otherwise)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DistributedError(f"workers must be a positive number of Ray actors, not {workers!r}")
    return workers


def connect(workers: int, address: str | None = None) -> ModuleType:
    """Ray, initialised: an existing session as it is, else the cluster at ``address``, else the
    cluster Ray finds itself (``RAY_ADDRESS``, or one ``ray start`` started on this machine), else a
    new local instance with ``workers`` CPUs.

    Ray refuses ``num_cpus`` when it joins a cluster, so a local instance is asked for only when Ray
    finds none. Ray sends its authentication token only to a cluster it found itself: an explicit
    ``address`` of a cluster with token authentication needs ``RAY_AUTH_MODE=token`` (and the token:
    ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), which the error says.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    try:
        if address is not None:
            ray.init(address=address, **kwargs)
        else:
            try:
                ray.init(num_cpus=workers, **kwargs)
            except ValueError:  # "When connecting to an existing cluster, num_cpus ... must not be provided"
                ray.init(**kwargs)  # raised before anything starts: join the cluster Ray found
    except ConnectionError as exc:
        raise DistributedError(_unreachable(address, exc)) from None
    except Exception as exc:  # ray.exceptions.AuthenticationError (Ray >= 2.5x)
        if type(exc).__name__ != "AuthenticationError":
            raise
        raise DistributedError(_unreachable(address, exc)) from None
    _check_room(ray, workers)
    return ray


def _unreachable(address: str | None, exc: BaseException) -> str:
    where = (
        f"the Ray cluster at {address}"
        if address is not None
        else "the Ray cluster Ray found (RAY_ADDRESS, or the one `ray start` started here: `ray stop` if it is gone)"
    )
    auth = (
        "; if it uses token authentication (Ray's default when a token exists), set RAY_AUTH_MODE=token and "
        "give its token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token): Ray sends a token only to "
        "a cluster it finds itself (no address, or 'auto'), never to an address you give"
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token"
        else ""
    )
    return f"could not join {where} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}){auth}"


def _check_room(ray: ModuleType, workers: int) -> None:
    """Warn when the cluster has fewer CPUs than the workers reserve: the others wait for it to grow."""
    cpus = float(ray.cluster_resources().get("CPU", 0))
    need = workers * THREADS_PER_WORKER
    if cpus < need:
        log.warning(
            "the Ray cluster has %g CPUs but %d workers reserve %d: the others wait until it grows "
            "(ask for fewer workers, or add nodes)",
            cpus,
            workers,
            need,
        )


class Worker:
    """The body of a Ray actor: one loaded model, every job an executor sends runs on it."""

    def __init__(self, spec: LoadSpec, threads: int = THREADS_PER_WORKER) -> None:
        import torch

        torch.set_num_threads(threads)
        self.lm = spec.load()

    def pid(self) -> int:
        """The actor's process id (changes when Ray restarts it)."""
        return os.getpid()

    def run(self, task: Callable[[LM, S, J], R], shared: S, index: int, job: J) -> tuple[int, R]:
        """``(index, task(model, shared, job))``: one job of :class:`~steerlab.distributed.RayExecutor`."""
        return index, task(self.lm, shared, job)


@dataclass
class _Pool:
    key: str = ""
    handles: list[Any] = field(default_factory=list)


_POOL = _Pool()


def actors(lm: LM, workers: int, address: str | None = None) -> list[Any]:
    """``workers`` Ray actors holding ``lm``'s model (made, or reused from the previous call)."""
    spec = load_spec(lm)
    ray = connect(workers, address)
    key = repr((ray.get_runtime_context().get_job_id(), spec, workers))
    if _POOL.key != key:
        shutdown_pool()
        options: dict[str, Any] = {
            "num_cpus": THREADS_PER_WORKER,
            "max_restarts": MAX_RESTARTS,
            "max_task_retries": MAX_RESTARTS,
        }
        if spec.device == "cuda":
            options["num_gpus"] = 1
        remote = ray.remote(Worker)
        _POOL.handles = [remote.options(**options).remote(spec) for _ in range(workers)]
        _POOL.key = key
        log.info("started %d Ray workers for %s", workers, spec.name)
    return list(_POOL.handles)


def actor_pool(lm: LM, workers: int, address: str | None = None) -> Any:
    """A ``ray.util.ActorPool`` over :func:`actors`: calls go to whichever actor is free."""
    handles = actors(lm, workers, address)
    from ray.util import ActorPool

    return ActorPool(handles)


def shutdown_pool() -> None:
    """Stop the pool's actors (their models are freed); the Ray session stays up."""
    if _POOL.handles:
        ray = require_ray()
        if ray.is_initialized():
            for handle in _POOL.handles:
                ray.kill(handle, no_restart=True)
    _POOL.handles, _POOL.key = [], ""


def ray_errors() -> tuple[type[BaseException], ...]:
    """The Ray exceptions that mean workers died (not that the work itself raised)."""
    import ray.exceptions as rex

    return (rex.RayActorError, rex.WorkerCrashedError, rex.ObjectLostError)


def died(exc: BaseException) -> DistributedError:
    """The error to raise when workers died more often than Ray restarts them."""
    return DistributedError(
        f"Ray workers died more than {MAX_RESTARTS} times ({type(exc).__name__}: {exc}); "
        "check the workers' memory (each holds one model) and rerun; with a checkpoint the run resumes"
    )
