"""Batched reading of residual-stream activations (the output of chosen decoder blocks).

Texts are tokenised once, sorted into length buckets to cut padding, run under
``torch.inference_mode()`` and the forward pass is **stopped after the deepest requested block**:
no later block and no ``lm_head`` runs. Only the read positions are kept (reduced inside the
hook), so memory is ``O(texts × layers × d_model)``. Left and right padding give the same result:
position ids are derived from the attention mask.

Example:
    >>> acts = capture(lm, ["I love it", "I hate it"], layers=[2, 3])  # doctest: +SKIP
    >>> acts[2].shape  # doctest: +SKIP
    torch.Size([2, 64])
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .data import Read, validate_read
from .errors import DatasetError, LayerRangeError
from .model import LM
from .progress import track
from .tokens import pad_id, pad_token_ids


class _StopForward(Exception):
    """Raised inside the deepest hook to end the forward pass early."""


def check_layers(lm: LM, layers: Sequence[int] | range | int) -> list[int]:
    """Normalise ``layers`` (negative indices allowed) and check they exist in ``lm``."""
    if isinstance(layers, int):
        layers = [layers]
    out: list[int] = []
    for layer in layers:
        idx = int(layer) + lm.n_layers if int(layer) < 0 else int(layer)
        if not 0 <= idx < lm.n_layers:
            raise LayerRangeError(
                f"layer {layer} is out of range: this model has {lm.n_layers} blocks "
                f"(layers 0..{lm.n_layers - 1})"
            )
        out.append(idx)
    if not out:
        raise LayerRangeError("no layers given: pass at least one layer index")
    return sorted(set(out))


def _answer_token(offsets: Sequence[tuple[int, int]], text: str) -> int:
    """Index of the token that covers the letter of the last ``(X`` in ``text``."""
    pos = text.rfind("(")
    while pos >= 0 and not (pos + 1 < len(text) and text[pos + 1].isupper()):
        pos = text.rfind("(", 0, pos)
    if pos < 0:
        raise DatasetError(f"read='answer' but the text has no '(X' answer letter: ...{text[-60:]!r}")
    letter = pos + 1
    for i, (start, end) in enumerate(offsets):
        if start <= letter < end:
            return i
    raise DatasetError(f"could not map the answer letter of ...{text[-40:]!r} to a token")


def _token_range(read: Read, n: int, offsets: Any, text: str) -> tuple[int, int]:
    """Token slice ``[start, end)`` (in the unpadded text) that ``read`` reduces over."""
    if read == "last":
        return n - 1, n
    if read in ("mean", "all"):
        return 0, n
    if read == "answer":
        i = _answer_token(offsets, text)
        return i, i + 1
    if isinstance(read, int):
        i = read + n if read < 0 else read
        if not 0 <= i < n:
            raise DatasetError(f"read index {read} is outside a text of {n} tokens")
        return i, i + 1
    assert isinstance(read, tuple)
    start, end = (r + n if r < 0 else r for r in read)
    end = min(end, n)
    if not 0 <= start < end:
        raise DatasetError(f"read slice {read} is empty for a text of {n} tokens")
    return start, end


def _accepts(model: Any, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def iter_capture(
    lm: LM,
    texts: Sequence[str],
    layers: Sequence[int] | range | int,
    reads: Read | Sequence[Read] = "last",
    batch_size: int = 32,
    padding_side: str | None = None,
    progress: bool | None = None,
    skip_batches: int = 0,
) -> Iterator[tuple[list[int], dict[int, torch.Tensor]]]:
    """Stream activations batch by batch: yields ``(text indices, {layer: [batch, d_model]})``.

    Batches are length-sorted and deterministic for given texts and ``batch_size``, so a run can
    resume by skipping the first ``skip_batches``. Memory stays at one batch.
    """
    if not texts:
        raise DatasetError("no texts to capture")
    layer_list = check_layers(lm, layers)
    read_list = [reads] * len(texts) if isinstance(reads, (str, int, tuple)) else list(reads)
    if len(read_list) != len(texts):
        raise DatasetError(f"{len(read_list)} reads for {len(texts)} texts")
    for r in read_list:
        if validate_read(r) == "all":
            raise DatasetError("read='all' keeps every token: use capture_tokens() for that")
    tok = lm.tokenizer
    need_offsets = any(r == "answer" for r in read_list)
    enc = tok(list(texts), add_special_tokens=True, return_offsets_mapping=need_offsets)
    ids: list[list[int]] = enc["input_ids"]
    ranges = [
        _token_range(r, len(x), enc["offset_mapping"][i] if need_offsets else None, texts[i])
        for i, (r, x) in enumerate(zip(read_list, ids))
    ]
    side = padding_side or tok.padding_side or "right"
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)][skip_batches:]
    for batch in track(batches, "capturing activations", enabled=progress if len(batches) > 1 else False):
        yield batch, _forward_batch(lm, [ids[i] for i in batch], [ranges[i] for i in batch], layer_list, side)


def n_batches(n_texts: int, batch_size: int) -> int:
    """How many batches :func:`iter_capture` makes of ``n_texts`` texts."""
    return -(-n_texts // batch_size)


def capture(
    lm: LM,
    texts: Sequence[str],
    layers: Sequence[int] | range | int,
    reads: Read | Sequence[Read] = "last",
    batch_size: int = 32,
    padding_side: str | None = None,
    progress: bool | None = None,
) -> dict[int, torch.Tensor]:
    """Read block-output activations of ``texts`` at ``layers``.

    Args:
        lm: the model.
        texts: already-rendered texts (see :func:`steerlab.data.render`).
        layers: block indices (negative from the end).
        reads: one :data:`~steerlab.data.Read` for all texts or one per text; ``"all"`` is not
            allowed here (use :func:`capture_tokens`).
        batch_size: texts per forward pass.
        padding_side: ``"left"`` or ``"right"``; default the tokenizer's.
        progress: show a progress bar (default: on unless ``STEERLAB_QUIET``).

    Returns:
        ``{layer: float32 CPU tensor [len(texts), d_model]}``.
    """
    layer_list = check_layers(lm, layers)
    out = {layer: torch.empty(len(texts), lm.d_model, dtype=torch.float32) for layer in layer_list}
    for batch, acts in iter_capture(lm, texts, layer_list, reads, batch_size, padding_side, progress):
        index = torch.tensor(batch)
        for layer in layer_list:
            out[layer][index] = acts[layer]
    return out


def capture_tokens(
    lm: LM, text: str | list[int], layers: Sequence[int] | range | int
) -> dict[int, torch.Tensor]:
    """Activations of every token of one text (or token-id list): ``{layer: [n_tokens, d_model]}``."""
    layer_list = check_layers(lm, layers)
    ids = lm.tokenizer(text, add_special_tokens=True)["input_ids"] if isinstance(text, str) else text
    return _forward_batch(lm, [ids], [(0, len(ids))], layer_list, "right", keep_tokens=True)


def _forward_batch(
    lm: LM,
    ids: list[list[int]],
    ranges: list[tuple[int, int]],
    layers: list[int],
    side: str,
    keep_tokens: bool = False,
) -> dict[int, torch.Tensor]:
    """One padded forward pass, stopped after ``max(layers)``, reducing read ranges in the hooks."""
    device = lm.device
    input_ids, mask = pad_token_ids(ids, pad_id(lm.tokenizer), side)
    width = input_ids.shape[1]
    weights = torch.zeros((len(ids), width), dtype=torch.float32)
    for row, (seq, (start, end)) in enumerate(zip(ids, ranges)):
        off = width - len(seq) if side == "left" else 0
        weights[row, off + start : off + end] = 1.0 / (end - start)
    input_ids, mask = input_ids.to(device), mask.to(device)
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask, "use_cache": False}
    if _accepts(lm.model, "position_ids"):
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    deepest = max(layers)
    result: dict[int, torch.Tensor] = {}
    handles = []

    def make_hook(layer: int) -> Any:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            h = output[0] if isinstance(output, tuple) else output
            if keep_tokens:
                result[layer] = h[0].float().cpu()
            else:
                w = weights.to(device=h.device, dtype=h.dtype)
                result[layer] = torch.einsum("bl,bld->bd", w, h).float().cpu()
            if layer == deepest:
                raise _StopForward

        return hook

    try:
        for layer in layers:
            handles.append(lm.blocks[layer].register_forward_hook(make_hook(layer)))
        with torch.inference_mode():
            lm.model(**kwargs)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return result
