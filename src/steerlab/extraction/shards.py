"""Sharded read-out: contrast pairs split into index ranges, each read on its own, merged exactly.

A shard is a range of pair indices of a :class:`~steerlab.data.sources.PairSource`. Each is a job of
the run's :class:`~steerlab.executor.Executor` (this process by default; Ray actors with
``steerlab.distributed.RayExecutor``) and is read where it runs: its texts are rendered with that
process's model and captured.

* A **streaming** method (``mean_diff``) feeds the shard into fresh accumulators and returns their
  states; the driver merges a shard's state only once the shard completed, so a shard that is
  redone is never counted twice. With a checkpoint, every shard saves its running state after each
  batch (``{checkpoint}.shard-{i}``; a restarted worker resumes it) and the driver saves the merged
  state with the list of merged shards (``{checkpoint}``; a rerun skips them).
* A **non-streaming** method (``pca_diff``, ``pca_center``, ``probe``) returns the shard's read
  activations; the driver puts them back in pair order and fits once.

Example:
    >>> run = ExtractRun(lm, [8, 9, 10], executor=RayExecutor(workers=4))  # doctest: +SKIP
    >>> vec = extract_sharded(run, get_method("mean_diff"), open_pairs("pairs.jsonl"))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from ..core.vector import SteeringVector
from ..data.pairs import DataHash, pair_texts
from ..data.sources import ListPairs, PairSource, open_pairs
from ..errors import CheckpointError, DatasetError, ModelMismatchError
from ..executor import LocalExecutor
from ..files import read_checkpoint, write_checkpoint
from ..models.load import LM
from ..progress import track
from .accumulate import Accumulator, accumulate, check_seen, load_accumulators, state_shapes
from .capture import capture, pair_names
from .run import ExtractData, ExtractRun

log = logging.getLogger(__name__)

MAX_SHARD_PAIRS = 2048
"""Largest default shard (pairs): bounds a shard's memory and the work a crash loses."""


class ReadOut(Protocol):
    """What sharding needs of a read-out method (:class:`~steerlab.extraction.readout.ReadOutMethod`)."""

    @property
    def name(self) -> str: ...

    @property
    def min_pairs(self) -> int: ...

    @property
    def fit(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]: ...

    @property
    def accumulator(self) -> Callable[[int], Accumulator] | None: ...


@dataclass(frozen=True)
class ShardPlan:
    """What every shard of one run reads alike (sent once to each worker)."""

    method: ReadOut
    layers: list[int]
    batch_size: int
    share_prefix: bool
    model_id: str


@dataclass(frozen=True)
class ShardJob:
    """One shard to read: pairs ``[start, stop)`` of ``source``."""

    index: int
    source: PairSource
    start: int
    stop: int
    checkpoint: str | None = None
    first: int = 0
    """The index of the shard's first pair in the whole data (names pairs in errors)."""


@dataclass
class ShardResult:
    """What a shard gives back: accumulator states (streaming) or activations ``[2n, d]`` per layer,
    positives at even rows (non-streaming)."""

    index: int
    n_pairs: int
    states: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    acts: dict[int, torch.Tensor] = field(default_factory=dict)
    resumed_batches: int = 0


def run_shard(lm: LM, plan: ShardPlan, job: ShardJob) -> ShardResult:
    """Read one shard with ``lm`` (an executor's task: in a worker or in this process)."""
    if lm.model_id != plan.model_id:
        raise ModelMismatchError(
            f"a worker loaded {lm.model_id!r} but the extraction is for {plan.model_id!r}: "
            "give every node the same model"
        )
    pairs = list(job.source.pairs(job.start, job.stop))
    texts, reads = pair_texts(lm, pairs)
    names = pair_names(job.first)
    make = plan.method.accumulator
    if make is None:
        acts = capture(
            lm,
            texts,
            plan.layers,
            reads,
            batch_size=plan.batch_size,
            progress=False,
            share_prefix=plan.share_prefix,
            names=names,
        )
        return ShardResult(job.index, len(pairs), acts=acts)
    resumed = _saved_batches(job.checkpoint)
    accs = accumulate(
        lm,
        plan.method.name,
        make,
        texts,
        reads,
        plan.layers,
        batch_size=plan.batch_size,
        progress=False,
        checkpoint=job.checkpoint,
        share_prefix=plan.share_prefix,
        names=names,
    )
    states = {k: acc.state_dict() for k, acc in accs.items()}
    return ShardResult(job.index, len(pairs), states=states, resumed_batches=resumed)


