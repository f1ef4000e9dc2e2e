"""The command line: typer's runner for most commands, one real subprocess end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import steerlab
from steerlab.cli import app
from steerlab.cli.common import parse_float_list, parse_int_list, parse_positions

from .conftest import STORIES
from .context_fit import ab_records_within_context

runner = CliRunner()
M = ["--model", str(STORIES)]


def invoke(*args: str):
    return runner.invoke(app, ["--quiet", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def vec_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("v") / "happy"
    res = invoke("extract", *M, "--persona", "happy:sad", "--layers", "1-3", "--out", str(out))
    assert res.exit_code == 0, res.output
    return out


def test_parsers():
    assert parse_int_list("8-10,12") == [8, 9, 10, 12]
    assert parse_int_list("-1") == [-1]
    assert parse_float_list("-4,0,4") == [-4.0, 0.0, 4.0]
    assert parse_positions("3:") == (3, None) and parse_positions("0:8") == (0, 8)
    assert parse_positions("generated") == "generated"


def test_extract_writes_vector_and_manifest(vec_dir):
    assert (vec_dir / "vector.safetensors").is_file()
    manifest = json.loads((vec_dir / "run.json").read_text())
    assert manifest["model_id"] == "stories260K" and manifest["model_hash"] and manifest["data_hash"]
    assert manifest["command"][:2] == ["steerlab", "--quiet"] or manifest["command"][0] == "steerlab"


def test_extract_without_prefix_sharing_gives_the_same_vector(vec_dir, tmp_path):
    import steerlab

    out = tmp_path / "full"
    res = invoke("extract", *M, "--persona", "happy:sad", "--layers", "1-3", "--no-share-prefix", "--out", str(out))
    assert res.exit_code == 0, res.output
    shared, full = steerlab.SteeringVector.load(vec_dir), steerlab.SteeringVector.load(out)
    for k in (1, 2, 3):
        assert torch.allclose(shared.directions[k], full.directions[k], rtol=1e-4, atol=1e-5)


def test_inspect_json(vec_dir):
    res = runner.invoke(app, ["--json", "inspect", str(vec_dir)])
    assert res.exit_code == 0
    info = json.loads(res.stdout)
    assert info["layers"] == [1, 2, 3] and info["method"] == "mean_diff"


def test_generate_compare_and_compose(vec_dir):
    res = runner.invoke(
        app,
        [
            "--json",
            "generate",
            *M,
            "--vector",
            str(vec_dir),
            "--coef",
            "2",
            "--vector",
            str(vec_dir),
            "--coef",
            "-1",
            "--compare",
            "--max-new-tokens",
            "6",
            "The cat",
            "Lily",
        ],
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["prompt"] for r in rows] == ["The cat", "Lily"]
    assert all("baseline" in r and "output" in r for r in rows)


def test_export_import_gguf(vec_dir, tmp_path):
    g = tmp_path / "v.gguf"
    assert invoke("export", "gguf", str(vec_dir), str(g)).exit_code == 0
    back = tmp_path / "back"
    assert invoke("import", "gguf", str(g), str(back), *M).exit_code == 0
    res = runner.invoke(app, ["--json", "inspect", str(back)])
    assert json.loads(res.stdout)["layers"] == [1, 2, 3]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["extract", *M, "--pairs", "missing.jsonl", "--out", "x"], "not found"),
        (["extract", *M, "--persona", "happy:sad", "--method", "nope", "--out", "x"], "unknown method"),
        (["extract", *M, "--persona", "happy:sad", "--layers", "1-9", "--out", "x"], "outside the model"),
        (["inspect", "no-such-dir"], "not found"),
    ],
)
def test_bad_input_errors_are_one_line(args, message, tmp_path):
    res = runner.invoke(app, args)
    assert res.exit_code == 2  # bad input is a usage error (issue 21, D16), found before any work
    assert message in res.output and "Traceback" not in res.output


def test_malformed_jsonl_names_the_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"positive": "a", "negative": "b"}\n{oops}\n')
    res = runner.invoke(app, ["extract", *M, "--pairs", str(f), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "p.jsonl:2" in res.output


def test_vector_for_another_model(tmp_path, vec_dir):
    import torch

    from steerlab import SteeringVector

    SteeringVector({1: torch.ones(32)}, "other", 32, 5).save(tmp_path / "other")
    res = runner.invoke(app, ["generate", *M, "--vector", str(tmp_path / "other"), "The cat"])
    assert res.exit_code == 1 and "extract a new vector" in res.output


def test_usage_errors_exit_2(vec_dir):
    assert runner.invoke(app, ["extract", *M, "--out", "x"]).exit_code == 2  # neither --pairs nor --persona
    two_coefs = ["generate", *M, "--vector", str(vec_dir), "--coef", "1", "--coef", "2", "x"]
    assert runner.invoke(app, two_coefs).exit_code == 2
    assert runner.invoke(app, ["extract", *M, "--persona", "happy:sad", "--layers", "a-b", "--out", "x"]).exit_code == 2


def test_every_command_has_an_example_in_help():
    for cmd in (["demo"], ["generate"], ["extract"], ["inspect"], ["export", "gguf"], ["import", "gguf"]):
        res = runner.invoke(app, [*cmd, "--help"])
        assert res.exit_code == 0 and "Example:" in res.output, cmd


def test_subprocess_end_to_end(tmp_path):
    env = {**os.environ, "STEERLAB_QUIET": "1"}
    exe = [sys.executable, "-m", "steerlab"]
    out = tmp_path / "v"
    subprocess.run(
        [*exe, "--quiet", "extract", *M, "--persona", "happy:sad", "--layers", "2", "--out", str(out)],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    res = subprocess.run(
        [
            *exe,
            "--json",
            "generate",
            *M,
            "--vector",
            str(out),
            "--coef",
            "3",
            "--compare",
            "--max-new-tokens",
            "5",
            "Once upon a time",
        ],
        check=True,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    row = json.loads(res.stdout)[0]
    assert row["prompt"] == "Once upon a time" and row["baseline"] and row["output"]


@pytest.mark.slow
def test_demo_on_default_model_in_a_subprocess():
    from steerlab.models.load import default_gguf_path

    default_gguf_path()  # here, not in the subprocess: skips (conftest) if the model cannot be had
    res = subprocess.run(
        [sys.executable, "-m", "steerlab", "--json", "demo", "--max-new-tokens", "8"],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    rows = json.loads(res.stdout)
    assert len(rows) == 3
    # the packaged setting is the frontier's least push inside 1.15x perplexity (c = +/-0.25): over 8
    # tokens a row may keep the baseline's words; each steered column changes most rows (which way
    # they read, over all 24 openings, is tests/test_demo_columns.py's)
    for column in ("positive", "negative"):
        assert sum(r["baseline"] != r[column] for r in rows) >= 2, (column, rows)
    assert all(set(r["sentiment"]) == set(r["mean_sentiment"]) == {"baseline", "positive", "negative"} for r in rows)


# ---------------------------------------------------------------- eval / sweep / analyze
def _run_json(*args: str) -> dict:
    res = runner.invoke(app, ["--json", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_eval_sentiment_and_cost(vec_dir, tmp_path):
    out = tmp_path / "s"
    data = _run_json(
        "eval",
        "sentiment",
        *M,
        "--vector",
        str(vec_dir),
        "--coefs",
        "-2,0,2",
        "--limit",
        "3",
        "--max-new-tokens",
        "4",
        "--out",
        str(out),
    )
    assert data["kind"] == "SentimentReport" and len(data["rows"]) == 3
    assert {p.name for p in out.iterdir()} >= {"sentiment.json", "sentiment.md", "sentiment.png", "run.json"}
    texts = tmp_path / "t.txt"
    texts.write_text("Once upon a time there was a cat.\nThe dog ran to the park.\n")
    data = _run_json(
        "eval",
        "cost",
        *M,
        "--vector",
        str(vec_dir),
        "--texts",
        str(texts),
        "--coefs",
        "0,4",
        "--out",
        str(tmp_path / "c"),
    )
    assert data["kl"][0] == 0.0 and data["kl"][1] > 0
    assert (tmp_path / "c" / "cost.json").is_file()
    # `eval fluency`, the older name of the command, still runs the same measurement
    alias = _run_json(
        "eval",
        "fluency",
        *M,
        "--vector",
        str(vec_dir),
        "--texts",
        str(texts),
        "--coefs",
        "0,4",
        "--out",
        str(tmp_path / "f"),
    )
    assert alias["kl"] == data["kl"] and (tmp_path / "f" / "fluency.json").is_file()


def test_eval_behavior(vec_dir, tmp_path):
    from .conftest import CAA

    items = tmp_path / "syc_fits.json"  # stories260K's context holds about half of them (longer ones are refused)
    lm = steerlab.load_model(str(STORIES))
    items.write_text(json.dumps(ab_records_within_context(lm, CAA / "test" / "sycophancy" / "test_dataset_ab.json", 4)))
    data = _run_json(
        "eval",
        "behavior",
        *M,
        "--vector",
        str(vec_dir),
        "--items",
        str(items),
        "--limit",
        "4",
        "--out",
        str(tmp_path / "b"),
    )
    assert data["kind"] == "BehaviorReport" and len(data["rows"]) == 3
    assert json.loads((tmp_path / "b" / "run.json").read_text())["data_hash"]
    assert [r["coefficient"] for r in data["rows"]] == [-1.0, 0.0, 1.0]
    # --multipliers is the hidden, deprecated spelling of --coefs
    old = _run_json(
        "eval",
        "behavior",
        *M,
        "--vector",
        str(vec_dir),
        "--items",
        str(items),
        "--limit",
        "4",
        "--multipliers",
        "0,2",
        "--out",
        str(tmp_path / "m"),
    )
    assert [r["coefficient"] for r in old["rows"]] == [0.0, 2.0]
    assert "--multipliers" not in runner.invoke(app, ["eval", "behavior", "--help"]).output


def test_sweep_and_autotune(vec_dir, tmp_path):
    data = _run_json(
        "sweep",
        "sentiment",
        *M,
        "--vector",
        str(vec_dir),
        "--layer-sets",
        "1;2-3",
        "--coefs",
        "-2,0,2",
        "--limit",
        "2",
        "--max-new-tokens",
        "4",
        "--out",
        str(tmp_path / "sw"),
    )
    assert data["layer_sets"] == [[1], [2, 3]]
    assert (tmp_path / "sw" / "sweep_sentiment.png").is_file()
    data = _run_json(
        "sweep",
        "sentiment",
        *M,
        "--vector",
        str(vec_dir),
        "--autotune",
        "--coefs",
        "1,4",
        "--limit",
        "4",
        "--max-new-tokens",
        "4",
        "--out",
        str(tmp_path / "at"),
    )
    assert data["kind"] == "AutotuneReport" and set(data["held_out"]) == {"baseline", "steered"}


def test_sweep_unknown_evaluation_is_a_usage_error(vec_dir, tmp_path):
    res = runner.invoke(app, ["sweep", "nope", *M, "--vector", str(vec_dir), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "unknown evaluation 'nope'" in res.output
    res = runner.invoke(app, ["sweep", "cost", *M, "--vector", str(vec_dir), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--data is required" in res.output


def _jsonable(d: dict) -> dict:
    """A report dict as the CLI's --json prints it (JSON types)."""
    return json.loads(json.dumps(d))


