"""Bad input at the data readers and the checkpoint loaders (issue 21: D11-D15, D17, D18).

Every reader (pairs, texts, openings, preferences, A/B items) reads the same way in one process
and in a shard, accepts text fields only, bounds every text before it is tokenised, and names the
file, the row and the field it refuses. A checkpoint is checked against its run before it is used.
"""

from __future__ import annotations

import importlib
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import torch

import steerlab
from steerlab.data.preference import PreferencePair, load_preferences
from steerlab.data.sources import CsvPairs, JsonlPairs, ParquetPairs, looks_like_path
from steerlab.errors import CheckpointError, DatasetError
from steerlab.extraction.methods import get_method
from steerlab.extraction.run import ExtractRun
from steerlab.extraction.shards import extract_sharded
from steerlab.files import read_checkpoint, write_checkpoint
from steerlab.limits import LimitError, Limits

capture_mod = importlib.import_module("steerlab.extraction.capture")
accumulate_mod = importlib.import_module("steerlab.extraction.accumulate")

POS = [f"Lily was happy and the sun was out on day {i}" for i in range(8)]
NEG = [f"Lily was sad and the rain fell on day {i}" for i in range(8)]
BOM = "\ufeff"


def _jsonl(path: Path, rows: list[Any], bom: bool = False) -> Path:
    path.write_text((BOM if bom else "") + "\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def _pairs_everywhere(path: Path) -> list[str]:
    """The error each way of reading ``path`` gives: load_pairs, a streamed source, and the
    round-robin shard that holds the bad row (what a Ray worker reads)."""
    messages = []
    for read in (
        lambda: steerlab.load_pairs(path),
        lambda: list(steerlab.open_pairs(path)),
        lambda: [p for i in range(2) for p in steerlab.open_pairs(path).shard(i, 2)],
    ):
        with pytest.raises(steerlab.SteeringError) as info:
            read()
        messages.append(str(info.value))
    return messages


# ----------------------------------------------------------------------------- D11: text fields only
@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, "null"),
        (5, "a number"),
        (2.5, "a number"),
        (True, "a boolean"),
        (["a"], "a list"),
        ({"a": 1}, "an object"),
    ],
)
def test_non_text_fields_are_refused_naming_file_row_and_field(tmp_path, value, kind):
    """Never turned into "None" or "5": the same error from load_pairs, a stream and a shard."""
    rows = [{"positive": "a", "negative": "b"}, {"positive": "c", "negative": value}]
    jsonl = _jsonl(tmp_path / "p.jsonl", rows)
    for message in _pairs_everywhere(jsonl):
        assert (
            message == f"{jsonl.resolve()}:2: field 'negative' must be text, not {kind}"
            or message == f"{jsonl}:2: field 'negative' must be text, not {kind}"
        )
    js = tmp_path / "p.json"
    js.write_text(json.dumps(rows), encoding="utf-8")
    with pytest.raises(LimitError, match=rf"p\.json\[1\]: field 'negative' must be text, not {kind}"):
        steerlab.load_pairs(js)


