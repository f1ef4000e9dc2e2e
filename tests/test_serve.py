"""``steerlab serve``: the OpenAI-compatible API, dynamic batching, limits, the vector store's
safety rules, client disconnects, the ``openai`` client and the CLI command.

Everything runs on the trained stories260K model (5 layers, d_model 64). API tests go through
the ASGI app in-process (``TestClient`` / ``httpx.ASGITransport``); the ``openai`` client and the
disconnect test use a real uvicorn server on 127.0.0.1 in a thread.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import socket
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

import steerlab

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from steerlab.serve import ServeSettings, create_app, pack_folder

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
RAW = {**AUTH, "Content-Type": "application/octet-stream"}  # a raw-body upload
PROMPTS = [
    "Once upon a time",
    "The cat",
    "Tom and his mom went to the park and",
    "Lily had a red ball.",
    "One day, a little bird",
    "The sun was",
    "Sam wanted to",
    "There was a big tree",
]


# --------------------------------------------------------------------------- helpers
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@contextmanager
def served(lm: steerlab.LM, store_dir: Path, **settings: Any) -> Iterator[tuple[FastAPI, TestClient]]:
    """An app and a TestClient (lifespan included: the worker stops on exit)."""
    settings.setdefault("api_key", KEY)
    app = create_app(lm, store_dir, ServeSettings(**settings))
    with TestClient(app) as client:
        yield app, client
    assert not app.state.server.engine.alive


@contextmanager
def slow_model(lm: steerlab.LM, seconds: float) -> Iterator[None]:
    """Make every forward call of the model take at least ``seconds`` (runs in the worker thread)."""
    handle = lm.model.register_forward_pre_hook(lambda *_: time.sleep(seconds))
    try:
        yield
    finally:
        handle.remove()


class ServerThread:
    """A real uvicorn server on 127.0.0.1 (free port) in a daemon thread."""

    def __init__(self, app: FastAPI) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def tree(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every path under ``root`` (symlinks not followed) with its size and content head."""
    out: dict[str, tuple[int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = (-1, os.readlink(p).encode())
            elif p.is_file():
                out[rel] = (p.stat().st_size, p.read_bytes()[:64])
            else:
                out[rel] = (0, b"dir")
    return out


def completion(client: TestClient, **body: Any) -> Any:
    return client.post("/v1/completions", headers=AUTH, json=body)


def steering(name: str, coef: float = 4.0) -> list[dict[str, Any]]:
    return [{"vector": name, "coefficient": coef}]


# --------------------------------------------------------------------------- basic API
def test_health_models_vectors_metrics(lm: steerlab.LM, store: Path) -> None:
    with served(lm, store) as (_, client):
        assert client.get("/health").json() == {"status": "ok"}
        models = client.get("/v1/models", headers=AUTH).json()
        assert models["object"] == "list"
        assert models["data"][0]["id"] == lm.model_id == "stories260K"
        assert models["data"][0]["steerlab"]["n_layers"] == 5
        assert client.get(f"/v1/models/{lm.model_id}", headers=AUTH).status_code == 200
        vecs = {v["name"]: v for v in client.get("/v1/vectors", headers=AUTH).json()["data"]}
        assert sorted(vecs) == ["big", "dog", "happy", "night"]
        assert vecs["happy"]["layers"] == [1, 2, 3]
        assert vecs["happy"]["method"] == "mean_diff" and vecs["happy"]["model"] == "stories260K"
        assert set(vecs["happy"]["norms"]) == {"1", "2", "3"}
        r = completion(client, prompt="Once upon a time", max_tokens=5)
        assert r.status_code == 200
        m = client.get("/metrics?format=json", headers=AUTH).json()
        for key in (
            "requests",
            "tokens_per_second",
            "tokens_per_second_busy",
            "queue_length",
            "running",
            "completion_tokens_total",
            "batches_total",
        ):
            assert key in m
        assert m["completion_tokens_total"] >= 5 and m["queue_length"] == 0
        page = client.get("/")
        assert page.status_code == 200 and "steerlab playground" in page.text


def test_completion_matches_library_and_stream_matches_full(
    lm: steerlab.LM, store: Path, vectors: dict[str, steerlab.SteeringVector]
) -> None:
    prompt = PROMPTS[2]
    want_plain = steerlab.generate(lm, prompt, max_new_tokens=12)[0]
    want = steerlab.generate(lm, prompt, steering=steerlab.Steering(vectors["happy"], 4.0), max_new_tokens=12)[0]
    assert want != want_plain
    with served(lm, store) as (_, client):
        r = completion(client, model="stories260K", prompt=prompt, max_tokens=12)
        body = r.json()
        assert body["object"] == "text_completion" and body["model"] == "stories260K"
        assert body["choices"][0]["text"] == want_plain
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == 12
        assert body["usage"]["prompt_tokens"] == len(lm.tokenizer(prompt)["input_ids"])
        r = completion(client, prompt=prompt, max_tokens=12, steering=steering("happy"))
        assert r.json()["choices"][0]["text"] == want

        with client.stream(
            "POST",
            "/v1/completions",
            headers=AUTH,
            json={
                "prompt": prompt,
                "max_tokens": 12,
                "stream": True,
                "steering": steering("happy"),
                "stream_options": {"include_usage": True},
            },
        ) as s:
            assert s.headers["content-type"].startswith("text/event-stream")
            lines = [ln for ln in s.iter_lines() if ln.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
        text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
        assert text == want
        assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12

        # a list of prompts and n > 1: one choice per prompt and sample, indexed prompt-major
        r = completion(client, prompt=[PROMPTS[0], prompt], n=2, max_tokens=12, steering=steering("happy"))
        choices = r.json()["choices"]
        assert [c["index"] for c in choices] == [0, 1, 2, 3]
        assert choices[2]["text"] == choices[3]["text"] == want


def test_chat_completion_and_stop_and_sampling(lm: steerlab.LM, store: Path) -> None:
    with served(lm, store) as (_, client):
        msgs = [{"role": "user", "content": "Once upon a time"}]
        r = client.post("/v1/chat/completions", headers=AUTH, json={"messages": msgs, "max_tokens": 10})
        body = r.json()
        assert body["object"] == "chat.completion"
        msg = body["choices"][0]["message"]
        assert msg["role"] == "assistant"
        assert msg["content"] == steerlab.generate(lm, "Once upon a time", chat=True, max_new_tokens=10)[0]
        with client.stream(
            "POST", "/v1/chat/completions", headers=AUTH, json={"messages": msgs, "max_tokens": 10, "stream": True}
        ) as s:
            chunks = [json.loads(ln[6:]) for ln in s.iter_lines() if ln.startswith("data: {")]
        assert chunks[0]["object"] == "chat.completion.chunk"
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == msg["content"]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"

        # stop strings end the text before the stop and report finish_reason "stop"
        full = completion(client, prompt="Once upon a time", max_tokens=30).json()["choices"][0]["text"]
        stop = full[10:14]
        r = completion(client, prompt="Once upon a time", max_tokens=30, stop=[stop]).json()["choices"][0]
        assert r["finish_reason"] == "stop" and r["text"] == full[: full.index(stop)]

        # seeded sampling is reproducible, whatever it is batched with
        sample = {"prompt": "The cat", "max_tokens": 12, "temperature": 1.0, "seed": 7}
        a = completion(client, **sample).json()["choices"][0]["text"]
        b = completion(client, **sample).json()["choices"][0]["text"]
        assert a == b


# --------------------------------------------------------------------------- batching / isolation
def _requests() -> list[dict[str, Any]]:
    """64 requests over 4 vectors and none, with different prompts, lengths and coefficients."""
    configs: list[list[dict[str, Any]] | None] = [
        None,
        steering("happy", 4.0),
        steering("dog", 6.0),
        [{"vector": "night", "coefficient": -5.0, "positions": "generated"}],
        [{"vector": "big", "coefficient": 6.0, "layers": [3]}, {"vector": "happy", "coefficient": 2.0}],
    ]
    out = []
    for i in range(64):
        body: dict[str, Any] = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 6 + (i * 7) % 9}
        s = configs[i % len(configs)]
        if s is not None:
            body["steering"] = s
        out.append(body)
    return out


@pytest.mark.parametrize("scheduler", ["continuous", "batch"])
def test_isolation_under_load(lm: steerlab.LM, store: Path, scheduler: str) -> None:
    """64 concurrent requests over 4 vectors and none are batched, and every response equals the
    same request served alone (greedy); no errors, nothing left in the queue."""
    bodies = _requests()
    app = create_app(
        lm, store, ServeSettings(api_key=KEY, max_batch=16, max_queue=64, batch_wait_ms=20, scheduler=scheduler)
    )
    server = app.state.server

    async def run() -> tuple[list[httpx.Response], list[httpx.Response]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=AUTH, timeout=120) as c:
            together = await asyncio.gather(*(c.post("/v1/completions", json=b) for b in bodies))
            snapshot = server.engine.snapshot()
            assert snapshot["scheduler"] == scheduler
            if scheduler == "batch":
                assert snapshot["batches_total"] < 16, snapshot  # batched, not one by one
            # rows decode together: far fewer steps than tokens
            assert snapshot["mean_batch_size"] > 4, snapshot
            assert snapshot["steps_total"] * 4 < snapshot["completion_tokens_total"], snapshot
            alone = [await c.post("/v1/completions", json=b) for b in bodies]
        return together, alone

    try:
        together, alone = asyncio.run(run())
        assert [r.status_code for r in together] == [200] * 64
        assert [r.status_code for r in alone] == [200] * 64
        got = [r.json()["choices"][0]["text"] for r in together]
        want = [r.json()["choices"][0]["text"] for r in alone]
        assert got == want
        assert [r.json()["usage"]["completion_tokens"] for r in together] == [b["max_tokens"] for b in bodies]
        # the steerings really differ row by row: the same prompt gets several different texts
        same_prompt = {got[i] for i in range(0, 64, len(PROMPTS))}
        assert len(same_prompt) >= 4
        snap = server.engine.snapshot()
        assert snap["queue_length"] == 0 and snap["running"] == 0
        assert "http_500" not in snap["requests"] and "timed_out" not in snap["requests"]
    finally:
        server.engine.close()


# --------------------------------------------------------------------------- limits
def test_request_limits(lm: steerlab.LM, store: Path) -> None:
    before = tree(store)
    with served(lm, store, max_tokens=32, max_prompt_tokens=20, max_coefficient=8.0, max_n=4) as (_, client):
        cases: list[tuple[dict[str, Any], int, str]] = [
            ({"prompt": "Hi", "max_tokens": 33}, 400, "max_tokens_exceeded"),
            ({"prompt": "word " * 40, "max_tokens": 4}, 400, "prompt_too_long"),
            ({"prompt": "Hi", "n": 5}, 400, "too_many_choices"),
            ({"prompt": "Hi", "steering": steering("happy", 8.5)}, 400, "coefficient_out_of_range"),
            ({"prompt": "Hi", "steering": steering("happy", -9)}, 400, "coefficient_out_of_range"),
            ({"prompt": "Hi", "steering": steering("nope")}, 404, "vector_not_found"),
            ({"prompt": "Hi", "steering": steering("../happy")}, 400, "invalid_vector_name"),
            ({"prompt": "Hi", "steering": [{"vector": "happy", "layers": [0]}]}, 400, "invalid_layers"),
            ({"prompt": "Hi", "steering": [{"vector": "happy", "positions": "actadd"}]}, 400, "invalid_value"),
            ({"prompt": "Hi", "steering": [{"vector": "happy", "positions": "middle"}]}, 400, "invalid_value"),
            ({"prompt": "Hi", "steering": [{"vector": "happy", "coef": 1}]}, 400, "invalid_value"),
            ({"prompt": "Hi", "steerings": []}, 400, "invalid_value"),
            ({"prompt": "Hi", "model": "gpt-4"}, 404, "model_not_found"),
            ({"prompt": "Hi", "logprobs": 3}, 400, "invalid_value"),
            ({"prompt": "Hi", "temperature": 3}, 400, "invalid_value"),
        ]
        for body, status, code in cases:
            r = completion(client, **body)
            assert r.status_code == status, (body, r.text)
            assert r.json()["error"]["code"] == code, (body, r.text)
        ok = completion(
            client,
            prompt="Hi",
            max_tokens=4,
            steering=[{"vector": "happy", "coefficient": -8, "layers": [2], "positions": [0, 3]}],
        )
        assert ok.status_code == 200
    assert tree(store) == before


def test_queue_full_gives_429_and_timeout_gives_504(lm: steerlab.LM, store: Path) -> None:
    app = create_app(lm, store, ServeSettings(api_key=KEY, max_batch=1, max_queue=2, batch_wait_ms=0))
    server = app.state.server

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH, timeout=60) as c:
            return list(
                await asyncio.gather(
                    *(c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 8}) for _ in range(8))
                )
            )

    try:
        with slow_model(lm, 0.01):
            codes = [r.status_code for r in asyncio.run(burst())]
        assert codes.count(429) >= 4 and codes.count(200) >= 2, codes
        assert set(codes) == {200, 429}
        assert server.engine.snapshot()["queue_length"] == 0
    finally:
        server.engine.close()

    with served(lm, store, request_timeout_s=0.3) as (_, client), slow_model(lm, 0.02):
        r = completion(client, prompt="Hi", max_tokens=200, ignore_eos=True)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"


