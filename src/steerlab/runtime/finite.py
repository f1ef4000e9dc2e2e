"""Rows whose logits are not finite, found with one reduction per decoding step.

A steering that overflows the model (a vector with huge values, an extreme coefficient) turns
that row's logits into NaN or inf. ``argmax`` over them picks a meaningless token and sampling
raises ("probability tensor contains inf/nan") for the whole batch. Each decoding step reduces
the ``[B, V]`` scores once: a row's maximum is finite exactly when none of its logits is NaN or
``+inf`` and not all are ``-inf`` (tokens masked to ``-inf`` by a logits processor are fine), and
the same reduction gives the greedy token (the first maximal index, as ``argmax``).

:class:`FiniteLogits` is the check inside ``model.generate`` (:func:`steerlab.generate` adds it);
the server's samplers use :func:`peaks` directly, so a broken row fails alone.

Example:
    >>> import torch
    >>> scores = torch.tensor([[0.0, 2.0, 1.0], [0.0, float("nan"), 1.0]])
    >>> values, tokens = peaks(scores)
    >>> finite(values).tolist(), tokens[0].item()
    ([True, False], 1)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

from ..errors import NonFiniteError


def peaks(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's largest score and its first index (``[B]`` each): one reduction over ``[B, V]``.

    NaN propagates through the maximum, so a row holding one has a NaN peak.
    """
    values, tokens = scores.max(-1)
    return values, tokens


def finite(values: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: rows whose peak (from :func:`peaks`) is finite."""
    return torch.isfinite(values)


def nonfinite_message(rows: Sequence[int], what: str = "row") -> str:
    """What a user reads when rows' logits are not finite.

    Example:
        >>> nonfinite_message([2, 5]).split(":")[0]
        'the logits of rows 2, 5 are NaN or infinite'
    """
    names = ", ".join(str(r) for r in rows)
    plural = "s" if len(rows) > 1 else ""
    return (
        f"the logits of {what}{plural} {names} are NaN or infinite: the steering overflows the model (lower the "
        "coefficient, or check the vector: its values may be far larger than the model's activations)"
    )


class FiniteLogits(LogitsProcessor):
    """A logits processor that raises :class:`~steerlab.errors.NonFiniteError` at the first step whose
    scores are not finite for some row, naming the prompts (not the expanded rows) it belongs to.

    Args:
        offset: index of this batch's first prompt among all prompts (``batch_size`` chunks).
        prompts: prompts in this batch (``generate`` may expand each into several rows).

    Example:
        >>> guard = FiniteLogits(offset=4, prompts=2)
        >>> guard(None, torch.tensor([[0.0, 1.0], [float("inf"), 0.0]]))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        steerlab.errors.NonFiniteError: the logits of prompt 5 are NaN or infinite: ...
    """

    def __init__(self, offset: int = 0, prompts: int | None = None) -> None:
        self.offset = offset
        self.prompts = prompts

    def __call__(self, input_ids: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor:
        ok = finite(peaks(scores)[0])
        if bool(ok.all()):
            return scores
        per = max(1, scores.shape[0] // (self.prompts or scores.shape[0]))
        rows = sorted({self.offset + i // per for i in (~ok).nonzero().flatten().tolist()})
        raise NonFiniteError(nonfinite_message(rows, "prompt"), tuple(rows))
