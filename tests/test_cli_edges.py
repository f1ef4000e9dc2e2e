"""Bad input at the command line (issue 21: D11-D17 and the help texts): one line on stderr, exit
code 2, nothing written, never a traceback (only ``--debug`` shows one), in one process and with
``--workers``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import steerlab
from steerlab.cli import app

from .conftest import CAA, STORIES

runner = CliRunner()
M = ["--model", str(STORIES)]
POS = [f"Lily was happy and the sun was out on day {i}" for i in range(6)]
NEG = [f"Lily was sad and the rain fell on day {i}" for i in range(6)]


def refused(args: list[str], *, code: int = 2) -> str:
    """Run ``steerlab --quiet ARGS``: it must exit with ``code``, print no traceback and leave no
    output folder; returns the output with line breaks and panel borders removed."""
    outs = [
        Path(args[i + 1]) for i, a in enumerate(args[:-1]) if a in ("--out", "-o") and not Path(args[i + 1]).exists()
    ]
    res = runner.invoke(app, ["--quiet", *args], env={"COLUMNS": "400"})  # typer's error panels: one line
    assert res.exit_code == code, res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    for out in outs:
        assert not out.exists()
    return " ".join(line.strip(" │╭╮╰╯─") for line in res.output.splitlines())


def extract_args(pairs: Path | str, tmp_path: Path, *more: str) -> list[str]:
    return ["extract", *M, "--pairs", str(pairs), "--layers", "1", "--out", str(tmp_path / "v"), *more]


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def vec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("v") / "happy"
    res = runner.invoke(app, ["--quiet", "extract", *M, "--persona", "happy:sad", "--layers", "1-3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


# ----------------------------------------------------------------------------- D11
@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_non_text_fields_exit_2_naming_file_row_and_field(tmp_path, workers):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows: list[Any] = [{"positive": p, "negative": n} for p, n in zip(POS, NEG)]
    jsonl = _jsonl(tmp_path / "p.jsonl", [*rows[:3], {"positive": None, "negative": "b"}])
    assert "p.jsonl:4: field 'positive' must be text, not null" in refused(extract_args(jsonl, tmp_path, *workers))
    js = tmp_path / "p.json"
    js.write_text(json.dumps([*rows[:2], {"positive": "a", "negative": 5}]), encoding="utf-8")
    assert "p.json[2]: field 'negative' must be text, not a number" in refused(extract_args(js, tmp_path, *workers))
    pq.write_table(pa.table({"positive": ["a", "b"], "negative": [["x"], ["y"]]}), tmp_path / "p.parquet")
    line = refused(extract_args(tmp_path / "p.parquet", tmp_path, *workers))
    assert "p.parquet: row 1: field 'negative' must be text, not a list" in line


def test_a_short_csv_row_is_refused_the_same_way_with_workers(tmp_path):
    short = tmp_path / "short.csv"
    short.write_text("positive,negative\n" + "".join(f"{p},{n}\n" for p, n in zip(POS, NEG)) + "only\n")
    one, two = (refused(extract_args(short, tmp_path, *w)) for w in ([], ["--workers", "2"]))
    assert one == two and "short.csv:8: the row has 1 field(s) but the header has 2: field 'negative' is missing" in one


# ----------------------------------------------------------------------------- D12
@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_pairs_with_the_same_sides_are_refused_not_a_zero_vector(tmp_path, workers):
    rows = [{"positive": p, "negative": n} for p, n in zip(POS, NEG)] + [{"positive": "same", "negative": "same"}]
    line = refused(extract_args(_jsonl(tmp_path / "same.jsonl", rows), tmp_path, *workers))
    assert "same.jsonl:7 has the same positive and negative text ('same')" in line


def test_condition_with_the_same_prompts_on_both_sides_is_refused(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("The dog ran\nThe cat sat\n")
    b.write_text("The cat sat\nThe dog ran\n")
    base = ["condition", *M, "--no-chat", "--out", str(tmp_path / "c")]
    assert "are the same file" in refused([*base, "--positive", str(a), "--negative", str(tmp_path / "." / "a.txt")])
    assert "the positive and negative prompts are the same" in refused(
        [*base, "--positive", str(a), "--negative", str(b)]
    )


# ----------------------------------------------------------------------------- D13
@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_a_lone_surrogate_exits_2_without_a_traceback(tmp_path, workers):
    path = tmp_path / "s.jsonl"
    path.write_text('{"positive": "ok", "negative": "fine"}\n{"positive": "\\ud800", "negative": "b"}\n')
    line = refused(extract_args(path, tmp_path, *workers))
    assert "s.jsonl:2: field 'positive' is not valid Unicode text" in line


def test_a_huge_csv_field_names_the_row_and_the_limit(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("positive,negative\na,b\n" + "x" * 131_073 + ",y\n")
    line = refused(extract_args(path, tmp_path))
    assert "big.csv:3: a field is longer than the limit of 100000 characters (max_text_chars)" in line


def test_bytes_that_are_not_utf8_in_an_argument_are_refused():
    """A non-UTF-8 byte on the command line arrives as a lone surrogate (\\udcff)."""
    assert "not valid Unicode" in refused(["generate", *M, "\udcff"])
    assert "not valid Unicode" in refused(["extract", *M, "--persona", "\udcff:sad", "--out", "x"])


# ----------------------------------------------------------------------------- D14
def test_a_pair_longer_than_the_context_is_refused_with_a_message(tmp_path):
    rows = [{"positive": p, "negative": n} for p, n in zip(POS, NEG)]
    rows[3]["negative"] = "The cat sat on the mat. " * 120  # ~1,500 tokens; the context is 512
    res = runner.invoke(app, ["--quiet", *extract_args(_jsonl(tmp_path / "long.jsonl", rows), tmp_path)])
    assert res.exit_code == 2 and not (tmp_path / "v").exists()
    assert "pair 3 (negative) has" in res.output and "more than the model's context of 512 tokens" in res.output
    assert "Token indices sequence length" not in res.output  # a refusal, not only transformers' warning


def test_a_20mb_line_is_refused_at_once(tmp_path):
    path = tmp_path / "huge.jsonl"
    path.write_text('{"positive": "' + "x" * 20_000_000 + '", "negative": "b"}\n')
    start = time.monotonic()
    line = refused(extract_args(path, tmp_path))
    assert "huge.jsonl:1: the line is longer than the limit of 4194304 characters (max_record_chars)" in line
    assert time.monotonic() - start < 10  # no tokenising, no forward pass


# ----------------------------------------------------------------------------- D15
@pytest.mark.parametrize(
    "args",
    [
        ["extract", *M, "--pairs", "data/missing.parquet"],
        ["extract", *M, "--persona", "happy:sad", "--openings", "missing.json"],
        ["condition", *M, "--positive", "missing.txt", "--negative", "missing2.txt"],
        ["eval", "cost", *M, "--vector", "V", "--texts", "missing.csv"],
        ["eval", "behavior", *M, "--vector", "no/such/vector", "--items", "x.json"],
        ["generate", "--model", "tests/missing-model", "hi"],
        ["eval", "sentiment", *M, "--vector", "V", "--scorer", "./missing-classifier"],
    ],
)
def test_a_missing_file_is_not_found_at_once(args, tmp_path):
    start = time.monotonic()
    line = refused([*args, "--out", str(tmp_path / "o")] if args[0] != "generate" else args)
    assert "not found" in line and "Hub" not in line
    assert time.monotonic() - start < 5  # no model load, no network retries


# ----------------------------------------------------------------------------- D16
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["extract", *M, "--persona", "happy:sad", "--layers", "99"], "layer 99 is outside the model"),
        (["extract", *M, "--persona", "happy:sad", "--layers", "1,1"], "layer 1 is given twice"),
        (["extract", *M, "--persona", "happy:sad", "--layers", "-9"], "layer -9 is outside the model"),
        (["extract", *M, "--persona", "happy:sad", "--layers", "3-1"], "runs backwards"),
        (["extract", *M, "--persona", "happy:sad", "--method", "bogus"], "unknown method 'bogus'"),
        (["extract", *M, "--pairs", "{tmp}", "--layers", "1"], "is a folder"),
        (["extract", *M, "--persona", "happy:sad", "--out-is-file"], "is a file: give a folder"),
        (["generate", *M, "--vector", "{vec}", "--positions", "5:2", "hi"], "0 <= start < end"),
        (["generate", *M, "--vector", "{vec}", "--positions", "actadd", "hi"], "positions='actadd'"),
        (["generate", *M, "--vector", "{vec}", "--layers", "4", "hi"], "not in the vector"),
        (
            ["generate", *M, "--vector", "{vec}", "--condition", "{cond}", "--threshold", "5", "hi"],
            "a cosine similarity lies in [-1, 1]",
        ),
        (["generate", *M, "--max-new-tokens", "100000", "hi"], "exceed the context"),
        (["sweep", "sentiment", "--vector", "{vec}", *M, "--layer-sets", "9"], "layer 9 is outside the model"),
        (["sweep", "sentiment", "--vector", "{vec}", *M, "--metric", "bogus", "--limit", "1"], "not 'bogus'"),
        (["sweep", "cost", "--vector", "{vec}", *M], "--data is required"),
        (["eval", "sentiment", "--vector", "{vec}", *M, "--layers", "4", "--limit", "1"], "not in the vector"),
        (["eval", "frontier", *M, "-v", "a={vec}", "--combine", "b", "--positive-prompt", "x"], "--combine 'b'"),
        (["eval", "frontier", *M, "-v", "a={tmp}/nope"], "not found"),
        (["analyze", "pca", *M, "--layer", "9", "--texts", "{texts}"], "layer 9 is outside the model"),
        (["analyze", "projection", "--vector", "{vec}", *M, "--pairs", "{pairs}", "--layers", "4"], "[4]"),
        (["analyze", "similarity", "{vec}", "{other}", "--layer", "2"], "no direction at layer 2"),
        (["export", "bake", "{vec}", "{tmp}/bk", *M, "--coef", "1", "--layers", "7"], "layer 7 is outside"),
        (["demo", *M, "--positive", "happy", "--negative", "happy"], "the same persona"),
        (["demo", *M, "--layers", "0-100000000"], "layer 100000000 is outside the model"),
    ],
)
def test_usage_errors_exit_2(args, message, tmp_path, vec_dir):
    cond = tmp_path / "cond"
    if "{cond}" in args:
        (tmp_path / "a.txt").write_text("The dog ran\nA dog barked\n")
        (tmp_path / "b.txt").write_text("It rained\nThe rain fell\n")
        res = runner.invoke(
            app,
            [
                "--quiet",
                "condition",
                *M,
                "--positive",
                str(tmp_path / "a.txt"),
                "--negative",
                str(tmp_path / "b.txt"),
                "--no-chat",
                "--out",
                str(cond),
            ],
        )
        assert res.exit_code == 0, res.output
    other = tmp_path / "other"
    if "{other}" in args:
        steerlab.SteeringVector.load(vec_dir).select([1]).save(other)
    texts, pairs = tmp_path / "t.txt", tmp_path / "p.jsonl"
    texts.write_text("Once upon a time\nThe dog ran\n")
    _jsonl(pairs, [{"positive": p, "negative": n} for p, n in zip(POS, NEG)])
    subs = {
        "{vec}": str(vec_dir),
        "{cond}": str(cond),
        "{tmp}": str(tmp_path),
        "{texts}": str(texts),
        "{pairs}": str(pairs),
        "{other}": str(other),
    }
    full = []
    for a in args:
        for k, v in subs.items():
            a = a.replace(k, v)
        full.append(a)
    if "--out-is-file" in full:
        (tmp_path / "file").write_text("x")
        full = [a for a in full if a != "--out-is-file"] + ["--out", str(tmp_path / "file")]
    elif full[0] in ("extract", "condition", "sweep", "eval", "analyze"):
        full += ["--out", str(tmp_path / "o")]
    line = refused(full)
    assert message in line, line


def test_negative_layers_are_resolved_and_recorded(tmp_path):
    out = tmp_path / "v"
    res = runner.invoke(app, ["--quiet", "extract", *M, "--persona", "happy:sad", "--layers", "-1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "run.json").read_text())["layers"] == [4]  # stories260K has 5 blocks
    assert steerlab.SteeringVector.load(out).layers == [4]
    out2 = tmp_path / "v2"
    res = runner.invoke(
        app, ["--quiet", "extract", *M, "--persona", "happy:sad", "--layers", "-2--1", "--out", str(out2)]
    )
    assert res.exit_code == 0 and json.loads((out2 / "run.json").read_text())["layers"] == [3, 4]


def test_a_huge_layer_range_fails_at_once(tmp_path):
    start = time.monotonic()
    line = refused(["extract", *M, "--persona", "happy:sad", "--layers", "0-100000000", "--out", str(tmp_path / "v")])
    assert "layer 100000000 is outside the model: it has 5 blocks" in line
    assert time.monotonic() - start < 5  # the range is bounded by the model before it is expanded


# ----------------------------------------------------------------------------- D17
def test_excel_csv_with_a_byte_order_mark_extracts(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(
        ("\ufeffpositive,negative\r\n" + "".join(f"{p},{n}\r\n" for p, n in zip(POS, NEG))).encode("utf-8")
    )
    res = runner.invoke(app, ["--quiet", *extract_args(path, tmp_path)])
    assert res.exit_code == 0, res.output
    want = steerlab.extract(steerlab.load_model(STORIES), steerlab.pairs_from_lists(POS, NEG), layers=[1])
    assert steerlab.SteeringVector.load(tmp_path / "v").data_hash == want.data_hash


# ----------------------------------------------------------------------------- help and messages
def test_help_and_messages_keep_square_brackets(tmp_path):
    for cmd in (["extract"], ["sweep"]):
        res = runner.invoke(app, [*cmd, "--help"], env={"COLUMNS": "250"})
        assert res.exit_code == 0 and "pip install steerlab[ray]" in res.output, res.output
    weird = tmp_path / "data[ray]" / "[bold]pairs.jsonl"
    line = refused(["extract", *M, "--pairs", str(weird), "--out", str(tmp_path / "v")])
    assert "data[ray]/[bold]pairs.jsonl" in line
    bad = tmp_path / "[red]bad.jsonl"
    _jsonl(bad, [{"positive": "[ray] a", "negative": "[ray] a"}])
    line = refused(extract_args(bad, tmp_path))
    assert "[red]bad.jsonl:1 has the same positive and negative text ('[ray] a')" in line


def test_no_traceback_for_an_unexpected_error_unless_debug(tmp_path, monkeypatch):
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("surprise")

    monkeypatch.setattr(steerlab, "load_pairs", boom)
    path = _jsonl(tmp_path / "p.jsonl", [{"positive": "a", "negative": "b"}])
    line = refused(extract_args(path, tmp_path), code=1)
    assert "error: KeyError: 'surprise' (rerun with --debug for the traceback)" in line
    res = runner.invoke(app, ["--debug", *extract_args(path, tmp_path)])
    assert isinstance(res.exception, KeyError)


def test_ab_items_with_non_text_answers_exit_2(tmp_path, vec_dir):
    items = json.loads((CAA / "test" / "refusal" / "test_dataset_ab.json").read_text())[:2]
    items[1]["answer_matching_behavior"] = None
    path = tmp_path / "ab.json"
    path.write_text(json.dumps(items))
    line = refused(
        ["eval", "behavior", *M, "--vector", str(vec_dir), "--items", str(path), "--out", str(tmp_path / "o")]
    )
    assert "ab.json item 1: field 'answer_matching_behavior' must be text, not null" in line


@pytest.fixture()
def ray_local() -> Any:
    """A local Ray instance of 2 CPUs for one test, stopped afterwards."""
    ray = pytest.importorskip("ray")
    from steerlab.distributed import shutdown_pool

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    shutdown_pool()
    ray.shutdown()


def test_a_pair_over_the_context_on_ray_workers_is_the_workers_own_error(tmp_path, ray_local):
    """A shard refuses the pair on its worker; the driver prints that error, not Ray's traceback of it."""
    rows = [{"positive": p, "negative": n} for p, n in zip(POS, NEG)]
    rows[3]["negative"] = "The cat sat on the mat. " * 120
    line = refused(extract_args(_jsonl(tmp_path / "long.jsonl", rows), tmp_path, "--workers", "2"))
    assert "error: pair 3 (negative) has" in line and "more than the model's context of 512 tokens" in line
    assert "RayTaskError" not in line and 'File "' not in line
