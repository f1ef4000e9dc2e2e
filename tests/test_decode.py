"""The compiled decoding path (steerlab.runtime.decode): the tokens of ``model.generate``, no
recompilation when the steering changes, and the invariants on this path.

Exactness: the step compiled by the test backend (``_Counting``: TorchDynamo's graph, run by
``torch.fx`` eagerly) computes with the same ATen kernels as eager, and a zero delta adds ``0.0``
(bit-identical by construction: ``x + 0.0 == x``); comparisons of tokens with ``model.generate``
are greedy tokens (exact unless two logits tie within float noise, ~1e-6 here against gaps of
>1e-2 on these prompts). TorchInductor's kernels differ from eager by float noise (max |logit
difference| 1.5e-5, tests/test_compile.py), which greedy tokens on these prompts do not see.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import steerlab
from steerlab import Steering
from steerlab.runtime import decode
from steerlab.runtime.decode import Decoder, compiled_route, eos_ids
from steerlab.runtime.generate import encode
from steerlab.runtime.passes import forward
from steerlab.runtime.session import steer_rows

from .conftest import PROMPTS
from .test_serve_edges import huge_vector

N = 12


class _Counting:
    """A ``torch.compile`` backend that counts the graphs it is given (each compile or recompile)."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, _inputs: Any) -> Any:
        self.graphs += 1
        return gm.forward


def _run(dec: Decoder, lm: steerlab.LM, rows: list[Any], prompts: list[str] = PROMPTS) -> torch.Tensor:
    ids, mask = encode(lm, prompts)
    out = dec.run(ids, mask, rows, N, eos_ids(lm), lm.tokenizer.pad_token_id or 0)
    assert out is not None
    return out


def _texts(lm: steerlab.LM, new: torch.Tensor) -> list[str]:
    return lm.tokenizer.batch_decode(new, skip_special_tokens=True)


def _keys(dec: Decoder) -> list[torch.Tensor]:
    return [layer.keys.clone() for layer in dec._cache.layers]


@pytest.fixture
def counting(lm: steerlab.LM) -> tuple[Decoder, _Counting]:
    torch._dynamo.reset()
    backend = _Counting()
    yield Decoder(lm, len(PROMPTS), 64, backend=backend), backend
    torch._dynamo.reset()


def test_new_vector_coefficient_or_rows_do_not_recompile(lm, vec, counting) -> None:
    dec, backend = counting
    pairs = steerlab.pairs_from_lists(["The sun was bright and warm"], ["The night was dark and cold"])
    other = steerlab.extract(lm, pairs, method="mean_diff", layers=[0, 4])
    settings = [
        [Steering(vec, 3.0), None, Steering(vec, -2.0)],
        [Steering(vec, 5.0), None, Steering(vec, -2.0)],  # a new coefficient
        [None, Steering(other, 6.0), Steering(vec, -2.0)],  # a new vector, at other layers
        [Steering(vec, -2.0), Steering(vec, 3.0), None],  # a new row assignment
        [None, None, None],
    ]
    outs = []
    for rows in settings:
        outs.append(_texts(lm, _run(dec, lm, rows)))
        assert outs[-1] == steerlab.generate(lm, PROMPTS, rows, max_new_tokens=N, compiled=False)
    assert backend.graphs == 1  # one graph, compiled once, for every setting
    assert len({tuple(o) for o in outs}) == len(outs)  # and each setting steered differently


def test_coefficient_zero_is_bit_identical_to_plain_on_this_path(lm, vec, counting) -> None:
    dec, _ = counting
    plain = _run(dec, lm, [None] * 3)
    plain_keys = _keys(dec)
    zero = _run(dec, lm, [Steering(vec, 0.0)] * 3)
    assert torch.equal(zero, plain)
    # every key of every layer and token (prompt and generated): exact, by construction
    assert all(torch.equal(a, b) for a, b in zip(_keys(dec), plain_keys, strict=True))


