"""The server's layers: the vector store raises domain errors and knows nothing of HTTP; one table
(:data:`steerlab.serve.http_errors.STATUS`) gives them their statuses; every serve error is a
:class:`steerlab.errors.SteeringError`; the store writes through :func:`steerlab.files.swap_in`
and cleans every hidden temporary at start; the server needs nothing of its generation engine
beyond the :class:`steerlab.serve.Engine` protocol.

Runs on the trained stories260K model, like ``tests/test_serve.py`` (whose helpers it uses).
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import steerlab
from steerlab.errors import SteeringError

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from steerlab.limits import Limits
from steerlab.serve import Engine, ServeSettings, create_app, store_errors
from steerlab.serve.engines.base import QueueFull
from steerlab.serve.http_errors import STATUS, APIError, from_domain
from steerlab.serve.jobs import Delta, Done, Job
from steerlab.serve.metrics import Metrics
from steerlab.serve.store import VectorStore, pack_folder
from steerlab.serve.store_errors import AlreadyExists, InvalidName, NotFound, StoreError, TooLarge

from .test_serve import bad_uploads


@pytest.fixture
def store(tmp_path: Path, vectors: dict[str, steerlab.SteeringVector]) -> Path:
    root = tmp_path / "store"
    for name in ("happy", "dog"):
        vectors[name].save(root / name)
    return root


def hidden(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_serve_errors_are_steering_errors() -> None:
    for cls in (StoreError, QueueFull, APIError):
        assert issubclass(cls, SteeringError), cls
    err = APIError(404, "no such thing", "not_found_error", "not_found", "name")
    assert str(err) == "no such thing" and err.body()["error"]["param"] == "name"


def test_every_store_error_has_its_status_in_the_one_table() -> None:
    classes = [c for c in vars(store_errors).values() if isinstance(c, type) and issubclass(c, StoreError)]
    assert len(classes) >= 7
    for cls in classes:
        assert cls in STATUS, cls
        assert not hasattr(cls("x"), "status"), cls  # the store knows no HTTP
    queue = from_domain(QueueFull("busy"))
    assert (queue.status, queue.type, queue.code, queue.headers) == (
        429,
        "rate_limit_error",
        "queue_full",
        {"Retry-After": "1"},
    )


def test_the_store_refuses_with_domain_errors_that_map_to_the_http_statuses(
    lm: steerlab.LM, store: Path, tmp_path: Path, vectors: dict[str, steerlab.SteeringVector]
) -> None:
    """Every bad upload of the HTTP tests, straight into the store: a domain error whose class the
    table maps to the status the server answers, and the store left as it was."""
    vs = VectorStore(store, lm, Limits.for_model(lm, max_upload_bytes=200_000, max_unpacked_bytes=200_000))  # as HTTP
    before = sorted(p.name for p in store.iterdir())
    for label, data, status, code in bad_uploads(tmp_path / "src", lm, vectors):
        with pytest.raises(StoreError) as info:
            vs.add_upload("newvec", io.BytesIO(data))
        err = from_domain(info.value, "file")
        assert (err.status, err.code) == (status, code), (label, info.value)
        assert sorted(p.name for p in store.iterdir()) == before, label
    for call, cls, status in (
        (lambda: vs.get("../x"), InvalidName, 400),
        (lambda: vs.get("nope"), NotFound, 404),
        (lambda: vs.delete("nope"), NotFound, 404),
    ):
        with pytest.raises(cls) as caught:
            call()
        assert from_domain(caught.value).status == status
    vectors["night"].save(tmp_path / "night")
    with pytest.raises(AlreadyExists) as exists:
        vs.add_upload("dog", io.BytesIO(pack_folder(tmp_path / "night")))
    assert from_domain(exists.value).status == 409


def test_start_removes_the_hidden_temporaries_of_uploads_deletes_and_swaps(lm: steerlab.LM, store: Path) -> None:
    """A crash can leave an upload's scratch, a delete's trash, or a folder swap's temporary
    (``.NAME.*.tmp`` / ``.NAME.*.old``); the next start removes them all, and nothing else."""
    for leftover in (".upload-abc", ".trash-def", ".dog.k2j3.old", ".happy.x9.tmp"):
        (store / leftover).mkdir()
        (store / leftover / "vector.safetensors").write_bytes(b"half")
    (store / ".upload-file").write_bytes(b"x")
    (store / ".gitignore").write_text("*\n")
    (store / ".notes").mkdir()
    vs = VectorStore(store, lm)
    assert hidden(store) == [".gitignore", ".notes"]
    assert vs.names() == ["dog", "happy"]


def test_overwrite_swaps_the_new_folder_in_and_leaves_no_trash(
    lm: steerlab.LM, store: Path, tmp_path: Path, vectors: dict[str, steerlab.SteeringVector]
) -> None:
    """Overwriting a served vector, or an unserved symlink, leaves the new folder in place and no
    hidden entry behind (a symlinked entry used to stay as a ``.trash-*`` link for good); the
    symlink's target is untouched."""
    outside = tmp_path / "outside"
    vectors["night"].save(outside)
    os.symlink(outside, store / "evil")
    vs = VectorStore(store, lm)
    assert "evil" in vs.skipped
    vectors["big"].save(tmp_path / "big")
    data = pack_folder(tmp_path / "big")
    for name in ("dog", "evil"):
        info = vs.add_upload(name, io.BytesIO(data), overwrite=True)
        assert info["layers"] == vectors["big"].layers
        assert (store / name).is_dir() and not (store / name).is_symlink()
        assert sorted(p.name for p in (store / name).iterdir()) == ["steering_config.json", "vector.safetensors"]
        assert hidden(store) == [], name
    assert steerlab.SteeringVector.load(outside).layers == vectors["night"].layers
    assert VectorStore(store, lm).names() == ["dog", "evil", "happy"]


