"""Continuous batching through a compiled decoding step (``ServeSettings.compiled``).

:class:`CompiledScheduler` is the continuous scheduler
(:class:`~steerlab.serve.engines.continuous.ContinuousScheduler`) whose rows decode, where their
steering allows, in the slots of a :class:`~steerlab.runtime.slots.SlotDecoder`: one static KV
cache and one step compiled by ``torch.compile``, with each row's steering deltas written into
the step's buffer in place (a new vector, coefficient or slot does not recompile).

* **admit** — as in the continuous scheduler: the new requests' prompts run eagerly in one
  steered forward call (their full steering: positions, conditions) and their first tokens are
  sampled. Then each row goes where its steering decodes: plain adds on generated tokens
  (:func:`steerlab.runtime.slots.row_deltas`, every unsteered row too) join the slots, copying
  their prompt cache into a free slot; any other steering (a window, a token-wise vector, an
  operator other than add, a condition) joins the eager batch of the continuous scheduler.
* **step** — each turn runs one compiled step over the slots and, when the eager batch has rows,
  one eager step over it; each row samples with its own sampler and streams its text.
* **leave** — a finished, cancelled or overflowing row empties its slot.

The slots are sized to the rows: the next power of two of the slotted rows (at most
``max_batch``), over a cache of a power-of-two length that holds every row's prompt and
``max_tokens`` (at least ``min_length``). A new size or length moves the rows' caches to a
decoder of that shape, made once per shape and kept (compiling it, the first time, is a long
pause on a CPU: see docs/serve.md); the decoder grows at once and shrinks when its rows would
fit in half the slots or half the length.

A row's tokens are those of the same request served alone up to float noise: the compiled step's
kernels and the static cache's longer attention differ from the eager step by ~1e-5 on the
logits, which greedy tokens do not see unless two logits tie that closely.

Example:
    >>> CompiledScheduler(worker).run()  # the worker thread's loop  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ...models.load import LM
from ...runtime import hf
from ...runtime.slots import KV, SlotDecoder, row_deltas, slot_count, slot_length
from .continuous import ContinuousScheduler, Row
from .rows import choose_tokens
from .worker import Worker

if TYPE_CHECKING:
    from ..settings import ServeSettings

log = logging.getLogger("steerlab.serve")


BACKEND: str | Callable[..., Any] | None = "inductor"
"""The ``torch.compile`` backend of a server's slot step (tests set a cheaper one)."""
MIN_LENGTH = 64
"""The shortest static cache a server's slot decoder makes."""


def pays(lm: LM, settings: ServeSettings) -> bool:
    """Whether ``compiled="auto"`` decodes through the compiled step: nowhere yet, by measurement.

    On the 2-core CPU measured (docs/serve.md: ``benchmarks/bench_slots.py`` and
    ``bench_serve.py``, busy), the compiled step of the default model is 1.37x the eager one's
    speed at one row, 1.14x at 4 and 1.03x at 16; compiling one step shape takes 10-14 s with
    TorchInductor's on-disk cache warm and 1-4 minutes cold, and a server meets
    several shapes (its slots follow the rows, in powers of two, over caches of power-of-two
    lengths), every request waiting while one compiles. A GPU (CUDA graphs, not enabled for the
    slots) is unmeasured. ``compiled="on"`` opts in.

    Example:
        >>> pays(lm, ServeSettings())  # doctest: +SKIP
        False
    """
    del lm, settings
    return False


@dataclass(eq=False)
class _Slotted:
    """A row decoding in a slot: the row, its held tokens are the decoder's, its deltas."""

    row: Row
    deltas: torch.Tensor


