"""What a steering costs, served for the playground: ``POST /v1/cost/perplexity_ratio`` equals the
library's likelihood scorer, ``GET /v1/cost/breakdown/{name}`` the library's breakdown curve
(computed once per vector, off the event loop, recomputed when the vector is replaced).

Runs on the trained stories260K model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import steerlab
from steerlab.analysis import breakdown_curve
from steerlab.data.demo import NEUTRAL
from steerlab.evaluate.likelihood import continuation_nll, perplexities

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from steerlab.serve import ServeSettings, create_app, pack_folder

from .conftest import STORIES
from .test_serve import AUTH, KEY

PROMPT = "Once upon a time"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def store(tmp_path: Path, vec: steerlab.SteeringVector, actadd_vec: steerlab.SteeringVector) -> Path:
    root = tmp_path / "store"
    vec.save(root / "happy")
    actadd_vec.save(root / "love")
    return root


def test_perplexity_ratio_equals_the_library(lm: steerlab.LM, vec: steerlab.SteeringVector, store: Path) -> None:
    plain = steerlab.generate(lm, PROMPT, max_new_tokens=16)[0]
    steered = steerlab.generate(lm, PROMPT, steering=steerlab.Steering(vec, 6.0), max_new_tokens=16)[0]
    nlls = continuation_nll(lm, [PROMPT, PROMPT], [steered, plain])
    ppl_s, ppl_u = perplexities(nlls)
    with TestClient(create_app(lm, store, ServeSettings(api_key=KEY))) as client:
        r = client.post(
            "/v1/cost/perplexity_ratio", headers=AUTH, json={"prompt": PROMPT, "steered": steered, "unsteered": plain}
        )
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["perplexity_steered"] == pytest.approx(ppl_s, rel=1e-6)
        assert got["perplexity_unsteered"] == pytest.approx(ppl_u, rel=1e-6)
        assert got["ratio"] == pytest.approx(ppl_s / ppl_u, rel=1e-6)
        assert (got["tokens_steered"], got["tokens_unsteered"]) == (nlls[0][1], nlls[1][1])
        assert got["ratio"] > 1.0  # the plain model finds the steered text less likely
        same = client.post(
            "/v1/cost/perplexity_ratio", headers=AUTH, json={"prompt": PROMPT, "steered": plain, "unsteered": plain}
        ).json()
        assert same["ratio"] == pytest.approx(1.0)
        # an empty continuation has no perplexity: null, not NaN
        empty = client.post(
            "/v1/cost/perplexity_ratio", headers=AUTH, json={"prompt": PROMPT, "steered": "", "unsteered": plain}
        ).json()
        assert empty["ratio"] is None and empty["perplexity_steered"] is None
        # refusals in OpenAI's shape
        bad = client.post("/v1/cost/perplexity_ratio", headers=AUTH, json={"prompt": PROMPT, "steered": "x"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "unsteered"
        text = client.post(
            "/v1/cost/perplexity_ratio",
            headers={**AUTH, "Content-Type": "text/plain"},
            content=b'{"prompt": "a", "steered": "b", "unsteered": "c"}',
        )
        assert text.status_code == 415
        assert (
            client.post("/v1/cost/perplexity_ratio", json={"prompt": "a", "steered": "b", "unsteered": "c"}).status_code
            == 401
        )


def test_breakdown_equals_the_library_and_is_cached(lm: steerlab.LM, vec: steerlab.SteeringVector, store: Path) -> None:
    want = breakdown_curve(lm, vec, NEUTRAL)
    app = create_app(lm, store, ServeSettings(api_key=KEY))
    with TestClient(app) as client:
        r = client.get("/v1/cost/breakdown/happy", headers=AUTH)
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["available"] and got["texts"] == len(NEUTRAL)
        assert got["breaks_at"]["positive"] == want.breaking_point_positive
        assert got["breaks_at"]["negative"] == -want.breaking_point_negative
        assert [p["coefficient"] for p in got["curve"]] == want.coefficients
        assert [p["ppl_ratio"] for p in got["curve"]] == pytest.approx(want.ppl_ratio, rel=1e-6)
        assert got["base_perplexity"] == pytest.approx(want.base_perplexity, rel=1e-6)
        # cached: the same computation, not a second one
        cost = app.state.server.cost
        first = cost.breakdown_future("happy")
        assert cost.breakdown_future("happy") is first
        assert client.get("/v1/cost/breakdown/happy", headers=AUTH).json() == got
        # a replaced vector is measured again
        (-vec).save(store.parent / "neg" / "happy")
        up = client.post(
            "/v1/vectors",
            headers=AUTH,
            data={"name": "happy", "overwrite": "true"},
            files={"file": ("h.tar.gz", pack_folder(store.parent / "neg" / "happy"))},
        )
        assert up.status_code == 201, up.text
        assert cost.breakdown_future("happy") is not first
        flipped = client.get("/v1/cost/breakdown/happy", headers=AUTH).json()
        assert flipped["breaks_at"] == {
            "positive": -got["breaks_at"]["negative"],
            "negative": -got["breaks_at"]["positive"],
        }
        # a token-wise vector has no curve; an unknown one is a 404
        love = client.get("/v1/cost/breakdown/love", headers=AUTH).json()
        assert love["available"] is False and love["breaks_at"] == {"positive": None, "negative": None}
        missing = client.get("/v1/cost/breakdown/nope", headers=AUTH)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "vector_not_found"


def test_costs_are_refused_by_the_vllm_engine(lm: steerlab.LM, store: Path) -> None:
    httpx = pytest.importorskip("httpx")
    from steerlab.serve.engines.vllm import VLLMOptions, engine_factory, load_shell

    from .vllm_plugins import PluginModel, fake_vllm_app

    options = VLLMOptions(
        url="http://vllm.test", transport=httpx.ASGITransport(app=fake_vllm_app(PluginModel(lm, "vllm-lens")))
    )
    app = create_app(load_shell(STORIES), store, ServeSettings(api_key=KEY), engine=engine_factory(options))
    with TestClient(app) as client:
        r = client.get("/v1/cost/breakdown/happy", headers=AUTH)
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_by_engine"
        r = client.post(
            "/v1/cost/perplexity_ratio", headers=AUTH, json={"prompt": "a", "steered": "b", "unsteered": "c"}
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_by_engine"


def test_chat_prompts_are_scored_with_the_chat_template(lm: steerlab.LM, store: Path) -> None:
    """``chat: true`` scores the prompt as the server renders one user message."""
    app = create_app(lm, store, ServeSettings(api_key=KEY))
    server = app.state.server
    from steerlab.serve.schemas import ChatCompletionRequest

    rendered = server.render_chat(
        ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": PROMPT}]})
    )
    want = perplexities(continuation_nll(lm, [rendered, rendered], [" the dog", " a cat ran"]))
    with TestClient(app) as client:
        got = client.post(
            "/v1/cost/perplexity_ratio",
            headers=AUTH,
            json={"prompt": PROMPT, "chat": True, "steered": " the dog", "unsteered": " a cat ran"},
        ).json()
    assert got["ratio"] == pytest.approx(want[0] / want[1], rel=1e-6)
