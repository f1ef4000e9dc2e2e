"""Beyond one process: sharded extraction and parallel sweeps on Ray (``pip install steerlab[ray]``).

steerlab does not schedule work itself: Ray does. Each Ray actor loads the model once, by name
(the :class:`~steerlab.models.load.LoadSpec` that :func:`steerlab.load_model` records; a model made with
:func:`steerlab.wrap_model` cannot be re-created in another process and is refused).

* :func:`steerlab.extract(..., workers=N) <steerlab.extract>` splits the contrast pairs into
  shards (:mod:`.shards`); streaming methods merge the shards' accumulator states exactly,
  the others gather the read activations and fit once. A worker killed mid-shard is restarted and
  its shard redone (from the shard's checkpoint, when one is given); a shard is merged once.
* :func:`steerlab.evaluate.sweep.sweep` / :func:`~steerlab.evaluate.sweep.autotune` with
  ``workers=N`` run the layer sets as calls on model-holding actors (:mod:`.sweep`); the grids
  equal the single-process ones.
* Without ``ray_address`` the running session is reused, else the cluster Ray finds itself is
  joined (``RAY_ADDRESS``, or one ``ray start`` started on this machine), else a local Ray
  instance with ``N`` CPUs is started; with one, the cluster at that address is joined (every node
  needs steerlab and the model; a cluster with token authentication needs ``RAY_AUTH_MODE=token``).

Example:
    >>> import steerlab
    >>> lm = steerlab.load_model("default")  # doctest: +SKIP
    >>> pairs = steerlab.open_pairs("pairs.jsonl")  # doctest: +SKIP
    >>> vec = steerlab.extract(lm, pairs, layers=range(8, 20), workers=2)  # doctest: +SKIP
"""

from __future__ import annotations

from .cluster import MAX_RESTARTS, DistributedError, Worker, actor_pool, actors, require_ray, shutdown_pool
from .shards import ShardJob, ShardResult, default_shard_size, extract_sharded, run_shard, shard_ranges
from .sweep import sweep_grids

__all__ = [
    "MAX_RESTARTS",
    "DistributedError",
    "ShardJob",
    "ShardResult",
    "Worker",
    "actor_pool",
    "actors",
    "default_shard_size",
    "extract_sharded",
    "require_ray",
    "run_shard",
    "shard_ranges",
    "shutdown_pool",
    "sweep_grids",
]
