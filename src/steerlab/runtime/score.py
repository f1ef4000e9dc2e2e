"""The measures made from a pass's logits, written once: next-token log-probabilities, the
log-likelihood of target tokens, and the KL divergence to another distribution (the unsteered
model's).

:func:`score` runs one pass (:func:`steerlab.runtime.passes.extend`: after a shared
:class:`~steerlab.runtime.passes.Prefix` where given, steered where ``steering`` says) and returns
float32 log-probabilities of the next token at the positions ``select`` picks, in row-major order;
the rest reduce them:

* :func:`target_logps` — the log-probability of each target token (a continuation's log-likelihood
  is their sum: :func:`row_sums`);
* :func:`kl` — ``KL(base || other)`` per position (the cost of a steering on neutral text, and
  training's fluency term).

Differentiable: under autograd the gradients reach the steering vectors (the model's weights are
frozen). Position ``j`` of a row predicts token ``j + 1``, so ``select`` picks the positions whose
next token is scored (:func:`predicting`: every real one; :func:`spans`: ranges of them).

Example:
    >>> select = torch.tensor([[True, False, True]])
    >>> logps = torch.log_softmax(torch.tensor([[0.0, 1.0], [2.0, 0.0]]), -1)
    >>> target_logps(logps, torch.tensor([1, 0])).exp()
    tensor([0.7311, 0.8808])
    >>> row_sums(torch.tensor([1.0, 2.0]), select)
    tensor([3.])
    >>> float(kl(logps, logps).abs().max())
    0.0
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from ..core.steering import Composite, Steering, SteeringLike
from ..models.load import LM
from .passes import Prefix, extend
from .session import steer, steer_rows

IGNORE = -100
"""The target id of a position that is not scored."""


def next_token_logps(logits: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
    """float32 log-softmax ``[N, vocab]`` of ``logits`` ``[batch, length, vocab]`` at the
    positions ``select`` (``[batch, width]`` bool, ``width <= length``: the positions after it are
    not picked) picks, in row-major order."""
    return torch.log_softmax(logits[:, : select.shape[1]][select].float(), dim=-1)


def predicting(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[batch, length - 1]`` bool: the real positions whose next token is real too (every
    position that predicts a token of its text), aligned with ``input_ids[:, 1:]``, the tokens
    they predict.

    Example:
        >>> predicting(torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])).tolist()
        [[True, True, False], [False, True, True]]
    """
    real = attention_mask > 0
    return real[:, :-1] & real[:, 1:]


def spans(width: int, ranges: Sequence[tuple[int, int]]) -> torch.Tensor:
    """``[len(ranges), width]`` bool: row ``i`` selects the positions ``start <= j < end`` of
    ``ranges[i]``.

    Example:
        >>> spans(4, [(1, 3), (0, 0)]).tolist()
        [[False, True, True, False], [False, False, False, False]]
    """
    out = torch.zeros(len(ranges), width, dtype=torch.bool)
    for row, (start, end) in enumerate(ranges):
        out[row, start:end] = True
    return out


def target_logps(logps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[N]``: the log-probability each row of ``logps`` ``[N, vocab]`` gives its target ``[N]``."""
    return logps.gather(-1, targets.to(logps.device).unsqueeze(-1)).squeeze(-1)


def kl(base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``[N]``: ``KL(base || other)`` of two ``[N, vocab]`` log-probability rows, in nats."""
    return (base.exp() * (base - other)).sum(-1)


def row_sums(values: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
    """``[batch]``: the sum over each row of per-position ``values`` ``[N]`` laid out as ``select``
    (``[batch, length]`` bool, row-major) lays them; the positions not selected count 0."""
    full = values.new_zeros(select.shape)
    full[select.to(values.device)] = values
    return full.sum(-1)


def steered(
    lm: LM,
    steering: SteeringLike | Sequence[SteeringLike | None] | None,
    prompt_length: torch.Tensor | int | None = None,
) -> AbstractContextManager[Any]:
    """The steering session a pass runs in: one steering for every row (:func:`~steerlab.steer`),
    a list with one (or ``None``) per row (:func:`~steerlab.steer_rows`), or none at all (a list of
    ``None`` included)."""
    if steering is None:
        return nullcontext()
    if isinstance(steering, (Steering, Composite)):
        return steer(lm, steering, prompt_length=prompt_length)
    rows = list(steering)
    if all(s is None for s in rows):
        return nullcontext()
    return steer_rows(lm, rows, prompt_length=prompt_length)


def score(
    lm: LM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    select: torch.Tensor,
    *,
    prefix: Prefix | None = None,
    steering: SteeringLike | Sequence[SteeringLike | None] | None = None,
    prompt_length: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """One pass over ``input_ids`` (after ``prefix``, under ``steering``): float32 log-probabilities
    ``[N, vocab]`` of the next token at the positions ``select`` picks (:func:`next_token_logps`).

    Args:
        lm: the model.
        input_ids, attention_mask: ``[batch, length]`` on the model's device.
        select: ``[batch, width <= length]`` bool: the positions whose next token is scored.
        prefix: the rows continue these tokens' cache (:func:`steerlab.runtime.passes.extend`).
        steering: one steering for all rows, or one (or ``None``) per row (:func:`steered`).
        prompt_length: real prompt tokens per row, for the steering's positions.

    Example:
        >>> ids, mask = encode(lm, ["The cat sat."], "right")  # doctest: +SKIP
        >>> select = predicting(mask)  # doctest: +SKIP
        >>> nll = -target_logps(score(lm, ids, mask, select), ids[:, 1:][select]).sum()  # doctest: +SKIP
    """
    with steered(lm, steering, prompt_length):
        out, _ = extend(lm, input_ids, attention_mask, prefix)
    return next_token_logps(out.logits, select.to(out.logits.device))