def _saved_batches(checkpoint: str | None) -> int:
    """The batches a shard checkpoint says it holds, for the log (0 when unreadable: the shard's
    :func:`~steerlab.extraction.accumulate.accumulate` checks the file and refuses a bad one)."""
    if checkpoint is None or not Path(checkpoint).is_file():
        return 0
    from safetensors import safe_open

    try:
        with safe_open(checkpoint, "pt") as fh:
            done = (fh.metadata() or {}).get("done", "0")
        return int(done) if done.isascii() and done.isdigit() else 0
    except Exception:  # an unreadable file: accumulate says what is wrong with it
        return 0


@dataclass
class Scan:
    """One pass over the data: how many pairs, their hash, which read positions they use."""

    n_pairs: int
    data_hash: str
    reads: list[str]

    @classmethod
    def of(cls, source: PairSource) -> Scan:
        h, reads, n = DataHash(), set(), 0
        for pair in source:
            h.update(pair)
            reads.add(repr(pair.read))
            n += 1
        if n == 0:
            raise DatasetError("no contrast pairs given: the source holds none")
        return cls(n, h.hexdigest(), sorted(reads))


def shard_ranges(n_pairs: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of at most ``size`` pairs covering ``n_pairs``.

    Example:
        >>> shard_ranges(5, 2)
        [(0, 2), (2, 4), (4, 5)]
    """
    return [(start, min(start + size, n_pairs)) for start in range(0, n_pairs, size)]


def default_shard_size(n_pairs: int, workers: int | None, batch_size: int) -> int:
    """About four shards per worker (load balance, little lost to a crash), at least half a batch of
    pairs, at most :data:`MAX_SHARD_PAIRS`; in one process, shards only bound memory."""
    if workers is None:
        return min(n_pairs, MAX_SHARD_PAIRS)
    size = max(math.ceil(n_pairs / (4 * workers)), math.ceil(batch_size / 2))
    return max(1, min(size, MAX_SHARD_PAIRS))


class _Merged:
    """The driver's side: shard results merged as they complete, and the driver checkpoint."""

    def __init__(
        self,
        method: ReadOut,
        layers: list[int],
        d_model: int,
        ranges: list[tuple[int, int]],
        checkpoint: str | os.PathLike[str] | None,
        key: str,
    ) -> None:
        self.method, self.layers, self.d_model, self.key = method, layers, d_model, key
        self.ranges = ranges
        n_shards = len(ranges)
        self.path = Path(checkpoint) if checkpoint is not None and method.accumulator is not None else None
        self.accs: dict[int, Accumulator] = {}
        if method.accumulator is not None:
            self.accs = {k: method.accumulator(d_model) for k in layers}
        self.acts: list[dict[int, torch.Tensor] | None] = [None] * n_shards
        self.done: set[int] = set()
        self.resumed = 0
        self._load()

    def _load(self) -> None:
        """Resume the merged state, checked against the run: the file, its tensors, its list of
        merged shards (distinct shards of this run) and the texts the state counts (two per pair of
        the merged shards)."""
        if self.path is None or not self.path.exists():
            return
        saved, meta = read_checkpoint(
            self.path,
            self.key,
            "extraction (different method, data, layers, batch size, shard size or model)",
            state_shapes(self.accs),
        )
        done = _shard_list(self.path, meta.get("done_shards", ""), len(self.ranges))
        load_accumulators(self.accs, saved)
        check_seen(self.path, self.accs, sum(2 * (self.ranges[i][1] - self.ranges[i][0]) for i in done))
        self.done = done

    def shard_checkpoint(self, index: int) -> str | None:
        """Where shard ``index`` saves its running state (only with a checkpoint)."""
        return None if self.path is None else f"{self.path}.shard-{index}"

    def add(self, result: ShardResult) -> None:
        """Merge one completed shard (once: a shard already merged is ignored)."""
        if result.index in self.done:
            return
        if self.method.accumulator is not None:
            for k, acc in self.accs.items():
                part = self.method.accumulator(self.d_model)
                part.load_state_dict(result.states[k])
                acc.merge(part)
        else:
            self.acts[result.index] = result.acts
        self.done.add(result.index)
        self.resumed += result.resumed_batches
        if result.resumed_batches:
            log.info("shard %d resumed after %d saved batches", result.index, result.resumed_batches)
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        state = {f"{k}.{name}": t for k, acc in self.accs.items() for name, t in acc.state_dict().items()}
        write_checkpoint(self.path, state, self.key, done_shards=json.dumps(sorted(self.done)))

    def directions(self) -> dict[int, torch.Tensor]:
        """The method's direction per layer from every shard."""
        if self.method.accumulator is not None:
            return {k: acc.finalize() for k, acc in self.accs.items()}
        parts = [a for a in self.acts if a is not None]
        acts = {k: torch.cat([p[k] for p in parts]) for k in self.layers}
        return {k: self.method.fit(acts[k][0::2], acts[k][1::2]) for k in self.layers}

    def cleanup(self, n_shards: int) -> None:
        """Delete the driver checkpoint and any shard checkpoints left behind."""
        if self.path is None:
            return
        for i in range(n_shards):
            Path(f"{self.path}.shard-{i}").unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)


