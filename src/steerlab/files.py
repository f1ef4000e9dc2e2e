"""Crash-safe writing: a file or a folder is built under a temporary sibling name and put in place
by a rename, so a reader sees the old version or the new one, never a mix or a half-written file.

Example:
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> root = Path(tempfile.mkdtemp())
    >>> with atomic_file(root / "a.json") as tmp:
    ...     _ = tmp.write_text(json.dumps({"x": 1}))
    >>> json.loads((root / "a.json").read_text())
    {'x': 1}
    >>> with atomic_folder(root / "vec") as tmp:
    ...     _ = (tmp / "w.bin").write_bytes(b"new")
    >>> sorted(p.name for p in (root / "vec").iterdir())
    ['w.bin']
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error it replaces
    ``path`` in one rename (on error it is deleted and ``path`` is untouched)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(
    path: str | os.PathLike[str], keep_other_files: bool = False, first_wins: bool = False
) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; when the block ends without error it takes
    ``path``'s place (see :func:`swap_in`). With ``keep_other_files``, entries of the old folder
    that the new one does not hold are carried over first. With ``first_wins``, a folder that
    appeared at ``path`` meanwhile (another process made the same thing) is kept and the new one
    dropped."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if keep_other_files and target.is_dir():
            for entry in target.iterdir():
                if not (tmp / entry.name).exists() and not entry.name.startswith("."):
                    if entry.is_dir():
                        shutil.copytree(entry, tmp / entry.name, symlinks=True)
                    else:
                        shutil.copy2(entry, tmp / entry.name, follow_symlinks=False)
        if first_wins and target.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def swap_in(new: Path, target: Path) -> None:
    """Put folder ``new`` at ``target``: one rename when ``target`` does not exist, one atomic
    exchange (Linux ``renameat2``) when it does, else two renames (the old folder is moved aside
    first and deleted after)."""
    if not target.exists():
        os.replace(new, target)
        return
    if not target.is_dir() or target.is_symlink():
        raise FileExistsError(f"{target} exists and is not a folder")
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the old folder
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, old / "x")
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old / "x", target)  # put the old folder back
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with ``renameat2(RENAME_EXCHANGE)``; False where unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def write_checkpoint(path: Path, tensors: dict[str, Any], key: str, **meta: str) -> None:
    """Save ``tensors`` to a safetensors checkpoint at ``path`` (atomically), tagged with the run's
    ``key`` and string ``meta``; :func:`read_checkpoint` reads it back.

    Example:
        >>> import tempfile, torch
        >>> p = Path(tempfile.mkdtemp()) / "run.safetensors"
        >>> write_checkpoint(p, {"x": torch.ones(2)}, "abc", done="3")
        >>> read_checkpoint(p, "abc", "run")[1]["done"]
        '3'
    """
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={"key": key, **meta})


def read_checkpoint(path: Path, key: str, what: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The tensors and metadata of a checkpoint written by :func:`write_checkpoint` for the run
    ``key``.

    Raises:
        DatasetError: the file belongs to another run; ``what`` names the kind of run and what
            identifies it (e.g. ``"extraction (different method, data or model)"``).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from .errors import DatasetError

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata() or {}
    if meta.get("key") != key:
        raise DatasetError(f"checkpoint {path} belongs to another {what}; delete it or pass another checkpoint path")
    return load_file(str(path)), meta
