"""Log-likelihoods of completions under per-row steering, for training and evaluation.

:func:`completion_logps` scores many (prompt, completion, steering) rows in **one** padded batch:
the chosen and rejected completions of a pair, under ``+v`` and ``−v``, side by side. Rows of the
same prompt share it: the prompt (all but its last token) runs once, its key/value cache is handed
to each of its rows, and only the completions run batched — with ``positions="generated"`` the
prompt is never steered, so that prompt pass runs without autograd. Nothing before the first
steered layer is recorded by autograd either way: no tensor there requires a gradient (the model's
weights are frozen), so the backward pass and its saved activations start at the vector.

:func:`fluency_kl` is the KL divergence from the unsteered to the steered next-token distribution
on neutral texts. Both run through the runtime: the prompt pass and the shared cache are
:func:`steerlab.runtime.passes.extend`'s, the log-probabilities and KL :mod:`steerlab.runtime.score`'s.

Example:
    >>> rows = [Row(0, (5, 6), Steering(vec, 1.0, positions="generated"))]  # doctest: +SKIP
    >>> completion_logps(lm, [(1, 2, 3)], rows)  # doctest: +SKIP
    tensor([-7.25])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...core.steering import Steering
from ...core.vector import SteeringVector
from ...models.load import LM
from ...models.tokens import pad_id, pad_token_ids
from ...runtime.passes import Prefix, can_continue, extend, sliding_window
from ...runtime.score import kl, predicting, row_sums, score, spans, steered, target_logps
from .encode import EncodedPair

MIN_SHARED_PREFIX = 4  # prompt tokens a shared prompt pass must save before it pays


@dataclass(frozen=True)
class Row:
    """One completion to score: its prompt (an index into the prompt list), its token ids, and the
    steering it is scored under (``None``: unsteered)."""

    prompt: int
    completion: tuple[int, ...]
    steering: Steering | None = None


def _shares(lm: LM, prompts: Sequence[tuple[int, ...]], rows: Sequence[Row]) -> bool:
    """Whether running each prompt once and continuing every row from its cache pays (and works)."""
    if any(len(p) < 2 for p in prompts) or not can_continue(lm):
        return False
    saved = sum(len(prompts[r.prompt]) - 1 for r in rows) - sum(len(p) - 1 for p in prompts)
    total = sum(len(prompts[r.prompt]) + len(r.completion) - 1 for r in rows)
    if saved < max(MIN_SHARED_PREFIX, total // 20):
        return False
    window = sliding_window(lm.model.config)
    longest = max(len(p) for p in prompts) + max(len(r.completion) for r in rows)
    return window is None or longest <= window


def _prompt_prefix(
    lm: LM, prefixes: list[tuple[int, ...]], steering: Sequence[Steering | None] | None, rows: list[int]
) -> Prefix:
    """The left-padded ``prefixes`` run once through every block (steered per prefix where
    ``steering`` says; no logits), expanded so that row ``r`` continues prefix ``rows[r]``."""
    ids, mask = pad_token_ids(prefixes, pad_id(lm.tokenizer), "left")
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    live = steering is not None and any(s is not None for s in steering)
    with steered(lm, steering), torch.set_grad_enabled(torch.is_grad_enabled() and live):
        _, prefix = extend(lm, ids, mask, keep=True, until=lm.n_layers - 1)
    return prefix.rows(torch.tensor(rows), take=True)


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
    prefix = None
    if share_prefix and _shares(lm, prompts, rows):
        prefix = _prompt_prefix(lm, [p[:-1] for p in prompts], prompt_steering, [r.prompt for r in rows])
        seqs = [prompts[r.prompt][-1:] + r.completion[:-1] for r in rows]
        skip = [0] * len(rows)
    else:
        seqs = [prompts[r.prompt] + r.completion[:-1] for r in rows]
        skip = [len(prompts[r.prompt]) - 1 for r in rows]
    ids, mask = pad_token_ids(seqs, pad_id(lm.tokenizer), "right")
    select = spans(ids.shape[1], [(start, start + len(r.completion)) for r, start in zip(rows, skip)])
    targets = torch.tensor([t for r in rows for t in r.completion])
    steering = [r.steering for r in rows]
    logps = score(
        lm, ids.to(lm.device), mask.to(lm.device), select, prefix=prefix, steering=steering, prompt_length=lengths
    )
    return row_sums(target_logps(logps, targets), select).cpu()


def fluency_kl(lm: LM, texts: Sequence[tuple[int, ...]], steerings: Sequence[Steering]) -> torch.Tensor:
    """Mean per-token KL(unsteered ‖ steered) of the next-token distributions on each text: ``[n]``.

    Row ``i`` is ``texts[i]`` under ``steerings[i]`` (at the steering's own positions).
    """
    ids, mask = pad_token_ids(list(texts), pad_id(lm.tokenizer), "right")
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    select = predicting(mask)  # position j predicts token j + 1
    with torch.no_grad():
        ref = score(lm, ids, mask, select)
    logp = score(lm, ids, mask, select, steering=list(steerings), prompt_length=mask.sum(-1))
    return (row_sums(kl(ref, logp), select) / select.sum(-1).clamp_min(1)).cpu()
