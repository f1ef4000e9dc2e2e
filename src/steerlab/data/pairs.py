"""Contrast data: pairs of texts that differ in the behaviour to steer.

A :class:`ContrastPair` holds a positive and a negative text (plain strings or
:class:`ChatText` turns rendered with the model's chat template at capture time) and *where* to
read the activation (:data:`Read`). Builders cover the papers' data:

* :func:`pairs_from_lists` and :func:`load_pairs` (JSON / JSONL / CSV),
* :func:`caa_pairs` / :func:`load_caa` for CAA A/B items (read at the answer letter),
* :func:`persona_pairs` for RepE-style persona prompts over sentence openings,
* :func:`open_pairs` for data too large to hold: JSONL / CSV / Parquet files or a Hugging Face
  dataset, streamed as a :class:`PairSource` that shards read by index range or round-robin.

Example:
    >>> pairs = persona_pairs("happy", "sad", ["That game", "I can see"])
    >>> pairs[0].positive.user
    "Act as if you're extremely happy."
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from ..limits import Limits
from .readers import (
    DEFAULT_LIMITS,
    check_file,
    csv_header,
    csv_rows,
    json_list,
    jsonl_lines,
    jsonl_records,
    text_field,
    text_lines,
)

Read = str | int | tuple[int, int]
"""Where to read a text's activation.

