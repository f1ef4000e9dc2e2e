"""Log-likelihood of continuations under the model as it is (wrap in :func:`steerlab.steer` to
score under steering), and the perplexities made from it.

:func:`continuation_nll` runs the model; :func:`perplexities` and :func:`pooled_perplexity` only
reduce its ``(summed nll, token count)`` pairs. The sentiment evaluation uses them for the
perplexity of each continuation under the unsteered model; :mod:`steerlab.evaluate.cost` measures
perplexity and KL of whole texts under steering.

Example:
    >>> nlls = continuation_nll(lm, ["That game"], [" was fun."])  # doctest: +SKIP
    >>> perplexities(nlls), pooled_perplexity(nlls)  # doctest: +SKIP
    ([12.3], 12.3)
    >>> perplexities([(0.0, 0), (2.0, 2)])
    [nan, 2.718281828459045]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import DatasetError
from ..models.load import LM
from ..models.tokens import pad_id, pad_token_ids
from ..progress import track


def _batches(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def continuation_nll(
    lm: LM,
    prompts: Sequence[str],
    continuations: Sequence[str],
    *,
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
    seqs = [continuation_ids(lm, p, c) for p, c in zip(prompts, continuations)]
    return continuation_nll_ids(lm, seqs, batch_size=batch_size, progress=progress)


def continuation_ids(lm: LM, prompt: str, continuation: str) -> tuple[list[int], int]:
    """``(prompt ids + continuation ids, prompt length)`` as :func:`continuation_nll` scores them:
    the prompt with special tokens, the continuation without (so its count does not depend on
    the prompt)."""
    tok = lm.tokenizer
    p_ids = list(tok(prompt, add_special_tokens=True)["input_ids"])
    c_ids = list(tok(continuation, add_special_tokens=False)["input_ids"])
    return p_ids + c_ids, len(p_ids)


def continuation_nll_ids(
    lm: LM,
    seqs: Sequence[tuple[list[int], int]],
    *,
    batch_size: int = 16,
    progress: bool | None = None,
) -> list[tuple[float, int]]:
    """:func:`continuation_nll` of texts already tokenised by :func:`continuation_ids` (a caller
    that bounds the token counts first, such as the server, tokenises once)."""
    tok = lm.tokenizer
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


def perplexities(nlls: Sequence[tuple[float, int]]) -> list[float]:
    """Perplexity of each text from its ``(summed nll, token count)``: ``nan`` for an empty one."""
    return [math.exp(nll / n) if n else float("nan") for nll, n in nlls]


def pooled_perplexity(nlls: Sequence[tuple[float, int]]) -> float:
    """Perplexity over all tokens of several texts: ``exp(sum nll / sum tokens)``."""
    total = sum(n for _, n in nlls)
    return math.exp(sum(x for x, _ in nlls) / total) if total else float("nan")
