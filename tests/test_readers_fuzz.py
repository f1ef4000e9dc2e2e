"""Property-based tests (hypothesis, derandomized: the same examples on every run) over the data
readers and the checkpoint loader (issue 21): arbitrary bytes or records either load correctly or
raise a SteeringError — never another exception type — and what loads round-trips.

Budget: a few hundred examples per reader, about 20 s in all on two cores.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import steerlab
from steerlab.data.ab import load_ab_items
from steerlab.data.preference import load_preferences
from steerlab.data.readers import DEFAULT_LIMITS
from steerlab.errors import CheckpointError, SteeringError
from steerlab.files import read_checkpoint, write_checkpoint

FUZZ = settings(
    derandomize=True,
    deadline=None,
    max_examples=150,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ROUND_TRIP = settings(FUZZ, max_examples=120)

# Text that a UTF-8 file can hold (no lone surrogates: they cannot be written; the JSON escape
# "\ud800" is fuzzed separately, through JSON values).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=24)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
FIELD = st.one_of(TEXT, TEXT, JSON_VALUE, st.just("\ud800"), st.just(" "), st.just(""))
RECORD = st.fixed_dictionaries({"positive": FIELD, "negative": FIELD})
BYTES = st.binary(max_size=300) | st.builds(lambda s: s.encode("utf-8", "surrogatepass"), st.text(max_size=80))


@contextmanager
def a_file(name: str, data: bytes) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / name
        path.write_bytes(data)
        yield path


def loads_or_refuses(read: Callable[[], Any]) -> Any:
    """``read()``'s result, or ``None`` when it raised a SteeringError; any other exception fails."""
    try:
        return read()
    except SteeringError:
        return None


def expected_pair(rec: dict[str, Any]) -> steerlab.ContrastPair | None:
    """The pair a record makes, or None when the readers must refuse it (the rules of
    steerlab.data.readers.text_field and steerlab.data.pairs.check_pair, stated here on their own)."""
    pos, neg = rec["positive"], rec["negative"]
    for side in (pos, neg):
        if not isinstance(side, str) or not side.strip() or len(side) > DEFAULT_LIMITS.max_text_chars:
            return None
        try:
            side.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return None if pos == neg else steerlab.ContrastPair(pos, neg)


def expected_pairs(records: list[dict[str, Any]]) -> list[steerlab.ContrastPair] | None:
    pairs = [expected_pair(r) for r in records]
    return None if not pairs or any(p is None for p in pairs) else pairs  # type: ignore[return-value]


# ----------------------------------------------------------------------------- arbitrary bytes
@FUZZ
@given(data=BYTES, suffix=st.sampled_from([".json", ".jsonl", ".csv"]))
def test_pair_readers_load_or_refuse_any_bytes(data: bytes, suffix: str) -> None:
    with a_file("p" + suffix, data) as path:
        got = loads_or_refuses(lambda: steerlab.load_pairs(path))
        streamed = loads_or_refuses(lambda: list(steerlab.open_pairs(path)))
    assert got is None or all(isinstance(p, steerlab.ContrastPair) for p in got)
    if suffix != ".json":  # a stream reads lazily: an empty file is an empty stream, not an error
        assert got == streamed or (got is None and streamed == [])


@FUZZ
@given(data=BYTES, suffix=st.sampled_from([".txt", ".json", ".jsonl", ".csv"]), strip=st.booleans())
def test_text_readers_load_or_refuse_any_bytes(data: bytes, suffix: str, strip: bool) -> None:
    with a_file("t" + suffix, data) as path:
        got = loads_or_refuses(lambda: steerlab.load_texts(path, strip=strip))
    assert got is None or (got and all(isinstance(t, str) and t.strip() for t in got))


@FUZZ
@given(data=BYTES, suffix=st.sampled_from([".json", ".jsonl"]))
def test_preference_and_ab_readers_load_or_refuse_any_bytes(data: bytes, suffix: str) -> None:
    with a_file("r" + suffix, data) as path:
        loads_or_refuses(lambda: load_preferences(path))
        if suffix == ".json":
            loads_or_refuses(lambda: load_ab_items(path))