* ``"last"`` — the last real token (default),
* ``"mean"`` — the mean over all real tokens,
* ``"all"`` — every token (used by ActAdd),
* ``"answer"`` — the answer letter of the last ``(X`` in the text (CAA),
* an ``int`` — a token index (negative counts from the end),
* ``(start, end)`` — mean over that token slice (negative indices count from the end).
"""

READ_KEYWORDS = ("last", "mean", "all", "answer")
_ANSWER_RE = re.compile(r"\(([A-Z])\)?")
_CHOICE_RE = re.compile(r"\(([A-Z])\)")


@dataclass(frozen=True)
class ChatText:
    """One user turn plus the beginning of the assistant's reply.

    Rendered with :meth:`steerlab.models.load.LM.chat`: the model's chat template when it has one, else
    ``"{user}\n{assistant}"`` — the same text evaluation prompts use.
    """

    user: str
    assistant: str = ""
    system: str | None = None

    def render(self, lm: Any) -> str:
        """Model text for ``lm`` (an :class:`~steerlab.models.load.LM`)."""
        return str(lm.chat(self.user, self.assistant, self.system))


Text = str | ChatText


def render(text: Text, lm: Any) -> str:
    """Plain text of a :data:`Text` for ``lm``."""
    return text.render(lm) if isinstance(text, ChatText) else text


def validate_read(read: Read) -> Read:
    """Return ``read`` if it is a valid :data:`Read`, else raise :class:`DatasetError`."""
    if isinstance(read, str) and read in READ_KEYWORDS:
        return read
    if isinstance(read, int) and not isinstance(read, bool):
        return read
    if isinstance(read, tuple) and len(read) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in read):
        return read
    raise DatasetError(
        f"read={read!r} is not a read position: use 'last', 'mean', 'all', 'answer', a token "
        "index or a (start, end) token slice"
    )


@dataclass(frozen=True)
class ContrastPair:
    """A positive and a negative example of a behaviour, and where to read them."""

    positive: Text
    negative: Text
    read: Read = "last"

    def __post_init__(self) -> None:
        for side in (self.positive, self.negative):
            if not isinstance(side, (str, ChatText)):
                raise DatasetError(f"a ContrastPair side must be a str or ChatText, got {type(side).__name__}")
        validate_read(self.read)


class DataHash:
    """The running hash behind :func:`data_hash`, fed one pair at a time (for streamed data).

    Example:
        >>> h = DataHash()
        >>> h.update(ContrastPair("Love", "Hate"))
        >>> h.hexdigest() == data_hash([ContrastPair("Love", "Hate")])
        True
    """

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, pair: ContrastPair) -> None:
        """Add one pair."""
        self._h.update(json.dumps([repr(pair.positive), repr(pair.negative), repr(pair.read)]).encode())

    def hexdigest(self) -> str:
        """The short hash of the pairs added so far."""
        return self._h.hexdigest()[:16]


def data_hash(pairs: Iterable[ContrastPair]) -> str:
    """A short hash identifying the contrast data a vector was made from."""
    h = DataHash()
    for p in pairs:
        h.update(p)
    return h.hexdigest()


def check_pair(pair: Any, where: str, limits: Limits | None = None) -> ContrastPair:
    """``pair`` if it is a :class:`ContrastPair` whose two sides are non-empty, different, valid
    text within ``limits.max_text_chars``, else an error naming ``where`` (e.g. ``"pair 3"``).

    Raises:
        DatasetError: not a pair, an empty side, or the same text on both sides (the pair says
            nothing: its difference, and a vector made of such pairs, is zero).
        LimitError: a side longer than ``max_text_chars`` or holding a lone surrogate.
    """
    if not isinstance(pair, ContrastPair):
        raise DatasetError(f"{where} is a {type(pair).__name__}, not a ContrastPair")
    limits = limits or DEFAULT_LIMITS
    for side, text in (("positive", pair.positive), ("negative", pair.negative)):
        parts = (text,) if isinstance(text, str) else (text.user, text.assistant, text.system or "")
        for part in parts:
            limits.check_text(part, f"{where} ({side})")
    if not str(render_plain(pair.positive)).strip() or not str(render_plain(pair.negative)).strip():
        raise DatasetError(f"{where} has an empty positive or negative text: both sides are needed")
    if pair.positive == pair.negative:
        raise DatasetError(
            f"{where} has the same positive and negative text ({_short(pair.positive)}): a pair must "
            "differ in the behaviour to steer; fix or drop it"
        )
    return pair


def _short(text: Text) -> str:
    plain = render_plain(text)
    return repr(plain if len(plain) <= 60 else plain[:57] + "...")


def check_pairs(pairs: Sequence[ContrastPair], limits: Limits | None = None) -> list[ContrastPair]:
    """Raise a clear :class:`DatasetError` if ``pairs`` is empty, one-sided or mistyped
    (each pair: :func:`check_pair`)."""
    pairs = list(pairs)
    if not pairs:
        raise DatasetError("no contrast pairs given: pass at least one ContrastPair")
    for i, p in enumerate(pairs):
        check_pair(p, f"item {i}" if not isinstance(p, ContrastPair) else f"pair {i}", limits)
    return pairs


def render_plain(text: Text) -> str:
    """Text of a side without any model (for validation and hashing)."""
    return text if isinstance(text, str) else f"{text.user} {text.assistant}"


def pair_texts(lm: Any, pairs: Sequence[ContrastPair]) -> tuple[list[str], list[Read]]:
    """Rendered texts and read positions of ``pairs``, interleaved ``[pos0, neg0, pos1, neg1, ...]``.

    Activations captured from them keep the order: positives are rows ``[0::2]``, negatives
    ``[1::2]``.

    Example:
        >>> pair_texts(None, pairs_from_lists(["Love"], ["Hate"]))
        (['Love', 'Hate'], ['last', 'last'])
    """
    texts: list[str] = []
    reads: list[Read] = []
    for p in pairs:
        texts += [render(p.positive, lm), render(p.negative, lm)]
        reads += [p.read, p.read]
    return texts, reads


def pairs_from_lists(positives: Sequence[Text], negatives: Sequence[Text], read: Read = "last") -> list[ContrastPair]:
    """Zip two equally long lists into pairs.

    Example:
        >>> pairs_from_lists(["Love"], ["Hate"])[0].negative
        'Hate'
    """
    if len(positives) != len(negatives):
        raise DatasetError(f"{len(positives)} positive but {len(negatives)} negative texts: the lists must pair up")
    return check_pairs([ContrastPair(p, n, read) for p, n in zip(positives, negatives)])


def _pair_from_record(rec: Any, where: str, read: Read, limits: Limits | None = None) -> ContrastPair:
    """One record of a pairs file as a pair; its text fields must hold text (:func:`text_field`)."""
    if not isinstance(rec, Mapping):
        raise DatasetError(f"{where}: expected an object with 'positive' and 'negative' keys")
    if "answer_matching_behavior" in rec:
        return caa_pair(rec, where, limits)
    if "positive" in rec and "negative" in rec:
        return ContrastPair(
            text_field(rec, "positive", where, limits),
            text_field(rec, "negative", where, limits),
            _read_of(rec, where, read),
        )
    raise DatasetError(
        f"{where}: needs 'positive' and 'negative' keys (or CAA 'question' / "
        "'answer_matching_behavior' / 'answer_not_matching_behavior')"
    )


def _read_of(rec: Mapping[str, Any], where: str, default: Read) -> Read:
    """A record's ``read`` field (a JSON ``[start, end]`` list is a slice), else ``default``."""
    read = rec.get("read", default)
    if isinstance(read, list) and len(read) == 2:
        read = tuple(read)
    try:
        return validate_read(read)
    except DatasetError as exc:
        raise DatasetError(f"{where}: field 'read': {exc}") from None


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
                check_pair(_pair_from_record(r, f"{path}[{i}]", read, limits), f"{path}[{i}]", limits)
                for i, r in enumerate(data)
            ],
            limits,
        )
    if suffix in _FILE_SOURCES:
        return check_pairs(list(_FILE_SOURCES[suffix](path, read, limits=limits)), limits)
    raise DatasetError(f"{path}: unknown pairs format {suffix!r}; use {', '.join(PAIR_FORMATS)}")


def answer_letter(answer: str, where: str = "item") -> str:
    """The letter of a CAA answer such as ``"(A)"`` or ``" (B)"``."""
    m = _ANSWER_RE.search(answer)
    if not m:
        raise DatasetError(f"{where}: answer {answer!r} has no '(X)' letter")
    return m.group(1)


def choice_letters(question: str) -> list[str]:
    """The choice letters offered in a CAA question (``(A)``, ``(B)``, ...)."""
    return sorted(set(_CHOICE_RE.findall(question)))