def test_analyze_commands(vec_dir, tmp_path):
    from steerlab.analysis import breakdown_curve, layer_similarity, projection

    pairs = tmp_path / "p.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"positive": f"Lily was happy {i}", "negative": f"Lily was sad {i}"}) + "\n" for i in range(4)
        )
    )
    data = _run_json(
        "analyze",
        "pca",
        *M,
        "--pairs",
        str(pairs),
        "--layer",
        "2",
        "--components",
        "3",
        "--save-direction",
        str(tmp_path / "pc1"),
        "--out",
        str(tmp_path / "pca"),
    )
    assert data["kind"] == "PCAReport" and (tmp_path / "pc1" / "vector.safetensors").is_file()
    # each command prints what the library computes on the same inputs, and writes its figure
    lm, vec = steerlab.load_model(STORIES), steerlab.SteeringVector.load(vec_dir)
    data = _run_json(
        "analyze", "projection", *M, "--vector", str(vec_dir), "--pairs", str(pairs), "--out", str(tmp_path / "proj")
    )
    assert data == _jsonable(projection(lm, steerlab.load_pairs(pairs), vec).to_dict())
    assert data["kind"] == "ProjectionReport" and sorted(map(int, data["layers"])) == vec.layers
    data = _run_json("analyze", "similarity", str(vec_dir), "--out", str(tmp_path / "sim"))
    assert data == _jsonable(layer_similarity(vec).to_dict())
    assert all(abs(row[i] - 1.0) < 1e-6 for i, row in enumerate(data["matrix"]))
    texts = tmp_path / "t.txt"
    texts.write_text("Once upon a time there was a cat.\nThe dog ran to the park.\n")
    data = _run_json(
        "analyze",
        "breakdown",
        *M,
        "--vector",
        str(vec_dir),
        "--texts",
        str(texts),
        "--coefs",
        "0,1,4,16",
        "--out",
        str(tmp_path / "bd"),
    )
    direct = breakdown_curve(lm, vec, steerlab.load_texts(texts), coefficients=[0, 1, 4, 16])
    assert data == _jsonable(direct.to_dict())
    assert data["kind"] == "BreakdownReport"
    for name in ("proj", "sim", "bd"):
        assert list((tmp_path / name).glob("*.png")), name
    for cmd in (
        ["eval", "sentiment"],
        ["eval", "behavior"],
        ["eval", "cost"],
        ["eval", "fluency"],
        ["sweep"],
        ["analyze", "pca"],
        ["analyze", "projection"],
        ["analyze", "similarity"],
        ["analyze", "breakdown"],
    ):
        assert "Example:" in runner.invoke(app, [*cmd, "--help"]).output, cmd


