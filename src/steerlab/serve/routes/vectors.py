"""``/v1/vectors``: list, describe, upload and delete the store's vectors.

Uploads are a ``.tar.gz``/``.zip`` of a vector folder or a GGUF control vector, as a multipart
``file`` field or as the raw body (:mod:`steerlab.serve.upload`); ``name`` and ``overwrite`` as
form fields or query parameters. The store's refusals become HTTP errors through
:data:`steerlab.serve.http_errors.STATUS`.

Example::

    curl -s localhost:8000/v1/vectors -F file=@happy.tar.gz -F name=happy   # upload
    curl -s localhost:8000/v1/vectors/happy                                 # describe
    curl -s -X DELETE localhost:8000/v1/vectors/happy                       # delete
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..http_errors import domain_errors
from ..state import ServerDep
from ..upload import read_upload

PATH = "/v1/vectors"
router = APIRouter()


@router.get(PATH)
async def list_vectors(server: ServerDep) -> dict[str, Any]:
    """The vectors of the store: name, layers, norms, method, model."""
    return {"object": "list", "data": server.store.describe_all()}


@router.get(PATH + "/{name:path}")
async def get_vector(name: str, server: ServerDep) -> dict[str, Any]:
    """One vector's description."""
    with domain_errors("name"):
        return server.store.get(name).describe()


@router.delete(PATH + "/{name:path}")
async def delete_vector(name: str, server: ServerDep) -> dict[str, Any]:
    """Remove a vector from the store."""
    with domain_errors("name"):
        await run_in_threadpool(server.store.delete, name)
    return {"id": name, "name": name, "object": "steering_vector", "deleted": True}


@router.post(PATH, status_code=201)
async def upload_vector(
    request: Request, server: ServerDep, name: str | None = None, overwrite: bool = False
) -> JSONResponse:
    """Add a vector: an archive of a vector folder or a GGUF control vector."""
    async with read_upload(request, server.limits.max_upload_bytes, name, overwrite) as upload:
        with domain_errors("file"):
            info = await run_in_threadpool(server.store.add_upload, upload.name, upload.file, upload.overwrite)
    server.count("vectors_uploaded")
    return JSONResponse(info, status_code=201)
