"""Token log-likelihoods under a (possibly steered) model: the building block of perplexity,
fluency and KL measurements.

Example:
    >>> ppl = continuation_perplexity(lm, ["That game"], [" was fun."])  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import DatasetError
from ..model import LM
from ..progress import track
from ..tokens import pad_id, pad_token_ids


def _batches(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def continuation_nll(
    lm: LM,
    prompts: Sequence[str],
    continuations: Sequence[str],
    batch_size: int = 16,
    progress: bool | None = None,
) -> list[tuple[float, int]]:
    """Summed negative log-likelihood and token count of each continuation given its prompt.

    Runs the model as it is (wrap in :func:`steerlab.steer` to score under steering). Prompts are
    right-padded; the continuation is tokenised separately (without special tokens) so its token
    count does not depend on the prompt.
    """
    if len(prompts) != len(continuations):
        raise DatasetError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    tok = lm.tokenizer
    seqs: list[tuple[list[int], int]] = []
    for p, c in zip(prompts, continuations):
        p_ids = tok(p, add_special_tokens=True)["input_ids"]
        c_ids = tok(c, add_special_tokens=False)["input_ids"]
        seqs.append((p_ids + c_ids, len(p_ids)))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    for rows in track(_batches(len(seqs), batch_size), "scoring continuations", enabled=progress):
        ids, mask = pad_token_ids([seqs[i][0] for i in rows], pad_id(tok), "right")
        with torch.inference_mode():
            logits = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = ids[:, 1:].to(logp.device)
        tok_lp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        for r, i in enumerate(rows):
            full, start = seqs[i]
            n = len(full) - start
            if n <= 0:
                out[i] = (0.0, 0)
                continue
            out[i] = (float(-tok_lp[r, start - 1 : len(full) - 1].sum()), n)
    return out


def continuation_perplexity(
    lm: LM,
    prompts: Sequence[str],
    continuations: Sequence[str],
    batch_size: int = 16,
    progress: bool | None = None,
) -> list[float]:
    """Perplexity of each continuation given its prompt (``nan`` for an empty continuation)."""
    return [
        math.exp(nll / n) if n else float("nan")
        for nll, n in continuation_nll(lm, prompts, continuations, batch_size, progress)
    ]


def pooled_perplexity(nlls: Sequence[tuple[float, int]]) -> float:
    """Perplexity over all tokens of several texts: ``exp(sum nll / sum tokens)``."""
    total = sum(n for _, n in nlls)
    return math.exp(sum(x for x, _ in nlls) / total) if total else float("nan")
