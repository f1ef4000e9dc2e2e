"""The open and informational routes: the playground page ``/``, ``/health`` and ``/metrics``.

``/`` and ``/health`` never need the API key (``/`` is static: it holds no data, and its API
calls send the key); ``/metrics`` does.

Example::

    curl -s localhost:8000/health    # {"status": "ok"}, no key needed
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse

from ..state import ServerDep

PLAYGROUND_PATH = "/"
HEALTH_PATH = "/health"
router = APIRouter()


@cache
def playground_page() -> str:
    """The playground's HTML (read once)."""
    try:
        return resources.files("steerlab.serve").joinpath("static/playground.html").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):  # pragma: no cover - a wheel built without package data
        return "<!doctype html><title>steerlab</title><p>The playground page is missing from this install.</p>"


@router.get(PLAYGROUND_PATH, response_class=HTMLResponse, include_in_schema=False)
async def playground() -> HTMLResponse:
    """The playground page (static: it holds no data; its API calls need the key)."""
    return HTMLResponse(playground_page())


@router.get(HEALTH_PATH)
async def health(server: ServerDep) -> JSONResponse:
    """Liveness: 200 while the worker runs, else 503."""
    ok = server.batcher.alive
    return JSONResponse({"status": "ok" if ok else "unavailable"}, status_code=200 if ok else 503)


@router.get("/metrics")
async def metrics(server: ServerDep) -> dict[str, Any]:
    """Requests, tokens per second, queue length, batches."""
    out = server.batcher.snapshot()
    out["model"] = server.lm.model_id
    out["vectors"] = len(server.store.names())
    return out
