"""Preference pairs as token ids: the prompt, and each completion's tokens after it.

A completion is tokenised together with its prompt (so the ids are the ones the model reads when
it writes the completion after the prompt), and taken as the ids after the prompt's own; where
joint tokenisation would merge across the boundary the completion is tokenised on its own. An
empty prompt (``""``, from plain-string contrast pairs) becomes the leading tokens both texts share.

Example:
    >>> enc = encode_pairs(lm, [PreferencePair("The film was", " great.", " awful.")])  # doctest: +SKIP
    >>> enc[0].prompt, enc[0].chosen  # doctest: +SKIP
    ((504, 1834, 436), (1440, 30))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ...data.pairs import render
from ...data.preference import PreferencePair
from ...errors import DatasetError
from ...models.load import LM
from ...models.tokens import common_prefix_length


@dataclass(frozen=True)
class EncodedPair:
    """One preference pair in token ids (the prompt holds at least one token)."""

    prompt: tuple[int, ...]
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]

    def completion(self, rejected: bool) -> tuple[int, ...]:
        """The rejected completion's ids if ``rejected``, else the chosen one's."""
        return self.rejected if rejected else self.chosen


def _after(lm: LM, prompt_text: str, prompt_ids: list[int], completion: str) -> list[int]:
    full = lm.tokenizer(prompt_text + completion, add_special_tokens=True)["input_ids"]
    if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        return list(full[len(prompt_ids) :])
    return list(lm.tokenizer(completion, add_special_tokens=False)["input_ids"])


def encode_pair(lm: LM, pair: PreferencePair, where: str = "pair") -> EncodedPair:
    """Token ids of one pair (see the module docs).

    Raises:
        DatasetError: the prompt is empty and the completions share no leading token, a
            completion has no tokens, or the two completions have the same tokens.
        ContextLengthError: prompt + completion do not fit the model's context.
    """
    text = render(pair.prompt, lm)
    if text:
        prompt = list(lm.tokenizer(text, add_special_tokens=True)["input_ids"])
        chosen, rejected = _after(lm, text, prompt, pair.chosen), _after(lm, text, prompt, pair.rejected)
    else:
        a = list(lm.tokenizer(pair.chosen, add_special_tokens=True)["input_ids"])
        b = list(lm.tokenizer(pair.rejected, add_special_tokens=True)["input_ids"])
        n = common_prefix_length([a, b])
        prompt, chosen, rejected = a[:n], a[n:], b[n:]
    if not prompt:
        raise DatasetError(
            f"{where}: the two texts share no leading token and the tokenizer adds no BOS token, so there "
            "is no prompt to condition on: give the pair a prompt"
        )
    if not chosen or not rejected:
        raise DatasetError(f"{where}: a completion has no tokens after the prompt (one text is a prefix of the other)")
    if chosen == rejected:
        raise DatasetError(f"{where}: the chosen and rejected completions are the same tokens")
    lm.check_context(len(prompt) + max(len(chosen), len(rejected)), 0)
    return EncodedPair(tuple(prompt), tuple(chosen), tuple(rejected))


def encode_pairs(lm: LM, pairs: Sequence[PreferencePair]) -> list[EncodedPair]:
    """:func:`encode_pair` for every pair (errors name the pair)."""
    return [encode_pair(lm, p, f"pair {i}") for i, p in enumerate(pairs)]


def encode_texts(lm: LM, texts: Sequence[str]) -> list[tuple[int, ...]]:
    """Token ids of neutral texts for the fluency term (texts of fewer than two tokens are dropped:
    they have nothing to predict)."""
    out = []
    for t in texts:
        ids = tuple(lm.tokenizer(t, add_special_tokens=True)["input_ids"])
        if len(ids) >= 2:
            lm.check_context(len(ids), 0)
            out.append(ids)
    return out
