"""``/v1/cost``: what a steering costs (:mod:`steerlab.serve.cost`), for the playground.

* ``POST /v1/cost/perplexity_ratio`` — ``{"prompt", "chat", "steered", "unsteered"}``: the
  perplexity of the steered continuation under the unsteered model over that of the unsteered
  continuation;
* ``GET /v1/cost/breakdown/{name}`` — the breakdown curve of a stored vector and where it breaks
  the model (``breaks_at.positive`` / ``breaks_at.negative``: the smallest coefficient of each
  sign whose perplexity on neutral text passes 2× the unsteered one; ``null``: not within ±16).
  Computed on first request (the request waits), then cached.

Example::

    curl -s localhost:8000/v1/cost/perplexity_ratio -H 'Content-Type: application/json' \\
         -d '{"prompt": "Once upon a time", "steered": " joy joy joy", "unsteered": " there was a girl"}'
    curl -s localhost:8000/v1/cost/breakdown/happy | jq .breaks_at
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from ..http_errors import APIError, domain_errors
from ..schemas import ChatCompletionRequest, PerplexityRatioRequest
from ..state import Server, ServerDep

RATIO_PATH = "/v1/cost/perplexity_ratio"
BREAKDOWN_PATH = "/v1/cost/breakdown"
router = APIRouter()


def _needs_weights(server: Server) -> None:
    if not server.cost.available:
        raise APIError(
            400,
            "costs need the model's weights in this process; this server generates with vLLM",
            code="unsupported_by_engine",
        )


@router.post(RATIO_PATH)
async def perplexity_ratio(req: PerplexityRatioRequest, server: ServerDep) -> dict[str, Any]:
    """Perplexity of ``steered`` over that of ``unsteered`` under the unsteered model."""
    _needs_weights(server)
    prompt = req.prompt
    if req.chat:
        chat = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": prompt}]})
        prompt = await run_in_threadpool(server.render_chat, chat)
    with domain_errors():  # a text over max_text_chars / max_score_tokens: 400 naming the limit, nothing run
        return await run_in_threadpool(server.cost.perplexity_ratio, prompt, req.steered, req.unsteered)


@router.get(BREAKDOWN_PATH + "/{name}")
async def breakdown(name: str, server: ServerDep) -> dict[str, Any]:
    """The stored vector's breakdown curve and breaking coefficients (computed once, then cached)."""
    _needs_weights(server)
    with domain_errors("name"):
        future = server.cost.breakdown_future(name)
    return await asyncio.wrap_future(future)
