"""The steering engine: forward hooks that apply :class:`~steerlab.core.steering.Steering` objects.

What the hooks do is the session's :class:`~steerlab.runtime.plan.Plan`, made once when it opens
(per layer, which operators act on which rows at which positions; merged row-stacked deltas; what
a decoding step does). One pre-hook on the model reads, once per forward call, which tokens are real
and each one's index among its row's real tokens (:mod:`steerlab.runtime.calls`, from what the call
passes: attention mask, position ids or the cache's length), so padding and the KV cache never
shift positions, and chooses the call's path. Each steered block gets one hook that applies the
plan's terms, in place on the block's output where autograd allows (so every observer of the output
sees the steered stream, also transformers releases that record hidden states inside a block's
forward). A decoding step (one new token per row after the whole prompt, with no window or
token-wise vector in play) computes no positions at all: where every term is a plain add, each
layer adds its deltas in place, one ``add_`` each. Vectors are moved to each block's device and
dtype once, when the session starts.

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
from dataclasses import dataclass
from typing import Any

import torch

from ..core.condition import Condition, prompt_scores
from ..core.positions import starts_sequence
from ..core.steering import Steering, SteeringLike
from ..errors import SteeringSpecError
from ..models.load import LM
from . import hf
from .calls import input_positions
from .canary import check_positions
from .compiled import guard_hooks
from .plan import CallState, DecodeStep, Plan, RowSteerings, as_steerings, build_terms, entries


@dataclass
class _Prompt:
    """What a session knows about its rows' prompts.

    Attributes:
        fixed: the real prompt tokens per row the caller gave (``None``: read from the calls).
        longest: the longest of them.
        read: per row, read from the last call that started every row at token 0.
        done: the whole prompt has run: later one-token cached calls are generated tokens.
    """

    fixed: torch.Tensor | int | None
    longest: int | None
    read: torch.Tensor | None = None
    done: bool = False

    def lengths(self, batch: int, real: torch.Tensor, index: torch.Tensor) -> torch.Tensor | None:
        """``[batch]`` real prompt tokens per row of a call (``None``: not known yet)."""
        fixed = self.fixed
        if fixed is not None:
            t = torch.as_tensor(fixed, device=real.device).reshape(-1)
            t = t.expand(batch) if t.numel() == 1 else t
            return t.repeat_interleave(batch // t.numel()) if t.numel() != batch else t
        if starts_sequence(real, index):  # a call that starts every row at token 0 is the prompt
            self.read = real.sum(-1)
        return self.read

    def seen(self, inputs: hf.CallInputs, lengths: torch.Tensor | None) -> None:
        """Note a call of whole prompts (no cache, at least the longest prompt's tokens)."""
        if not inputs.past and (self.longest is None or inputs.length >= self.longest):
            self.done = lengths is not None  # the whole prompt ran: cached steps are generated tokens


class SteeringSession:
    """Hooks that apply steerings to one model for the duration of a ``with`` block.

    Use :func:`steer` (one steering set for every row) or :func:`steer_rows` (one per row)
    rather than this class directly. What the hooks do is the session's :attr:`plan`
    (:mod:`steerlab.runtime.plan`), made when it opens; each forward call takes one of its three
    paths (a call, a decoding step, the decoding fast path).
    """

    def __init__(
        self,
        lm: LM,
        shared: list[Steering],
        rows: RowSteerings | None = None,
        prompt_length: torch.Tensor | int | None = None,
        generating: bool = False,
        decided: Mapping[Condition, torch.Tensor] | None = None,
        strength: torch.Tensor | None = None,
    ) -> None:
        self._lm = lm
        self._owner = threading.get_ident()
        self._batch = len(rows) if rows is not None else None
        self._dtype = next(lm.model.parameters()).dtype
        made = entries(shared, rows)
        for vector in {id(s.vector): s.vector for s, _ in made}.values():
            vector.check_model(lm)
        live = [(s, r) for s, r in made if not s.is_noop]
        self._decisions: dict[int, torch.Tensor] = {}
        self._scores: dict[int, torch.Tensor] = {}
        for cond, rows_decided in (decided or {}).items():  # made on the rows' prompts in an earlier session
            self._decisions[id(cond)] = rows_decided.to(device=lm.device, dtype=torch.bool)
            self._scores[id(cond)] = torch.full(rows_decided.shape, float("nan"), device=lm.device)
        conditions = {id(s.condition): s.condition for s, _ in live if s.condition is not None}
        self._base = Plan.build(build_terms(lm, live, self._batch, self._dtype, strength), conditions, self._decisions)
        self._plan = self._base
        longest = None if prompt_length is None else int(torch.as_tensor(prompt_length).max())
        self._prompt = _Prompt(prompt_length, longest, done=generating)
        self._call: CallState | None = None
        self._step: DecodeStep | None = None
        self._handles: list[Any] = []
        if self._base.terms:
            check_positions(lm)

    @property
    def plan(self) -> Plan:
        """What the hooks do for the current batch shape."""
        return self._plan

    @property
    def decisions(self) -> Mapping[int, torch.Tensor]:
        """Each condition's ``[B]`` bool decision per row, by ``id`` of the condition."""
        return self._decisions

    def decision(self, condition: Condition) -> torch.Tensor | None:
        """Each row's ``[B]`` bool decision for ``condition`` (``None``: no prompt has run yet)."""
        return self._decisions.get(id(condition))

    # ------------------------------------------------------------------ hooks
    def _owned(self) -> bool:
        """Whether the running forward call belongs to the thread that opened the session.

        Under ``torch.compile`` the hooks are traced into the graph, which cannot ask for a thread:
        a compiled model is steered by the session whose hooks it traced (steer it from one thread;
        opening or closing a session makes it re-check its guards, :mod:`steerlab.runtime.compiled`).
        """
        return torch.compiler.is_compiling() or threading.get_ident() == self._owner

    def _pre_hook(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Choose the call's path: a decoding step (no positions), or a call (positions read once)."""
        if not self._owned():
            return
        bound = hf.bind_call(module, args, kwargs) if args else kwargs  # generate passes keywords only
        if self._is_decode_step(bound):
            self._call = None
            self._step = self._decode_step(bound)
            return
        inputs = hf.call_inputs(module, (), bound)
        self._set_repeat(inputs.batch)
        self._step = None
        real, index = input_positions(inputs)
        prompt_len = self._prompt.lengths(inputs.batch, real, index)
        self._prompt.seen(inputs, prompt_len)
        self._call = CallState(real, index, prompt_len, self._dtype, self._plan.terms, self._decisions)

    def _set_repeat(self, batch: int) -> None:
        if self._batch is None:
            return
        if batch % self._batch:
            raise SteeringSpecError(
                f"per-row steering was set up for {self._batch} rows but the forward call has {batch}"
            )
        repeat = batch // self._batch
        if repeat != self._plan.repeat:
            self._plan = self._base.repeated(repeat, self._decisions)

    def _is_decode_step(self, call: Mapping[str, Any]) -> bool:
        """One new token per row after a whole prompt: every steering at ``"all"``/``"generated"``
        acts on it, none at ``"prompt"`` — no positions need computing (the fast path). ``call`` is
        the forward call's arguments by name; a batch the plan was not built for (a first call
        after ``num_return_sequences`` expanded it) takes the full path once."""
        plan = self._plan
        if plan.decode is None or not self._prompt.done:
            return False
        batch = hf.one_token_step(call)
        return batch is not None and (self._batch is None or batch == self._batch * plan.repeat)

    def _decode_step(self, call: Mapping[str, Any]) -> DecodeStep:
        """The state of a decoding step: the plan's, the same object every step, no tensor work.

        A padding token at a decoding step (a zero in the attention mask's new column, which neither
        ``generate`` nor steerlab's server ever passes) is steered like a real one: no later token
        attends to it, so no real token's output changes.
        """
        step = self._plan.decode
        assert step is not None
        return step

    def _make_hook(self, layer: int) -> Any:
        def hook(_module: Any, _args: Any, output: Any) -> Any:
            step = self._step
            if step is not None:
                adds = step.adds[layer]
                if adds is not None and self._owned():  # path 3, the decoding fast path: in-place adds
                    h = output[0] if isinstance(output, tuple) else output
                    for delta in adds:
                        h.add_(delta)
                    return None
            if not self._owned():
                return None
            h = out = hf.block_hidden(output)
            if step is not None:  # path 2, a decoding step: every term on its rows, no positions
                for term in step.terms[layer]:
                    out = term.apply_decode(out, step)
            elif (call := self._call) is not None:  # path 1, a call: every term under its positions' mask
                for term in call.terms[layer]:
                    out = term.apply(out, call)
            return None if out is h else hf.with_block_hidden(output, out)

        return hook

    def _make_reader(self, condition: Condition) -> Any:
        """A hook on the condition's block: decides, from the prompt tokens of a call, which rows
        the condition's steerings act on (rows without prompt tokens keep their decision)."""

        def reader(_module: Any, _args: Any, output: Any) -> None:
            call = self._call
            if call is None or not self._owned():
                return
            prompt = call.real if call.prompt_len is None else call.real & (call.index < call.prompt_len[:, None])
            scores, seen = prompt_scores(condition, hf.block_hidden(output), prompt)
            key = id(condition)
            decided = condition.holds(scores)
            old = self._decisions.get(key)
            if old is not None and old.shape == decided.shape:
                decided = torch.where(seen, decided, old.to(decided.device))
                scores = torch.where(seen, scores, self._scores[key].to(scores.device))
            self._decisions[key] = decided
            self._scores[key] = scores

        return reader

    def __enter__(self) -> SteeringSession:
        guard_hooks()
        lm = self._lm
        for condition in self._base.conditions.values():
            # after the steering hooks of that block: the condition reads the stream as it leaves
            self._handles.append(lm.blocks[condition.at].register_forward_hook(self._make_reader(condition)))
        if self._base.terms:
            pre_hook = self._pre_hook
            if "torch._dynamo" in sys.modules:
                # A compiled model runs its hooks' frames through TorchDynamo too: the pre-hook would
                # become a frame of its own whose guards are checked on every call. It only reads the
                # call's arguments, so it runs eagerly; the blocks' hooks trace into the graph.
                pre_hook = torch.compiler.disable(pre_hook)
            self._handles.append(lm.model.register_forward_pre_hook(pre_hook, with_kwargs=True))
            for layer in self._base.terms:
                # prepend: steering runs before any other hook on the block (e.g. transformers'
                # output_hidden_states recorder), so every observer sees the steered stream.
                hook = self._make_hook(layer)
                self._handles.append(lm.blocks[layer].register_forward_hook(hook, prepend=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._call = None
        self._step = None
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
    strength: torch.Tensor | None = None,
) -> Iterator[SteeringSession]:
    """Like :func:`steer`, with one steering (or ``None``) per batch row.

    ``generating=True`` says that every call in the block continues rows whose prompts already ran
    (a decoding loop that rows join and leave, each with its own ``prompt_length``): one-token
    cached steps then take the fast path from the first call. Their conditions (CAST) were decided
    when their prompts ran, in another session (``session.decisions``): ``decided`` gives, per
    :class:`~steerlab.core.condition.Condition` of ``rows``, the ``[B]`` bool decision of each row.
    ``strength`` (``[B]`` float) scales the steerings that have a ``kl_cap``, row by row; whoever
    passes it updates it in place between calls (:mod:`steerlab.runtime.kl_cap`).

    Example:
        >>> with steer_rows(lm, [Steering(vec, 4.0), None]):  # doctest: +SKIP
        ...     out = lm.model(input_ids=ids, attention_mask=mask)
    """
    with SteeringSession(
        lm, [], rows=rows, prompt_length=prompt_length, generating=generating, decided=decided, strength=strength
    ) as session:
        yield session
