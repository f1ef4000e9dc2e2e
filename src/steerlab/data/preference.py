"""Preference data for trained steering vectors: a prompt, a preferred and a dispreferred completion.

Trained methods (:mod:`steerlab.extraction.train`: ``bipo``, ``reps``) learn from :class:`PreferencePair`
objects. They can be made from everything steerlab already reads:

* CAA A/B items (dicts from :func:`steerlab.load_caa`, or the pairs :func:`steerlab.caa_pair`
  makes): the question is the prompt, the matching answer is preferred;
* contrast pairs whose two sides are :class:`~steerlab.data.pairs.ChatText` turns with the same user
  prompt and different assistant replies, or plain strings (their shared leading tokens become the
  prompt);
* completions the model writes itself under two opposite prompts (:func:`self_contrast`): the
  prompt's effect is distilled into a vector that needs no prompt tokens;
* JSON / JSONL files of ``{"prompt", "chosen", "rejected"}`` records (:func:`load_preferences`).

Example:
    >>> pairs = preference_pairs([{"prompt": "The film was", "chosen": " great.", "rejected": " awful."}])
    >>> pairs[0].chosen
    ' great.'
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DatasetError
from .pairs import ChatText, ContrastPair, Read, Text, caa_pair
from .readers import check_file, json_list, jsonl_records, text_field

if TYPE_CHECKING:
    from ..models.load import LM

__all__ = [
    "PreferencePair",
    "contrast_pairs",
    "load_preferences",
    "preference_hash",
    "preference_pairs",
    "self_contrast",
]


@dataclass(frozen=True)
class PreferencePair:
    """A prompt and two completions of it: ``chosen`` (preferred) and ``rejected``.

    Attributes:
        prompt: plain text or a :class:`~steerlab.data.pairs.ChatText` (rendered with the model's chat
            template); ``""`` means "the tokens both completions share" (see :mod:`steerlab.extraction.train`).
        chosen: the completion a ``+v`` steering should make more likely.
        rejected: the completion a ``−v`` steering should make more likely.

    Example:
        >>> PreferencePair("Q: 2+2?\\nA:", " 4", " 5").rejected
        ' 5'
    """

    prompt: Text
    chosen: str
    rejected: str

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, (str, ChatText)):
            raise DatasetError(f"a preference prompt must be a str or ChatText, got {type(self.prompt).__name__}")
        for name in ("chosen", "rejected"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise DatasetError(f"a preference pair's {name} completion must be a str, got {type(value).__name__}")
            if not value.strip():
                raise DatasetError(f"a preference pair has an empty {name} completion: both completions are needed")
        if self.chosen == self.rejected:
            raise DatasetError(f"a preference pair has the same chosen and rejected completion ({self.chosen!r})")


def _from_contrast(pair: ContrastPair, where: str) -> PreferencePair:
    pos, neg = pair.positive, pair.negative
    if isinstance(pos, str) and isinstance(neg, str):
        return PreferencePair("", pos, neg)
    if isinstance(pos, ChatText) and isinstance(neg, ChatText):
        if (pos.user, pos.system) != (neg.user, neg.system):
            raise DatasetError(
                f"{where}: the two sides have different user prompts and the same reply is no preference; "
                "to learn a prompt's effect use steerlab.self_contrast(lm, openings, positive_prompt, negative_prompt)"
            )
        return PreferencePair(ChatText(pos.user, "", pos.system), pos.assistant, neg.assistant)
    raise DatasetError(f"{where}: one side is a ChatText and the other a plain string; use the same kind for both")


def _from_record(rec: dict[str, Any], where: str) -> PreferencePair:
    if "answer_matching_behavior" in rec:
        return _from_contrast(caa_pair(rec, where), where)
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in rec]
    if missing:
        raise DatasetError(
            f"{where}: a preference record needs 'prompt', 'chosen' and 'rejected' (or CAA "
            f"'question' / 'answer_matching_behavior' / 'answer_not_matching_behavior'); it lacks {missing}"
        )
    return PreferencePair(*(text_field(rec, k, where) for k in ("prompt", "chosen", "rejected")))


def preference_pairs(items: Iterable[PreferencePair | ContrastPair | dict[str, Any]]) -> list[PreferencePair]:
    """Turn preference pairs, contrast pairs, CAA items or ``{"prompt", "chosen", "rejected"}`` dicts
    into :class:`PreferencePair` objects.

    Raises:
        DatasetError: no items, or an item that says no preference (see the message).

    Example:
        >>> p = preference_pairs([ContrastPair(ChatText("Hi?", "(A)"), ChatText("Hi?", "(B)"))])[0]
        >>> (p.prompt.user, p.chosen, p.rejected)
        ('Hi?', '(A)', '(B)')
    """
    out: list[PreferencePair] = []
    for i, item in enumerate(items):
        where = f"item {i}"
        if isinstance(item, PreferencePair):
            out.append(item)
        elif isinstance(item, ContrastPair):
            out.append(_from_contrast(item, where))
        elif isinstance(item, dict):
            out.append(_from_record(item, where))
        else:
            raise DatasetError(f"{where} is a {type(item).__name__}: give PreferencePair, ContrastPair or dict items")
    if not out:
        raise DatasetError("no preference pairs given: pass at least one (prompt, chosen, rejected) item")
    return out


def load_preferences(path: str | Path) -> list[PreferencePair]:
    """Preference pairs from ``.json`` (a list) or ``.jsonl`` (one object a line) of
    ``{"prompt", "chosen", "rejected"}`` records or CAA A/B items.

    Raises:
        DatasetError: missing file, unknown extension, malformed record (with its line).
    """
    p = check_file(path, "preference")
    suffix = p.suffix.lower()
    located: list[tuple[str, Any]]
    if suffix == ".json":
        located = [(f"{p}[{i}]", rec) for i, rec in enumerate(json_list(p, "preference records"))]
    elif suffix == ".jsonl":
        located = list(jsonl_records(p))
    else:
        raise DatasetError(f"{p}: unknown preference format {suffix!r}; use .json or .jsonl")
    out = []
    for w, rec in located:
        if not isinstance(rec, dict):
            raise DatasetError(f"{w}: expected an object with 'prompt', 'chosen' and 'rejected'")
        out.append(_from_record(rec, w))
    return preference_pairs(out)


def preference_hash(pairs: Sequence[PreferencePair]) -> str:
    """A short hash identifying preference data (recorded in trained vectors)."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([repr(p.prompt), p.chosen, p.rejected]).encode())
    return h.hexdigest()[:16]


