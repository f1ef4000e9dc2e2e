"""The HTTP routes of ``steerlab serve``, one :class:`fastapi.APIRouter` per resource.

* :mod:`.completions` — ``POST /v1/completions`` and ``POST /v1/chat/completions`` (a router each);
* :mod:`.models` — ``GET /v1/models``, ``GET /v1/models/{model}``;
* :mod:`.vectors` — ``GET``, ``POST`` and ``DELETE`` on ``/v1/vectors``;
* :mod:`.info` — the playground page ``/``, ``/health`` and ``/metrics``;
* :mod:`.cost` — ``POST /v1/cost/perplexity_ratio``, ``GET /v1/cost/breakdown/{name}``;
* :mod:`.presets` — ``GET /v1/presets``.

Routes stay thin: they take the shared state as a dependency (:data:`steerlab.serve.state.ServerDep`),
hand the work to :mod:`steerlab.serve.generation`, :mod:`steerlab.serve.upload` and the store,
and build their bodies with :mod:`steerlab.serve.schemas`.

Example:
    >>> from fastapi import FastAPI
    >>> app = FastAPI()
    >>> for router in ROUTERS:
    ...     app.include_router(router)
"""

from __future__ import annotations

from . import completions, cost, info, models, presets, vectors

ROUTERS = (
    info.router,
    models.router,
    vectors.router,
    completions.completions_router,
    completions.chat_router,
    cost.router,
    presets.router,
)
"""Every router, in the order the app includes them."""
OPEN_PATHS = frozenset({info.PLAYGROUND_PATH, info.HEALTH_PATH})
"""Paths that never need the API key: the liveness probe and the static playground page."""
JSON_PATHS = frozenset({completions.COMPLETIONS_PATH, completions.CHAT_PATH, cost.RATIO_PATH})
"""Endpoints whose body must be ``application/json``."""
UPLOAD_PATH = vectors.PATH
"""The upload endpoint (multipart or raw body, its own size limit)."""

__all__ = ["JSON_PATHS", "OPEN_PATHS", "ROUTERS", "UPLOAD_PATH"]
