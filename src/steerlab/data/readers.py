"""One way to read data files: every reader of pairs, openings, texts, preferences and A/B items
opens, decodes, splits and validates its input here.

* Files are UTF-8, with or without a byte-order mark (Excel's "CSV UTF-8" writes one); bytes
  that are not UTF-8 are refused with the file's name.
* Everything is bounded by a :class:`~steerlab.limits.Limits` *while* it is read: a file parsed
  whole by ``max_file_bytes``, one JSONL line by ``max_record_chars``, one CSV field by
  ``max_text_chars`` (``csv.field_size_limit``), one text by ``max_text_chars``.
* A text field must hold text: ``null``, numbers, booleans, lists and objects are refused with
  the file, the row and the field (:func:`text_field`), never turned into ``"None"`` or ``"5"``.
* Rows are named the same way in every reader: ``file:LINE`` for JSONL and CSV (the line where
  the record starts; a CSV header is line 1, as in a spreadsheet), ``file[i]`` for a JSON list
  (the index), ``file: row N`` for Parquet (data rows from 1).

Example:
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "pairs.jsonl"
    >>> _ = p.write_text('{"positive": "Love", "negative": null}\\n', encoding="utf-8")
    >>> [(where.split("/")[-1], rec["positive"]) for where, rec in jsonl_records(p)]
    [('pairs.jsonl:1', 'Love')]
    >>> rec = next(jsonl_records(p))[1]
    >>> text_field(rec, "negative", "pairs.jsonl:1")
    Traceback (most recent call last):
    ...
    steerlab.limits.LimitError: pairs.jsonl:1: field 'negative' must be text, not null
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from ..errors import DatasetError
from ..limits import LimitError, Limits

ENCODING = "utf-8-sig"
"""UTF-8, skipping a leading byte-order mark."""

DEFAULT_LIMITS = Limits()
"""The limits readers use when none are given (no model: only the text and size caps)."""


def check_file(path: str | Path, what: str) -> Path:
    """``path`` if it is an existing file, else a :class:`DatasetError` saying ``what`` is missing.

    Example:
        >>> check_file("no/such.jsonl", "pairs")
        Traceback (most recent call last):
        ...
        steerlab.errors.DatasetError: pairs file not found: no/such.jsonl
    """
    p = Path(path)
    if p.is_dir():
        raise DatasetError(f"{what} file {p} is a folder: give the file itself")
    if not p.is_file():
        raise DatasetError(f"{what} file not found: {p}")
    return p


def _not_utf8(path: Path, exc: UnicodeDecodeError, where: str = "") -> DatasetError:
    at = f" ({where})" if where else ""
    return DatasetError(f"{path}{at} is not UTF-8 text ({exc.reason}): save it as UTF-8")


def read_text(path: Path, limits: Limits | None = None) -> str:
    """The whole text of a data file parsed at once (at most ``max_file_bytes``)."""
    limits = limits or DEFAULT_LIMITS
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise LimitError(
            f"{path} is {size} bytes: more than the limit of {limits.max_file_bytes} bytes for a file "
            "read whole (max_file_bytes); stream large data as .jsonl, .csv or .parquet",
            "max_file_bytes",
            status=413,
        )
    try:
        return path.read_bytes().decode(ENCODING)
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc, f"byte {exc.start}") from None


def parse_json(text: str, where: str) -> Any:
    """``json.loads(text)``, any failure a :class:`DatasetError` naming ``where``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise DatasetError(f"{where}: not valid JSON here (nested too deeply)") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise DatasetError(f"{where}: not valid JSON here ({exc})") from None


def json_list(path: Path, what: str, limits: Limits | None = None) -> list[Any]:
    """The JSON list in ``path`` (a list of ``what``)."""
    data = parse_json(read_text(path, limits), str(path))
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of {what}, not {_kind(data)}")
    return data


def text_lines(path: Path, limits: Limits | None = None) -> list[str]:
    """The lines of a text file (``\\n``, ``\\r\\n`` or ``\\r`` end a line; nothing else does)."""
    return read_text(path, limits).replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _lines(fh: IO[str], path: Path, cap: int) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a text stream, each line read with at most ``cap`` characters."""
    for lineno in itertools.count(1):
        try:
            line = fh.readline(cap + 2)
        except UnicodeDecodeError as exc:
            raise _not_utf8(path, exc, f"near line {lineno}") from None
        if not line:
            return
        body = line[:-1] if line.endswith("\n") else line
        if len(body) > cap:
            raise LimitError(
                f"{path}:{lineno}: the line is longer than the limit of {cap} characters (max_record_chars)",
                "max_record_chars",
                status=413,
            )
        yield lineno, body


def jsonl_lines(path: Path, limits: Limits | None = None, start: int = 0) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of the non-blank lines of a JSONL file, from the ``start``-th on
    (the lines before it are read, bounded, but not parsed)."""
    limits = limits or DEFAULT_LIMITS
    with path.open(encoding=ENCODING) as fh:
        lines = ((n, line) for n, line in _lines(fh, path, limits.max_record_chars) if line.strip())
        yield from itertools.islice(lines, start, None)


