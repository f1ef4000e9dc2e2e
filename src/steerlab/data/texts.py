"""Plain texts from files: prompts, neutral statements, sentence openings.

:func:`load_texts` reads ``.txt`` (one text a line), ``.json`` / ``.jsonl`` (strings, or objects
with a ``"statement"`` or ``"text"`` field) and ``.csv`` (such a column, e.g. RepE's
``facts_true_false.csv``); :func:`load_openings` keeps each text as it is written (a trailing
space of a sentence opening matters to its continuation).

Example:
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "prompts.txt"
    >>> _ = p.write_text("How do I bake bread?\\n\\n  How do I fix a bike?  \\n", encoding="utf-8")
    >>> load_texts(p)
    ['How do I bake bread?', 'How do I fix a bike?']
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..errors import DatasetError
from ..limits import Limits
from .readers import DEFAULT_LIMITS, check_file, csv_header, csv_rows, json_list, jsonl_records, text_field, text_lines

TEXT_COLUMNS = ("statement", "text")
"""Fields / columns :func:`load_texts` reads a text from, in order of preference."""


def _text_of(item: object, where: str, limits: Limits | None) -> str:
    if isinstance(item, Mapping):
        key = next((k for k in TEXT_COLUMNS if k in item), None)
        if key is None:
            raise DatasetError(f"{where} has no 'statement' or 'text' field")
        return text_field(item, key, where, limits)
    return (limits or DEFAULT_LIMITS).check_text(item, where)


def _csv_texts(path: Path, limits: Limits | None) -> list[str]:
    header = csv_header(path, limits)
    column = next((c for c in TEXT_COLUMNS if c in header), None)
    if column is None:
        raise DatasetError(f"{path}: needs a 'statement' or 'text' column (has {header})")
    return [text_field(row, column, where, limits) for where, row in csv_rows(path, [column], limits)]


def load_texts(
    path: str | Path, limit: int | None = None, *, strip: bool = True, limits: Limits | None = None
) -> list[str]:
    """Texts from a file: ``.txt`` (one text a line), ``.json`` (a list of strings, or of objects
    with a ``"statement"`` or ``"text"`` field), ``.jsonl`` (one such string or object a line) or
    ``.csv`` (a ``"statement"`` or ``"text"`` column, e.g. RepE's ``facts_true_false.csv``). Blank
    entries are dropped. Every entry must be text (:mod:`steerlab.data.readers`).

    Args:
        path: the file.
        limit: keep only the first ``limit`` texts.
        strip: strip surrounding whitespace from each text (``False`` keeps it, e.g. for sentence
            openings whose trailing space matters to the continuation).
        limits: the bounds on a text and on the file (default :class:`~steerlab.limits.Limits`).

    Raises:
        DatasetError: missing file, unknown format, no text column / field, or no non-empty text.
        LimitError: an entry that is not text, too long, or not valid Unicode (named by its row).

    Example:
        >>> load_texts("../shared/data/repe/facts_true_false.csv", limit=1)  # doctest: +SKIP
        ["The Earth's atmosphere protects us from harmful radiation from the sun."]
    """
    p = check_file(path, "text")
    suffix = p.suffix.lower()
    if suffix == ".txt":
        items = [
            (limits or DEFAULT_LIMITS).check_text(line, f"{p}:{n}") for n, line in enumerate(text_lines(p, limits), 1)
        ]
    elif suffix == ".json":
        items = [_text_of(x, f"{p}[{i}]", limits) for i, x in enumerate(json_list(p, "strings", limits))]
    elif suffix == ".jsonl":
        items = [_text_of(x, where, limits) for where, x in jsonl_records(p, limits)]
    elif suffix == ".csv":
        items = _csv_texts(p, limits)
    else:
        raise DatasetError(f"{p}: unknown text format {suffix!r}: use .txt, .json, .jsonl or .csv")
    out = [x.strip() if strip else x for x in items if x.strip()]
    if not out:
        raise DatasetError(f"{p}: holds no non-empty texts")
    return out[:limit] if limit is not None else out


def load_openings(path: str | Path) -> list[str]:
    """Sentence openings (e.g. RepE's ``all_truncated_outputs.json``): :func:`load_texts` without
    stripping, so an opening keeps any trailing space."""
    return load_texts(path, strip=False)
