"""Coefficients that mean the same everywhere: steering strength as a fraction of the residual norm.

A raw coefficient means little on its own: the residual stream's norm grows with depth and differs
between models, and vectors from different methods have different norms. :func:`residual_norms`
measures, once per model, the mean per-token norm of each block's output on neutral text (the first
token is left out: it is often an attention sink with an outsized norm), and :func:`relative`
rescales a vector so that each layer's direction has exactly that norm. With a relative vector,
``Steering(rel, 0.1)`` adds 10 % of the typical residual norm at every steered layer, whatever the
layer, method or model.

Example:
    >>> rel = relative(vec, lm)  # doctest: +SKIP
    >>> steerlab.generate(lm, ["That game"], steering=steerlab.Steering(rel, 0.1))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from weakref import WeakKeyDictionary

import torch

from ..core.vector import SteeringVector
from ..data.demo import NEUTRAL
from ..errors import InvalidVectorError

_NORMS: WeakKeyDictionary[Any, dict[int, float]] = WeakKeyDictionary()


def residual_norms(lm: Any, texts: Sequence[str] | None = None) -> dict[int, float]:
    """``{layer: mean per-token norm of the block's output}`` on neutral text (first token left
    out), for every layer of ``lm``; measured once per model with the default texts.

    Example:
        >>> norms = residual_norms(lm)  # doctest: +SKIP
        >>> round(norms[10], 1)  # doctest: +SKIP
        19.3
    """
    cached = _NORMS.get(lm.model) if texts is None else None
    if cached is not None:
        return dict(cached)
    from .capture import capture_tokens

    layers = list(range(lm.n_layers))
    sums = dict.fromkeys(layers, 0.0)
    count = 0
    for text in texts or NEUTRAL:
        acts = capture_tokens(lm, text, layers)
        n = acts[layers[0]].shape[0] - 1
        if n <= 0:
            continue
        for k in layers:
            sums[k] += float(acts[k][1:].norm(dim=-1).sum())
        count += n
    if count == 0:
        raise InvalidVectorError("no text with two or more tokens to measure residual norms on")
    norms = {k: v / count for k, v in sums.items()}
    if texts is None:
        _NORMS[lm.model] = norms
    return dict(norms)


def relative(vector: SteeringVector, lm_or_norms: Any) -> SteeringVector:
    """``vector`` rescaled so each layer's direction has the model's residual norm at that layer:
    a coefficient then is a fraction of the residual norm.

    Args:
        vector: a one-direction-per-layer vector (token-wise vectors: use ``token_mean()``).
        lm_or_norms: the model (norms measured by :func:`residual_norms`) or ``{layer: norm}``.

    Raises:
        InvalidVectorError: a layer's direction is zero, or the vector is token-wise.
    """
    norms = lm_or_norms if isinstance(lm_or_norms, dict) else residual_norms(lm_or_norms)
    if vector.tokenwise:
        raise InvalidVectorError("a token-wise vector has no single direction per layer: use vector.token_mean()")
    out = {}
    for k, v in vector.directions.items():
        n = float(v.norm())
        if n == 0 or not torch.isfinite(v).all():
            raise InvalidVectorError(f"layer {k} of the vector has no direction to rescale (norm {n})")
        if k not in norms:
            raise InvalidVectorError(f"no residual norm for layer {k}")
        out[k] = v * (float(norms[k]) / n)
    meta = {**vector.meta, "scale": "residual", "residual_norms": {str(k): round(float(norms[k]), 6) for k in out}}
    return replace(vector, directions=out, meta=meta)
