"""The first-use check that steering hooks see the right token positions under this transformers.

transformers changes how it calls a model between minor releases (5.24 renamed the cache argument
and drops an all-ones attention mask). Before a model is steered for the first time,
:func:`check_positions` runs three tiny calls with a probe on the model's pre-hook — the same
reading of positions the engine uses — and compares what it sees with what must be true:

1. ``generate`` on a left-padded batch of two prompts (3 and 5 tokens), two new tokens: the
   prompt call sees indices ``0..n-1`` on real tokens only, the cached step sees ``n``;
2. ``generate`` on one unpadded prompt (where 5.24 passes no attention mask);
3. a raw forward, then one step that passes the returned cache back.

It also checks that block outputs hold the hidden states where :mod:`steerlab.runtime.hf` looks for them.
A mismatch raises :class:`~steerlab.errors.TransformersCompatError` naming the versions; the check
runs once per model object.

Example:
    >>> check_positions(lm)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

import torch

from .. import hf_env
from ..errors import TransformersCompatError
from ..models.load import LM
from ..models.tokens import pad_id, pad_token_ids
from . import hf
from .calls import call_positions
from .passes import forward, hf_generate

_CHECKED: WeakKeyDictionary[Any, bool] = WeakKeyDictionary()

LOWEST_TRANSFORMERS = "4.56"
"""The lowest transformers release steerlab supports (tested in CI with the newest one)."""


class _Probe:
    """Records what the engine's position reading (:func:`~steerlab.runtime.calls.call_positions`)
    sees in each forward call, and block shapes."""

    def __init__(self, lm: LM) -> None:
        self.lm = lm
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.shapes: list[tuple[int, ...]] = []

    def pre(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        real, index = call_positions(module, args, kwargs)
        self.calls.append((real.cpu(), index.cpu()))

    def block(self, _module: Any, _args: Any, output: Any) -> None:
        self.shapes.append(tuple(hf.block_hidden(output).shape))

    def __enter__(self) -> _Probe:
        self.handles = [
            self.lm.model.register_forward_pre_hook(self.pre, with_kwargs=True),
            self.lm.blocks[0].register_forward_hook(self.block),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()


def _sample_ids(lm: LM, n: int) -> list[int]:
    """``n`` ordinary token ids of the model's vocabulary (no special tokens)."""
    ids = lm.tokenizer("Once upon a time there was a little cat who", add_special_tokens=False)["input_ids"]
    special = set(getattr(lm.tokenizer, "all_special_ids", []) or [])
    ids = [i for i in ids if i not in special] or [1]
    return [ids[i % len(ids)] for i in range(n)]


def _expect(probe: _Probe, lengths: list[int], steps: int, what: str) -> list[str]:
    """Problems found: call 0 must index each row's real tokens ``0..n-1``; call ``k`` index ``n+k-1``."""
    problems = []
    if len(probe.calls) != steps:
        return [f"{what}: {len(probe.calls)} forward calls seen, {steps} expected"]
    for step, (real, index) in enumerate(probe.calls):
        for row, n in enumerate(lengths):
            got = index[row][real[row]].tolist()
            want = list(range(n)) if step == 0 else [n + step - 1]
            if got != want:
                problems.append(f"{what}, call {step}, row {row}: token indices {got}, expected {want}")
    return problems


def check_positions(lm: LM) -> None:
    """Confirm (once per model) that steering hooks read correct positions; see the module docs.

    Raises:
        TransformersCompatError: they do not, under the installed transformers.
    """
    if _CHECKED.get(lm.model):
        return
    problems = _run_checks(lm)
    if problems:
        raise TransformersCompatError(
            "steerlab's position check failed, so steering would act on the wrong tokens: "
            + "; ".join(problems[:4])
            + f" ({hf.versions()}). steerlab supports transformers >= {LOWEST_TRANSFORMERS}; "
            "install a release in that range or report this with the versions named."
        )
    _CHECKED[lm.model] = True


def _run_checks(lm: LM) -> list[str]:
    device = lm.device
    pad = pad_id(lm.tokenizer)
    lengths = [3, 5]
    ids, mask = pad_token_ids([_sample_ids(lm, n) for n in lengths], pad, "left")
    ids, mask = ids.to(device), mask.to(device)
    gen: dict[str, Any] = {"max_new_tokens": 2, "min_new_tokens": 2, "do_sample": False, "pad_token_id": pad}
    gen.update(temperature=None, top_p=None, top_k=None)
    problems: list[str] = []
    d_model = lm.d_model
    with torch.inference_mode(), hf_env.quiet(errors_only=True):
        with _Probe(lm) as probe:
            hf_generate(lm, ids, mask, **gen)
        problems += _expect(probe, lengths, 2, "padded generate")
        bad = [s for s in probe.shapes if len(s) != 3 or s[0] != 2 or s[-1] != d_model]
        if bad:
            problems.append(f"block outputs hold hidden states of shape {bad[0]}, expected [2, tokens, {d_model}]")
        one = ids[1:, :]
        with _Probe(lm) as probe:
            hf_generate(lm, one, torch.ones_like(one), **gen)
        problems += _expect(probe, [5], 2, "unpadded generate")
        with _Probe(lm) as probe:
            out = forward(lm, one, use_cache=True)
            cache = hf.output_cache(out)
            if cache is not None:
                step = out.logits[:, -1:].argmax(-1)
                forward(lm, step, cache=cache, use_cache=True)
        if cache is None:
            problems.append("a forward call with use_cache=True returned no cache")
        else:
            problems += _expect(probe, [5], 2, "forward with a returned cache")
    return problems
