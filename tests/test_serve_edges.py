"""The server's edges against the cases of issue 21 ("Trust at every edge"): one validation layer,
driven by one :class:`steerlab.limits.Limits` made from the model and the settings.

Each test reproduces one case of the issue (D1-D10, D19, ``positions="actadd"``, 500s) and
checks the intended answer: a clear 4xx in OpenAI's shape, nothing stored, nothing lost, and the
batch-mates of a failing row untouched. Memory bounds are measured with :mod:`tracemalloc`
(Python and numpy allocations of every thread), model work by the tokens the model is given.

Runs on the trained stories260K model (5 layers, d_model 64, context 512), like
``tests/test_serve.py``, whose helpers it uses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import math
import struct
import tarfile
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

import steerlab

pytest.importorskip("fastapi")
import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient

from steerlab.limits import LimitError, Limits
from steerlab.serve import ServeSettings, VectorStore, create_app, pack_folder
from steerlab.serve.store import StoredVector, check_name

from .test_serve import AUTH, KEY, RAW, completion, served, tree
from .test_serve_hardening import assert_openai_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PLAIN = ["Once upon a time", "The cat", "Tom and his mom went to the park and"]


def upload(client: TestClient, name: str, data: bytes, **query: Any) -> httpx.Response:
    return client.post("/v1/vectors", params={"name": name, **query}, headers=RAW, content=data)


def hidden(store: Path) -> list[str]:
    return [p.name for p in store.iterdir() if p.name.startswith(".")]


@contextmanager
def peak_memory() -> Iterator[Callable[[], int]]:
    """Peak bytes allocated (Python objects and numpy arrays, all threads) inside the block."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    peak = [0]
    try:
        yield lambda: peak[0]
    finally:
        peak[0] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def huge_vector(lm: steerlab.LM, value: float = 1e38, layer: int = 2) -> steerlab.SteeringVector:
    return steerlab.SteeringVector({layer: torch.full((lm.d_model,), value)}, lm.model_id, lm.d_model, lm.n_layers)


# --------------------------------------------------------------------------- D1: a request fails alone
def _inject(app: FastAPI, name: str, vector: steerlab.SteeringVector, tmp: Path) -> None:
    """Put ``vector`` in the served store as if it had been admitted (the upload and load checks,
    tested in D2, refuse such a vector: this reaches the worker's own defence)."""
    store = app.state.server.store
    with store._lock:
        store._vectors[name] = StoredVector(name, vector, tmp / name, "folder")


@pytest.mark.parametrize("scheduler", ["continuous", "batch"])
def test_d1_nonfinite_row_fails_alone_in_both_schedulers(
    lm: steerlab.LM, store: Path, tmp_path: Path, scheduler: str
) -> None:
    """A vector of 1e38 at one layer at coefficient 16 overflows its row to NaN logits. Sent in
    one burst with 3 plain requests (and a sampled one), each overflowing request gets its own
    400 (``steering_overflow``) — in the prompt pass (positions "all"), at a decoding step
    (positions "generated": the prompt is not steered, the first generated token is), sampled or
    greedy, whole or streamed — while the plain requests get exactly their solo text (greedy:
    equality is exact, the rows of a batch do not mix)."""
    huge = [{"vector": "huge", "coefficient": 16.0}]
    bad = [
        {"prompt": "The dog", "max_tokens": 6, "steering": huge},
        {"prompt": "The dog", "max_tokens": 6, "steering": [{**huge[0], "positions": "generated"}]},
        {"prompt": "The dog", "max_tokens": 6, "steering": huge, "temperature": 1.0, "seed": 3},
    ]
    good = [{"prompt": p, "max_tokens": 6} for p in PLAIN] + [
        {"prompt": PLAIN[0], "max_tokens": 6, "temperature": 0.9, "seed": 7}
    ]
    app = create_app(lm, store, ServeSettings(api_key=KEY, scheduler=scheduler, max_batch=16, batch_wait_ms=150))
    _inject(app, "huge", huge_vector(lm), tmp_path)

    async def run() -> tuple[list[httpx.Response], list[httpx.Response], list[str]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH, timeout=120) as c:
            stream_body = {**bad[1], "stream": True}

            async def streamed() -> list[str]:
                async with c.stream("POST", "/v1/completions", json=stream_body) as s:
                    return [ln async for ln in s.aiter_lines() if ln.startswith("data: ")]

            results = await asyncio.gather(*(c.post("/v1/completions", json=b) for b in [*bad, *good]), streamed())
            alone = [await c.post("/v1/completions", json=b) for b in good]
        mixed = list(results[:-1])
        return mixed, alone, results[-1]  # type: ignore[return-value]

    try:
        mixed, alone, lines = asyncio.run(run())
        for r in mixed[: len(bad)]:
            err = assert_openai_error(r, 400, "steering_overflow")
            assert "NaN or infinite" in err["message"] and "coefficient" in err["message"]
        assert [r.status_code for r in mixed[len(bad) :]] == [200] * len(good), [r.text for r in mixed]
        assert [r.json()["choices"] for r in mixed[len(bad) :]] == [r.json()["choices"] for r in alone]
        assert lines[-1] == "data: [DONE]"
        event = json.loads(lines[-2][6:])
        assert set(event) == {"error"} and event["error"]["code"] == "steering_overflow"
        snap = app.state.server.engine.snapshot()
        assert snap["requests"].get("steering_overflow") == len(bad) + 1
        assert snap["running"] == 0 and "http_500" not in snap["requests"]
        assert app.state.server.engine.alive
    finally:
        app.state.server.engine.close()


