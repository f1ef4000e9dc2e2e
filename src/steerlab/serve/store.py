"""The server's vector store: a directory of named steering vectors, safe against hostile input.

Layout: one entry per vector directly inside the store directory, either a vector folder
``NAME/`` (``steering_config.json`` + ``vector.safetensors``) or a llama.cpp control vector
``NAME.gguf``. Uploads are always stored as folders.

Conditions (CAST, :mod:`steerlab.core.condition`) live in the same store: a folder written by
:meth:`Condition.save <steerlab.core.condition.Condition.save>` (``steerlab condition --out``) is a
vector folder whose metadata holds the condition's ``layer``, ``threshold`` and ``comparator``.
It is uploaded, listed (its ``condition`` field: those settings; ``null`` for a plain vector) and
deleted like any vector, and named by a request's ``steering[i].condition``
(:meth:`StoredVector.condition`).

Safety rules:

* names match :data:`NAME_PATTERN` as a whole (letters, digits, ``_`` and ``-``; no dots, no
  slashes, no line breaks), so a name can never leave the store (``../x``, ``/etc/passwd``,
  ``a/../../b``, ``"nl\\n"`` are refused);
* symlinks are never followed: a symlinked entry, or a folder holding a symlinked file, is
  skipped at start-up and never served;
* uploads are size-capped; archives are checked member by member (:mod:`.archive`: no absolute
  paths, no ``..``, no links, sparse or special files, a bounded number of members and of
  unpacked bytes, header records bounded from their declared size) and only the two vector
  files are read, under fixed names, never under the archive's own names; a GGUF file's header
  is walked within bounds before it is parsed (:mod:`steerlab.core.gguf_check`); every bound comes
  from one :class:`~steerlab.limits.Limits` object;
* every entry, uploaded or found at start-up, is validated the same way (:meth:`VectorStore.admit`:
  :meth:`SteeringVector.check_model` against the served model, its values finite and within
  ``Limits.max_value`` (:meth:`~steerlab.limits.Limits.check_directions`), its condition settings,
  if any, well-formed (:meth:`Condition.from_saved <steerlab.core.condition.Condition.from_saved>`));
  an upload is validated in a scratch folder, written
  there and put in place by one rename (:func:`steerlab.files.swap_in`: an atomic exchange when
  it replaces a vector): a rejected upload leaves the store exactly as it was; a ``NAME.gguf``
  replaced by an uploaded folder is removed after the folder is in place, and a delete removes
  every entry of the name (a crash in between leaves the folder, which wins over the file);
* the scratch folder is itself hidden inside the store (``.upload-*``, never ``/tmp``), so a
  process killed mid-upload leaves nothing elsewhere, and the next start removes it (and any
  other hidden temporary of an upload, a delete or a swap); error messages never name server
  paths;
* refusals are domain errors (:mod:`.store_errors`: ``InvalidName``, ``NotFound``,
  ``AlreadyExists``, ``InvalidUpload``, ``TooLarge``, ``WrongModel``); the HTTP layer maps them
  to statuses;
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
import tarfile
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..core.condition import Condition, saved_settings
from ..core.vector import SteeringVector
from ..errors import ModelMismatchError, SteeringError, SteeringSpecError
from ..files import swap_in
from ..limits import LimitError, Limits
from ..models.load import LM
from .archive import REQUIRED, copy_capped, unpack
from .store_errors import AlreadyExists, InvalidName, InvalidUpload, NotFound, StoreError, TooLarge, WrongModel

__all__ = ["NAME_PATTERN", "StoreError", "StoredVector", "VectorStore", "check_name", "pack_folder"]

log = logging.getLogger("steerlab.serve")

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
"""Allowed vector names: 1–64 letters, digits, ``_`` or ``-``, starting with a letter or digit
(the whole name: matched with ``re.fullmatch``, so no trailing line break slips through a ``$``)."""
_NAME = re.compile(NAME_PATTERN)
_TMP_PREFIX = ".upload-"
_TRASH_PREFIX = ".trash-"
_LEFTOVER = re.compile(r"(\.upload-|\.trash-).*|\..+\.(tmp|old)", re.DOTALL)
"""Hidden temporaries of an upload, a delete or a folder swap (:func:`steerlab.files.swap_in`)."""


def check_name(name: str) -> str:
    """Return ``name`` if it is a safe vector name, else raise :class:`InvalidName`.

    Example:
        >>> check_name("happy-v2")
        'happy-v2'
        >>> check_name("../x")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        steerlab.serve.store_errors.InvalidName: invalid vector name '../x': use 1-64 letters, ...
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidName(
            f"invalid vector name {name!r}: use 1-64 letters, digits, '_' or '-', starting with a letter or digit"
        )
    return name


