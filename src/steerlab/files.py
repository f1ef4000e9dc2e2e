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
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
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


CHECKPOINT_FORMAT = "steerlab-checkpoint-2"
"""Tag of the checkpoints :func:`write_checkpoint` writes (with a checksum of tensors and metadata)."""


def _digest(tensors: Mapping[str, Any], meta: Mapping[str, str]) -> str:
    """sha256 of the tensors (names, dtypes, shapes, bytes) and the metadata (but the digest)."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps({k: v for k, v in meta.items() if k != "digest"}, sort_keys=True).encode())
    return h.hexdigest()


def write_checkpoint(path: Path, tensors: dict[str, Any], key: str, **meta: str) -> None:
    """Save ``tensors`` to a safetensors checkpoint at ``path`` (atomically), tagged with the run's
    ``key``, string ``meta`` and a checksum of both; :func:`read_checkpoint` reads it back.

    Example:
        >>> import tempfile, torch
        >>> p = Path(tempfile.mkdtemp()) / "run.safetensors"
        >>> write_checkpoint(p, {"x": torch.ones(2)}, "abc", done="3")
        >>> read_checkpoint(p, "abc", "run", {"x": (2,)})[1]["done"]
        '3'
    """
    from safetensors.torch import save_file

    tagged = {**meta, "key": key, "format": CHECKPOINT_FORMAT}
    tagged["digest"] = _digest(tensors, tagged)
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=tagged)


def read_checkpoint(
    path: Path,
    key: str,
    what: str,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    optional: Mapping[str, tuple[int, ...]] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The tensors and metadata of a checkpoint written by :func:`write_checkpoint` for the run
    ``key``, checked against the run before anything of it is used.

    Args:
        path: the checkpoint file.
        key: the run's key (a hash of what makes the run the same run).
        what: the kind of run and what identifies it, for messages (e.g. ``"extraction (different
            method, data or model)"``).
        shapes: the tensors the run saves, by name, with their shapes (``None``: not checked).
        optional: tensors it may save as well.

    Raises:
        CheckpointError: naming the file and what to do: a folder or an unreadable or truncated
            file, another run's file, a file changed since it was written (its checksum differs),
            a missing, unknown or wrong-shaped tensor, or NaN / inf values.
    """
    from .errors import CheckpointError

    path = Path(path)
    start_over = "delete it to start the run over, or pass another checkpoint path"
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file: pass a file path")
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), "pt") as fh:
            meta = dict(fh.metadata() or {})
        tensors = load_file(str(path))
    except Exception as exc:  # any failure to parse the file means it is unusable
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({reason[:200]}): it is truncated, corrupt or not a "
            f"steerlab checkpoint; {start_over}"
        ) from None
    if meta.get("key") != key:
        raise CheckpointError(f"checkpoint {path} belongs to another {what}; {start_over}")
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("digest") != _digest(tensors, meta):
        raise CheckpointError(
            f"checkpoint {path} was changed after it was written (its checksum does not match) or "
            f"was written by another steerlab version; {start_over}"
        )
    if shapes is not None:
        _check_shapes(path, tensors, shapes, optional or {}, start_over)
    bad = next((name for name, t in tensors.items() if t.is_floating_point() and not bool(t.isfinite().all())), None)
    if bad is not None:
        raise CheckpointError(f"checkpoint {path}: tensor {bad!r} holds NaN or inf values; {start_over}")
    return tensors, meta


def _check_shapes(
    path: Path,
    tensors: Mapping[str, Any],
    shapes: Mapping[str, tuple[int, ...]],
    optional: Mapping[str, tuple[int, ...]],
    start_over: str,
) -> None:
    from .errors import CheckpointError

    missing = sorted(set(shapes) - set(tensors))
    unknown = sorted(set(tensors) - set(shapes) - set(optional))
    if missing or unknown:
        raise CheckpointError(
            f"checkpoint {path} does not hold this run's state (missing {missing[:4]}, unknown "
            f"{unknown[:4]}); {start_over}"
        )
    for name, t in tensors.items():
        want = tuple(shapes.get(name, optional.get(name, ())))
        if tuple(t.shape) != want:
            raise CheckpointError(
                f"checkpoint {path}: tensor {name!r} has shape {tuple(t.shape)}, this run's is {want}; {start_over}"
            )


def checkpoint_int(path: Path, meta: Mapping[str, str], name: str, low: int, high: int) -> int:
    """Metadata ``name`` of a checkpoint as an integer in ``[low, high]`` (checked against the run),
    else a :class:`~steerlab.errors.CheckpointError` naming the file."""
    from .errors import CheckpointError

    value = meta.get(name, "")
    if not (value.isascii() and value.isdigit() and low <= int(value) <= high):
        raise CheckpointError(
            f"checkpoint {path}: its {name!r} ({value!r}) does not fit this run (it must be between "
            f"{low} and {high}); delete it to start the run over"
        )
    return int(value)
