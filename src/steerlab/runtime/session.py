"""The steering engine: forward hooks that apply :class:`~steerlab.core.steering.Steering` objects.

One pre-hook on the model reads, once per forward call, which tokens are real and each one's
index among its row's real tokens (:func:`steerlab.core.positions.token_positions`, from what the call
passes: attention mask, position ids or the cache's length — read through :mod:`steerlab.runtime.hf`), so
padding and the KV cache never shift positions. Each steered block gets one hook that applies the
precomputed per-layer terms, in place on the block's output where autograd allows (so every
observer of the output sees the steered stream, also transformers releases that record hidden
states inside a block's forward); plain additions at the same positions are merged into one
row-stacked delta, so a batch where every row has its own vector costs one ``addcmul`` per layer.
A decoding step (one new token per row after the whole prompt, with no window or token-wise vector
in play) computes no positions at all: each layer adds its deltas in place, one ``add_`` each.
Vectors are moved to each block's device and dtype once, when the session starts.

The first time a model is steered, :func:`steerlab.runtime.canary.check_positions` confirms that the
hooks see the right positions under this transformers version (a prompt, then a cached step);
otherwise it raises instead of steering the wrong tokens.

Hooks act only in the thread that opened the session, and are removed on exit (also on an
exception): nothing left behind, weights never touched. The one global change: once TorchDynamo is
imported, compiled code is made to guard on module hooks (:mod:`steerlab.runtime.compiled`), so a compiled
model never runs a graph traced without this session's hooks or with another's.

Example:
    >>> with steer(lm, Steering(vec, 4.0)):  # doctest: +SKIP
    ...     logits = lm.model(**lm.tokenizer("Hello", return_tensors="pt")).logits
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.condition import Condition, prompt_scores
from ..core.operators import Operator, OpState
from ..core.positions import Positions, position_mask, starts_sequence, token_positions
from ..core.steering import Composite, Steering, SteeringLike, compose
from ..errors import SteeringSpecError
from ..models.load import LM
from . import hf
from .compiled import guard_hooks

RowSteerings = Sequence[SteeringLike | None]
_NO_INDEX = torch.zeros((), dtype=torch.long)


def call_positions(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(real, index)`` of one forward call of ``model`` (see :func:`~steerlab.core.positions.token_positions`)."""
    return input_positions(hf.call_inputs(model, args, kwargs))


