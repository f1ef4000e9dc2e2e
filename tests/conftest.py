"""Shared fixtures: the trained stories260K model (real weights, 5 layers) and a vector on it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

import steerlab

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
    from steerlab.generate import encode

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
