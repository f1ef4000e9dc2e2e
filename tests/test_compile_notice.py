"""The torch.compile notice ("the graphs compiled before were cleared") appears only when compiled
graphs were really cleared: transformers imports TorchDynamo without compiling anything, so a
plain steered run (the CLI's demo, generate, ``--quiet`` or not) must print nothing about it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo
import torch._dynamo.config as dynamo_config

import steerlab
from steerlab.runtime.compiled import compiled_anything

from .conftest import STORIES

NOTICE = "graphs compiled before were cleared"


def _notices(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if NOTICE in r.getMessage()]


# dynamo's config is a ConfigModule: monkeypatch's undo deletes its entries; its own patch() restores them
def test_a_session_with_nothing_compiled_turns_the_guards_on_silently(lm, vec, caplog):
    torch._dynamo.reset()
    with dynamo_config.patch(skip_nnmodule_hook_guards=True):  # torch's default
        assert not compiled_anything()
        with caplog.at_level("WARNING", logger="steerlab"), steerlab.steer(lm, steerlab.Steering(vec, 2.0)):
            pass
        assert dynamo_config.skip_nnmodule_hook_guards is False  # graphs compiled from now on see the hooks
    assert _notices(caplog) == []


def test_a_session_after_a_compile_clears_the_graphs_and_says_so(lm, vec, caplog):
    torch._dynamo.reset()
    with dynamo_config.patch(skip_nnmodule_hook_guards=True):
        assert torch.equal(torch.compile(lambda x: x * 2, backend="eager")(torch.ones(2)), torch.full((2,), 2.0))
        assert compiled_anything()
        with caplog.at_level("WARNING", logger="steerlab"), steerlab.steer(lm, steerlab.Steering(vec, 2.0)):
            pass
        assert len(_notices(caplog)) == 1
        assert not compiled_anything()  # cleared
        with caplog.at_level("WARNING", logger="steerlab"), steerlab.steer(lm, steerlab.Steering(vec, 2.0)):
            pass
        assert len(_notices(caplog)) == 1  # once: the guards are on now
    torch._dynamo.reset()


def test_the_cli_prints_no_compile_notice(vec: steerlab.SteeringVector, tmp_path: Path) -> None:
    """A steered ``generate`` in a fresh process, as the demo runs it: nothing compiled, no notice
    (stderr is empty of it with and without ``--quiet``)."""
    vec.save(tmp_path / "v")
    env = {k: v for k, v in os.environ.items() if k != "STEERLAB_QUIET"}
    args = [
        "generate",
        "--model",
        str(STORIES),
        "--vector",
        str(tmp_path / "v"),
        *"--coef 3 --max-new-tokens 2 Once".split(),
    ]
    for quiet in ([], ["--quiet"]):
        res = subprocess.run(
            [sys.executable, "-m", "steerlab", *quiet, *args], env=env, capture_output=True, text=True, timeout=300
        )
        assert res.returncode == 0, res.stderr
        assert NOTICE not in res.stderr + res.stdout, quiet


def test_importing_steerlab_does_not_import_torchdynamo() -> None:
    """``import steerlab`` leaves TorchDynamo unimported (~1.5 s here, and it fixes TorchInductor's
    cache directory at first use); it comes in only with a compile. A fresh interpreter, so no
    other test's import counts."""
    code = "import sys, steerlab; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