def test_d1_library_generate_names_the_nonfinite_rows(lm: steerlab.LM) -> None:
    """``steerlab.generate`` never argmaxes or samples NaN logits: it raises NonFiniteError naming
    the prompts (their index among all prompts, across ``batch_size`` chunks)."""
    broken = steerlab.Steering(huge_vector(lm), 16.0)
    prompts = ["a", "The cat", "b", "The dog"]
    with pytest.raises(steerlab.NonFiniteError, match="prompt 1 are NaN or infinite") as info:
        steerlab.generate(lm, prompts, steering=[None, broken, None, None], max_new_tokens=3)
    assert info.value.rows == (1,)
    with pytest.raises(steerlab.NonFiniteError, match="prompts 1, 3 ") as info:
        steerlab.generate(lm, prompts, steering=[None, broken, None, broken], max_new_tokens=3, do_sample=True)
    assert info.value.rows == (1, 3)
    with pytest.raises(steerlab.NonFiniteError, match="prompt 3 ") as info:  # in the second chunk of two
        steerlab.generate(lm, prompts, steering=[None, None, None, broken], max_new_tokens=3, batch_size=2)
    assert info.value.rows == (3,)
    late = steerlab.Steering(huge_vector(lm), 16.0, positions="generated")  # the prompt pass is fine, step 2 is not
    with pytest.raises(steerlab.NonFiniteError):
        steerlab.generate(lm, ["The cat"], steering=late, max_new_tokens=3)
    # unsteered generation is unchanged by the check (greedy: exact)
    assert steerlab.generate(lm, PLAIN, max_new_tokens=4) == [
        steerlab.generate(lm, p, max_new_tokens=4)[0] for p in PLAIN
    ]


# --------------------------------------------------------------------------- D2: broken vectors
def _condition_folder(vec: steerlab.SteeringVector, dest: Path, settings: Any) -> Path:
    v = dataclasses.replace(vec.select([2]), meta={"condition": settings})
    return v.save(dest)


def test_d2_overflowing_or_absurd_vectors_are_refused_at_upload_and_skipped_at_load(
    lm: steerlab.LM, store: Path, tmp_path: Path, vec: steerlab.SteeringVector
) -> None:
    """A vector of 1e30 (its norm overflows float32) or of 1e7 (beyond Limits.max_value), or a
    condition with a NaN threshold: 400 at upload with nothing stored, skipped at load, and
    never a 500 (the probe saw 500s yet the vector stored and served)."""
    cases = {
        "overflow": huge_vector(lm, 1e30).save(tmp_path / "src" / "overflow"),
        "absurd": huge_vector(lm, 1e7).save(tmp_path / "src" / "absurd"),
        "nanthreshold": _condition_folder(
            vec, tmp_path / "src" / "nanthreshold", {"layer": 2, "threshold": float("nan"), "comparator": ">"}
        ),
    }
    with served(lm, store) as (_, client):
        before = tree(store)
        for name, folder in cases.items():
            err = assert_openai_error(upload(client, name, pack_folder(folder)), 400)
            assert ("max_value" in err["message"]) or ("threshold" in err["message"]), err
            assert tree(store) == before and hidden(store) == []
        assert client.get("/v1/vectors", headers=AUTH).status_code == 200
    for name, folder in cases.items():
        (store / name).mkdir()
        for f in folder.iterdir():
            (store / name / f.name).write_bytes(f.read_bytes())
    vs = VectorStore(store, lm)
    assert set(vs.skipped) == set(cases), vs.skipped
    assert "max_value" in vs.skipped["overflow"] and "threshold" in vs.skipped["nanthreshold"]
    assert vs.names() == ["big", "dog", "happy", "night"]


