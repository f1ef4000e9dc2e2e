"""The compiled decoding path of ``steerlab serve`` (``--compiled on``): the slot decoder
(:mod:`steerlab.runtime.slots`) and the scheduler around it
(:mod:`steerlab.serve.engines.compiled`).

The step is compiled by a counting backend (TorchDynamo's graph, run by ``torch.fx`` with the
same ATen kernels as eager: compiling costs ~2 s a shape here, not TorchInductor's 10-90 s), once
per decoder shape; caches start at 16 positions so that rows shift, compact and move between
shapes within a few tokens. TorchInductor itself is tested once (marked slow).

Exactness, per test: a row's greedy tokens against the same request served alone eagerly are
float noise (the static cache attends over more, masked, positions than the eager cache: ~1e-6
on the logits of stories260K, against gaps of >1e-2 between its top tokens on these prompts, the
margin tests/test_decode.py relies on too); a coefficient of 0 against no steering on this path
is exact by construction (``x + 0.0 == x``): logits compared bit for bit.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

import steerlab
from steerlab import Steering
from steerlab.models.tokens import position_ids
from steerlab.runtime import hf
from steerlab.runtime.passes import forward
from steerlab.runtime.session import steer_rows
from steerlab.runtime.slots import SlotDecoder, row_deltas, slot_count, slot_length
from steerlab.serve import ServeSettings, create_app
from steerlab.serve.engines import compiled
from steerlab.serve.engines.compiled import CompiledScheduler

from .conftest import PROMPTS
from .test_serve import AUTH, KEY, ServerThread, steering
from .test_serve_edges import _inject, huge_vector
from .test_serve_hardening import assert_openai_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Counting:
    """A ``torch.compile`` backend that counts the graphs it is given and runs them eagerly."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, _inputs: Any) -> Any:
        self.graphs += 1
        return gm.forward


@pytest.fixture(scope="module")
def backend() -> Iterator[Counting]:
    """The servers of this module compile with a counting backend into caches of 16 positions on."""
    torch._dynamo.reset()
    counting = Counting()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compiled, "BACKEND", counting)
        mp.setattr(compiled, "MIN_LENGTH", 16)
        yield counting
    torch._dynamo.reset()


def _prefill(lm: steerlab.LM, prompt: str, row: Any) -> tuple[Any, int, int]:
    """A prompt's steered cache, its length and its greedy first token (as the scheduler's admit)."""
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids
    mask = torch.ones_like(ids)
    cache = hf.new_cache(lm.model)
    with torch.inference_mode(), steer_rows(lm, [row], prompt_length=mask.sum(-1)):
        out = forward(lm, ids, mask, position_ids=position_ids(mask), cache=cache, use_cache=True, logits_to_keep=1)
    return cache, int(ids.shape[1]), int(out.logits[0, -1].argmax())


# --------------------------------------------------------------------------- the slot decoder
def test_slot_shapes() -> None:
    assert [slot_count(n, 16) for n in (0, 1, 2, 3, 5, 16)] == [1, 1, 2, 4, 8, 16]
    assert slot_count(9, 12) == 12 and slot_count(12, 12) == 12
    assert slot_length(10, 16) == 16 and slot_length(17, 16) == 32 and slot_length(10) == 64


def test_rows_join_and_leave_mid_stream_with_the_tokens_of_each_alone_and_one_graph(
    lm: steerlab.LM, vec: steerlab.SteeringVector, backend: Counting
) -> None:
    """Rows with different vectors and coefficients (and none) join a 3-slot decoder of 32
    positions at different steps, leave, and a new row takes a freed slot: each row's greedy tokens
    are those of ``generate`` alone (eager; float noise, see the module), the rows shift right and
    the cache compacts on the way, and the step compiled once."""
    other = steerlab.extract(
        lm, steerlab.pairs_from_lists(["The sun was warm"], ["The night was cold"]), method="mean_diff", layers=[1, 2]
    )
    rows = [Steering(vec, 1.5), None, Steering(other, -2.0), Steering(vec, -1.0, positions="generated")]
    n_new = [18, 10, 14, 12]
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[1]]
    alone = [
        steerlab.generate(lm, [p], [r], max_new_tokens=n, compiled=False)[0]
        for p, r, n in zip(prompts, rows, n_new, strict=True)
    ]
    before = backend.graphs
    dec = SlotDecoder(lm, 3, 32, backend=backend)
    got: dict[int, list[int]] = {}
    slot_of: dict[int, int] = {}
    joins = {0: 0, 1: 3, 2: 5}  # row -> the step it joins at; row 3 joins when row 1 leaves
    shifted = compacted = False
    with torch.inference_mode():
        for step in range(60):
            for row, at in joins.items():
                if at == step and row not in slot_of:
                    cache, n, tok = _prefill(lm, prompts[row], rows[row])
                    slot = dec.free()
                    assert slot is not None
                    column = dec.column
                    deltas = row_deltas(lm, rows[row], n)
                    assert deltas is not None
                    dec.join(slot, hf.kv_tensors(cache), n, tok, deltas)
                    shifted |= dec.column > column
                    slot_of[row], got[row] = slot, [tok]
            if not slot_of:
                break
            compacted |= dec.column == dec.length
            logits = dec.step()
            for row, slot in list(slot_of.items()):
                tok = int(logits[slot].argmax())
                if len(got[row]) == n_new[row]:
                    dec.leave(slot)
                    del slot_of[row]
                    if row == 1:
                        joins[3] = step + 1
                    continue
                got[row].append(tok)
                dec.feed(slot, tok)
    texts = [lm.tokenizer.decode(got[i], skip_special_tokens=True) for i in range(4)]
    assert texts == alone
    assert shifted and compacted
    assert backend.graphs - before == 1  # new vectors, coefficients and slots: no recompilation


