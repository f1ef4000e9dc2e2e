"""The command line: typer's runner for most commands, one real subprocess end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from steerlab.cli import app
from steerlab.cli.common import parse_float_list, parse_int_list, parse_positions

from .conftest import STORIES

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
    res = runner.invoke(app, ["--json", "generate", *M, "--vector", str(vec_dir), "--coef", "2",
                              "--vector", str(vec_dir), "--coef", "-1", "--compare", "--max-new-tokens", "6",
                              "The cat", "Lily"])
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
        (["extract", *M, "--persona", "happy:sad", "--layers", "1-9", "--out", "x"], "out of range"),
        (["inspect", "no-such-dir"], "not a steerlab vector folder"),
    ],
)
def test_runtime_errors_are_one_line(args, message, tmp_path):
    res = runner.invoke(app, args)
    assert res.exit_code == 1
    assert message in res.output and "Traceback" not in res.output


def test_malformed_jsonl_names_the_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"positive": "a", "negative": "b"}\n{oops}\n')
    res = runner.invoke(app, ["extract", *M, "--pairs", str(f), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "p.jsonl:2" in res.output


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
    subprocess.run([*exe, "--quiet", "extract", *M, "--persona", "happy:sad", "--layers", "2", "--out", str(out)],
                   check=True, env=env, capture_output=True, timeout=300)
    res = subprocess.run([*exe, "--json", "generate", *M, "--vector", str(out), "--coef", "3", "--compare",
                          "--max-new-tokens", "5", "Once upon a time"],
                         check=True, env=env, capture_output=True, text=True, timeout=300)
    row = json.loads(res.stdout)[0]
    assert row["prompt"] == "Once upon a time" and row["baseline"] and row["output"]


@pytest.mark.slow
def test_demo_on_default_model_in_a_subprocess():
    res = subprocess.run([sys.executable, "-m", "steerlab", "--json", "demo", "--max-new-tokens", "8"],
                         check=True, capture_output=True, text=True, timeout=600)
    rows = json.loads(res.stdout)
    assert len(rows) == 3 and all(r["baseline"] != r["negative"] for r in rows)


# ---------------------------------------------------------------- eval / sweep / analyze
def _run_json(*args: str) -> dict:
    res = runner.invoke(app, ["--json", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_eval_sentiment_and_fluency(vec_dir, tmp_path):
    out = tmp_path / "s"
    data = _run_json("eval", "sentiment", *M, "--vector", str(vec_dir), "--coefs", "-2,0,2", "--limit", "3",
                     "--max-new-tokens", "4", "--out", str(out))
    assert data["kind"] == "SentimentReport" and len(data["rows"]) == 3
    assert {p.name for p in out.iterdir()} >= {"sentiment.json", "sentiment.md", "sentiment.png", "run.json"}
    texts = tmp_path / "t.txt"
    texts.write_text("Once upon a time there was a cat.\nThe dog ran to the park.\n")
    data = _run_json("eval", "fluency", *M, "--vector", str(vec_dir), "--texts", str(texts), "--coefs", "0,4",
                     "--out", str(tmp_path / "f"))
    assert data["kl"][0] == 0.0 and data["kl"][1] > 0


def test_eval_behavior(vec_dir, tmp_path):
    from .conftest import CAA

    items = CAA / "test" / "sycophancy" / "test_dataset_ab.json"
    data = _run_json("eval", "behavior", *M, "--vector", str(vec_dir), "--items", str(items), "--limit", "4",
                     "--out", str(tmp_path / "b"))
    assert data["kind"] == "BehaviorReport" and len(data["rows"]) == 3
    assert json.loads((tmp_path / "b" / "run.json").read_text())["data_hash"]


def test_sweep_and_autotune(vec_dir, tmp_path):
    data = _run_json("sweep", "sentiment", *M, "--vector", str(vec_dir), "--layer-sets", "1;2-3", "--coefs",
                     "-2,0,2", "--limit", "2", "--max-new-tokens", "4", "--out", str(tmp_path / "sw"))
    assert data["layer_sets"] == [[1], [2, 3]]
    assert (tmp_path / "sw" / "sweep_sentiment.png").is_file()
    data = _run_json("sweep", "sentiment", *M, "--vector", str(vec_dir), "--autotune", "--coefs", "1,4",
                     "--limit", "4", "--max-new-tokens", "4", "--out", str(tmp_path / "at"))
    assert data["kind"] == "AutotuneReport" and set(data["held_out"]) == {"baseline", "steered"}


def test_analyze_commands(vec_dir, tmp_path):
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("".join(json.dumps({"positive": f"Lily was happy {i}", "negative": f"Lily was sad {i}"}) + "\n"
                             for i in range(4)))
    data = _run_json("analyze", "pca", *M, "--pairs", str(pairs), "--layer", "2", "--components", "3",
                     "--save-direction", str(tmp_path / "pc1"), "--out", str(tmp_path / "pca"))
    assert data["kind"] == "PCAReport" and (tmp_path / "pc1" / "vector.safetensors").is_file()
    data = _run_json("analyze", "projection", *M, "--vector", str(vec_dir), "--pairs", str(pairs),
                     "--out", str(tmp_path / "proj"))
    assert data["kind"] == "ProjectionReport"
    data = _run_json("analyze", "similarity", str(vec_dir), "--out", str(tmp_path / "sim"))
    assert data["kind"] == "SimilarityReport"
    texts = tmp_path / "t.txt"
    texts.write_text("Once upon a time there was a cat.\nThe dog ran to the park.\n")
    data = _run_json("analyze", "breakdown", *M, "--vector", str(vec_dir), "--texts", str(texts), "--coefs",
                     "0,1,4,16", "--out", str(tmp_path / "bd"))
    assert data["kind"] == "BreakdownReport"
    for cmd in (["eval", "sentiment"], ["eval", "behavior"], ["eval", "fluency"], ["sweep"], ["analyze", "pca"],
                ["analyze", "projection"], ["analyze", "similarity"], ["analyze", "breakdown"]):
        assert "Example:" in runner.invoke(app, [*cmd, "--help"]).output, cmd
