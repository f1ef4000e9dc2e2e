"""The server's vector store: a directory of named steering vectors, safe against hostile input.

Layout: one entry per vector directly inside the store directory, either a vector folder
``NAME/`` (``steering_config.json`` + ``vector.safetensors``) or a llama.cpp control vector
``NAME.gguf``. Uploads are always stored as folders.

Safety rules:

* names match :data:`NAME_PATTERN` (letters, digits, ``_`` and ``-``; no dots, no slashes), so a
  name can never leave the store (``../x``, ``/etc/passwd``, ``a/../../b`` are refused);
* symlinks are never followed: a symlinked entry, or a folder holding a symlinked file, is
  skipped at start-up and never served;
* uploads are size-capped; archives are checked member by member (no absolute paths, no ``..``,
  no links or special files, a bounded number of members and of unpacked bytes) and only the
  two vector files are read, under fixed names, never under the archive's own names;
* every upload is validated (:meth:`SteeringVector.load` / :meth:`SteeringVector.from_gguf`, then
  :meth:`SteeringVector.check_model` against the served model) in a scratch folder, written
  under a hidden temporary name inside the store and renamed into place: a rejected upload
  leaves the store exactly as it was;
* the scratch folder is itself hidden inside the store (``.upload-*``, never ``/tmp``), so a
  process killed mid-upload leaves nothing elsewhere, and the next start removes it; error
  messages never name server paths;
* an entry that cannot be loaded (whatever the error) is skipped, logged and listed in
  :attr:`VectorStore.skipped`; it never stops the server from starting.

Example:
    >>> store = VectorStore("vectors", lm)  # doctest: +SKIP
    >>> store.add_upload("happy", "happy.tar.gz")  # doctest: +SKIP
    {'name': 'happy', 'layers': [8, 9, ...], ...}
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import threading
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from ..errors import ModelMismatchError, SteeringError
from ..model import LM
from ..vector import CONFIG_NAME, WEIGHTS_NAME, SteeringVector

log = logging.getLogger("steerlab.serve")

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
"""Allowed vector names: 1–64 letters, digits, ``_`` or ``-``, starting with a letter or digit."""
_NAME = re.compile(NAME_PATTERN)
_REQUIRED = (CONFIG_NAME, WEIGHTS_NAME)
_TMP_PREFIX = ".upload-"
_TRASH_PREFIX = ".trash-"


class StoreError(Exception):
    """A store operation was refused; carries the HTTP status and an OpenAI-style error code."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def check_name(name: str) -> str:
    """Return ``name`` if it is a safe vector name, else raise :class:`StoreError` (400).

    Example:
        >>> check_name("happy-v2")
        'happy-v2'
        >>> check_name("../x")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        steerlab.serve.store.StoreError: invalid vector name '../x': use 1-64 letters, ...
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise StoreError(
            400,
            f"invalid vector name {name!r}: use 1-64 letters, digits, '_' or '-', starting with a letter or digit",
            "invalid_vector_name",
        )
    return name


@dataclass
class UploadLimits:
    """Caps applied to uploads (see :class:`~steerlab.serve.settings.ServeSettings`)."""

    max_upload_bytes: int = 16 * 1024 * 1024
    max_archive_members: int = 16
    max_unpacked_bytes: int = 64 * 1024 * 1024


@dataclass
class StoredVector:
    """A vector of the store, loaded and checked against the served model."""

    name: str
    vector: SteeringVector
    path: Path
    source: str  # "folder" or "gguf"
    info: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """``name``, ``layers``, ``norms``, ``method``, ``model`` and the rest of the metadata."""
        desc = self.vector.describe()
        return {
            "name": self.name,
            "object": "steering_vector",
            "model": desc["model_id"],
            "layers": desc["layers"],
            "norms": {str(k): v for k, v in desc["norms"].items()},
            "method": desc["method"],
            "d_model": desc["d_model"],
            "n_layers": desc["n_layers"],
            "tokenwise": desc["tokenwise"],
            "created": desc["created"],
            "data_hash": desc["data_hash"],
            "source": self.source,
        }


def _is_inside(path: Path, root: Path) -> bool:
    try:
        path.resolve(strict=True).relative_to(root)
    except (OSError, ValueError):
        return False
    return True


class VectorStore:
    """Named vectors in a directory, loaded into memory and checked against ``lm``.

    Thread-safe: lookups and changes hold one lock. Entries that cannot be served (bad names,
    symlinks, corrupt files, vectors of another model) are skipped at start-up and listed in
    :attr:`skipped`.

    Args:
        root: the store directory (created if missing).
        lm: the served model; every vector must :meth:`~SteeringVector.check_model` against it.
        limits: upload caps.
    """

    def __init__(self, root: str | os.PathLike[str], lm: LM, limits: UploadLimits | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if self.root.is_symlink() or not self.root.is_dir():
            raise SteeringError(f"the vector store {self.root} must be a real directory")
        self.root = self.root.resolve()
        self.lm = lm
        self.limits = limits or UploadLimits()
        self._lock = threading.RLock()
        self._vectors: dict[str, StoredVector] = {}
        self.skipped: dict[str, str] = {}
        self._clean_leftovers()
        self.scan()

    # ------------------------------------------------------------------ reading
    def _clean_leftovers(self) -> None:
        """Remove hidden temporaries left by an upload or delete that crashed half-way."""
        for entry in self.root.iterdir():
            if entry.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)) and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)

    def _load_entry(self, entry: Path) -> StoredVector:
        """Load one store entry; raises ``StoreError`` / ``SteeringError`` when it cannot be served."""
        if entry.is_symlink():
            raise StoreError(400, "symlinks are not followed", "symlink")
        if entry.is_dir():
            name = check_name(entry.name)
            for fname in _REQUIRED:
                f = entry / fname
                if f.is_symlink() or not f.is_file() or not _is_inside(f, self.root):
                    raise StoreError(400, f"{fname} is missing or is a symlink", "invalid_vector")
            vec = SteeringVector.load(entry)
            source = "folder"
        elif entry.is_file() and entry.suffix == ".gguf":
            name = check_name(entry.stem)
            vec = SteeringVector.from_gguf(entry, self.lm)
            source = "gguf"
        else:
            raise StoreError(400, "not a vector folder or a .gguf file", "invalid_vector")
        vec.check_model(self.lm)
        return StoredVector(name, vec, entry, source)

    def scan(self) -> None:
        """(Re)load every entry of the store directory."""
        found: dict[str, StoredVector] = {}
        skipped: dict[str, str] = {}
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith("."):
                continue
            try:
                sv = self._load_entry(entry)
            except (StoreError, SteeringError, OSError) as exc:
                skipped[entry.name] = str(exc)
                log.warning("vector store: skipping %s: %s", entry.name, exc)
                continue
            except Exception as exc:  # a loader bug on one odd file must not stop the server starting
                skipped[entry.name] = f"{type(exc).__name__}: {exc}"
                log.warning("vector store: skipping %s", entry.name, exc_info=True)
                continue
            if sv.name in found:
                skipped[entry.name] = f"another entry is already named {sv.name!r}"
                continue
            found[sv.name] = sv
        with self._lock:
            self._vectors = found
            self.skipped = skipped

    def names(self) -> list[str]:
        """Names of the served vectors, sorted."""
        with self._lock:
            return sorted(self._vectors)

    def get(self, name: str) -> StoredVector:
        """The vector called ``name``; :class:`StoreError` 400 (bad name) or 404 (unknown)."""
        check_name(name)
        with self._lock:
            sv = self._vectors.get(name)
        if sv is None:
            raise StoreError(404, f"no vector named {name!r} in the store (GET /v1/vectors lists them)",
                             "vector_not_found")
        return sv

    def describe_all(self) -> list[dict[str, Any]]:
        """``describe()`` of every vector, sorted by name."""
        with self._lock:
            items = sorted(self._vectors.items())
        return [sv.describe() for _, sv in items]

    # ------------------------------------------------------------------ writing
    def delete(self, name: str) -> None:
        """Remove a vector from the store (and from disk)."""
        with self._lock:
            sv = self.get(name)
            path = sv.path
            if path.parent != self.root or path.is_symlink():
                raise StoreError(400, "refusing to delete an entry outside the store", "invalid_vector_name")
            trash = self.root / f"{_TRASH_PREFIX}{name}-{os.getpid()}-{threading.get_ident()}"
            os.replace(path, trash)
            del self._vectors[name]
        shutil.rmtree(trash, ignore_errors=True) if trash.is_dir() else trash.unlink(missing_ok=True)

    def add_upload(
        self, name: str, upload: str | os.PathLike[str] | IO[bytes], overwrite: bool = False
    ) -> dict[str, Any]:
        """Validate an uploaded archive or GGUF file and add it to the store atomically.

        Args:
            name: the new vector's name (:func:`check_name`).
            upload: a file path or a binary file object holding a ``.tar.gz``/``.tar``/``.zip``
                of a vector folder, or a GGUF control vector (recognised by content, not name).
            overwrite: replace an existing vector of that name (else 409).

        Returns:
            the new vector's :meth:`StoredVector.describe`.

        Raises:
            StoreError: 400 bad name or malformed upload, 409 the name exists, 413 too large,
                422 the vector was made for another model.
        """
        check_name(name)
        with self._lock:
            if name in self._vectors and not overwrite:
                raise StoreError(409, f"a vector named {name!r} already exists (send overwrite=true to replace it)",
                                 "vector_exists")
        # The scratch folder is hidden inside the store, so a crash (kill -9) mid-upload leaves
        # nothing outside it, and _clean_leftovers removes it at the next start.
        with tempfile.TemporaryDirectory(prefix=_TMP_PREFIX, dir=self.root) as scratch:
            try:
                vec = self._validate(upload, Path(scratch))
            except StoreError as exc:
                raise StoreError(exc.status, self._no_paths(exc.message, Path(scratch)), exc.code) from None
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=self.root))
        try:
            vec.save(tmp)
            with self._lock:
                if name in self._vectors and not overwrite:
                    raise StoreError(409, f"a vector named {name!r} already exists", "vector_exists")
                dest = self.root / name
                trash: Path | None = None
                if dest.exists() or dest.is_symlink():
                    if not overwrite:
                        raise StoreError(409, f"{name!r} already exists in the store directory", "vector_exists")
                    trash = self.root / f"{_TRASH_PREFIX}{name}-{os.getpid()}-{threading.get_ident()}"
                    os.replace(dest, trash)
                os.replace(tmp, dest)
                sv = StoredVector(name, vec, dest, "folder")
                # a GGUF entry of the same name would shadow nothing now: the folder wins
                self._vectors[name] = sv
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True) if trash.is_dir() else trash.unlink(missing_ok=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        log.info("vector store: added %s", name)
        return sv.describe()

    # ------------------------------------------------------------------ validation
    def _no_paths(self, message: str, scratch: Path) -> str:
        """``message`` without the server's paths (the scratch folder and the store)."""
        for path, label in ((scratch / "vector", "the upload"), (scratch / "upload.gguf", "the upload"),
                            (scratch, "the upload"), (self.root, "the store")):
            message = message.replace(f"{path}{os.sep}", "").replace(str(path), label)
        return message

    def _validate(self, upload: str | os.PathLike[str] | IO[bytes], scratch: Path) -> SteeringVector:
        raw = scratch / "upload.bin"
        self._copy_capped(upload, raw)
        with raw.open("rb") as fh:
            head = fh.read(512)
        if not head:
            raise StoreError(400, "the upload is empty", "invalid_upload")
        folder = scratch / "vector"
        folder.mkdir()
        try:
            if head[:4] == b"GGUF":
                gguf = scratch / "upload.gguf"
                raw.rename(gguf)
                vec = SteeringVector.from_gguf(gguf, self.lm)
            else:
                if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
                    self._unpack_zip(raw, folder)
                else:
                    self._unpack_tar(raw, folder)
                vec = SteeringVector.load(folder)
        except StoreError:
            raise
        except SteeringError as exc:
            raise StoreError(400, f"the upload is not a valid steering vector: {exc}", "invalid_vector") from None
        except Exception as exc:  # any parser failure on hostile bytes is a client error
            raise StoreError(400, f"the upload could not be read ({type(exc).__name__}: {exc})",
                             "invalid_vector") from None
        try:
            vec.check_model(self.lm)
        except ModelMismatchError as exc:
            raise StoreError(422, str(exc), "vector_model_mismatch") from None
        return vec

    def _copy_capped(self, upload: str | os.PathLike[str] | IO[bytes], dest: Path) -> None:
        cap = self.limits.max_upload_bytes
        src: IO[bytes] = open(upload, "rb") if isinstance(upload, (str, os.PathLike)) else upload
        try:
            total = 0
            with dest.open("wb") as out:
                while chunk := src.read(1 << 20):
                    total += len(chunk)
                    if total > cap:
                        raise StoreError(413, f"the upload is larger than {cap} bytes", "upload_too_large")
                    out.write(chunk)
        finally:
            if isinstance(upload, (str, os.PathLike)):
                src.close()

    def _member_path(self, name: str) -> PurePosixPath:
        """The normalised relative path of an archive member, or a 400 for unsafe names."""
        if not name or "\x00" in name or "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
            raise StoreError(400, f"archive member {name!r} has an absolute or unsafe path", "unsafe_archive")
        parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
        if any(p == ".." for p in parts):
            raise StoreError(400, f"archive member {name!r} climbs out with '..'", "unsafe_archive")
        return PurePosixPath(*parts) if parts else PurePosixPath(".")

    def _pick(self, files: dict[PurePosixPath, Any]) -> dict[str, Any]:
        """The two vector files, at the top level or inside exactly one folder."""
        by_dir: dict[PurePosixPath, dict[str, Any]] = {}
        for path, member in files.items():
            if path.name in _REQUIRED:
                by_dir.setdefault(path.parent, {})[path.name] = member
        complete = {d: m for d, m in by_dir.items() if len(m) == len(_REQUIRED)}
        if not complete:
            raise StoreError(400, f"the archive needs {CONFIG_NAME} and {WEIGHTS_NAME} (at the top or in one folder)",
                             "invalid_vector")
        if len(complete) > 1:
            raise StoreError(400, "the archive holds more than one vector folder; upload one at a time",
                             "invalid_vector")
        folder, members = next(iter(complete.items()))
        if len(folder.parts) > 1:
            raise StoreError(400, "the vector files must be at the archive's top level or in one folder",
                             "invalid_vector")
        return members

    def _count(self, count: int, total: int) -> None:
        if count > self.limits.max_archive_members:
            raise StoreError(400, f"the archive has more than {self.limits.max_archive_members} members",
                             "unsafe_archive")
        if total > self.limits.max_unpacked_bytes:
            raise StoreError(413, f"the archive unpacks to more than {self.limits.max_unpacked_bytes} bytes",
                             "upload_too_large")

    def _write_capped(self, src: IO[bytes], dest: Path, size_cap: int) -> None:
        total = 0
        with dest.open("wb") as out:
            while chunk := src.read(1 << 20):
                total += len(chunk)
                if total > size_cap:
                    raise StoreError(413, "an archive member is larger than it claims", "upload_too_large")
                out.write(chunk)

    def _unpack_tar(self, raw: Path, folder: Path) -> None:
        try:
            with tarfile.open(raw, "r:*") as tf:
                files: dict[PurePosixPath, tarfile.TarInfo] = {}
                count = total = 0
                while (member := tf.next()) is not None:
                    count += 1
                    path = self._member_path(member.name)
                    if member.isdir():
                        self._count(count, total)
                        continue
                    if not member.isreg():
                        raise StoreError(400, f"archive member {member.name!r} is a link or a special file",
                                         "unsafe_archive")
                    total += member.size
                    self._count(count, total)
                    files[path] = member
                for fname, member in self._pick(files).items():
                    src = tf.extractfile(member)
                    if src is None:
                        raise StoreError(400, f"cannot read {member.name!r}", "invalid_vector")
                    self._write_capped(src, folder / fname, member.size)
        except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as exc:
            raise StoreError(400, f"the upload is not a readable .tar(.gz) or .zip archive, nor a GGUF file ({exc})",
                             "invalid_upload") from None

    def _unpack_zip(self, raw: Path, folder: Path) -> None:
        try:
            with zipfile.ZipFile(raw) as zf:
                files: dict[PurePosixPath, zipfile.ZipInfo] = {}
                count = total = 0
                for info in zf.infolist():
                    count += 1
                    path = self._member_path(info.filename)
                    mode = info.external_attr >> 16
                    if info.is_dir():
                        self._count(count, total)
                        continue
                    # writestr() and many non-Unix tools leave the type bits at 0: a regular file
                    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                        raise StoreError(400, f"archive member {info.filename!r} is a link or a special file",
                                         "unsafe_archive")
                    total += info.file_size
                    self._count(count, total)
                    files[path] = info
                for fname, info in self._pick(files).items():
                    with zf.open(info) as src:
                        self._write_capped(src, folder / fname, info.file_size)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, OSError, ValueError,
                RuntimeError, NotImplementedError) as exc:
            raise StoreError(400, f"the upload is not a readable .zip archive ({exc})", "invalid_upload") from None


def pack_folder(folder: str | os.PathLike[str], fmt: str = "tar.gz") -> bytes:
    """A vector folder as ``.tar.gz`` or ``.zip`` bytes, ready for ``POST /v1/vectors``.

    Example:
        >>> data = pack_folder("vectors/happy")  # doctest: +SKIP
    """
    folder = Path(folder)
    buf = io.BytesIO()
    if fmt == "zip":
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for fname in _REQUIRED:
                zf.write(folder / fname, f"{folder.name}/{fname}")
    else:
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            for fname in _REQUIRED:
                tf.add(folder / fname, f"{folder.name}/{fname}")
    return buf.getvalue()