def test_coefficient_zero_is_bit_identical_to_no_steering_on_this_path(
    lm: steerlab.LM, vec: steerlab.SteeringVector, backend: Counting
) -> None:
    """Slot 0 with no steering, then the same request at coefficient 0, beside the same steered
    row in slot 1: every logit and every key and value of slot 0 are equal bit for bit (exact, by
    construction). (Two equal rows in two slots of one step are not: the kernels may round rows
    differently, ~3e-6.)"""
    dec = SlotDecoder(lm, 2, 32, backend=backend)
    zero = row_deltas(lm, Steering(vec, 0.0), 5)
    assert zero is not None and not zero.any()
    assert row_deltas(lm, Steering(vec, 1.0, positions=(1, 3)), 5) is None  # a window: not plain adds
    assert row_deltas(lm, Steering(vec, 1.0, operator="ablate"), 5) is None
    runs = []
    with torch.inference_mode():
        for row in (None, Steering(vec, 0.0)):
            dec.clear()
            for slot, (prompt, steer) in enumerate([(PROMPTS[2], row), (PROMPTS[0], Steering(vec, 1.5))]):
                cache, n, tok = _prefill(lm, prompt, steer)
                deltas = row_deltas(lm, steer, n)
                assert deltas is not None
                dec.join(slot, hf.kv_tensors(cache), n, tok, deltas)
            logits = []
            for _ in range(8):
                out = dec.step()
                logits.append(out[0].clone())
                for slot in range(2):
                    dec.feed(slot, int(out[slot].argmax()))
            runs.append((torch.stack(logits), [(k[0].clone(), v[0].clone()) for k, v in hf.kv_tensors(dec.cache)]))
    (plain, plain_kv), (steered, steered_kv) = runs
    assert torch.equal(plain, steered)
    assert all(torch.equal(a, b) for pair in zip(plain_kv, steered_kv, strict=True) for a, b in zip(*pair, strict=True))


# --------------------------------------------------------------------------- the server
def _bodies() -> list[dict[str, Any]]:
    """Requests over vectors and none; some whose steering is not plain adds (a window, ablate)."""
    configs: list[list[dict[str, Any]] | None] = [
        None,
        steering("happy", 2.0),
        [{"vector": "dog", "coefficient": 3.0, "positions": [1, 4]}],  # eager: a window
        steering("dog", 3.0),
        [{"vector": "night", "coefficient": -2.0, "positions": "generated"}],
        [{"vector": "big", "coefficient": 1.0, "operator": "ablate"}],  # eager: not an add
        [{"vector": "big", "coefficient": 3.0, "layers": [3]}, {"vector": "happy", "coefficient": 1.0}],
    ]
    out = []
    for i in range(14):
        body: dict[str, Any] = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 5 + (i * 7) % 11}
        if configs[i % len(configs)] is not None:
            body["steering"] = configs[i % len(configs)]
        out.append(body)
    return out


