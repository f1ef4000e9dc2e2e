"""The least-push operators: ``push`` (target projection, moved only as far as needed) and
``rotate`` (norm-preserving turn toward ±u, only wrong-sign tokens by default).

Each is checked against a direct computation written here token by token in float64 (float noise:
the operator computes in float32 in another order; sized below), and through the engine for the
invariants of DESIGN.md: coefficient 0 bit-identical to plain, cache equals recompute, a batch of
mixed rows equals each row alone, rows without steering bit-identical.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import steerlab
from steerlab import Steering
from steerlab.core.operators import get_operator
from steerlab.export.bake import BakeError, bake
from steerlab.extraction.sign import LayerSign, layer_signs, opposite_sign_layers
from steerlab.runtime.generate import encode

from .conftest import PROMPTS, logits

ZERO = torch.zeros(2, 6, dtype=torch.long)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    h = 3 * torch.randn(2, 6, 8)
    v = torch.randn(8)
    return h, v


def direct_push(h: torch.Tensor, v: torch.Tensor, c: float) -> torch.Tensor:
    """The least push, token by token: raise (or lower) ``h·u`` to the target, else leave ``h``."""
    u = (v / v.norm()).double()
    target = math.log(abs(c)) * float(v.norm())
    out = h.double().clone()
    for idx in [(i, j) for i in range(h.shape[0]) for j in range(h.shape[1])]:
        a = float(out[idx] @ u)
        if c > 0 and a < target:
            out[idx] += (target - a) * u
        elif c < 0 and a > -target:
            out[idx] -= (a + target) * u
    return out


def direct_rotate(h: torch.Tensor, v: torch.Tensor, radians: float, selective: bool) -> torch.Tensor:
    """The rotation, token by token: the angle to ±u shrinks by ``|radians|`` (not below 0), norm kept."""
    s = 1.0 if radians > 0 else -1.0
    u = (s * v / v.norm()).double()
    out = h.double().clone()
    for i in range(h.shape[0]):
        for j in range(h.shape[1]):
            x = out[i, j]
            a = float(x @ u)
            if selective and a >= 0:
                continue
            w = x - a * u
            b = float(w.norm())
            angle = max(math.atan2(b, a) - abs(radians), 0.0)
            r = float(x.norm())
            out[i, j] = r * math.cos(angle) * u + r * math.sin(angle) * w / b
    return out


# ------------------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("c", [1.0, 1.5, 0.5, -1.0, -2.0, -0.7, 3.0])
def test_push_matches_the_direct_computation(c: float) -> None:
    h, v = _data()
    op = get_operator("push")
    got = op.apply(h, torch.ones(2, 6, 1), op.prepare(v, c), ZERO)
    # float noise: float32 vs float64, |h| ~ 10: measured max |difference| ~ 1e-6
    torch.testing.assert_close(got.double(), direct_push(h, v, c), rtol=0, atol=1e-5)
    u = v / v.norm()
    a = got @ u * math.copysign(1, c)
    assert float(a.min()) >= math.log(abs(c)) * float(v.norm()) - 1e-4  # the target is reached everywhere
    already = (h @ u) * math.copysign(1, c) >= math.log(abs(c)) * float(v.norm())
    assert bool(already.any()) and torch.equal(got[already], h[already])  # exact: h + 0·u where it is there


@pytest.mark.parametrize(
    ("radians", "selective"), [(0.5, 1.0), (0.5, 0.0), (-0.8, 1.0), (math.pi, 0.0), (-0.1, 0.0), (5.0, 0.0)]
)
def test_rotate_matches_the_direct_computation(radians: float, selective: float) -> None:
    h, v = _data()
    op = get_operator("rotate").with_parameters({"selective": selective})
    got = op.apply(h, torch.ones(2, 6, 1), op.prepare(v, radians), ZERO)
    # float noise: float32 trig vs float64; measured max |difference| ~ 2e-6 at |h| ~ 10
    torch.testing.assert_close(got.double(), direct_rotate(h, v, radians, bool(selective)), rtol=0, atol=1e-4)
    torch.testing.assert_close(got.norm(dim=-1), h.norm(dim=-1), rtol=1e-5, atol=0)  # norm kept (float noise)
    if selective:
        right = (h @ v) * math.copysign(1, radians) >= 0
        assert torch.equal(got[right], h[right])  # exact: torch.where keeps them


def test_rotate_by_180_points_along_the_direction() -> None:
    h, v = _data()
    op = get_operator("rotate").with_parameters({"selective": 0.0})
    for c in (math.pi, -math.pi):
        got = op.apply(h, torch.ones(2, 6, 1), op.prepare(v, c), ZERO)
        want = math.copysign(1, c) * h.norm(dim=-1, keepdim=True) * v / v.norm()
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)  # float noise (cos(0) of a clamp)


def test_masked_tokens_and_zero_are_untouched() -> None:
    h, v = _data()
    mask = torch.zeros(2, 6, 1)
    mask[0, 2:] = 1
    for op, c in ((get_operator("push"), 2.0), (get_operator("rotate").with_parameters({"selective": 0.0}), 0.7)):
        got = op.apply(h, mask, op.prepare(v, c), ZERO)
        assert torch.equal(got[mask[..., 0] == 0], h[mask[..., 0] == 0])  # exact
        assert not torch.equal(got[0, 2:], h[0, 2:])
        assert op.is_noop(0.0) and not op.is_noop(c)
        assert torch.equal(op.apply(h, torch.ones(2, 6, 1), op.prepare(v, 0.0), ZERO), h)  # exact: nothing moves


def test_parameters_and_refusals(lm: steerlab.LM, vec: steerlab.SteeringVector, tmp_path: Path) -> None:
    assert get_operator("rotate").parameters() == {"selective": 1.0}
    assert get_operator("push").parameters() == {}
    with pytest.raises(steerlab.SteeringSpecError, match=r"selective=0\.5 must be 0 or 1"):
        get_operator("rotate").with_parameters({"selective": 0.5})
    for name in ("push", "rotate"):
        assert get_operator(name).fixed_form(2.0) is None
        with pytest.raises(BakeError, match=f"operator='{name}'"):
            bake(lm, Steering(vec, 2.0, operator=name), tmp_path / name)


# ------------------------------------------------------------------------------ the engine's invariants
STEERINGS = {
    "push": lambda vec: Steering(vec, -3.0, operator="push"),
    "rotate": lambda vec: Steering(vec, -0.5, operator="rotate"),
    "rotate_all": lambda vec: Steering(vec, 0.3, operator=get_operator("rotate").with_parameters({"selective": 0})),
}


@pytest.mark.parametrize("name", ["push", "rotate"])
def test_coefficient_zero_is_bit_identical(lm: steerlab.LM, vec: steerlab.SteeringVector, name: str) -> None:
    base = logits(lm, PROMPTS)
    with steerlab.steer(lm, Steering(vec, 0.0, operator=name)):
        assert torch.equal(logits(lm, PROMPTS), base)
    with steerlab.steer(lm, STEERINGS[name](vec)):
        assert float((logits(lm, PROMPTS) - base).abs().max()) > 1e-2  # it does act here


@pytest.mark.parametrize("name", list(STEERINGS))
@pytest.mark.parametrize("positions", ["all", "generated"])
def test_cache_equals_recompute(lm: steerlab.LM, vec: steerlab.SteeringVector, name: str, positions: str) -> None:
    s = STEERINGS[name](vec)
    s = Steering(vec, s.coefficient, operator=s.op, positions=positions)
    cached = steerlab.generate(lm, PROMPTS, steering=s, max_new_tokens=8)
    assert cached == steerlab.generate(lm, PROMPTS, steering=s, max_new_tokens=8, use_cache=False)
    assert cached != steerlab.generate(lm, PROMPTS, max_new_tokens=8)


def test_mixed_rows_equal_each_alone(lm: steerlab.LM, vec: steerlab.SteeringVector) -> None:
    rows = [STEERINGS["push"](vec), None, STEERINGS["rotate"](vec), Steering(vec, 3.0)]
    prompts = [*PROMPTS, "Lily saw a big dog"]
    mixed = steerlab.generate(lm, prompts, steering=rows, max_new_tokens=10)
    alone = [steerlab.generate(lm, p, steering=r, max_new_tokens=10)[0] for p, r in zip(prompts, rows)]
    assert mixed == alone
    ids, mask = encode(lm, PROMPTS, "left")
    with torch.inference_mode():
        plain = lm.model(input_ids=ids, attention_mask=mask).logits
        with steerlab.steer_rows(lm, [STEERINGS["push"](vec), None, STEERINGS["rotate_all"](vec)]):
            got = lm.model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(got[1], plain[1])  # exact: the row without steering


def test_layer_signs(lm: steerlab.LM, vec: steerlab.SteeringVector) -> None:
    pairs = steerlab.pairs_from_lists(["Lily was happy", "Tom was glad"], ["Lily was sad", "Tom was upset"])
    signs = layer_signs(lm, pairs, vec)
    assert [s.layer for s in signs] == vec.layers
    for s in signs:
        assert 0.0 <= s.separated <= 1.0 and math.isfinite(s.positive) and math.isfinite(s.negative)
    assert opposite_sign_layers(lm, pairs, vec) == [s.layer for s in signs if s.opposite]
    assert LayerSign(1, 0.2, -0.1, 1.0).opposite and not LayerSign(1, 0.2, 0.1, 0.5).opposite


# ------------------------------------------------------------------------------ CLI and server
def test_cli_and_server_take_them(lm: steerlab.LM, vec: steerlab.SteeringVector, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    import json

    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from steerlab.cli import app
    from steerlab.serve import ServeSettings, create_app

    from .conftest import STORIES

    prompt = PROMPTS[0]
    turned = Steering(vec, 0.3, operator=get_operator("rotate").with_parameters({"selective": 0.0}))
    want_rotate = steerlab.generate(lm, prompt, steering=turned, max_new_tokens=8)[0]
    want_push = steerlab.generate(lm, prompt, steering=STEERINGS["push"](vec), max_new_tokens=8)[0]
    vec.save(tmp_path / "store" / "happy")
    base = ["--json", "generate", "--model", str(STORIES), "--vector", str(tmp_path / "store" / "happy")]
    runner = CliRunner(env={"COLUMNS": "400"})
    res = runner.invoke(app, [*base, "--max-new-tokens", "8", "--coef", "-3", "--operator", "push", prompt])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)[0]["output"] == want_push
    args = ["--coef", "0.3", "--operator", "rotate", "--operator-param", "selective=0", prompt]
    res = runner.invoke(app, [*base, "--max-new-tokens", "8", *args])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)[0]["output"] == want_rotate
    res = runner.invoke(app, [*base, "--operator", "rotate", "--operator-param", "selective=2", prompt])
    assert res.exit_code == 2 and "must be 0 or 1" in res.output

    auth = {"Authorization": "Bearer k"}
    with TestClient(create_app(lm, tmp_path / "store", ServeSettings(api_key="k"))) as client:

        def post(entry: dict[str, object]) -> object:
            body = {"prompt": prompt, "max_tokens": 8, "steering": [{"vector": "happy", **entry}]}
            return client.post("/v1/completions", headers=auth, json=body)

        r = post({"coefficient": 0.3, "operator": "rotate", "operator_parameters": {"selective": 0}})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == want_rotate
        r = post({"coefficient": -3.0, "operator": "push"})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == want_push
        r = post({"coefficient": 0.3, "operator": "rotate", "operator_parameters": {"selective": 0.5}})
        assert r.status_code == 400 and "must be 0 or 1" in r.json()["error"]["message"]


@pytest.mark.parametrize("name", ["push", "rotate", "rotate_all"])
def test_in_place_equals_out_of_place(vec: steerlab.SteeringVector, name: str) -> None:
    """``apply_`` (the engine's path under inference) against ``apply`` (under autograd): the same
    tokens move, by the same amount up to float noise (``h + (new − h)`` against ``new``, |h| ~ 10:
    atol 1e-5); tokens that do not move are exactly equal."""
    h, v = _data()
    s = STEERINGS[name](vec)
    mask = torch.ones(2, 6, 1)
    mask[1, :2] = 0
    coefficient = 1.5 if name == "push" else s.coefficient
    state = s.op.prepare(v, coefficient)
    want = s.op.apply(h, mask, state, ZERO)
    got = h.clone()
    s.op.apply_(got, mask, state, ZERO)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    still = (want == h).all(-1)
    assert bool(still.any()) and bool((~still).any()) and torch.equal(got[still], h[still])