def test_upload_over_the_limit_is_too_large(lm: steerlab.LM, store: Path) -> None:
    vs = VectorStore(store, lm, Limits.for_model(lm, max_upload_bytes=10))
    with pytest.raises(TooLarge, match="larger than 10 bytes"):
        vs.add_upload("x", io.BytesIO(b"\x1f\x8b" + b"x" * 100))
    assert hidden(store) == []


class EchoEngine:
    """An engine with the :class:`~steerlab.serve.engines.base.Engine` protocol's members and a
    record of its calls, nothing else (``__slots__``): every job answers ``"echo"`` at once."""

    __slots__ = ("_metrics", "cancelled", "closed", "submitted")

    def __init__(self) -> None:
        self._metrics = Metrics()
        self.submitted: list[Job] = []
        self.cancelled: list[Job] = []
        self.closed = False

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    @property
    def model_lock(self) -> threading.Lock | None:
        return None

    @property
    def alive(self) -> bool:
        return not self.closed

    @property
    def description(self) -> str:
        return "echo"

    def submit(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            self.submitted.append(job)
            job.send(Delta(job.index, "ec"))
            job.send(Delta(job.index, "ho"))
            job.send(Done(job.index, "echo", "length", len(job.prompt_ids), 2))

    def cancel(self, job: Job) -> None:
        self.cancelled.append(job)

    def queue_length(self) -> int:
        return 0

    def running(self) -> int:
        return 0

    def close(self, timeout: float = 10.0) -> None:
        self.closed = True

    def snapshot(self) -> dict[str, Any]:
        return {**self._metrics.snapshot(), "queue_length": 0, "running": 0, "engine": {"name": "echo"}}


def test_the_server_needs_of_an_engine_only_the_engine_protocol(lm: steerlab.LM, store: Path) -> None:
    """An engine with nothing but the protocol's members serves the completions (whole and
    streamed), ``/health`` and ``/metrics``; the factory gets the server's tokenizer lock and
    store, finished requests are cancelled (a no-op once done) and shutdown closes the engine.
    The cost service runs the model with the engine's ``model_lock`` (here ``None``: no lock)."""
    built: dict[str, Any] = {}

    def factory(lm_: steerlab.LM, settings: ServeSettings, tok_lock: threading.Lock, store_: VectorStore) -> Engine:
        built.update(lm=lm_, settings=settings, tok_lock=tok_lock, store=store_, engine=EchoEngine())
        engine: Engine = built["engine"]
        return engine

    app = create_app(lm, store, ServeSettings(max_batch=3), engine=factory)
    server = app.state.server
    engine = built["engine"]
    assert server.engine is engine and built["lm"] is lm and built["settings"] is server.settings
    assert built["tok_lock"] is server.tok_lock and built["store"] is server.store
    with TestClient(app) as client:
        steering = [{"vector": "happy", "coefficient": 2.0}]
        r = client.post("/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 4, "steering": steering})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [c["text"] for c in body["choices"]] == ["echo"]
        assert body["usage"]["prompt_tokens"] == len(server.encode("Once upon a time"))
        job = engine.submitted[0]
        assert job.vectors == ("happy",) and job.params.max_tokens == 4 and job.steering is not None
        assert engine.cancelled == [job]  # the request is over: its jobs are stopped (no-op once finished)

        with client.stream("POST", "/v1/completions", json={"prompt": "The cat", "max_tokens": 2, "stream": True}) as s:
            events = [line for line in s.iter_lines() if line.startswith("data: ")]
        texts = [json.loads(e[6:])["choices"][0]["text"] for e in events[:-1]]
        assert texts == ["ec", "ho", ""] and events[-1] == "data: [DONE]"

        assert client.get("/health").json() == {"status": "ok"}
        metrics = client.get("/metrics?format=json").json()
        assert metrics["engine"] == {"name": "echo"} and metrics["requests"]["completions"] == 2
        assert b'scheduler="echo"' in client.get("/metrics").content
        ratio = client.post(
            "/v1/cost/perplexity_ratio",
            json={"prompt": "Once upon a time", "steered": " there was", "unsteered": " there was"},
        )
        assert ratio.status_code == 200 and ratio.json()["ratio"] == pytest.approx(1.0)
    assert engine.closed and len(engine.submitted) == 2
