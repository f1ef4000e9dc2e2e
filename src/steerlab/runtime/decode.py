"""Compiled steered decoding: a static KV cache, one compiled step, steering deltas as graph inputs.

A :class:`Decoder` holds, for one model, batch size and cache length, a transformers
``StaticCache`` and one decoding step compiled by ``torch.compile`` (the forward call of one token per row,
the greedy choice, the finite-logits check and end-of-sequence bookkeeping, all in the graph). Its
steering is one buffer ``deltas[layer, row]`` that a forward hook per block adds to the block's
output: a new vector, coefficient or row assignment is written into the buffer in place, so the
compiled graph is reused (its hooks are the same function objects every call; the tensors it reads
are the same tensors). A row or layer without steering holds zeros: adding ``0.0`` leaves every
value as it was (``x + 0.0 == x`` for every float but ``-0.0``, which becomes ``+0.0`` and compares
equal), so a coefficient of 0 gives exactly the plain run of this same path.

What stays outside the graph, per step: one Python call, one integer read back (whether any row's
logits were not finite, or every row has ended) and two ``[B]`` copies. Sampling is not in it:
a sampling call decodes through ``generate``. The prompt (prefill) runs eagerly through the
steering session's full path (positions, conditions): the decoder takes over at the first
generated token, when the session's plan is plain adds (:attr:`steerlab.runtime.plan.DecodeStep.adds`);
any other plan (a window, a token-wise vector, an operator other than add on generated tokens, a
condition) is not :func:`eligible` and decodes through ``generate``.

On a GPU the step is compiled with ``mode="reduce-overhead"`` (CUDA graphs): the deltas, the cache
and the step's inputs are static tensors, so a replay reads the new values.

Every call of the model goes through :mod:`steerlab.runtime.passes`.

Example:
    >>> dec = decoder(lm, batch=2, length=64)  # doctest: +SKIP
    >>> new = dec.run(ids, mask, rows=[Steering(vec, 4.0), None], max_new_tokens=24, eos=[2], pad=0)  # doctest: +SKIP
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import NonFiniteError
from ..models.load import LM
from ..models.tokens import position_ids
from . import hf
from .compiled import own_code
from .finite import finite, nonfinite_message, peaks
from .passes import forward, hooked
from .plan import Plan, RowSteerings, block_device
from .session import steer_rows

StepFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


def eligible(lm: LM, plan: Plan) -> bool:
    """Whether a session's ``plan`` decodes as plain in-place adds (what the decoder's buffer holds),
    on a model whose blocks all compute on ``lm.device`` (no offloading).

    Example:
        >>> from steerlab.runtime.plan import Plan
        >>> eligible(lm, Plan.build({}, {}, {}))  # doctest: +SKIP
        True
    """
    step = plan.decode
    if step is None or plan.conditions or any(adds is None for adds in step.adds.values()):
        return False
    return all(block_device(block, lm.device) == lm.device for block in lm.blocks)


def delta_hooks(deltas: torch.Tensor) -> dict[int, Callable[..., None]]:
    """One forward hook per layer that adds ``deltas[layer]`` (``[n_layers, B, 1, d]``) to the block's
    output in place: a compiled step's steering, made once so that every call passes the same hook
    objects reading the same buffer (written in place between calls, never recompiled).

    Example:
        >>> hooks = delta_hooks(torch.zeros(2, 1, 1, 4))
        >>> sorted(hooks)
        [0, 1]
    """

    def make(layer: int) -> Callable[..., None]:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            hf.block_hidden(output).add_(deltas[layer])

        return hook

    return {k: make(k) for k in range(deltas.shape[0])}


def _length_bucket(n: int) -> int:
    """Cache lengths are rounded up to a power of two (at least 64), so calls of similar lengths
    share one compiled step.

    Example:
        >>> _length_bucket(10), _length_bucket(64), _length_bucket(65)
        (64, 64, 128)
    """
    return max(64, 1 << (n - 1).bit_length())


class Decoder:
    """A compiled decoding step for one model, batch size and cache length, reused across calls.

    Args:
        lm: the model.
        batch: rows per call.
        length: KV cache length (prompt plus new tokens, at most).
        backend: ``torch.compile`` backend (``None``: no compilation, the same step eagerly).
        mode: ``torch.compile`` mode (default: ``"reduce-overhead"`` on CUDA, else none).
    """

    def __init__(
        self,
        lm: LM,
        batch: int,
        length: int,
        backend: str | Callable[..., Any] | None = "inductor",
        mode: str | None = None,
    ) -> None:
        self.lm = lm
        self.batch = batch
        self.length = length
        dtype = next(lm.model.parameters()).dtype
        self.deltas = torch.zeros(lm.n_layers, batch, 1, lm.d_model, dtype=dtype, device=lm.device)
        self._hooks = delta_hooks(self.deltas)  # the same objects every call
        self._cache: Any = None
        self.timing: dict[str, float] = {}
        """The last :meth:`run`: ``prefill_s`` (the prompt and the first token), ``steps`` (compiled
        steps run) and ``decode_s`` (their wall time)."""
        self._mask = torch.ones(batch, length, dtype=torch.long, device=lm.device)
        if backend is None:
            self._step: StepFn = self._eager_step
        else:
            if mode is None and lm.device.type == "cuda":
                mode = "reduce-overhead"
            # a code object of its own: TorchDynamo holds at most 8 graphs per code object (compiled.own_code)
            step = own_code(Decoder._eager_step, self, f"decode_step_{batch}x{length}")
            self._step = torch.compile(step, backend=backend, mode=mode, fullgraph=True, dynamic=False)

    def _eager_step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache_position: torch.Tensor,
        mask: torch.Tensor,
        unfinished: torch.Tensor,
        eos: torch.Tensor,
        pad: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One token per row: the next tokens (pad on ended rows), which rows go on, which rows'
        logits were not finite, and one code read back per step (2: some row not finite, 1: every
        row has ended, 0: go on)."""
        out = forward(
            self.lm,
            tokens,
            mask,
            position_ids=positions,
            cache=self._cache,
            use_cache=True,
            logits_to_keep=1,
            cache_position=cache_position,
        )
        values, nxt = peaks(out.logits[:, -1])
        bad = ~finite(values)
        nxt = torch.where(unfinished, nxt, pad)
        unfinished = unfinished & ~torch.isin(nxt, eos)
        code = bad.any().long() * 2 + (~unfinished.any()).long()
        return nxt, unfinished, bad, code

    def set_steering(self, plan: Plan) -> None:
        """Write a session plan's decoding deltas into the buffer (zeros elsewhere), in place."""
        step = plan.decode
        if step is None or not eligible(self.lm, plan):
            raise ValueError("this plan does not decode as plain adds: see decode.eligible")
        self.deltas.zero_()
        for layer, adds in step.adds.items():
            for delta in adds or ():
                self.deltas[layer].add_(delta.to(self.deltas.dtype))

    def run(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        rows: RowSteerings,
        max_new_tokens: int,
        eos: Sequence[int],
        pad: int,
        offset: int = 0,
    ) -> torch.Tensor | None:
        """Greedy decoding of left-padded ``input_ids`` steered per row: the ``[batch, n]`` new
        tokens (pad after a row's end, ``n`` stops when every row has ended), as
        ``model.generate`` gives them; ``None`` when the rows' steering is not :func:`eligible`
        (only the session's plan was made; nothing ran).

        Raises:
            NonFiniteError: a step gave NaN or infinite logits for some rows (``offset``: the
                index of row 0 among the caller's prompts).
        """
        lm = self.lm
        batch, width = input_ids.shape
        if batch != self.batch or width + max_new_tokens > self.length:
            raise ValueError(f"this decoder is made for {self.batch} rows of up to {self.length} tokens")
        self._mask.fill_(1)  # positions after the prompt: the static cache's causal mask hides the future
        self._mask[:, :width] = attention_mask
        started = time.perf_counter()
        with torch.inference_mode():
            if self._cache is None:
                self._cache = hf.static_cache(lm.model, self.length)
            else:
                self._cache.reset()  # the same tensors, zeroed: a compiled step (and a CUDA graph) reads them
            with steer_rows(lm, rows, prompt_length=attention_mask.sum(-1)) as session:
                if not eligible(lm, session.plan):
                    return None
                positions = position_ids(attention_mask)
                out = forward(
                    lm,
                    input_ids,
                    attention_mask,
                    position_ids=positions,
                    cache=self._cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                plan = session.plan
            self.set_steering(plan)
            self.timing = {"prefill_s": time.perf_counter() - started}
            return self._loop(out.logits[:, -1], positions[:, -1:], width, max_new_tokens, eos, pad, offset)

    def _loop(
        self,
        first: torch.Tensor,
        last_position: torch.Tensor,
        width: int,
        max_new_tokens: int,
        eos: Sequence[int],
        pad: int,
        offset: int,
    ) -> torch.Tensor:
        device = self.lm.device
        values, tokens = peaks(first)
        _check(~finite(values), offset)
        begun = time.perf_counter()
        eos_t = torch.tensor(list(eos) or [-1], device=device)
        pad_t = torch.tensor(pad, device=device)
        unfinished = ~torch.isin(tokens, eos_t)
        out = torch.full((self.batch, max_new_tokens), pad, dtype=torch.long, device=device)
        out[:, 0] = tokens
        n = 1
        if not bool(unfinished.any()):
            return out[:, :n]
        with hooked(self.lm, self._hooks), hf.grouped_query_sdpa(self.lm.model):
            for i in range(1, max_new_tokens):
                step = self._step(
                    tokens[:, None],
                    last_position + i,
                    torch.tensor([width + i - 1], device=device),
                    self._mask,
                    unfinished,
                    eos_t,
                    pad_t,
                )
                code = int(step[3])  # the one value read back per step
                if code & 2:
                    _check(step[2], offset)
                tokens, unfinished = step[0].clone(), step[1].clone()  # a CUDA graph's outputs are overwritten
                out[:, i] = tokens
                n = i + 1
                if code & 1:
                    break
        self.timing["steps"] = n - 1
        self.timing["decode_s"] = time.perf_counter() - begun
        return out[:, :n]


def _check(bad: torch.Tensor, offset: int) -> None:
    """Raise for the rows ``bad`` (``[B]`` bool) whose logits were not finite."""
    if bool(bad.any()):
        rows = [offset + int(i) for i in bad.nonzero().flatten().tolist()]
        raise NonFiniteError(nonfinite_message(rows, "prompt"), tuple(rows))


def eos_ids(lm: LM) -> list[int]:
    """The tokens that end a row in ``model.generate`` (its generation config's ``eos_token_id``)."""
    config = getattr(lm.model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = lm.tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


_GREEDY_DEFAULTS = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}


def pays(lm: LM, batch: int, length: int, new_tokens: int) -> bool:
    """Whether a ``generate`` chunk decodes through the compiled step by default (the rule measured
    by ``benchmarks/bench_llamacpp.py``, docs/benchmarks.md). Decided by the call alone, never by
    what the process ran before, so the same call always takes the same path and gives the same
    tokens (a steered row at coefficient 0 and a plain row of one call share the path):

    * on a CPU, at most :data:`CPU_MAX_BATCH` rows and at least :data:`CPU_MIN_STEPS` new tokens.
      Compiling takes 12–90 s on the 2-core CPU measured and saves ~10 ms a step at batch 1 and
      nothing at batch 16 in float32: it pays back after roughly a thousand steps, never for a
      short call. ``compiled=True`` opts in for shorter calls (the step is kept per model, batch
      and cache length, so later calls of that shape do not compile again).
    * on a GPU, not by default: CUDA graphs are written but unmeasured here (``compiled=True``).

    ``length`` (prompt plus new tokens) does not enter the rule; it names the cache the step uses.

    Example:
        >>> pays(lm, 1, 20, 8)  # doctest: +SKIP
        False
    """
    del length
    if lm.device.type != "cpu":
        return False
    return batch <= CPU_MAX_BATCH and new_tokens >= CPU_MIN_STEPS


CPU_MIN_STEPS = 2048
"""On a CPU, ``generate`` compiles by default for a call of at least this many new tokens."""
CPU_MAX_BATCH = 4
"""On a CPU, ``generate`` compiles by default only for batches up to this size (float32 at 16 rows: no gain)."""


def compiled_route(
    lm: LM, compiled: bool | None, padding_side: str, generate_kwargs: dict[str, Any]
) -> Callable[[int, int, int], bool]:
    """For ``generate``: a test ``(batch, length, new_tokens) -> bool`` of whether a chunk decodes through
    the compiled step. Never for sampling, right padding or any ``generate`` keyword the step does
    not implement (``compiled=True`` then decodes through ``model.generate``, as ``False`` does).

    Example:
        >>> compiled_route(lm, True, "left", {"do_sample": True})(1, 20, 8)  # doctest: +SKIP
        False
    """
    if compiled is not None and not isinstance(compiled, bool):
        raise TypeError(f"compiled must be True, False or None (got {compiled!r})")
    own = {k: v for k, v in generate_kwargs.items() if not (k in _GREEDY_DEFAULTS and v == _GREEDY_DEFAULTS[k])}
    if compiled is False or padding_side != "left" or own:
        return lambda batch, length, new_tokens: False
    if compiled:
        return lambda batch, length, new_tokens: True
    return lambda batch, length, new_tokens: pays(lm, batch, length, new_tokens)


_DECODERS: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[int, int], Decoder]] = weakref.WeakKeyDictionary()


def decoder(lm: LM, batch: int, length: int) -> Decoder:
    """The model's compiled :class:`Decoder` for ``batch`` rows of up to ``length`` tokens (the
    length rounded up to a power of two), made once and kept while the model lives."""
    size = _length_bucket(length)
    per_model = _DECODERS.setdefault(lm.model, {})
    dec = per_model.get((batch, size))
    if dec is None:
        dec = per_model[(batch, size)] = Decoder(lm, batch, size)
    return dec