async def _post(app: Any, bodies: list[dict[str, Any]], gap_s: float | None) -> list[httpx.Response]:
    """``gap_s=None``: one after another (each request alone); else request ``i`` at ``i * gap_s``."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH, timeout=120) as c:
        if gap_s is None:
            return [await c.post("/v1/completions", json=b) for b in bodies]

        async def one(i: int, body: dict[str, Any]) -> httpx.Response:
            await asyncio.sleep(i * gap_s)
            return await c.post("/v1/completions", json=body)

        return list(await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies))))


def _texts(responses: list[httpx.Response]) -> list[str]:
    assert [r.status_code for r in responses] == [200] * len(responses), [r.text for r in responses]
    return [r.json()["choices"][0]["text"] for r in responses]


@pytest.fixture(scope="module")
def alone(lm: steerlab.LM, template_store: Path) -> list[str]:
    """Each request of :func:`_bodies` served alone by the eager continuous scheduler."""
    app = create_app(lm, template_store, ServeSettings(api_key=KEY, compiled="off"))
    try:
        return _texts(asyncio.run(_post(app, _bodies(), None)))
    finally:
        app.state.server.engine.close()


@pytest.fixture
def slow_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every slot step takes 3 ms more (outside the graph), so that requests sent at different
    times meet mid-generation."""
    step = SlotDecoder.step

    def slow(self: SlotDecoder) -> torch.Tensor:
        time.sleep(0.003)
        return step(self)

    monkeypatch.setattr(SlotDecoder, "step", slow)


def _scheduler(app: Any) -> CompiledScheduler:
    sched = app.state.server.engine.active
    assert isinstance(sched, CompiledScheduler)
    return sched


@pytest.mark.parametrize("gap_s", [0.0, 0.02])
def test_mixed_rows_served_together_or_joining_mid_stream_give_the_text_of_each_alone(
    lm: steerlab.LM, store: Path, backend: Counting, alone: list[str], slow_slots: None, gap_s: float
) -> None:
    """Requests sent at once, or one every 20 ms (joining and leaving mid-stream), some of them
    not plain adds (served eagerly beside the slots): every text is the request's alone."""
    app = create_app(lm, store, ServeSettings(api_key=KEY, compiled="on", max_batch=8, batch_wait_ms=5))
    graphs = backend.graphs
    try:
        got = _texts(asyncio.run(_post(app, _bodies(), gap_s)))
        snap = app.state.server.engine.snapshot()
        sched = _scheduler(app)
    finally:
        app.state.server.engine.close()
    assert got == alone
    assert snap["compiled"] is True and snap["running"] == 0
    slot_steps = sum(d.steps for d in sched.decoders.values())
    assert slot_steps > 0 and snap["steps_total"] > slot_steps  # both paths decoded
    assert len(sched.decoders) >= 2  # the slots grew (or shrank) with the rows
    # one graph per shape that ran a step: rows of other vectors, coefficients and slots recompile
    # nothing (a shape the rows left before its first step compiled nothing: which shapes are made
    # depends on when the requests meet, a matter of thread timing)
    ran = [d for d in sched.decoders.values() if d.steps > 0]
    assert backend.graphs - graphs == len(ran) >= 1
    assert len(sched.decoders) == len(snap["compiled_shapes"])
    assert sched.dec is None and not sched.slotted and not sched.rows


def test_a_row_with_nan_logits_fails_alone_on_the_compiled_path(
    lm: steerlab.LM, store: Path, backend: Counting, tmp_path: Path, alone: list[str]
) -> None:
    """A vector whose decoding steps overflow (its prompt does not: ``positions="generated"``) gives
    its request a 400 ``steering_overflow``; the rows in the slots with it go on, each with its
    text alone."""
    app = create_app(lm, store, ServeSettings(api_key=KEY, compiled="on", max_batch=8, batch_wait_ms=100))
    _inject(app, "huge", huge_vector(lm), tmp_path)
    bad = {
        "prompt": "The dog",
        "max_tokens": 6,
        "steering": [{"vector": "huge", "coefficient": 16.0, "positions": "generated"}],
    }
    good = [b for b in _bodies()[:4]]
    try:
        responses = asyncio.run(_post(app, [bad, *good], 0.0))
        sched = _scheduler(app)
    finally:
        app.state.server.engine.close()
    assert_openai_error(responses[0], 400, "steering_overflow")
    assert _texts(responses[1:]) == alone[:4]
    assert sum(d.steps for d in sched.decoders.values()) > 0


