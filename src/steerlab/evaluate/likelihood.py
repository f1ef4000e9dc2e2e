"""Log-likelihood of continuations under the model as it is (wrap in :func:`steerlab.steer` to
score under steering), and the perplexities made from it.

:func:`continuation_nll` runs the model (through :func:`steerlab.runtime.score.score`);
:func:`perplexities` and :func:`pooled_perplexity` only reduce its ``(summed nll, token count)``
pairs. The sentiment evaluation uses them for the perplexity of each continuation under the
unsteered model. :class:`TextStats` holds the perplexity and KL of whole texts under a steering,
pooled from :func:`summed_nll` and :func:`summed_kl` of each batch
(:mod:`steerlab.evaluate.cost`, :mod:`steerlab.evaluate.prompted_cost`).

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
from dataclasses import dataclass

import torch

from ..errors import DatasetError
from ..models.load import LM
from ..models.tokens import pad_id, pad_token_ids
from ..progress import track
from ..runtime.score import kl, row_sums, score, spans, target_logps


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
        # position j predicts token j + 1; the first token has nothing before it to be scored on
        first = [max(seqs[i][1], 1) for i in rows]
        select = spans(ids.shape[1] - 1, [(s - 1, len(seqs[i][0]) - 1) for s, i in zip(first, rows)])
        with torch.inference_mode():
            logps = score(lm, ids.to(lm.device), mask.to(lm.device), select)
            sums = row_sums(target_logps(logps, ids[:, 1:][select]), select).cpu()
        for r, (i, s) in enumerate(zip(rows, first)):
            n = len(seqs[i][0]) - s
            out[i] = (float(-sums[r]), n) if n > 0 else (0.0, 0)
    return out


@dataclass
class TextStats:
    """Perplexity (and KL to the unsteered model) of a set of texts under one steering.

    Attributes:
        perplexity: pooled perplexity of the texts under the (steered) model.
        base_perplexity: pooled perplexity under the unsteered model (equal to ``perplexity``
            when no steering was given).
        kl: mean per-token ``KL(unsteered || steered)`` in nats; ``None`` without a steering.
        n_texts: texts scored.
        n_tokens: predicted tokens scored (real tokens after the first of each text).
        skipped: texts left out because they have fewer than 2 tokens.
    """

    perplexity: float
    base_perplexity: float
    kl: float | None
    n_texts: int
    n_tokens: int
    skipped: int = 0

    @property
    def ppl_ratio(self) -> float:
        """``perplexity / base_perplexity``."""
        return self.perplexity / self.base_perplexity if self.base_perplexity else float("nan")

    @classmethod
    def pooled(
        cls, nll: float, base_nll: float, kl: float | None, n_texts: int, n_tokens: int, skipped: int
    ) -> TextStats:
        """The stats of summed negative log-likelihoods (steered and unsteered) and summed KL over
        ``n_tokens`` predicted tokens (``kl=None``: no steering).

        Example:
            >>> s = TextStats.pooled(2.0, 1.0, 0.5, n_texts=1, n_tokens=2, skipped=0)
            >>> round(s.ppl_ratio, 4), s.kl
            (1.6487, 0.25)
        """
        return cls(
            perplexity=math.exp(nll / n_tokens),
            base_perplexity=math.exp(base_nll / n_tokens),
            kl=None if kl is None else kl / n_tokens,
            n_texts=n_texts,
            n_tokens=n_tokens,
            skipped=skipped,
        )


def summed_nll(logps: torch.Tensor, targets: torch.Tensor) -> float:
    """Summed negative log-likelihood of ``targets`` ``[N]`` under ``logps`` ``[N, vocab]``."""
    return float(-target_logps(logps, targets).sum())


def summed_kl(base: torch.Tensor, other: torch.Tensor) -> float:
    """Summed ``KL(base || other)`` over positions (rows of log-probabilities); a position's float
    noise below 0 counts 0."""
    return float(kl(base, other).clamp_min(0.0).sum())


def perplexities(nlls: Sequence[tuple[float, int]]) -> list[float]:
    """Perplexity of each text from its ``(summed nll, token count)``: ``nan`` for an empty one."""
    return [math.exp(nll / n) if n else float("nan") for nll, n in nlls]


def pooled_perplexity(nlls: Sequence[tuple[float, int]]) -> float:
    """Perplexity over all tokens of several texts: ``exp(sum nll / sum tokens)``."""
    total = sum(n for _, n in nlls)
    return math.exp(sum(x for x, _ in nlls) / total) if total else float("nan")
