"""Multiple-choice (A/B) items: CAA behaviour items and MMLU / TruthfulQA capability items.

A CAA item is ``{question, answer_matching_behavior, answer_not_matching_behavior}`` where the
answers are letters such as ``"(A)"`` or ``" (B)"`` offered as choices in the question; a
capability item is ``{prompt, correct, incorrect[, category]}``. Both are read the same way:

* :func:`load_caa` reads a CAA-format JSON file as records (what :func:`steerlab.caa_pairs`
  turns into contrast pairs for vectors);
* :func:`ab_item` / :func:`ab_items` / :func:`load_ab_items` normalise records into an
  :class:`ABItem` (what :mod:`steerlab.evaluate.behavior` reads out);
* :func:`ab_letters` checks an item's two letters against the choices it offers, for both, so an
  item is valid or invalid in the same way for vectors and read-outs.

Example:
    >>> item = ab_item({"question": "Sky blue?\\n (A) yes\\n (B) no", "answer_matching_behavior": "(A)",
    ...                 "answer_not_matching_behavior": " (B)"})
    >>> (item.positive_letter, item.negative_letter)
    ('A', 'B')
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from .readers import check_file, json_list, text_field

_ANSWER_RE = re.compile(r"\(([A-Z])\)?")
_CHOICE_RE = re.compile(r"\(([A-Z])\)")

Record = Mapping[str, Any]
"""One item as read from JSON (an object of text fields)."""


# --------------------------------------------------------------------------- letters
def answer_letter(answer: str, where: str = "item") -> str:
    """The letter of a CAA answer such as ``"(A)"`` or ``" (B)"``.

    Example:
        >>> answer_letter(" (B)")
        'B'
    """
    m = _ANSWER_RE.search(answer)
    if not m:
        raise DatasetError(f"{where}: answer {answer!r} has no '(X)' letter")
    return m.group(1)


def choice_letters(question: str) -> list[str]:
    """The choice letters offered in a CAA question (``(A)``, ``(B)``, ...).

    Example:
        >>> choice_letters("Will (AGI) help?\\n (A) yes\\n (B) no")
        ['A', 'B']
    """
    return sorted(set(_CHOICE_RE.findall(question)))


def ab_letters(question: str, matching: str, not_matching: str, where: str = "item") -> tuple[str, str]:
    """The two answer letters of a multiple-choice item, checked against the choices it offers.

    Shared by :func:`steerlab.caa_pair` (vectors) and :func:`ab_item` (A/B read-outs), so an item
    is valid or invalid in the same way for both.

    Raises:
        DatasetError: an answer without an ``(X)`` letter, a question offering no ``(X)`` choices or
            not offering both letters, or the same letter on both sides.

    Example:
        >>> ab_letters("Sky blue?\\n (A) yes\\n (B) no", "(A)", " (B)")
        ('A', 'B')
    """
    match, other = answer_letter(matching, where), answer_letter(not_matching, where)
    letters = choice_letters(question)
    if not letters:
        raise DatasetError(f"{where}: the question offers choices: none — no (A)/(B) choices to answer with")
    if match not in letters or other not in letters:
        raise DatasetError(f"{where}: the question offers choices {letters}, not ({match}) and ({other})")
    if match == other:
        raise DatasetError(f"{where}: both answers are ({match}); the two sides must differ")
    return match, other


# --------------------------------------------------------------------------- files
def load_caa(path: str | os.PathLike[str], limit: int | None = None) -> list[dict[str, Any]]:
    """Read a CAA-format JSON file (a list of A/B items), optionally the first ``limit`` items.

    Raises:
        DatasetError: missing file, or not a JSON list.
    """
    items = json_list(check_file(Path(path), "CAA"), "CAA items")
    return items[:limit] if limit is not None else items


# --------------------------------------------------------------------------- items
@dataclass(frozen=True)
class ABItem:
    """One multiple-choice item: the question and the two letters compared.

    Attributes:
        prompt: the question with its ``(A)``/``(B)`` choices (the user turn).
        positive_letter: the matching-behaviour letter (capability sets: the correct one).
        negative_letter: the not-matching letter (capability sets: the incorrect one).
        category: the behaviour name, or the record's ``category`` (MMLU subject, ...).

    Example:
        >>> ab_item({"question": "Q?\\n (A) yes\\n (B) no", "answer_matching_behavior": "(A)",
        ...          "answer_not_matching_behavior": "(B)"}).positive_letter
        'A'
    """

    prompt: str
    positive_letter: str
    negative_letter: str
    category: str = ""


_BEHAVIOR_KEYS = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
_CAPABILITY_KEYS = ("prompt", "correct", "incorrect")


def ab_item(rec: Record, index: int = 0, category: str = "", where: str = "") -> ABItem:
    """Normalise one CAA behaviour record or MMLU / TruthfulQA record into an :class:`ABItem`.

    Args:
        rec: ``{question, answer_matching_behavior, answer_not_matching_behavior}`` or
            ``{prompt, correct, incorrect[, category]}``.
        index: the item's index, named in errors.
        category: used when the record has no ``category`` of its own.
        where: a prefix for error messages (e.g. the file).

    Raises:
        DatasetError: missing keys, or letters :func:`ab_letters` rejects (an answer without an
            ``(X)`` letter, a question that does not offer both letters as choices, or the same
            letter on both sides).
    """
    at = f"{where} item {index}".strip()
    if not isinstance(rec, Mapping):
        raise DatasetError(f"{at}: expected an object, got {type(rec).__name__}")
    if "question" in rec or "answer_matching_behavior" in rec:
        keys = _BEHAVIOR_KEYS
    elif "prompt" in rec or "correct" in rec:
        keys = _CAPABILITY_KEYS
    else:
        raise DatasetError(
            f"{at}: needs CAA keys {', '.join(_BEHAVIOR_KEYS)} or capability keys {', '.join(_CAPABILITY_KEYS)}"
        )
    missing = [k for k in keys if k not in rec]
    if missing:
        raise DatasetError(f"{at}: lacks {', '.join(repr(k) for k in missing)}")
    prompt, pos_answer, neg_answer = (text_field(rec, k, at) for k in keys)
    pos, neg = ab_letters(prompt, pos_answer, neg_answer, at)
    cat = rec.get("category")
    return ABItem(prompt, pos, neg, str(cat) if cat is not None else category)


def ab_items(records: Sequence[Record], category: str = "", where: str = "") -> list[ABItem]:
    """Normalise a list of records (see :func:`ab_item`); errors name the failing item's index."""
    return [ab_item(rec, i, category, where) for i, rec in enumerate(records)]