def test_a_cancelled_stream_leaves_its_slot(lm: steerlab.LM, store: Path, backend: Counting, slow_slots: None) -> None:
    """A streaming client that goes away stops its row (far fewer than its 250 tokens); a request
    decoding beside it finishes with its text alone, and the server goes on."""
    app = create_app(lm, store, ServeSettings(api_key=KEY, compiled="on", max_batch=4, batch_wait_ms=50))
    other = {"prompt": PROMPTS[2], "max_tokens": 12, "steering": steering("happy", 2.0)}
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, headers=AUTH, timeout=60) as client:
        want = client.post("/v1/completions", json=other).json()["choices"][0]["text"]
        tokens_before = client.get("/metrics?format=json").json()["completion_tokens_total"]

        async def run() -> tuple[int, str]:
            async with httpx.AsyncClient(base_url=srv.url, headers=AUTH, timeout=60) as c:

                async def quitter() -> int:
                    body = {"prompt": PROMPTS[0], "max_tokens": 250, "ignore_eos": True, "stream": True}
                    seen = 0
                    async with c.stream("POST", "/v1/completions", json=body) as r:
                        async for line in r.aiter_lines():
                            seen += line.startswith("data: {")
                            if seen >= 3:
                                break  # the connection closes mid-stream
                    return seen

                seen, r = await asyncio.gather(quitter(), c.post("/v1/completions", json=other))
                return seen, r.json()["choices"][0]["text"]

        seen, text = asyncio.run(run())
        deadline = time.monotonic() + 10
        while client.get("/metrics?format=json").json()["running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        m = client.get("/metrics?format=json").json()
        assert seen == 3 and text == want
        assert m["requests"].get("cancelled", 0) >= 1 and m["running"] == 0
        assert m["completion_tokens_total"] - tokens_before < 150
        assert client.post("/v1/completions", json=other).json()["choices"][0]["text"] == want
        assert _scheduler(app).dec is None


def test_the_setting_is_validated_shown_and_taken_by_the_cli(
    lm: steerlab.LM, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from steerlab.cli import app as cli

    with pytest.raises(ValueError, match="compiled"):
        ServeSettings(compiled="yes")
    assert ServeSettings().compiled == "auto" and ServeSettings().serving()["compiled"] == "auto"
    seen: dict[str, Any] = {}

    def fake_run(api: Any, host: str, port: int, log_level: str) -> None:
        seen["settings"] = api.state.server.settings
        api.state.server.engine.close()

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setattr(steerlab, "load_model", lambda *a, **k: lm)
    runner = CliRunner()
    result = runner.invoke(cli, ["--quiet", "serve", "--vectors", str(store), "--compiled", "on"])
    assert result.exit_code == 0, result.output
    assert seen["settings"].compiled == "on"
    result = runner.invoke(cli, ["--quiet", "serve", "--vectors", str(store), "--compiled", "always"])
    assert result.exit_code == 2 and "auto, on, off" in result.output


def test_auto_follows_the_measured_rule_and_models_shows_it(lm: steerlab.LM, store: Path) -> None:
    app = create_app(lm, store, ServeSettings(api_key=KEY))
    try:
        engine = app.state.server.engine
        deadline = time.monotonic() + 10
        while engine.active is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.snapshot()["compiled"] is compiled.pays(lm, app.state.server.settings)
        transport = httpx.ASGITransport(app=app)

        async def models() -> Any:
            async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as c:
                return (await c.get("/v1/models")).json()

        assert json.dumps(asyncio.run(models())).count('"compiled": "auto"') == 1
    finally:
        app.state.server.engine.close()


@pytest.mark.slow
def test_torchinductor_slots_give_the_tokens_of_eager(lm: steerlab.LM, vec: steerlab.SteeringVector) -> None:
    """TorchInductor's kernels (float noise, ~1e-5 on the logits: tests/test_compile.py) give the
    greedy tokens of ``generate`` alone, eagerly."""
    torch._dynamo.reset()
    try:
        dec = SlotDecoder(lm, 2, 64)
        rows = [Steering(vec, 1.5), None]
        got: list[list[int]] = [[], []]
        with torch.inference_mode():
            for slot, row in enumerate(rows):
                cache, n, tok = _prefill(lm, PROMPTS[slot], row)
                deltas = row_deltas(lm, row, n)
                assert deltas is not None
                dec.join(slot, hf.kv_tensors(cache), n, tok, deltas)
                got[slot].append(tok)
            for _ in range(11):
                logits = dec.step()
                for slot in range(2):
                    tok = int(logits[slot].argmax())
                    got[slot].append(tok)
                    dec.feed(slot, tok)
        want = [steerlab.generate(lm, [PROMPTS[i]], [rows[i]], max_new_tokens=12, compiled=False)[0] for i in range(2)]
        assert [lm.tokenizer.decode(g, skip_special_tokens=True) for g in got] == want
    finally:
        torch._dynamo.reset()


def test_the_slot_step_attends_with_grouped_query_sdpa_only_within_the_step(lm: steerlab.LM) -> None:
    """stories260K has grouped key/value heads and SDPA attention: the slot step switches it to SDPA's
    own grouped-query attention for the step's call only (its tests above run through it), and
    gives the implementation back even when the step raises."""
    assert lm.model.config._attn_implementation == "sdpa" and lm.model.config.num_key_value_heads < 8
    with hf.grouped_query_sdpa(lm.model):
        assert lm.model.config._attn_implementation == hf.GROUPED_SDPA
    assert lm.model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError), hf.grouped_query_sdpa(lm.model):
        raise RuntimeError("a failed step")
    assert lm.model.config._attn_implementation == "sdpa"
