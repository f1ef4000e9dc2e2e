"""The steering engine: forward hooks that apply :class:`~steerlab.steering.Steering` objects.

One pre-hook on the model computes, once per forward call, each row's token indices (from the
attention mask, so padding and the KV cache never shift positions) and the ``[batch, seq, 1]``
position masks. Each steered block gets one hook that applies precomputed per-layer deltas with
a fused ``addcmul``. Vectors are moved to each block's device and dtype once, when the session
starts. Rows can carry different steerings (or none) in the same batch.

Hooks act only in the thread that opened the session, and are removed on exit (also on an
exception): nothing global, nothing left behind, weights never touched.

Example:
    >>> with steer(lm, Steering(vec, 4.0)):  # doctest: +SKIP
    ...     logits = lm.model(**lm.tokenizer("Hello", return_tensors="pt")).logits
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import SteeringSpecError
from .model import LM
from .steering import Composite, Positions, Steering, SteeringLike, compose

RowSteerings = Sequence[SteeringLike | None]


@dataclass
class _Forward:
    """Per-forward-call state shared by all block hooks."""

    real: torch.Tensor  # [B, q] bool: real (non-pad) tokens of this call
    tok_idx: torch.Tensor  # [B, q] long: index of each token among its row's real tokens
    prompt_len: torch.Tensor | None  # [B] real prompt tokens per row
    dtype: torch.dtype
    masks: dict[Any, torch.Tensor] = field(default_factory=dict)

    def mask(self, key: Positions, rows: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """``[B, q, 1]`` float mask of the positions ``key`` (and rows) on ``device``."""
        cache_key = (key, None if rows is None else id(rows), device)
        m = self.masks.get(cache_key)
        if m is None:
            sel = self.real
            if key == "prompt" or key == "generated":
                if self.prompt_len is None:
                    raise SteeringSpecError("positions='prompt'/'generated' need a known prompt length")
                in_prompt = self.tok_idx < self.prompt_len[:, None]
                sel = sel & (in_prompt if key == "prompt" else ~in_prompt)
            elif isinstance(key, tuple):
                start, end = key
                sel = sel & (self.tok_idx >= start)
                if end is not None:
                    sel = sel & (self.tok_idx < end)
            if rows is not None:
                sel = sel & rows[:, None]
            m = sel.to(device=device, dtype=self.dtype).unsqueeze(-1)
            self.masks[cache_key] = m
        return m


@dataclass
class _Term:
    """One operation at one layer."""

    operator: str
    positions: Positions
    rows: torch.Tensor | None  # [B] bool or None (= all rows)
    delta: torch.Tensor  # add: [1|B, 1, d] (already × coefficient); actadd: [n, d]; else unit [d]
    coefficient: float
    norm: float = 1.0  # |v| for add_norm_preserving (delta holds the unit direction)

    def apply(self, h: torch.Tensor, fwd: _Forward) -> torch.Tensor:
        if self.positions == "actadd":
            n = self.delta.shape[0]
            m = fwd.mask((0, n), self.rows, h.device)
            idx = fwd.tok_idx.clamp(0, n - 1).to(h.device)
            return torch.addcmul(h, m, self.delta[idx])
        m = fwd.mask(self.positions, self.rows, h.device)
        if self.operator == "add":
            return torch.addcmul(h, m, self.delta)
        u = self.delta
        proj = (h @ u).unsqueeze(-1)
        if self.operator == "ablate":
            return h - (self.coefficient * m) * proj * u
        if self.operator == "clamp":
            return h + m * (self.coefficient - proj) * u
        # add_norm_preserving
        new = h + (self.coefficient * self.norm * m) * u
        scale = h.norm(dim=-1, keepdim=True) / new.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return torch.where(m > 0, new * scale, h)

    def repeated(self, repeat: int) -> _Term:
        """This term for a batch that HF expanded ``repeat`` times (``num_return_sequences``)."""
        rows = None if self.rows is None else self.rows.repeat_interleave(repeat)
        delta = self.delta
        if self.operator == "add" and self.positions != "actadd" and delta.shape[0] > 1:
            delta = delta.repeat_interleave(repeat, dim=0)
        return _Term(self.operator, self.positions, rows, delta, self.coefficient, self.norm)


def _block_device(block: torch.nn.Module, fallback: torch.device) -> torch.device:
    """Where a block computes: accelerate's execution device for offloaded blocks (whose
    parameters sit on ``meta``), else the device of its parameters."""
    hook = getattr(block, "_hf_hook", None)
    execution = getattr(hook, "execution_device", None)
    if execution is not None:
        return torch.device(execution)
    param = next(block.parameters(), None)
    return param.device if param is not None else fallback


def _as_list(steering: SteeringLike | Sequence[SteeringLike] | None) -> list[Steering]:
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
    ) -> None:
        self.lm = lm
        self.owner = threading.get_ident()
        self.batch = len(rows) if rows is not None else None
        self.fixed_prompt_len = prompt_length
        self.prompt_len: torch.Tensor | None = None
        self.fwd: _Forward | None = None
        self.handles: list[Any] = []
        self.terms: dict[int, list[_Term]] = {}
        self.dtype = next(lm.model.parameters()).dtype
        entries: list[tuple[Steering, torch.Tensor | None]] = [(s, None) for s in shared]
        if rows is not None:
            by_id: dict[int, tuple[Steering, list[int]]] = {}
            for i, item in enumerate(rows):
                for s in _as_list(item):
                    by_id.setdefault(id(s), (s, []))[1].append(i)
            for s, idx in by_id.values():
                mask = torch.zeros(len(rows), dtype=torch.bool)
                mask[idx] = True
                entries.append((s, mask.to(lm.device)))
        for s, _ in entries:
            s.vector.check_model(lm)
        self._build_terms([(s, r) for s, r in entries if not s.is_noop])
        self.active = self.terms
        self.repeat = 1
        self._accepts_positional = self._forward_params()

    def _forward_params(self) -> list[str]:
        try:
            return list(inspect.signature(self.lm.model.forward).parameters)
        except (TypeError, ValueError):
            return ["input_ids"]

    def _build_terms(self, entries: list[tuple[Steering, torch.Tensor | None]]) -> None:
        # Merge plain one-direction additions that share positions into one row-stacked delta
        # per layer: a batch where every row has its own vector costs one addcmul per layer.
        merged: dict[tuple[int, object], torch.Tensor] = {}
        for s, rows in entries:
            for layer in s.active_layers:
                device = _block_device(self.lm.blocks[layer], self.lm.device)
                v = s.vector.directions[layer].to(device=device, dtype=self.dtype)
                if s.operator == "add" and s.where != "actadd":
                    width = 1 if rows is None else len(rows)
                    key: tuple[int, object] = (layer, s.where if rows is None else ("rows", s.where))
                    acc = merged.get(key)
                    last = self.terms.get(layer, [])[-1:]
                    if acc is not None and not (last and last[0].delta is acc):
                        acc = None  # an ablate/clamp came in between: keep the order of composition
                    if acc is None:
                        acc = torch.zeros(width, 1, v.shape[-1], device=device, dtype=self.dtype)
                        merged[key] = acc
                        self.terms.setdefault(layer, []).append(_Term("add", s.where, None, acc, 1.0))
                    if rows is None:
                        acc += s.coefficient * v
                    else:
                        acc[rows.to(device)] += s.coefficient * v
                    continue
                if s.where == "actadd":
                    term = _Term("add", "actadd", rows, s.coefficient * v, s.coefficient)
                else:
                    norm = float(v.norm())
                    term = _Term(s.operator, s.where, rows, v / max(norm, 1e-12), s.coefficient, norm)
                self.terms.setdefault(layer, []).append(term)

    # ------------------------------------------------------------------ hooks
    def _pre_hook(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if threading.get_ident() != self.owner:
            return
        bound = dict(zip(self._accepts_positional, args))
        bound.update(kwargs)
        ids = bound.get("input_ids")
        ref = ids if ids is not None else bound.get("inputs_embeds")
        if ref is None:
            raise SteeringSpecError("steering needs input_ids or inputs_embeds in the forward call")
        batch, q = int(ref.shape[0]), int(ref.shape[1])
        device = ref.device
        mask = bound.get("attention_mask")
        cache = bound.get("past_key_values")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            past = int(mask.shape[1]) - q
            full = mask.to(device=device, dtype=torch.long)
            tok_idx = (full.cumsum(-1) - 1)[:, past:]
            real = full[:, past:] > 0
        else:
            cache_position = bound.get("cache_position")
            if isinstance(cache_position, torch.Tensor):
                positions = cache_position.to(device)
                past = int(positions[0])
            else:
                past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
                positions = torch.arange(past, past + q, device=device)
            tok_idx = positions.unsqueeze(0).expand(batch, q)
            real = torch.ones(batch, q, dtype=torch.bool, device=device)
        prompt_len = self._prompt_len(batch, past, real, device)
        if self.batch is not None:
            if batch % self.batch:
                raise SteeringSpecError(
                    f"per-row steering was set up for {self.batch} rows but the forward call has {batch}"
                )
            repeat = batch // self.batch
            if repeat != self.repeat:
                self.active = {k: [t.repeated(repeat) for t in ts] for k, ts in self.terms.items()}
                self.repeat = repeat
        self.fwd = _Forward(real=real, tok_idx=tok_idx, prompt_len=prompt_len, dtype=self.dtype)

    def _prompt_len(self, batch: int, past: int, real: torch.Tensor, device: torch.device) -> torch.Tensor | None:
        fixed = self.fixed_prompt_len
        if fixed is not None:
            t = torch.as_tensor(fixed, device=device).reshape(-1)
            t = t.expand(batch) if t.numel() == 1 else t
            return t.repeat_interleave(batch // t.numel()) if t.numel() != batch else t
        if past == 0:  # a call with an empty cache starts a new sequence: it is the prompt
            self.prompt_len = real.sum(-1)
        return self.prompt_len

    def _make_hook(self, layer: int) -> Any:
        def hook(_module: Any, _args: Any, output: Any) -> Any:
            fwd = self.fwd
            if fwd is None or threading.get_ident() != self.owner:
                return None
            h = output[0] if isinstance(output, tuple) else output
            for term in self.active[layer]:
                h = term.apply(h, fwd)
            return (h, *output[1:]) if isinstance(output, tuple) else h

        return hook

    def __enter__(self) -> SteeringSession:
        if self.terms:
            self.handles.append(self.lm.model.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
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
        self.fwd = None


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
            you recompute whole sequences without the KV cache. By default a call with an empty
            cache is taken to be the prompt and later cached calls to be generated tokens.

    Raises:
        ModelMismatchError: a vector was made for another model.
    """
    with SteeringSession(lm, _as_list(steering), prompt_length=prompt_length) as session:
        yield session


@contextmanager
def steer_rows(
    lm: LM, rows: RowSteerings, prompt_length: torch.Tensor | int | None = None
) -> Iterator[SteeringSession]:
    """Like :func:`steer`, with one steering (or ``None``) per batch row."""
    with SteeringSession(lm, [], rows=rows, prompt_length=prompt_length) as session:
        yield session
