"""The passes that run the model: every forward call and every ``generate`` of steerlab goes through here.

* :func:`forward` — one forward call, with the keyword names this transformers version takes
  (:func:`steerlab.runtime.hf.forward_kwargs`);
* :func:`run_until` — a forward call stopped right after block ``k`` (no later block, no final
  norm, no ``lm_head``), with block hooks that read what they need on the way;
* :func:`extend` — new tokens of each row after a :class:`Prefix` (the key/value cache and attention
  mask of tokens already run), so shared prefixes run once: capture's prefix tree and training's
  shared prompts both continue from one;
* :func:`hf_generate` — one call of the model's own ``generate``.

Steering is whatever :mod:`steerlab.runtime.session` has hooked on the model at the time of the
call: these functions never steer by themselves, and set no autograd mode (the caller's
``torch.inference_mode()`` or gradients hold). The measures made from a pass's logits are in
:mod:`steerlab.runtime.score`.

Example:
    >>> out = forward(lm, ids, attention_mask=mask, use_cache=False)  # doctest: +SKIP
    >>> out.logits.shape  # doctest: +SKIP
    torch.Size([2, 7, 49152])
    >>> _, prompts = extend(lm, ids, mask, keep=True, until=lm.n_layers - 1)  # doctest: +SKIP
    >>> out, _ = extend(lm, more_ids, more_mask, prompts.rows(torch.tensor([0, 0, 1])))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ..models.load import LM
from ..models.tokens import position_ids
from . import hf

BlockHook = Callable[[torch.nn.Module, Any, Any], Any]
"""A forward hook on a decoder block: ``hook(block, args, output)``."""


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


class _Stop(Exception):
    """Raised by the hook on the last block a :func:`run_until` pass needs: the rest is not run."""


def _stop(*_: Any) -> None:
    raise _Stop


def run_until(
    lm: LM,
    deepest: int,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    hooks: Mapping[int, BlockHook] | None = None,
    position_ids: torch.Tensor | None = None,
    cache: Any = None,
    use_cache: bool | None = None,
) -> None:
    """One forward call (as :func:`forward`) stopped right after block ``deepest``: no later block,
    final norm or ``lm_head`` runs. ``hooks`` (``{layer: forward hook}``) are put on their blocks
    for this call only and run before it stops (after any steering hooks, which come first); a
    ``cache`` holds the keys and values of blocks ``0..deepest`` afterwards.

    Example:
        >>> seen = {}
        >>> run_until(lm, 2, ids, mask, hooks={2: lambda m, a, out: seen.update(h=out[0])})  # doctest: +SKIP
    """
    try:
        with hooked(lm, hooks), hooked(lm, {deepest: _stop}):
            forward(lm, input_ids, attention_mask, position_ids=position_ids, cache=cache, use_cache=use_cache)
    except _Stop:
        pass


@contextmanager
def hooked(lm: LM, hooks: Mapping[int, BlockHook] | None) -> Iterator[None]:
    """``hooks`` (``{layer: forward hook}``) on their blocks inside the ``with`` block only (after
    any hooks already there: steering hooks come first), removed on exit, also on an exception."""
    handles = [lm.blocks[layer].register_forward_hook(hook) for layer, hook in (hooks or {}).items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def hf_generate(lm: LM, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """``lm.model.generate`` on left-padded ``input_ids``: the prompt and its new tokens, ``[batch, length]``."""
    out: torch.Tensor = lm.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    return out


# ---------------------------------------------------------------------------- shared prefixes
def can_continue(lm: LM) -> bool:
    """Whether ``lm``'s forward can continue rows from a KV cache at explicit positions (it takes
    ``position_ids`` and a cache): what :func:`extend` after a :class:`Prefix` needs."""
    return hf.accepts(lm.model, "position_ids") and hf.cache_keyword(lm.model) is not None


def sliding_window(config: Any) -> int | None:
    """The shortest attention window of a model with local (sliding-window) attention, else None:
    a cache of such a model keeps only that many tokens, so a prefix longer than it cannot be
    continued.

    Example:
        >>> from types import SimpleNamespace
        >>> sliding_window(SimpleNamespace(sliding_window=4096)), sliding_window(SimpleNamespace())
        (4096, None)
    """
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    windows = []
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True) is not False:
        windows.append(int(config.sliding_window))
    if "local" in (getattr(config, "attention_layers", None) or []) and getattr(config, "window_size", None):
        windows.append(int(config.window_size))
    return min(windows) if windows else None


@dataclass
class Prefix:
    """Tokens already run for a batch of rows: their KV cache (``None``: not kept) and their
    attention mask ``[rows, width]`` (left padding as zeros).

    Example:
        >>> p = Prefix(None, torch.tensor([[0, 1], [1, 1]]))
        >>> p.rows(torch.tensor([1, 1, 0])).mask.tolist()
        [[1, 1], [1, 1], [0, 1]]
    """

    cache: Any
    mask: torch.Tensor

    @property
    def width(self) -> int:
        """Positions per row (padding included)."""
        return int(self.mask.shape[1])

    def rows(self, index: torch.Tensor, take: bool = False) -> Prefix:
        """The rows ``index`` (repeats allowed) as a new prefix. With ``take`` its cache is handed
        over (selected in place; this prefix keeps none), else the selected rows are copied and
        this prefix stays as it was (:func:`steerlab.runtime.hf.cache_rows`)."""
        cache = self.cache
        if cache is not None:
            if take:
                self.cache = None
                hf.select_cache_rows(cache, index)
            else:
                cache = hf.cache_rows(cache, index)
        return Prefix(cache, self.mask[index.to(self.mask.device)])


def extend(
    lm: LM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prefix: Prefix | None = None,
    *,
    keep: bool = False,
    until: int | None = None,
    hooks: Mapping[int, BlockHook] | None = None,
) -> tuple[Any, Prefix]:
    """Run each row's new tokens after row ``i`` of ``prefix`` (or from nothing): one forward call
    at positions that count the prefix's real tokens, through its cache.

    Args:
        lm: the model.
        input_ids: ``[rows, length]`` new tokens (on the model's device).
        attention_mask: their ``[rows, length]`` mask.
        prefix: what the rows continue (its cache is extended in place), or ``None``.
        keep: return the cache, holding the prefix and the new tokens (without a prefix, a new
            cache is made for it).
        until: stop after this block (:func:`run_until`): no logits; ``None`` runs the whole model.
        hooks: block hooks for this call (:func:`hooked`).

    Returns:
        the model's output (``None`` with ``until``), and the prefix the rows now have: the full
        attention mask, with the cache when ``keep``.
    """
    cache = prefix.cache if prefix is not None else (hf.new_cache(lm.model) if keep else None)
    mask = attention_mask
    past = 0
    if prefix is not None:
        past = prefix.width
        mask = torch.cat([prefix.mask.to(device=mask.device, dtype=mask.dtype), mask], dim=1)
    positions = position_ids(mask)[:, past:]
    out = None
    if until is None:
        with hooked(lm, hooks):
            out = forward(lm, input_ids, mask, position_ids=positions, cache=cache, use_cache=cache is not None)
    else:
        run_until(
            lm, until, input_ids, mask, hooks=hooks, position_ids=positions, cache=cache, use_cache=cache is not None
        )
    return out, Prefix(cache if keep else None, mask)
