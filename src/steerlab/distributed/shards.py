"""Sharded extraction: contrast pairs split into index ranges, each read on its own, merged exactly.

A shard is a range of pair indices of a :class:`~steerlab.data.sources.PairSource`. Each is read where it
runs (a Ray actor, or this process): its texts are rendered with that process's model and captured.

* A **streaming** method (``mean_diff``) feeds the shard into fresh accumulators and returns their
  states; the driver merges a shard's state only once the shard completed, so a shard that is
  redone is never counted twice. With a checkpoint, every shard saves its running state after each
  batch (``{checkpoint}.shard-{i}``; a restarted worker resumes it) and the driver saves the merged
  state with the list of merged shards (``{checkpoint}``; a rerun skips them).
* A **non-streaming** method (``pca_diff``, ``pca_center``, ``probe``) returns the shard's read
  activations; the driver puts them back in pair order and fits once.

Example:
    >>> vec = extract_sharded(lm, open_pairs("pairs.jsonl"), "mean_diff", range(8, 20), workers=4)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.vector import SteeringVector
from ..data.pairs import ContrastPair, DataHash, pair_texts
from ..data.sources import ListPairs, PairSource, open_pairs
from ..errors import CheckpointError, DatasetError, ModelMismatchError, SteeringError
from ..extraction.capture import capture, check_layers, pair_names
from ..extraction.extract import check_found, check_seen, load_accumulators, state_shapes
from ..extraction.methods import Accumulator, Method, get_method
from ..files import read_checkpoint, write_checkpoint
from ..models.load import LM
from ..progress import track
from .cluster import actor_pool, check_workers, died, ray_errors

log = logging.getLogger("steerlab.distributed")

MAX_SHARD_PAIRS = 2048
"""Largest default shard (pairs): bounds a shard's memory and the work a crash loses."""


@dataclass(frozen=True)
class ShardJob:
    """One shard to read: pairs ``[start, stop)`` of ``source``."""

    index: int
    source: PairSource
    start: int
    stop: int
    method: Method
    layers: list[int]
    batch_size: int
    share_prefix: bool
    model_id: str
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


def run_shard(lm: LM, job: ShardJob) -> ShardResult:
    """Read one shard with ``lm`` (in a Ray actor or in this process)."""
    from ..extraction.extract import accumulate

    if lm.model_id != job.model_id:
        raise ModelMismatchError(
            f"a worker loaded {lm.model_id!r} but the extraction is for {job.model_id!r}: "
            "give every node the same model"
        )
    pairs = list(job.source.pairs(job.start, job.stop))
    texts, reads = pair_texts(lm, pairs)
    names = pair_names(job.first)
    if not job.method.streaming:
        acts = capture(
            lm,
            texts,
            job.layers,
            reads,
            batch_size=job.batch_size,
            progress=False,
            share_prefix=job.share_prefix,
            names=names,
        )
        return ShardResult(job.index, len(pairs), acts=acts)
    resumed = _saved_batches(job.checkpoint)
    accs = accumulate(
        lm,
        job.method,
        texts,
        reads,
        job.layers,
        batch_size=job.batch_size,
        progress=False,
        checkpoint=job.checkpoint,
        share_prefix=job.share_prefix,
        names=names,
    )
    states = {k: acc.state_dict() for k, acc in accs.items()}
    return ShardResult(job.index, len(pairs), states=states, resumed_batches=resumed)


def _saved_batches(checkpoint: str | None) -> int:
    """The batches a shard checkpoint says it holds, for the log (0 when unreadable: the shard's
    :func:`~steerlab.extraction.extract.accumulate` checks the file and refuses a bad one)."""
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
        method: Method,
        layers: list[int],
        d_model: int,
        ranges: list[tuple[int, int]],
        checkpoint: str | os.PathLike[str] | None,
        key: str,
    ) -> None:
        self.method, self.layers, self.d_model, self.key = method, layers, d_model, key
        self.ranges = ranges
        n_shards = len(ranges)
        self.path = Path(checkpoint) if checkpoint is not None and method.streaming else None
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


