"""The engine's decoding fast path: after a whole prompt, a step of one token per row needs no
positions (every "all"/"generated" steering acts on it, no "prompt" one does), so each layer does one
fused operation. It must give exactly what the full path gives."""

from __future__ import annotations

import pytest
import torch

import steerlab
from steerlab import Steering
from steerlab.runtime.generate import encode
from steerlab.runtime.session import SteeringSession

from .conftest import PROMPTS


def _rows(vec: steerlab.SteeringVector) -> list:
    return [
        Steering(vec, 3.0, positions="generated"),
        None,
        Steering(vec, -2.0) + Steering(vec, 0.5, operator="ablate", positions="generated"),
        Steering(vec, 1.5, operator="clamp") + Steering(vec, 2.0, operator="add_norm_preserving"),
        Steering(vec, 4.0, positions="prompt"),
    ]


def _scores(
    lm: steerlab.LM, rows: list, fast: bool, monkeypatch: pytest.MonkeyPatch, n: int = 6, fast_steps: int | None = None
) -> torch.Tensor:
    """Per-step scores of greedy generation under ``rows``; checks how many steps took the fast path
    (``n - 1`` by default when ``fast``, none otherwise)."""
    counts = {"fast": 0}
    real = SteeringSession._decode_step

    def counted(self, inputs):
        counts["fast"] += 1
        return real(self, inputs)

    monkeypatch.setattr(SteeringSession, "_decode_step", counted)
    if not fast:
        monkeypatch.setattr(SteeringSession, "_is_decode_step", lambda self, inputs: False)
    prompts = [*PROMPTS, "Lily saw a big dog", "One day"][: len(rows)]
    ids, mask = encode(lm, prompts, "left")
    with steerlab.steer_rows(lm, rows, prompt_length=mask.sum(-1)), torch.inference_mode():
        out = lm.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=lm.tokenizer.pad_token_id,
        )
    monkeypatch.undo()
    want = fast_steps if fast_steps is not None else (n - 1 if fast else 0)
    assert counts["fast"] == want
    return torch.stack(out.scores)


def test_fast_decoding_equals_the_full_path(lm, vec, monkeypatch):
    rows = _rows(vec)
    rows[1] = Steering(vec, 1.0, positions="all")
    fast = _scores(lm, rows, True, monkeypatch)
    full = _scores(lm, rows, False, monkeypatch)
    assert torch.equal(fast, full)
    plain = _scores(lm, [None] * len(rows), True, monkeypatch, fast_steps=0)
    assert not torch.equal(fast[:, 0], plain[:, 0])


def test_unsteered_rows_stay_bit_identical_on_the_fast_path(lm, vec, monkeypatch):
    fast = _scores(lm, _rows(vec), True, monkeypatch)
    plain = _scores(lm, [None] * 5, True, monkeypatch, fast_steps=0)
    assert torch.equal(fast[:, 1], plain[:, 1])  # the row without steering


@pytest.mark.parametrize("steering", ["window", "actadd"])
def test_index_dependent_steerings_take_the_full_path(lm, vec, actadd_vec, monkeypatch, steering):
    s = Steering(vec, 2.0, positions=(2, 9)) if steering == "window" else Steering(actadd_vec, 3.0)
    _scores(lm, [s, None, s, None, s], True, monkeypatch, fast_steps=0)
