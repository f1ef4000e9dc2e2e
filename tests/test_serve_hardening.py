"""``steerlab serve`` against hostile or odd input (regressions of a probe that drove the server
with hundreds of bad inputs, concurrent bursts and kill -9 during uploads).

A bad request fails alone with a 400 in OpenAI's error shape and leaves its batch-mates alone;
bodies are size-capped before they are read; tokenisation runs off the event loop; other sites'
pages cannot write; every error, FastAPI's own included, has OpenAI's shape; malformed store
entries are skipped; uploads leave nothing outside the store and show no server paths.

Runs on the trained stories260K model, like ``tests/test_serve.py`` (whose helpers it uses).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

import steerlab

pytest.importorskip("fastapi")
import httpx
from fastapi.testclient import TestClient

from steerlab.serve import ServeSettings, VectorStore, create_app, pack_folder

from .test_serve import (
    AUTH,
    KEY,
    PROMPTS,
    RAW,
    ServerThread,
    bad_uploads,
    completion,
    served,
    steering,
    tree,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """``r`` is ``status`` with exactly OpenAI's error body; returns the ``error`` object."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


# --------------------------------------------------------------------------- 1. a bad value fails alone
BAD_VALUES: list[tuple[str, dict[str, Any]]] = [
    ("tiny temperature", {"temperature": 1e-45}),
    ("seed 2**64-1", {"temperature": 1.0, "seed": 2**64 - 1}),
    ("seed 2**64", {"temperature": 1.0, "seed": 2**64}),
    ("seed below int64", {"temperature": 1.0, "seed": -(2**63) - 1}),
    ("positions end past int64", {"steering": [{"vector": "happy", "coefficient": 2.0, "positions": [0, 2**64]}]}),
    ("positions start past int64", {"steering": [{"vector": "happy", "positions": [2**63, None]}]}),
]


def test_a_bad_value_fails_alone_with_400_and_its_batch_mates_are_untouched(lm: steerlab.LM, store: Path) -> None:
    """Requests whose values used to fail the whole batch with a 500 now get a 400 each, while
    the good requests sent with them (same burst, same batch) equal their solo outputs."""
    good = [
        {"prompt": PROMPTS[0], "max_tokens": 8},
        {"prompt": PROMPTS[1], "max_tokens": 8, "steering": steering("happy")},
        {"prompt": PROMPTS[2], "max_tokens": 8, "temperature": 0.8, "seed": 11},
        {"prompt": PROMPTS[3], "max_tokens": 8, "temperature": 1.0, "seed": 2**63 - 1, "n": 2},
    ]
    bad = [{"prompt": PROMPTS[4], "max_tokens": 8, **extra} for _, extra in BAD_VALUES]
    app = create_app(lm, store, ServeSettings(api_key=KEY, max_batch=16, batch_wait_ms=100))

    async def run() -> tuple[list[httpx.Response], list[httpx.Response], list[httpx.Response]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH, timeout=120) as c:
            mixed = await asyncio.gather(*(c.post("/v1/completions", json=b) for b in [*bad, *good]))
            alone = [await c.post("/v1/completions", json=b) for b in good]
        return list(mixed[: len(bad)]), list(mixed[len(bad) :]), alone

    try:
        bad_r, good_r, alone = asyncio.run(run())
        for (label, _), r in zip(BAD_VALUES, bad_r, strict=True):
            err = assert_openai_error(r, 400, "invalid_value")
            assert err["type"] == "invalid_request_error", (label, err)
        assert [r.status_code for r in good_r] == [200] * len(good), [r.text for r in good_r]
        assert [r.json()["choices"] for r in good_r] == [r.json()["choices"] for r in alone]
        assert "http_500" not in app.state.server.engine.snapshot()["requests"]
    finally:
        app.state.server.engine.close()


def test_temperature_floor_and_int64_seed_are_accepted(lm: steerlab.LM, store: Path) -> None:
    with served(lm, store) as (_, client):
        for body in (
            {"temperature": 0.01, "seed": -(2**63)},
            {"temperature": 2.0, "seed": 2**63 - 1, "n": 3},
            {"steering": [{"vector": "happy", "positions": [0, 2**31 - 1]}]},
        ):
            r = completion(client, prompt="The cat", max_tokens=3, **body)
            assert r.status_code == 200, (body, r.text)