def test_d2_check_directions_is_the_one_bound(lm: steerlab.LM) -> None:
    lim = Limits.for_model(lm)
    assert lim.max_value == 1e6  # float32 model: the default bound (far beyond any residual stream)
    lim.check_directions({2: torch.full((64,), 1e5)}, "ok")
    with pytest.raises(LimitError, match="max_value"):
        lim.check_directions({2: torch.full((64,), 1e30)}, "x")


# --------------------------------------------------------------------------- D3: archive headers
def _gz_stream(blocks: Iterator[bytes]) -> bytes:
    z = zlib.compressobj(6, zlib.DEFLATED, 31)  # gzip framing
    return b"".join([*(z.compress(b) for b in blocks), z.flush()])


def _hostile_tar(kind: bytes, declared: int, present: int) -> bytes:
    """A .tar.gz whose first header record (``kind``) declares ``declared`` bytes; ``present``
    bytes of zeros follow (compressed to almost nothing)."""
    info = tarfile.TarInfo("././@LongLink" if kind == tarfile.GNUTYPE_LONGNAME else "././@PaxHeader")
    info.type, info.size = kind, declared
    head = (
        info.tobuf(tarfile.GNU_FORMAT)[:512] if kind == tarfile.GNUTYPE_LONGNAME else info.tobuf(tarfile.USTAR_FORMAT)
    )

    def blocks() -> Iterator[bytes]:
        yield head
        chunk = b"\0" * (1 << 20)
        for _ in range(present >> 20):
            yield chunk

    return _gz_stream(blocks())


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE], ids=["gnu-longname", "pax"])
def test_d3_huge_header_record_is_refused_from_its_declared_size(lm: steerlab.LM, store: Path, kind: bytes) -> None:
    """A .tar.gz whose one header record (a GNU long name, a pax header) declares 2 GB: refused
    (400, ``max_header_bytes``) from the declared size, before tarfile reads it — in bounded time
    and memory (64 MB of zeros follow the header; tarfile alone asks gzip for the declared 2 GB
    in one read, and holds it: a traced peak of 2 GB, as the probe's 0.5 → 4.7 GB)."""
    data = _hostile_tar(kind, 2**31, 64 << 20)
    assert len(data) < 1 << 20
    with served(lm, store) as (_, client):
        before = tree(store)
        start = time.monotonic()
        with peak_memory() as peak:
            r = upload(client, "longname", data)
        elapsed = time.monotonic() - start
        err = assert_openai_error(r, 400, "unsafe_archive")
        assert "max_header_bytes" in err["message"] and "2147483648" in err["message"], err
        assert peak() < 8 << 20, peak()  # bytes; the 64 MB behind the header are never read
        assert elapsed < 10, elapsed
        assert tree(store) == before and hidden(store) == []
        assert client.get("/health").json() == {"status": "ok"}


def test_d3_header_records_are_counted(
    lm: steerlab.LM, store: Path, tmp_path: Path, vectors: dict[str, steerlab.SteeringVector]
) -> None:
    """Many small header records (each under max_header_bytes) are bounded by max_archive_members;
    an archive with long names within the limits is still accepted."""
    vectors["dog"].save(tmp_path / "dog")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tf:
        for i in range(20):
            info = tarfile.TarInfo(f"pad/{'x' * 150}{i}")
            info.size = 0
            tf.addfile(info, io.BytesIO(b""))
    long_ok = io.BytesIO()
    with tarfile.open(fileobj=long_ok, mode="w:gz", format=tarfile.GNU_FORMAT) as tf:
        for f in ("steering_config.json", "vector.safetensors"):
            tf.add(tmp_path / "dog" / f, f"{'d' * 120}/{f}")  # a GNU long name each
    with served(lm, store) as (_, client):
        err = assert_openai_error(upload(client, "many", buf.getvalue()), 400, "unsafe_archive")
        assert "max_archive_members" in err["message"]
        r = upload(client, "longok", long_ok.getvalue())
        assert r.status_code == 201, r.text