def _results(lm: LM, jobs: list[ShardJob], workers: int | None, ray_address: str | None) -> Iterator[ShardResult]:
    """Shard results as they complete: on Ray actors, or one after another here."""
    if workers is None:
        for job in jobs:
            yield run_shard(lm, job)
        return
    pool = actor_pool(lm, workers, ray_address)
    from ray.exceptions import RayTaskError

    try:
        yield from pool.map_unordered(lambda actor, job: actor.extract_shard.remote(job), jobs)
    except ray_errors() as exc:
        raise died(exc) from exc
    except RayTaskError as exc:  # a shard refused its input: the worker's own error, not Ray's traceback of it
        if isinstance(exc.cause, SteeringError):
            raise exc.cause from None
        raise


def extract_sharded(
    lm: LM,
    pairs: Sequence[ContrastPair] | PairSource | Any,
    method: str = "mean_diff",
    layers: Sequence[int] | range | int | None = None,
    *,
    batch_size: int = 32,
    progress: bool | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    share_prefix: bool = True,
    workers: int | None = None,
    ray_address: str | None = None,
    shard_size: int | None = None,
) -> SteeringVector:
    """:func:`steerlab.extract` over shards of the pairs: on ``workers`` Ray actors, or (``workers``
    None) one shard after another in this process, never holding all pairs.

    Args:
        lm: the model; workers load the same one by name (``lm.spec``).
        pairs: a :class:`~steerlab.data.sources.PairSource`, a list of pairs, or anything
            :func:`~steerlab.data.sources.open_pairs` reads (a file, a dataset).
        method, layers, batch_size, progress, share_prefix: as :func:`steerlab.extract`.
        checkpoint: streaming methods: the driver's merged state (``checkpoint``) and each shard's
            running state (``checkpoint.shard-i``); on a cluster, a path every node can reach.
        workers: Ray actors to start (``None``: this process).
        ray_address: a Ray cluster to join (default: start a local instance with ``workers`` CPUs).
        shard_size: pairs per shard (default :func:`default_shard_size`).

    Raises:
        DistributedError: Ray missing, a ``wrap_model`` model, or workers dying too often.
        DatasetError, LayerRangeError: as :func:`steerlab.extract`.
    """
    if workers is not None or ray_address is not None:
        workers = check_workers(workers, ray_address)
    spec = get_method(method)
    if spec.tokenwise:
        raise DatasetError(
            f"method {method!r} reads one prompt pair: there is nothing to shard; call it without workers"
        )
    source = open_pairs(pairs)
    layer_list = check_layers(lm, range(lm.n_layers) if layers is None else layers)
    scan = Scan.of(source)
    if scan.n_pairs < spec.min_pairs:
        raise DatasetError(f"method {method!r} needs at least {spec.min_pairs} pairs, got {scan.n_pairs}")
    size = shard_size or default_shard_size(scan.n_pairs, workers, batch_size)
    ranges = shard_ranges(scan.n_pairs, size)
    key = hashlib.sha256(
        repr((method, scan.data_hash, scan.n_pairs, layer_list, batch_size, size, lm.model_id)).encode()
    ).hexdigest()[:16]
    merged = _Merged(spec, layer_list, lm.d_model, ranges, checkpoint, key)
    jobs = [
        ShardJob(
            i,
            *_window(source, start, stop),
            spec,
            layer_list,
            batch_size,
            share_prefix,
            lm.model_id,
            merged.shard_checkpoint(i),
            start,
        )
        for i, (start, stop) in enumerate(ranges)
        if i not in merged.done
    ]
    where = f"{workers} workers" if workers else "this process"
    for result in track(
        _results(lm, jobs, workers, ray_address),
        f"extracting {len(ranges)} shards on {where}",
        total=len(jobs),
        enabled=progress,
    ):
        merged.add(result)
    directions = merged.directions()
    check_found(directions, f"{method} on {scan.n_pairs} pair(s)")
    merged.cleanup(len(ranges))
    meta: dict[str, object] = {
        "n_pairs": scan.n_pairs,
        "model_type": lm.model_type,
        "read": scan.reads[0] if len(scan.reads) == 1 else scan.reads,
        "shards": len(ranges),
        "workers": workers or 0,
    }
    return SteeringVector(
        directions=directions,
        model_id=lm.model_id,
        d_model=lm.d_model,
        n_layers=lm.n_layers,
        method=method,
        data_hash=scan.data_hash,
        meta=meta,
    )
