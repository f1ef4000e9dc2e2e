"""``steerlab train``: BiPO / RePS from a preference file or ``--self-contrast``, progress per step,
resume from ``--checkpoint``, exit 2 on bad input (on stories260K, real weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import steerlab
from steerlab.cli import app

from .conftest import STORIES

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ["Lily", "Tom", "Sue", "Ben", "Mia", "Max", "Anna", "Sam"]
RECORDS = [
    {"prompt": n, "chosen": " was happy. She smiled and laughed.", "rejected": " was sad. She cried and cried."}
    for n in NAMES
]
RUNNER = CliRunner(env={"COLUMNS": "400"})
BASE = ["train", "--model", str(STORIES), "--layers", "2", "--epochs", "2", "--batch-size", "4", "--lr", "0.05"]


def _prefs(tmp_path: Path) -> Path:
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def test_train_from_a_file_matches_the_library(lm: steerlab.LM, tmp_path: Path) -> None:
    prefs = _prefs(tmp_path)
    res = RUNNER.invoke(app, [*BASE, "--method", "reps", "--pairs", str(prefs), "--out", str(tmp_path / "v")])
    assert res.exit_code == 0, res.output
    assert "epoch 0 step" in res.output and "loss" in res.output  # progress per step (stderr is mixed in)
    got = steerlab.SteeringVector.load(tmp_path / "v")
    cfg = {"lr": 0.05, "epochs": 2, "batch_size": 4, "micro_batch_size": 4}
    want = steerlab.extract(lm, steerlab.load_preferences(prefs), method="reps", layers=[2], progress=False, **cfg)
    assert got.method == "reps" and got.meta["pairs_source"] == str(prefs)
    assert torch.equal(got.directions[2], want.directions[2])  # exact: the same seeded run


def test_train_one_side_and_self_contrast(tmp_path: Path) -> None:
    args = [*BASE, "--method", "bipo", "--self-contrast", "--n-openings", "8", "--max-new-tokens", "6"]
    res = RUNNER.invoke(app, ["--json", *args, "--directions", "negative", "--out", str(tmp_path / "v")])
    assert res.exit_code == 0, res.output
    vec = steerlab.SteeringVector.load(tmp_path / "v")
    assert vec.meta["directions"] == "negative" and vec.meta["pairs_source"] == "self_contrast"


def test_resume_from_a_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefs = _prefs(tmp_path)
    args = [*BASE, "--method", "bipo", "--pairs", str(prefs), "--checkpoint", str(tmp_path / "ck.safetensors")]
    whole = RUNNER.invoke(app, [*args[:-2], "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    from steerlab.extraction.train import loop

    real, calls = loop._train_step, {"n": 0}

    def interrupted(*a, **k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(loop, "_train_step", interrupted)
    first = RUNNER.invoke(app, [*args, "--out", str(tmp_path / "resumed")])
    assert first.exit_code != 0 and (tmp_path / "ck.safetensors").exists()
    monkeypatch.setattr(loop, "_train_step", real)
    second = RUNNER.invoke(app, [*args, "--out", str(tmp_path / "resumed")])
    assert second.exit_code == 0, second.output
    a = steerlab.SteeringVector.load(tmp_path / "whole").directions[2]
    b = steerlab.SteeringVector.load(tmp_path / "resumed").directions[2]
    assert torch.equal(a, b)  # exact: the resumed run continues the same seeded steps
    assert not (tmp_path / "ck.safetensors").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "mean_diff", "--self-contrast"], "use one of bipo, reps"),
        (["--method", "reps"], "exactly one of --pairs FILE or --self-contrast"),
        (["--self-contrast", "--directions", "up"], "directions='up'"),
        (["--self-contrast", "--lr", "-1"], "lr=-1.0"),
        (["--self-contrast", "--factors", "a,b"], "give numbers"),
        (["--pairs", "nope.jsonl"], "nope.jsonl"),
    ],
)
def test_bad_input_exits_2(tmp_path: Path, extra: list[str], message: str) -> None:
    res = RUNNER.invoke(app, [*BASE, *extra, "--out", str(tmp_path / "v")])
    assert res.exit_code == 2 and message in res.output, res.output


def test_bad_pairs_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    res = RUNNER.invoke(app, [*BASE, "--pairs", str(bad), "--out", str(tmp_path / "v")])
    assert res.exit_code == 2, res.output