def test_429_body_is_openai_shaped(lm: steerlab.LM, store: Path) -> None:
    app = create_app(lm, store, ServeSettings(api_key=KEY, max_batch=1, max_queue=1, batch_wait_ms=0))

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH, timeout=60) as c:
            return list(
                await asyncio.gather(
                    *(c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 6}) for _ in range(5))
                )
            )

    try:
        with slow_model(lm, 0.01):
            rejected = [r for r in asyncio.run(burst()) if r.status_code == 429]
        assert rejected
        assert rejected[0].headers["retry-after"] == "1"
        assert rejected[0].json()["error"]["type"] == "rate_limit_error"
    finally:
        app.state.server.engine.close()


# --------------------------------------------------------------------------- security
PROTECTED = [
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/stories260K", None),
    ("GET", "/v1/vectors", None),
    ("GET", "/v1/vectors/happy", None),
    ("DELETE", "/v1/vectors/happy", None),
    ("POST", "/v1/vectors?name=x", b"data"),
    ("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2}),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
]


def test_api_key_required_everywhere_but_health(lm: steerlab.LM, store: Path) -> None:
    before = tree(store)
    with served(lm, store) as (_, client):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}, {"Authorization": KEY}):
            for method, path, body in PROTECTED:
                kw: dict[str, Any] = {"json": body} if isinstance(body, dict) else {"content": body}
                r = client.request(method, path, headers=headers, **kw)
                assert r.status_code == 401, (method, path, headers, r.text)
                assert r.json()["error"]["type"] == "authentication_error"
        assert client.get("/health").status_code == 200
        assert client.get("/").status_code == 200  # the static page: no data; its calls need the key
        assert client.get("/v1/vectors", headers={"X-API-Key": KEY}).status_code == 200
    assert tree(store) == before


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _member(
    name: str, data: bytes | None = None, kind: bytes = tarfile.REGTYPE, link: str = ""
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info, data


def _files(folder: Path) -> tuple[bytes, bytes]:
    return (folder / "steering_config.json").read_bytes(), (folder / "vector.safetensors").read_bytes()


def _zip(entries: list[tuple[str, bytes, int | None]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return buf.getvalue()


def bad_uploads(
    tmp: Path, lm: steerlab.LM, vectors: dict[str, steerlab.SteeringVector]
) -> list[tuple[str, bytes, int, str]]:
    """(label, bytes, expected status, expected code) of uploads that must all be rejected."""
    good = tmp / "good"
    vectors["dog"].save(good)
    cfg, weights = _files(good)
    other = steerlab.SteeringVector(dict(vectors["dog"].directions), model_id="other-model", d_model=64, n_layers=5)
    other.save(tmp / "other")
    narrow = steerlab.SteeringVector({2: torch.ones(32)}, model_id="stories260K", d_model=32, n_layers=5)
    narrow.save(tmp / "narrow")
    deep = steerlab.SteeringVector({2: torch.ones(64)}, model_id="stories260K", d_model=64, n_layers=12)
    deep.save(tmp / "deep")
    other_gguf = other.to_gguf(tmp / "other.gguf").read_bytes()
    good_gguf = vectors["dog"].to_gguf(tmp / "good.gguf").read_bytes()
    valid = pack_folder(good)
    many = [_member(f"v/pad{i}.txt", b"x") for i in range(20)]
    bomb = b"\0" * 300_000
    return [
        (
            "absolute member",
            _tar([_member("/steering_config.json", cfg), _member("/vector.safetensors", weights)]),
            400,
            "unsafe_archive",
        ),
        (
            "dotdot member",
            _tar([_member("../steering_config.json", cfg), _member("vector.safetensors", weights)]),
            400,
            "unsafe_archive",
        ),
        ("nested dotdot", _tar([_member("v/../../x/steering_config.json", cfg)]), 400, "unsafe_archive"),
        (
            "symlink member",
            _tar(
                [
                    _member("steering_config.json", cfg),
                    _member("vector.safetensors", None, tarfile.SYMTYPE, "/etc/passwd"),
                ]
            ),
            400,
            "unsafe_archive",
        ),
        (
            "hardlink member",
            _tar(
                [
                    _member("steering_config.json", cfg),
                    _member("vector.safetensors", None, tarfile.LNKTYPE, "steering_config.json"),
                ]
            ),
            400,
            "unsafe_archive",
        ),
        (
            "device member",
            _tar([_member("steering_config.json", cfg), _member("vector.safetensors", None, tarfile.CHRTYPE)]),
            400,
            "unsafe_archive",
        ),
        (
            "too many members",
            _tar([_member("v/steering_config.json", cfg), _member("v/vector.safetensors", weights), *many]),
            400,
            "unsafe_archive",
        ),
        (
            "unpacks too large",
            _tar(
                [
                    _member("v/steering_config.json", cfg),
                    _member("v/vector.safetensors", weights),
                    _member("v/padding.bin", bomb),
                ]
            ),
            413,
            "upload_too_large",
        ),
        (
            "zip symlink",
            _zip([("steering_config.json", cfg, None), ("vector.safetensors", b"/etc/passwd", 0o120777)]),
            400,
            "unsafe_archive",
        ),
        (
            "zip dotdot",
            _zip([("../steering_config.json", cfg, None), ("vector.safetensors", weights, None)]),
            400,
            "unsafe_archive",
        ),
        ("random bytes", os.urandom(4000), 400, "invalid_upload"),
        ("empty", b"", 400, "invalid_upload"),
        ("truncated tar.gz", valid[: len(valid) // 2], 400, "invalid_upload"),
        (
            "corrupt weights",
            _tar([_member("steering_config.json", cfg), _member("vector.safetensors", os.urandom(500))]),
            400,
            "invalid_vector",
        ),
        (
            "corrupt config",
            _tar([_member("steering_config.json", b"{not json"), _member("vector.safetensors", weights)]),
            400,
            "invalid_vector",
        ),
        ("missing weights", _tar([_member("steering_config.json", cfg)]), 400, "invalid_vector"),
        (
            "two vectors",
            _tar(
                [
                    _member("a/steering_config.json", cfg),
                    _member("a/vector.safetensors", weights),
                    _member("b/steering_config.json", cfg),
                    _member("b/vector.safetensors", weights),
                ]
            ),
            400,
            "invalid_vector",
        ),
        (
            "too deep",
            _tar([_member("a/b/steering_config.json", cfg), _member("a/b/vector.safetensors", weights)]),
            400,
            "invalid_vector",
        ),
        ("corrupt gguf", b"GGUF" + os.urandom(3000), 400, "invalid_vector"),
        ("truncated gguf", good_gguf[: len(good_gguf) // 2], 400, "invalid_vector"),
        ("another model (id)", pack_folder(tmp / "other"), 422, "vector_model_mismatch"),
        ("another model (width)", pack_folder(tmp / "narrow", "zip"), 422, "vector_model_mismatch"),
        ("another model (depth)", pack_folder(tmp / "deep"), 422, "vector_model_mismatch"),
        ("another model (gguf)", other_gguf, 422, "vector_model_mismatch"),
        ("oversized upload", os.urandom(210_000), 413, "upload_too_large"),
    ]


def test_bad_uploads_are_rejected_and_store_unchanged(
    lm: steerlab.LM, store: Path, tmp_path: Path, vectors: dict[str, steerlab.SteeringVector]
) -> None:
    cases = bad_uploads(tmp_path / "src", lm, vectors)
    before = tree(store)
    with served(lm, store, max_upload_bytes=200_000, max_unpacked_bytes=200_000, max_archive_members=16) as (_, client):
        names_before = [v["name"] for v in client.get("/v1/vectors", headers=AUTH).json()["data"]]
        for label, data, status, code in cases:
            for how in ("multipart", "raw"):
                if how == "multipart":
                    r = client.post(
                        "/v1/vectors", headers=AUTH, data={"name": "newvec"}, files={"file": ("upload.bin", data)}
                    )
                else:
                    r = client.post("/v1/vectors?name=newvec", headers=RAW, content=data)
                assert r.status_code == status, (label, how, r.text)
                assert r.json()["error"]["code"] == code, (label, how, r.text)
                assert tree(store) == before, (label, how)
        assert [v["name"] for v in client.get("/v1/vectors", headers=AUTH).json()["data"]] == names_before
        assert completion(client, prompt="Hi", steering=steering("newvec")).status_code == 404


@pytest.mark.parametrize(
    "name",
    ["../x", "/etc/passwd", "a/../../b", "..", ".hidden", "a b", "x" * 65, "a.b", "happy/../dog", "C:\\x", "%2e%2e"],
)
def test_traversal_names_rejected(
    lm: steerlab.LM, store: Path, tmp_path: Path, name: str, vectors: dict[str, steerlab.SteeringVector]
) -> None:
    vectors["dog"].save(tmp_path / "dog")
    data = pack_folder(tmp_path / "dog")
    before = tree(store)
    outside = sorted(p.name for p in store.parent.iterdir())
    with served(lm, store) as (_, client):
        r = client.post("/v1/vectors", headers=AUTH, data={"name": name}, files={"file": ("dog.tar.gz", data)})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_vector_name", (name, r.text)
        r = client.post("/v1/vectors", headers=RAW, params={"name": name}, content=data)
        assert r.status_code == 400, (name, r.text)
        quoted = "".join(f"%{b:02X}" for b in name.encode())
        r = client.delete(f"/v1/vectors/{quoted}", headers=AUTH)
        assert r.status_code in (400, 404), (name, r.text)
        r = client.get(f"/v1/vectors/{quoted}", headers=AUTH)
        assert r.status_code in (400, 404), (name, r.text)
        r = completion(client, prompt="Hi", steering=steering(name))
        assert r.status_code in (400, 404), (name, r.text)
    assert tree(store) == before
    assert sorted(p.name for p in store.parent.iterdir()) == outside


def test_symlinks_out_of_the_store_are_not_followed(
    lm: steerlab.LM, store: Path, tmp_path: Path, vectors: dict[str, steerlab.SteeringVector]
) -> None:
    outside = tmp_path / "outside"
    vectors["night"].save(outside / "secret")
    (store / "evil").symlink_to(outside / "secret", target_is_directory=True)
    (store / "half").mkdir()
    (store / "half" / "steering_config.json").symlink_to(outside / "secret" / "steering_config.json")
    shutil.copy(outside / "secret" / "vector.safetensors", store / "half" / "vector.safetensors")
    with served(lm, store) as (app, client):
        names = [v["name"] for v in client.get("/v1/vectors", headers=AUTH).json()["data"]]
        assert "evil" not in names and "half" not in names
        assert set(app.state.server.store.skipped) == {"evil", "half"}
        assert completion(client, prompt="Hi", steering=steering("evil")).status_code == 404
        assert client.delete("/v1/vectors/evil", headers=AUTH).status_code == 404
    assert (outside / "secret" / "vector.safetensors").is_file()
    assert (store / "evil").is_symlink()


def test_upload_use_overwrite_delete(
    lm: steerlab.LM, store: Path, tmp_path: Path, vectors: dict[str, steerlab.SteeringVector]
) -> None:
    src = tmp_path / "src"
    vectors["dog"].save(src / "dog2")
    gguf = vectors["night"].to_gguf(src / "night2.gguf")
    with served(lm, store) as (_, client):
        r = client.post("/v1/vectors", headers=AUTH, files={"file": ("dog2.tar.gz", pack_folder(src / "dog2"))})
        assert r.status_code == 201, r.text
        assert r.json()["name"] == "dog2" and r.json()["layers"] == [2, 3]
        assert (store / "dog2" / "vector.safetensors").is_file()
        r = client.post("/v1/vectors?name=dogzip", headers=RAW, content=pack_folder(src / "dog2", "zip"))
        assert r.status_code == 201, r.text
        r = client.post(
            "/v1/vectors", headers=AUTH, data={"name": "night2"}, files={"file": ("x.gguf", gguf.read_bytes())}
        )
        assert r.status_code == 201 and r.json()["method"] == "mean_diff", r.text
        # served: same text as the original vectors
        a = completion(client, prompt="The cat", max_tokens=8, steering=steering("dog2")).json()
        b = completion(client, prompt="The cat", max_tokens=8, steering=steering("dog")).json()
        assert a["choices"][0]["text"] == b["choices"][0]["text"]
        c = completion(client, prompt="The cat", max_tokens=8, steering=steering("night2")).json()
        d = completion(client, prompt="The cat", max_tokens=8, steering=steering("night")).json()
        assert c["choices"][0]["text"] == d["choices"][0]["text"]
        # name conflict, then overwrite
        before = tree(store)
        r = client.post("/v1/vectors?name=dog2", headers=RAW, content=pack_folder(src / "dog2"))
        assert r.status_code == 409 and tree(store) == before
        r = client.post("/v1/vectors?name=dog2&overwrite=true", headers=RAW, content=gguf.read_bytes())
        assert r.status_code == 201 and r.json()["layers"] == [1, 2]
        assert not [p for p in store.iterdir() if p.name.startswith(".")]
        # delete
        assert client.delete("/v1/vectors/dog2", headers=AUTH).json()["deleted"] is True
        assert not (store / "dog2").exists()
        assert client.delete("/v1/vectors/dog2", headers=AUTH).status_code == 404
        assert completion(client, prompt="Hi", steering=steering("dog2")).status_code == 404
        names = [v["name"] for v in client.get("/v1/vectors", headers=AUTH).json()["data"]]
        assert names == ["big", "dog", "dogzip", "happy", "night", "night2"]


# --------------------------------------------------------------------------- real server
def test_openai_client(lm: steerlab.LM, store: Path, vectors: dict[str, steerlab.SteeringVector]) -> None:
    openai = pytest.importorskip("openai")
    prompt = "Once upon a time"
    want = steerlab.generate(lm, prompt, steering=steerlab.Steering(vectors["happy"], 4.0), max_new_tokens=10)[0]
    app = create_app(lm, store, ServeSettings(api_key=KEY, model_aliases=("default",)))
    with ServerThread(app) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=KEY, max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == ["stories260K"]
        out = client.completions.create(
            model="default", prompt=prompt, max_tokens=10, extra_body={"steering": steering("happy")}
        )
        assert out.choices[0].text == want
        assert out.usage is not None and out.usage.completion_tokens == 10
        stream = client.completions.create(
            model="stories260K", prompt=prompt, max_tokens=10, stream=True, extra_body={"steering": steering("happy")}
        )
        assert "".join(c.choices[0].text for c in stream if c.choices) == want
        chat = client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=8,
            extra_body={"steering": steering("dog")},
        )
        assert chat.choices[0].message.content and chat.choices[0].finish_reason == "length"
        pieces = client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=8,
            stream=True,
            extra_body={"steering": steering("dog")},
        )
        assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices) == chat.choices[0].message.content
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="default", prompt=prompt, extra_body={"steering": steering("missing")})
        with pytest.raises(openai.BadRequestError, match="out of range"):
            client.completions.create(model="default", prompt=prompt, extra_body={"steering": steering("happy", 99)})
        bad = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


def test_client_disconnect_mid_stream_does_not_break_others(lm: steerlab.LM, store: Path) -> None:
    """A streaming client that goes away is cancelled (its row stops, the batch ends early);
    the requests batched with it finish with the right text."""
    app = create_app(lm, store, ServeSettings(api_key=KEY, max_batch=8, batch_wait_ms=50))
    others = [
        {"prompt": p, "max_tokens": 12, "steering": steering("happy") if i % 2 else None}
        for i, p in enumerate(PROMPTS[:4])
    ]
    others = [{k: v for k, v in b.items() if v is not None} for b in others]
    with ServerThread(app) as srv:
        client = httpx.Client(base_url=srv.url, headers=AUTH, timeout=60)
        want = [client.post("/v1/completions", json=b).json()["choices"][0]["text"] for b in others]
        tokens_before = client.get("/metrics?format=json").json()["completion_tokens_total"]

        async def run() -> tuple[list[str], str, list[str]]:
            async with httpx.AsyncClient(base_url=srv.url, headers=AUTH, timeout=60) as c:

                async def quitter() -> list[str]:
                    got: list[str] = []
                    body = {"prompt": "Once upon a time", "max_tokens": 250, "ignore_eos": True, "stream": True}
                    async with c.stream("POST", "/v1/completions", json=body) as r:
                        assert r.status_code == 200
                        async for line in r.aiter_lines():
                            if line.startswith("data: {"):
                                got.append(json.loads(line[6:])["choices"][0]["text"])
                            if len(got) >= 3:
                                break  # leave mid-stream: the connection is closed
                    return got

                async def streamer() -> str:
                    body = {"prompt": PROMPTS[5], "max_tokens": 16, "stream": True}
                    text = ""
                    async with c.stream("POST", "/v1/completions", json=body) as r:
                        async for line in r.aiter_lines():
                            if line.startswith("data: {"):
                                text += json.loads(line[6:])["choices"][0]["text"]
                    return text

                posts = asyncio.gather(*(c.post("/v1/completions", json=b) for b in others))
                got, text, rest = await asyncio.gather(quitter(), streamer(), posts)
                return got, text, [r.json()["choices"][0]["text"] for r in rest]

        with slow_model(lm, 0.01):
            partial, streamed, texts = asyncio.run(run())
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                m = client.get("/metrics?format=json").json()
                if m["running"] == 0 and m["queue_length"] == 0:
                    break
                time.sleep(0.05)
        assert len(partial) == 3
        assert texts == want
        assert (
            streamed
            == client.post("/v1/completions", json={"prompt": PROMPTS[5], "max_tokens": 16}).json()["choices"][0][
                "text"
            ]
        )
        m = client.get("/metrics?format=json").json()
        assert m["requests"].get("cancelled", 0) >= 1
        assert m["running"] == 0 and m["queue_length"] == 0
        # the abandoned row stopped early: far fewer than its 250 tokens were generated
        assert m["completion_tokens_total"] - tokens_before < 150
        # and the server still answers
        assert client.post("/v1/completions", json=others[0]).json()["choices"][0]["text"] == want[0]
        client.close()


# --------------------------------------------------------------------------- CLI
def test_cli_serve_builds_the_app(lm: steerlab.LM, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from steerlab.cli import app as cli

    seen: dict[str, Any] = {}

    def fake_run(api: FastAPI, host: str, port: int, log_level: str) -> None:
        seen.update(app=api, host=host, port=port)
        api.state.server.engine.close()

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setattr(steerlab, "load_model", lambda *a, **k: lm)
    monkeypatch.setenv("STEERLAB_API_KEY", "from-env")
    result = CliRunner().invoke(
        cli,
        ["--quiet", "serve", "--model", "stories", "--vectors", str(store), "--port", "8123", "--max-coefficient", "3"],
    )
    assert result.exit_code == 0, result.output
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    settings = seen["app"].state.server.settings
    assert settings.api_key == "from-env" and settings.max_coefficient == 3.0
    assert "stories" in settings.model_aliases
    assert seen["app"].state.server.store.names() == ["big", "dog", "happy", "night"]
