"""Log-likelihoods of completions under per-row steering, for training and evaluation.

:func:`completion_logps` scores many (prompt, completion, steering) rows in **one** padded batch:
the chosen and rejected completions of a pair, under ``+v`` and ``−v``, side by side. Rows of the
same prompt share it: the prompt (all but its last token) runs once, its key/value cache is handed
to each of its rows, and only the completions run batched — with ``positions="generated"`` the
prompt is never steered, so that prompt pass runs without autograd. Nothing before the first
steered layer is recorded by autograd either way: no tensor there requires a gradient (the model's
weights are frozen), so the backward pass and its saved activations start at the vector.

:func:`fluency_kl` is the KL divergence from the unsteered to the steered next-token distribution
on neutral texts.

Example:
    >>> rows = [Row(0, (5, 6), Steering(vec, 1.0, positions="generated"))]  # doctest: +SKIP
    >>> completion_logps(lm, [(1, 2, 3)], rows)  # doctest: +SKIP
    tensor([-7.25])
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ...core.steering import Steering
from ...core.vector import SteeringVector
from ...models.load import LM
from ...models.tokens import pad_id, pad_token_ids, position_ids
from ...runtime import hf
from ...runtime.session import steer_rows
from ..capture import sliding_window
from .encode import EncodedPair

IGNORE = -100
MIN_SHARED_PREFIX = 4  # prompt tokens a shared prompt pass must save before it pays


@dataclass(frozen=True)
class Row:
    """One completion to score: its prompt (an index into the prompt list), its token ids, and the
    steering it is scored under (``None``: unsteered)."""

    prompt: int
    completion: tuple[int, ...]
    steering: Steering | None = None


class _StopAfterBlocks(Exception):
    """Raised after the last block of a prompt pass: its logits are not needed."""


def _shares(lm: LM, prompts: Sequence[tuple[int, ...]], rows: Sequence[Row]) -> bool:
    """Whether running each prompt once and continuing every row from its cache pays (and works)."""
    if any(len(p) < 2 for p in prompts) or not (hf.accepts(lm.model, "position_ids") and hf.cache_keyword(lm.model)):
        return False
    saved = sum(len(prompts[r.prompt]) - 1 for r in rows) - sum(len(p) - 1 for p in prompts)
    total = sum(len(prompts[r.prompt]) + len(r.completion) - 1 for r in rows)
    if saved < max(MIN_SHARED_PREFIX, total // 20):
        return False
    window = sliding_window(lm.model.config)
    longest = max(len(p) for p in prompts) + max(len(r.completion) for r in rows)
    return window is None or longest <= window


def _prompt_cache(
    lm: LM, prefixes: list[tuple[int, ...]], steering: Sequence[Steering | None] | None, rows: list[int]
) -> tuple[Any, torch.Tensor]:
    """Key/value cache of the left-padded ``prefixes`` (steered per prefix where ``steering`` says),
    expanded so that row ``r`` holds prefix ``rows[r]``; and its attention mask for those rows."""
    ids, mask = pad_token_ids(prefixes, pad_id(lm.tokenizer), "left")
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    cache = hf.new_cache(lm.model)
    kwargs = hf.forward_kwargs(
        lm.model, input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), cache=cache, use_cache=True
    )
    steered = steering is not None and any(s is not None for s in steering)

    def stop(*_: Any) -> None:
        raise _StopAfterBlocks

    handle = lm.blocks[-1].register_forward_hook(stop)
    ctx = steer_rows(lm, list(steering)) if steered and steering is not None else nullcontext()
    try:
        with ctx, torch.set_grad_enabled(torch.is_grad_enabled() and steered):
            lm.model(**kwargs)
    except _StopAfterBlocks:
        pass
    finally:
        handle.remove()
    index = torch.tensor(rows)
    hf.select_cache_rows(cache, index)
    return cache, mask[index]


def pair_rows(
    pairs: Sequence[EncodedPair], coefs: Sequence[tuple[float, ...]], vec: SteeringVector | None, positions: str
) -> tuple[list[tuple[int, ...]], list[Row], list[Steering | None] | None]:
    """The prompts, rows and prompt steerings that score every pair's chosen and rejected completion
    under each of its coefficients (``coefs[i]`` for pair ``i``). Rows come in twos — chosen, then
    rejected — for each pair and coefficient in order. ``vec=None`` scores unsteered.

    With ``positions="all"`` a pair's prompt appears once per coefficient (it is steered too); with
    ``"generated"`` once (its tokens are never steered)."""
    made: dict[float, Steering] = {}

    def steering(c: float) -> Steering | None:
        if vec is None:
            return None
        if c not in made:
            made[c] = Steering(vec, c, positions=positions)
        return made[c]

    if positions == "generated" or vec is None:
        prompts = [p.prompt for p in pairs]
        rows = [Row(i, p.completion(rej), steering(c)) for i, (p, pc) in enumerate(zip(pairs, coefs))
                for c in pc for rej in (False, True)]  # fmt: skip
        return prompts, rows, None
    prompts = [p.prompt for p, pc in zip(pairs, coefs) for _ in pc]
    prompt_steering = [steering(c) for pc in coefs for c in pc]
    owners = [p for p, pc in zip(pairs, coefs) for _ in pc]
    rows = [Row(j, p.completion(rej), prompt_steering[j]) for j, p in enumerate(owners) for rej in (False, True)]
    return prompts, rows, prompt_steering


def completion_logps(
    lm: LM,
    prompts: Sequence[tuple[int, ...]],
    rows: Sequence[Row],
    prompt_steering: Sequence[Steering | None] | None = None,
    share_prefix: bool = True,
) -> torch.Tensor:
    """Summed log-probability of each row's completion after its prompt: ``[len(rows)]`` float32.

    Args:
        lm: the model.
        prompts: prompt token ids (each at least one token).
        rows: what to score; a row's steering acts where its positions say, with the row's prompt
            length as the prompt (``"generated"``: on the completion tokens only).
        prompt_steering: one steering (or ``None``) per prompt for the shared prompt pass — needed
            when the rows' steering also acts on prompt tokens (``positions="all"``); rows of a
            prompt must then carry that same steering.
        share_prefix: run each prompt once for all its rows (same result up to float rounding).

    Differentiable with respect to the steering vectors when autograd is on.
    """
    lengths = torch.tensor([len(prompts[r.prompt]) for r in rows])
    cache, prefix_mask = None, None
    if share_prefix and _shares(lm, prompts, rows):
        cache, prefix_mask = _prompt_cache(lm, [p[:-1] for p in prompts], prompt_steering, [r.prompt for r in rows])
        seqs = [prompts[r.prompt][-1:] + r.completion[:-1] for r in rows]
        skip = [0] * len(rows)
    else:
        seqs = [prompts[r.prompt] + r.completion[:-1] for r in rows]
        skip = [len(prompts[r.prompt]) - 1 for r in rows]
    ids, mask = pad_token_ids(seqs, pad_id(lm.tokenizer), "right")
    targets = torch.full_like(ids, IGNORE)
    for i, (r, start) in enumerate(zip(rows, skip)):
        targets[i, start : start + len(r.completion)] = torch.tensor(r.completion)
    ids, mask, targets = ids.to(lm.device), mask.to(lm.device), targets.to(lm.device)
    shared = 0
    if prefix_mask is not None:
        shared = prefix_mask.shape[1]
        mask = torch.cat([prefix_mask.to(mask.dtype), mask], dim=1)
    kwargs = hf.forward_kwargs(
        lm.model,
        input_ids=ids,
        attention_mask=mask,
        position_ids=position_ids(mask)[:, shared:],
        cache=cache,
        use_cache=cache is not None,
    )
    steerings = [r.steering for r in rows]
    ctx = steer_rows(lm, steerings, prompt_length=lengths) if any(s is not None for s in steerings) else nullcontext()
    with ctx:
        logits = lm.model(**kwargs).logits
    n, width, vocab = logits.shape
    nll = F.cross_entropy(logits.float().reshape(-1, vocab), targets.reshape(-1), ignore_index=IGNORE, reduction="none")
    return -nll.view(n, width).sum(-1).cpu()


def fluency_kl(lm: LM, texts: Sequence[tuple[int, ...]], steerings: Sequence[Steering]) -> torch.Tensor:
    """Mean per-token KL(unsteered ‖ steered) of the next-token distributions on each text: ``[n]``.

    Row ``i`` is ``texts[i]`` under ``steerings[i]`` (at the steering's own positions).
    """
    ids, mask = pad_token_ids(list(texts), pad_id(lm.tokenizer), "right")
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    kwargs = hf.forward_kwargs(lm.model, input_ids=ids, attention_mask=mask, use_cache=False)
    with torch.no_grad():
        ref = torch.log_softmax(lm.model(**kwargs).logits.float(), dim=-1)
    lengths = mask.sum(-1)
    with steer_rows(lm, list(steerings), prompt_length=lengths):
        logp = torch.log_softmax(lm.model(**kwargs).logits.float(), dim=-1)
    kl = (ref.exp() * (ref - logp)).sum(-1)[:, :-1]
    real = mask[:, 1:].to(kl.dtype)  # position j predicts token j + 1
    return ((kl * real).sum(-1) / real.sum(-1).clamp_min(1)).cpu()
