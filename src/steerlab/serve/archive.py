"""Unpacking an uploaded ``.tar(.gz)`` or ``.zip`` of a vector folder, safe against hostile archives.

Members are checked one by one before anything is written: no absolute paths, no ``..``, no
links, sparse or special files, at most ``max_archive_members`` members and ``max_unpacked_bytes``
bytes (as the archive claims, and again while copying). Only the two vector files are written,
under their fixed names, never under the archive's own names. Every refusal is a
:class:`~steerlab.serve.store_errors.StoreError`. The bounds come from one
:class:`~steerlab.limits.Limits` object.

What an archive says about itself is bounded before it is read: a tar header record that
carries data (a GNU long name or link, a pax header) is refused from its declared size when that
is over ``max_header_bytes`` — before :mod:`tarfile` reads (and holds) that many bytes — and at
most ``max_archive_members`` such records are read; a zip's entry count is read from its end
record before :mod:`zipfile` parses the central directory.

Example:
    >>> unpack(Path("upload.bin"), Path("scratch/vector"), Limits())  # doctest: +SKIP
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

from ..core.vector import CONFIG_NAME, WEIGHTS_NAME
from ..limits import Limits
from .store_errors import InvalidUpload, TooLarge

REQUIRED = (CONFIG_NAME, WEIGHTS_NAME)
"""The files of a vector folder, the only ones read from an archive."""
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
"""How a ``.zip`` starts (a local file header, or the end record of an empty archive)."""

_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError, ValueError)
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    zlib.error,
    OSError,
    ValueError,
    RuntimeError,
    NotImplementedError,
)
_Archive = TypeVar("_Archive", tarfile.TarFile, zipfile.ZipFile)
_HEADER_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)
"""Tar header records whose data tarfile reads into memory (long names and links, pax headers)."""
_ZIP_END = b"PK\x05\x06"
_ZIP_END_SIZE = 22


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
        raise InvalidUpload(
            f"the archive needs {CONFIG_NAME} and {WEIGHTS_NAME} (at the top or in one folder)", "invalid_vector"
        )
    if len(complete) > 1:
        raise InvalidUpload("the archive holds more than one vector folder; upload one at a time", "invalid_vector")
    folder, members = next(iter(complete.items()))
    if len(folder.parts) > 1:
        raise InvalidUpload("the vector files must be at the archive's top level or in one folder", "invalid_vector")
    return members


def _check_counts(count: int, total: int, limits: Limits) -> None:
    if count > limits.max_archive_members:
        raise InvalidUpload(
            f"the archive has more than {limits.max_archive_members} members (max_archive_members)", "unsafe_archive"
        )
    if total > limits.max_unpacked_bytes:
        raise TooLarge(f"the archive unpacks to more than {limits.max_unpacked_bytes} bytes (max_unpacked_bytes)")


def _extract(members: Iterable[_Member], folder: Path, limits: Limits) -> None:
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


def _sparse() -> InvalidUpload:
    return InvalidUpload("the archive holds a sparse file; vector files are plain files", "unsafe_archive")


def bounded_tarinfo(limits: Limits) -> type[tarfile.TarInfo]:
    """A :class:`tarfile.TarInfo` class (``tarfile.open(..., tarinfo=...)``) that refuses, before
    tarfile reads them, header records over ``limits.max_header_bytes`` or more of them than
    ``limits.max_archive_members``, and sparse files (whose maps tarfile reads into memory).

    ``_proc_member`` is tarfile's documented extension point for header types ("can be
    overridden in a subclass"); each record is checked from the size its 512-byte block
    declares, so a 2 GB long name costs one block read.

    Example:
        >>> import io
        >>> info = tarfile.TarInfo("x" * 200)  # a name too long for the ustar field: a GNU long name
        >>> data = io.BytesIO(info.tobuf(tarfile.GNU_FORMAT))
        >>> tarfile.open(fileobj=data, tarinfo=bounded_tarinfo(Limits(max_header_bytes=100)))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        steerlab.serve.store_errors.InvalidUpload: an archive header record (type b'L') declares 201 bytes: ...
    """
    cap = limits.max_header_bytes
    records = 0

    class BoundedTarInfo(tarfile.TarInfo):
        def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
            nonlocal records
            if self.type in _HEADER_TYPES:
                if self.size > cap:
                    raise InvalidUpload(
                        f"an archive header record (type {self.type!r}) declares {self.size} bytes: "
                        f"more than the limit of {cap} (max_header_bytes)",
                        "unsafe_archive",
                    )
                records += 1
                if records > limits.max_archive_members:
                    raise InvalidUpload(
                        f"the archive has more than {limits.max_archive_members} header records (max_archive_members)",
                        "unsafe_archive",
                    )
            elif self.type == tarfile.GNUTYPE_SPARSE:
                raise _sparse()
            return super()._proc_member(tf)  # type: ignore[misc]

        def _proc_gnusparse_00(self, *args: object) -> None:
            raise _sparse()

        def _proc_gnusparse_01(self, *args: object) -> None:
            raise _sparse()

        def _proc_gnusparse_10(self, *args: object) -> None:
            raise _sparse()

    return BoundedTarInfo


def check_zip_entries(raw: Path, limits: Limits) -> None:
    """Refuse a zip whose end record counts more than ``limits.max_archive_members`` entries (or
    defers to a zip64 record), before :mod:`zipfile` reads its whole central directory."""
    size = raw.stat().st_size
    with raw.open("rb") as fh:
        fh.seek(max(0, size - (_ZIP_END_SIZE + 0xFFFF)))
        tail = fh.read()
    at = tail.rfind(_ZIP_END)
    if at < 0 or len(tail) - at < _ZIP_END_SIZE:
        return  # not found: zipfile refuses it
    entries = int.from_bytes(tail[at + 10 : at + 12], "little")
    if entries > limits.max_archive_members:  # 0xFFFF (zip64) included
        raise InvalidUpload(
            f"the archive has more than {limits.max_archive_members} members (max_archive_members)", "unsafe_archive"
        )


def _tar_members(tf: tarfile.TarFile) -> Iterator[_Member]:
    while (m := tf.next()) is not None:
        yield _Member(m.name, m.isdir(), m.isreg(), m.size, partial(tf.extractfile, m))


def _zip_members(zf: zipfile.ZipFile) -> Iterator[_Member]:
    for info in zf.infolist():
        # writestr() and many non-Unix tools leave the type bits at 0: a regular file
        regular = stat.S_IFMT(info.external_attr >> 16) in (0, stat.S_IFREG)
        yield _Member(info.filename, info.is_dir(), regular, info.file_size, partial(zf.open, info))


def _read(
    open_archive: Callable[[], _Archive],
    members: Callable[[_Archive], Iterator[_Member]],
    errors: tuple[type[BaseException], ...],
    what: str,
    folder: Path,
    limits: Limits,
) -> None:
    try:
        with open_archive() as archive:
            _extract(members(archive), folder, limits)
    except errors as exc:
        raise InvalidUpload(f"the upload is not {what} ({exc})") from None


def unpack(raw: Path, folder: Path, limits: Limits) -> None:
    """Write the vector files of the archive ``raw`` (a zip by its first bytes, else a tar) into ``folder``.

    Raises:
        InvalidUpload: unreadable archive, unsafe member, too many members, no vector folder.
        InvalidUpload: also a header record over ``limits.max_header_bytes``, or a sparse file.
        TooLarge: the members add up to more than ``limits.max_unpacked_bytes``.
    """
    with raw.open("rb") as fh:
        zipped = fh.read(4) in ZIP_MAGIC
    if zipped:
        check_zip_entries(raw, limits)
        _read(partial(zipfile.ZipFile, raw), _zip_members, _ZIP_ERRORS, "a readable .zip archive", folder, limits)
    else:
        _read(
            partial(tarfile.open, raw, "r:*", tarinfo=bounded_tarinfo(limits)),
            _tar_members,
            _TAR_ERRORS,
            "a readable .tar(.gz) or .zip archive, nor a GGUF file",
            folder,
            limits,
        )
