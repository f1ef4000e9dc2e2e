"""Streaming read-out: a method's running state per layer (:class:`Accumulator`), fed batch by batch
while capture runs, saved to and resumed from a checkpoint, merged exactly across shards.

Memory stays ``O(layers × d)`` whatever the number of pairs.

Example:
    >>> import torch
    >>> from steerlab.extraction.methods.mean_diff import MeanDiffAccumulator
    >>> acc = MeanDiffAccumulator(2)
    >>> acc.update(torch.tensor([[2.0, 0.0], [0.0, 0.0]]), torch.tensor([True, False]))
    >>> acc.finalize()
    tensor([2., 0.])
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import torch

from ..data.pairs import Read
from ..errors import CheckpointError
from ..files import checkpoint_int, read_checkpoint, write_checkpoint
from ..models.load import LM
from .capture import CaptureOptions, Names, batch_order, iter_capture, n_batches


class Accumulator(ABC):
    """The running state of a streaming method at one layer.

    A streaming method's ``finalize`` must equal its ``fit`` on the same data.
    """

    @abstractmethod
    def update(self, acts: torch.Tensor, positive: torch.Tensor) -> None:
        """Add a batch: ``acts [n, d]`` with ``positive [n]`` True for positive texts."""

    @abstractmethod
    def merge(self, other: Accumulator) -> None:
        """Add what another accumulator of the same method saw (a shard computed elsewhere)."""

    @abstractmethod
    def finalize(self) -> torch.Tensor:
        """The direction ``[d]``."""

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that :meth:`load_state_dict` restores exactly (for checkpoints)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the state saved by :meth:`state_dict`."""

    def seen(self) -> int | None:
        """How many texts it was fed (``None``: it does not count); a resumed checkpoint is
        checked against it."""
        return None


def accumulate(
    lm: LM,
    name: str,
    make: Callable[[int], Accumulator],
    texts: list[str],
    reads: list[Read],
    layers: list[int],
    *,
    batch_size: int,
    progress: bool | None,
    checkpoint: str | os.PathLike[str] | None,
    share_prefix: bool = True,
    names: Names | None = None,
) -> dict[int, Accumulator]:
    """Feed method ``name``'s accumulators (``make(d_model)`` per layer) batch by batch, resumable
    from a checkpoint.

    Texts alternate positive / negative, so a text's side is its index parity. The shards of a
    sharded extraction (:mod:`steerlab.extraction.shards`) run this on their own texts. A
    checkpoint is checked against the run before it is used (:func:`resume_accumulators`).
    """
    order = batch_order(lm, share_prefix)
    run = (name, texts, reads, layers, batch_size, lm.model_id, order)
    key = hashlib.sha256(repr(run).encode()).hexdigest()[:16]
    accs = {k: make(lm.d_model) for k in layers}
    total = n_batches(len(texts), batch_size)
    done = 0
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        done = resume_accumulators(path, key, accs, total, batch_size)
    options = CaptureOptions(batch_size, progress=progress, share_prefix=share_prefix, names=names)
    batches = iter_capture(lm, texts, layers, reads, options, skip_batches=done)
    for batch, acts in batches:
        positive = torch.tensor([i % 2 == 0 for i in batch])
        for k in layers:
            accs[k].update(acts[k], positive)
        done += 1
        if path is not None and done < total:
            state = {f"{k}.{name}": t for k, acc in accs.items() for name, t in acc.state_dict().items()}
            write_checkpoint(path, state, key, done=str(done))
    if path is not None and path.is_file():
        path.unlink()
    return accs


def state_shapes(accs: dict[int, Accumulator]) -> dict[str, tuple[int, ...]]:
    """The tensors (names and shapes) a checkpoint of ``accs`` holds: ``"{layer}.{name}"``."""
    return {f"{k}.{name}": tuple(t.shape) for k, acc in accs.items() for name, t in acc.state_dict().items()}


def load_accumulators(accs: dict[int, Accumulator], saved: dict[str, torch.Tensor]) -> None:
    """Restore each layer's accumulator from checkpoint tensors named ``"{layer}.{name}"``."""
    for k, acc in accs.items():
        prefix = f"{k}."
        acc.load_state_dict({name[len(prefix) :]: t for name, t in saved.items() if name.startswith(prefix)})


def check_seen(path: Path, accs: dict[int, Accumulator], expected: int) -> None:
    """Refuse a resumed state whose accumulators did not see ``expected`` texts (where they count)."""
    for k, acc in accs.items():
        seen = acc.seen()
        if seen is not None and seen != expected:
            raise CheckpointError(
                f"checkpoint {path}: layer {k}'s state counts {seen} texts but its progress says "
                f"{expected}: it was altered; delete it to start the run over"
            )


def resume_accumulators(path: Path, key: str, accs: dict[int, Accumulator], total: int, batch_size: int) -> int:
    """Load a streamed extraction's checkpoint into ``accs`` and return how many batches it holds,
    after checking it against the run: the file (:func:`~steerlab.files.read_checkpoint`), its
    tensors' names and shapes, its batch counter (``1 .. total - 1``) and the texts the state
    counts (``done × batch_size``)."""
    saved, meta = read_checkpoint(
        path,
        key,
        "extraction (different method, data, layers, batch size, model, device or share_prefix)",
        state_shapes(accs),
    )
    done = checkpoint_int(path, meta, "done", 1, max(total - 1, 1))
    load_accumulators(accs, saved)
    check_seen(path, accs, done * batch_size)
    return done
