"""The open and informational routes: the playground page ``/``, ``/health`` and ``/metrics``.

``/`` and ``/health`` never need the API key (``/`` is static: it holds no data, and its API
calls send the key); ``/metrics`` does. ``/metrics`` answers in Prometheus' text format, or as
JSON with ``?format=json`` (or ``Accept: application/json`` without ``text/plain``).

Example::

    curl -s localhost:8000/health    # {"status": "ok"}, no key needed
    curl -s localhost:8000/metrics   # steerlab_queue_depth 0.0 ...
    curl -s "localhost:8000/metrics?format=json"
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ..metrics import PROMETHEUS_CONTENT_TYPE
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
    ok = server.engine.alive
    return JSONResponse({"status": "ok" if ok else "unavailable"}, status_code=200 if ok else 503)


def wants_json(format: str | None, accept: str) -> bool:
    """JSON when asked by ``?format=json``, or by an ``Accept`` header that names
    ``application/json`` and not Prometheus' ``text/plain`` / OpenMetrics."""
    if format is not None:
        return format == "json"
    accept = accept.lower()
    return "application/json" in accept and "text/plain" not in accept and "openmetrics" not in accept


@router.get("/metrics")
async def metrics(server: ServerDep, request: Request, format: Literal["prometheus", "json"] | None = None) -> Response:
    """Queue depth, batch size, tokens per second, time to first token, requests by outcome and
    by vector: Prometheus' text format, or JSON (``?format=json``)."""
    out = server.engine.snapshot()  # every engine's metrics plus its queue state
    out["model"] = server.lm.model_id
    out["vectors"] = len(server.store.names())
    if wants_json(format, request.headers.get("accept", "")):
        return JSONResponse(out)
    live = {**out, "scheduler": scheduler_label(out)}
    return Response(server.engine.metrics.prometheus(live), media_type=PROMETHEUS_CONTENT_TYPE)


def scheduler_label(snapshot: dict[str, Any]) -> str:
    """How requests are scheduled: the local engine's scheduler, or the name of another engine."""
    engine = snapshot.get("engine")
    if "scheduler" not in snapshot and isinstance(engine, dict):
        return str(engine.get("name", ""))
    return str(snapshot.get("scheduler", ""))