def test_rows_without_steering_are_bit_identical_and_steered_rows_equal_alone(lm, vec) -> None:
    torch._dynamo.reset()
    try:
        dec = Decoder(lm, 3, 64, backend=_Counting())
        plain = _run(dec, lm, [None] * 3)
        plain_keys = _keys(dec)
        rows = [Steering(vec, 4.0), None, Steering(vec, -3.0, positions="generated")]
        mixed = _run(dec, lm, rows)
        # row 1 has no steering: its keys are those of the plain batch, bit for bit
        assert all(torch.equal(a[1], b[1]) for a, b in zip(_keys(dec), plain_keys, strict=True))
        assert torch.equal(mixed[1], plain[1])
        assert not torch.equal(mixed[0], plain[0])
        alone = Decoder(lm, 1, 64, backend=None)
        for i, row in enumerate(rows):
            got = _run(alone, lm, [row], [PROMPTS[i]])
            # greedy tokens: another padding is float noise on the logits (~1e-6), not a token
            assert torch.equal(got[0], mixed[i][: got.shape[1]]), i
    finally:
        torch._dynamo.reset()


def test_cached_steps_equal_recomputing_the_whole_sequence(lm, vec) -> None:
    dec = Decoder(lm, 3, 64, backend=None)
    rows = [Steering(vec, 4.0, positions="generated"), None, Steering(vec, -3.0)]
    new = _run(dec, lm, rows)
    ids, mask = encode(lm, PROMPTS)
    full = torch.cat([ids, new], 1)
    full_mask = torch.cat([mask, torch.ones_like(new)], 1)
    with torch.inference_mode(), steer_rows(lm, rows, prompt_length=mask.sum(-1)):
        logits = forward(lm, full, full_mask, use_cache=False).logits
    width = ids.shape[1]
    # greedy tokens of the recomputation (no cache) at every generated position: float noise aside, equal
    again = logits[:, width - 1 : -1].argmax(-1)
    assert torch.equal(again, new)


@pytest.mark.slow
def test_inductor_compiled_generate_gives_the_tokens_of_model_generate(lm, vec) -> None:
    rows = [
        Steering(vec, 3.0, positions="generated"),
        None,
        Steering(vec, -2.0) + Steering(vec, 1.0, positions="prompt"),
    ]
    eager = steerlab.generate(lm, PROMPTS, rows, max_new_tokens=N, compiled=False)
    torch._dynamo.reset()
    try:
        assert steerlab.generate(lm, PROMPTS, rows, max_new_tokens=N, compiled=True) == eager
        assert steerlab.generate(lm, PROMPTS, max_new_tokens=N, compiled=True) == steerlab.generate(
            lm, PROMPTS, max_new_tokens=N, compiled=False
        )
    finally:
        torch._dynamo.reset()


def test_steering_that_is_not_plain_adds_decodes_through_generate(lm, vec, counting) -> None:
    dec, backend = counting
    ids, mask = encode(lm, PROMPTS)
    window = [Steering(vec, 2.0, positions=(1, 4))] * 3
    ablate = [Steering(vec, 1.0, operator="ablate"), None, None]
    for rows in (window, ablate):
        assert dec.run(ids, mask, rows, N, eos_ids(lm), 0) is None
        assert steerlab.generate(lm, PROMPTS, rows, max_new_tokens=N, compiled=True) == steerlab.generate(
            lm, PROMPTS, rows, max_new_tokens=N, compiled=False
        )
    assert backend.graphs == 0


def test_nonfinite_rows_raise_on_the_compiled_path(lm, counting, monkeypatch) -> None:
    dec, _ = counting
    monkeypatch.setattr(decode, "decoder", lambda *_: dec)
    broken = Steering(huge_vector(lm), 16.0, positions="generated")  # the prompt is fine, a step is not
    with pytest.raises(steerlab.NonFiniteError, match="prompt 2 ") as info:
        steerlab.generate(lm, PROMPTS, [None, None, broken], max_new_tokens=4, compiled=True)
    assert info.value.rows == (2,)


