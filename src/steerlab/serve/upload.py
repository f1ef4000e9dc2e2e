"""Reading a vector upload off the request: a multipart ``file`` field or the raw body.

The body is read into a spooled file as it arrives, refused with 413 as soon as it passes
``max_upload_bytes`` (plus some room for the multipart framing), then parsed. ``name`` and
``overwrite`` come from the query string or the form fields; without a name the file's name
(the multipart filename or the ``X-Filename`` header) gives one, its archive suffix dropped.
What the upload holds (archive or GGUF) is the store's business (:mod:`.archive`, :mod:`.store`).

Example:
    >>> async with read_upload(request, 16 << 20, name=None, overwrite=False) as up:  # doctest: +SKIP
    ...     info = store.add_upload(up.name, up.file, up.overwrite)
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from fastapi import Request
from starlette.datastructures import FormData, Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from .http_errors import APIError

MULTIPART_OVERHEAD = 64 * 1024
"""Room for the multipart framing on top of ``max_upload_bytes``."""
SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip", ".gguf")
"""File-name suffixes dropped when the name of the vector comes from the file's name."""
_TRUE = ("1", "true", "yes", "on")


@dataclass
class Upload:
    """An upload ready for :meth:`~steerlab.serve.store.VectorStore.add_upload`."""

    name: str
    file: IO[bytes]
    overwrite: bool


def vector_name(name: str | None, filename: str) -> str:
    """``name``, or else the file's name without its archive suffix; 400 when neither gives one.

    Example:
        >>> vector_name(None, "uploads/happy.tar.gz")
        'happy'
    """
    if name:
        return name
    stem = Path(filename).name
    for suffix in SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    if not stem:
        raise APIError(
            400,
            "give the vector a name (form field or query parameter 'name')",
            code="invalid_vector_name",
            param="name",
        )
    return stem


async def _spool(request: Request, spool: IO[bytes], cap: int, limit: int) -> None:
    """The body into ``spool``; 413 once it passes ``cap`` bytes (from ``Content-Length`` when given)."""
    too_big = APIError(413, f"the upload is larger than {limit} bytes", code="upload_too_large")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > cap:
        raise too_big
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            raise too_big
        spool.write(chunk)
    spool.seek(0)


async def _parse_form(headers: Headers, spool: IO[bytes]) -> FormData:
    async def chunks() -> AsyncGenerator[bytes, None]:
        while block := spool.read(1 << 16):
            yield block

    try:
        return await MultiPartParser(headers, chunks(), max_files=1, max_fields=4).parse()
    except MultiPartException as exc:
        raise APIError(400, f"bad multipart body: {exc.message}", code="invalid_upload") from None


def _from_form(form: FormData, name: str | None, overwrite: bool, filename: str) -> Upload:
    """The upload of a parsed form: its ``file`` field; its ``name`` unless the query gave one, its
    ``overwrite`` or the query's."""
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise APIError(400, "send the vector as the multipart field 'file'", code="invalid_upload", param="file")
    field_name = form.get("name")
    if isinstance(field_name, str) and field_name and name is None:
        name = field_name
    field_over = form.get("overwrite")
    if isinstance(field_over, str):
        overwrite = overwrite or field_over.lower() in _TRUE
    return Upload(vector_name(name, upload.filename or filename), upload.file, overwrite)


@asynccontextmanager
async def read_upload(request: Request, limit: int, name: str | None, overwrite: bool) -> AsyncIterator[Upload]:
    """The request's upload (``limit``: ``max_upload_bytes``), open for the block.

    Args:
        request: a ``multipart/form-data`` request with a ``file`` field, or any other content
            type with the file as the raw body.
        limit: the largest file accepted (413 beyond).
        name: the ``name`` query parameter (wins over the form field).
        overwrite: the ``overwrite`` query parameter (or-ed with the form field).
    """
    multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
    with tempfile.SpooledTemporaryFile(max_size=1 << 20) as spool:
        await _spool(request, spool, limit + (MULTIPART_OVERHEAD if multipart else 0), limit)
        filename = request.headers.get("x-filename") or ""
        if not multipart:
            yield Upload(vector_name(name, filename), spool, overwrite)
            return
        form = await _parse_form(request.headers, spool)
        try:
            yield _from_form(form, name, overwrite, filename)
        finally:
            await form.close()