def input_positions(inputs: hf.CallInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(real, index)`` of a forward call's inputs as :func:`steerlab.runtime.hf.call_inputs` read them."""
    return token_positions(
        inputs.length,
        inputs.batch,
        inputs.device,
        attention_mask=inputs.attention_mask,
        position_ids=inputs.position_ids,
        past=inputs.past,
        has_cache=inputs.has_cache,
    )


@dataclass
class _Call:
    """Per-forward-call state shared by all block hooks."""

    real: torch.Tensor  # [B, q] bool: real (non-pad) tokens of this call
    index: torch.Tensor  # [B, q] long: index of each token among its row's real tokens
    prompt_len: torch.Tensor | None  # [B] real prompt tokens per row
    dtype: torch.dtype
    decisions: dict[int, torch.Tensor] = field(default_factory=dict)  # condition id -> [B] bool
    masks: dict[Any, torch.Tensor] = field(default_factory=dict)

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


@dataclass
class _Step:
    """A decoding step's state, made once per session: the conditions' decisions (a live view of
    the session's dict) and the token index that decode-step operators never read."""

    decisions: dict[int, torch.Tensor] = field(default_factory=dict)
    index: torch.Tensor = field(default_factory=lambda: _NO_INDEX)


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
class _Term:
    """One operator at one layer: where it acts, on which rows, with what precomputed state."""

    op: Operator
    positions: Positions
    rows: torch.Tensor | None  # [B] bool or None (= all rows)
    state: OpState
    condition: Condition | None = None  # steer only rows whose prompt passed it
    _decode_mask: torch.Tensor | None = field(default=None, repr=False)

    def apply(self, h: torch.Tensor, call: _Call) -> torch.Tensor:
        """The steered hidden states: written into ``h`` where that is safe (so observers that
        hold the block's output see the steered stream), else a new tensor."""
        index = call.index if call.index.device == h.device else call.index.to(h.device)
        mask = call.mask(self.positions, self.rows, h.device)
        if self.condition is not None:
            mask = mask * _decision(call.decisions, self.condition, mask, strict=False)
        if self.op.inplace_under_autograd or not (h.requires_grad and torch.is_grad_enabled()):
            self.op.apply_(h, mask, self.state, index)
            return h
        return self.op.apply(h, mask, self.state, index)

    def apply_decode(self, h: torch.Tensor, step: _Step) -> torch.Tensor:
        """:meth:`apply` for one generated token per row (no positions to compute)."""
        if self.plain_add:  # the common case: one fused op
            return h.add_(self.state.tensor)
        mask = self.decode_mask(h.device)
        if self.condition is not None:
            decided = _decision(step.decisions, self.condition, h, strict=True)
            mask = decided if mask is None else mask * decided
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
        return self.op.merges and self.rows is None and self.condition is None

    def decode_mask(self, device: torch.device) -> torch.Tensor | None:
        """``[B, 1, 1]`` rows this term acts on at a decoding step (``None``: all), made once."""
        if self.rows is None:
            return None
        if self._decode_mask is None or self._decode_mask.device != device:
            self._decode_mask = self.rows.to(device=device, dtype=self.state.tensor.dtype)[:, None, None]
        return self._decode_mask

    def repeated(self, repeat: int) -> _Term:
        """This term for a batch that HF expanded ``repeat`` times (``num_return_sequences``)."""
        rows = None if self.rows is None else self.rows.repeat_interleave(repeat)
        state = self.state
        if self.op.merges and state.tensor.dim() == 3 and state.tensor.shape[0] > 1:
            state = OpState(state.tensor.repeat_interleave(repeat, dim=0), state.coefficient, state.norm)
        return _Term(self.op, self.positions, rows, state, self.condition)


def _block_device(block: torch.nn.Module, fallback: torch.device) -> torch.device:
    """Where a block computes: accelerate's execution device for offloaded blocks (whose
    parameters sit on ``meta``), else the device of its parameters."""
    hook = getattr(block, "_hf_hook", None)
    execution = getattr(hook, "execution_device", None)
    if execution is not None:
        return torch.device(execution)
    param = next(block.parameters(), None)
    return param.device if param is not None else fallback


def as_steerings(steering: SteeringLike | Sequence[SteeringLike] | None) -> list[Steering]:
    """The steerings of one steering, a composite or a list of them, in order."""
    if steering is None:
        return []
    if isinstance(steering, (Steering, Composite)):
        return list(compose(steering).steerings)
    return list(compose(*steering).steerings)


class SteeringSession:
    """Hooks that apply steerings to one model for the duration of a ``with`` block.

    Use :func:`steer` (one steering set for every row) or :func:`steer_rows` (one per row)
    rather than this class directly.
    """

    def __init__(
        self,
        lm: LM,
        shared: list[Steering],
        rows: RowSteerings | None = None,
        prompt_length: torch.Tensor | int | None = None,
        generating: bool = False,
        decided: Mapping[Condition, torch.Tensor] | None = None,
    ) -> None:
        self.lm = lm
        self.owner = threading.get_ident()
        self.batch = len(rows) if rows is not None else None
        self.fixed_prompt_len = prompt_length
        self.prompt_len: torch.Tensor | None = None
        self.call: _Call | None = None
        self.handles: list[Any] = []
        self.terms: dict[int, list[_Term]] = {}
        self.dtype = next(lm.model.parameters()).dtype
        self.device = lm.device
        entries: list[tuple[Steering, list[int] | None]] = [(s, None) for s in shared]
        if rows is not None:
            by_id: dict[int, tuple[Steering, list[int]]] = {}
            for i, item in enumerate(rows):
                for s in as_steerings(item):
                    by_id.setdefault(id(s), (s, []))[1].append(i)
            entries += list(by_id.values())
        for vector in {id(s.vector): s.vector for s, _ in entries}.values():
            vector.check_model(lm)
        live_entries = [(s, r) for s, r in entries if not s.is_noop]
        self._build_terms(live_entries)
        self.conditions = {id(s.condition): s.condition for s, _ in live_entries if s.condition is not None}
        self.decisions: dict[int, torch.Tensor] = {}
        self.scores: dict[int, torch.Tensor] = {}
        for cond, rows_decided in (decided or {}).items():  # made on the rows' prompts in an earlier session
            self.decisions[id(cond)] = rows_decided.to(device=self.device, dtype=torch.bool)
            self.scores[id(cond)] = torch.full(rows_decided.shape, float("nan"), device=self.device)
        self.active = self.terms
        self.repeat = 1
        self.step: _Step | None = None
        self.decode_state = _Step(self.decisions)
        self.prompt_done = generating
        self.max_prompt = None if prompt_length is None else int(torch.as_tensor(prompt_length).max())
        self.decode_terms = self._build_decode_terms()
        if self.terms:
            from .canary import check_positions

            check_positions(lm)

    def decision(self, condition: Condition) -> torch.Tensor | None:
        """Each row's ``[B]`` bool decision for ``condition`` (``None``: no prompt has run yet)."""
        return self.decisions.get(id(condition))

    def _build_terms(self, entries: list[tuple[Steering, list[int] | None]]) -> None:
        # Merge one-direction uses of a merging operator (add) that share positions into one
        # row-stacked delta per layer, unless another term came in between (composition order).
        # Row deltas are written with one index_add per merged delta, after all are known.
        merged: dict[tuple[int, str, object], torch.Tensor] = {}
        pending: dict[int, tuple[torch.Tensor, list[int], list[torch.Tensor]]] = {}
        layers = {k for s, _ in entries for k in s.active_layers}
        devices = {k: _block_device(self.lm.blocks[k], self.device) for k in layers}
        for s, idx in entries:
            op = s.op
            rows = None if idx is None else self._row_mask(idx)
            for layer in s.active_layers:
                device = devices[layer]
                v = s.vector.directions[layer].to(device=device, dtype=self.dtype)
                layer_terms = self.terms.setdefault(layer, [])
                if not (op.merges and v.dim() == 1) or s.condition is not None:
                    layer_terms.append(_Term(op, s.where, rows, op.prepare(v, s.coefficient), s.condition))
                    continue
                key = (layer, op.name, s.where if idx is None else ("rows", s.where))
                acc = merged.get(key)
                if acc is None or not (layer_terms and layer_terms[-1].state.tensor is acc):
                    width = 1 if idx is None else self.batch or 1
                    acc = torch.zeros(width, 1, v.shape[-1], device=device, dtype=self.dtype)
                    merged[key] = acc
                    layer_terms.append(_Term(op, s.where, None, OpState(acc, 1.0)))
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

    def _row_mask(self, idx: list[int]) -> torch.Tensor:
        mask = torch.zeros(self.batch or 0, dtype=torch.bool)
        mask[idx] = True
        return mask.to(self.device)

    # ------------------------------------------------------------------ hooks
    def _owned(self) -> bool:
        """Whether the running forward call belongs to the thread that opened the session.

        Under ``torch.compile`` the hooks are traced into the graph, which cannot ask for a thread:
        a compiled model is steered by the session whose hooks it traced (steer it from one thread;
        opening or closing a session makes it re-check its guards, :mod:`steerlab.runtime.compiled`).
        """
        return torch.compiler.is_compiling() or threading.get_ident() == self.owner

    def _pre_hook(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self._owned():
            return
        bound = hf.bind_call(module, args, kwargs) if args else kwargs  # generate passes keywords only
        if self._is_decode_step(bound):
            self.call = None
            self.step = self._decode_step(bound)
            return
        inputs = hf.call_inputs(module, (), bound)
        self._set_repeat(inputs.batch)
        self.step = None
        real, index = input_positions(inputs)
        prompt_len = self._prompt_len(inputs.batch, real, index)
        if not inputs.past and (self.max_prompt is None or inputs.length >= self.max_prompt):
            self.prompt_done = prompt_len is not None  # the whole prompt ran: cached steps are generated tokens
        self.call = _Call(real=real, index=index, prompt_len=prompt_len, dtype=self.dtype, decisions=self.decisions)

    def _set_repeat(self, batch: int) -> None:
        if self.batch is None:
            return
        if batch % self.batch:
            raise SteeringSpecError(
                f"per-row steering was set up for {self.batch} rows but the forward call has {batch}"
            )
        repeat = batch // self.batch
        if repeat != self.repeat:
            self.active = {k: [t.repeated(repeat) for t in ts] for k, ts in self.terms.items()}
            self.decode_terms = self._build_decode_terms()
            self.repeat = repeat

    def _is_decode_step(self, call: Mapping[str, Any]) -> bool:
        """One new token per row after a whole prompt: every steering at ``"all"``/``"generated"``
        acts on it, none at ``"prompt"`` — no positions need computing (the fast path). ``call`` is
        the forward call's arguments by name; a batch the terms were not built for (a first call
        after ``num_return_sequences`` expanded it) takes the full path once."""
        if self.decode_terms is None or not self.prompt_done:
            return False
        batch = hf.one_token_step(call)
        return batch is not None and (self.batch is None or batch == self.batch * self.repeat)

    def _decode_step(self, call: Mapping[str, Any]) -> _Step:
        """The state of a decoding step: the same object every step, no tensor work.

        A padding token at a decoding step (a zero in the attention mask's new column, which neither
        ``generate`` nor steerlab's server ever passes) is steered like a real one: no later token
        attends to it, so no real token's output changes.
        """
        return self.decode_state

    def _build_decode_terms(self) -> dict[int, list[_Term]] | None:
        """The terms that act on a generated token (windows and token-wise vectors depend on the
        token's index, so with them every step takes the full path). Also sets ``decode_adds``:
        per layer, the deltas to add in place when every term there is a plain add, else ``None``."""
        self.decode_adds: dict[int, tuple[torch.Tensor, ...] | None] = {}
        out: dict[int, list[_Term]] = {}
        for layer, terms in self.active.items():
            kept = []
            for t in terms:
                if isinstance(t.positions, tuple) or t.state.tensor.dim() == 2:
                    return None
                if t.positions != "prompt":
                    kept.append(t)
            out[layer] = kept
            plain = all(t.plain_add for t in kept)
            self.decode_adds[layer] = tuple(t.state.tensor for t in kept) if plain else None
        return out

    def _prompt_len(self, batch: int, real: torch.Tensor, index: torch.Tensor) -> torch.Tensor | None:
        fixed = self.fixed_prompt_len
        if fixed is not None:
            t = torch.as_tensor(fixed, device=real.device).reshape(-1)
            t = t.expand(batch) if t.numel() == 1 else t
            return t.repeat_interleave(batch // t.numel()) if t.numel() != batch else t
        if starts_sequence(real, index):  # a call that starts every row at token 0 is the prompt
            self.prompt_len = real.sum(-1)
        return self.prompt_len

    def _make_hook(self, layer: int) -> Any:
        def hook(_module: Any, _args: Any, output: Any) -> Any:
            step = self.step
            if step is not None:
                adds = self.decode_adds[layer]
                if adds is not None and self._owned():  # the decoding fast path: in-place adds, no masks
                    h = output[0] if isinstance(output, tuple) else output
                    for delta in adds:
                        h.add_(delta)
                    return None
            if not self._owned():
                return None
            h = out = hf.block_hidden(output)
            if step is not None:
                assert self.decode_terms is not None
                for term in self.decode_terms[layer]:
                    out = term.apply_decode(out, step)
            elif self.call is not None:
                for term in self.active[layer]:
                    out = term.apply(out, self.call)
            return None if out is h else hf.with_block_hidden(output, out)

        return hook

    def _make_reader(self, condition: Condition) -> Any:
        """A hook on the condition's block: decides, from the prompt tokens of a call, which rows
        the condition's steerings act on (rows without prompt tokens keep their decision)."""

        def reader(_module: Any, _args: Any, output: Any) -> None:
            call = self.call
            if call is None or not self._owned():
                return
            prompt = call.real if call.prompt_len is None else call.real & (call.index < call.prompt_len[:, None])
            scores, seen = prompt_scores(condition, hf.block_hidden(output), prompt)
            key = id(condition)
            decided = condition.holds(scores)
            old = self.decisions.get(key)
            if old is not None and old.shape == decided.shape:
                decided = torch.where(seen, decided, old.to(decided.device))
                scores = torch.where(seen, scores, self.scores[key].to(scores.device))
            self.decisions[key] = decided
            self.scores[key] = scores

        return reader

    def __enter__(self) -> SteeringSession:
        guard_hooks()
        for condition in self.conditions.values():
            # after the steering hooks of that block: the condition reads the stream as it leaves
            self.handles.append(self.lm.blocks[condition.at].register_forward_hook(self._make_reader(condition)))
        if self.terms:
            pre_hook = self._pre_hook
            if "torch._dynamo" in sys.modules:
                # A compiled model runs its hooks' frames through TorchDynamo too: the pre-hook would
                # become a frame of its own whose guards are checked on every call. It only reads the
                # call's arguments, so it runs eagerly; the blocks' hooks trace into the graph.
                pre_hook = torch.compiler.disable(pre_hook)
            self.handles.append(self.lm.model.register_forward_pre_hook(pre_hook, with_kwargs=True))
            for layer in self.terms:
                # prepend: steering runs before any other hook on the block (e.g. transformers'
                # output_hidden_states recorder), so every observer sees the steered stream.
                hook = self._make_hook(layer)
                self.handles.append(self.lm.blocks[layer].register_forward_hook(hook, prepend=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.call = None
        self.step = None
        guard_hooks()


@contextmanager
def steer(
    lm: LM,
    steering: SteeringLike | Sequence[SteeringLike] | None,
    prompt_length: torch.Tensor | int | None = None,
) -> Iterator[SteeringSession]:
    """Steer every forward call of ``lm.model`` inside the ``with`` block.

    Args:
        lm: the model.
        steering: a :class:`Steering`, a composite (``s1 + s2``) or a list (composed in order).
        prompt_length: real prompt tokens per row, for ``positions="prompt"/"generated"`` when
            you recompute whole sequences without the KV cache. By default a call in which every
            row starts at token 0 is taken to be the prompt and later cached calls to be
            generated tokens.

    Raises:
        ModelMismatchError: a vector was made for another model.
        TransformersCompatError: this transformers version calls the model in a way steerlab
            cannot read positions from (checked once per model).

    Example:
        >>> with steer(lm, Steering(vec, 4.0)):  # doctest: +SKIP
        ...     out = lm.model(**lm.tokenizer("Hello", return_tensors="pt"))
    """
    with SteeringSession(lm, as_steerings(steering), prompt_length=prompt_length) as session:
        yield session


@contextmanager
def steer_rows(
    lm: LM,
    rows: RowSteerings,
    prompt_length: torch.Tensor | int | None = None,
    generating: bool = False,
    decided: Mapping[Condition, torch.Tensor] | None = None,
) -> Iterator[SteeringSession]:
    """Like :func:`steer`, with one steering (or ``None``) per batch row.

    ``generating=True`` says that every call in the block continues rows whose prompts already ran
    (a decoding loop that rows join and leave, each with its own ``prompt_length``): one-token
    cached steps then take the fast path from the first call. Their conditions (CAST) were decided
    when their prompts ran, in another session (``session.decisions``): ``decided`` gives, per
    :class:`~steerlab.core.condition.Condition` of ``rows``, the ``[B]`` bool decision of each row.

    Example:
        >>> with steer_rows(lm, [Steering(vec, 4.0), None]):  # doctest: +SKIP
        ...     out = lm.model(input_ids=ids, attention_mask=mask)
    """
    with SteeringSession(
        lm, [], rows=rows, prompt_length=prompt_length, generating=generating, decided=decided
    ) as session:
        yield session
