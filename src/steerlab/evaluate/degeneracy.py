"""A degeneracy guard beside perplexity: how much continuations repeat themselves.

Perplexity under the unsteered model can *fall* when a steered model loops ("happy happy happy"
is very predictable), so a cost budget alone can be won by looping. Two measures of the
continuations' own words (lower-cased, split on whitespace) say when that happens:

* :func:`distinct_n` — per continuation, distinct n-grams over all n-grams (1: no repeat), averaged;
* :func:`repeated_ngrams` — per continuation, the share of n-grams that already occurred earlier in
  it (0: no repeat), averaged: ``1 − distinct_n`` at the same ``n``, read the other way (the
  frontier reports distinct-2 and repeated 3-grams, a short and a longer loop).

Example:
    >>> distinct_n(["the cat sat on the mat", "happy happy happy happy"], 2)
    0.6666666666666666
    >>> repeated_ngrams(["the cat sat on the mat", "happy happy happy happy"], 3)
    0.25
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["distinct_n", "repeated_ngrams"]


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = text.lower().split()
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """The mean over ``texts`` of distinct n-grams / n-grams (texts with fewer than ``n`` words are
    left out; ``nan`` when none is long enough)."""
    shares = [len(set(g)) / len(g) for g in (_ngrams(t, n) for t in texts) if g]
    return sum(shares) / len(shares) if shares else math.nan


def repeated_ngrams(texts: Sequence[str], n: int = 3) -> float:
    """The mean over ``texts`` of the share of n-grams seen earlier in the same text (texts with
    fewer than ``n`` words are left out; ``nan`` when none is long enough)."""
    shares = []
    for grams in (_ngrams(t, n) for t in texts):
        if grams:
            shares.append(1.0 - len(set(grams)) / len(grams))
    return sum(shares) / len(shares) if shares else math.nan