# ----------------------------------------------------------------------------- records round-trip
@ROUND_TRIP
@given(records=st.lists(RECORD, min_size=1, max_size=4), bom=st.booleans())
def test_json_and_jsonl_records_round_trip_or_are_refused(records: list[dict[str, Any]], bom: bool) -> None:
    want = expected_pairs(records)
    head = "\ufeff" if bom else ""
    lines = head + "\n".join(json.dumps(r) for r in records) + "\n"
    for name, text in (("p.jsonl", lines), ("p.json", head + json.dumps(records))):
        with a_file(name, text.encode("utf-8")) as path:
            assert loads_or_refuses(lambda: steerlab.load_pairs(path)) == want, name
            if name.endswith(".jsonl"):
                shards = loads_or_refuses(lambda: [p for i in range(2) for p in steerlab.open_pairs(path).shard(i, 2)])
                assert (shards is None) == (want is None)  # a shard refuses what one process refuses


@ROUND_TRIP
@given(rows=st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=4), bom=st.booleans())
def test_csv_rows_round_trip_or_are_refused(rows: list[tuple[str, str]], bom: bool) -> None:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(["positive", "negative"])
    writer.writerows(rows)
    want = expected_pairs([{"positive": p, "negative": n} for p, n in rows])
    with a_file("p.csv", (("\ufeff" if bom else "") + buf.getvalue()).encode("utf-8")) as path:
        assert loads_or_refuses(lambda: steerlab.load_pairs(path)) == want
        assert loads_or_refuses(lambda: list(steerlab.open_pairs(path))) == want


@ROUND_TRIP
@given(
    records=st.lists(
        st.fixed_dictionaries({"positive": st.none() | TEXT, "negative": st.none() | TEXT}), min_size=1, max_size=4
    )
)
def test_parquet_rows_round_trip_or_are_refused(records: list[dict[str, Any]]) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / "p.parquet"
        table = pa.table({k: pa.array([r[k] for r in records], pa.string()) for k in ("positive", "negative")})
        pq.write_table(table, path)
        assert loads_or_refuses(lambda: steerlab.load_pairs(path)) == expected_pairs(records)


@ROUND_TRIP
@given(texts=st.lists(TEXT.filter(lambda t: "\n" not in t and "\r" not in t), min_size=1, max_size=5))
def test_text_lists_round_trip(texts: list[str]) -> None:
    want = [t for t in texts if t.strip()] or None
    with a_file("t.txt", ("\n".join(texts) + "\n").encode("utf-8")) as path:
        assert loads_or_refuses(lambda: steerlab.load_texts(path, strip=False)) == want
    with a_file("t.json", json.dumps(texts).encode("utf-8")) as path:
        assert loads_or_refuses(lambda: steerlab.load_openings(path)) == want


# ----------------------------------------------------------------------------- checkpoints
TENSORS = st.dictionaries(
    st.text("abc.0123", min_size=1, max_size=6),
    st.tuples(st.sampled_from([torch.float32, torch.float64, torch.int64]), st.lists(st.integers(1, 3), max_size=2)),
    min_size=1,
    max_size=3,
)


def _tensors(spec: dict[str, tuple[torch.dtype, list[int]]], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: (torch.randn(shape, generator=g) * 10).to(dtype) for name, (dtype, shape) in spec.items()}


@FUZZ
@given(data=BYTES)
def test_the_checkpoint_loader_refuses_any_bytes(data: bytes) -> None:
    with a_file("c.ckpt", data) as path, pytest.raises(CheckpointError, match=str(path)):
        read_checkpoint(path, "key", "run")


@ROUND_TRIP
@given(
    spec=TENSORS,
    seed=st.integers(0, 2**16),
    meta=st.dictionaries(st.sampled_from(["done", "note"]), TEXT),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=3),
)
def test_checkpoints_round_trip_and_any_damage_is_refused(
    spec: Any, seed: int, meta: dict[str, str], flips: list[tuple[int, int]]
) -> None:
    tensors = _tensors(spec, seed)
    shapes = {k: tuple(t.shape) for k, t in tensors.items()}
    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / "c.ckpt"
        write_checkpoint(path, tensors, "key", **meta)
        got, saved = read_checkpoint(path, "key", "run", shapes)
        assert set(got) == set(tensors) and all(torch.equal(got[k], tensors[k]) for k in tensors)
        assert {k: saved[k] for k in meta} == meta
        raw = bytearray(path.read_bytes())
        for at, xor in flips:
            raw[at % len(raw)] ^= xor
        path.write_bytes(bytes(raw))
        try:
            again, _ = read_checkpoint(path, "key", "run", shapes)
        except CheckpointError:
            return
        # a change that still reads (e.g. in the header's padding) must give back the same state
        assert set(again) == set(tensors) and all(torch.equal(again[k], tensors[k]) for k in tensors)
