"""A per-token strength cap from the KL to the unsteered next-token distribution.

After Dynamic Activation Composition (Scalena et al., 2024, arXiv 2406.17563), where the strength
of each generated token is set from the KL between the steered and the unsteered next-token
distributions. Here a steering with ``kl_cap=κ`` (nats) is scaled, row by row, by a strength
``s ∈ [0, 1]`` that follows the rule::

    s₀ = min(1, √(κ / KL₀))          KL₀: the prompt's last token, steered at s = 1
    s_{t+1} = min(1, s_t · √(κ / KL_t))     (s_{t+1} = 1 where KL_t = 0)

where ``KL_t = KL(steered ‖ unsteered)`` of the distribution that chooses token ``t``, measured
with strength ``s_t``. Near the unsteered model the KL grows as the square of the push, so the
square root aims the next step's KL at the cap: the strength falls where the steering would
move the distribution far and climbs back (up to the full coefficient) where it costs little.
The rule has a **one-step lag**: ``s_t`` was set from step ``t − 1``'s KL, so a step whose context
makes the steering suddenly costlier can exceed the cap once; the next step is scaled back.

How it runs: each capped row gets a *shadow* row (the same prompt, no steering) in the same
``generate`` call, and after each step the shadow is fed the steered row's token (its scores are
replaced by the steered row's, so greedy decoding picks the same token): the KL is to the unsteered
model *in the steered row's own context*. Cost: one extra row per capped row (about twice the
rows, so about twice the compute per step at small batches) and one more prompt pass to set
``s₀``. Only greedy decoding (the shadow must pick the steered row's token), one row per prompt.
The strength multiplies the mask of every capped steering of a row (:attr:`OpState.graded
<steerlab.core.operators.OpState>`): ``c·s`` for the linear operators (add, ablate, clamp, push,
add_norm_preserving), an angle ``|c|·s`` for rotate. Steerings of the row without a cap act at full
strength (the KL counts them too).

Example:
    >>> next_strength(torch.tensor([1.0, 0.5, 0.2]), torch.tensor([2.0, 0.125, 0.0]), torch.tensor(0.5))
    tensor([0.5000, 1.0000, 1.0000])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ..core.steering import SteeringLike
from ..errors import SteeringSpecError
from ..models.load import LM
from .finite import FiniteLogits
from .passes import forward, hf_generate
from .plan import as_steerings
from .score import kl
from .session import steer_rows


def row_caps(rows: Sequence[SteeringLike | None]) -> list[float | None]:
    """Each row's KL cap: the smallest ``kl_cap`` among its steerings (``None``: uncapped)."""
    out: list[float | None] = []
    for item in rows:
        caps = [s.kl_cap for s in as_steerings(item) if s.kl_cap is not None and not s.is_noop]
        out.append(min(caps) if caps else None)
    return out


def check_capped_kwargs(kwargs: Mapping[str, Any]) -> None:
    """Refuse ``generate`` keywords a KL cap cannot honour (the shadow rows must pick the steered
    rows' tokens, one row per prompt).

    Raises:
        SteeringSpecError: sampling, beam search, several sequences per prompt, or a streamer.
    """
    bad = []
    if kwargs.get("do_sample"):
        bad.append("do_sample=True (the cap decodes greedily)")
    for key in ("num_beams", "num_return_sequences"):
        if int(kwargs.get(key) or 1) != 1:
            bad.append(f"{key}={kwargs[key]}")
    if kwargs.get("streamer") is not None:
        bad.append("a streamer (the batch holds the shadow rows)")
    if bad:
        raise SteeringSpecError("kl_cap cannot be used with " + ", ".join(bad))


