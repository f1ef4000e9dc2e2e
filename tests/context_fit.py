"""Test data that fits a model's context: a text longer than the context is refused (issue 21, D14),
and stories260K's context is 512 tokens, shorter than some CAA questions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import steerlab


def caa_items_within_context(lm: steerlab.LM, path: Path, n: int) -> list[dict[str, Any]]:
    """The first ``n`` CAA items of ``path`` whose both answered sides fit ``lm``'s context."""
    out = []
    for rec in steerlab.load_caa(path):
        pair = steerlab.caa_pairs([rec])[0]
        sides = [steerlab.data.pairs.render(s, lm) for s in (pair.positive, pair.negative)]
        if all(len(lm.tokenizer(t)["input_ids"]) <= (lm.context_length or 0) for t in sides):
            out.append(rec)
        if len(out) == n:
            return out
    raise AssertionError(f"{path} has fewer than {n} items within {lm.context_length} tokens")


def ab_records_within_context(lm: steerlab.LM, path: Path, n: int) -> list[dict[str, Any]]:
    """The first ``n`` A/B records of ``path`` whose answered prompt (``lm.chat(question, "(X")``) fits
    ``lm``'s context: the A/B read-out refuses an item that does not (about half of CAA's sycophancy
    test items are longer than stories260K's 512 tokens)."""
    out = []
    for rec in steerlab.load_caa(path):
        text = lm.chat(rec["question"], "(" + "ABCDEFGH"[0])
        if len(lm.tokenizer(text)["input_ids"]) + 2 <= (lm.context_length or 0):
            out.append(rec)
        if len(out) == n:
            return out
    raise AssertionError(f"{path} has fewer than {n} A/B items within {lm.context_length} tokens")