# ---------------------------------------------------------------- malformed vectors, bad numbers
def _one_line_error(res, code: int) -> str:
    """The command failed with ``code`` and one 'error:' line, no traceback; returns that line."""
    assert res.exit_code == code, res.output
    assert isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.output
    return lines[0]


@pytest.mark.parametrize(
    ("change", "field"), [({"layers": 5}, "layers"), ({"meta": [1, 2]}, "meta"), ({"d_model": "abc"}, "d_model")]
)
def test_malformed_vector_is_a_one_line_error(vec_dir, tmp_path, change, field):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(vec_dir, bad)
    cfg = json.loads((bad / "steering_config.json").read_text())
    cfg.update(change)
    (bad / "steering_config.json").write_text(json.dumps(cfg))
    texts = tmp_path / "t.txt"
    texts.write_text("Once upon a time there was a cat.\n")
    for args in (
        ["inspect", str(bad)],
        ["eval", "fluency", *M, "--vector", str(bad), "--texts", str(texts), "--out", str(tmp_path / "f")],
        ["generate", *M, "--vector", str(bad), "The cat"],
        ["export", "gguf", str(bad), str(tmp_path / "x.gguf")],
    ):
        line = _one_line_error(runner.invoke(app, ["--quiet", *args]), 1)
        assert f"'{field}' must be" in line, (args, line)
    assert not (tmp_path / "f").exists() and not (tmp_path / "x.gguf").exists()


