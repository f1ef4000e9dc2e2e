"""Compiled decoding for rows that come and go: a fixed number of slots over one static KV cache.

A :class:`SlotDecoder` serves up to ``slots`` rows, each with its own plain-add steering, one
token per row per :meth:`~SlotDecoder.step`, through one step compiled by ``torch.compile``
(``fullgraph=True, dynamic=False``), like :class:`steerlab.runtime.decode.Decoder` but for a
server whose rows join and leave between steps:

* the KV cache is one transformers ``StaticCache`` of ``slots`` rows × ``length`` positions,
  and a step writes every row at one shared column ``w`` (:attr:`SlotDecoder.column`). Rows are
  kept **right-aligned** at ``w``: a row holding ``n`` tokens holds them at ``[w - n, w)``; the
  positions before are padding (attention-mask zeros). A joining row's prompt cache (prefilled
  eagerly elsewhere, with its full steering) is copied into its slot at ``[w - n, w)``; when
  ``n > w`` every row is shifted right first. When ``w`` reaches ``length`` the padding every
  row has is dropped (:meth:`~SlotDecoder.compact`); the caller picks a ``length`` that always
  leaves room (:func:`slot_length`).
* steering is a ``[n_layers, slots, 1, d]`` buffer of deltas that forward hooks add to each
  block's output; a row's deltas are written into its slot in place, so a new vector,
  coefficient or slot never recompiles (the graph reads the same tensors). An empty slot or an
  unsteered row holds zeros: ``x + 0.0 == x``, so a coefficient of 0 is the plain run of this path.
* the step returns the ``[slots, V]`` logits of each row's token: each row samples with its own
  sampler outside the graph (:func:`steerlab.serve.engines.rows.choose_tokens`, which also finds
  rows whose logits are not finite). Empty slots run too (their results are ignored).

Only rows whose steering decodes as plain adds (:func:`steerlab.runtime.decode.eligible`) can
join (:func:`row_deltas` returns ``None`` for the others).

Example:
    >>> dec = SlotDecoder(lm, slots=4, length=128)  # doctest: +SKIP
    >>> dec.join(0, kv, n=7, token=412, deltas=row_deltas(lm, steering, 7))  # doctest: +SKIP
    >>> logits = dec.step()  # [4, V]; then dec.feed(0, next_token)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..core.steering import SteeringLike
from ..models.load import LM
from . import hf
from .compiled import own_code
from .decode import delta_hooks, eligible
from .passes import forward, hooked
from .session import steer_rows

KV = Sequence[tuple[torch.Tensor, torch.Tensor]]
"""One row's cache: per layer, ``[1, heads, n, dim]`` keys and values."""


def slot_length(need: int, floor: int = 64) -> int:
    """The cache length for rows needing at most ``need`` positions each (tokens held plus tokens
    still to come, plus one): a power of two, at least ``floor``. A cache this long always has a
    column to write after :meth:`SlotDecoder.compact`.

    Example:
        >>> slot_length(70), slot_length(10, floor=16)
        (128, 16)
    """
    return max(floor, 1 << max(0, need - 1).bit_length())


def slot_count(rows: int, most: int) -> int:
    """Slots for ``rows`` rows: the next power of two, at most ``most`` (and at least ``rows``).

    Example:
        >>> slot_count(3, 16), slot_count(9, 12), slot_count(0, 8)
        (4, 12, 1)
    """
    return max(rows, min(most, 1 << max(0, rows - 1).bit_length()))


def row_deltas(lm: LM, steering: SteeringLike | None, prompt_length: int) -> torch.Tensor | None:
    """A row's decoding deltas ``[n_layers, 1, d]`` (zeros without steering), or ``None`` when its
    steering is not plain adds on generated tokens (:func:`~steerlab.runtime.decode.eligible`).

    Example:
        >>> row_deltas(lm, Steering(vec, 4.0), 7).shape  # doctest: +SKIP
        torch.Size([30, 1, 576])
    """
    dtype = next(lm.model.parameters()).dtype
    out = torch.zeros(lm.n_layers, 1, lm.d_model, dtype=dtype, device=lm.device)
    if steering is None:
        return out
    lengths = torch.tensor([prompt_length], device=lm.device)
    with steer_rows(lm, [steering], prompt_length=lengths, generating=True) as session:
        plan = session.plan
    if not eligible(lm, plan) or plan.decode is None:
        return None
    for layer, adds in plan.decode.adds.items():
        for delta in adds or ():
            out[layer] += delta.to(device=lm.device, dtype=dtype).reshape(-1, lm.d_model)[-1]
    return out


