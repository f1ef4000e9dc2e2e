"""The one boundary between steerlab and transformers' internals.

Everything steerlab knows about how transformers calls a model lives here: forward keyword names
(the KV cache is ``cache=`` from 5.24 on and ``past_key_values=`` before; ``position_ids``,
``attention_mask``, ``logits_to_keep``), cache objects (creating one, its length, selecting rows;
padding, trimming and concatenating the rows of dynamic caches) and decoder-block output tuples (the
versions, checkpoint format and logging of transformers as a whole are in :mod:`steerlab.hf_env`).
transformers renames these between minor releases; when it does, this is the module to change, and
:func:`steerlab.runtime.canary.check_positions` fails loudly (naming the versions) instead of letting
steering act on the wrong tokens.

Example:
    >>> from steerlab.runtime import hf
    >>> hf.versions()  # doctest: +SKIP
    'transformers 5.24.0, torch 2.13.0+cpu'
    >>> kwargs = hf.forward_kwargs(lm.model, input_ids=ids, attention_mask=mask, cache=None)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import inspect
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple
from weakref import WeakKeyDictionary

import torch

from ..hf_env import versions

CACHE_KEYWORDS = ("cache", "past_key_values")
"""Names transformers has used for the KV cache argument of a model's forward, newest first."""

LOGITS_TO_KEEP_KEYWORDS = ("logits_to_keep", "num_logits_to_keep")
"""Names transformers has used for "compute the last N positions' logits only", newest first."""

_PARAMS: WeakKeyDictionary[Any, tuple[str, ...]] = WeakKeyDictionary()


def forward_parameters(model: Any) -> tuple[str, ...]:
    """Names of ``model.forward``'s parameters, in order (read once per model).

    Under ``torch.compile`` the result is a constant of the graph (a model's signature does not
    change): TorchDynamo does not trace the lookup, whose guards on the weak dictionary would
    break when another model is collected while a graph compiles. The mark is set at the first
    eager call after TorchDynamo was imported (marking earlier would import TorchDynamo with
    steerlab: ~1.5 s); a graph traced before any eager call traces the lookup, as it always could.
    """
    if torch.compiler.is_compiling():
        if getattr(_signature, "_dynamo_marked_constant", False):
            return _signature(model)
    elif "torch._dynamo" in sys.modules:
        _mark_signature_constant()
    params = _PARAMS.get(model)
    if params is None:
        params = _PARAMS[model] = _signature(model)
    return params