# --------------------------------------------------------------------------- D4: GGUF metadata arrays
def _gguf_string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def hostile_gguf(items: int, d_model: int = 64) -> bytes:
    """A control-vector GGUF with one metadata string array of ``items`` empty strings."""
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, 2)
    kv = _gguf_string("general.architecture") + struct.pack("<I", 8) + _gguf_string("controlvector")
    kv += _gguf_string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, items) + bytes(8 * items)
    tensor = _gguf_string("direction.1") + struct.pack("<IQIQ", 1, d_model, 0, 0)
    body = head + kv + tensor
    body += bytes(-len(body) % 32)
    return body + struct.pack(f"<{d_model}f", *([0.5] * d_model))


def test_d4_gguf_with_a_huge_array_is_refused_quickly(lm: steerlab.LM, store: Path, tmp_path: Path) -> None:
    """A 15 MB GGUF whose one string array holds 1.9M items: refused (400, ``max_gguf_items``) by
    the bounded pre-scan before gguf's reader parses it (the probe saw 70-81 s of CPU, then 201),
    by the store and by ``SteeringVector.from_gguf`` alike."""
    data = hostile_gguf(1_900_000)
    assert 15_000_000 < len(data) < 16 << 20
    path = tmp_path / "huge.gguf"
    path.write_bytes(data)
    start = time.monotonic()
    with pytest.raises(LimitError, match="max_gguf_items"):
        steerlab.SteeringVector.from_gguf(path, lm)
    assert time.monotonic() - start < 2
    with served(lm, store) as (app, client):
        before = tree(store)
        start = time.monotonic()
        r = upload(client, "hugegguf", data)
        elapsed = time.monotonic() - start
        err = assert_openai_error(r, 400, "limit_exceeded")
        assert "max_gguf_items" in err["message"] and "1900000" in err["message"], err
        assert str(tmp_path) not in err["message"] and str(store) not in err["message"]
        assert elapsed < 10, elapsed
        # the store's own work, without the test client's copies of the body: copied in 1 MiB
        # chunks, scanned in place (gguf's reader would build 1.9M numpy arrays)
        with peak_memory() as peak, pytest.raises(steerlab.SteeringError, match="max_gguf_items"):
            app.state.server.store.add_upload("hugegguf", path)
        assert peak() < 4 << 20, peak()  # bytes, for a 15 MB file
        assert tree(store) == before and hidden(store) == []
    (store / "hugegguf.gguf").write_bytes(data)
    start = time.monotonic()
    vs = VectorStore(store, lm)
    assert "max_gguf_items" in vs.skipped["hugegguf.gguf"] and time.monotonic() - start < 10


def test_d4_gguf_prescan_bounds_strings_and_keeps_valid_files(
    lm: steerlab.LM, tmp_path: Path, vectors: dict[str, steerlab.SteeringVector]
) -> None:
    from steerlab.core.gguf_check import check_gguf

    good = vectors["dog"].to_gguf(tmp_path / "dog.gguf")
    assert check_gguf(good).tensors == 2
    assert steerlab.SteeringVector.from_gguf(good, lm).layers == [2, 3]
    long_string = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _gguf_string("k") + struct.pack("<IQ", 8, 2**40)
    (tmp_path / "s.gguf").write_bytes(long_string)
    with pytest.raises(LimitError, match="max_gguf_string_bytes"):
        check_gguf(tmp_path / "s.gguf")
    many_kv = b"GGUF" + struct.pack("<IQQ", 3, 0, 10**9)
    (tmp_path / "kv.gguf").write_bytes(many_kv)
    with pytest.raises(LimitError, match="max_gguf_items"):
        check_gguf(tmp_path / "kv.gguf")
    truncated = good.read_bytes()[:60]
    (tmp_path / "t.gguf").write_bytes(truncated)
    with pytest.raises(steerlab.VectorFileError, match="past the end"):
        check_gguf(tmp_path / "t.gguf")


