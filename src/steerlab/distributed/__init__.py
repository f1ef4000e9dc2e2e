"""Beyond one process: :class:`RayExecutor`, an :class:`~steerlab.executor.Executor` on Ray
(``pip install steerlab[ray]``), handed to extraction and sweeps; they never import this package.

steerlab does not schedule work itself: Ray does. Each Ray actor loads the model once, by name
(the :class:`~steerlab.models.load.LoadSpec` that :func:`steerlab.load_model` records; a model made
with :func:`steerlab.wrap_model` cannot be re-created in another process and is refused), and runs
whatever jobs the executor sends it.

* ``steerlab.extract(..., executor=RayExecutor(workers=N))`` splits the contrast pairs into
  shards (:mod:`steerlab.extraction.shards`); streaming methods merge the shards' accumulator
  states exactly, the others gather the read activations and fit once. A worker killed mid-shard
  is restarted and its shard redone (from the shard's checkpoint, when one is given); a shard is
  merged once.
* :func:`~steerlab.evaluate.sweep.sweep` / :func:`~steerlab.evaluate.sweep.autotune` with
  ``executor=RayExecutor(workers=N)`` run the layer sets as jobs on model-holding actors; the
  grids equal the single-process ones.
* Without ``address`` the running session is reused, else the cluster Ray finds itself is
  joined (``RAY_ADDRESS``, or one ``ray start`` started on this machine), else a local Ray
  instance with ``N`` CPUs is started; with one, the cluster at that address is joined (every node
  needs steerlab and the model; a cluster with token authentication needs ``RAY_AUTH_MODE=token``).

Example:
    >>> import steerlab
    >>> lm = steerlab.load_model("default")  # doctest: +SKIP
    >>> pairs = steerlab.open_pairs("pairs.jsonl")  # doctest: +SKIP
    >>> vec = steerlab.extract(lm, pairs, layers=range(8, 20), executor=RayExecutor(workers=2))  # doctest: +SKIP
"""

from __future__ import annotations

from .cluster import MAX_RESTARTS, DistributedError, Worker, actor_pool, actors, require_ray, shutdown_pool
from .executor import RayExecutor

__all__ = [
    "MAX_RESTARTS",
    "DistributedError",
    "RayExecutor",
    "Worker",
    "actor_pool",
    "actors",
    "require_ray",
    "shutdown_pool",
]
