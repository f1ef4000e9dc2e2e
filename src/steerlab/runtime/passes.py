"""The passes that run the model: every forward call and every ``generate`` of steerlab goes through here.

:func:`forward` is one forward call with the keyword names this transformers version takes
(:func:`steerlab.runtime.hf.forward_kwargs`); :func:`hf_generate` is one call of the model's own
``generate``. Steering is whatever :mod:`steerlab.runtime.session` has hooked on the model at the
time of the call: these functions never steer by themselves.

Example:
    >>> out = forward(lm, ids, attention_mask=mask, use_cache=False)  # doctest: +SKIP
    >>> out.logits.shape  # doctest: +SKIP
    torch.Size([2, 7, 49152])
"""

from __future__ import annotations

from typing import Any

import torch

from ..models.load import LM
from . import hf


def forward(
    lm: LM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    position_ids: torch.Tensor | None = None,
    cache: Any = None,
    use_cache: bool | None = None,
    logits_to_keep: int | None = None,
    **extra: Any,
) -> Any:
    """One forward call of ``lm.model`` (its output: ``.logits``, ``.past_key_values``...).

    Args:
        lm: the model.
        input_ids: ``[batch, length]`` token ids on the model's device.
        attention_mask: ``[batch, past + length]`` (``None``: every token is real).
        position_ids: ``[batch, length]`` (``None``: the model counts from the cache's length).
        cache: a KV cache to continue (passed under this transformers version's keyword).
        use_cache: whether the model returns (and fills) a cache.
        logits_to_keep: compute logits for the last N positions only (dropped where the model
            cannot).
        **extra: other keywords, passed as they are (``output_hidden_states``, ...).
    """
    kwargs = hf.forward_kwargs(
        lm.model,
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        use_cache=use_cache,
        logits_to_keep=logits_to_keep,
    )
    return lm.model(**kwargs, **extra)


def hf_generate(lm: LM, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """``lm.model.generate`` on left-padded ``input_ids``: the prompt and its new tokens, ``[batch, length]``."""
    out: torch.Tensor = lm.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    return out