@dataclass
class StoredVector:
    """A vector of the store, loaded and checked against the served model."""

    name: str
    vector: SteeringVector
    path: Path
    source: str  # "folder" or "gguf"
    info: dict[str, Any] = field(default_factory=dict)
    _condition: Condition | None = field(default=None, init=False, repr=False)

    @property
    def settings(self) -> dict[str, Any] | None:
        """The condition settings (``layer``, ``threshold``, ``comparator``) a saved
        :class:`~steerlab.core.condition.Condition` carries; ``None`` for a plain vector (checked when
        the entry was admitted: :meth:`VectorStore.admit`)."""
        return saved_settings(self.vector)

    def condition(self, threshold: float | None = None) -> Condition:
        """This entry as a CAST :class:`~steerlab.core.condition.Condition` (``threshold`` overrides
        the saved one; a plain one-layer vector is a condition only with a ``threshold``).

        The condition with the saved threshold is built once and shared by every request, so
        rows that use it share one reader in the engine.

        Raises:
            SteeringSpecError: a plain vector without ``threshold``, or settings that do not fit it.
        """
        saved = self.settings
        if saved is None and threshold is None:
            raise SteeringSpecError(
                f"{self.name!r} is a plain vector, not a condition (save one with `steerlab condition`, "
                "or give a threshold)"
            )
        if saved is not None and (threshold is None or threshold == saved.get("threshold")):
            if self._condition is None:
                self._condition = Condition.from_saved(self.vector)
            return self._condition
        return Condition.from_saved(self.vector, threshold)

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
            "condition": self.settings,
        }


def _is_inside(path: Path, root: Path) -> bool:
    try:
        path.resolve(strict=True).relative_to(root)
    except (OSError, ValueError):
        return False
    return True