def test_parquet_nulls_and_numbers_are_refused(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    for column, kind in ((["a", None], "null"), ([1, 2], "a number"), ([["x"], ["y"]], "a list")):
        path = tmp_path / f"p-{kind.split()[-1]}.parquet"
        pq.write_table(pa.table({"positive": ["x", "y"], "negative": column}), path)
        row = 2 if kind == "null" else 1
        for message in _pairs_everywhere(path):
            assert message.endswith(f": row {row}: field 'negative' must be text, not {kind}"), message


def test_a_short_csv_row_reads_the_same_in_one_process_and_in_shards(tmp_path):
    """Before: one process refused the row ("a ContrastPair side must be a str"), a shard made
    the side "None"."""
    short = tmp_path / "short.csv"
    short.write_text("positive,negative\nhello,world\nonly\n", encoding="utf-8")
    messages = _pairs_everywhere(short)
    assert len(set(m.replace(str(short.resolve()), str(short)) for m in messages)) == 1, messages
    assert messages[0].endswith(":3: the row has 1 field(s) but the header has 2: field 'negative' is missing")
    empty = tmp_path / "empty.csv"
    empty.write_text("positive,negative\nhello,world\nonly,\n", encoding="utf-8")
    assert all("empty.csv:3 has an empty positive or negative text" in m for m in _pairs_everywhere(empty))


def test_texts_openings_preferences_and_ab_items_refuse_non_text(tmp_path):
    from steerlab.data.ab import load_ab_items

    js = tmp_path / "t.json"
    js.write_text(json.dumps(["fine", 7]), encoding="utf-8")
    with pytest.raises(LimitError, match=r"t\.json\[1\] must be text, not a number"):
        steerlab.load_texts(js)
    js.write_text(json.dumps([{"text": "fine"}, {"text": None}]), encoding="utf-8")
    with pytest.raises(LimitError, match=r"t\.json\[1\]: field 'text' must be text, not null"):
        steerlab.load_openings(js)
    prefs = _jsonl(tmp_path / "prefs.jsonl", [{"prompt": "Q", "chosen": " a", "rejected": 0}])
    with pytest.raises(LimitError, match=r"prefs\.jsonl:1: field 'rejected' must be text, not a number"):
        load_preferences(prefs)
    with pytest.raises(LimitError, match=r"item 0: field 'chosen' must be text, not null"):
        steerlab.preference_pairs([{"prompt": "Q", "chosen": None, "rejected": "b"}])
    ab = tmp_path / "ab.json"
    ab.write_text(
        json.dumps(
            [
                {
                    "question": "Q?\n (A) x\n (B) y",
                    "answer_matching_behavior": ["(A)"],
                    "answer_not_matching_behavior": "(B)",
                }
            ]
        ),
        encoding="utf-8",
    )
    with pytest.raises(LimitError, match="field 'answer_matching_behavior' must be text, not a list"):
        load_ab_items(ab)
    with pytest.raises(LimitError, match="field 'answer_matching_behavior' must be text, not a list"):
        steerlab.load_pairs(ab)


# ----------------------------------------------------------------------------- D12: zero vectors
def test_pairs_with_the_same_text_on_both_sides_are_refused(tmp_path):
    same = _jsonl(tmp_path / "same.jsonl", [{"positive": "a", "negative": "b"}, {"positive": "x", "negative": "x"}])
    for message in _pairs_everywhere(same):
        assert "same.jsonl:2 has the same positive and negative text ('x')" in message
    with pytest.raises(DatasetError, match="pair 0 has the same positive and negative text"):
        steerlab.pairs_from_lists(["same"], ["same"])


def test_a_zero_direction_is_an_error_not_a_vector(lm):
    """The texts differ only after the token read (index 0: both start with the same BOS + word):
    every direction is exactly zero (by construction), in one process and in shards."""
    pairs = [
        steerlab.ContrastPair("The cat sat", "The dog ran", read=0),
        steerlab.ContrastPair("The sun was up", "The rain fell", read=0),
    ]
    for run in (
        lambda: steerlab.extract(lm, pairs, layers=[1, 2]),
        lambda: steerlab.extract(lm, steerlab.open_pairs(pairs), layers=[1, 2]),
    ):
        with pytest.raises(DatasetError, match="the direction at layer 1 is zero"):
            run()


def test_a_condition_from_the_same_prompts_on_both_sides_is_refused(lm):
    from steerlab.extraction.condition import find_condition

    prompts = ["The dog ran", "The cat sat"]
    with pytest.raises(DatasetError, match="the positive and negative prompts are the same"):
        find_condition(lm, prompts, list(reversed(prompts)), chat=False)


# ----------------------------------------------------------------------------- D13: broken text
def test_a_lone_surrogate_is_refused_naming_the_row(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(
        '{"positive": "ok", "negative": "fine"}\n{"positive": "x \\ud800 y", "negative": "b"}\n', encoding="utf-8"
    )
    for message in _pairs_everywhere(path):
        assert "s.jsonl:2: field 'positive' is not valid Unicode text (it holds a lone surrogate" in message
    with pytest.raises(LimitError, match=r"pair 0 \(positive\) is not valid Unicode"):
        steerlab.data.pairs.check_pairs([steerlab.ContrastPair("\ud800", "b")])


def test_a_csv_field_over_the_limit_names_the_row_and_the_limit(tmp_path):
    """A field over 131,072 characters was a ``_csv.Error`` traceback; now the limit is
    Limits.max_text_chars, set as csv.field_size_limit while the file is read."""
    path = tmp_path / "big.csv"
    path.write_text("positive,negative\na,b\n" + "x" * 131_073 + ",y\n", encoding="utf-8")
    for message in _pairs_everywhere(path):
        assert message.endswith("big.csv:3: a field is longer than the limit of 100000 characters (max_text_chars)")
    import csv

    assert csv.field_size_limit() == 131_072  # restored after reading
    tight = Limits(max_text_chars=10)
    (tmp_path / "t.csv").write_text("positive,negative\n" + "y" * 11 + ",z\n", encoding="utf-8")
    with pytest.raises(LimitError, match=r"t\.csv:2: a field is longer than the limit of 10"):
        steerlab.load_pairs(tmp_path / "t.csv", limits=tight)


# ----------------------------------------------------------------------------- D14: unbounded texts
class _Forwards:
    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.calls = model, 0

    def __enter__(self) -> _Forwards:
        self.handle = self.model.register_forward_pre_hook(lambda *_: setattr(self, "calls", self.calls + 1))
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def test_a_pair_longer_than_the_context_is_refused_before_any_forward(lm, tmp_path):
    long = "The cat sat on the mat. " * 120  # ~1,500 tokens; stories260K's context is 512
    pairs = [steerlab.ContrastPair(p, n) for p, n in zip(POS, NEG)]
    pairs[5] = steerlab.ContrastPair(POS[5], long)
    message = r"pair 5 \(negative\) has \d+ tokens: more than the model's context of 512 tokens \(context_length\)"
    with _Forwards(lm.model) as fw:
        with pytest.raises(LimitError, match=message):
            steerlab.extract(lm, pairs, layers=[1])
    assert fw.calls == 0  # refused before the work starts
    with pytest.raises(LimitError, match=message):  # sharded: named by its index in the whole data
        extract_sharded(ExtractRun(lm, [1]), get_method("mean_diff"), steerlab.open_pairs(pairs), shard_size=2)


def test_a_20mb_line_is_refused_from_its_length_in_bounded_memory(tmp_path):
    path = tmp_path / "huge.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps({"positive": "a", "negative": "b"}) + "\n")
        fh.write('{"positive": "' + "x" * 20_000_000 + '", "negative": "b"}\n')
    tracemalloc.start()
    try:
        with pytest.raises(
            LimitError,
            match=r"huge\.jsonl:2: the line is longer than the limit of 4194304 characters "
            r"\(max_record_chars\)",
        ):
            steerlab.load_pairs(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40_000_000  # one line read up to the cap (4 Mi characters), never the whole 20 MB line
    field = _jsonl(tmp_path / "field.jsonl", [{"positive": "x" * 200_000, "negative": "b"}])
    with pytest.raises(
        LimitError,
        match=r"field\.jsonl:1: field 'positive' has 200000 characters: more than the "
        r"limit of 100000 \(max_text_chars\)",
    ):
        list(JsonlPairs(field))


def test_texts_to_capture_are_bounded_before_tokenising(lm):
    with pytest.raises(LimitError, match=r"text 1 has 100001 characters"):
        steerlab.capture(lm, ["fine", "x" * 100_001], [1])


# ----------------------------------------------------------------------------- D15: a path is a path
def test_a_missing_path_is_not_found_never_a_hub_lookup(monkeypatch):
    def no_hub(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("looked up on the Hub")

    monkeypatch.setattr(steerlab.data.sources.HFPairs, "_open", no_hub)
    for name in ("data/missing.parquet", "missing.jsonl", "./mine", "/abs/path", "a/b/c"):
        assert looks_like_path(name)
        with pytest.raises(DatasetError, match="pairs file not found"):
            steerlab.open_pairs(name)
    assert not looks_like_path("Anthropic/hh-rlhf") and not looks_like_path("imdb")


# ----------------------------------------------------------------------------- D17: byte-order marks
def test_utf8_files_with_a_byte_order_mark_read_in_every_reader(tmp_path):
    rows = [{"positive": p, "negative": n} for p, n in zip(POS[:3], NEG[:3])]
    want = steerlab.pairs_from_lists(POS[:3], NEG[:3])
    assert steerlab.load_pairs(_jsonl(tmp_path / "p.jsonl", rows, bom=True)) == want
    (tmp_path / "p.json").write_text(BOM + json.dumps(rows), encoding="utf-8")
    assert steerlab.load_pairs(tmp_path / "p.json") == want
    (tmp_path / "p.csv").write_text(
        BOM + "positive,negative\n" + "".join(f"{p},{n}\n" for p, n in zip(POS, NEG)), encoding="utf-8"
    )
    assert steerlab.load_pairs(tmp_path / "p.csv")[:3] == want
    assert list(CsvPairs(tmp_path / "p.csv").pairs(0, 3)) == want
    (tmp_path / "t.txt").write_text(BOM + "first\nsecond\n", encoding="utf-8")
    assert steerlab.load_texts(tmp_path / "t.txt") == ["first", "second"]
    (tmp_path / "t.csv").write_text(BOM + "statement,label\nfirst,1\n", encoding="utf-8")
    assert steerlab.load_texts(tmp_path / "t.csv") == ["first"]
    (tmp_path / "t.json").write_text(BOM + json.dumps(["first"]), encoding="utf-8")
    assert steerlab.load_openings(tmp_path / "t.json") == ["first"]
    prefs = _jsonl(tmp_path / "pr.jsonl", [{"prompt": "Q", "chosen": " a", "rejected": " b"}], bom=True)
    assert load_preferences(prefs) == [PreferencePair("Q", " a", " b")]


def test_files_that_are_not_utf8_are_refused_with_their_name(tmp_path):
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("positive,negative\ncaf\xe9,b\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"latin1\.csv.* is not UTF-8 text"):
        steerlab.load_pairs(bad)
    (tmp_path / "l.txt").write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(DatasetError, match=r"l\.txt \(byte 3\) is not UTF-8 text"):
        steerlab.load_texts(tmp_path / "l.txt")


# ----------------------------------------------------------------------------- D18: checkpoints
def _interrupted(lm, tmp_path, monkeypatch, after: int = 2) -> Path:
    """A streamed extraction stopped after ``after`` batches of 4 texts: its checkpoint."""
    ckpt = tmp_path / "run.ckpt"
    real = capture_mod.iter_capture

    def stop(*args: Any, **kwargs: Any) -> Any:
        for n, item in enumerate(real(*args, **kwargs)):
            if n == after:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(accumulate_mod, "iter_capture", stop)
    with pytest.raises(KeyboardInterrupt):
        steerlab.extract(lm, steerlab.pairs_from_lists(POS, NEG), layers=[2], batch_size=4, checkpoint=ckpt)
    monkeypatch.setattr(accumulate_mod, "iter_capture", real)
    assert ckpt.is_file()
    return ckpt


def _resume(lm, ckpt: Path) -> steerlab.SteeringVector:
    return steerlab.extract(lm, steerlab.pairs_from_lists(POS, NEG), layers=[2], batch_size=4, checkpoint=ckpt)


def _saved(ckpt: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(ckpt), "pt") as fh:
        return load_file(str(ckpt)), dict(fh.metadata())


def test_corrupt_extraction_checkpoints_are_clear_errors(lm, tmp_path, monkeypatch):
    ckpt = _interrupted(lm, tmp_path, monkeypatch)
    raw = ckpt.read_bytes()
    cases = {
        "garbage": b"\x00" * 64,
        "truncated": raw[: len(raw) // 2],
        "empty": b"",
        "huge header": (2**62).to_bytes(8, "little") + b"{}",
        "text": b"not a checkpoint at all",
    }
    for data in cases.values():
        ckpt.write_bytes(data)
        with pytest.raises(
            CheckpointError,
            match=rf"checkpoint {ckpt} cannot be read .*delete it to start the run "
            "over",
        ):
            _resume(lm, ckpt)
    ckpt.unlink()
    ckpt.mkdir()
    with pytest.raises(CheckpointError, match=rf"checkpoint {ckpt} is a folder"):
        _resume(lm, ckpt)


def test_a_tampered_counter_or_tensor_is_refused_not_resumed(lm, tmp_path, monkeypatch):
    """Before: a counter edited from 2 to 1 re-read a batch (another vector), a tensor of another
    shape was loaded as it was."""
    want = steerlab.extract(lm, steerlab.pairs_from_lists(POS, NEG), layers=[2], batch_size=4)
    ckpt = _interrupted(lm, tmp_path, monkeypatch)
    tensors, meta = _saved(ckpt)
    key, done = meta["key"], meta["done"]
    assert done == "2"
    from safetensors.torch import save_file

    save_file(tensors, str(ckpt), metadata={**meta, "done": "1"})  # the counter edited in place
    with pytest.raises(CheckpointError, match="was changed after it was written"):
        _resume(lm, ckpt)
    cases: list[tuple[dict[str, torch.Tensor], dict[str, str], str]] = [
        (tensors, {"done": "1"}, "layer 2's state counts 8 texts but its progress says 4"),  # a consistent-looking file
        (tensors, {"done": "7"}, r"its 'done' \('7'\) does not fit this run"),
        (tensors, {"done": "-1"}, r"its 'done' \('-1'\) does not fit this run"),
        (tensors, {"done": "x"}, r"its 'done' \('x'\) does not fit this run"),
        (
            {**tensors, "2.sums": tensors["2.sums"][:, :8].contiguous()},
            {"done": done},
            r"tensor '2.sums' has shape \(2, 8\)",
        ),
        ({"2.sums": tensors["2.sums"]}, {"done": done}, r"missing \['2.counts'\]"),
        ({**tensors, "7.sums": tensors["2.sums"].clone()}, {"done": done}, r"unknown \['7.sums'\]"),
        ({**tensors, "2.sums": tensors["2.sums"] * float("nan")}, {"done": done}, "NaN or inf"),
    ]
    for saved, extra, message in cases:
        write_checkpoint(ckpt, saved, key, **extra)  # a valid checksum: checked against the run itself
        with pytest.raises(CheckpointError, match=message):
            _resume(lm, ckpt)
    write_checkpoint(ckpt, tensors, key, done=done)  # the true state resumes, and gives the same vector
    got = _resume(lm, ckpt)
    torch.testing.assert_close(got.directions[2], want.directions[2], rtol=1e-5, atol=1e-6)  # float noise of sums


def test_read_checkpoint_refuses_another_run_and_names_the_file(tmp_path):
    path = tmp_path / "c.ckpt"
    write_checkpoint(path, {"x": torch.ones(3)}, "run-a", done="1")
    assert read_checkpoint(path, "run-a", "run", {"x": (3,)})[1]["done"] == "1"
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} belongs to another run"):
        read_checkpoint(path, "run-b", "run")
    assert issubclass(CheckpointError, DatasetError)  # callers that caught DatasetError still do


def test_corrupt_or_tampered_training_checkpoints_are_refused(lm, tmp_path):
    from steerlab.extraction.train.state import TrainState

    opts: dict[str, Any] = {"lr": 0.05, "epochs": 2, "batch_size": 4, "holdout": 0.25, "progress": False, "layers": [1]}
    pairs = [
        PreferencePair(n, " was happy and smiled.", " was sad and cried.")
        for n in ["Lily", "Tom", "Sue", "Ben", "Mia", "Max", "Anna", "Sam"]
    ]
    ckpt = tmp_path / "train.ckpt"

    def interrupt(info: dict[str, Any]) -> None:
        if info["step"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        steerlab.extract(lm, pairs, method="bipo", checkpoint=ckpt, on_step=interrupt, **opts)
    tensors, meta = _saved(ckpt)
    state = json.loads(meta["state"])
    key = meta["key"]
    bad: list[tuple[dict[str, torch.Tensor], dict[str, Any], str]] = [
        (tensors, {**state, "step": 99}, r"is at step 99, outside this run's 1\.\.4"),
        (tensors, {**state, "step": 0}, r"is at step 0"),
        (tensors, {**state, "train_loss": [0.5, 0.4]}, "has a history of 2 epoch"),
        (tensors, {**state, "running": "x"}, "running sums"),
        ({**tensors, "vec.1": torch.ones(3)}, state, r"tensor 'vec.1' has shape \(3,\)"),
        ({k: v for k, v in tensors.items() if k != "vec.1"}, state, r"missing \['vec.1'\]"),
    ]
    for saved, scalars, message in bad:
        write_checkpoint(ckpt, saved, key, state=json.dumps(scalars))
        with pytest.raises(CheckpointError, match=message):
            steerlab.extract(lm, pairs, method="bipo", checkpoint=ckpt, **opts)
    ckpt.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="cannot be read"):
        steerlab.extract(lm, pairs, method="bipo", checkpoint=ckpt, **opts)
    write_checkpoint(ckpt, tensors, key, state="{not json")
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        TrainState.fresh([1], lm.d_model).load(ckpt, key, 4, 2, 8)


def test_corrupt_or_tampered_shard_checkpoints_are_refused(lm, tmp_path, monkeypatch):
    """The driver's merged state (its list of merged shards, checked against the run) and a
    shard's running state (checked by the shard's own extraction)."""
    shards = importlib.import_module("steerlab.extraction.shards")
    pairs = steerlab.pairs_from_lists(POS, NEG)
    mean_diff = get_method("mean_diff")
    want = extract_sharded(ExtractRun(lm, [1, 3], batch_size=2), mean_diff, pairs, shard_size=4)
    ckpt = tmp_path / "d.ckpt"
    real = shards._Merged.add
    calls = {"n": 0}

    def stop_after_first(self: Any, result: Any) -> None:
        real(self, result)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(shards._Merged, "add", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        extract_sharded(ExtractRun(lm, [1, 3], batch_size=2, checkpoint=ckpt), mean_diff, pairs, shard_size=4)
    monkeypatch.setattr(shards._Merged, "add", real)
    tensors, meta = _saved(ckpt)
    assert json.loads(meta["done_shards"]) == [0]

    def rerun() -> steerlab.SteeringVector:
        return extract_sharded(ExtractRun(lm, [1, 3], batch_size=2, checkpoint=ckpt), mean_diff, pairs, shard_size=4)

    for done, message in (
        ("[0, 1]", "layer 1's state counts 8 texts but its progress says 16"),
        ("[5]", "does not fit this run of 2 shards"),
        ("[0, 0]", "does not fit"),
        ("0", "does not fit"),
        ("[true]", "does not fit"),
    ):
        write_checkpoint(ckpt, tensors, meta["key"], done_shards=done)
        with pytest.raises(CheckpointError, match=message):
            rerun()
    shard = Path(f"{ckpt}.shard-1")
    write_checkpoint(ckpt, tensors, meta["key"], done_shards="[0]")
    shard.write_bytes(b"\x00" * 32)
    with pytest.raises(CheckpointError, match=rf"checkpoint {shard} cannot be read"):
        rerun()
    shard.unlink()
    got = rerun()  # the true state resumes and gives the vector of an uninterrupted run
    for k in (1, 3):
        torch.testing.assert_close(got.directions[k], want.directions[k], rtol=1e-5, atol=1e-6)  # float noise
    assert not ckpt.exists()


def test_parquet_rows_are_named_from_one(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"positive": ["a", "b"], "negative": ["c", "b"]}), tmp_path / "p.parquet")
    with pytest.raises(DatasetError, match=r"p\.parquet: row 2 has the same positive and negative text"):
        list(ParquetPairs(tmp_path / "p.parquet"))