# --------------------------------------------------------------------------- D5: layers are a set
def test_d5_layers_are_a_set_of_the_models_layers(
    lm: steerlab.LM, store: Path, vectors: dict[str, steerlab.SteeringVector]
) -> None:
    """``[3]*1024`` at coefficient 16 used to act as 16,384x; ``[1,1]`` at 8 as ``[1]`` at 16."""
    with served(lm, store) as (_, client):
        for layers in ([3] * 1024, [1, 1], [1, 2, 3, 1], list(range(6))):
            r = completion(
                client,
                prompt="The cat",
                max_tokens=2,
                steering=[{"vector": "happy", "coefficient": 16, "layers": layers}],
            )
            err = assert_openai_error(r, 400, "invalid_layers")
            assert err["param"] == "steering[0].layers", err
        for layers in ([True], ["1"], [1.0]):
            r = completion(client, prompt="The cat", max_tokens=2, steering=[{"vector": "happy", "layers": layers}])
            assert_openai_error(r, 400, "invalid_value")
        r = completion(client, prompt="The cat", max_tokens=2, steering=[{"vector": "happy", "layers": [3, 1]}])
        assert r.status_code == 200, r.text
    with pytest.raises(steerlab.LayerRangeError, match="given twice"):
        steerlab.Steering(vectors["happy"], 8.0, layers=[1, 1])


