"""What a steering session does at each layer: its :class:`Plan`, built when the session opens.

A session's steerings (one set for every row, and one per row) become, per layer, a list of
:class:`Term` s — one operator acting at some positions on some rows, with its state precomputed on
the block's device. Plain additions at the same positions are merged into one row-stacked delta, so
a batch where every row has its own vector costs one ``addcmul`` per layer. A :class:`Plan` holds
those terms and, made from them once, what a decoding step needs (:class:`DecodeStep`). The plan
is built once for the rows the session was opened with, and once more for a batch that
``generate`` expanded (``num_return_sequences``); it never changes afterwards.

A block's output is steered one of three ways, chosen once per forward call by the session
(:mod:`steerlab.runtime.session`):

1. **a call** (a prompt, a window, a recomputation): each term applies under the mask of its
   positions, computed once per call (:class:`CallState`);
2. **a decoding step** (one new token per row after its whole prompt): no positions to compute;
   each term applies to every row it acts on (:meth:`Term.apply_decode`);
3. **the decoding fast path**: at a layer where every such term is a plain add on every row, its
   deltas are added in place, one ``add_`` each (:attr:`DecodeStep.adds`).

Example:
    >>> plan = Plan.build(build_terms(lm, [(Steering(vec, 4.0), None)], None), {}, {})  # doctest: +SKIP
    >>> plan.decode.adds  # doctest: +SKIP
    {3: (tensor([[[...]]]),)}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..core.condition import Condition
from ..core.operators import Operator, OpState
from ..core.positions import Positions, position_mask
from ..core.steering import Composite, Steering, SteeringLike, compose
from ..errors import SteeringSpecError
from ..models.load import LM

RowSteerings = Sequence[SteeringLike | None]
"""One steering (or ``None``) per batch row."""
Entry = tuple[Steering, list[int] | None]
"""A steering and the rows it acts on (``None``: every row)."""
_NO_INDEX = torch.zeros((), dtype=torch.long)


def as_steerings(steering: SteeringLike | Sequence[SteeringLike] | None) -> list[Steering]:
    """The steerings of one steering, a composite or a list of them, in order."""
    if steering is None:
        return []
    if isinstance(steering, (Steering, Composite)):
        return list(compose(steering).steerings)
    return list(compose(*steering).steerings)


def entries(shared: Sequence[Steering], rows: RowSteerings | None) -> list[Entry]:
    """The steerings of a session with the rows each acts on: the shared ones first (every row),
    then each distinct per-row steering once, with its rows."""
    out: list[Entry] = [(s, None) for s in shared]
    if rows is not None:
        by_id: dict[int, tuple[Steering, list[int]]] = {}
        for i, item in enumerate(rows):
            for s in as_steerings(item):
                by_id.setdefault(id(s), (s, []))[1].append(i)
        out += list(by_id.values())
    return out


@dataclass
class CallState:
    """One forward call's state, shared by all block hooks (the full path).

    Attributes:
        real: ``[B, q]`` bool, the call's real (non-pad) tokens.
        index: ``[B, q]`` long, each token's index among its row's real tokens.
        prompt_len: ``[B]`` real prompt tokens per row (``None``: not known).
        dtype: the model's dtype (of the masks).
        terms: the plan's terms per layer.
        decisions: the session's condition decisions (a live view).
    """

    real: torch.Tensor
    index: torch.Tensor
    prompt_len: torch.Tensor | None
    dtype: torch.dtype
    terms: Mapping[int, Sequence[Term]]
    decisions: dict[int, torch.Tensor] = field(default_factory=dict)
    masks: dict[object, torch.Tensor] = field(default_factory=dict)

    def mask(self, key: Positions, rows: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """``[B, q, 1]`` float mask of the positions ``key`` (and rows) on ``device``, made once."""
        cache_key = (key, None if rows is None else id(rows), device)
        m = self.masks.get(cache_key)
        if m is None:
            sel = position_mask(key, self.real, self.index, self.prompt_len)
            if rows is not None:
                sel = sel & rows.to(sel.device)[:, None, None]
            m = sel.to(device=device, dtype=self.dtype)
            self.masks[cache_key] = m
        return m


@dataclass(frozen=True)
class DecodeStep:
    """A decoding step's plan, made once per :class:`Plan`: the same object every step, no tensor
    work to set it up.

    Attributes:
        terms: per layer, the terms that act on a generated token.
        adds: per layer, the deltas to add in place when every term there is a plain add on every
            row (the fast path), else ``None``.
        decisions: the session's condition decisions (a live view).
        index: the token index, which decode-step operators never read.
    """

    terms: Mapping[int, tuple[Term, ...]]
    adds: Mapping[int, tuple[torch.Tensor, ...] | None]
    decisions: dict[int, torch.Tensor]
    index: torch.Tensor = _NO_INDEX


def _decision(
    decisions: dict[int, torch.Tensor], condition: Condition, like: torch.Tensor, strict: bool
) -> torch.Tensor:
    """``[B, 1, 1]`` rows (of ``like``'s batch) whose prompt passed ``condition``.

    Before the prompt has been read (the layers under the condition's, in the prompt's own call)
    no row is steered; a decoding step with no decision at all is an error (``strict``).
    """
    d = decisions.get(id(condition))
    if d is None:
        if strict:
            raise SteeringSpecError(
                "a conditional steering decides on the prompt: run the prompt in this steering session "
                "before generated tokens"
            )
        return torch.zeros(like.shape[0], 1, 1, dtype=like.dtype, device=like.device)
    return d.to(device=like.device, dtype=like.dtype)[:, None, None]


@dataclass
class Term:
    """One operator at one layer: where it acts, on which rows, with what precomputed state."""

    op: Operator
    positions: Positions
    rows: torch.Tensor | None  # [B] bool or None (= all rows)
    state: OpState
    condition: Condition | None = None  # steer only rows whose prompt passed it
    scale: torch.Tensor | None = None  # [B, 1, 1] per-row strength of a KL cap (updated in place), or None
    _decode_mask: torch.Tensor | None = field(default=None, repr=False)

    def apply(self, h: torch.Tensor, call: CallState) -> torch.Tensor:
        """The steered hidden states: written into ``h`` where that is safe (so observers that
        hold the block's output see the steered stream), else a new tensor."""
        index = call.index if call.index.device == h.device else call.index.to(h.device)
        mask = call.mask(self.positions, self.rows, h.device)
        if self.condition is not None:
            mask = mask * _decision(call.decisions, self.condition, mask, strict=False)
        if self.scale is not None:
            mask = mask * self.scale.to(device=mask.device, dtype=mask.dtype)
        if self.op.inplace_under_autograd or not (h.requires_grad and torch.is_grad_enabled()):
            self.op.apply_(h, mask, self.state, index)
            return h
        return self.op.apply(h, mask, self.state, index)

    def apply_decode(self, h: torch.Tensor, step: DecodeStep) -> torch.Tensor:
        """:meth:`apply` for one generated token per row (no positions to compute)."""
        if self.plain_add:  # the common case: one fused op
            return h.add_(self.state.tensor)
        mask = self.decode_mask(h.device)
        if self.condition is not None:
            decided = _decision(step.decisions, self.condition, h, strict=True)
            mask = decided if mask is None else mask * decided
        if self.scale is not None:
            scale = self.scale.to(device=h.device, dtype=h.dtype)
            mask = scale if mask is None else mask * scale
        if mask is None:
            if self.op.merges:
                return h.add_(self.state.tensor)
            mask = torch.ones((), dtype=h.dtype, device=h.device)
        index = step.index if step.index.device == h.device else step.index.to(h.device)
        if self.op.inplace_under_autograd or not (h.requires_grad and torch.is_grad_enabled()):
            self.op.apply_(h, mask, self.state, index)
            return h
        return self.op.apply(h, mask, self.state, index)

    @property
    def plain_add(self) -> bool:
        """Whether, at a decoding step, this term is one in-place add of its delta on every row."""
        return self.op.merges and self.rows is None and self.condition is None and self.scale is None

    @property
    def acts_on_generated(self) -> bool:
        """Whether the term acts on generated tokens (its positions are not ``"prompt"``)."""
        return self.positions != "prompt"

    @property
    def needs_index(self) -> bool:
        """Whether the term depends on each token's index (a window, or a token-wise vector), so
        that a decoding step must compute positions."""
        return isinstance(self.positions, tuple) or self.state.tensor.dim() == 2

    def decode_mask(self, device: torch.device) -> torch.Tensor | None:
        """``[B, 1, 1]`` rows this term acts on at a decoding step (``None``: all), made once."""
        if self.rows is None:
            return None
        if self._decode_mask is None or self._decode_mask.device != device:
            self._decode_mask = self.rows.to(device=device, dtype=self.state.tensor.dtype)[:, None, None]
        return self._decode_mask

    def repeated(self, repeat: int) -> Term:
        """This term for a batch that HF expanded ``repeat`` times (``num_return_sequences``)."""
        rows = None if self.rows is None else self.rows.repeat_interleave(repeat)
        state = self.state
        if self.op.merges and state.tensor.dim() == 3 and state.tensor.shape[0] > 1:
            state = OpState(state.tensor.repeat_interleave(repeat, dim=0), state.coefficient, state.norm)
        if self.scale is not None:
            raise SteeringSpecError("a KL-capped steering decodes one row per prompt (num_return_sequences=1)")
        return Term(self.op, self.positions, rows, state, self.condition)


def block_device(block: torch.nn.Module, fallback: torch.device) -> torch.device:
    """Where a block computes: accelerate's execution device for offloaded blocks (whose
    parameters sit on ``meta``), else the device of its parameters."""
    hook = getattr(block, "_hf_hook", None)
    execution = getattr(hook, "execution_device", None)
    if execution is not None:
        return torch.device(execution)
    param = next(block.parameters(), None)
    return param.device if param is not None else fallback


def build_terms(
    lm: LM,
    live: Sequence[Entry],
    batch: int | None,
    dtype: torch.dtype,
    strength: torch.Tensor | None = None,
) -> dict[int, list[Term]]:
    """The terms of ``live`` steerings (none a no-op) per layer, in composition order, their
    states on each block's device in ``dtype``; ``batch`` rows for per-row entries.

    A steering with a ``kl_cap`` is one term of its own whose mask is multiplied by ``strength``
    (``[batch]``, each row's scale, updated in place by :mod:`steerlab.runtime.kl_cap` between
    steps); without ``strength`` it is refused (only ``generate`` runs the unsteered shadow rows
    that a cap needs).

    One-direction uses of a merging operator (add) that share positions are merged into one
    row-stacked delta per layer, unless another term came in between (composition order). Row
    deltas are written with one ``index_add`` per merged delta, after all are known.
    """
    terms: dict[int, list[Term]] = {}
    merged: dict[tuple[int, str, object], torch.Tensor] = {}
    pending: dict[int, tuple[torch.Tensor, list[int], list[torch.Tensor]]] = {}
    layers = {k for s, _ in live for k in s.active_layers}
    devices = {k: block_device(lm.blocks[k], lm.device) for k in layers}
    for s, idx in live:
        op = s.op
        rows = None if idx is None else _row_mask(idx, batch or 0, lm.device)
        scale = _cap_scale(s, strength)
        for layer in s.active_layers:
            device = devices[layer]
            v = s.vector.directions[layer].to(device=device, dtype=dtype)
            layer_terms = terms.setdefault(layer, [])
            if scale is not None:
                state = dataclasses.replace(op.prepare(v, s.coefficient), graded=True)
                layer_terms.append(Term(op, s.where, rows, state, s.condition, scale.to(device)))
                continue
            if not (op.merges and v.dim() == 1) or s.condition is not None:
                layer_terms.append(Term(op, s.where, rows, op.prepare(v, s.coefficient), s.condition))
                continue
            key = (layer, op.name, s.where if idx is None else ("rows", s.where))
            acc = merged.get(key)
            if acc is None or not (layer_terms and layer_terms[-1].state.tensor is acc):
                width = 1 if idx is None else batch or 1
                acc = torch.zeros(width, 1, v.shape[-1], device=device, dtype=dtype)
                merged[key] = acc
                layer_terms.append(Term(op, s.where, None, OpState(acc, 1.0)))
            delta = op.prepare(v, s.coefficient).tensor
            if idx is None:
                acc += delta
            else:
                _, at, values = pending.setdefault(id(acc), (acc, [], []))
                at += idx
                values.append(delta.expand(len(idx), -1))
    for acc, at, values in pending.values():
        index = torch.tensor(at, device=acc.device)
        acc.view(acc.shape[0], -1).index_add_(0, index, torch.cat(values))
    return terms


def _cap_scale(s: Steering, strength: torch.Tensor | None) -> torch.Tensor | None:
    """``[B, 1, 1]`` the per-row strength a KL-capped steering is scaled by (a view of ``strength``)."""
    if s.kl_cap is None:
        return None
    if strength is None:
        raise SteeringSpecError(
            f"kl_cap={s.kl_cap:g} needs the unsteered shadow rows that steerlab.generate runs beside the "
            "steered ones (greedy decoding): a steering session on its own cannot cap the KL"
        )
    return strength.view(-1, 1, 1)


def _row_mask(idx: list[int], batch: int, device: torch.device) -> torch.Tensor:
    mask = torch.zeros(batch, dtype=torch.bool)
    mask[idx] = True
    return mask.to(device)


def _decode_step(terms: Mapping[int, Sequence[Term]], decisions: dict[int, torch.Tensor]) -> DecodeStep | None:
    """The :class:`DecodeStep` of ``terms``, or ``None`` when a term depends on each token's index
    (then every step takes the full path)."""
    kept: dict[int, tuple[Term, ...]] = {}
    adds: dict[int, tuple[torch.Tensor, ...] | None] = {}
    for layer, layer_terms in terms.items():
        if any(t.needs_index for t in layer_terms):
            return None
        kept[layer] = tuple(t for t in layer_terms if t.acts_on_generated)
        plain = all(t.plain_add for t in kept[layer])
        adds[layer] = tuple(t.state.tensor for t in kept[layer]) if plain else None
    return DecodeStep(kept, adds, decisions)


@dataclass(frozen=True)
class Plan:
    """What a session does for calls of one batch shape; made once, never changed.

    Attributes:
        repeat: how many times ``generate`` expanded each row (``num_return_sequences``).
        terms: per layer, the terms of a call, in composition order.
        decode: what a decoding step does (``None``: every step takes the full path).
        conditions: the conditions (CAST) the terms steer under, by ``id``.

    Example:
        >>> plan = Plan.build({}, {}, {})
        >>> plan.repeat, plan.decode is not None, plan.layers
        (1, True, [])
    """

    repeat: int
    terms: Mapping[int, tuple[Term, ...]]
    decode: DecodeStep | None
    conditions: Mapping[int, Condition]

    @classmethod
    def build(
        cls,
        terms: Mapping[int, Sequence[Term]],
        conditions: Mapping[int, Condition],
        decisions: dict[int, torch.Tensor],
        repeat: int = 1,
    ) -> Plan:
        """The plan of ``terms`` (``decisions``: the session's live condition decisions)."""
        frozen = {layer: tuple(ts) for layer, ts in terms.items()}
        return cls(repeat, frozen, _decode_step(frozen, decisions), conditions)

    @property
    def layers(self) -> list[int]:
        """The layers the plan steers."""
        return list(self.terms)

    def repeated(self, repeat: int, decisions: dict[int, torch.Tensor]) -> Plan:
        """This plan (made for ``repeat=1``) for a batch ``generate`` expanded ``repeat`` times."""
        if repeat == self.repeat:
            return self
        terms = {k: [t.repeated(repeat) for t in ts] for k, ts in self.terms.items()}
        return Plan.build(terms, self.conditions, decisions, repeat)
