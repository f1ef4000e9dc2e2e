"""Token positions: the pure function, the adapter's reading of forward calls, and the first-use
canary that refuses to steer when transformers calls the model in a way steerlab cannot read."""

from __future__ import annotations

import importlib

import pytest
import torch

import steerlab
from steerlab.core.positions import position_mask, starts_sequence, token_positions
from steerlab.core.steering import Steering
from steerlab.errors import SteeringSpecError, TransformersCompatError
from steerlab.runtime import canary, hf

CPU = torch.device("cpu")


def test_mask_counts_real_tokens_and_skips_the_past() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    real, index = token_positions(2, 2, CPU, attention_mask=mask, past=3)
    assert real.tolist() == [[True, True], [True, True]]
    assert index.tolist() == [[1, 2], [3, 4]]
    real, index = token_positions(5, 2, CPU, attention_mask=mask)
    assert index[0].tolist() == [-1, -1, 0, 1, 2] and real[0].tolist() == [False, False, True, True, True]


def test_position_ids_when_there_is_no_mask() -> None:
    real, index = token_positions(1, 3, CPU, position_ids=torch.tensor([[7]]), past=7, has_cache=True)
    assert index.tolist() == [[7], [7], [7]] and bool(real.all())


def test_cache_length_alone_and_a_fresh_call() -> None:
    _, index = token_positions(2, 1, CPU, past=4, has_cache=True)
    assert index.tolist() == [[4, 5]]
    _, index = token_positions(3, 2, CPU)
    assert index.tolist() == [[0, 1, 2], [0, 1, 2]]


def test_contradictions_and_silence_raise_naming_versions() -> None:
    with pytest.raises(TransformersCompatError, match="transformers"):
        token_positions(1, 1, CPU, attention_mask=torch.ones(1, 1), past=5, has_cache=True)
    with pytest.raises(TransformersCompatError, match="cannot be read"):
        token_positions(1, 1, CPU, has_cache=True)
    with pytest.raises(TransformersCompatError, match="does not fit"):
        token_positions(2, 2, CPU, position_ids=torch.zeros(3, 2, dtype=torch.long))
    # with a mismatched mask the position ids decide
    _, index = token_positions(1, 1, CPU, attention_mask=torch.ones(1, 1), position_ids=torch.tensor([[5]]), past=5)
    assert index.tolist() == [[5]]


def test_position_masks() -> None:
    real = torch.tensor([[False, True, True, True]])
    index = torch.tensor([[-1, 0, 1, 2]])
    plen = torch.tensor([2])
    sel = {key: position_mask(key, real, index, plen).squeeze(-1).tolist()[0] for key in ("all", "prompt", "generated")}
    assert sel == {
        "all": [False, True, True, True],
        "prompt": [False, True, True, False],
        "generated": [False, False, False, True],
    }
    assert position_mask((1, 2), real, index).squeeze(-1).tolist() == [[False, False, True, False]]
    assert position_mask((2, None), real, index).squeeze(-1).tolist() == [[False, False, False, True]]
    with pytest.raises(SteeringSpecError, match="prompt length"):
        position_mask("generated", real, index)
    assert starts_sequence(real, index) and not starts_sequence(real, index + 1)


def test_lone_prompt_steers_generated_tokens_only(lm: steerlab.LM, vec: steerlab.SteeringVector) -> None:
    """Regression (transformers 5.24): an unpadded prompt gets no attention mask and the cache as
    ``cache=``; "generated" must still steer the new tokens, and "prompt" must differ from "all"."""
    prompt = "Once upon a time, there was a little girl"
    n = len(lm.tokenizer(prompt)["input_ids"])
    plain = steerlab.generate(lm, prompt, max_new_tokens=12)[0]
    out = {
        where: steerlab.generate(lm, prompt, steering=Steering(vec, 6.0, positions=where), max_new_tokens=12)[0]
        for where in ("generated", "prompt", "all", (n, None))
    }
    assert out["generated"] != plain
    assert out["prompt"] != out["all"]
    assert out[(n, None)] == out["generated"]  # a window reaches the generated tokens
    # the same positions without the KV cache (recomputing the whole sequence each step)
    recomputed = steerlab.generate(
        lm, prompt, steering=Steering(vec, 6.0, positions="generated"), max_new_tokens=12, use_cache=False
    )[0]
    assert recomputed == out["generated"]


def test_canary_passes_once_per_model(lm: steerlab.LM, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_run = canary._run_checks
    monkeypatch.setattr(canary, "_run_checks", lambda m: calls.append(1) or real_run(m))
    monkeypatch.setattr(canary, "_CHECKED", type(canary._CHECKED)())
    canary.check_positions(lm)
    canary.check_positions(lm)
    assert calls == [1]
    assert real_run(lm) == []


def test_canary_refuses_a_transformers_it_cannot_read(
    lm: steerlab.LM, vec: steerlab.SteeringVector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulate a release that renames the cache and drops mask and position ids (as 5.24 did
    for the cache): steerlab would take every step for a new prompt; the canary must refuse."""
    real_inputs = hf.call_inputs

    def blind(model, args, kwargs):  # what an adapter that knew only the old names would see
        got = real_inputs(model, args, kwargs)
        return hf.CallInputs(got.batch, got.length, got.device, None, None, None, False)

    monkeypatch.setattr(hf, "call_inputs", blind)
    monkeypatch.setattr(canary, "_CHECKED", type(canary._CHECKED)())
    with pytest.raises(TransformersCompatError, match=r"transformers \d"):
        with steerlab.steer(lm, Steering(vec, 1.0)):
            pass


def test_shared_prefix_says_when_it_cannot_run(lm: steerlab.LM, monkeypatch: pytest.MonkeyPatch) -> None:
    capture_mod = importlib.import_module("steerlab.extraction.capture")
    texts = ["Once upon a time, in a big forest, " + t for t in ("a cat", "a dog sat down", "the sun")]
    monkeypatch.setattr(hf, "cache_keyword", lambda model: None)
    monkeypatch.setattr(capture_mod, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match="shared prefixes"):
        steerlab.capture(lm, texts, [1])