def test_malformed_gguf_metadata_is_a_one_line_error(tmp_path):
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "bad.gguf"
    writer = GGUFWriter(str(path), "controlvector")
    writer.add_string("steerlab.meta", "{not json")
    writer.add_tensor("direction.1", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    line = _one_line_error(runner.invoke(app, ["inspect", str(path)]), 1)
    assert "steerlab.meta is not valid JSON" in line


@pytest.mark.parametrize(
    "args",
    [
        ["extract", *M, "--persona", "happy:sad", "--batch-size", "0"],
        ["extract", *M, "--persona", "happy:sad", "--batch-size", "-5"],
        ["extract", *M, "--persona", ":"],
        ["extract", *M, "--persona", "happy:"],
        ["extract", *M, "--persona", " :sad"],
        ["extract", *M, "--persona", "happy:happy"],
        ["extract", *M, "--persona", "a:b:c"],
    ],
)
def test_extract_refuses_bad_options_and_writes_nothing(args, tmp_path):
    out = tmp_path / "v"
    res = runner.invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output
    assert not out.exists()


def test_generate_past_the_context_is_an_error(tmp_path):
    long_prompt = "Once upon a time there was a cat. " * 80  # ~720 tokens; stories260K's context is 512
    line = _one_line_error(runner.invoke(app, ["--quiet", "generate", *M, "--max-new-tokens", "4", long_prompt]), 2)
    assert "context" in line and "512" in line
    line = _one_line_error(runner.invoke(app, ["--quiet", "generate", *M, "--max-new-tokens", "600", "The cat"]), 2)
    assert "600 new tokens" in line
    res = runner.invoke(app, ["--json", "generate", *M, "--max-new-tokens", "500", "The cat"])  # 4 + 500 fits
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(
    "args",
    [
        ["eval", "fluency", "--vector", "V", "--texts", "T", "--limit", "-1"],
        ["eval", "fluency", "--vector", "V", "--texts", "T", "--limit", "0"],
        ["eval", "sentiment", "--vector", "V", "--limit", "-2"],
        ["eval", "sentiment", "--vector", "V", "--max-new-tokens", "0"],
        ["eval", "sentiment", "--vector", "V", "--batch-size", "0"],
        ["eval", "sentiment", "--vector", "V", "--coefs", "nan,1"],
        ["eval", "behavior", "--vector", "V", "--items", "I", "--limit", "-1"],
        ["eval", "behavior", "--vector", "V", "--items", "I", "--batch-size", "-3"],
        ["sweep", "sentiment", "--vector", "V", "--limit", "-1"],
        ["sweep", "sentiment", "--vector", "V", "--direction", "2"],
        ["sweep", "sentiment", "--vector", "V", "--budget", "0"],
        ["sweep", "sentiment", "--vector", "V", "--max-new-tokens", "-1"],
        ["analyze", "pca", "--layer", "1", "--texts", "T", "--components", "0"],
        ["analyze", "breakdown", "--vector", "V", "--texts", "T", "--limit", "-1"],
        ["generate", "--max-new-tokens", "0", "The cat"],
        ["generate", "--vector", "V", "--coef", "inf", "The cat"],
        ["demo", "--max-new-tokens", "-1"],
        ["demo", "--coef", "nan"],
        ["serve", "--max-batch", "0"],
        ["serve", "--max-queue", "-1"],
        ["serve", "--max-tokens", "0"],
        ["serve", "--timeout", "0"],
        ["serve", "--max-coefficient", "nan"],
        ["serve", "--batch-wait-ms", "-1"],
        ["serve", "--max-upload-mb", "0"],
        ["serve", "--max-request-mb", "-1"],
        ["serve", "--threads", "0"],
        ["serve", "--port", "70000"],
    ],
)
def test_bad_numbers_are_usage_errors(args, tmp_path):
    out = ["--out", str(tmp_path / "o")] if args[0] in ("eval", "sweep", "analyze") else []
    res = runner.invoke(app, [*args, *out])
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit) and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


