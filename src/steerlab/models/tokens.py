"""Token-id batches: padding, position ids and shared prefixes — the one place every batched
forward pads.

Example:
    >>> ids, mask = pad_token_ids([[5, 6, 7], [8]], pad_id=0, side="left")
    >>> ids.tolist(), mask.tolist()
    ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import DatasetError, SteeringSpecError


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad token id (0 when it has none)."""
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else 0


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count each row's real tokens (0 on left padding), from a 2-D mask.

    Example:
        >>> position_ids(torch.tensor([[0, 1, 1], [1, 1, 1]])).tolist()
        [[0, 0, 1], [0, 1, 2]]
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def common_prefix_length(ids: Sequence[Sequence[int]]) -> int:
    """Number of leading tokens that all token-id lists share.

    Example:
        >>> common_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]])
        2
    """
    if not ids:
        return 0
    n = min(len(x) for x in ids)
    first = ids[0]
    for i in range(n):
        t = first[i]
        if any(x[i] != t for x in ids):
            return i
    return n


def pad_token_ids(ids: Sequence[Sequence[int]], pad_id: int, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of shape ``[len(ids), longest]``, padded on ``side``."""
    if side not in ("left", "right"):
        raise SteeringSpecError(f"padding_side={side!r}: use 'left' or 'right'")
    if not ids:
        raise DatasetError("no token sequences to pad")
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        off = width - len(seq) if side == "left" else 0
        input_ids[row, off : off + len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, off : off + len(seq)] = 1
    return input_ids, mask