def ab_letters(question: str, matching: str, not_matching: str, where: str = "item") -> tuple[str, str]:
    """The two answer letters of a multiple-choice item, checked against the choices it offers.

    Shared by :func:`caa_pair` (vectors) and :mod:`steerlab.evaluate.behavior` (A/B read-outs), so
    an item is valid or invalid in the same way for both.

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


def caa_pair(rec: Mapping[str, Any], where: str = "item", limits: Limits | None = None) -> ContrastPair:
    """One CAA A/B item as a pair read at the answer letter.

    The question is the user turn, the answer ``"(A)"`` starts the assistant turn.
    """
    for key in ("question", "answer_matching_behavior", "answer_not_matching_behavior"):
        if key not in rec:
            raise DatasetError(f"{where}: CAA item lacks {key!r}")
    question = text_field(rec, "question", where, limits)
    matching = text_field(rec, "answer_matching_behavior", where, limits)
    not_matching = text_field(rec, "answer_not_matching_behavior", where, limits)
    match, other = ab_letters(question, matching, not_matching, where)
    return ContrastPair(ChatText(question, f"({match})"), ChatText(question, f"({other})"), "answer")


def caa_pairs(items: Iterable[dict[str, Any]]) -> list[ContrastPair]:
    """CAA A/B items (dicts) as contrast pairs read at the answer letter."""
    return check_pairs([caa_pair(rec, f"item {i}") for i, rec in enumerate(items)])


def load_caa(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Read a CAA-format JSON file (a list of A/B items), optionally the first ``limit`` items."""
    items = json_list(check_file(path, "CAA"), "CAA items")
    return items[:limit] if limit is not None else items


PERSONA_TEMPLATE = "Act as if you're extremely {persona}."


def persona_pairs(
    positive: str,
    negative: str,
    openings: Sequence[str],
    template: str = PERSONA_TEMPLATE,
) -> list[ContrastPair]:
    """RepE-style persona pairs: the same sentence opening under two persona instructions.

    Each pair is ``ChatText(template.format(persona=...), opening)``, read at the last token; the
    chat template is applied when the model has one.

    Example:
        >>> p = persona_pairs("happy", "sad", ["That game"])[0]
        >>> (p.positive.assistant, p.negative.user)
        ('That game', "Act as if you're extremely sad.")
    """
    if "{persona}" not in template:
        raise DatasetError("the persona template must contain '{persona}'")
    openings = [o for i, o in enumerate(openings) if DEFAULT_LIMITS.check_text(o, f"opening {i}").strip()]
    DEFAULT_LIMITS.check_text(positive, "the positive persona")
    DEFAULT_LIMITS.check_text(negative, "the negative persona")
    if not openings:
        raise DatasetError("no non-empty sentence openings given for persona_pairs")
    return check_pairs(
        [
            ContrastPair(
                ChatText(template.format(persona=positive), o),
                ChatText(template.format(persona=negative), o),
            )
            for o in openings
        ]
    )


TEXT_COLUMNS = ("statement", "text")
"""Fields / columns :func:`load_texts` reads a text from, in order of preference."""


def read_json_list(path: Path, what: str, limits: Limits | None = None) -> list[Any]:
    """The JSON list in ``path``; a :class:`DatasetError` naming the line of a syntax error, or
    saying it should be a list of ``what`` (:func:`steerlab.data.readers.json_list`)."""
    return json_list(Path(path), what, limits)


def _text_of(item: Any, where: str, limits: Limits | None) -> str:
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


# --------------------------------------------------------------------------- streamed contrast data
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
    def _records(self, start: int) -> Iterator[tuple[str, Any]]:
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

    def _pair(self, rec: Any, where: str) -> ContrastPair:
        if isinstance(rec, ContrastPair):
            return rec
        if self.columns and isinstance(rec, Mapping):
            rec = {**rec, **{ours: rec[theirs] for ours, theirs in self.columns.items() if theirs in rec}}
        return _pair_from_record(rec, where, self.read, self.limits)


class ListPairs(PairSource):
    """Pairs already in memory (a list), as a :class:`PairSource`."""

    def __init__(self, pairs: Sequence[ContrastPair], limits: Limits | None = None) -> None:
        self.items, self.limits = list(pairs), limits

    def _records(self, start: int) -> Iterator[tuple[str, Any]]:
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

    def _records(self, start: int) -> Iterator[tuple[str, Any]]:
        return jsonl_records(self.path, self.limits, start)

    def _count(self) -> int:
        return sum(1 for _ in jsonl_lines(self.path, self.limits))


class CsvPairs(_FileSource):
    """A ``.csv`` file with ``positive`` and ``negative`` columns (or renamed by ``columns``)."""

    def _records(self, start: int) -> Iterator[tuple[str, Any]]:
        names = [(self.columns or {}).get(k, k) for k in ("positive", "negative")]
        return csv_rows(self.path, names, self.limits, start)

    def _count(self) -> int:
        return sum(1 for _ in self._records(0))


def _optional(module: str, what: str) -> Any:
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

    def _records(self, start: int) -> Iterator[tuple[str, Any]]:
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

    def _records(self, start: int) -> Iterator[tuple[str, Any]]:
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
    source: Any,
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