class SlotDecoder:
    """A compiled one-token step over ``slots`` rows of a static cache of ``length`` positions.

    Args:
        lm: the model.
        slots: rows per step.
        length: positions of the static cache (a row holds at most ``length - 1`` tokens).
        backend: ``torch.compile`` backend (``None``: the same step eagerly).
    """

    def __init__(self, lm: LM, slots: int, length: int, backend: str | Callable[..., Any] | None = "inductor") -> None:
        self.lm = lm
        self.slots = slots
        self.length = length
        device = lm.device
        dtype = next(lm.model.parameters()).dtype
        self.deltas = torch.zeros(lm.n_layers, slots, 1, lm.d_model, dtype=dtype, device=device)
        self.mask = torch.ones(slots, length, dtype=torch.long, device=device)
        self.tokens = torch.zeros(slots, 1, dtype=torch.long, device=device)
        self.positions = torch.zeros(slots, 1, dtype=torch.long, device=device)
        self.held: list[int | None] = [None] * slots
        """Per slot, the tokens its row holds in the cache (``None``: empty)."""
        self.column = 0
        """Where the next step writes every row (rows end at ``column``)."""
        self.steps = 0
        self._hooks = delta_hooks(self.deltas)
        self.cache: Any = hf.static_cache(lm.model, length)
        with torch.no_grad():  # allocate the cache's tensors (a static cache does at its first write)
            self._eager_step(self.tokens, self.positions, torch.zeros(1, dtype=torch.long, device=device), self.mask)
            self.clear()
        self._step: Callable[..., torch.Tensor] = self._eager_step
        if backend is not None:
            self._step = torch.compile(self._own_step(), backend=backend, fullgraph=True, dynamic=False)

    def _own_step(self) -> Callable[..., torch.Tensor]:
        """:meth:`_eager_step` bound to this decoder through a code object of its own. TorchDynamo
        keeps its compiled graphs per code object, at most ``recompile_limit`` (8) of them, and
        with ``fullgraph=True`` one more is an error: one shared code object would fail at the
        ninth decoder (each holds its own cache, a guard of the graph). With its own code object
        each decoder holds exactly one graph."""
        return own_code(SlotDecoder._eager_step, self, f"slot_step_{self.slots}x{self.length}")

    def _eager_step(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache_position: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        out = forward(
            self.lm,
            tokens,
            mask,
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
            cache_position=cache_position,
        )
        return out.logits[:, -1]

    # ------------------------------------------------------------------ rows
    @property
    def rows(self) -> int:
        """Slots holding a row."""
        return sum(n is not None for n in self.held)

    def free(self) -> int | None:
        """An empty slot (``None``: all are taken)."""
        return next((i for i, n in enumerate(self.held) if n is None), None)

    def clear(self) -> None:
        """Empty every slot (the cache's tensors stay, zeroed)."""
        for keys, values in hf.kv_tensors(self.cache):
            keys.zero_()
            values.zero_()
        self.deltas.zero_()
        self.mask.fill_(1)
        self.held = [None] * self.slots
        self.column = 0
        hf.set_write_column(self.cache, 0)

    def join(self, slot: int, kv: KV, n: int, token: int, deltas: torch.Tensor) -> None:
        """Put a row in the empty ``slot``: its cache ``kv`` (``n`` tokens), the token it reads next
        and its ``[n_layers, 1, d]`` deltas (:func:`row_deltas`)."""
        if self.held[slot] is not None or n >= self.length:
            raise ValueError(f"slot {slot} is taken, or {n} tokens do not fit in {self.length} positions")
        if n > self.column:
            self._shift(n - self.column)
        w = self.column
        for (keys, values), (k, v) in zip(hf.kv_tensors(self.cache), kv, strict=True):
            keys[slot].zero_()
            values[slot].zero_()
            keys[slot, :, w - n : w] = k[0, :, -n:].to(keys.dtype)
            values[slot, :, w - n : w] = v[0, :, -n:].to(values.dtype)
        self.mask[slot].zero_()
        self.mask[slot, w - n : w] = 1
        self.deltas[:, slot] = deltas
        self.held[slot] = n
        self.feed(slot, token)

    def feed(self, slot: int, token: int) -> None:
        """The token ``slot``'s row reads at the next step."""
        self.tokens[slot, 0] = token

    def leave(self, slot: int) -> None:
        """Empty ``slot`` (its cache stays until a row joins it, masked in: never read by another row)."""
        self.held[slot] = None
        self.deltas[:, slot].zero_()
        self.mask[slot].fill_(1)  # no row is all masked out (an empty slot's results are ignored)

    def row_cache(self, slot: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The ``[1, heads, n, dim]`` keys and values of ``slot``'s row (a copy)."""
        n, w = self.held[slot], self.column
        assert n is not None
        return [
            (k[slot : slot + 1, :, w - n : w].clone(), v[slot : slot + 1, :, w - n : w].clone())
            for k, v in hf.kv_tensors(self.cache)
        ]

    # ------------------------------------------------------------------ columns
    def _shift(self, n: int) -> None:
        """Move every row ``n`` positions right (``n < 0``: left), zeros coming in, in place."""
        length = self.length
        for keys, values in hf.kv_tensors(self.cache):
            for t in (keys, values):
                if n > 0:
                    t[:, :, n:] = t[:, :, : length - n].clone()
                    t[:, :, :n] = 0
                else:
                    t[:, :, : length + n] = t[:, :, -n:].clone()
                    t[:, :, length + n :] = 0
        used = [i for i, h in enumerate(self.held) if h is not None]
        for i in used:
            held = self.held[i]
            assert held is not None
            self.mask[i].zero_()
            self.mask[i, self.column + n - held : self.column + n] = 1
        self.column += n
        hf.set_write_column(self.cache, self.column)

    def compact(self) -> None:
        """Drop the positions that are padding in every row, when the next step has no column left.

        Raises:
            ValueError: a row fills the whole cache (a longer one is needed).
        """
        if self.column < self.length:
            return
        spare = min((self.column - h for h in self.held if h is not None), default=self.column)
        if spare == 0:
            raise ValueError(f"a row holds all {self.length} positions of this cache")
        self._shift(-spare)

    # ------------------------------------------------------------------ step
    def step(self) -> torch.Tensor:
        """One token for every slot: the ``[slots, V]`` logits (rows of empty slots mean nothing)."""
        self.compact()
        w = self.column
        used = [i for i, h in enumerate(self.held) if h is not None]
        for i in used:
            held = self.held[i]
            assert held is not None
            self.mask[i, w] = 1
            self.positions[i, 0] = held
        with hooked(self.lm, self._hooks), hf.grouped_query_sdpa(self.lm.model):
            logits = self._step(self.tokens, self.positions, torch.tensor([w], device=self.lm.device), self.mask)
        for i in used:
            held = self.held[i]
            assert held is not None
            self.held[i] = held + 1
        self.column = w + 1
        self.steps += 1
        return logits
