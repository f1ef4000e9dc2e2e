"""Where steering acts: the ``positions`` of a :class:`~steerlab.core.steering.Steering`, and the pure
function that turns one forward call's inputs into each token's index among its row's real tokens.

Positions (indices count each row's real tokens, padding excluded):

* ``"all"`` — every token, prompt and generated;
* ``"prompt"`` — the prompt's tokens only;
* ``"generated"`` — only tokens after the prompt (CAA's "every position after the prompt");
* ``(start, end)`` — token indices ``start <= i < end`` (``end=None``: to the end).

Token-wise (ActAdd) vectors are not a position: they are a kind of vector, added front-aligned
by their operator (see :mod:`steerlab.core.operators`).

Example:
    >>> import torch
    >>> real, idx = token_positions(3, 2, torch.device("cpu"), attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]))
    >>> idx.tolist(), real.tolist()
    ([[-1, 0, 1], [0, 1, 2]], [[False, True, True], [True, True, True]])
    >>> position_mask("generated", real, idx, prompt_len=torch.tensor([2, 2])).squeeze(-1).tolist()
    [[False, False, False], [False, False, True]]
"""

from __future__ import annotations

import torch

from ..errors import SteeringSpecError, TransformersCompatError

Positions = str | tuple[int, int | None]
POSITION_KEYWORDS = ("all", "prompt", "generated")


def positions_key(positions: Positions) -> Positions:
    """Validate ``positions`` and return its canonical (hashable) form."""
    if isinstance(positions, str):
        if positions not in POSITION_KEYWORDS:
            hint = (
                " (token-wise ActAdd vectors are added front-aligned by themselves: leave positions unset)"
                if positions == "actadd"
                else ""
            )
            raise SteeringSpecError(f"positions={positions!r}: use 'all', 'prompt', 'generated' or (start, end){hint}")
        return positions
    if isinstance(positions, (tuple, list)) and len(positions) == 2:
        start, end = positions
        if not isinstance(start, int) or start < 0 or (end is not None and (not isinstance(end, int) or end <= start)):
            raise SteeringSpecError(
                f"positions={tuple(positions)!r}: a window is (start, end) with 0 <= start < end "
                "(end=None runs to the end)"
            )
        return (start, end)
    raise SteeringSpecError(f"positions={positions!r} is not understood")


def token_positions(
    length: int,
    batch: int,
    device: torch.device,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    past: int | None = None,
    has_cache: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which tokens of a forward call are real, and each one's index among its row's real tokens.

    Args:
        length: new tokens per row in the call.
        batch: rows in the call.
        device: where to put the result.
        attention_mask: the call's 2-D mask over past and new tokens, if it passed one.
        position_ids: the call's 2-D position ids, if it passed them.
        past: tokens already in the KV cache, when a cache with a readable length was passed.
        has_cache: whether a cache was passed at all.

    Returns:
        ``(real, index)``, both ``[batch, length]``: ``real`` is False on padding, ``index`` counts
        real tokens from 0 (``-1`` before a row's first real token).

    The attention mask decides when it covers the past and the new tokens; else the position ids
    (transformers' ``generate`` passes them, and from 5.24 drops an all-ones mask); else the
    cache's length; a call without any cache starts at 0.

    Raises:
        TransformersCompatError: the inputs contradict each other or say nothing usable.
    """
    if attention_mask is not None:
        width = int(attention_mask.shape[-1])
        implied = width - length
        if implied >= 0 and (past is None or past == implied):
            full = attention_mask.to(device=device, dtype=torch.long)
            index = (full.cumsum(-1) - 1)[:, implied:]
            real = full[:, implied:] > 0
            return _expand(real, batch, length), _expand(index, batch, length)
        if position_ids is None:
            from ..hf_env import versions

            raise TransformersCompatError(
                f"the attention mask covers {width} tokens but the call has {length} new tokens after "
                f"{past} cached ones; steerlab cannot tell which tokens these are ({versions()})"
            )
    if position_ids is not None:
        index = position_ids.to(device=device, dtype=torch.long)
        real = torch.ones(index.shape, dtype=torch.bool, device=device)
        return _expand(real, batch, length), _expand(index, batch, length)
    if has_cache and past is None:
        from ..hf_env import versions

        raise TransformersCompatError(
            "the forward call passed a KV cache whose length cannot be read, and no attention mask or "
            f"position ids: steerlab cannot tell which tokens these are ({versions()})"
        )
    start = past or 0
    index = torch.arange(start, start + length, device=device).unsqueeze(0)
    return torch.ones(batch, length, dtype=torch.bool, device=device), index.expand(batch, length)


def _expand(t: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    if t.shape[-1] != length or t.shape[0] not in (1, batch):
        from ..hf_env import versions

        raise TransformersCompatError(
            f"position information of shape {tuple(t.shape)} does not fit a call of {batch} rows × "
            f"{length} tokens ({versions()})"
        )
    return t.expand(batch, length)


def starts_sequence(real: torch.Tensor, index: torch.Tensor) -> bool:
    """True when every row's first real token in this call has index 0 (a new prompt)."""
    first = index.masked_fill(~real, torch.iinfo(index.dtype).max).amin(dim=-1)
    return bool((first == 0).all())


def position_mask(
    key: Positions,
    real: torch.Tensor,
    index: torch.Tensor,
    prompt_len: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[batch, length, 1]`` bool mask of the tokens that ``key`` selects.

    Raises:
        SteeringSpecError: ``"prompt"``/``"generated"`` without a known prompt length.
    """
    sel = real
    if key == "prompt" or key == "generated":
        if prompt_len is None:
            raise SteeringSpecError(
                "positions='prompt'/'generated' need a known prompt length: steer a call that starts "
                "a sequence first, or pass prompt_length="
            )
        in_prompt = index < prompt_len.to(index.device)[:, None]
        sel = sel & (in_prompt if key == "prompt" else ~in_prompt)
    elif isinstance(key, tuple):
        start, end = key
        sel = sel & (index >= start)
        if end is not None:
            sel = sel & (index < end)
    return sel.unsqueeze(-1)
