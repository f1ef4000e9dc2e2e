"""Contrast pairs from storage: files and datasets, read whole or streamed.

* :func:`load_pairs` reads a ``.json``, ``.jsonl``, ``.csv`` or ``.parquet`` file of pairs into
  memory;
* :func:`open_pairs` opens data too large to hold as a :class:`PairSource`: JSONL / CSV / Parquet
  files (:class:`JsonlPairs`, :class:`CsvPairs`, :class:`ParquetPairs`) or a Hugging Face dataset
  (:class:`HFPairs`), streamed, that shards read by index range or round-robin.

Both read each record with :func:`steerlab.data.pairs.pair_from_record` and check it with
:func:`steerlab.data.pairs.check_pair`, so a file loads or is refused the same way either way.

Example:
    >>> src = open_pairs([ContrastPair("Love", "Hate"), ContrastPair("Joy", "Grief")])
    >>> [p.negative for p in src.shard(1, 2)]
    ['Grief']
"""

from __future__ import annotations

import importlib
import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import DatasetError
from ..limits import Limits
from .pairs import ContrastPair, Read, check_pair, check_pairs, pair_from_record, validate_read
from .readers import check_file, csv_rows, json_list, jsonl_lines, jsonl_records


class PairSource(ABC):
    """Contrast pairs read from storage one at a time, never all in memory.

    Any part can be read again, by index range (:meth:`pairs`) or round-robin (:meth:`shard`), so
    shards of one source can be read by different processes (:mod:`steerlab.distributed`). A source
    holds only where the data is (a path, a dataset's name), so it pickles small. Records are
    objects with ``positive`` / ``negative`` (optionally ``read``) or CAA A/B items; ``columns``
    renames fields, e.g. ``{"positive": "chosen", "negative": "rejected"}``.

    Example:
        >>> src = open_pairs([ContrastPair("Love", "Hate"), ContrastPair("Joy", "Grief")])
        >>> len(src), [p.positive for p in src.pairs(1, 2)]
        (2, ['Joy'])
    """

    read: Read = "last"
    columns: Mapping[str, str] | None = None
    limits: Limits | None = None
    _length: int | None = None

    @abstractmethod
    def _records(self, start: int) -> Iterator[tuple[str, object]]:
        """``(where, record)`` from record ``start`` on, skipping what is before it cheaply."""

    @abstractmethod
    def _count(self) -> int:
        """How many records there are."""

    def __len__(self) -> int:
        """The number of pairs (counted once, then remembered)."""
        if self._length is None:
            self._length = self._count()
        return self._length

    def __iter__(self) -> Iterator[ContrastPair]:
        return self.pairs()

    def pairs(self, start: int = 0, stop: int | None = None, step: int = 1) -> Iterator[ContrastPair]:
        """Pairs ``start, start + step, ...`` before ``stop``, each checked (:func:`check_pair`)."""
        if start < 0 or step < 1 or (stop is not None and stop < start):
            raise DatasetError(f"bad pair range start={start}, stop={stop}, step={step}")
        count = None if stop is None else stop - start
        for where, rec in itertools.islice(self._records(start), 0, count, step):
            yield check_pair(self._pair(rec, where), where, self.limits)

    def shard(self, index: int, count: int) -> Iterator[ContrastPair]:
        """Round-robin shard ``index`` of ``count``: pairs ``index, index + count, ...``."""
        if not 0 <= index < count:
            raise DatasetError(f"shard {index} of {count} does not exist")
        return self.pairs(index, None, count)

    def _pair(self, rec: object, where: str) -> ContrastPair:
        if isinstance(rec, ContrastPair):
            return rec
        if self.columns and isinstance(rec, Mapping):
            rec = {**rec, **{ours: rec[theirs] for ours, theirs in self.columns.items() if theirs in rec}}
        return pair_from_record(rec, where, self.read, self.limits)


class ListPairs(PairSource):
    """Pairs already in memory (a list of :class:`ContrastPair`, or of pair records), as a
    :class:`PairSource`."""

    def __init__(self, pairs: Sequence[object], limits: Limits | None = None) -> None:
        self.items, self.limits = list(pairs), limits

    def _records(self, start: int) -> Iterator[tuple[str, object]]:
        for i in range(start, len(self.items)):
            yield f"pair {i}", self.items[i]

    def _count(self) -> int:
        return len(self.items)