def _remove(path: Path) -> None:
    """Delete a file, a link or a folder (best effort)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class VectorStore:
    """Named vectors in a directory, loaded into memory and checked against ``lm``.

    Thread-safe: lookups and changes hold one lock. Entries that cannot be served (bad names,
    symlinks, corrupt files, vectors of another model) are skipped at start-up and listed in
    :attr:`skipped`.

    Args:
        root: the store directory (created if missing).
        lm: the served model; every vector must :meth:`~SteeringVector.check_model` against it.
        limits: the bounds of uploads and vectors (default: ``Limits.for_model(lm)``).
    """

    def __init__(self, root: str | os.PathLike[str], lm: LM, limits: Limits | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if self.root.is_symlink() or not self.root.is_dir():
            raise SteeringError(f"the vector store {self.root} must be a real directory")
        self.root = self.root.resolve()
        self.lm = lm
        self.limits = limits if limits is not None else Limits.for_model(lm) if lm is not None else Limits()
        self._lock = threading.RLock()
        self._vectors: dict[str, StoredVector] = {}
        self.skipped: dict[str, str] = {}
        self._clean_leftovers()
        self.scan()

    # ------------------------------------------------------------------ reading
    def _clean_leftovers(self) -> None:
        """Remove hidden temporaries left by an upload, a delete or a swap that crashed half-way."""
        for entry in self.root.iterdir():
            if _LEFTOVER.fullmatch(entry.name) and not entry.is_symlink():
                _remove(entry)

    def _load_entry(self, entry: Path) -> StoredVector:
        """Load one store entry; raises ``StoreError`` / ``SteeringError`` when it cannot be served."""
        if entry.is_symlink():
            raise InvalidUpload("symlinks are not followed", "symlink")
        if entry.is_dir():
            name = check_name(entry.name)
            for fname in REQUIRED:
                f = entry / fname
                if f.is_symlink() or not f.is_file() or not _is_inside(f, self.root):
                    raise InvalidUpload(f"{fname} is missing or is a symlink", "invalid_vector")
            vec = SteeringVector.load(entry)
            source = "folder"
        elif entry.is_file() and entry.suffix == ".gguf":
            name = check_name(entry.stem)
            vec = SteeringVector.from_gguf(entry, self.lm, self.limits)
            source = "gguf"
        else:
            raise InvalidUpload("not a vector folder or a .gguf file", "invalid_vector")
        return self.admit(StoredVector(name, vec, entry, source))

    def admit(self, sv: StoredVector) -> StoredVector:
        """``sv`` if it can be served: made for the served model, values finite and within
        ``limits.max_value`` (a norm that overflows included), condition settings well-formed.
        The one check of every entry, uploaded or found at start-up.

        Raises:
            ModelMismatchError: made for another model.
            LimitError: non-finite or absurd values.
            SteeringError: malformed condition settings.
        """
        sv.vector.check_model(self.lm)
        self.limits.check_directions(sv.vector.directions, f"vector {sv.name!r}")
        if sv.settings is not None:
            sv.condition()  # built once here: a request naming it can only get a 400 or its condition
        return sv

    def scan(self) -> None:
        """(Re)load every entry of the store directory."""
        found: dict[str, StoredVector] = {}
        skipped: dict[str, str] = {}
        # a folder before the NAME.gguf of the same name: the folder wins (an upload replaced the file)
        for entry in sorted(self.root.iterdir(), key=lambda p: (p.name.removesuffix(".gguf"), p.suffix == ".gguf")):
            if entry.name.startswith("."):
                continue
            try:
                sv = self._load_entry(entry)
            except (SteeringError, OSError) as exc:
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
        """The vector called ``name``; :class:`InvalidName` (bad name) or :class:`NotFound` (unknown)."""
        check_name(name)
        with self._lock:
            sv = self._vectors.get(name)
        if sv is None:
            raise NotFound(f"no vector named {name!r} in the store (GET /v1/vectors lists them)")
        return sv

    def describe_all(self) -> list[dict[str, Any]]:
        """``describe()`` of every vector, sorted by name."""
        with self._lock:
            items = sorted(self._vectors.items())
        return [sv.describe() for _, sv in items]

    # ------------------------------------------------------------------ writing
    def delete(self, name: str) -> None:
        """Remove a vector from the store (and from disk).

        The entry is first renamed into a hidden trash folder of the store (one rename: it is
        gone at once for every reader), then deleted outside the lock.
        """
        with self._lock:
            path = self.get(name).path
            if path.parent != self.root or path.is_symlink():
                raise InvalidName("refusing to delete an entry outside the store")
            del self._vectors[name]
            # every entry of the name goes (a shadowed NAME.gguf must not come back at the next start)
            trash = self._bury(name)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def _bury(self, name: str, keep: Path | None = None) -> Path | None:
        """Move every entry on disk that could be served as ``name`` (the folder, ``NAME.gguf``)
        but ``keep`` into a new hidden trash folder of the store, one rename each (hold the lock);
        returns the trash folder for the caller to delete outside the lock (``None``: nothing moved)."""
        entries = [
            p for p in (self.root / name, self.root / f"{name}.gguf") if p != keep and (p.exists() or p.is_symlink())
        ]
        if not entries:
            return None
        trash = Path(tempfile.mkdtemp(prefix=_TRASH_PREFIX, dir=self.root))
        for entry in entries:
            os.replace(entry, trash / entry.name)
        return trash

    def add_upload(
        self, name: str, upload: str | os.PathLike[str] | IO[bytes], overwrite: bool = False
    ) -> dict[str, Any]:
        """Validate an uploaded archive or GGUF file and add it to the store atomically.

        Args:
            name: the new vector's name (:func:`check_name`).
            upload: a file path or a binary file object holding a ``.tar.gz``/``.tar``/``.zip``
                of a vector folder, or a GGUF control vector (recognised by content, not name).
            overwrite: replace an existing vector of that name (else :class:`AlreadyExists`).

        Returns:
            the new vector's :meth:`StoredVector.describe`.

        Raises:
            InvalidName: a bad name.
            AlreadyExists: the name is taken and ``overwrite`` is false.
            InvalidUpload: a malformed or unsafe upload.
            TooLarge: the upload or what it unpacks to is over the limits.
            WrongModel: the vector was made for another model.
        """
        check_name(name)
        with self._lock:
            self._check_free(name, overwrite)
        # Everything is written in a scratch folder hidden inside the store, so a crash (kill -9)
        # mid-upload leaves nothing outside it, and _clean_leftovers removes it at the next start.
        with tempfile.TemporaryDirectory(prefix=_TMP_PREFIX, dir=self.root) as tmp:
            scratch = Path(tmp)
            try:
                vec = self._validate(name, upload, scratch)
            except StoreError as exc:
                raise type(exc)(self._no_paths(exc.message, scratch), exc.code) from None
            sv = self._install(name, vec, scratch, overwrite)
        log.info("vector store: added %s", name)
        return sv.describe()

    def put(self, name: str, vector: SteeringVector, overwrite: bool = False) -> StoredVector:
        """Add a vector built in this process (e.g. a preset, :mod:`steerlab.serve.presets`) to the
        store, checked (:meth:`admit`) and written like an upload: atomically, or not at all.

        Raises:
            InvalidName: a bad name.
            AlreadyExists: the name is taken and ``overwrite`` is false.
            ModelMismatchError / LimitError: the vector cannot be served with this model.
        """
        check_name(name)
        self.admit(StoredVector(name, vector, self.root / name, "folder"))
        with self._lock:
            self._check_free(name, overwrite)
        with tempfile.TemporaryDirectory(prefix=_TMP_PREFIX, dir=self.root) as tmp:
            sv = self._install(name, vector, Path(tmp), overwrite)
        log.info("vector store: added %s", name)
        return sv

    def _install(self, name: str, vec: SteeringVector, scratch: Path, overwrite: bool) -> StoredVector:
        """Save ``vec`` in ``scratch`` and put it in place as the folder ``name`` (one rename)."""
        folder = vec.save(scratch / "out")
        with self._lock:
            dest = self._room_for(name, overwrite)
            swap_in(folder, dest)  # one rename, or one atomic exchange with the old folder
            sv = StoredVector(name, vec, dest, "folder")
            self._vectors[name] = sv
            # the NAME.gguf it replaces goes now, after the folder is in place: a crash in between
            # leaves both, and the folder wins at the next start (and a delete removes both)
            trash = self._bury(name, keep=dest)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return sv

    def _check_free(self, name: str, overwrite: bool) -> None:
        """:class:`AlreadyExists` when ``name`` is served and ``overwrite`` is false (hold the lock)."""
        if name in self._vectors and not overwrite:
            raise AlreadyExists(f"a vector named {name!r} already exists (send overwrite=true to replace it)")

    def _room_for(self, name: str, overwrite: bool) -> Path:
        """Where the new folder ``name`` goes; an unserved file or link there is removed (hold the lock)."""
        self._check_free(name, overwrite)
        dest = self.root / name
        if dest.exists() or dest.is_symlink():
            if not overwrite:
                raise AlreadyExists(f"{name!r} already exists in the store directory")
            if dest.is_symlink() or not dest.is_dir():
                dest.unlink()  # never served (only folders are named without a suffix): no reader sees it go
        return dest

    # ------------------------------------------------------------------ validation
    def _no_paths(self, message: str, scratch: Path) -> str:
        """``message`` without the server's paths (the scratch folder and the store)."""
        for path, label in (
            (scratch / "vector", "the upload"),
            (scratch / "upload.gguf", "the upload"),
            (scratch, "the upload"),
            (self.root, "the store"),
        ):
            message = message.replace(f"{path}{os.sep}", "").replace(str(path), label)
        return message

    def _validate(self, name: str, upload: str | os.PathLike[str] | IO[bytes], scratch: Path) -> SteeringVector:
        raw = scratch / "upload.bin"
        self._copy_upload(upload, raw)
        with raw.open("rb") as fh:
            head = fh.read(4)
        if not head:
            raise InvalidUpload("the upload is empty")
        try:
            vec = self._read_vector(raw, head, scratch)
        except StoreError:
            raise
        except LimitError as exc:
            raise _limit_error(exc) from None
        except SteeringError as exc:
            raise InvalidUpload(f"the upload is not a valid steering vector: {exc}", "invalid_vector") from None
        except Exception as exc:  # any parser failure on hostile bytes is a client error
            raise InvalidUpload(
                f"the upload could not be read ({type(exc).__name__}: {exc})", "invalid_vector"
            ) from None
        try:
            self.admit(StoredVector(name, vec, scratch, "upload"))
        except ModelMismatchError as exc:
            raise WrongModel(str(exc)) from None
        except LimitError as exc:
            raise _limit_error(exc, "invalid_vector") from None
        except SteeringError as exc:
            raise InvalidUpload(f"the upload's condition settings are malformed: {exc}", "invalid_condition") from None
        return vec

    def _read_vector(self, raw: Path, head: bytes, scratch: Path) -> SteeringVector:
        """The vector in the upload ``raw``: a GGUF control vector, or an archive of a vector folder."""
        if head == b"GGUF":
            gguf = raw.rename(scratch / "upload.gguf")
            return SteeringVector.from_gguf(gguf, self.lm, self.limits)
        folder = scratch / "vector"
        folder.mkdir()
        unpack(raw, folder, self.limits)
        return SteeringVector.load(folder)

    def _copy_upload(self, upload: str | os.PathLike[str] | IO[bytes], dest: Path) -> None:
        cap = self.limits.max_upload_bytes
        too_large = f"the upload is larger than {cap} bytes"
        if isinstance(upload, (str, os.PathLike)):
            with open(upload, "rb") as src:
                copy_capped(src, dest, cap, too_large)
        else:
            copy_capped(upload, dest, cap, too_large)


def _limit_error(exc: LimitError, code: str = "limit_exceeded") -> StoreError:
    """A store refusal for an upload over a limit: 413 for bytes, else 400 (the message names the limit)."""
    return TooLarge(str(exc)) if exc.status == 413 else InvalidUpload(str(exc), code)


def pack_folder(folder: str | os.PathLike[str], fmt: str = "tar.gz") -> bytes:
    """A vector folder as ``.tar.gz`` or ``.zip`` bytes, ready for ``POST /v1/vectors``.

    Example:
        >>> data = pack_folder("vectors/happy")  # doctest: +SKIP
    """
    folder = Path(folder)
    buf = io.BytesIO()
    if fmt == "zip":
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for fname in REQUIRED:
                zf.write(folder / fname, f"{folder.name}/{fname}")
    else:
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            for fname in REQUIRED:
                tf.add(folder / fname, f"{folder.name}/{fname}")
    return buf.getvalue()