def test_the_route_is_greedy_left_padded_and_plain_generate_only(lm) -> None:
    assert compiled_route(lm, True, "left", {})(1, 20, 8)
    assert compiled_route(lm, True, "left", {"do_sample": False, "temperature": None})(1, 20, 8)
    assert not compiled_route(lm, True, "left", {"do_sample": True})(1, 20, 8)
    assert not compiled_route(lm, True, "right", {})(1, 20, 8)
    assert not compiled_route(lm, True, "left", {"num_return_sequences": 2})(1, 20, 8)
    assert not compiled_route(lm, False, "left", {})(1, 20, 8)
    with pytest.raises(TypeError, match="compiled must be"):
        compiled_route(lm, "yes", "left", {})  # type: ignore[arg-type]


def test_by_default_a_cpu_compiles_only_long_calls_of_few_rows_decided_by_the_call_alone(lm) -> None:
    route = compiled_route(lm, None, "left", {})
    assert not route(1, 20, decode.CPU_MIN_STEPS - 1)
    assert route(1, 20, decode.CPU_MIN_STEPS)
    assert not route(1, 20, 1)  # what ran before does not change the path of a short call
    assert not route(decode.CPU_MAX_BATCH + 1, 20, decode.CPU_MIN_STEPS)


@pytest.mark.parametrize("bits", ["int8", "int4"])
def test_low_bit_weights_keep_the_invariants_on_the_compiled_path(vec, bits) -> None:
    """Weight-only int8 / int4 (steerlab.models.quantize): the same invariants, on a fresh copy of the model."""
    from steerlab.models import quantize

    from .conftest import STORIES

    lm8 = getattr(quantize, f"{bits}_weights")(steerlab.load_model(STORIES))
    kind = quantize.Int8Linear if bits == "int8" else quantize.Int4Linear
    assert any(isinstance(m, kind) for m in lm8.model.modules())
    assert lm8.model.dtype == torch.bfloat16
    torch._dynamo.reset()
    try:
        dec = Decoder(lm8, 3, 64, backend=_Counting())
        plain = _run(dec, lm8, [None] * 3)
        plain_keys = _keys(dec)
        zero = _run(dec, lm8, [Steering(vec, 0.0)] * 3)
        assert torch.equal(zero, plain)  # coefficient 0: exact, by construction (zero deltas)
        assert all(torch.equal(a, b) for a, b in zip(_keys(dec), plain_keys, strict=True))
        rows = [Steering(vec, 4.0), None, Steering(vec, -3.0)]
        mixed = _run(dec, lm8, rows)
        assert all(torch.equal(a[1], b[1]) for a, b in zip(_keys(dec), plain_keys, strict=True))  # row 1 unsteered
        assert not torch.equal(mixed[0], plain[0])
        # the compiled path gives model.generate's tokens on the int8 model too
        assert _texts(lm8, mixed) == steerlab.generate(lm8, PROMPTS, rows, max_new_tokens=N, compiled=False)
    finally:
        torch._dynamo.reset()


def test_more_decoders_than_dynamos_recompile_limit_each_compile_once(lm, vec) -> None:
    """TorchDynamo keeps at most ``recompile_limit`` (8) graphs per code object and, with
    ``fullgraph=True``, a ninth is an error: each decoder compiles its own code object, so a process
    may hold any number of (batch, length) shapes. (The counting backend runs the graph eagerly:
    the tokens are exact, compared with the same decoder uncompiled.)"""
    torch._dynamo.reset()
    backend = _Counting()
    try:
        limit = torch._dynamo.config.recompile_limit
        for k in range(limit + 1):
            dec = Decoder(lm, 1 + k % 3, 64 * (1 + k // 3), backend=backend)
            rows = [Steering(vec, 2.0)] * dec.batch
            got = _run(dec, lm, rows, PROMPTS[: dec.batch])
            assert torch.equal(
                got, _run(Decoder(lm, dec.batch, dec.length, backend=None), lm, rows, PROMPTS[: dec.batch])
            )
        assert backend.graphs == limit + 1  # one graph per decoder, none recompiled
    finally:
        torch._dynamo.reset()
