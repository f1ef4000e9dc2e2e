"""Turn contrast pairs into a :class:`~steerlab.vector.SteeringVector` with any registered method.

Positive and negative texts go through **one** batched capture (length-bucketed, truncated
forward); the method then runs per layer on the read activations.

Example:
    >>> pairs = steerlab.persona_pairs("happy", "sad", openings)  # doctest: +SKIP
    >>> vec = steerlab.extract(lm, pairs, method="mean_diff", layers=range(8, 20))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

from .capture import capture, capture_tokens, check_layers
from .data import ContrastPair, check_pairs, data_hash, render
from .errors import DatasetError
from .methods import get_method
from .model import LM
from .vector import SteeringVector


def _space_pad(lm: LM, pos: list[int], neg: list[int]) -> tuple[list[int], list[int]]:
    """Pad the shorter token list with space tokens (ActAdd's alignment)."""
    space = lm.tokenizer.encode(" ", add_special_tokens=False)
    if not space:
        raise DatasetError("the tokenizer has no space token to pad the shorter ActAdd prompt with")
    width = max(len(pos), len(neg))
    return pos + space[-1:] * (width - len(pos)), neg + space[-1:] * (width - len(neg))


def extract(
    lm: LM,
    pairs: Sequence[ContrastPair],
    method: str = "mean_diff",
    layers: Sequence[int] | range | int | None = None,
    batch_size: int = 32,
    progress: bool | None = None,
) -> SteeringVector:
    """Build a steering vector from contrast pairs.

    Args:
        lm: the model (from :func:`steerlab.load_model`).
        pairs: contrast pairs (:func:`steerlab.persona_pairs`, :func:`steerlab.caa_pairs`, ...).
        method: a registered method: ``mean_diff``, ``pca_diff``, ``pca_center``, ``probe``,
            ``actadd``.
        layers: block indices to read (default: all).
        batch_size: texts per forward pass during capture.
        progress: show a progress bar.

    Raises:
        DatasetError: empty or one-sided data, too few pairs for the method, unknown method.
        LayerRangeError: a layer outside the model.
    """
    spec = get_method(method)
    pairs = check_pairs(pairs)
    layer_list = check_layers(lm, range(lm.n_layers) if layers is None else layers)
    if len(pairs) < spec.min_pairs:
        raise DatasetError(f"method {method!r} needs at least {spec.min_pairs} pairs, got {len(pairs)}")
    meta: dict[str, object] = {"n_pairs": len(pairs), "model_type": lm.model_type}
    if spec.tokenwise:
        if len(pairs) != 1:
            raise DatasetError(
                f"method {method!r} uses exactly one prompt pair (got {len(pairs)}); "
                "use mean_diff for many pairs"
            )
        tok = lm.tokenizer
        pos_ids = tok(render(pairs[0].positive, lm), add_special_tokens=True)["input_ids"]
        neg_ids = tok(render(pairs[0].negative, lm), add_special_tokens=True)["input_ids"]
        pos_ids, neg_ids = _space_pad(lm, pos_ids, neg_ids)
        pos_acts = capture_tokens(lm, pos_ids, layer_list)
        neg_acts = capture_tokens(lm, neg_ids, layer_list)
        directions = {k: spec.fit(pos_acts[k], neg_acts[k]) for k in layer_list}
        meta["n_tokens"] = len(pos_ids)
    else:
        texts: list[str] = []
        reads = []
        for p in pairs:
            texts += [render(p.positive, lm), render(p.negative, lm)]
            reads += [p.read, p.read]
        acts = capture(lm, texts, layer_list, reads, batch_size=batch_size, progress=progress)
        directions = {k: spec.fit(acts[k][0::2], acts[k][1::2]) for k in layer_list}
        read_kinds = sorted({repr(p.read) for p in pairs})
        meta["read"] = read_kinds[0] if len(read_kinds) == 1 else read_kinds
    return SteeringVector(
        directions=directions,
        model_id=lm.model_id,
        d_model=lm.d_model,
        n_layers=lm.n_layers,
        method=method,
        data_hash=data_hash(pairs),
        meta=meta,
    )