# --------------------------------------------------------------------------- 2. body size, event loop
def _send_head_only(port: int, head: bytes, wait_s: float = 20.0) -> tuple[int, dict[str, Any]]:
    """Send only the request head (no body at all) and return the response's status and JSON."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(head)
        data = b""
        while True:
            part = sock.recv(65536)
            if not part:
                break
            data += part
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0:
                lines = data[:head_end].decode("latin-1").lower().split("\r\n")
                length = next(int(v.split(":", 1)[1]) for v in lines if v.startswith("content-length:"))
                if len(data) >= head_end + 4 + length:
                    break
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split(b" ", 2)[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


def test_oversized_bodies_are_refused_before_they_are_read(lm: steerlab.LM, store: Path) -> None:
    """413 from Content-Length alone (the body is never sent), and for a chunked body as soon as
    it passes the limit; the limit is a setting; uploads keep their own, larger limit."""
    limit = 64 * 1024
    app = create_app(lm, store, ServeSettings(max_request_bytes=limit))
    with ServerThread(app) as srv:
        started = time.monotonic()
        head = (
            f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {32 * 1024 * 1024}\r\n\r\n"
        ).encode()
        status, body = _send_head_only(srv.port, head)
        assert status == 413 and body["error"]["code"] == "request_too_large", body
        assert str(limit) in body["error"]["message"]
        assert time.monotonic() - started < 10
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            assert client.get("/health").json() == {"status": "ok"}
            ok = client.post("/v1/completions", json={"prompt": "The cat", "max_tokens": 2})
            assert ok.status_code == 200, ok.text
            r = client.post("/v1/completions", json={"prompt": "word " * (limit // 4), "max_tokens": 2})
            assert_openai_error(r, 413, "request_too_large")

    # chunked (no Content-Length): reading stops as soon as the limit is passed
    pulled = 0

    async def endless() -> Any:
        nonlocal pulled
        yield b'{"prompt": "'
        while pulled < 4096:  # 32 MiB at most, so that a server reading it all still ends
            pulled += 1
            yield b"x" * 8192

    async def chunked() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:
            return await c.post("/v1/chat/completions", content=endless(), headers={"Content-Type": "application/json"})

    r = asyncio.run(chunked())
    assert "content-length" not in r.request.headers
    assert_openai_error(r, 413, "request_too_large")
    assert pulled <= limit // 8192 + 2, pulled

    small = create_app(lm, store, ServeSettings(max_request_bytes=200))
    try:
        with TestClient(small) as client:
            data = pack_folder(store / "dog")
            assert len(data) > 200
            r = client.post("/v1/vectors?name=dog3", content=data, headers={"Content-Type": "application/gzip"})
            assert r.status_code == 201, r.text
            assert_openai_error(client.post("/v1/completions", json={"prompt": "x" * 300}), 413, "request_too_large")
    finally:
        small.state.server.engine.close()


def test_tokenisation_runs_off_the_event_loop(lm: steerlab.LM, store: Path) -> None:
    """While a prompt is being tokenised, /health still answers: the tokenizer call below only
    returns once /health has answered, which can happen only if it runs outside the event loop."""
    app = create_app(lm, store, ServeSettings(api_key=KEY))
    server = app.state.server
    entered, gate = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}
    plain_encode = server.encode

    def slow_encode(text: str) -> list[int]:
        seen["thread"] = threading.get_ident()
        entered.set()
        seen["released"] = gate.wait(5)
        return plain_encode(text)

    server.encode = slow_encode

    async def run() -> tuple[httpx.Response, httpx.Response]:
        seen["loop_thread"] = threading.get_ident()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH, timeout=60) as c:
            post = asyncio.ensure_future(c.post("/v1/completions", json={"prompt": "The cat", "max_tokens": 2}))
            while not entered.is_set():
                await asyncio.sleep(0.01)
            health = await c.get("/health")
            gate.set()
            return await post, health

    try:
        done, health = asyncio.run(run())
        assert health.json() == {"status": "ok"}
        assert seen["released"] is True, "the tokenizer ran on the event loop: /health waited for it"
        assert seen["thread"] != seen["loop_thread"]
        assert done.status_code == 200, done.text
    finally:
        server.engine.close()


# --------------------------------------------------------------------------- 3. cross-site writes
def test_other_sites_pages_cannot_write_even_without_a_key(
    lm: steerlab.LM, store: Path, tmp_path: Path, vectors: dict[str, steerlab.SteeringVector]
) -> None:
    vectors["night"].save(tmp_path / "night")
    archive = pack_folder(tmp_path / "night")
    before = tree(store)
    evil = {"Origin": "https://evil.example"}
    with served(lm, store, api_key=None) as (_, client):
        refused = [
            # the probe's request: a simple cross-origin POST a page can send with fetch(no-cors)
            client.post(
                "/v1/vectors?name=happy&overwrite=true", content=archive, headers={**evil, "Content-Type": "text/plain"}
            ),
            client.post(
                "/v1/vectors",
                data={"name": "happy", "overwrite": "true"},
                files={"file": ("x.tar.gz", archive)},
                headers=evil,
            ),
            client.post(
                "/v1/vectors?name=x",
                content=archive,
                headers={"Sec-Fetch-Site": "cross-site", "Content-Type": "application/octet-stream"},
            ),
            client.post(
                "/v1/vectors?name=x",
                files={"file": ("x.tar.gz", archive)},
                headers={"Sec-Fetch-Site": "same-site", "Origin": "http://testserver:3000"},
            ),
            client.post("/v1/vectors?name=x", files={"file": ("x.tar.gz", archive)}, headers={"Origin": "null"}),
            client.post(
                "/v1/vectors?name=x",
                files={"file": ("x.tar.gz", archive)},
                headers={"Origin": "http://testserver.evil.example"},
            ),
            client.delete("/v1/vectors/happy", headers=evil),
            client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, headers=evil),
        ]
        for r in refused:
            err = assert_openai_error(r, 403, "cross_site_request")
            assert err["type"] == "permission_error"
        assert tree(store) == before

        # bodies a page can send without a CORS preflight are refused on their own too
        for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}, {}):
            assert_openai_error(
                client.post("/v1/vectors?name=x", content=archive, headers=headers), 415, "unsupported_media_type"
            )
            assert_openai_error(
                client.post("/v1/completions", content=b'{"prompt": "Hi"}', headers=headers),
                415,
                "unsupported_media_type",
            )
        assert tree(store) == before

        # the server's own pages (same origin) and non-browser clients still write
        same = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
        r = client.post("/v1/vectors", data={"name": "night2"}, files={"file": ("n.tar.gz", archive)}, headers=same)
        assert r.status_code == 201, r.text
        r = client.post(
            "/v1/vectors?name=night3",
            content=archive,
            headers={"Origin": "http://testserver", "Content-Type": "application/gzip"},
        )
        assert r.status_code == 201, r.text
        assert client.post("/v1/vectors?name=night4", content=archive, headers=RAW).status_code == 201
        assert completion(client, prompt="Hi", max_tokens=2).status_code == 200
        assert client.delete("/v1/vectors/night4", headers=same).status_code == 200
        # reading is not a write: any page may GET (it cannot read the answer without CORS)
        assert client.get("/v1/vectors", headers=evil).status_code == 200


# --------------------------------------------------------------------------- 6. every error is OpenAI-shaped
def test_every_error_has_openai_shape(lm: steerlab.LM, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    json_type = {**AUTH, "Content-Type": "application/json"}
    with served(lm, store) as (app, client):
        cases: list[tuple[str, httpx.Response, int, str | None]] = [
            (
                "lone surrogate",
                client.post("/v1/completions", headers=json_type, content=b'{"prompt": "a\\ud800b", "max_tokens": 2}'),
                400,
                "invalid_value",
            ),
            (
                "lone surrogate in chat",
                client.post(
                    "/v1/chat/completions",
                    headers=json_type,
                    content=b'{"messages": [{"role": "user", "content": "\\udfff"}]}',
                ),
                400,
                "invalid_value",
            ),
            (
                "surrogate key",
                client.post("/v1/completions", headers=json_type, content=b'{"prompt": "a", "\\ud800": 1}'),
                400,
                "invalid_value",
            ),
            (
                "invalid UTF-8",
                client.post("/v1/completions", headers=json_type, content=b'{"prompt": "\xff\xfe", "max_tokens": 2}'),
                400,
                "invalid_body",
            ),
            (
                "deep nesting",
                client.post("/v1/completions", headers=json_type, content=b"[" * 200_000 + b"]" * 200_000),
                400,
                "invalid_body",
            ),
            ("not JSON", client.post("/v1/completions", headers=json_type, content=b"{oops"), 400, "invalid_value"),
            ("validation", completion(client, prompt="Hi", max_tokens=0), 400, "invalid_value"),
            ("unknown path", client.get("/v2/nothing", headers=AUTH), 404, "not_found"),
            ("wrong method", client.put("/v1/completions", headers=AUTH), 405, "method_not_allowed"),
            ("wrong method on a vector", client.post("/v1/vectors/happy", headers=RAW), 405, "method_not_allowed"),
        ]
        for label, r, status, code in cases:
            assert r.status_code == status, (label, r.text)
            assert_openai_error(r, status, code)
        # the server still serves after all that
        assert completion(client, prompt="Hi", max_tokens=2).status_code == 200

        def broken() -> list[Any]:
            raise RuntimeError("boom in a handler")

        monkeypatch.setattr(app.state.server.store, "describe_all", broken)
        with TestClient(app, raise_server_exceptions=False) as raw:
            err = assert_openai_error(raw.get("/v1/vectors", headers=AUTH), 500, "server_error")
            assert "boom" not in err["message"]


def test_lone_surrogate_on_a_real_server_answers_400(lm: steerlab.LM, store: Path) -> None:
    """Over a real connection (the probe saw a plain-text 500 and a dropped connection)."""
    app = create_app(lm, store, ServeSettings())
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        for body in (
            b'{"prompt": "\\ud800", "max_tokens": 2, "stream": true}',
            b'{"prompt": ["ok", "\\udc00"], "max_tokens": 2}',
        ):
            r = client.post("/v1/completions", content=body, headers={"Content-Type": "application/json"})
            assert_openai_error(r, 400, "invalid_value")
        assert client.get("/health").json() == {"status": "ok"}


# --------------------------------------------------------------------------- 4. malformed store entries
def _gguf_with_meta(path: Path, d_model: int, fields: dict[str, Any]) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "controlvector")
    for key, value in fields.items():
        if isinstance(value, int):
            writer.add_int64(f"steerlab.{key}", value)
        else:
            writer.add_string(f"steerlab.{key}", value)
    writer.add_tensor("direction.2", np.ones(d_model, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


MALFORMED_CONFIGS: dict[str, dict[str, Any]] = {
    "layers-int": {"layers": 5},
    "meta-list": {"meta": [1, 2]},
    "dmodel-text": {"d_model": "abc"},
    "nlayers-null": {"n_layers": None},
    "method-number": {"method": 3},
}


def test_malformed_store_entries_are_skipped_and_the_server_starts(
    lm: steerlab.LM, store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name, change in MALFORMED_CONFIGS.items():
        folder = store / name
        steerlab.SteeringVector.load(store / "dog").save(folder)
        cfg = json.loads((folder / "steering_config.json").read_text())
        cfg.update(change)
        (folder / "steering_config.json").write_text(json.dumps(cfg))
    _gguf_with_meta(store / "badmeta.gguf", lm.d_model, {"model_id": lm.model_id, "meta": "{not json"})
    _gguf_with_meta(store / "baddim.gguf", lm.d_model, {"model_id": lm.model_id, "d_model": "abc"})
    (store / "notjson").mkdir()
    (store / "notjson" / "steering_config.json").write_text("[1, 2")
    (store / "notjson" / "vector.safetensors").write_bytes((store / "dog" / "vector.safetensors").read_bytes())
    bad = {*MALFORMED_CONFIGS, "badmeta.gguf", "baddim.gguf", "notjson"}
    with caplog.at_level("WARNING", logger="steerlab.serve"), served(lm, store) as (app, client):
        skipped = app.state.server.store.skipped
        assert set(skipped) == bad, skipped
        assert "'layers' must be a list of integers" in skipped["layers-int"]
        assert "'meta' must be a JSON object" in skipped["meta-list"]
        assert "'d_model' must be a positive integer" in skipped["dmodel-text"]
        assert "steerlab.meta is not valid JSON" in skipped["badmeta.gguf"]
        names = [v["name"] for v in client.get("/v1/vectors", headers=AUTH).json()["data"]]
        assert names == ["big", "dog", "happy", "night"]
        assert completion(client, prompt="Hi", max_tokens=2, steering=steering("dog")).status_code == 200
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert all(name in logged for name in bad), logged


# --------------------------------------------------------------------------- 5. zip members without type bits
def test_zip_members_without_file_type_bits_are_regular_files(
    lm: steerlab.LM, store: Path, tmp_path: Path, vectors: dict[str, steerlab.SteeringVector]
) -> None:
    vectors["night"].save(tmp_path / "night")
    cfg = (tmp_path / "night" / "steering_config.json").read_bytes()
    weights = (tmp_path / "night" / "vector.safetensors").read_bytes()

    def zipped(mode: int | None) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("night/steering_config.json", cfg)  # what zipfile.writestr writes: 0o600, no S_IFREG
            if mode is None:
                zf.writestr("night/vector.safetensors", weights)
            else:
                info = zipfile.ZipInfo("night/vector.safetensors")
                info.external_attr = mode << 16
                zf.writestr(info, weights)
        return buf.getvalue()

    with served(lm, store) as (_, client):
        r = client.post("/v1/vectors?name=zipped", content=zipped(None), headers=RAW)
        assert r.status_code == 201, r.text
        assert r.json()["layers"] == vectors["night"].layers
        for label, mode in (
            ("symlink", stat.S_IFLNK | 0o777),
            ("char device", stat.S_IFCHR | 0o600),
            ("block device", stat.S_IFBLK | 0o600),
            ("fifo", stat.S_IFIFO | 0o600),
            ("directory bits", stat.S_IFDIR | 0o755),
        ):
            before = tree(store)
            r = client.post("/v1/vectors?name=bad", content=zipped(mode), headers=RAW)
            assert_openai_error(r, 400, "unsafe_archive")
            assert tree(store) == before, label
        r = client.post("/v1/vectors?name=regular", content=zipped(stat.S_IFREG | 0o644), headers=RAW)
        assert r.status_code == 201, r.text


# --------------------------------------------------------------------------- 8. upload temporaries, paths
def test_upload_errors_name_no_server_paths(
    lm: steerlab.LM, store: Path, tmp_path: Path, vectors: dict[str, steerlab.SteeringVector]
) -> None:
    cases = bad_uploads(tmp_path / "src", lm, vectors)
    secret_dirs = {str(store), str(store.resolve()), tempfile.gettempdir(), str(Path(tempfile.gettempdir()).resolve())}
    with served(lm, store, max_upload_bytes=200_000, max_unpacked_bytes=200_000) as (_, client):
        for label, data, status, code in cases:
            r = client.post("/v1/vectors?name=newvec", headers=RAW, content=data)
            err = assert_openai_error(r, status, code)
            leaked = [d for d in secret_dirs if d in err["message"]]
            assert not leaked and "upload-" not in err["message"], (label, err["message"])
    assert not [p for p in store.iterdir() if p.name.startswith(".")]


def test_upload_killed_midway_leaves_nothing_outside_the_store_and_is_cleaned_at_start(
    lm: steerlab.LM, tmp_path: Path
) -> None:
    """kill -9 in the middle of an upload: its scratch files are in a hidden folder of the store
    (nothing in $TMPDIR), and the next start removes them."""
    root, scratch_tmp = tmp_path / "store", tmp_path / "tmpdir"
    scratch_tmp.mkdir()
    script = textwrap.dedent("""
        import sys, time
        from steerlab.serve.store import VectorStore

        class Stalled:
            # an upload whose client stops sending after the first megabyte
            def __init__(self):
                self.calls = 0

            def read(self, size=-1):
                self.calls += 1
                if self.calls == 1:
                    return b"\\x1f\\x8b" + b"x" * (1 << 20)
                print("stalled", flush=True)
                time.sleep(600)
                return b""

        VectorStore(sys.argv[1], None).add_upload("half", Stalled())
    """)
    env = {**os.environ, "TMPDIR": str(scratch_tmp), "PYTHONPATH": str(Path(steerlab.__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", script, str(root)], env=env, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"stalled"
    finally:
        proc.kill()  # SIGKILL: no cleanup runs
        proc.wait(30)
    assert not list(scratch_tmp.rglob("upload.bin")) and not list(scratch_tmp.glob("steerlab-upload-*"))
    leftovers = [p for p in root.iterdir()]
    assert leftovers and all(p.name.startswith(".") for p in leftovers), leftovers
    assert any(p.name == "upload.bin" for left in leftovers for p in left.rglob("*"))
    VectorStore(root, lm)  # the next start
    assert list(root.iterdir()) == []


def test_store_scan_survives_an_unexpected_loader_error(
    lm: steerlab.LM, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even an error type nobody planned for skips one entry instead of stopping the server."""
    real = steerlab.SteeringVector.load.__func__  # type: ignore[attr-defined]

    def flaky(cls: type, directory: Any) -> steerlab.SteeringVector:
        if Path(directory).name == "night":
            raise KeyError("surprise")
        return real(cls, directory)

    monkeypatch.setattr(steerlab.SteeringVector, "load", classmethod(flaky))
    s = VectorStore(store, lm)
    assert s.names() == ["big", "dog", "happy"] and "KeyError" in s.skipped["night"]


