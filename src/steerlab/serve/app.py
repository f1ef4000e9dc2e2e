"""The FastAPI application of ``steerlab serve``: an OpenAI-compatible API with steering.

Endpoints (all but ``/health`` and the static page ``/`` need the API key when one is set):

* ``POST /v1/completions``, ``POST /v1/chat/completions`` — OpenAI request/response shapes,
  streamed as server-sent events with ``"stream": true``; the extra field ``steering`` is a list
  of ``{"vector": NAME, "coefficient": C, "layers": [...], "positions": ...}`` (none: the plain
  model), optionally conditional (``"condition": NAME, "threshold": T``: CAST);
* ``GET /v1/models``;
* ``GET /v1/vectors``, ``GET /v1/vectors/{name}``, ``POST /v1/vectors`` (a ``.tar.gz``/``.zip``
  of a vector folder or a GGUF control vector, as a multipart ``file`` field or as the raw
  body; ``name`` and ``overwrite`` as form fields or query parameters),
  ``DELETE /v1/vectors/{name}``;
* ``POST /v1/cost/perplexity_ratio``, ``GET /v1/cost/breakdown/{name}`` — what a steering costs
  (:mod:`steerlab.serve.cost`);
* ``GET /v1/presets`` — the frontier's winners of ``steerlab demo`` as presets
  (:mod:`steerlab.serve.presets`);
* ``GET /health`` (no key), ``GET /metrics``;
* ``GET /`` — the playground page.

Errors use OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` — all of them,
FastAPI's own (validation, 404, 405, unreadable bodies) and unexpected 500s included
(:mod:`steerlab.serve.http_errors`). Before a request reaches an endpoint it passes the checks of
:mod:`steerlab.serve.guards`: the API key, cross-site writes and content types, and the body size
(``max_request_bytes``).

This module only assembles the app: the state (:mod:`.state`), the routes (:mod:`.routes`, one
router per resource), the error handlers and the middlewares.

Example:
    >>> import steerlab
    >>> from steerlab.serve import ServeSettings, create_app
    >>> lm = steerlab.load_model("default")  # doctest: +SKIP
    >>> app = create_app(lm, "vectors", ServeSettings(api_key="secret"))  # doctest: +SKIP
    >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import Scope

from ..models.load import LM
from .engines.base import EngineFactory
from .guards import APIKeyMiddleware, BodyLimitMiddleware, CrossSiteMiddleware
from .http_errors import APIError, install_handlers
from .routes import JSON_PATHS, OPEN_PATHS, ROUTERS, UPLOAD_PATH
from .settings import ServeSettings
from .state import Server

__all__ = ["JSON_PATHS", "OPEN_PATHS", "UPLOAD_PATH", "APIError", "Server", "create_app"]


def _add_guards(app: FastAPI, server: Server) -> None:
    """The middlewares, outermost first: the key, then cross-site / content-type checks, then the
    body size (``add_middleware`` puts each new one outside the previous ones)."""
    settings = server.settings

    def body_limit(scope: Scope) -> int | None:
        if scope["method"] == "POST" and scope["path"] == UPLOAD_PATH:
            return None  # the upload endpoint applies max_upload_bytes itself, the same way
        return server.limits.max_request_bytes

    def refused(status: int) -> None:
        server.count(f"http_{status}")

    app.add_middleware(BodyLimitMiddleware, limit=body_limit, on_reject=refused)
    app.add_middleware(CrossSiteMiddleware, json_paths=JSON_PATHS, form_paths={UPLOAD_PATH}, on_reject=refused)
    app.add_middleware(APIKeyMiddleware, key=settings.api_key, open_paths=OPEN_PATHS, on_reject=refused)


def create_app(
    lm: LM,
    store_dir: str | os.PathLike[str],
    settings: ServeSettings | None = None,
    engine: EngineFactory | None = None,
) -> FastAPI:
    """The steering server for ``lm`` with vectors in ``store_dir``.

    The worker thread starts now (so the app also works under test clients that skip the
    lifespan); it stops on the app's shutdown, or with ``app.state.server.engine.close()``.

    Args:
        lm: the served model.
        store_dir: the vector store directory (created if missing).
        settings: limits and the optional API key (default: :class:`ServeSettings`).
        engine: a factory of the generation engine (:class:`~steerlab.serve.engines.base.EngineFactory`;
            default: the local engine, the model running here); for vLLM,
            :func:`steerlab.serve.engines.vllm.engine_factory`.
    """
    server = Server(lm, store_dir, settings or ServeSettings(), engine)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        server.engine.close()
        server.cost.close()
        server.presets.close()

    app = FastAPI(
        title="steerlab serve",
        version="1",
        lifespan=lifespan,
        description="OpenAI-compatible completions with activation steering.",
    )
    app.state.server = server
    install_handlers(app, server.count)
    _add_guards(app, server)
    for router in ROUTERS:
        app.include_router(router)
    return app