def _signature(model: Any) -> tuple[str, ...]:
    try:
        return tuple(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return ("input_ids",)


def _mark_signature_constant() -> None:
    """Mark :func:`_signature` as a graph constant for TorchDynamo (once; TorchDynamo is imported)."""
    if not getattr(_signature, "_dynamo_marked_constant", False):
        torch.compiler.assume_constant_result(_signature)  # marks the function in place


def accepts(model: Any, name: str) -> bool:
    """Whether ``model.forward`` takes a parameter called ``name``."""
    return name in forward_parameters(model)


def cache_keyword(model: Any) -> str | None:
    """The name under which ``model.forward`` takes a KV cache (``None``: it takes none)."""
    params = forward_parameters(model)
    return next((name for name in CACHE_KEYWORDS if name in params), None)


def forward_kwargs(
    model: Any,
    *,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cache: Any = None,
    use_cache: bool | None = None,
    logits_to_keep: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``model(**kwargs)``, named the way this transformers version wants.

    ``position_ids`` is dropped when the model's forward does not take it (positions then follow
    the attention mask inside the model); passing a ``cache`` to a model that takes none raises.
    ``logits_to_keep`` (compute logits for the last N positions only) is passed under the name the
    model takes (``num_logits_to_keep`` in older models) and dropped when it takes neither.
    """
    out: dict[str, Any] = {}
    if input_ids is not None:
        out["input_ids"] = input_ids
    if attention_mask is not None:
        out["attention_mask"] = attention_mask
    if position_ids is not None and accepts(model, "position_ids"):
        out["position_ids"] = position_ids
    if cache is not None:
        key = cache_keyword(model)
        if key is None:
            from ..errors import SteeringError

            raise SteeringError(f"{type(model).__name__}.forward takes no KV cache ({versions()})")
        out[key] = cache
    if use_cache is not None and accepts(model, "use_cache"):
        out["use_cache"] = use_cache
    if logits_to_keep is not None:
        key = next((k for k in LOGITS_TO_KEEP_KEYWORDS if accepts(model, k)), None)
        if key is not None:
            out[key] = logits_to_keep
    return out


def bind_call(model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of one ``model.forward`` call by name (positional ones named by the signature)."""
    bound = dict(zip(forward_parameters(model), args))
    bound.update(kwargs)
    return bound


class CallInputs(NamedTuple):
    """What a forward call says about its tokens, whatever names this transformers version uses.

    Attributes:
        batch: rows in the call.
        length: new tokens per row in this call.
        device: where the inputs are.
        attention_mask: the 2-D ``[batch, past + length]`` mask, if the call passed one.
        position_ids: the 2-D ``[batch or 1, length]`` position ids, if the call passed them.
        past: tokens already in the cache, if a cache was passed (``None``: no cache, or one whose
            length cannot be read).
        has_cache: whether a cache object was passed at all.
    """

    batch: int
    length: int
    device: torch.device
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    past: int | None
    has_cache: bool


def call_inputs(model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> CallInputs:
    """Read a forward call's arguments (as a forward pre-hook with ``with_kwargs=True`` sees them).

    Raises:
        SteeringSpecError: the call has neither ``input_ids`` nor ``inputs_embeds``.
    """
    bound = bind_call(model, args, kwargs) if args else kwargs  # generate passes keywords only
    ref = _call_tokens(bound)
    if ref is None:
        from ..errors import SteeringSpecError

        raise SteeringSpecError("steering needs input_ids or inputs_embeds in the forward call")
    mask = bound.get("attention_mask")
    pos = bound.get("position_ids")
    cache = _call_cache(bound)
    shape = ref.shape
    return CallInputs(
        shape[0],
        shape[1],
        ref.device,
        mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None,
        pos if isinstance(pos, torch.Tensor) and pos.dim() == 2 else None,
        cache_length(cache),
        cache is not None,
    )


def _call_tokens(bound: Mapping[str, Any]) -> torch.Tensor | None:
    """The call's ``input_ids``, else its ``inputs_embeds`` (``None``: neither, as a batch)."""
    ref = bound.get("input_ids")
    if ref is None:
        ref = bound.get("inputs_embeds")
    return ref if isinstance(ref, torch.Tensor) and ref.dim() >= 2 else None


def _call_cache(bound: Mapping[str, Any]) -> Any:
    """The KV cache the call passes, under whichever keyword this transformers version uses."""
    cache = bound.get(CACHE_KEYWORDS[0])
    return bound.get(CACHE_KEYWORDS[1]) if cache is None else cache


def one_token_step(bound: Mapping[str, Any]) -> int | None:
    """The rows of a forward call (its arguments by name) that feeds each row one new token after
    cached ones, or ``None`` for any other call: the cheap test run before every decoding step.

    Example:
        >>> one_token_step({"input_ids": torch.zeros(3, 1, dtype=torch.long), "past_key_values": None})
    """
    ref = _call_tokens(bound)
    cache = _call_cache(bound)
    if ref is None or ref.shape[1] != 1 or cache is None:
        return None
    mask = bound.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:  # [batch, past + 1]
        past = mask.shape[1] > 1
    else:
        past = bool(cache_length(cache))
    return ref.shape[0] if past else None


def cache_length(cache: Any) -> int | None:
    """Tokens held by a KV cache object (``None`` when it has no readable length)."""
    if cache is None:
        return None
    get = getattr(cache, "get_seq_length", None)
    if callable(get):
        return int(get())
    if isinstance(cache, (tuple, list)) and cache and isinstance(cache[0], (tuple, list)) and cache[0]:
        return int(cache[0][0].shape[-2])  # legacy tuple-of-tuples cache: [batch, heads, seq, dim]
    return None


def output_cache(output: Any) -> Any:
    """The KV cache a model's forward returned (``output.cache`` from 5.24 on, else
    ``output.past_key_values``)."""
    for name in CACHE_KEYWORDS:
        cache = getattr(output, name, None)
        if cache is not None:
            return cache
    return None


def new_cache(model: Any) -> Any:
    """An empty dynamic KV cache for ``model`` (sliding-window layers included where supported)."""
    from transformers import DynamicCache

    if "config" in inspect.signature(DynamicCache.__init__).parameters:
        return DynamicCache(config=model.config)
    return DynamicCache()


def static_cache(model: Any, length: int) -> Any:
    """An empty static KV cache of ``length`` positions for ``model`` (tensors of a fixed shape,
    allocated at its first update and reused after ``reset()``: what a compiled step needs)."""
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=length)


def select_cache_rows(cache: Any, index: torch.Tensor) -> None:
    """Keep (and repeat) the rows ``index`` of a dynamic cache, in place."""
    cache.batch_select_indices(index)


def cache_rows(cache: Any, index: torch.Tensor) -> Any:
    """A new dynamic cache holding the rows ``index`` of ``cache`` (repeats allowed), which stays
    as it was. Only the selected rows are copied: a dynamic cache's layers replace their tensors
    when rows are selected or tokens appended, so the copy may share them until then."""
    layers = getattr(cache, "layers", None)
    if isinstance(layers, list):
        out = copy.copy(cache)
        out.layers = [copy.copy(layer) for layer in layers]
    else:  # a cache without per-layer objects: copy it whole
        out = copy.deepcopy(cache)
    select_cache_rows(out, index)
    return out


def _kv_layers(cache: Any) -> list[Any]:
    return list(getattr(cache, "layers", None) or [])


def unmergeable_cache(cache: Any) -> str | None:
    """Why the rows of ``cache`` cannot be padded, trimmed and concatenated by
    :func:`shift_cache` / :func:`append_cache_rows` (``None``: they can).

    Only transformers' plain dynamic layers qualify (one ``[batch, heads, tokens, dim]`` key and
    value tensor per layer); sliding-window, static, quantized and linear-attention layers do not.
    """
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # pragma: no cover - transformers without layered caches
        return f"this transformers has no layered dynamic cache ({versions()})"
    layers = _kv_layers(cache)
    if not layers:
        return f"{type(cache).__name__} has no dynamic cache layers"
    for layer in layers:
        if type(layer) is not DynamicLayer or getattr(layer, "is_sliding", False):
            return f"its cache has {type(layer).__name__} layers (only plain dynamic layers can be merged)"
        keys = getattr(layer, "keys", None)
        if not isinstance(keys, torch.Tensor) or keys.dim() != 4:
            return "its cache layers hold no [batch, heads, tokens, dim] key tensors"
    return None


def shift_cache(cache: Any, n: int) -> None:
    """Add ``n`` empty (zero) positions before every row of a dynamic cache, in place; a negative
    ``n`` drops the ``-n`` oldest positions instead. The caller masks the added positions out
    (attention-mask zeros), exactly as left padding.
    """
    if n == 0:
        return
    for layer in _kv_layers(cache):
        if n > 0:
            k, v = layer.keys, layer.values
            layer.keys = torch.cat([k.new_zeros((*k.shape[:2], n, k.shape[3])), k], dim=-2)
            layer.values = torch.cat([v.new_zeros((*v.shape[:2], n, v.shape[3])), v], dim=-2)
        else:
            layer.keys = layer.keys[:, :, -n:, :]
            layer.values = layer.values[:, :, -n:, :]


GROUPED_SDPA = "steerlab_sdpa_gqa"
"""The attention implementation :func:`grouped_query_sdpa` switches a model to: transformers' SDPA
attention, but a one-token step with grouped key/value heads calls SDPA with ``enable_gqa=True``."""


def _sdpa_gqa(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plain = kwargs.get("position_bias") is None and kwargs.get("softcap") is None
    if getattr(module, "num_key_value_groups", 1) == 1 or query.shape[2] != 1 or not plain:
        out: tuple[torch.Tensor, None] = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
        return out
    attn = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True
    )
    return attn.transpose(1, 2).contiguous(), None


@contextmanager
def grouped_query_sdpa(model: Any) -> Iterator[None]:
    """Within the block, a model that attends through transformers' SDPA attention runs its
    one-token steps with SDPA's own grouped-query attention under a mask (``enable_gqa``), not
    transformers' copy of the key/value heads over every query head (``repeat_kv``, which it does
    under ``torch.compile``; eagerly it packs the query groups instead). For a compiled step over a
    static cache that copy is the whole cache, every step. Other models are left as they are.
    The model's config is switched for the block (the caller owns the model meanwhile).

    Example:
        >>> with grouped_query_sdpa(lm.model):  # doctest: +SKIP
        ...     logits = compiled_step(...)
    """
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if GROUPED_SDPA not in AttentionInterface._global_mapping:
        AttentionInterface.register(GROUPED_SDPA, _sdpa_gqa)
        AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)
    config._attn_implementation = GROUPED_SDPA
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"


def kv_tensors(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``[batch, heads, positions, dim]`` key and value tensors of each layer of a layered
    cache (dynamic or static; a static cache's only once allocated). Writing into a static cache's
    tensors in place keeps a compiled step that reads them valid."""
    return [(layer.keys, layer.values) for layer in _kv_layers(cache)]


def set_write_column(cache: Any, column: int) -> None:
    """Make every layer of a static cache write its next token at ``column``, in place (the
    layers' ``cumulative_length`` tensors, which a compiled step reads)."""
    for layer in _kv_layers(cache):
        layer.cumulative_length.fill_(column)


def append_cache_rows(cache: Any, other: Any) -> None:
    """Append the rows of ``other`` to ``cache`` (both dynamic, the same length), in place."""
    for layer, more in zip(_kv_layers(cache), _kv_layers(other), strict=True):
        layer.keys = torch.cat([layer.keys, more.keys.to(layer.keys.device)], dim=0)
        layer.values = torch.cat([layer.values, more.values.to(layer.values.device)], dim=0)


def block_hidden(output: Any) -> torch.Tensor:
    """The hidden states a decoder block returned (a tensor, or the first item of a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def with_block_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """``output`` with its hidden states replaced (same container as the block returned)."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
