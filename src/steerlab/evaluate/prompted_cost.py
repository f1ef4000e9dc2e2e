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

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..core.steering import SteeringLike
from ..errors import DatasetError, SteeringSpecError
from ..models.load import LM
from ..models.tokens import pad_id, pad_token_ids
from ..progress import track
from ..runtime.score import score, spans
from .likelihood import TextStats, summed_kl, summed_nll
from .prompting import Prompt

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


def _tail_logprobs(
    lm: LM, seqs: list[list[int]], scored: list[int], steering: SteeringLike | None = None
) -> torch.Tensor:
    """float32 log-probabilities ``[sum(scored), vocab]`` of each sequence's last ``scored`` tokens."""
    ids, mask = pad_token_ids(seqs, pad_id(lm.tokenizer), "right")
    select = spans(ids.shape[1] - 1, [(len(s) - n - 1, len(s) - 1) for s, n in zip(seqs, scored)])
    return score(lm, ids.to(lm.device), mask.to(lm.device), select, steering=steering)


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
        base_nll += summed_nll(base, plain_targets)
        n_tokens += int(plain_targets.numel())
        for k, steering in enumerate(steerings):
            with torch.inference_mode():
                lp = _tail_logprobs(lm, [r.prompted for r in batch], scored, steering)
            nll[k] += summed_nll(lp, plain_targets)
            kl[k] += summed_kl(base, lp)
    return [TextStats.pooled(nll[k], base_nll, kl[k], len(rows), n_tokens, skipped) for k in range(n)]
