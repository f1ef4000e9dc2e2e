"""Continuous batching in ``steerlab serve``: a request joins the running batch at the next
decoding step and leaves it when it is done, each row with its own steering, and every row's text
is the text of the same request alone; the KV-cache helpers it merges rows with; the fallback to
batch at a time for sliding-window caches; ``/metrics`` in Prometheus' text format.

Runs on the trained stories260K model (and tiny random models of every architecture), like
``tests/test_serve.py``, whose helpers it uses.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

import steerlab
from steerlab.runtime import hf

pytest.importorskip("fastapi")
import httpx
from prometheus_client.parser import text_string_to_metric_families
from transformers import AutoTokenizer

from steerlab.serve import ServeSettings, create_app
from steerlab.serve.engines.continuous import unsupported
from steerlab.serve.routes.info import wants_json

from .test_architectures import STORIES, TEXT_TYPES, _build, _config
from .test_serve import AUTH, KEY, PROMPTS, ServerThread, steering

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@contextmanager
def forward_calls(lm: steerlab.LM, seconds: float = 0.0) -> Iterator[list[tuple[int, int]]]:
    """The ``(rows, tokens)`` of every forward call of the model in the block (each slowed by
    ``seconds``, so requests sent at different times meet mid-generation)."""
    calls: list[tuple[int, int]] = []

    def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(ids, torch.Tensor):
            calls.append((int(ids.shape[0]), int(ids.shape[1])))
        if seconds:
            time.sleep(seconds)

    handle = lm.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def decode_sizes(calls: list[tuple[int, int]]) -> list[int]:
    """Rows of each one-token (decoding) forward call."""
    return [rows for rows, tokens in calls if tokens == 1]


async def staggered(app: Any, bodies: list[dict[str, Any]], gap_s: float) -> list[httpx.Response]:
    """Post ``bodies`` to the app, request ``i`` sent ``i * gap_s`` seconds after the first."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH, timeout=120) as c:

        async def one(i: int, body: dict[str, Any]) -> httpx.Response:
            await asyncio.sleep(i * gap_s)
            return await c.post("/v1/completions", json=body)

        return list(await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies))))


