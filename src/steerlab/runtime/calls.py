"""Which tokens of one forward call are real, and each one's index among its row's real tokens.

The steering hooks (:mod:`steerlab.runtime.session`) and the first-use check that they read the
right positions (:mod:`steerlab.runtime.canary`) both read a call this way: what the call passes
(attention mask, position ids or the cache's length, through :func:`steerlab.runtime.hf.call_inputs`)
goes to the pure :func:`steerlab.core.positions.token_positions`.

Example:
    >>> import torch
    >>> ids, mask = torch.zeros(1, 3, dtype=torch.long), torch.tensor([[0, 1, 1]])
    >>> real, index = call_positions(None, (), {"input_ids": ids, "attention_mask": mask})
    >>> real.tolist(), index.tolist()
    ([[False, True, True]], [[-1, 0, 1]])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..core.positions import token_positions
from . import hf


def call_positions(model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(real, index)`` of one forward call of ``model`` as a forward pre-hook with
    ``with_kwargs=True`` sees it (see :func:`~steerlab.core.positions.token_positions`)."""
    return input_positions(hf.call_inputs(model, args, kwargs))


def input_positions(inputs: hf.CallInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(real, index)`` of a forward call's inputs as :func:`steerlab.runtime.hf.call_inputs` read them."""
    return token_positions(
        inputs.length,
        inputs.batch,
        inputs.device,
        attention_mask=inputs.attention_mask,
        position_ids=inputs.position_ids,
        past=inputs.past,
        has_cache=inputs.has_cache,
    )
