"""``GET /v1/models`` and ``GET /v1/models/{model}``: the served model (by id or alias).

Example::

    curl -s localhost:8000/v1/models -H 'Authorization: Bearer secret'
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ..state import ServerDep

router = APIRouter()


@router.get("/v1/models")
async def models(server: ServerDep) -> dict[str, Any]:
    """The served model (OpenAI list shape)."""
    return {"object": "list", "data": [server.model_card()]}


@router.get("/v1/models/{model:path}")
async def model(model: str, server: ServerDep) -> dict[str, Any]:
    """One model, by id or alias."""
    server.check_model_name(model)
    return server.model_card()
