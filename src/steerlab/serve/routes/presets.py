"""``/v1/presets``: the frontier's winners of ``steerlab demo`` as presets for the playground
(:mod:`steerlab.serve.presets`).

Built on the first request (the request waits: two extractions on the default model), then cached;
``data`` is empty and ``reason`` says why where the served model is not the one they were chosen on.

Example::

    curl -s localhost:8000/v1/presets | jq '.data[] | {label, steering}'
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from ..schemas import PresetList
from ..state import ServerDep

PATH = "/v1/presets"
router = APIRouter()


@router.get(PATH, response_model=PresetList)
async def list_presets(server: ServerDep) -> dict[str, Any]:
    """Each preset: its label, the store vector, coefficient, operator and KL cap, the held-out
    effect and cost the frontier measured, and the setting's source."""
    return await asyncio.wrap_future(server.presets.future())