def test_condition_then_conditional_generate(vec_dir, tmp_path):
    from steerlab.core.condition import Condition
    from steerlab.extraction.condition import find_condition

    dogs = ["The dog ran to the park", "The big dog barked at the cat", "A dog wagged its tail"]
    rain = ["It was raining all day", "The rain fell on the roof", "Dark clouds brought rain"]
    (tmp_path / "pos.txt").write_text("\n".join(dogs) + "\n")
    (tmp_path / "neg.txt").write_text("\n".join(rain) + "\n")
    data = _run_json(
        "condition",
        *M,
        "--positive",
        str(tmp_path / "pos.txt"),
        "--negative",
        str(tmp_path / "neg.txt"),
        "--no-chat",
        "--out",
        str(tmp_path / "cond"),
    )
    lm = steerlab.load_model(STORIES)
    want = find_condition(lm, dogs, rain, chat=False)
    assert data == _jsonable(want.to_dict()) and data["accuracy"][str(data["layer"])] == 1.0
    cond = Condition.load(tmp_path / "cond")
    prompts = ["The dog sat", "The rain fell"]
    out = _run_json(
        "generate",
        *M,
        "--vector",
        str(vec_dir),
        "--coef",
        "6",
        "--condition",
        str(tmp_path / "cond"),
        "--max-new-tokens",
        "8",
        "--compare",
        *prompts,
    )
    vec = steerlab.SteeringVector.load(vec_dir)
    direct = steerlab.generate(lm, prompts, steering=steerlab.Steering(vec, 6.0, condition=cond), max_new_tokens=8)
    assert [row["output"] for row in out] == direct
    res = runner.invoke(app, ["generate", *M, "--threshold", "0.5", "x"])
    assert res.exit_code == 2 and "--threshold goes with --condition" in res.output
