"""``GET /v1/presets``: the frontier's winners of ``steerlab demo`` offered by the server.

On stories260K the packaged setting (chosen on the default model, layers 8-19) does not fit: no
presets, with the reason, and nothing is built or stored. A setting made for stories260K (layers
1-3) is built into the store exactly as ``steerlab demo`` builds its vectors, reused at the next
start, rebuilt when its vector goes, never written over someone else's vector, and its ``steering``
entry is a request the server serves as the library does. The packaged setting on the default
model is a slow test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import steerlab
from steerlab.data.demo_setting import DemoSetting, DirectionSetting, load_demo_setting
from steerlab.errors import ModelMismatchError
from steerlab.evaluate.demo_run import demo_rows
from steerlab.serve import ServeSettings, create_app
from steerlab.serve.presets import NAMES, PresetService, unfit_reason
from steerlab.serve.store_errors import AlreadyExists

pytest.importorskip("fastapi")
from fastapi import FastAPI
from fastapi.testclient import TestClient

from .test_serve import AUTH, KEY

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STORIES_SETTING = DemoSetting(
    {
        1: DirectionSetting("pca_diff", (1, 2, 3), 2.5, 0.6, 1.1),
        -1: DirectionSetting("mean_diff", (1, 2, 3), -12.0, 0.5, 1.2, operator="add_norm_preserving", kl_cap=0.3),
    },
    "frontier report 'Effect–fluency frontier on stories260K': a test setting",
)
"""A setting made for stories260K, its negative side with an operator and a KL cap (-12: strong
enough to change stories260K's greedy continuation of the playground's prompt)."""


def served(lm: steerlab.LM, store: Path, setting: DemoSetting | None = None, **kw: Any) -> FastAPI:
    app = create_app(lm, store, ServeSettings(api_key=KEY, max_tokens=16, **kw))
    if setting is not None:
        server = app.state.server
        server.presets = PresetService(lm, server.store, server.engine.model_lock, server.tok_lock, setting)
    return app


@pytest.fixture
def client(lm: steerlab.LM, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(served(lm, tmp_path / "store", STORIES_SETTING)) as c:
        yield c


def presets(c: TestClient) -> dict[str, Any]:
    r = c.get("/v1/presets", headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


def test_packaged_setting_offers_no_presets_on_stories260k_and_says_why(lm: steerlab.LM, tmp_path: Path) -> None:
    with TestClient(served(lm, tmp_path / "store")) as c:
        body = presets(c)
        assert body["data"] == []
        assert "layers 8-19, outside stories260K's 5 layers" in body["reason"]
        assert "chosen on HuggingFaceTB/SmolLM2-135M-Instruct, not stories260K" in body["reason"]
        assert body["made_for"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert body["source"] == load_demo_setting().source
        assert c.get("/v1/vectors", headers=AUTH).json()["data"] == []  # nothing built, nothing stored
        # the key guards it like every /v1 endpoint, with OpenAI's error shape
        r = c.get("/v1/presets")
        assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}
        card = c.get("/v1/models", headers=AUTH).json()["data"][0]["steerlab"]
        assert card["operators"][:4] == ["add", "ablate", "clamp", "add_norm_preserving"]
        assert card["serving"]["presets"] is True


def test_presets_turned_off(lm: steerlab.LM, tmp_path: Path) -> None:
    with TestClient(served(lm, tmp_path / "store", presets=False)) as c:
        body = presets(c)
        assert body["data"] == [] and "turned off" in body["reason"]


def test_unfit_reason_checks_model_and_layers() -> None:
    setting = dataclasses.replace(STORIES_SETTING, source="a setting naming no model")
    assert unfit_reason(setting, "anything", 4) is None  # layers 1-3 fit 4 layers
    assert unfit_reason(setting, "anything", 3) == "they steer layers 1-3, outside anything's 3 layers"
    assert unfit_reason(STORIES_SETTING, "stories260K", 5) is None


def test_presets_are_the_demo_vectors_in_the_store(client: TestClient, lm: steerlab.LM) -> None:
    body = presets(client)
    assert body["reason"] is None and body["made_for"] == "stories260K"
    happy, sad = body["data"]
    assert (happy["id"], happy["vector"], sad["id"], sad["vector"]) == ("happy", NAMES[1], "sad", NAMES[-1])
    assert happy["label"] == "happy (frontier winner: pca_diff L1-3 c=+2.5, held-out 0.60 at 1.10x)"
    assert happy["steering"] == {"vector": "preset-happy", "coefficient": 2.5, "operator": "add"}
    assert happy["omitted"] == [] and happy["source"] == STORIES_SETTING.source
    # the KL cap the server refuses is left out of the entry, and said so
    assert sad["steering"] == {"vector": "preset-sad", "coefficient": -12.0, "operator": "add_norm_preserving"}
    assert sad["kl_cap"] == 0.3 and [o["field"] for o in sad["omitted"]] == ["kl_cap"]
    assert sad["label"].endswith("without its KL cap: this server cannot apply one")
    assert "KL<=0.3" in sad["label"]

    # the stored vectors are the demo's, built by the same code on the same pairs: equal exactly
    rows = demo_rows(lm, STORIES_SETTING.directions)
    store = client.app.state.server.store  # type: ignore[attr-defined]
    for d, row in zip((1, -1), rows[1:]):
        assert row is not None
        stored = store.get(NAMES[d]).vector
        assert stored.layers == row.vector.layers
        for k in stored.layers:
            assert torch.equal(stored.directions[k], row.vector.directions[k])
        assert stored.meta["preset"]["direction"] == ("positive" if d == 1 else "negative")

    # the preset's entry is a request the server serves, as the library generates it (greedy: exact)
    prompt = "Once upon a time"
    for p, row in zip((happy, sad), rows[1:]):
        r = client.post(
            "/v1/completions",
            headers=AUTH,
            json={"prompt": prompt, "max_tokens": 12, "temperature": 0, "steering": [p["steering"]]},
        )
        assert r.status_code == 200, r.text
        want = steerlab.generate(lm, prompt, steering=dataclasses.replace(row, kl_cap=None), max_new_tokens=12)[0]
        assert r.json()["choices"][0]["text"] == want
    assert want != steerlab.generate(lm, prompt, max_new_tokens=12)[0]  # the sad preset steers
    # with the cap it would be refused: that is why the preset leaves it out
    capped = {**sad["steering"], "kl_cap": 0.3}
    r = client.post("/v1/completions", headers=AUTH, json={"prompt": prompt, "max_tokens": 4, "steering": [capped]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "kl_cap_unsupported"


def test_presets_are_reused_rebuilt_and_never_overwrite_a_vector(
    lm: steerlab.LM, tmp_path: Path, vec: steerlab.SteeringVector, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    with TestClient(served(lm, store, STORIES_SETTING)) as c:
        assert all(p["available"] for p in presets(c)["data"])
        # deleted: the next request builds it again
        assert c.delete("/v1/vectors/preset-sad", headers=AUTH).status_code == 200
        assert [p["available"] for p in presets(c)["data"]] == [True, True]
        assert "preset-sad" in c.app.state.server.store.names()  # type: ignore[attr-defined]

    # a new start on the same store finds both and builds nothing
    def no_build(*_a: object, **_k: object) -> None:
        raise AssertionError("built again")

    monkeypatch.setattr(PresetService, "_vector", no_build)
    with TestClient(served(lm, store, STORIES_SETTING)) as c:
        assert [p["available"] for p in presets(c)["data"]] == [True, True]
    monkeypatch.undo()

    # a vector of that name that is not a preset is never replaced; an older preset is
    vec.save(store / "preset-happy")  # written over the preset while no server runs
    older = dataclasses.replace(
        STORIES_SETTING, directions={**STORIES_SETTING.directions, -1: DirectionSetting("mean_diff", (1, 2), -2.0)}
    )
    with TestClient(served(lm, store, older)) as c:
        body = presets(c)
        happy, sad = body["data"]
        assert not happy["available"] and happy["steering"] is None
        assert "not this preset" in happy["reason"] and body["reason"] == happy["reason"]
        assert sad["available"]
        server = c.app.state.server  # type: ignore[attr-defined]
        assert "preset" not in server.store.get("preset-happy").vector.meta  # still the uploaded vector
        assert server.store.get("preset-sad").vector.layers == [1, 2]  # rebuilt for the new setting


def test_store_put_checks_the_vector(lm: steerlab.LM, tmp_path: Path, vec: steerlab.SteeringVector) -> None:
    from steerlab.serve.store import VectorStore

    store = VectorStore(tmp_path / "store", lm)
    assert store.put("a", vec).name == "a" and (tmp_path / "store" / "a" / "vector.safetensors").is_file()
    with pytest.raises(AlreadyExists):
        store.put("a", vec)
    store.put("a", -vec, overwrite=True)
    assert torch.equal(store.get("a").vector.directions[1], -vec.directions[1])
    other = dataclasses.replace(vec, model_id="someone/else")
    with pytest.raises(ModelMismatchError):
        store.put("b", other)
    assert store.names() == ["a"] and sorted(p.name for p in (tmp_path / "store").iterdir()) == ["a"]


@pytest.mark.slow
def test_default_model_offers_the_packaged_winners(tmp_path: Path) -> None:
    lm = steerlab.load_model("default")
    setting = load_demo_setting()
    with TestClient(create_app(lm, tmp_path / "store", ServeSettings(api_key=KEY))) as c:
        body = presets(c)
    assert body["reason"] is None and body["made_for"] == lm.model_id
    labels = [p["label"] for p in body["data"]]
    assert labels[0].startswith("happy (frontier winner: " + setting.directions[1].label)
    assert labels[1].startswith("sad (frontier winner: " + setting.directions[-1].label)
    rows = demo_rows(lm, setting.directions)
    store = c.app.state.server.store  # type: ignore[attr-defined]
    for d, row in zip((1, -1), rows[1:]):
        assert row is not None
        stored = store.get(NAMES[d]).vector
        assert all(torch.equal(stored.directions[k], row.vector.directions[k]) for k in row.vector.layers)
