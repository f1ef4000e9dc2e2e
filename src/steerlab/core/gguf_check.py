"""A bounded pre-scan of a GGUF file's header, before :class:`gguf.GGUFReader` parses it.

``GGUFReader`` builds a numpy array for every item of every metadata array: a 15 MB file holding
one string array of 1.9 million items takes over a minute of CPU to open. A control vector's
header holds a few dozen key-value pairs and one tensor per layer, so :func:`check_gguf` walks the
header with plain reads first and refuses, from the counts and lengths the file declares (never
reading what they announce), a file with more key-value pairs, tensors or metadata-array items
than ``Limits.max_gguf_items`` (array items are counted over the whole file), a string longer than
``Limits.max_gguf_string_bytes``, a tensor with more than 4 dimensions or more elements than the
file could hold, or a header that runs past the end of the file. The walk reads O(items) small
fields; its time and memory are bounded by the limits, whatever the file's size.

Both readers of control vectors use it: :meth:`steerlab.core.vector.SteeringVector.from_gguf` (so the
server's vector store and the library).

Example:
    >>> import numpy as np, tempfile, os
    >>> from gguf import GGUFWriter
    >>> path = os.path.join(tempfile.mkdtemp(), "v.gguf")
    >>> w = GGUFWriter(path, "controlvector")
    >>> w.add_array("tokens", ["a"] * 50)
    >>> w.add_tensor("direction.1", np.ones(4, dtype=np.float32))
    >>> w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    >>> check_gguf(path).tensors
    1
    >>> check_gguf(path, Limits(max_gguf_items=10))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    steerlab.limits.LimitError: ...: items of metadata 'tokens': 50 is more than the limit of 10 (max_gguf_items)
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import VectorFileError
from ..limits import LimitError, Limits

MAGIC = b"GGUF"
VERSIONS = (2, 3)
"""GGUF versions :class:`gguf.GGUFReader` reads (counts are 64-bit from version 2 on)."""
MAX_DIMS = 4
"""ggml's ``GGML_MAX_DIMS``."""
_STRING, _ARRAY = 8, 9
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
"""Bytes of each fixed-size GGUF value type (uint8 ... float64)."""
_MAX_ELEMENTS_PER_BYTE = 8
"""No ggml tensor type packs more elements than this into one byte (the 1-bit types pack fewer)."""


@dataclass(frozen=True)
class GGUFHeader:
    """What the pre-scan found: ``version``, ``kvs`` key-value pairs, ``tensors`` tensor infos,
    ``items``: metadata-array items in all."""

    version: int
    kvs: int
    tensors: int
    items: int


class _Scan:
    """Reads a GGUF header field by field, bounded by ``limits`` and the file's size."""

    def __init__(self, fh: BinaryIO, size: int, where: str, limits: Limits) -> None:
        self.fh = fh
        self.size = size
        self.where = where
        self.limits = limits
        self.order = "<"
        self.items = 0

    def bad(self, what: str) -> VectorFileError:
        return VectorFileError(f"{self.where} is not a valid GGUF file ({what})")

    def read(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise self.bad("the header runs past the end of the file")
        return data

    def skip(self, n: int) -> None:
        if self.fh.tell() + n > self.size:
            raise self.bad("the header runs past the end of the file")
        self.fh.seek(n, os.SEEK_CUR)

    def u32(self) -> int:
        return int(struct.unpack(self.order + "I", self.read(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(self.order + "Q", self.read(8))[0])

    def count(self, n: int, what: str) -> None:
        self.limits.check_count(n, "max_gguf_items", f"{self.where}: {what}")

    def string(self, what: str, keep: bool = True) -> bytes:
        """A string's bytes (``keep``), or skip them; refused from its declared length."""
        n = self.u64()
        if n > self.limits.max_gguf_string_bytes:
            raise LimitError(
                f"{self.where}: {what} is a string of {n} bytes: more than the limit of "
                f"{self.limits.max_gguf_string_bytes} (max_gguf_string_bytes)",
                "max_gguf_string_bytes",
            )
        if keep:
            return self.read(n)
        self.skip(n)
        return b""

    def value(self, kind: int, key: str, depth: int = 0) -> None:
        if kind in _SIZES:
            self.skip(_SIZES[kind])
        elif kind == _STRING:
            self.string(f"metadata {key!r}", keep=False)
        elif kind == _ARRAY:
            if depth > 1:
                raise self.bad(f"metadata {key!r} nests arrays more than two deep")
            item = self.u32()
            n = self.u64()
            self.count(n, f"items of metadata {key!r}")
            self.items += n
            self.count(self.items, "items of all metadata arrays")
            if item in _SIZES:
                self.skip(n * _SIZES[item])
                return
            if item not in (_STRING, _ARRAY):
                raise self.bad(f"metadata {key!r} has items of unknown type {item}")
            for _ in range(n):
                self.value(item, key, depth + 1)
        else:
            raise self.bad(f"metadata {key!r} has unknown type {kind}")

    def tensor(self) -> None:
        name = self.string("a tensor name")
        dims = self.u32()
        if dims > MAX_DIMS:
            raise self.bad(f"tensor {name[:64]!r} has {dims} dimensions (at most {MAX_DIMS})")
        elements = 1
        for _ in range(dims):
            elements *= self.u64()
        if elements > self.size * _MAX_ELEMENTS_PER_BYTE:
            raise self.bad(f"tensor {name[:64]!r} declares {elements} elements, more than the file can hold")
        self.skip(4 + 8)  # type, offset: GGUFReader checks them against the data


def check_gguf(path: str | os.PathLike[str], limits: Limits | None = None) -> GGUFHeader:
    """Walk the header of the GGUF file ``path`` within ``limits`` (default :class:`Limits`).

    Raises:
        LimitError: more key-value pairs, tensors or array items than ``max_gguf_items``, or a
            string over ``max_gguf_string_bytes`` (the message names the limit).
        VectorFileError: not a GGUF file, an unsupported version, or a header that does not fit
            the file.
    """
    lim = limits if limits is not None else Limits()
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as fh:
        scan = _Scan(fh, size, str(path), lim)
        if fh.read(4) != MAGIC:
            raise scan.bad("it does not start with 'GGUF'")
        raw = scan.read(4)
        version = int.from_bytes(raw, "little")
        if version & 0xFFFF == 0:  # written big-endian
            scan.order, version = ">", int.from_bytes(raw, "big")
        if version not in VERSIONS:
            raise scan.bad(f"version {version}; readable versions are {', '.join(map(str, VERSIONS))}")
        tensors, kvs = scan.u64(), scan.u64()
        scan.count(tensors, "tensors")
        scan.count(kvs, "metadata key-value pairs")
        for _ in range(kvs):
            key = scan.string("a metadata key").decode("utf-8", "replace")
            scan.value(scan.u32(), key[:64])
        for _ in range(tensors):
            scan.tensor()
    return GGUFHeader(version, kvs, tensors, scan.items)
