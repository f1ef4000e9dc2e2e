"""Conditional steering (CAST) in ``steerlab serve``: a ``steering`` entry may name a condition of
the store (``"condition": NAME``, optional ``"threshold"``). Each row decides on its own prompt
and keeps that decision while other rows join and leave: rows whose condition does not hold give
the unsteered text, rows whose condition holds the text of the same conditioned request alone
(and of :func:`steerlab.generate`), under both schedulers. Bad names, thresholds and conditions
are refused at the edge in OpenAI's error shape; the vLLM engine refuses conditions.

Runs on the trained stories260K model, like ``tests/test_serve.py``.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import steerlab
from steerlab.core.condition import Condition
from steerlab.extraction.condition import find_condition

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from steerlab.serve import ServeSettings, create_app, pack_folder

from .conftest import STORIES
from .test_serve import AUTH, KEY
from .test_serve_continuous import forward_calls, one_by_one, staggered, texts

DOGS = ["The dog ran to the park", "The big dog barked at the cat", "A dog wagged its tail", "The puppy played"]
RAIN = ["It was raining all day", "The rain fell on the roof", "Dark clouds brought rain", "A storm came with rain"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dogs(lm: steerlab.LM) -> Condition:
    """A condition that holds on the dog prompts and not on the rain ones."""
    return find_condition(lm, DOGS, RAIN, chat=False).condition


@pytest.fixture(scope="module")
def template(
    tmp_path_factory: pytest.TempPathFactory, vectors: dict[str, steerlab.SteeringVector], dogs: Condition
) -> Path:
    root = tmp_path_factory.mktemp("cond-store")
    for name, v in vectors.items():
        v.save(root / name)
    dogs.save(root / "dogs")
    return root


@pytest.fixture
def store(tmp_path: Path, template: Path) -> Path:
    shutil.copytree(template, tmp_path / "store")
    return tmp_path / "store"


def body(prompt: str, n: int, entries: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt": prompt, "max_tokens": n, "ignore_eos": True}
    if entries:
        out["steering"] = entries
    return out


def cond(vector: str, coef: float, **extra: Any) -> list[dict[str, Any]]:
    return [{"vector": vector, "coefficient": coef, "condition": "dogs", **extra}]


def test_conditions_are_listed_and_uploaded_like_vectors(
    lm: steerlab.LM, store: Path, dogs: Condition, tmp_path: Path
) -> None:
    app = create_app(lm, store, ServeSettings(api_key=KEY))
    with TestClient(app) as client:
        listed = {v["name"]: v for v in client.get("/v1/vectors", headers=AUTH).json()["data"]}
        assert listed["dogs"]["condition"] == {"layer": dogs.at, "threshold": dogs.threshold, "comparator": ">"}
        assert listed["happy"]["condition"] is None
        r = client.post(
            "/v1/vectors",
            headers=AUTH,
            files={"file": ("c.tar.gz", pack_folder(store / "dogs"))},
            data={"name": "dogs2"},
        )
        assert r.status_code == 201, r.text
        assert r.json()["condition"] == listed["dogs"]["condition"]
        r = client.post(
            "/v1/completions",
            headers=AUTH,
            json=body(DOGS[0], 6, [{"vector": "happy", "coefficient": 6.0, "condition": "dogs2"}]),
        )
        assert r.status_code == 200, r.text
    assert app.state.server.store.get("dogs").condition() is app.state.server.store.get("dogs").condition()


def _cases(vectors: dict[str, steerlab.SteeringVector], dogs: Condition) -> list[tuple[dict[str, Any], Any]]:
    """Requests with and without conditions (and the library steering each one equals)."""
    happy, night, big = vectors["happy"], vectors["night"], vectors["big"]
    low = Condition(dogs.vector, threshold=-1.0)  # holds on every prompt
    out: list[tuple[dict[str, Any], Any]] = []
    for i in range(12):
        prompt = (DOGS + RAIN)[(i * 3) % 8]
        n = 4 + (i * 5) % 13
        kind = i % 4
        if kind == 0:
            out.append((body(prompt, n, cond("happy", 6.0)), steerlab.Steering(happy, 6.0, condition=dogs)))
        elif kind == 1:
            out.append((body(prompt, n), None))
        elif kind == 2:
            out.append(
                (
                    body(prompt, n, [*cond("night", -5.0), {"vector": "big", "coefficient": 4.0}]),
                    steerlab.Steering(night, -5.0, condition=dogs) + steerlab.Steering(big, 4.0),
                )
            )
        else:
            out.append(
                (body(prompt, n, cond("happy", 6.0, threshold=-1.0)), steerlab.Steering(happy, 6.0, condition=low))
            )
    return out


@pytest.mark.parametrize("scheduler", ["continuous", "batch"])
def test_mixed_requests_equal_each_request_alone(
    lm: steerlab.LM, store: Path, scheduler: str, dogs: Condition, vectors: dict[str, steerlab.SteeringVector]
) -> None:
    """Requests with and without conditions, sent at different times (continuous: rows join and
    leave the running batch), each give the text of the same request alone and of the library."""
    cases = _cases(vectors, dogs)
    bodies = [b for b, _ in cases]
    app = create_app(lm, store, ServeSettings(api_key=KEY, scheduler=scheduler, max_batch=5, batch_wait_ms=0))
    try:
        with forward_calls(lm, 0.01) as calls:
            together = texts(asyncio.run(staggered(app, bodies, 0.01)))
        alone = texts(asyncio.run(one_by_one(app, bodies)))
        assert app.state.server.engine.snapshot()["scheduler"] == scheduler
    finally:
        app.state.server.engine.close()
    assert together == alone
    library = [steerlab.generate(lm, b["prompt"], steering=s, max_new_tokens=b["max_tokens"])[0] for b, s in cases]
    assert together == library
    # rows whose condition does not hold are the unsteered text; the others are steered
    plain = [steerlab.generate(lm, b["prompt"], max_new_tokens=b["max_tokens"])[0] for b in bodies]
    for i, (b, got) in enumerate(zip(bodies, together)):
        if i % 4 == 0:
            assert (got == plain[i]) == (b["prompt"] in RAIN), (i, b["prompt"])
        if i % 4 == 3:
            assert got != plain[i]  # threshold -1: holds on every prompt
    if scheduler == "continuous":
        steps = [i for i, (_, tokens) in enumerate(calls) if tokens == 1]
        assert any(tokens > 1 for _, tokens in calls[steps[0] : steps[-1]]), calls  # rows joined mid-run


def test_a_condition_decided_on_the_prompt_is_kept_as_rows_join(
    lm: steerlab.LM, store: Path, dogs: Condition, vectors: dict[str, steerlab.SteeringVector]
) -> None:
    """A long conditioned row (holds) keeps being steered while short rows whose condition does
    not hold join and leave, and vice versa."""
    long_dog = body(DOGS[1], 40, cond("happy", 6.0))
    long_rain = body(RAIN[1], 40, cond("happy", 6.0))
    shorts = [body(p, 3, cond("happy", 6.0)) for p in (RAIN[2], DOGS[2], RAIN[3], DOGS[3])]
    bodies = [long_dog, long_rain, *shorts]
    app = create_app(lm, store, ServeSettings(api_key=KEY, batch_wait_ms=0))
    try:
        with forward_calls(lm, 0.01):
            got = texts(asyncio.run(staggered(app, bodies, 0.05)))
    finally:
        app.state.server.engine.close()
    steer = steerlab.Steering(vectors["happy"], 6.0, condition=dogs)
    want = [steerlab.generate(lm, b["prompt"], steering=steer, max_new_tokens=b["max_tokens"])[0] for b in bodies]
    assert got == want
    assert got[1] == steerlab.generate(lm, RAIN[1], max_new_tokens=40)[0]
    assert got[0] != steerlab.generate(lm, DOGS[1], max_new_tokens=40)[0]


def _error(r: Any) -> tuple[int, str | None, str | None]:
    e = r.json()["error"]
    return r.status_code, e["code"], e["param"]


def test_bad_conditions_are_refused_at_the_edge(lm: steerlab.LM, store: Path, dogs: Condition) -> None:
    # a condition made without a model id: the store takes it, the steering refuses it
    replace(dogs.vector, model_id="", meta={"condition": {"layer": dogs.at, "threshold": 0.0}}).save(store / "anon")
    steerlab.SteeringVector.load(store / "dog").select([3]).save(store / "dog3")
    happy = {"vector": "happy", "coefficient": 4.0}
    cases = [
        ([{**happy, "condition": "nope"}], (404, "condition_not_found", "steering[0].condition")),
        ([{**happy, "condition": "../x"}], (400, "invalid_vector_name", "steering[0].condition")),
        ([happy, {**happy, "condition": "dogs", "threshold": 1.5}], (400, "invalid_value", "steering.1.threshold")),
        ([{**happy, "threshold": 0.2}], (400, "invalid_value", "steering.0")),
        ([{**happy, "condition": "dog"}], (400, "invalid_condition", "steering[0].condition")),  # plain, 2 layers
        ([{**happy, "condition": "dog", "threshold": 0.1}], (400, "invalid_condition", "steering[0].condition")),
        ([{**happy, "condition": "dogs", "positions": "all"}], (400, "invalid_steering", "steering[0]")),
        ([{**happy, "condition": "anon"}], (400, "invalid_steering", "steering[0]")),
    ]
    with TestClient(create_app(lm, store, ServeSettings(api_key=KEY))) as client:
        for steering, want in cases:
            r = client.post(
                "/v1/completions", headers=AUTH, json={"prompt": "x", "max_tokens": 2, "steering": steering}
            )
            assert _error(r) == want, (steering, r.text)
            assert r.json()["error"]["type"] == ("not_found_error" if want[0] == 404 else "invalid_request_error")
        # a plain one-layer vector is a condition when the request gives its threshold
        r = client.post(
            "/v1/completions",
            headers=AUTH,
            json={
                "prompt": "x",
                "max_tokens": 2,
                "steering": [
                    {**happy, "condition": "dog3", "threshold": 0.3},
                    {"vector": "happy", "condition": "dogs"},
                ],
            },
        )
        assert r.status_code == 200, r.text


def test_the_vllm_engine_refuses_conditions(lm: steerlab.LM, store: Path) -> None:
    from steerlab.serve.engines.vllm import VLLMOptions, engine_factory, load_shell

    from .vllm_plugins import PluginModel, fake_vllm_app

    httpx = pytest.importorskip("httpx")
    fake = fake_vllm_app(PluginModel(lm, "vllm-lens"))
    options = VLLMOptions(url="http://vllm.test", plugin="vllm-lens", transport=httpx.ASGITransport(app=fake))
    app = create_app(load_shell(STORIES), store, ServeSettings(api_key=KEY), engine=engine_factory(options))
    with TestClient(app) as client:
        r = client.post(
            "/v1/completions",
            headers=AUTH,
            json={
                "prompt": "x",
                "max_tokens": 2,
                "steering": [{"vector": "happy", "coefficient": 4.0, "condition": "dogs"}],
            },
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "steering[0]", r.text
        assert "conditional" in r.json()["error"]["message"] and "vllm-lens" in r.json()["error"]["message"]
    assert not fake.state.received