def test_serve_settings_take_the_request_limit() -> None:
    assert ServeSettings().max_request_bytes == 1024 * 1024
    assert ServeSettings(max_request_bytes=10).limits()["max_request_bytes"] == 10
    with pytest.raises(ValueError, match="max_request_bytes"):
        ServeSettings(max_request_bytes=0)


@pytest.mark.parametrize("n", [1, 3])
def test_seeded_sampling_with_large_seeds_is_reproducible(lm: steerlab.LM, store: Path, n: int) -> None:
    with served(lm, store) as (_, client):
        body = {"prompt": "The cat", "max_tokens": 6, "temperature": 1.0, "seed": 2**63 - 1, "n": n}
        a, b = completion(client, **body).json(), completion(client, **body).json()
        assert [c["text"] for c in a["choices"]] == [c["text"] for c in b["choices"]]
    assert torch.get_num_threads() == 1  # the module fixture from test_serve applies here too


def test_cli_serve_starts_with_malformed_entries_and_takes_the_request_limit(
    lm: steerlab.LM, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from steerlab.cli import app as cli

    for name, change in MALFORMED_CONFIGS.items():
        steerlab.SteeringVector.load(store / "dog").save(store / name)
        cfg = json.loads((store / name / "steering_config.json").read_text())
        cfg.update(change)
        (store / name / "steering_config.json").write_text(json.dumps(cfg))
    _gguf_with_meta(store / "badmeta.gguf", lm.d_model, {"meta": "{not json"})
    seen: dict[str, Any] = {}

    def fake_run(api: Any, host: str, port: int, log_level: str) -> None:
        seen["app"] = api
        api.state.server.engine.close()

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setattr(steerlab, "load_model", lambda *a, **k: lm)
    result = CliRunner().invoke(cli, ["serve", "--vectors", str(store), "--max-request-mb", "0.5"])
    assert result.exit_code == 0, result.output
    server = seen["app"].state.server
    assert server.store.names() == ["big", "dog", "happy", "night"]
    assert set(server.store.skipped) == {*MALFORMED_CONFIGS, "badmeta.gguf"}
    assert result.output.count("skipped ") == len(MALFORMED_CONFIGS) + 1, result.output
    assert server.settings.max_request_bytes == 512 * 1024