async def one_by_one(app: Any, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """Post ``bodies`` one after another: each request served alone."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH, timeout=120) as c:
        return [await c.post("/v1/completions", json=b) for b in bodies]


def texts(responses: list[httpx.Response]) -> list[str]:
    assert [r.status_code for r in responses] == [200] * len(responses), [r.text for r in responses]
    return [r.json()["choices"][0]["text"] for r in responses]


# --------------------------------------------------------------------------- join and leave
@pytest.mark.parametrize("scheduler", ["continuous", "batch"])
def test_a_request_joins_at_the_next_step_and_leaves_when_done(lm: steerlab.LM, store: Path, scheduler: str) -> None:
    """A request sent while another generates starts producing tokens before the first one
    finishes (continuous), and leaves the batch as soon as it is done (the batch shrinks back
    to one row); batch at a time makes it wait for the whole first batch. Both texts equal the
    same requests alone."""
    long = {"prompt": PROMPTS[0], "max_tokens": 60, "ignore_eos": True, "steering": steering("happy")}
    short = {"prompt": PROMPTS[2], "max_tokens": 6, "ignore_eos": True, "steering": steering("dog", 6.0)}
    app = create_app(lm, store, ServeSettings(api_key=KEY, scheduler=scheduler, batch_wait_ms=0))
    with ServerThread(app) as srv:
        with httpx.Client(base_url=srv.url, headers=AUTH, timeout=60) as client:
            alone = [client.post("/v1/completions", json=b).json()["choices"][0]["text"] for b in (long, short)]

        async def run() -> tuple[list[str], list[tuple[float, str, str]]]:
            events: list[tuple[float, str, str]] = []
            long_started = asyncio.Event()
            async with httpx.AsyncClient(base_url=srv.url, headers=AUTH, timeout=60) as c:

                async def consume(name: str, body: dict[str, Any], after: asyncio.Event | None) -> str:
                    if after is not None:
                        await after.wait()
                    text = ""
                    async with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                        async for line in r.aiter_lines():
                            if not line.startswith("data: {"):
                                continue
                            piece = json.loads(line[6:])["choices"][0]["text"]
                            if piece:
                                events.append((time.monotonic(), name, "token"))
                                text += piece
                            if len(text) > 12:
                                long_started.set()
                    events.append((time.monotonic(), name, "end"))
                    return text

                got = await asyncio.gather(consume("long", long, None), consume("short", short, long_started))
            return list(got), events

        with forward_calls(lm, 0.02) as calls:
            got, events = asyncio.run(run())
        assert app.state.server.engine.snapshot()["scheduler"] == scheduler
    assert got == alone
    long_end = next(t for t, who, kind in events if who == "long" and kind == "end")
    short_first = next(t for t, who, kind in events if who == "short" and kind == "token")
    short_end = next(t for t, who, kind in events if who == "short" and kind == "end")
    sizes = decode_sizes(calls)
    if scheduler == "continuous":
        assert short_first < long_end and short_end < long_end
        # decoding steps: the long row alone, both rows for the short one's 5 steps after its
        # prompt (its first token comes from the prompt call), then the long row alone again
        assert sizes.count(2) == short["max_tokens"] - 1, sizes
        first, last = sizes.index(2), len(sizes) - 1 - sizes[::-1].index(2)
        assert first > 0 and sizes[first : last + 1] == [2] * (last - first + 1) and sizes[-1] == 1, sizes
    else:
        assert short_first > long_end  # it waited for the whole batch
        assert 2 not in sizes


def _mixed_bodies() -> list[dict[str, Any]]:
    """24 requests: steerings at every kind of position, composites, operators, sampling."""
    configs: list[list[dict[str, Any]] | None] = [
        None,
        steering("happy", 4.0),
        [{"vector": "dog", "coefficient": 6.0, "positions": "prompt"}],
        [{"vector": "night", "coefficient": -5.0, "positions": "generated"}],
        [{"vector": "happy", "coefficient": 8.0, "positions": [2, 6]}],
        [{"vector": "big", "coefficient": 6.0, "layers": [3]}, {"vector": "happy", "coefficient": 2.0}],
        [
            {"vector": "dog", "coefficient": 6.0, "positions": [5, None]},
            {"vector": "night", "coefficient": 3.0, "positions": "prompt"},
        ],
        [{"vector": "big", "coefficient": 1.0, "operator": "ablate"}, {"vector": "dog", "coefficient": 5.0}],
    ]
    out = []
    for i in range(24):
        body: dict[str, Any] = {
            "prompt": PROMPTS[(i * 3) % len(PROMPTS)],
            "max_tokens": 3 + (i * 5) % 17,
            "ignore_eos": i % 2 == 0,
        }
        if configs[i % len(configs)] is not None:
            body["steering"] = configs[i % len(configs)]
        if i % 7 == 3:
            body.update(temperature=0.9, top_p=0.9, seed=100 + i)
        out.append(body)
    return out


def test_rows_joining_and_leaving_mid_generation_give_each_requests_text_alone(lm: steerlab.LM, store: Path) -> None:
    """Requests sent at different times join and leave a running batch (its rows have different
    prompt lengths, so the KV caches are padded, merged and trimmed); every text equals the same
    request served alone — steerings at "prompt", "generated" and windows, composites, ablation,
    seeded sampling."""
    bodies = _mixed_bodies()
    app = create_app(lm, store, ServeSettings(api_key=KEY, max_batch=6, batch_wait_ms=0))
    try:
        with forward_calls(lm, 0.01) as calls:
            responses = asyncio.run(staggered(app, bodies, 0.006))
        snap = app.state.server.engine.snapshot()
        together = texts(responses)
        alone = texts(asyncio.run(one_by_one(app, bodies)))
    finally:
        app.state.server.engine.close()
    assert snap["scheduler"] == "continuous"
    assert together == alone
    sizes = decode_sizes(calls)
    steps = [i for i, (_, tokens) in enumerate(calls) if tokens == 1]
    joins = [c for c in calls[steps[0] : steps[-1]] if c[1] > 1]  # prompt calls while other rows decode
    assert max(sizes) == 6 and len(joins) >= 8, calls  # rows really joined mid-run
    # and left as soon as they were done: each row took part in exactly the decoding steps that made
    # its tokens (its first token comes from its prompt call; an end-of-sequence token takes a step)
    choices = [r.json()["choices"][0] for r in responses]
    usage = [r.json()["usage"]["completion_tokens"] for r in responses]
    needed = sum(n - (c["finish_reason"] == "length") for c, n in zip(choices, usage))
    assert snap["step_rows_total"] == needed, (snap["step_rows_total"], needed)
    assert len({t for t, b in zip(together, bodies) if b["prompt"] == PROMPTS[0]}) >= 3  # steerings differ


def test_continuous_rows_equal_the_library_alone(
    lm: steerlab.LM, store: Path, vectors: dict[str, steerlab.SteeringVector]
) -> None:
    """Greedy rows of a continuous batch equal :func:`steerlab.generate` of each request alone."""
    cases = [
        (PROMPTS[0], 14, steerlab.Steering(vectors["happy"], 4.0), steering("happy")),
        (
            PROMPTS[2],
            9,
            steerlab.Steering(vectors["night"], -5.0, positions="generated"),
            [{"vector": "night", "coefficient": -5.0, "positions": "generated"}],
        ),
        (
            PROMPTS[5],
            12,
            steerlab.Steering(vectors["dog"], 8.0, positions=(3, 8)),
            [{"vector": "dog", "coefficient": 8.0, "positions": [3, 8]}],
        ),
        (
            PROMPTS[3],
            7,
            steerlab.Steering(vectors["big"], 6.0, positions="prompt"),
            [{"vector": "big", "coefficient": 6.0, "positions": "prompt"}],
        ),
        (PROMPTS[1], 10, None, None),
    ]
    want = [steerlab.generate(lm, p, steering=s, max_new_tokens=n)[0] for p, n, s, _ in cases]
    bodies = [
        {"prompt": p, "max_tokens": n, "ignore_eos": True, **({"steering": e} if e else {})} for p, n, _, e in cases
    ]
    app = create_app(lm, store, ServeSettings(api_key=KEY, batch_wait_ms=0))
    try:
        with forward_calls(lm, 0.01) as calls:
            got = texts(asyncio.run(staggered(app, bodies, 0.01)))
    finally:
        app.state.server.engine.close()
    assert got == want
    assert max(decode_sizes(calls)) >= 3


# --------------------------------------------------------------------------- the cache helpers
def _prefill(lm: steerlab.LM, ids: list[int]) -> tuple[Any, int]:
    cache = hf.new_cache(lm.model)
    x = torch.tensor([ids])
    with torch.inference_mode():
        out = lm.model(**hf.forward_kwargs(lm.model, input_ids=x, cache=cache, use_cache=True))
    returned = hf.output_cache(out)
    return cache if returned is None else returned, int(out.logits[0, -1].argmax())


def _step(lm: steerlab.LM, cache: Any, tokens: list[int], pads: list[int], width: int) -> torch.Tensor:
    pad = torch.tensor(pads)
    mask = (torch.arange(width + 1)[None, :] >= pad[:, None]).long()
    with torch.inference_mode():
        out = lm.model(
            **hf.forward_kwargs(
                lm.model,
                input_ids=torch.tensor(tokens)[:, None],
                attention_mask=mask,
                position_ids=(width - pad)[:, None],
                cache=cache,
                use_cache=True,
            )
        )
    return out.logits[:, -1]


def test_merged_caches_continue_every_row_as_alone(lm: steerlab.LM) -> None:
    """Caches of prompts run apart, left-padded to a common length (``shift_cache``) and
    concatenated (``append_cache_rows``), continue each row with the logits it has alone; dropping a
    row and trimming the padding nobody needs (``shift_cache`` with a negative count) too."""
    prompts = [lm.tokenizer(p)["input_ids"] for p in (PROMPTS[2], PROMPTS[1], PROMPTS[4])]
    parts = [_prefill(lm, ids) for ids in prompts]
    alone = [_step(lm, c, [t], [0], len(ids))[0] for (c, t), ids in zip([_prefill(lm, i) for i in prompts], prompts)]
    assert all(hf.unmergeable_cache(c) is None for c, _ in parts)
    width = max(len(ids) for ids in prompts)
    merged = parts[0][0]
    hf.shift_cache(merged, width - len(prompts[0]))
    for (cache, _), ids in zip(parts[1:], prompts[1:]):
        hf.shift_cache(cache, width - len(ids))
        hf.append_cache_rows(merged, cache)
    assert hf.cache_length(merged) == width
    pads = [width - len(ids) for ids in prompts]
    logits = _step(lm, merged, [t for _, t in parts], pads, width)
    # Float noise: the caches hold the very tensors each prompt computed alone, but the step runs 3
    # rows (batched matmuls, blocked differently) attending over padded keys (a longer softmax). On
    # logits up to 18, measured max |difference| 1.25e-5 (AVX512 and AVX2 kernels; it failed atol
    # 1e-5 there) and 8.6e-6 (default); atol 1e-4 leaves 8x.
    torch.testing.assert_close(logits, torch.stack(alone), atol=1e-4, rtol=1e-4)
    # the longest prompt leaves: the others' common padding is trimmed away
    hf.select_cache_rows(merged, torch.tensor([1, 2]))
    trim = min(pads[1:])
    hf.shift_cache(merged, -trim)
    assert hf.cache_length(merged) == width + 1 - trim
    nxt = logits.argmax(-1).tolist()
    again = _step(lm, merged, nxt[1:], [p - trim for p in pads[1:]], width + 1 - trim)
    for row, (ids, tok) in enumerate(zip(prompts[1:], nxt[1:])):
        cache, first = _prefill(lm, ids)
        _step(lm, cache, [first], [0], len(ids))
        # the same float noise (2 rows, trimmed padding): measured max |difference| 6.7e-6 (AVX512), 4.8e-6
        # (AVX2), 5.7e-6 (default); 15x margin
        torch.testing.assert_close(again[row], _step(lm, cache, [tok], [0], len(ids) + 1)[0], atol=1e-4, rtol=1e-4)


def test_unmergeable_caches_are_named() -> None:
    assert "no dynamic cache layers" in str(hf.unmergeable_cache(object()))
    assert hf.unmergeable_cache(None) is not None


# --------------------------------------------------------------------------- every architecture
@pytest.fixture(scope="module")
def tiny_tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(STORIES)


@pytest.mark.parametrize("model_type", TEXT_TYPES)
def test_every_architecture_is_served_continuously_or_falls_back(
    model_type: str, tiny_tokenizer: Any, tmp_path: Path
) -> None:
    """Tiny random models of every architecture: sliding-window caches (mistral, gemma2,
    gemma3_text) fall back to batch at a time and say why; the others batch continuously. Either
    way, requests that meet mid-generation get the text each gets alone."""
    lm = _build(_config(model_type), tiny_tokenizer, f"tiny-{model_type}")
    vec = steerlab.extract(
        lm,
        steerlab.pairs_from_lists(["happy sun", "glad dog"], ["sad rain", "upset dog"]),
        method="mean_diff",
        layers=[1],
    )
    vec.save(tmp_path / "store" / "v")
    sliding = model_type in ("mistral", "gemma2", "gemma3_text")
    assert (unsupported(lm) is not None) == sliding
    bodies = [
        {
            "prompt": PROMPTS[i % len(PROMPTS)],
            "max_tokens": 4 + 3 * i,
            "ignore_eos": True,
            **(
                {"steering": [{"vector": "v", "coefficient": 8.0, "positions": ["all", "generated", [1, 5]][i % 3]}]}
                if i % 4
                else {}
            ),
        }
        for i in range(6)
    ]
    app = create_app(lm, tmp_path / "store", ServeSettings(api_key=KEY, batch_wait_ms=0))
    try:
        with forward_calls(lm, 0.005) as calls:
            together = texts(asyncio.run(staggered(app, bodies, 0.01)))
        alone = texts(asyncio.run(one_by_one(app, bodies)))
        snap = app.state.server.engine.snapshot()
    finally:
        app.state.server.engine.close()
    assert together == alone
    if sliding:
        assert snap["scheduler"] == "batch" and "DynamicSlidingWindowLayer" in snap["scheduler_fallback"]
    else:
        assert snap["scheduler"] == "continuous" and "scheduler_fallback" not in snap
        assert max(decode_sizes(calls)) >= 2


# --------------------------------------------------------------------------- metrics
def test_metrics_in_prometheus_text_format(lm: steerlab.LM, store: Path) -> None:
    """``/metrics``: Prometheus' text format (queue depth, batch size, tokens per second, the
    time-to-first-token histogram, per-vector request counts), JSON on request."""
    app = create_app(lm, store, ServeSettings(api_key=KEY))
    bodies: list[dict[str, Any]] = [
        {"prompt": PROMPTS[0], "max_tokens": 4, "steering": steering("happy")},
        {"prompt": PROMPTS[1], "max_tokens": 4, "n": 2, "steering": steering("happy")},  # one request, 2 choices
        {
            "prompt": PROMPTS[2],
            "max_tokens": 4,
            "steering": [{"vector": "dog", "coefficient": 2.0}, {"vector": "happy", "coefficient": 1.0}],
        },
        {"prompt": PROMPTS[3], "max_tokens": 4},
    ]
    try:
        texts(asyncio.run(one_by_one(app, bodies)))
        transport = httpx.ASGITransport(app=app)

        async def scrape() -> list[httpx.Response]:
            async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as c:
                return [
                    await c.get("/metrics"),
                    await c.get("/metrics?format=json"),
                    await c.get("/metrics", headers={"Accept": "application/json"}),
                    await c.get("/metrics?format=xml"),
                ]

        prom, as_json, negotiated, bad = asyncio.run(scrape())
    finally:
        app.state.server.engine.close()
    assert prom.status_code == 200 and prom.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(prom.text)}
    value = {f.name: f.samples[0].value for f in families.values() if len(f.samples) == 1}
    assert value["steerlab_queue_depth"] == 0 and value["steerlab_batch_size"] == 0
    assert value["steerlab_tokens_per_second"] > 0
    assert value["steerlab_completion_tokens"] == 5 * 4
    vector_counts = {s.labels["vector"]: s.value for s in families["steerlab_vector_requests"].samples}
    assert vector_counts == {"happy": 3, "dog": 1}
    ttft = {s.name: s for s in families["steerlab_time_to_first_token_seconds"].samples}
    assert ttft["steerlab_time_to_first_token_seconds_count"].value == 5  # one per choice
    buckets = [s for s in families["steerlab_time_to_first_token_seconds"].samples if s.name.endswith("_bucket")]
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == 5
    info = families["steerlab_info"].samples[0].labels
    assert info == {"model": "stories260K", "scheduler": "continuous"}
    requests = {s.labels["event"]: s.value for s in families["steerlab_requests"].samples}
    assert requests["accepted"] == 5 and requests["completions"] == 4
    for r in (as_json, negotiated):
        m = r.json()
        assert r.headers["content-type"] == "application/json"
        assert m["completion_tokens_total"] == 20 and m["vector_requests"] == {"dog": 1, "happy": 3}
        assert m["time_to_first_token_s"]["count"] == 5 and m["scheduler"] == "continuous"
    assert bad.status_code == 400


@pytest.mark.parametrize(
    ("format", "accept", "json_wanted"),
    [
        (None, "", False),
        (None, "*/*", False),
        (None, "application/json", True),
        (None, "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1", False),
        (None, "application/json, text/plain", False),
        ("json", "text/plain", True),
        ("prometheus", "application/json", False),
    ],
)
def test_metrics_format_negotiation(format: str | None, accept: str, json_wanted: bool) -> None:
    assert wants_json(format, accept) is json_wanted


def test_cli_serve_takes_the_scheduler(lm: steerlab.LM, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from steerlab.cli import app as cli

    seen: dict[str, Any] = {}

    def fake_run(api: Any, host: str, port: int, log_level: str) -> None:
        seen["settings"] = api.state.server.settings
        api.state.server.engine.close()

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setattr(steerlab, "load_model", lambda *a, **k: lm)
    runner = CliRunner()
    result = runner.invoke(cli, ["--quiet", "serve", "--vectors", str(store), "--scheduler", "batch"])
    assert result.exit_code == 0, result.output
    assert seen["settings"].scheduler == "batch"
    result = runner.invoke(cli, ["--quiet", "serve", "--vectors", str(store)])
    assert result.exit_code == 0 and seen["settings"].scheduler == "continuous"
    result = runner.invoke(cli, ["--quiet", "serve", "--vectors", str(store), "--scheduler", "eager"])
    assert result.exit_code == 2 and "continuous, batch" in result.output
    with pytest.raises(ValueError, match="scheduler"):
        ServeSettings(scheduler="eager")


# --------------------------------------------------------------------------- the default model
@pytest.mark.slow
def test_continuous_batching_on_the_default_model_equals_each_request_alone(tmp_path: Path) -> None:
    """SmolLM2-135M-Instruct: chat and completion requests over 2 vectors (and none), sent at
    different times so they join a running batch, give each request's text alone (greedy)."""
    from steerlab.data.demo import OPENINGS

    smol = steerlab.load_model("default")
    for name, (pos, neg) in {"happy": ("happy", "sad"), "formal": ("formal", "casual")}.items():
        pairs = steerlab.persona_pairs(pos, neg, list(OPENINGS[:12]))
        steerlab.extract(smol, pairs, method="mean_diff", layers=range(8, 20)).save(tmp_path / "store" / name)
    prompts = [
        "I think that the weather today",
        "My favourite food is",
        "Tell me about the sea.",
        "The train was late, so",
        "When I was young,",
        "Our team meeting went",
    ]
    spec = [
        None,
        steering("happy", 4.0),
        [{"vector": "formal", "coefficient": 4.0, "positions": "generated"}],
        [{"vector": "happy", "coefficient": -4.0, "positions": [2, 9]}],
    ]
    bodies = [
        {"prompt": p, "max_tokens": 6 + 3 * i, **({"steering": spec[i % 4]} if spec[i % 4] else {})}
        for i, p in enumerate(prompts)
    ]
    app = create_app(smol, tmp_path / "store", ServeSettings(api_key=KEY, batch_wait_ms=0))
    try:
        with forward_calls(smol, 0.02) as calls:
            together = texts(asyncio.run(staggered(app, bodies, 0.05)))
        alone = texts(asyncio.run(one_by_one(app, bodies)))
    finally:
        app.state.server.engine.close()
    assert together == alone
    assert max(decode_sizes(calls)) >= 3


def test_metrics_of_other_engines() -> None:
    """Engines other than the local one (``serve --engine vllm``) record whole requests as
    batches without decoding steps and name themselves in their snapshot's ``engine``."""
    from steerlab.serve.metrics import Metrics
    from steerlab.serve.routes.info import scheduler_label

    m = Metrics()
    m.add_batch(1, 7, 0.5)
    m.add_batch(1, 3, 0.25)
    snap = m.snapshot()
    assert snap["mean_batch_size"] == 1.0 and snap["busy_s"] == 0.75 and snap["prompt_tokens_total"] == 10
    assert scheduler_label({"scheduler": "batch"}) == "batch"
    assert scheduler_label({"engine": {"name": "vllm", "plugin": "hotwire"}}) == "vllm"
    assert b'steerlab_info{model="m",scheduler="vllm"} 1.0' in m.prometheus({"model": "m", "scheduler": "vllm"})
