"""Off-target cost of a prompt (and of a prompt with steering) on neutral text.

The cost of steering on neutral text (:mod:`steerlab.evaluate.cost`) compares the steered model's
next-token distributions over each text with the unsteered model's. A prefix prompt is measured
the same way on the same tokens: each text is read after the prompt (``prompt ids + text ids``),
and its tokens' log-probabilities are compared with those of the plain text under the unsteered,
unprompted model — perplexity ratio and ``KL(plain || prompted)`` per token. Only the text's
tokens count (those the plain reading predicts too: after its first token when the tokenizer adds
no BOS).

Example:
    >>> stats = prompted_stats(lm, texts, Prompt("A happy story. "), [None, Steering(vec, 1.0)])  # doctest: +SKIP
    >>> stats[0].ppl_ratio, stats[0].kl  # the prompt alone  # doctest: +SKIP
    (1.21, 0.08)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..core.steering import SteeringLike
from ..errors import DatasetError, SteeringSpecError
from ..models.load import LM
from ..models.tokens import pad_id, pad_token_ids
from ..progress import track
from ..runtime.session import steer
from .prompting import Prompt

if TYPE_CHECKING:
    from .cost import TextStats

__all__ = ["prompted_stats"]


@dataclass(frozen=True)
class _Row:
    plain: list[int]
    prompted: list[int]
    scored: int  # the last ``scored`` tokens of both sequences are the text's, predicted in both


def _rows(lm: LM, texts: Sequence[str], prompt: Prompt) -> tuple[list[_Row], int]:
    if prompt.mode != "prefix":
        raise SteeringSpecError(f"{prompt.label}: the cost on neutral text is measured for prefix prompts only")
    tok = lm.tokenizer
    head = tok(prompt.text, add_special_tokens=True)["input_ids"]
    rows, skipped = [], 0
    for text in texts:
        plain = tok(text, add_special_tokens=True)["input_ids"]
        body = tok(text, add_special_tokens=False)["input_ids"]
        scored = min(len(body), len(plain) - 1)
        if scored < 1 or plain[len(plain) - scored :] != body[len(body) - scored :]:
            skipped += 1
            continue
        rows.append(_Row(plain, head + body, scored))
    if not rows:
        raise DatasetError(f"none of the {len(texts)} texts has a token to score after the prompt")
    return rows, skipped


def _tail_logprobs(lm: LM, seqs: list[list[int]], scored: list[int]) -> torch.Tensor:
    """float32 log-probabilities ``[sum(scored), vocab]`` of each sequence's last ``scored`` tokens."""
    ids, mask = pad_token_ids(seqs, pad_id(lm.tokenizer), "right")
    logits = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), use_cache=False).logits
    picks = [logits[r, len(s) - n - 1 : len(s) - 1] for r, (s, n) in enumerate(zip(seqs, scored))]
    return torch.log_softmax(torch.cat(picks).float(), dim=-1)


def prompted_stats(
    lm: LM,
    texts: Sequence[str],
    prompt: Prompt,
    steerings: Sequence[SteeringLike | None],
    batch_size: int = 16,
    progress: bool | None = None,
) -> list[TextStats]:
    """:class:`~steerlab.evaluate.cost.TextStats` of the texts read after ``prompt``, under each
    steering (``None``: the prompt alone), against the plain texts under the unsteered model.

    Raises:
        DatasetError: no text has a token to score.
        SteeringSpecError: a system-turn prompt (neutral text has no turn to put it in).
    """
    from .cost import TextStats

    rows, skipped = _rows(lm, list(texts), prompt)
    n = len(steerings)
    nll, kl = [0.0] * n, [0.0] * n
    base_nll, n_tokens = 0.0, 0
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    for batch in track(batches, "scoring prompted texts", enabled=progress if len(batches) > 1 else False):
        scored = [r.scored for r in batch]
        plain_targets = torch.tensor([t for r in batch for t in r.plain[len(r.plain) - r.scored :]])
        with torch.inference_mode():
            base = _tail_logprobs(lm, [r.plain for r in batch], scored)
        targets = plain_targets.to(base.device)
        base_nll += float(-base.gather(-1, targets[:, None]).sum())
        n_tokens += int(targets.numel())
        for k, steering in enumerate(steerings):
            with steer(lm, steering), torch.inference_mode():
                lp = _tail_logprobs(lm, [r.prompted for r in batch], scored)
            nll[k] += float(-lp.gather(-1, targets[:, None]).sum())
            kl[k] += float((base.exp() * (base - lp)).sum(-1).clamp_min(0.0).sum())
    base_ppl = math.exp(base_nll / n_tokens)
    return [
        TextStats(
            perplexity=math.exp(nll[k] / n_tokens),
            base_perplexity=base_ppl,
            kl=kl[k] / n_tokens,
            n_texts=len(rows),
            n_tokens=n_tokens,
            skipped=skipped,
        )
        for k in range(n)
    ]
