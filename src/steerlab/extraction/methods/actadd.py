"""ActAdd (Turner et al. 2023): the whole activation of one prompt pair ("Love" − "Hate").

The vector keeps one row per steering-prompt token, ``[n_tokens, d]``, and is added front-aligned
at the first ``n_tokens`` positions of the user's prompt (``positions="actadd"``). The shorter
prompt is padded with space tokens to the same length, as in the paper.

Example:
    >>> import torch
    >>> fit(torch.ones(3, 2), torch.zeros(3, 2)).shape
    torch.Size([3, 2])
"""

from __future__ import annotations

import torch

from ..readout import ReadOutMethod
from . import register


def fit(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Token-wise difference of the two prompts' activations."""
    return pos - neg


register(ReadOutMethod("actadd", fit, "one prompt pair, whole activation, front-aligned (ActAdd)", tokenwise=True))