def next_strength(strength: torch.Tensor, divergence: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
    """The rule (module docs): ``min(1, s·√(cap/KL))``, and ``1`` where ``KL ≤ 0``."""
    ratio = torch.sqrt(cap / divergence.clamp_min(torch.finfo(divergence.dtype).tiny))
    return torch.where(divergence > 0, strength * ratio, torch.ones_like(strength)).clamp(0.0, 1.0)


@dataclass
class CapTrace:
    """What the cap did, step by step (tensors ``[steps, capped rows]``).

    Attributes:
        rows: the batch rows that have a cap.
        caps: their caps.
        kl: ``KL(steered ‖ unsteered)`` of the distribution that chose each generated token.
        strength: the strength the row was steered with at that step.
    """

    rows: list[int]
    caps: list[float]
    kl: list[torch.Tensor] = field(default_factory=list)
    strength: list[torch.Tensor] = field(default_factory=list)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(kl, strength)`` stacked ``[steps, capped rows]``."""
        width = len(self.rows)
        empty = torch.zeros(0, width)
        return (
            torch.stack(self.kl) if self.kl else empty,
            torch.stack(self.strength) if self.strength else empty,
        )


class _Follow(LogitsProcessor):
    """After each step: the capped rows' KL to their shadows, the next strength, and the shadows'
    scores replaced by their rows' (so they pick the same token)."""

    def __init__(self, capped: torch.Tensor, caps: torch.Tensor, strength: torch.Tensor, trace: CapTrace) -> None:
        self.capped = capped
        self.caps = caps
        self.strength = strength
        self.trace = trace
        self.batch = strength.shape[0] - capped.shape[0]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logps = torch.log_softmax(scores.float(), dim=-1)
        divergence = kl(logps[self.capped], logps[self.batch :]).clamp_min(0.0)
        used = self.strength[self.capped].float()
        self.trace.kl.append(divergence.cpu())
        self.trace.strength.append(used.cpu())
        nxt = next_strength(used, divergence, self.caps).to(self.strength.dtype)
        self.strength[self.capped] = nxt
        scores[self.batch :] = scores[self.capped]
        return scores


def capped_generate(
    lm: LM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    rows: Sequence[SteeringLike | None],
    max_new_tokens: int,
    offset: int = 0,
    **kwargs: Any,
) -> tuple[torch.Tensor, CapTrace]:
    """Greedy ``generate`` of left-padded rows, each steering with a ``kl_cap`` held to it (module
    docs); rows without a cap are steered as they would be without this function.

    Args:
        lm: the model.
        input_ids: ``[B, length]`` left-padded prompts.
        attention_mask: their mask.
        rows: one steering (or ``None``) per row.
        max_new_tokens: tokens to generate.
        offset: index of the first row among all prompts (for error messages).
        **kwargs: passed to ``model.generate`` (greedy: see :func:`check_capped_kwargs`).

    Returns:
        the new tokens ``[B, ≤ max_new_tokens]`` and the :class:`CapTrace`.
    """
    check_capped_kwargs(kwargs)
    caps = row_caps(rows)
    capped = [i for i, c in enumerate(caps) if c is not None]
    batch = len(rows)
    device = input_ids.device
    index = torch.tensor(capped, dtype=torch.long, device=device)
    cap_values = torch.tensor([caps[i] for i in capped], dtype=torch.float32, device=device)
    trace = CapTrace(capped, [float(c) for c in cap_values.tolist()])
    ids = torch.cat([input_ids, input_ids[index]])
    mask = torch.cat([attention_mask, attention_mask[index]])
    all_rows = list(rows) + [None] * len(capped)
    strength = torch.ones(len(all_rows), dtype=torch.float32, device=device)
    lengths = mask.sum(-1)
    if capped:
        with steer_rows(lm, all_rows, prompt_length=lengths, strength=strength), torch.inference_mode():
            logits = forward(lm, ids, mask, use_cache=False, logits_to_keep=1).logits[:, -1]
        logps = torch.log_softmax(logits.float(), dim=-1)
        divergence = kl(logps[index], logps[batch:]).clamp_min(0.0)
        strength[index] = next_strength(strength[index], divergence, cap_values)
    follow = _Follow(index, cap_values, strength, trace)
    extra = list(kwargs.pop("logits_processor", None) or ())
    processors = LogitsProcessorList([FiniteLogits(offset, None), *extra, follow])
    with steer_rows(lm, all_rows, prompt_length=lengths, strength=strength), torch.inference_mode():
        seqs = hf_generate(lm, ids, mask, max_new_tokens=max_new_tokens, logits_processor=processors, **kwargs)
    return seqs[:batch, input_ids.shape[1] :], trace


__all__ = ["CapTrace", "capped_generate", "check_capped_kwargs", "next_strength", "row_caps"]