class CompiledScheduler(ContinuousScheduler):
    """The continuous scheduler with a compiled step for the rows whose steering is plain adds.

    Args:
        worker: the queue, the model and its lock, eos and pad ids, the metrics.
        backend: ``torch.compile`` backend of the step (``None``: the slot step eagerly).
        min_length: the shortest static cache made.
    """

    def __init__(
        self, worker: Worker, backend: str | Callable[..., Any] | None = None, min_length: int | None = None
    ) -> None:
        super().__init__(worker)
        self.backend = BACKEND if backend is None else backend
        self.min_length = MIN_LENGTH if min_length is None else min_length
        self.decoders: dict[tuple[int, int], SlotDecoder] = {}
        """The decoders made, by ``(slots, length)``: each compiles its step at its first use."""
        self.dec: SlotDecoder | None = None
        self.slotted: dict[int, _Slotted] = {}

    def shapes(self) -> list[str]:
        """The step shapes made so far, ``"SLOTSxLENGTH"`` (each compiled at its first use)."""
        return [f"{slots}x{length}" for slots, length in sorted(self.decoders)]

    def running(self) -> int:
        """Rows generating now (in slots or in the eager batch)."""
        return len(self.rows) + len(self.slotted)

    # ------------------------------------------------------------------ admit
    def _join(self, rows: list[Row], cache: Any, width: int) -> None:
        """Rows whose steering is plain adds join the slots, the others the eager batch."""
        kv = hf.kv_tensors(cache)
        eager: list[int] = []
        joining: list[tuple[Row, KV, torch.Tensor]] = []
        for i, row in enumerate(rows):
            n = len(row.job.prompt_ids)
            deltas = row_deltas(self.lm, row.job.steering, n)
            if deltas is None:
                eager.append(i)
            else:
                joining.append(
                    (row, [(k[i : i + 1, :, width - n :], v[i : i + 1, :, width - n :]) for k, v in kv], deltas)
                )
        if joining:
            self._fit(len(self.slotted) + len(joining), [r for r, _, _ in joining], grow_only=True)
            dec = self.dec
            assert dec is not None
            for row, row_kv, deltas in joining:
                slot = dec.free()
                assert slot is not None
                dec.join(slot, row_kv, len(row.job.prompt_ids), row.token, deltas)
                self.slotted[slot] = _Slotted(row, deltas)
        if eager:
            if len(eager) < len(rows):
                hf.select_cache_rows(cache, torch.tensor(eager))
            self._merge([rows[i] for i in eager], cache, width)

    # ------------------------------------------------------------------ shape
    def _need(self, row: Row, held: int) -> int:
        """Positions a row holding ``held`` tokens may still need (its remaining tokens, plus one)."""
        return held + row.job.params.max_tokens - len(row.stream.ids) + 1

    def _fit(self, rows: int, joining: list[Row], grow_only: bool) -> None:
        """Make the decoder fit ``rows`` slotted rows (the current ones and ``joining``), moving
        the current rows to a decoder of another shape if needed."""
        dec = self.dec
        need = [self._need(r, len(r.job.prompt_ids)) for r in joining]
        if dec is not None:
            need += [self._need(s.row, dec.held[slot] or 0) for slot, s in self.slotted.items()]
        slots = slot_count(rows, self.max_batch)
        length = slot_length(max(need, default=1), self.min_length)
        if dec is not None:
            if grow_only or (slots > dec.slots // 2 and length > dec.length // 2):
                slots, length = max(slots, dec.slots), max(length, dec.length)
            if (slots, length) == (dec.slots, dec.length):
                return
        self._move(slots, length)

    def _move(self, slots: int, length: int) -> None:
        """Move the slotted rows into a decoder of ``slots`` × ``length`` (made once per shape)."""
        new = self.decoders.get((slots, length))
        if new is None:
            log.info("compiled decoding: a step of %d slots x %d positions (compiled at its first use)", slots, length)
            new = self.decoders[(slots, length)] = SlotDecoder(self.lm, slots, length, self.backend)
        else:
            new.clear()
        old, moved = self.dec, {}
        for i, (slot, s) in enumerate(sorted(self.slotted.items(), key=lambda item: item[0])):
            assert old is not None
            held = old.held[slot]
            assert held is not None
            new.join(i, old.row_cache(slot), held, s.row.token, s.deltas)
            moved[i] = s
        if old is not None and old is not new:
            old.clear()
        self.dec, self.slotted = new, moved

    # ------------------------------------------------------------------ step
    def _step(self) -> None:
        """One token for every row: the slots' compiled step, then the eager batch's step. The
        eager rows' steering session is closed around the compiled step (its hooks would steer
        the slots too): with rows on both paths, it is set up again every step."""
        if self.slotted:
            self._close_session()
            self._slot_step()
        if self.rows:
            super()._step()

    def _slot_step(self) -> None:
        dec = self.dec
        assert dec is not None
        logits = dec.step()
        order = sorted(self.slotted)
        self.metrics.add_step(len(order))
        tokens = choose_tokens(logits[order], [self.slotted[s].row.sampler for s in order])
        left = False
        for slot, tok in zip(order, tokens):
            row = self.slotted[slot].row
            if tok is None:  # NaN/inf logits: this row fails and leaves; the others go on
                row.stream.overflow()
            elif not row.stream.push(tok):
                row.token = tok
                dec.feed(slot, tok)
                continue
            dec.leave(slot)
            del self.slotted[slot]
            left = True
        if left and not self.slotted:
            dec.clear()
            self.dec = None  # the next rows choose their shape afresh
        elif left:
            self._fit(len(self.slotted), [], grow_only=False)

    # ------------------------------------------------------------------ failures
    def _abort(self, exc: BaseException) -> None:
        for s in self.slotted.values():
            s.row.stream.fail(exc)
        self.slotted = {}
        if self.dec is not None:
            self.dec.clear()
        super()._abort(exc)
