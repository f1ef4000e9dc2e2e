"""Read-out methods: a direction fitted to the activations of contrast pairs, layer by layer.

A :class:`ReadOutMethod` runs its own path in :func:`steerlab.extract`:

* **token-wise** (ActAdd): one prompt pair, read token by token, ``fit`` per layer on ``[n, d]``;
* **streaming** (with an ``accumulator``): capture feeds the accumulators batch by batch (memory
  ``O(layers × d)``, resumable from a checkpoint; :mod:`steerlab.extraction.accumulate`);
* otherwise every read activation is captured and ``fit`` once per layer (``diagnose`` records
  how sure each layer's direction is);
* with an executor, or data streamed from a :class:`~steerlab.data.sources.PairSource`, shard by
  shard (:mod:`steerlab.extraction.shards`).

Example:
    >>> import torch
    >>> m = ReadOutMethod("diff", lambda pos, neg: (pos - neg).mean(0), "mean difference")
    >>> m.fit(torch.ones(2, 3), torch.zeros(2, 3))
    tensor([1., 1., 1.])
    >>> m.trained, m.streaming
    (False, False)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch

from ..core.vector import SteeringVector
from ..data.pairs import ContrastPair, check_pairs, data_hash, pair_texts, render
from ..data.sources import PairSource
from ..errors import DatasetError
from ..models.load import LM
from .accumulate import Accumulator, accumulate
from .capture import capture, capture_tokens, check_texts, pair_names
from .run import ExtractData, ExtractRun
from .shards import extract_sharded

Fit = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Diagnose = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, Any]]


def _space_pad(lm: LM, pos: list[int], neg: list[int]) -> tuple[list[int], list[int]]:
    """Pad the shorter token list with space tokens (ActAdd's alignment)."""
    space = lm.tokenizer.encode(" ", add_special_tokens=False)
    if not space:
        raise DatasetError("the tokenizer has no space token to pad the shorter ActAdd prompt with")
    width = max(len(pos), len(neg))
    return pos + space[-1:] * (width - len(pos)), neg + space[-1:] * (width - len(neg))


@dataclass(frozen=True)
class ReadOutMethod:
    """A method that fits a direction to read activations.

    Attributes:
        name: the registry name.
        fit: ``fit(pos [N, d], neg [N, d]) -> [d]`` on all read activations of one layer
            (token-wise: ``[n_tokens, d]`` of one pair, returning ``[n_tokens, d]``).
        summary: one line for listings.
        tokenwise: one pair, one row per token (ActAdd).
        min_pairs: fewest pairs it works with.
        accumulator: for streaming methods, ``accumulator(d_model)`` makes an empty
            :class:`~steerlab.extraction.accumulate.Accumulator` (its ``finalize`` must equal
            ``fit`` on the same data).
        diagnose: optional ``diagnose(pos, neg, direction) -> dict`` (JSON-ready) describing a
            fitted layer, e.g. how sure its sign is; stored in the vector's
            ``meta["per_layer"][str(layer)]`` (non-streaming methods).
    """

    name: str
    fit: Fit
    summary: str
    tokenwise: bool = False
    min_pairs: int = 1
    accumulator: Callable[[int], Accumulator] | None = None
    diagnose: Diagnose | None = None
    trained: ClassVar[bool] = False

    @property
    def streaming(self) -> bool:
        """Whether capture can stream into an accumulator (memory ``O(layers × d)``)."""
        return self.accumulator is not None

    def extract(self, run: ExtractRun, data: ExtractData) -> SteeringVector:
        """The vector this method reads from ``data`` on ``run.lm`` at ``run.layers``.

        Raises:
            DatasetError: training options, too few pairs, one-sided or empty data, a token-wise
                method given several pairs or an executor.
        """
        if run.options:
            raise DatasetError(
                f"options {sorted(run.options)} only apply to trained methods (bipo, reps), not {self.name!r}"
            )
        if run.executor is not None or isinstance(data, PairSource):
            if self.tokenwise:
                raise DatasetError(
                    f"method {self.name!r} reads one prompt pair: there is nothing to shard; "
                    "call it without an executor"
                )
            return extract_sharded(run, self, data)
        pairs = check_pairs(cast(Sequence[ContrastPair], data))  # it checks that each item is one
        if len(pairs) < self.min_pairs:
            raise DatasetError(f"method {self.name!r} needs at least {self.min_pairs} pairs, got {len(pairs)}")
        meta: dict[str, object] = {"n_pairs": len(pairs), "model_type": run.lm.model_type}
        if self.tokenwise:
            directions = self._tokenwise(run, pairs, meta)
        else:
            directions = self._streamed(run, pairs) if self.streaming else self._fitted(run, pairs, meta)
            read_kinds = sorted({repr(p.read) for p in pairs})
            meta["read"] = read_kinds[0] if len(read_kinds) == 1 else read_kinds
        return run.vector(directions, self.name, data_hash(pairs), meta)

    def _tokenwise(
        self, run: ExtractRun, pairs: Sequence[ContrastPair], meta: dict[str, object]
    ) -> dict[int, torch.Tensor]:
        if len(pairs) != 1:
            raise DatasetError(
                f"method {self.name!r} uses exactly one prompt pair (got {len(pairs)}); use mean_diff for many pairs"
            )
        lm = run.lm
        (pos_ids, neg_ids), _ = check_texts(
            lm, [render(pairs[0].positive, lm), render(pairs[0].negative, lm)], pair_names()
        )
        pos_ids, neg_ids = _space_pad(lm, pos_ids, neg_ids)
        pos_acts = capture_tokens(lm, pos_ids, run.layers)
        neg_acts = capture_tokens(lm, neg_ids, run.layers)
        meta["n_tokens"] = len(pos_ids)
        return {k: self.fit(pos_acts[k], neg_acts[k]) for k in run.layers}

    def _streamed(self, run: ExtractRun, pairs: Sequence[ContrastPair]) -> dict[int, torch.Tensor]:
        assert self.accumulator is not None
        texts, reads = pair_texts(run.lm, pairs)
        accs = accumulate(
            run.lm,
            self.name,
            self.accumulator,
            texts,
            reads,
            run.layers,
            batch_size=32 if run.batch_size is None else run.batch_size,
            progress=run.progress,
            checkpoint=run.checkpoint,
            share_prefix=run.share_prefix,
            names=pair_names(),
        )
        return {k: acc.finalize() for k, acc in accs.items()}

    def _fitted(
        self, run: ExtractRun, pairs: Sequence[ContrastPair], meta: dict[str, object]
    ) -> dict[int, torch.Tensor]:
        texts, reads = pair_texts(run.lm, pairs)
        acts = capture(
            run.lm,
            texts,
            run.layers,
            reads,
            batch_size=32 if run.batch_size is None else run.batch_size,
            progress=run.progress,
            share_prefix=run.share_prefix,
            names=pair_names(),
        )
        directions = {k: self.fit(acts[k][0::2], acts[k][1::2]) for k in run.layers}
        if self.diagnose is not None:
            meta["per_layer"] = {str(k): self.diagnose(acts[k][0::2], acts[k][1::2], directions[k]) for k in run.layers}
        return directions