def contrast_pairs(pairs: Sequence[PreferencePair], read: Read = "mean") -> list[ContrastPair]:
    """The same data as contrast pairs (prompt + chosen vs prompt + rejected), for read-out methods
    such as ``mean_diff`` — so trained and read-out vectors can be compared on one data set.

    Example:
        >>> contrast_pairs([PreferencePair("The film was", " great.", " awful.")])[0].negative
        'The film was awful.'
    """
    out = []
    for p in pairs:
        if isinstance(p.prompt, ChatText):
            q = p.prompt
            out.append(
                ContrastPair(
                    ChatText(q.user, q.assistant + p.chosen, q.system),
                    ChatText(q.user, q.assistant + p.rejected, q.system),
                    read,
                )
            )
        else:
            out.append(ContrastPair(p.prompt + p.chosen, p.prompt + p.rejected, read))
    return out


def self_contrast(
    lm: LM,
    openings: Sequence[str],
    positive_prompt: str,
    negative_prompt: str,
    max_new_tokens: int = 32,
    batch_size: int | None = None,
    progress: bool | None = None,
    **generate_kwargs: Any,
) -> list[PreferencePair]:
    """Preference pairs from what the model writes under two opposite prompts.

    Each opening is continued once under ``positive_prompt`` and once under ``negative_prompt``
    (the prompt as the user turn, the opening as the start of the reply:
    ``ChatText(prompt, opening)``), all in batched :func:`steerlab.generate` calls. The pair's
    prompt is the **plain opening**, without either steering prompt; the continuation written
    under the positive prompt is preferred. A vector trained on these pairs reproduces the
    prompt's effect without the prompt's tokens.

    Openings whose two continuations are equal or empty say nothing and are dropped.

    Args:
        lm: the model.
        openings: sentence openings (e.g. :func:`steerlab.load_openings` of RepE's
            ``all_truncated_outputs.json``).
        positive_prompt: e.g. ``"Write a cheerful story."``.
        negative_prompt: e.g. ``"Write a sad story."``.
        max_new_tokens: length of each continuation.
        batch_size: rows per ``generate`` call (default: all ``2 × len(openings)`` at once).
        progress: show a progress bar over the generate calls.
        **generate_kwargs: passed to :func:`steerlab.generate` (``do_sample``, ``temperature``...;
            greedy by default).

    Raises:
        DatasetError: no non-empty openings, or no opening gave two different continuations.

    Example:
        >>> pairs = self_contrast(lm, ["That game", "The weather"], "Write a cheerful story.",
        ...                       "Write a sad story.", max_new_tokens=24)  # doctest: +SKIP
        >>> pairs[0].prompt  # doctest: +SKIP
        'That game'
    """
    from ..progress import track
    from ..runtime.generate import generate

    items = [o for o in openings if isinstance(o, str) and o.strip()]
    if not items:
        raise DatasetError("no non-empty sentence openings given for self_contrast")
    if not positive_prompt.strip() or not negative_prompt.strip():
        raise DatasetError("self_contrast needs a non-empty positive and negative prompt")
    texts = [ChatText(prompt, o).render(lm) for o in items for prompt in (positive_prompt, negative_prompt)]
    step = batch_size or len(texts)
    if step < 1:
        raise DatasetError(f"batch_size={batch_size} must be at least 1")
    outs: list[str] = []
    starts = range(0, len(texts), step)
    for start in track(starts, "writing contrasting completions", enabled=progress if len(starts) > 1 else False):
        outs += generate(lm, texts[start : start + step], max_new_tokens=max_new_tokens, **generate_kwargs)
    pairs = [
        PreferencePair(o, pos, neg)
        for o, pos, neg in zip(items, outs[0::2], outs[1::2])
        if pos.strip() and neg.strip() and pos != neg
    ]
    if not pairs:
        raise DatasetError(
            "the model wrote the same continuation under both prompts for every opening: make the prompts "
            "more different, generate more tokens, or sample (do_sample=True)"
        )
    return pairs
