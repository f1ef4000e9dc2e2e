"""Turn contrast pairs into a :class:`~steerlab.core.vector.SteeringVector` with any registered method.

Positive and negative texts go through **one** batched capture (length-bucketed, truncated
forward); the method then runs per layer on the read activations.

Example:
    >>> pairs = steerlab.persona_pairs("happy", "sad", openings)  # doctest: +SKIP
    >>> vec = steerlab.extract(lm, pairs, method="mean_diff", layers=range(8, 20))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.vector import SteeringVector
from ..data.pairs import ContrastPair, Read, check_pairs, data_hash, pair_texts, render
from ..data.sources import PairSource
from ..errors import CheckpointError, DatasetError
from ..files import checkpoint_int, read_checkpoint, write_checkpoint
from ..models.load import LM
from .capture import (
    Names,
    batch_order,
    capture,
    capture_tokens,
    check_layers,
    check_texts,
    iter_capture,
    n_batches,
    pair_names,
)
from .methods import Accumulator, Method, get_method


def _space_pad(lm: LM, pos: list[int], neg: list[int]) -> tuple[list[int], list[int]]:
    """Pad the shorter token list with space tokens (ActAdd's alignment)."""
    space = lm.tokenizer.encode(" ", add_special_tokens=False)
    if not space:
        raise DatasetError("the tokenizer has no space token to pad the shorter ActAdd prompt with")
    width = max(len(pos), len(neg))
    return pos + space[-1:] * (width - len(pos)), neg + space[-1:] * (width - len(neg))


def extract(
    lm: LM,
    pairs: Sequence[ContrastPair] | Sequence[Any] | PairSource,
    method: str = "mean_diff",
    layers: Sequence[int] | range | int | None = None,
    batch_size: int | None = None,
    progress: bool | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    share_prefix: bool = True,
    workers: int | None = None,
    ray_address: str | None = None,
    **train_options: Any,
) -> SteeringVector:
    """Build a steering vector from contrast pairs (or, for trained methods, preference pairs).

    Args:
        lm: the model (from :func:`steerlab.load_model`).
        pairs: contrast pairs (:func:`steerlab.persona_pairs`, :func:`steerlab.caa_pairs`, ...); trained
            methods also take :class:`steerlab.PreferencePair` objects and CAA items
            (:func:`steerlab.self_contrast`, :func:`steerlab.preference_pairs`).
        method: a registered method: ``mean_diff``, ``pca_diff``, ``pca_center``, ``probe``,
            ``actadd``, or a trained one: ``bipo``, ``reps``.
        layers: block indices to read (default: all).
        batch_size: texts per forward pass during capture (default 32); for trained methods,
            preference pairs per optimiser step (default 16).
        progress: show a progress bar.
        checkpoint: for streaming methods (``mean_diff``), a file where running sums are saved
            after every batch; for trained methods, the training state after every step. An
            interrupted run called again with the same arguments resumes from it. Deleted when the
            vector is done.
        share_prefix: compute every distinct token prefix of the dataset once (the chat
            template's system turn, a CAA pair's question, openings that are prefixes of one
            another), continuing from key/value caches (:mod:`steerlab.extraction.trie`); the activations equal
            a full forward's up to float rounding. ``False`` runs every token of every text.
        workers: split the pairs into shards and read them on this many Ray actors, each loading
            the model once (see :mod:`steerlab.distributed`; ``pip install steerlab[ray]``).
            ``pairs`` may then also be a :class:`~steerlab.data.sources.PairSource` (a streamed file or
            dataset), which is read in shards without workers too.
        ray_address: join this Ray cluster (needs ``workers``); without it, the cluster Ray finds
            (``RAY_ADDRESS``, or one ``ray start`` started here), else a new local instance.
        **train_options: trained methods only: :class:`steerlab.extraction.train.TrainConfig` fields (``lr``,
            ``epochs``, ``beta``, ``fluency_weight``, ``holdout``, ``patience``, ``seed``,
            ``positions``, ``factors``, ...), ``config=``, ``fluency_texts=`` and ``on_step=``.

    Raises:
        DatasetError: empty or one-sided data, too few pairs for the method, unknown method, or
            training options given to a read-out method.
        LayerRangeError: a layer outside the model.
        TrainingError: a training setting out of range.
    """
    if workers is not None or ray_address is not None or isinstance(pairs, PairSource):
        if get_method(method).trained or train_options:
            raise DatasetError(
                f"method {method!r} with training options cannot run on Ray workers or streamed sources; "
                "trained methods (bipo, reps) take an in-memory list of pairs in one process"
            )
        from ..distributed import extract_sharded

        return extract_sharded(
            lm,
            pairs,
            method,
            layers,
            batch_size=32 if batch_size is None else batch_size,
            progress=progress,
            checkpoint=checkpoint,
            share_prefix=share_prefix,
            workers=workers,
            ray_address=ray_address,
        )
    spec = get_method(method)
    layer_list = check_layers(lm, range(lm.n_layers) if layers is None else layers)
    if spec.trained:
        assert spec.trainer is not None
        return spec.trainer(
            lm,
            pairs,
            layer_list,
            batch_size=batch_size,
            progress=progress,
            checkpoint=checkpoint,
            share_prefix=share_prefix,
            **train_options,
        )
    if train_options:
        raise DatasetError(
            f"options {sorted(train_options)} only apply to trained methods (bipo, reps), not {method!r}"
        )
    batch_size = 32 if batch_size is None else batch_size
    pairs = check_pairs(pairs)
    if len(pairs) < spec.min_pairs:
        raise DatasetError(f"method {method!r} needs at least {spec.min_pairs} pairs, got {len(pairs)}")
    meta: dict[str, object] = {"n_pairs": len(pairs), "model_type": lm.model_type}
    if spec.tokenwise:
        if len(pairs) != 1:
            raise DatasetError(
                f"method {method!r} uses exactly one prompt pair (got {len(pairs)}); use mean_diff for many pairs"
            )
        (pos_ids, neg_ids), _ = check_texts(
            lm, [render(pairs[0].positive, lm), render(pairs[0].negative, lm)], pair_names()
        )
        pos_ids, neg_ids = _space_pad(lm, pos_ids, neg_ids)
        pos_acts = capture_tokens(lm, pos_ids, layer_list)
        neg_acts = capture_tokens(lm, neg_ids, layer_list)
        directions = {k: spec.fit(pos_acts[k], neg_acts[k]) for k in layer_list}
        meta["n_tokens"] = len(pos_ids)
    else:
        texts, reads = pair_texts(lm, pairs)
        if spec.streaming:
            accs = accumulate(
                lm,
                spec,
                texts,
                reads,
                layer_list,
                batch_size=batch_size,
                progress=progress,
                checkpoint=checkpoint,
                share_prefix=share_prefix,
                names=pair_names(),
            )
            directions = {k: acc.finalize() for k, acc in accs.items()}
        else:
            acts = capture(
                lm,
                texts,
                layer_list,
                reads,
                batch_size=batch_size,
                progress=progress,
                share_prefix=share_prefix,
                names=pair_names(),
            )
            directions = {k: spec.fit(acts[k][0::2], acts[k][1::2]) for k in layer_list}
            if spec.diagnose is not None:
                meta["per_layer"] = {
                    str(k): spec.diagnose(acts[k][0::2], acts[k][1::2], directions[k]) for k in layer_list
                }
        read_kinds = sorted({repr(p.read) for p in pairs})
        meta["read"] = read_kinds[0] if len(read_kinds) == 1 else read_kinds
    check_found(directions, f"{method} on {len(pairs)} pair(s)")
    return SteeringVector(
        directions=directions,
        model_id=lm.model_id,
        d_model=lm.d_model,
        n_layers=lm.n_layers,
        method=method,
        data_hash=data_hash(pairs),
        meta=meta,
    )


def accumulate(
    lm: LM,
    spec: Method,
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
    """Feed the method's accumulators batch by batch, resumable from a checkpoint.

    Texts alternate positive / negative, so a text's side is its index parity. Shards of a
    distributed extraction (:mod:`steerlab.distributed`) run this on their own texts. A checkpoint
    is checked against the run before it is used (:func:`resume_accumulators`).
    """
    assert spec.accumulator is not None
    order = batch_order(lm, share_prefix)
    run = (spec.name, texts, reads, layers, batch_size, lm.model_id, order)
    key = hashlib.sha256(repr(run).encode()).hexdigest()[:16]
    accs = {k: spec.accumulator(lm.d_model) for k in layers}
    total = n_batches(len(texts), batch_size)
    done = 0
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        done = resume_accumulators(path, key, accs, total, batch_size)
    batches = iter_capture(
        lm,
        texts,
        layers,
        reads,
        batch_size,
        progress=progress,
        skip_batches=done,
        share_prefix=share_prefix,
        names=names,
    )
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


def check_found(directions: dict[int, torch.Tensor], what: str) -> None:
    """Refuse directions that came out zero or non-finite at a layer: no vector is made of them.

    Raises:
        DatasetError: naming the layer; a zero direction means the positive and negative texts
            read the same activations there (identical pairs, or pairs that differ only after the
            read position).

    Example:
        >>> check_found({3: torch.zeros(4)}, "mean_diff on 2 pairs")
        Traceback (most recent call last):
        ...
        steerlab.errors.DatasetError: mean_diff on 2 pairs: the direction at layer 3 is zero: ...
    """
    for k, d in directions.items():
        if not bool(torch.isfinite(d).all()):
            raise DatasetError(
                f"{what}: the direction at layer {k} holds NaN or inf values (the activations "
                "overflow there): use other layers or a float32 model"
            )
        if not bool(d.ne(0).any()):
            raise DatasetError(
                f"{what}: the direction at layer {k} is zero: the positive and negative texts read the "
                "same activations there (identical texts, or texts that differ only after the read "
                "position); fix the pairs or the read positions"
            )
