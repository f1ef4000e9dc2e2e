"""Unpacking an uploaded ``.tar(.gz)`` or ``.zip`` of a vector folder, safe against hostile archives.

Members are checked one by one before anything is written: no absolute paths, no ``..``, no
links or special files, at most ``max_archive_members`` members and ``max_unpacked_bytes``
bytes (as the archive claims, and again while copying). Only the two vector files are written,
under their fixed names, never under the archive's own names. Every refusal is a
:class:`~steerlab.serve.store_errors.StoreError`.

Example:
    >>> unpack(Path("upload.bin"), Path("scratch/vector"), UploadLimits())  # doctest: +SKIP
    >>> sorted(p.name for p in Path("scratch/vector").iterdir())  # doctest: +SKIP
    ['steering_config.json', 'vector.safetensors']
"""

from __future__ import annotations

import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, TypeVar

from ..vector import CONFIG_NAME, WEIGHTS_NAME
from .store_errors import InvalidUpload, TooLarge

REQUIRED = (CONFIG_NAME, WEIGHTS_NAME)
"""The files of a vector folder, the only ones read from an archive."""
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
"""How a ``.zip`` starts (a local file header, or the end record of an empty archive)."""

_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError, ValueError)
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, OSError, ValueError, RuntimeError,
               NotImplementedError)
_Archive = TypeVar("_Archive", tarfile.TarFile, zipfile.ZipFile)


@dataclass
class UploadLimits:
    """Caps applied to uploads (see :class:`~steerlab.serve.settings.ServeSettings`)."""

    max_upload_bytes: int = 16 * 1024 * 1024
    max_archive_members: int = 16
    max_unpacked_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class _Member:
    """One archive entry, whatever the archive format."""

    name: str
    is_dir: bool
    is_file: bool  # a regular file (not a link, device or fifo)
    size: int  # as the archive claims
    open: Callable[[], IO[bytes] | None]


def copy_capped(src: IO[bytes], dest: Path, cap: int, too_large: str) -> None:
    """Copy ``src`` to a new file ``dest``; :class:`TooLarge` (``too_large``) past ``cap`` bytes."""
    total = 0
    with dest.open("wb") as out:
        while chunk := src.read(1 << 20):
            total += len(chunk)
            if total > cap:
                raise TooLarge(too_large)
            out.write(chunk)


def member_path(name: str) -> PurePosixPath:
    """The normalised relative path of an archive member; :class:`InvalidUpload` for unsafe names.

    Example:
        >>> member_path("./happy/vector.safetensors")
        PurePosixPath('happy/vector.safetensors')
    """
    if not name or "\x00" in name or "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise InvalidUpload(f"archive member {name!r} has an absolute or unsafe path", "unsafe_archive")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise InvalidUpload(f"archive member {name!r} climbs out with '..'", "unsafe_archive")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _pick(files: dict[PurePosixPath, _Member]) -> dict[str, _Member]:
    """The two vector files, at the top level or inside exactly one folder."""
    by_dir: dict[PurePosixPath, dict[str, _Member]] = {}
    for path, member in files.items():
        if path.name in REQUIRED:
            by_dir.setdefault(path.parent, {})[path.name] = member
    complete = {d: m for d, m in by_dir.items() if len(m) == len(REQUIRED)}
    if not complete:
        raise InvalidUpload(f"the archive needs {CONFIG_NAME} and {WEIGHTS_NAME} (at the top or in one folder)",
                            "invalid_vector")
    if len(complete) > 1:
        raise InvalidUpload("the archive holds more than one vector folder; upload one at a time", "invalid_vector")
    folder, members = next(iter(complete.items()))
    if len(folder.parts) > 1:
        raise InvalidUpload("the vector files must be at the archive's top level or in one folder", "invalid_vector")
    return members


def _check_counts(count: int, total: int, limits: UploadLimits) -> None:
    if count > limits.max_archive_members:
        raise InvalidUpload(f"the archive has more than {limits.max_archive_members} members", "unsafe_archive")
    if total > limits.max_unpacked_bytes:
        raise TooLarge(f"the archive unpacks to more than {limits.max_unpacked_bytes} bytes")


def _extract(members: Iterable[_Member], folder: Path, limits: UploadLimits) -> None:
    """Check every member, then write the two vector files into ``folder``."""
    files: dict[PurePosixPath, _Member] = {}
    count = total = 0
    for member in members:
        count += 1
        path = member_path(member.name)
        if not member.is_dir:
            if not member.is_file:
                raise InvalidUpload(f"archive member {member.name!r} is a link or a special file", "unsafe_archive")
            total += member.size
            files[path] = member
        _check_counts(count, total, limits)
    for fname, member in _pick(files).items():
        src = member.open()
        if src is None:
            raise InvalidUpload(f"cannot read {member.name!r}", "invalid_vector")
        with src:
            copy_capped(src, folder / fname, member.size, "an archive member is larger than it claims")


def _tar_members(tf: tarfile.TarFile) -> Iterator[_Member]:
    while (m := tf.next()) is not None:
        yield _Member(m.name, m.isdir(), m.isreg(), m.size, partial(tf.extractfile, m))


def _zip_members(zf: zipfile.ZipFile) -> Iterator[_Member]:
    for info in zf.infolist():
        # writestr() and many non-Unix tools leave the type bits at 0: a regular file
        regular = stat.S_IFMT(info.external_attr >> 16) in (0, stat.S_IFREG)
        yield _Member(info.filename, info.is_dir(), regular, info.file_size, partial(zf.open, info))


def _read(open_archive: Callable[[], _Archive], members: Callable[[_Archive], Iterator[_Member]],
          errors: tuple[type[BaseException], ...], what: str, folder: Path, limits: UploadLimits) -> None:
    try:
        with open_archive() as archive:
            _extract(members(archive), folder, limits)
    except errors as exc:
        raise InvalidUpload(f"the upload is not {what} ({exc})") from None


def unpack(raw: Path, folder: Path, limits: UploadLimits) -> None:
    """Write the vector files of the archive ``raw`` (a zip by its first bytes, else a tar) into ``folder``.

    Raises:
        InvalidUpload: unreadable archive, unsafe member, too many members, no vector folder.
        TooLarge: the members add up to more than ``limits.max_unpacked_bytes``.
    """
    with raw.open("rb") as fh:
        zipped = fh.read(4) in ZIP_MAGIC
    if zipped:
        _read(partial(zipfile.ZipFile, raw), _zip_members, _ZIP_ERRORS, "a readable .zip archive", folder, limits)
    else:
        _read(partial(tarfile.open, raw, "r:*"), _tar_members, _TAR_ERRORS,
              "a readable .tar(.gz) or .zip archive, nor a GGUF file", folder, limits)