def as_ab_items(items: Sequence[ABItem | Record]) -> list[ABItem]:
    """``items`` as :class:`ABItem` objects (records are normalised by :func:`ab_item`).

    Raises:
        DatasetError: no items, or a malformed record (named by its index).

    Example:
        >>> as_ab_items([ABItem("Q?\\n (A) y\\n (B) n", "A", "B")])[0].negative_letter
        'B'
    """
    out = [it if isinstance(it, ABItem) else ab_item(it, i) for i, it in enumerate(items)]
    if not out:
        raise DatasetError("no A/B items given")
    return out


def load_ab_items(path: str | os.PathLike[str], limit: int | None = None) -> list[ABItem]:
    """Read A/B items from a CAA ``test_dataset_ab.json`` / ``generate_dataset.json`` or from
    ``mmlu.json`` / ``truthful_qa.json``, optionally only the first ``limit``.

    Both spellings of the answer (``"(A)"`` and ``" (A)"``) and questions with more than two
    options (survival-instinct) are accepted. The category of CAA items is the behaviour
    (the file's folder name); capability items keep their own ``category``.

    Example:
        >>> items = load_ab_items(CAA / "test/refusal/test_dataset_ab.json", limit=4)  # doctest: +SKIP
        >>> items[0].positive_letter, items[0].category  # doctest: +SKIP
        ('B', 'refusal')

    Raises:
        DatasetError: missing file, not a JSON list, or a malformed item (named by its index).
    """
    p = Path(path)
    records = load_caa(p, limit)
    if not records:
        raise DatasetError(f"{p}: holds no items")
    return ab_items(records, category=p.parent.name, where=str(p))