@dataclass
class _FileSource(PairSource):
    path: Path
    read: Read = "last"
    columns: Mapping[str, str] | None = None
    limits: Limits | None = None

    def __post_init__(self) -> None:
        self.path = check_file(self.path, "pairs").resolve()
        validate_read(self.read)


class JsonlPairs(_FileSource):
    """A ``.jsonl`` file, one pair object a line (blank lines skipped), read line by line (each
    line bounded by ``limits.max_record_chars``)."""

    def _records(self, start: int) -> Iterator[tuple[str, object]]:
        return jsonl_records(self.path, self.limits, start)

    def _count(self) -> int:
        return sum(1 for _ in jsonl_lines(self.path, self.limits))


class CsvPairs(_FileSource):
    """A ``.csv`` file with ``positive`` and ``negative`` columns (or renamed by ``columns``)."""

    def _records(self, start: int) -> Iterator[tuple[str, object]]:
        names = [(self.columns or {}).get(k, k) for k in ("positive", "negative")]
        return csv_rows(self.path, names, self.limits, start)

    def _count(self) -> int:
        return sum(1 for _ in self._records(0))


def _optional(module: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DatasetError(f"{what} needs the {module.split('.')[0]} package: pip install steerlab[data]") from None


class ParquetPairs(_FileSource):
    """A ``.parquet`` file, read a record batch at a time; row groups before ``start`` are skipped
    without reading them."""

    batch_rows: int = 1024

    def _file(self) -> Any:
        return _optional("pyarrow.parquet", "reading Parquet files").ParquetFile(str(self.path))

    def _records(self, start: int) -> Iterator[tuple[str, object]]:
        pf = self._file()
        row = 0
        for group in range(pf.metadata.num_row_groups):
            rows = pf.metadata.row_group(group).num_rows
            if row + rows <= start:
                row += rows
                continue
            for batch in pf.iter_batches(batch_size=self.batch_rows, row_groups=[group]):
                for rec in batch.to_pylist():
                    if row >= start:
                        yield f"{self.path}: row {row + 1}", rec
                    row += 1

    def _count(self) -> int:
        return int(self._file().metadata.num_rows)


class HFPairs(PairSource):
    """A Hugging Face ``datasets`` dataset, streamed.

    Give a dataset object (``Dataset`` or ``IterableDataset``) or what
    ``datasets.load_dataset(name, split=..., streaming=True, **load_kwargs)`` needs: then each
    process that reads the source opens its own stream (local files: ``name="json"`` or
    ``"parquet"`` with ``data_files=...``; hub names need internet access).
    """

    def __init__(
        self,
        dataset: Any = None,
        *,
        name: str | None = None,
        split: str = "train",
        read: Read = "last",
        columns: Mapping[str, str] | None = None,
        limits: Limits | None = None,
        **load_kwargs: Any,
    ) -> None:
        if (dataset is None) == (name is None):
            raise DatasetError("give HFPairs a dataset object or a dataset name, not both")
        self.dataset, self.name, self.split, self.load_kwargs = dataset, name, split, load_kwargs
        self.read, self.columns, self.limits = validate_read(read), columns, limits

    def _open(self) -> Any:
        if self.dataset is not None:
            return self.dataset
        datasets = _optional("datasets", "reading Hugging Face datasets")
        return datasets.load_dataset(self.name, split=self.split, streaming=True, **self.load_kwargs)

    def _records(self, start: int) -> Iterator[tuple[str, object]]:
        ds = self._open()
        rows = ds.skip(start) if start and hasattr(ds, "skip") else ds
        label = self.name or getattr(getattr(ds, "info", None), "dataset_name", None) or "dataset"
        for i, rec in enumerate(rows, start):
            yield f"{label}: row {i + 1}", rec

    def _count(self) -> int:
        ds = self._open()
        try:
            return len(ds)
        except TypeError:  # a stream: count it
            return sum(1 for _ in ds)


_FILE_SOURCES: dict[str, type[_FileSource]] = {".jsonl": JsonlPairs, ".csv": CsvPairs, ".parquet": ParquetPairs}


PAIR_FORMATS = (".json", ".jsonl", ".csv", ".parquet")
"""File suffixes :func:`load_pairs` and :func:`open_pairs` read."""


def load_pairs(path: str | Path, read: Read = "last", *, limits: Limits | None = None) -> list[ContrastPair]:
    """Load pairs from ``.json`` (a list), ``.jsonl`` (one object a line), ``.csv`` or ``.parquet``.

    Records have ``positive`` and ``negative`` text fields (optionally ``read``), or are CAA A/B
    items. CSV files need ``positive`` and ``negative`` columns. The same reader as
    :func:`open_pairs` (its pairs, all in memory).

    Raises:
        DatasetError: missing file, unknown extension, malformed line (with its line number), a
            missing field, or a pair with an empty side or the same text on both sides.
        LimitError: a text field that is not text (``null``, a number, a list, ...), too long, or
            not valid Unicode (named by file, row and field).
    """
    path = check_file(path, "pairs")
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = json_list(path, "pair objects", limits)
        return check_pairs(
            [
                check_pair(pair_from_record(r, f"{path}[{i}]", read, limits), f"{path}[{i}]", limits)
                for i, r in enumerate(data)
            ],
            limits,
        )
    if suffix in _FILE_SOURCES:
        return check_pairs(list(_FILE_SOURCES[suffix](path, read, limits=limits)), limits)
    raise DatasetError(f"{path}: unknown pairs format {suffix!r}; use {', '.join(PAIR_FORMATS)}")


def looks_like_path(source: str | Path) -> bool:
    """Whether ``source`` names a file rather than a Hugging Face dataset: a :class:`~pathlib.Path`,
    or a string with a file suffix (``.jsonl``), starting with ``/``, ``.`` or ``~``, with more
    path separators than a hub id's one ``owner/name``, or whose folder exists here.

    Example:
        >>> looks_like_path("data/missing.parquet"), looks_like_path("Anthropic/hh-rlhf")
        (True, False)
    """
    if isinstance(source, Path):
        return True
    text = source.strip()
    return (
        bool(Path(text).suffix)
        or text.startswith(("/", ".", "~"))
        or "\\" in text
        or text.count("/") > 1
        or ("/" in text and Path(text).parent.is_dir())
    )


def open_pairs(
    source: object,
    read: Read = "last",
    *,
    columns: Mapping[str, str] | None = None,
    split: str = "train",
    limits: Limits | None = None,
    **load_kwargs: Any,
) -> PairSource:
    """Contrast pairs as a :class:`PairSource`, streamed where the format allows.

    ``source`` is a ``.jsonl``, ``.csv`` or ``.parquet`` file (streamed), a ``.json`` file (a JSON
    list is parsed whole), a Hugging Face dataset object or a dataset name / folder for
    ``datasets.load_dataset`` (streamed; ``split`` and ``load_kwargs`` go to it), a list of
    :class:`ContrastPair`, or a :class:`PairSource` (returned as it is). A name that looks like a
    file (:func:`looks_like_path`) and does not exist is refused, never looked up on the Hub.
    Every record goes through the same checks as :func:`load_pairs`, in this process or a shard.

    Example:
        >>> src = open_pairs("pairs.parquet")  # doctest: +SKIP
        >>> first = next(iter(src.shard(0, 4)))  # doctest: +SKIP
    """
    if isinstance(source, PairSource):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        suffix = path.suffix.lower()
        if path.is_file() and suffix in _FILE_SOURCES:
            return _FILE_SOURCES[suffix](path, read, columns, limits)
        if path.is_file() and suffix == ".json":
            return ListPairs(load_pairs(path, read, limits=limits), limits)
        if path.is_file():
            raise DatasetError(f"{path}: unknown pairs format {suffix!r}; use {', '.join(PAIR_FORMATS)}")
        if not path.exists() and looks_like_path(source):
            raise DatasetError(f"pairs file not found: {path}")
        return HFPairs(name=str(source), split=split, read=read, columns=columns, limits=limits, **load_kwargs)
    if hasattr(source, "features") or type(source).__module__.startswith("datasets"):
        return HFPairs(source, read=read, columns=columns, limits=limits)
    if isinstance(source, Sequence):
        return ListPairs(source, limits)
    raise DatasetError(f"cannot read contrast pairs from a {type(source).__name__}: give a file, a dataset or a list")