# --------------------------------------------------------------------------- D6: the cost endpoint
def test_d6_perplexity_ratio_is_bounded_before_any_forward_pass(lm: steerlab.LM, store: Path) -> None:
    """24k and 120k tokens to score: 400 naming the limit (``max_score_tokens``, or
    ``max_text_chars`` before tokenising) and the model never runs; within the limits it runs on
    at most ``max_score_tokens`` tokens per text. Memory is bounded relative to the body."""
    seen: list[int] = []
    hook = lm.model.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(int(kwargs["input_ids"].numel())), with_kwargs=True
    )
    word = " the dog ran"
    per_word = len(lm.tokenizer(word, add_special_tokens=False)["input_ids"])
    try:  # the batch scheduler: the continuous one runs one probe forward call when it starts
        with served(lm, store, scheduler="batch") as (app, client):
            limit = app.state.server.limits.max_score_tokens
            assert limit == 512  # min(2304, the model's context of 512)
            for tokens, name in ((24_000, "max_score_tokens"), (120_000, "max_text_chars")):
                text = word * (tokens // per_word)
                body = {"prompt": "Once upon a time", "steered": text, "unsteered": " there was a girl"}
                with peak_memory() as peak:
                    r = client.post("/v1/cost/perplexity_ratio", headers=AUTH, json=body)
                err = assert_openai_error(r, 400)
                assert name in err["message"], err
                assert seen == []
                assert peak() < 20 * len(text) + (4 << 20), (peak(), len(text))
            r = client.post(
                "/v1/cost/perplexity_ratio",
                headers=AUTH,
                json={"prompt": "Once upon a time", "steered": word * 10, "unsteered": " there was"},
            )
            assert r.status_code == 200, r.text
            assert 0 < max(seen) <= 2 * limit  # one batch of two rows, each within the limit
    finally:
        hook.remove()


# --------------------------------------------------------------------------- D7: condition settings
BAD_SETTINGS: list[tuple[str, Any]] = [
    ("layer-list", {"layer": [0], "threshold": 0.1, "comparator": ">"}),
    ("layer-bool", {"layer": True, "threshold": 0.1, "comparator": ">"}),
    ("layer-absent", {"layer": 4, "threshold": 0.1, "comparator": ">"}),
    ("layer-string", {"layer": "2", "threshold": 0.1, "comparator": ">"}),
    ("threshold-nan", {"layer": 2, "threshold": float("nan"), "comparator": ">"}),
    ("threshold-inf", {"layer": 2, "threshold": float("inf"), "comparator": ">"}),
    ("threshold-big", {"layer": 2, "threshold": 2.0, "comparator": ">"}),
    ("threshold-string", {"layer": 2, "threshold": "0.5", "comparator": ">"}),
    ("comparator-ge", {"layer": 2, "threshold": 0.1, "comparator": ">="}),
    ("comparator-list", {"layer": 2, "threshold": 0.1, "comparator": [">"]}),
    ("not-an-object", [2, 0.1, ">"]),
    ("unknown-key", {"layer": 2, "threshold": 0.1, "comparator": ">", "extra": 1}),
]


def test_d7_malformed_condition_settings_refused_at_upload_and_skipped_at_load(
    lm: steerlab.LM, store: Path, tmp_path: Path, vec: steerlab.SteeringVector
) -> None:
    """``meta.condition.layer = [0]`` used to upload (201), then every request naming it got a 500."""
    folders = {label: _condition_folder(vec, tmp_path / "src" / label, settings) for label, settings in BAD_SETTINGS}
    good = _condition_folder(vec, tmp_path / "src" / "goodcond", {"layer": 2, "threshold": 0.1, "comparator": ">"})
    with served(lm, store) as (_, client):
        before = tree(store)
        for label, folder in folders.items():
            err = assert_openai_error(upload(client, label, pack_folder(folder)), 400)
            assert err["code"] in ("invalid_condition", "invalid_vector"), (label, err)
            assert tree(store) == before, label
        assert upload(client, "goodcond", pack_folder(good)).status_code == 201
        r = completion(
            client,
            prompt="The cat",
            max_tokens=2,
            steering=[{"vector": "happy", "coefficient": 2, "condition": "goodcond"}],
        )
        assert r.status_code == 200, r.text
    for label, folder in folders.items():
        (store / label).mkdir()
        for f in folder.iterdir():
            (store / label / f.name).write_bytes(f.read_bytes())
    with served(lm, store) as (app, client):
        assert set(app.state.server.store.skipped) == set(folders)
        for label in folders:
            r = completion(
                client,
                prompt="The cat",
                max_tokens=2,
                steering=[{"vector": "happy", "coefficient": 2, "condition": label}],
            )
            assert_openai_error(r, 404, "condition_not_found")
        for threshold in (1.5, "0.5", True):
            r = completion(
                client,
                prompt="The cat",
                max_tokens=2,
                steering=[{"vector": "happy", "condition": "goodcond", "threshold": threshold}],
            )
            assert_openai_error(r, 400, "invalid_value")


# --------------------------------------------------------------------------- D8: names
@pytest.mark.parametrize("name", ["nl\n", "nl\r\n", "tab\t", "a\n\n", "x" * 65, "-lead", "a.b"])
def test_d8_names_match_the_whole_pattern(
    lm: steerlab.LM, store: Path, tmp_path: Path, name: str, vectors: dict[str, steerlab.SteeringVector]
) -> None:
    """``POST /v1/vectors?name=nl%0A`` used to store a folder named ``nl\\n`` (the pattern's ``$``)."""
    vectors["dog"].save(tmp_path / "dog")
    with served(lm, store) as (_, client):
        before = tree(store)
        assert_openai_error(upload(client, name, pack_folder(tmp_path / "dog")), 400, "invalid_vector_name")
        r = client.post(
            "/v1/vectors",
            headers=AUTH,
            data={"name": name},
            files={"file": ("dog.tar.gz", pack_folder(tmp_path / "dog"))},
        )
        assert_openai_error(r, 400, "invalid_vector_name")
        assert tree(store) == before
    with pytest.raises(steerlab.SteeringError):
        check_name(name)
    with pytest.raises(steerlab.SteeringError):
        VectorStore(store, lm).delete(name)


def test_d8_other_ids_match_the_whole_pattern(tmp_path: Path, vectors: dict[str, steerlab.SteeringVector]) -> None:
    """The same ``$`` let a hotwire vector id end in a line break (a file ``happy\n.pt``)."""
    from steerlab.export import hotwire

    with pytest.raises(steerlab.VectorFileError, match="hotwire id"):
        hotwire.write(vectors["dog"], tmp_path, name="happy\n")
    assert list(tmp_path.iterdir()) == []
    assert hotwire.write(vectors["dog"], tmp_path, name="happy").name == "happy.pt"


# --------------------------------------------------------------------------- D9: GGUF-backed names
def test_d9_overwritten_gguf_stays_gone_after_delete_and_restart(
    lm: steerlab.LM, store: Path, tmp_path: Path, vectors: dict[str, steerlab.SteeringVector]
) -> None:
    vectors["night"].to_gguf(store / "night2.gguf")
    vectors["dog"].save(tmp_path / "dog")
    with served(lm, store) as (_, client):
        assert client.get("/v1/vectors/night2", headers=AUTH).json()["source"] == "gguf"
        r = upload(client, "night2", pack_folder(tmp_path / "dog"), overwrite="true")
        assert r.status_code == 201 and r.json()["layers"] == [2, 3], r.text
        assert not (store / "night2.gguf").exists() and hidden(store) == []
    with served(lm, store) as (_, client):  # a restart serves the folder
        assert client.get("/v1/vectors/night2", headers=AUTH).json()["layers"] == [2, 3]
        assert client.delete("/v1/vectors/night2", headers=AUTH).status_code == 200
    with served(lm, store) as (_, client):  # and after a delete, nothing comes back
        assert_openai_error(client.get("/v1/vectors/night2", headers=AUTH), 404, "vector_not_found")
    assert sorted(p.name for p in store.iterdir()) == ["big", "dog", "happy", "night"]


def test_d9_a_crash_between_the_folder_and_the_gguf_never_loses_the_vector(
    lm: steerlab.LM, store: Path, vectors: dict[str, steerlab.SteeringVector]
) -> None:
    """A crash after the uploaded folder is in place but before the old ``.gguf`` goes leaves
    both: the folder (the new vector) wins, and a delete removes both."""
    vectors["night"].to_gguf(store / "both.gguf")
    vectors["dog"].save(store / "both")
    vs = VectorStore(store, lm)
    assert vs.get("both").source == "folder" and vs.get("both").vector.layers == [2, 3]
    vs.delete("both")
    assert not (store / "both").exists() and not (store / "both.gguf").exists()
    assert "both" not in VectorStore(store, lm).names()


# --------------------------------------------------------------------------- D10: requests that never fit
def test_d10_a_request_larger_than_the_queue_is_a_400(lm: steerlab.LM, store: Path) -> None:
    with served(lm, store, max_queue=2, max_n=8) as (app, client):
        r = completion(client, prompt=["The cat", "The dog"], n=2, max_tokens=2)
        err = assert_openai_error(r, 400, "too_many_choices")
        assert "max_queue" in err["message"]
        assert completion(client, prompt=["The cat", "The dog"], max_tokens=2).status_code == 200
        assert "rejected" not in app.state.server.engine.snapshot()["requests"]


# --------------------------------------------------------------------------- D19: no server paths
def test_d19_models_never_show_the_models_path(lm: steerlab.LM, store: Path) -> None:
    path = str(Path(__file__).resolve().parents[1].parent / "shared" / "models" / "stories260K")
    with served(lm, store, model_aliases=(path, "default", "./models/x", "~/m")) as (_, client):
        for url in ("/v1/models", "/v1/models/default", "/metrics?format=json", "/v1/vectors"):
            text = client.get(url, headers=AUTH).text
            assert path not in text and "./models" not in text and "~/m" not in text, (url, text)
        card = client.get("/v1/models", headers=AUTH).json()["data"][0]["steerlab"]
        assert card["aliases"] == ["default"]
        assert completion(client, model=path, prompt="Hi", max_tokens=2).status_code == 200  # still accepted
        limits = card["limits"]  # the one Limits object, from the model and the settings
        assert (limits["n_layers"], limits["context_length"], limits["max_score_tokens"]) == (5, 512, 512)
        assert {"max_header_bytes", "max_gguf_items", "max_gguf_string_bytes", "max_value"} <= set(limits)
        assert card["serving"]["scheduler"] == "continuous"


# --------------------------------------------------------------------------- actadd
def test_actadd_positions_agree_with_the_library(
    lm: steerlab.LM, store: Path, tmp_path: Path, actadd_vec: steerlab.SteeringVector
) -> None:
    """The schema no longer takes ``positions="actadd"`` (the library refuses it: ActAdd is a kind
    of vector); a token-wise vector with positions unset is served front-aligned, as the library."""
    actadd_vec.save(tmp_path / "love")
    want = steerlab.generate(lm, "The cat", steering=steerlab.Steering(actadd_vec, 4.0), max_new_tokens=6)[0]
    with pytest.raises(steerlab.SteeringSpecError, match="leave positions unset"):
        steerlab.Steering(actadd_vec, 4.0, positions="actadd")  # type: ignore[arg-type]
    with served(lm, store) as (_, client):
        assert upload(client, "love", pack_folder(tmp_path / "love")).status_code == 201
        r = completion(
            client,
            prompt="The cat",
            max_tokens=6,
            steering=[{"vector": "love", "coefficient": 4.0, "positions": "actadd"}],
        )
        err = assert_openai_error(r, 400, "invalid_value")
        assert "leave positions unset" in err["message"]
        r = completion(client, prompt="The cat", max_tokens=6, steering=[{"vector": "love", "coefficient": 4.0}])
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == want
    docs = (Path(__file__).resolve().parents[1] / "docs" / "serve.md").read_text(encoding="utf-8")
    row = next(line for line in docs.splitlines() if line.startswith("| `positions`"))
    assert '`"generated"`, `"actadd"`' not in row and "leave it out for a token-wise" in row, row


# --------------------------------------------------------------------------- strict schemas, 500s
STRICT: list[tuple[str, str, dict[str, Any]]] = [
    (
        "coefficient as a string",
        "/v1/completions",
        {"prompt": "Hi", "steering": [{"vector": "happy", "coefficient": "4"}]},
    ),
    ("max_tokens as a float", "/v1/completions", {"prompt": "Hi", "max_tokens": 4.0}),
    ("n as a string", "/v1/completions", {"prompt": "Hi", "n": "2"}),
    ("stream as a number", "/v1/completions", {"prompt": "Hi", "stream": 1}),
    ("prompt as a number", "/v1/completions", {"prompt": 5}),
    ("prompt list of numbers", "/v1/completions", {"prompt": [1, 2]}),
    ("ignore_eos as a string", "/v1/completions", {"prompt": "Hi", "ignore_eos": "true"}),
    ("message content as a number", "/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}),
    ("chat as a string", "/v1/cost/perplexity_ratio", {"prompt": "a", "steered": "b", "unsteered": "c", "chat": "yes"}),
    ("steered as a number", "/v1/cost/perplexity_ratio", {"prompt": "a", "steered": 5, "unsteered": "c"}),
]


def test_schemas_are_strict(lm: steerlab.LM, store: Path) -> None:
    """A string is a string: values pydantic would coerce ("4" -> 4.0, 4.0 -> 4, 1 -> true) are refused."""
    with served(lm, store) as (_, client):
        for label, path, body in STRICT:
            r = client.post(path, headers=AUTH, json=body)
            assert r.status_code == 400, (label, r.text)
            assert_openai_error(r, 400, "invalid_value")


def test_an_exception_inside_a_stream_is_an_openai_error_event(
    lm: steerlab.LM, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from steerlab.serve.schemas import Reply

    def broken(self: Reply, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("boom in a chunk")

    with served(lm, store) as (_, client):
        monkeypatch.setattr(Reply, "chunk", broken)
        with client.stream(
            "POST", "/v1/completions", headers=AUTH, json={"prompt": "Hi", "max_tokens": 3, "stream": True}
        ) as s:
            lines = [ln for ln in s.iter_lines() if ln.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        event = json.loads(lines[-2][6:])
        assert set(event) == {"error"} and set(event["error"]) == {"message", "type", "param", "code"}
        assert event["error"]["code"] == "server_error" and "boom" not in event["error"]["message"]
        monkeypatch.undo()
        assert completion(client, prompt="Hi", max_tokens=2).status_code == 200


def test_limits_come_from_the_model_and_the_settings(lm: steerlab.LM, store: Path) -> None:
    """One Limits object: its bounds are the settings' (capped by the model), and every check reads it."""
    with served(lm, store, max_tokens=32, max_prompt_tokens=4096, max_score_tokens=100) as (app, client):
        lim = app.state.server.limits
        assert (lim.max_new_tokens, lim.max_prompt_tokens, lim.max_score_tokens) == (32, 512, 100)
        assert app.state.server.store.limits is lim and app.state.server.cost.limits is lim
        assert_openai_error(completion(client, prompt="Hi", max_tokens=33), 400, "max_tokens_exceeded")
        assert not math.isnan(lim.max_value)
