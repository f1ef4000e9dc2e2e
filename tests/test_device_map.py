"""Models loaded with ``device_map`` (accelerate): steering and capture work, agree with a plain
load, and steering vectors are placed on each block's device once, when the session starts.

On a CPU-only machine every block maps to ``"cpu"``; ``accelerate.dispatch_model(force_hooks=True)``
then wraps each block in the same ``AlignDevicesHook`` a multi-GPU split uses. With a GPU, blocks
are split between ``cuda:0`` and ``cpu``. Disk offload (weights on the meta device until a block
runs) is covered too.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import steerlab
from steerlab import Steering, SteeringVector
from steerlab.runtime.generate import encode

from .conftest import PROMPTS, STORIES

N_LAYERS = 5  # stories260K


def device_map(blocks: dict[int, str] | None = None) -> dict[str, str]:
    """A full device map of stories260K: everything on ``cpu`` except the blocks given."""
    blocks = blocks or {}
    return {
        "model.embed_tokens": "cpu",
        **{f"model.layers.{i}": blocks.get(i, "cpu") for i in range(N_LAYERS)},
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }


@pytest.fixture(scope="module")
def mapped() -> steerlab.LM:
    """stories260K loaded through device_map, every block behind an accelerate dispatch hook."""
    from accelerate import dispatch_model
    from transformers.utils import logging as hf_logging

    dm = device_map()
    lm = steerlab.load_model(STORIES, device_map=dm, dtype=torch.float32)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # dispatch_model's spurious "offloaded to the cpu" warning
    try:
        dispatch_model(lm.model, device_map=dm, main_device="cpu", force_hooks=True)
    finally:
        hf_logging.set_verbosity(level)
    return lm


def _logits(lm: steerlab.LM) -> torch.Tensor:
    ids, mask = encode(lm, PROMPTS, "left")
    with torch.inference_mode():
        return lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device)).logits.cpu()


def _block_device(lm: steerlab.LM, layer: int) -> torch.device:
    return next(lm.blocks[layer].parameters()).device


def test_loads_through_accelerate(mapped: steerlab.LM) -> None:
    assert all(type(getattr(b, "_hf_hook", None)).__name__ == "AlignDevicesHook" for b in mapped.blocks)
    assert {p.device.type for p in mapped.model.parameters()} == {"cpu"}  # nothing offloaded
    assert mapped.n_layers == N_LAYERS and mapped.device == torch.device("cpu")


def test_steering_matches_plain_load(mapped: steerlab.LM, lm: steerlab.LM, vec: SteeringVector) -> None:
    base = _logits(lm)
    torch.testing.assert_close(_logits(mapped), base)
    for steering in (Steering(vec, 4.0), Steering(vec, 1.0, operator="ablate") + Steering(vec, 2.0, layers=[2])):
        with steerlab.steer(lm, steering):
            want = _logits(lm)
        with steerlab.steer(mapped, steering):
            got = _logits(mapped)
        torch.testing.assert_close(got, want)
        assert not torch.allclose(want, base)
    s = Steering(vec, 4.0, positions="generated")
    kw: dict[str, Any] = {"max_new_tokens": 6}
    assert steerlab.generate(mapped, PROMPTS, steering=s, **kw) == steerlab.generate(lm, PROMPTS, steering=s, **kw)


def test_capture_matches_plain_load(mapped: steerlab.LM, lm: steerlab.LM) -> None:
    got = steerlab.capture(mapped, PROMPTS, [0, 2, 4], reads="mean")
    want = steerlab.capture(lm, PROMPTS, [0, 2, 4], reads="mean")
    for layer in want:
        torch.testing.assert_close(got[layer], want[layer])
    tok_got = steerlab.capture_tokens(mapped, PROMPTS[0], [3])
    torch.testing.assert_close(tok_got[3], steerlab.capture_tokens(lm, PROMPTS[0], [3])[3])


def _check_vectors_placed_once(lm: steerlab.LM, steering: Steering) -> None:
    """Every per-layer delta lives on its block's device when the session starts, and forward
    calls use those very tensors (nothing is copied per call)."""
    with steerlab.steer(lm, steering) as session:
        deltas = {layer: [t.state.tensor for t in terms] for layer, terms in session.plan.terms.items()}
        assert sorted(deltas) == sorted(steering.active_layers)
        for layer, tensors in deltas.items():
            for t in tensors:
                assert t.device == _block_device(lm, layer), f"layer {layer}: vector on {t.device}"
        ptrs = {layer: [t.data_ptr() for t in ts] for layer, ts in deltas.items()}
        _logits(lm)
        _logits(lm)
        assert {
            layer: [t.state.tensor.data_ptr() for t in terms] for layer, terms in session.plan.terms.items()
        } == ptrs


def test_vectors_live_on_block_devices(mapped: steerlab.LM, vec: SteeringVector) -> None:
    _check_vectors_placed_once(mapped, Steering(vec, 4.0))
    _check_vectors_placed_once(mapped, Steering(vec, 1.0, operator="ablate"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU to split blocks across devices")
def test_split_across_gpu_and_cpu(lm: steerlab.LM, vec: SteeringVector) -> None:
    dm = device_map({0: "cuda:0", 1: "cuda:0", 2: "cuda:0"})
    dm["model.embed_tokens"] = "cuda:0"
    split = steerlab.load_model(STORIES, device_map=dm, dtype=torch.float32)
    assert _block_device(split, 1).type == "cuda" and _block_device(split, 3).type == "cpu"
    steering = Steering(vec, 4.0)
    _check_vectors_placed_once(split, steering)
    with steerlab.steer(lm, steering):
        want = _logits(lm)
    with steerlab.steer(split, steering):
        got = _logits(split)
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
    got_acts = steerlab.capture(split, PROMPTS, [1, 3], reads="mean")
    want_acts = steerlab.capture(lm, PROMPTS, [1, 3], reads="mean")
    for layer in want_acts:
        torch.testing.assert_close(got_acts[layer], want_acts[layer], atol=1e-3, rtol=1e-3)


@pytest.fixture(scope="module")
def offloaded() -> steerlab.LM:
    """Block 2 offloaded to disk: its weights sit on the meta device until it runs."""
    return steerlab.load_model(STORIES, device_map=device_map({2: "disk"}), dtype=torch.float32)


def test_disk_offload_capture(offloaded: steerlab.LM, lm: steerlab.LM) -> None:
    assert _block_device(offloaded, 2).type == "meta"
    got = steerlab.capture(offloaded, PROMPTS, [1, 2, 3], reads="mean")
    want = steerlab.capture(lm, PROMPTS, [1, 2, 3], reads="mean")
    for layer in want:
        torch.testing.assert_close(got[layer], want[layer])


def test_disk_offload_steering(offloaded: steerlab.LM, lm: steerlab.LM, vec: SteeringVector) -> None:
    steering = Steering(vec, 4.0)
    with steerlab.steer(lm, steering):
        want = _logits(lm)
    with steerlab.steer(offloaded, steering):
        got = _logits(offloaded)
    torch.testing.assert_close(got, want)
