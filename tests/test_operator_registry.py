"""An operator added with ``register_operator`` works end to end without editing steerlab: from
Python, the CLI (``--operator``), the server (``"operator"``), bake and the exports.

Two operators are registered for this module and unregistered after it:

* ``test_scaled_add`` — ``h + f·c·v`` with a parameter ``f`` (``factor``) of its own: a constant
  addition, so it bakes and exports, each as ``"add"`` with coefficient ``f·c`` does;
* ``test_cap`` — caps the projection on ``u = v/|v|`` at ``c``: ``h − max(h·u − c, 0)·u``. It
  depends on the activation, so bake and every export refuse it with the operator's own reason.

Both are checked against direct computations: the scaled add against plain ``add`` at ``f·c``
(bit for bit: ``f·c`` is the same float, the same tensors follow), the cap against a hook written
here from the formula (float noise: the same arithmetic in another order).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from typer.testing import CliRunner

import steerlab
from steerlab import Steering, SteeringVector
from steerlab.core.operators import (
    OPERATORS,
    Add,
    ConstantAddition,
    Operator,
    OpState,
    get_operator,
    register_operator,
    unregister_operator,
)
from steerlab.export import gguf, hotwire, vllm_lens
from steerlab.export.bake import BakeError, bake

from .conftest import STORIES, logits

PROMPT = "Once upon a time, there was a little girl"
LAYER = 2
CAP = -0.5  # below the typical projection at layer 2, so the cap acts on most tokens
TOL = 1e-5


@dataclass(frozen=True)
class ScaledAdd(Add):
    """``h + factor·c·v``: a constant addition whose strength is ``factor`` times the coefficient."""

    name: ClassVar[str] = "test_scaled_add"
    factor: float = 1.0

    def prepare(self, direction: torch.Tensor, coefficient: float) -> OpState:
        return OpState((self.factor * coefficient) * direction, coefficient)

    def fixed_form(self, coefficient: float) -> ConstantAddition:
        return ConstantAddition(self.factor * coefficient)


class CapProjection(Operator):
    """The projection on ``u`` capped at ``c``: ``h − max(h·u − c, 0)·u``."""

    name = "test_cap"
    refusal = "it caps each activation's own projection (a test operator's reason)"

    def is_noop(self, coefficient: float) -> bool:
        return False

    def apply(self, h: torch.Tensor, mask: torch.Tensor, state: OpState, index: torch.Tensor) -> torch.Tensor:
        u = state.tensor
        excess = ((h @ u).unsqueeze(-1) - state.coefficient).clamp_min(0)
        return h - mask * excess * u


class PluginCap(CapProjection):
    """The cap under another name, as an installed package would declare it (an entry point)."""

    name = "test_plugin_cap"


@pytest.fixture(scope="module", autouse=True)
def registered() -> Iterator[None]:
    register_operator(ScaledAdd())
    register_operator(CapProjection())
    try:
        yield
    finally:
        unregister_operator("test_scaled_add")
        unregister_operator("test_cap")


@pytest.fixture(scope="module")
def layer_vec(vec: SteeringVector) -> SteeringVector:
    return vec.select([LAYER])


def doubled() -> Operator:
    return get_operator("test_scaled_add").with_parameters({"factor": 2.0})


def capped(h: torch.Tensor, u: torch.Tensor, c: float) -> torch.Tensor:
    """The cap written from its formula, token by token."""
    out = h.clone()
    for index in torch.cartesian_prod(*(torch.arange(n) for n in h.shape[:-1])):
        t = tuple(index.tolist())
        projection = float(h[t] @ u)
        if projection > c:
            out[t] = h[t] - (projection - c) * u
    return out


class CapHook:
    """The cap at one block's output, as a plain forward hook (no steerlab steering)."""

    def __init__(self, lm: steerlab.LM, vector: SteeringVector, c: float) -> None:
        v = vector.directions[LAYER]
        self.u, self.c, self.block = v / v.norm(), c, lm.blocks[LAYER]

    def hook(self, _module: Any, _args: Any, output: Any) -> Any:
        h = output[0] if isinstance(output, tuple) else output
        projection = (h @ self.u).unsqueeze(-1)
        new = h - (projection - self.c).clamp_min(0) * self.u
        return (new, *output[1:]) if isinstance(output, tuple) else new

    def __enter__(self) -> CapHook:
        self.handle = self.block.register_forward_hook(self.hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


# ------------------------------------------------------------------------------------- Python
def test_registry_parameters_and_refusals(layer_vec: SteeringVector) -> None:
    assert {"test_scaled_add", "test_cap"} <= set(OPERATORS)
    op = doubled()
    assert isinstance(op, ScaledAdd) and op.parameters() == {"factor": 2.0}
    assert get_operator("test_scaled_add").parameters() == {"factor": 1.0}  # the registered one is unchanged
    with pytest.raises(steerlab.SteeringSpecError, match=r"no parameter 'scale'.*factor"):
        get_operator("test_scaled_add").with_parameters({"scale": 2.0})
    with pytest.raises(steerlab.SteeringSpecError, match="finite"):
        get_operator("test_scaled_add").with_parameters({"factor": float("nan")})
    with pytest.raises(steerlab.SteeringSpecError, match="no parameter 'factor'"):
        get_operator("test_cap").with_parameters({"factor": 2.0})
    with pytest.raises(steerlab.SteeringSpecError, match="exists"):
        register_operator(CapProjection())
    with pytest.raises(steerlab.SteeringSpecError, match="steerlab's own"):
        unregister_operator("add")
    s = Steering(layer_vec, 2.0, operator=op)
    assert s.operator == "test_scaled_add" and s.op is op


def test_cap_matches_its_formula() -> None:
    """The operator against the formula written token by token (float noise only)."""
    torch.manual_seed(0)
    h = torch.randn(2, 5, 8)
    u = torch.randn(8)
    u = u / u.norm()
    op = get_operator("test_cap")
    got = op.apply(h, torch.ones(2, 5, 1), op.prepare(u * 3.0, CAP), torch.zeros(2, 5, dtype=torch.long))
    torch.testing.assert_close(got, capped(h, u, CAP), rtol=0, atol=TOL)
    assert float((got @ u).max()) <= CAP + TOL  # the cap holds
    untouched = (h @ u) <= CAP
    assert bool(untouched.any()) and torch.equal(got[untouched], h[untouched])  # exact: h − 0·u


def test_python_generate_and_forward(lm: steerlab.LM, layer_vec: SteeringVector) -> None:
    # scaled add at c == add at 2c, bit for bit (2·c is the same float; the same tensors follow)
    plain = logits(lm, [PROMPT])
    with steerlab.steer(lm, Steering(layer_vec, 2.0, operator=doubled())):
        scaled = logits(lm, [PROMPT])
    with steerlab.steer(lm, Steering(layer_vec, 4.0)):
        added = logits(lm, [PROMPT])
    assert torch.equal(scaled, added) and not torch.equal(scaled, plain)
    # the cap == the hook written from its formula (float noise)
    with steerlab.steer(lm, Steering(layer_vec, CAP, operator="test_cap")):
        got = logits(lm, [PROMPT])
    with CapHook(lm, layer_vec, CAP):
        want = logits(lm, [PROMPT])
    torch.testing.assert_close(got, want, rtol=0, atol=TOL)
    assert float((got - plain).abs().max()) > 100 * TOL  # it changed something
    texts = steerlab.generate(lm, PROMPT, steering=Steering(layer_vec, CAP, operator="test_cap"), max_new_tokens=10)
    with CapHook(lm, layer_vec, CAP):
        assert texts == steerlab.generate(lm, PROMPT, max_new_tokens=10)
    two = steerlab.generate(lm, PROMPT, steering=Steering(layer_vec, 2.0, operator=doubled()), max_new_tokens=10)
    assert two == steerlab.generate(lm, PROMPT, steering=Steering(layer_vec, 4.0), max_new_tokens=10)


# ------------------------------------------------------------------------------------- CLI
def test_cli_generate_with_a_registered_operator(lm: steerlab.LM, layer_vec: SteeringVector, tmp_path: Path) -> None:
    from steerlab.cli import app

    layer_vec.save(tmp_path / "v")
    runner = CliRunner(env={"COLUMNS": "400"})  # typer's error panels: one line
    base = ["--json", "generate", "--model", str(STORIES), "--vector", str(tmp_path / "v"), "--max-new-tokens", "8"]

    def run(*extra: str) -> Any:
        res = runner.invoke(app, [*base, *extra, PROMPT])
        assert res.exit_code == 0, res.output
        return json.loads(res.output)[0]["output"]

    want = steerlab.generate(lm, PROMPT, steering=Steering(layer_vec, 4.0), max_new_tokens=8)[0]
    assert run("--coef", "2", "--operator", "test_scaled_add", "--operator-param", "factor=2") == want
    want = steerlab.generate(lm, PROMPT, steering=Steering(layer_vec, CAP, operator="test_cap"), max_new_tokens=8)[0]
    assert run("--coef", str(CAP), "--operator", "test_cap") == want
    res = runner.invoke(app, [*base, "--operator", "test_nope", PROMPT])
    assert res.exit_code == 2 and "test_cap" in res.output  # the registry's names are offered
    res = runner.invoke(app, [*base, "--operator", "test_cap", "--operator-param", "factor=2", PROMPT])
    assert res.exit_code == 2 and "no parameter 'factor'" in res.output


def test_cli_loads_operators_of_installed_packages(
    lm: steerlab.LM, layer_vec: SteeringVector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry point of the group ``steerlab.operators`` makes its operator a CLI choice."""
    from importlib.metadata import EntryPoint

    from steerlab.cli import app, operator_options

    def entry(value: str) -> Any:
        return lambda group: [EntryPoint("cap", value, group)] if group == operator_options.PLUGINS else []

    layer_vec.save(tmp_path / "v")
    runner = CliRunner(env={"COLUMNS": "400"})
    args = ["--json", "generate", "--model", str(STORIES), "--vector", str(tmp_path / "v"), "--max-new-tokens", "8"]
    args += ["--coef", str(CAP), "--operator", "test_plugin_cap", PROMPT]
    monkeypatch.setattr(operator_options, "entry_points", entry(f"{__name__}:PluginCap"))
    try:
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        cap = Steering(layer_vec, CAP, operator="test_plugin_cap")
        assert json.loads(res.output)[0]["output"] == steerlab.generate(lm, PROMPT, steering=cap, max_new_tokens=8)[0]
    finally:
        unregister_operator("test_plugin_cap")
    monkeypatch.setattr(operator_options, "entry_points", entry(f"{__name__}:nothing_here"))
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "operator plugin 'cap'" in res.output and "failed to load" in res.output


# ------------------------------------------------------------------------------------- server
def test_server_takes_registered_operators(lm: steerlab.LM, layer_vec: SteeringVector, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from steerlab.serve import ServeSettings, create_app

    layer_vec.save(tmp_path / "store" / "happy")
    auth = {"Authorization": "Bearer k"}
    app = create_app(lm, tmp_path / "store", ServeSettings(api_key="k"))

    def post(entry: dict[str, Any]) -> Any:
        body = {"prompt": PROMPT, "max_tokens": 8, "steering": [{"vector": "happy", **entry}]}
        return client.post("/v1/completions", headers=auth, json=body)

    with TestClient(app) as client:
        r = post({"coefficient": 2.0, "operator": "test_scaled_add", "operator_parameters": {"factor": 2.0}})
        assert r.status_code == 200, r.text
        want = steerlab.generate(lm, PROMPT, steering=Steering(layer_vec, 4.0), max_new_tokens=8)[0]
        assert r.json()["choices"][0]["text"] == want
        r = post({"coefficient": CAP, "operator": "test_cap"})
        assert r.status_code == 200, r.text
        cap = Steering(layer_vec, CAP, operator="test_cap")
        assert r.json()["choices"][0]["text"] == steerlab.generate(lm, PROMPT, steering=cap, max_new_tokens=8)[0]
        r = post({"operator": "test_nope"})
        assert r.status_code == 400 and "test_cap" in r.text
        r = post({"operator": "test_cap", "operator_parameters": {"factor": 2.0}})
        assert r.status_code == 400 and "no parameter 'factor'" in r.json()["error"]["message"]


# ------------------------------------------------------------------------------------- bake and exports
def test_bake_asks_the_operator(lm: steerlab.LM, layer_vec: SteeringVector, tmp_path: Path) -> None:
    out = bake(lm, Steering(layer_vec, 2.0, operator=doubled()), tmp_path / "scaled")
    ref = bake(lm, Steering(layer_vec, 4.0), tmp_path / "added")
    from safetensors.torch import load_file

    got, want = load_file(out / "model.safetensors"), load_file(ref / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)  # exact: the same bias
    info = json.loads((out / "steerlab_bake.json").read_text())
    assert info["steerings"][0]["operator"] == "test_scaled_add"
    assert info["steerings"][0]["operator_parameters"] == {"factor": 2.0}
    with pytest.raises(BakeError, match="operator='test_cap': it caps each activation's own projection"):
        bake(lm, Steering(layer_vec, CAP, operator="test_cap"), tmp_path / "cap")
    assert not (tmp_path / "cap").exists()


def test_exports_ask_the_operator(layer_vec: SteeringVector, tmp_path: Path) -> None:
    scaled, added = Steering(layer_vec, 2.0, operator=doubled()), Steering(layer_vec, 4.0)
    assert vllm_lens.steering_payload(scaled) == vllm_lens.steering_payload(added)
    assert hotwire.request_spec(scaled, lambda v: "happy") == hotwire.request_spec(added, lambda v: "happy")
    assert torch.equal(gguf.control_vector(scaled).directions[LAYER], 4.0 * layer_vec.directions[LAYER])
    cap = Steering(layer_vec, CAP, operator="test_cap")
    for export in (vllm_lens.steering_payload, lambda s: hotwire.request_spec(s, lambda v: "happy")):
        with pytest.raises(steerlab.SteeringSpecError, match=r"only adds vectors; operator='test_cap'.*caps each"):
            export(cap)
    with pytest.raises(gguf.ControlVectorError, match=r"operator='test_cap'.*caps each"):
        gguf.control_vector(cap)

    from steerlab.cli import app

    layer_vec.save(tmp_path / "v")
    runner = CliRunner(env={"COLUMNS": "400"})
    args = ["export", "gguf", str(tmp_path / "v"), str(tmp_path / "s.gguf"), "--coef", "2"]
    res = runner.invoke(app, [*args, "--operator", "test_scaled_add", "--operator-param", "factor=2"])
    assert res.exit_code == 0, res.output
    back = SteeringVector.from_gguf(tmp_path / "s.gguf")
    assert torch.equal(back.directions[LAYER], 4.0 * layer_vec.directions[LAYER])  # exact: 4·v in float32
    res = runner.invoke(app, ["export", "gguf", str(tmp_path / "v"), str(tmp_path / "c.gguf"), "--operator=test_cap"])
    assert res.exit_code == 2 and "caps each" in res.output and not (tmp_path / "c.gguf").exists()


def test_unregistered_operators_are_gone(layer_vec: SteeringVector) -> None:
    op = unregister_operator("test_cap")
    try:
        with pytest.raises(steerlab.SteeringSpecError, match="operator='test_cap'"):
            Steering(layer_vec, 1.0, operator="test_cap")
    finally:
        register_operator(op)