def jsonl_records(path: Path, limits: Limits | None = None, start: int = 0) -> Iterator[tuple[str, Any]]:
    """``("file:LINE", record)`` for the non-blank lines of a JSONL file, from the ``start``-th on."""
    for lineno, line in jsonl_lines(path, limits, start):
        where = f"{path}:{lineno}"
        yield where, parse_json(line, where)


def csv_rows(
    path: Path, columns: Iterable[str], limits: Limits | None = None, start: int = 0
) -> Iterator[tuple[str, dict[str, str]]]:
    """``("file:LINE", row)`` for the data rows of a CSV file (blank lines skipped), from the
    ``start``-th on; ``LINE`` is where the row starts (the header is line 1, as in a spreadsheet).

    The header must hold every name in ``columns``. A row with fewer fields than the header, or
    with more (non-empty) fields, is refused; a field longer than ``max_text_chars`` is refused
    while it is read (``csv.field_size_limit``), naming the row.
    """
    limits = limits or DEFAULT_LIMITS
    cap = limits.max_text_chars
    with path.open(newline="", encoding=ENCODING) as fh:
        reader = csv.reader(fh)
        header = _next_row(reader, path, f"{path}:1", cap)
        if header is None:
            raise DatasetError(f"{path}: the CSV file is empty: it needs a header row with {_names(columns)}")
        missing = [c for c in columns if c not in header]
        if missing:
            raise DatasetError(
                f"{path}: the CSV needs the {_names(missing)} column{'s' if len(missing) > 1 else ''} "
                f"(its header has {header})"
            )
        index = 0
        while True:
            where = f"{path}:{reader.line_num + 1}"
            row = _next_row(reader, path, where, cap)
            if row is None:
                return
            if not row:  # a blank line
                continue
            index += 1
            if index <= start:
                continue
            if len(row) < len(header):
                raise DatasetError(
                    f"{where}: the row has {len(row)} field(s) but the header has {len(header)}: "
                    f"field {header[len(row)]!r} is missing"
                )
            if any(x.strip() for x in row[len(header) :]):
                raise DatasetError(
                    f"{where}: the row has {len(row)} fields but the header has {len(header)} "
                    "(a comma in a text that is not quoted?)"
                )
            yield where, dict(zip(header, row))


def _next_row(reader: Any, path: Path, where: str, cap: int) -> list[str] | None:
    old = csv.field_size_limit(cap)
    try:
        return next(reader)
    except StopIteration:
        return None
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc, where) from None
    except csv.Error as exc:
        if "field limit" in str(exc) or "field larger" in str(exc):
            raise LimitError(
                f"{where}: a field is longer than the limit of {cap} characters (max_text_chars)", "max_text_chars"
            ) from None
        raise DatasetError(f"{where}: not valid CSV ({exc})") from None
    finally:
        csv.field_size_limit(old)


def csv_header(path: Path, limits: Limits | None = None) -> list[str]:
    """The header row of a CSV file (empty for an empty file)."""
    cap = (limits or DEFAULT_LIMITS).max_text_chars
    with path.open(newline="", encoding=ENCODING) as fh:
        return _next_row(csv.reader(fh), path, f"{path}:1", cap) or []


def csv_count(path: Path, limits: Limits | None = None) -> int:
    """How many data rows :func:`csv_rows` yields (blank lines aside)."""
    return sum(1 for _ in csv_rows(path, (), limits))


def text_field(rec: Mapping[str, Any], key: str, where: str, limits: Limits | None = None) -> str:
    """``rec[key]`` if it is text within the limits, else an error naming ``where`` and the field.

    Raises:
        DatasetError: the record has no such field.
        LimitError: the value is not a string (``null``, a number, a boolean, a list, an object),
            is longer than ``max_text_chars`` or holds a lone surrogate.
    """
    if key not in rec:
        raise DatasetError(f"{where}: no {key!r} field")
    return (limits or DEFAULT_LIMITS).check_text(rec[key], f"{where}: field {key!r}")


def _names(columns: Iterable[str]) -> str:
    """``'a'``, ``'a' and 'b'``, ``'a', 'b' and 'c'``."""
    names = [repr(c) for c in columns]
    return " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)


def _kind(value: Any) -> str:
    from ..limits import _kind as kind

    return kind(value)