def _shard_list(path: Path, text: str, n_shards: int) -> set[int]:
    """A driver checkpoint's list of merged shards: distinct shard indices of this run."""
    try:
        shards = json.loads(text)
    except ValueError:
        shards = None
    if (
        not isinstance(shards, list)
        or len(set(map(repr, shards))) != len(shards)
        or not all(type(i) is int and 0 <= i < n_shards for i in shards)
    ):
        raise CheckpointError(
            f"checkpoint {path}: its list of merged shards ({text[:80]!r}) does not fit this run of "
            f"{n_shards} shards; delete it to start the run over"
        )
    return set(shards)


def _window(source: PairSource, start: int, stop: int) -> tuple[PairSource, int, int]:
    """What a shard job carries: a file or dataset source is its location (small), pairs held in
    memory are cut to the shard's own (a job never ships all of them)."""
    if isinstance(source, ListPairs):
        return ListPairs(source.items[start:stop], source.limits), 0, stop - start
    return source, start, stop


def extract_sharded(
    run: ExtractRun, method: ReadOut, data: ExtractData, shard_size: int | None = None
) -> SteeringVector:
    """``method`` read over shards of ``data``, each a job of ``run.executor`` (default: this
    process, one shard after another, never holding all pairs).

    Args:
        run: the model (workers load the same one by name, ``lm.spec``), layers and options;
            ``run.checkpoint``, for streaming methods: the driver's merged state (``checkpoint``)
            and each shard's running state (``checkpoint.shard-i``); on a cluster, a path every
            node can reach.
        method: a read-out method (not token-wise).
        data: a :class:`~steerlab.data.sources.PairSource`, a list of pairs, or anything
            :func:`~steerlab.data.sources.open_pairs` reads (a file, a dataset).
        shard_size: pairs per shard (default :func:`default_shard_size`).

    Raises:
        DatasetError: no pairs, or fewer than the method needs.
        DistributedError: from a Ray executor (Ray missing, a ``wrap_model`` model, workers dying).
    """
    lm, executor = run.lm, run.executor or LocalExecutor()
    batch_size = 32 if run.batch_size is None else run.batch_size
    source = open_pairs(data)
    scan = Scan.of(source)
    if scan.n_pairs < method.min_pairs:
        raise DatasetError(f"method {method.name!r} needs at least {method.min_pairs} pairs, got {scan.n_pairs}")
    size = shard_size or default_shard_size(scan.n_pairs, executor.workers, batch_size)
    ranges = shard_ranges(scan.n_pairs, size)
    key = hashlib.sha256(
        repr((method.name, scan.data_hash, scan.n_pairs, run.layers, batch_size, size, lm.model_id)).encode()
    ).hexdigest()[:16]
    merged = _Merged(method, run.layers, lm.d_model, ranges, run.checkpoint, key)
    plan = ShardPlan(method, run.layers, batch_size, run.share_prefix, lm.model_id)
    jobs = [
        ShardJob(i, *_window(source, start, stop), merged.shard_checkpoint(i), start)
        for i, (start, stop) in enumerate(ranges)
        if i not in merged.done
    ]
    results = executor.map(lm, run_shard, plan, jobs)
    label = f"extracting {len(ranges)} shards on {executor.describe()}"
    for _, result in track(results, label, total=len(jobs), enabled=run.progress):
        merged.add(result)
    directions = merged.directions()
    meta: dict[str, object] = {
        "n_pairs": scan.n_pairs,
        "model_type": lm.model_type,
        "read": scan.reads[0] if len(scan.reads) == 1 else scan.reads,
        "shards": len(ranges),
        "workers": executor.workers or 0,
    }
    vector = run.vector(directions, method.name, scan.data_hash, meta)
    merged.cleanup(len(ranges))
    return vector
