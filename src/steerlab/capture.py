"""Batched reading of residual-stream activations (the output of chosen decoder blocks).

Texts are tokenised once, sorted into length buckets to cut padding, run under
``torch.inference_mode()`` and the forward pass is **stopped after the deepest requested block**:
no later block and no ``lm_head`` runs. Only the read positions are kept (reduced inside the
hook), so memory is ``O(texts × layers × d_model)``. Left and right padding give the same result:
position ids are derived from the attention mask.

**Shared prefixes are computed once.** Contrast texts start with the same tokens: a chat
template's system turn and the persona instruction up to the persona word for every text, the
whole question for the two sides of a CAA pair. Rows of a batch that share a prefix (nothing read
inside it) are grouped (:func:`plan_prefixes`); each group's prefix runs once, its key/value cache
is handed to every row of the group, and only the suffixes run batched. The activations equal the
full forward's up to float rounding; pass ``share_prefix=False`` to run every token of every text.

Example:
    >>> acts = capture(lm, ["I love it", "I hate it"], layers=[2, 3])  # doctest: +SKIP
    >>> acts[2].shape  # doctest: +SKIP
    torch.Size([2, 64])
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import hf
from .data import Read, validate_read
from .errors import DatasetError, LayerRangeError
from .model import LM
from .progress import track
from .tokens import common_prefix_length, pad_id, pad_token_ids, position_ids


class _StopForward(Exception):
    """Raised inside the deepest hook to end the forward pass early."""


MIN_SHARED_PREFIX = 4
"""A batch shares prefixes only when that saves at least this many tokens (and 5 % of them)."""


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


def iter_capture(
    lm: LM,
    texts: Sequence[str],
    layers: Sequence[int] | range | int,
    reads: Read | Sequence[Read] = "last",
    batch_size: int = 32,
    padding_side: str | None = None,
    progress: bool | None = None,
    skip_batches: int = 0,
    share_prefix: bool = True,
) -> Iterator[tuple[list[int], dict[int, torch.Tensor]]]:
    """Stream activations batch by batch: yields ``(text indices, {layer: [batch, d_model]})``.

    Batches are length-sorted and deterministic for given texts and ``batch_size``, so a run can
    resume by skipping the first ``skip_batches``. Memory stays at one batch. With
    ``share_prefix`` prefixes that rows of a batch share run once (see the module docstring).
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
        yield batch, _forward_batch(
            lm, [ids[i] for i in batch], [ranges[i] for i in batch], layer_list, side, share_prefix=share_prefix
        )


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
    share_prefix: bool = True,
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
        share_prefix: run prefixes that texts of a batch share once (same activations up to float
            rounding; ``False`` runs every token of every text).

    Returns:
        ``{layer: float32 CPU tensor [len(texts), d_model]}``.
    """
    layer_list = check_layers(lm, layers)
    out = {layer: torch.empty(len(texts), lm.d_model, dtype=torch.float32) for layer in layer_list}
    for batch, acts in iter_capture(
        lm, texts, layer_list, reads, batch_size, padding_side, progress, share_prefix=share_prefix
    ):
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


def sliding_window(config: Any) -> int | None:
    """The shortest attention window of a model with local (sliding-window) attention, else None."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    windows = []
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True) is not False:
        windows.append(int(config.sliding_window))
    if "local" in (getattr(config, "attention_layers", None) or []) and getattr(config, "window_size", None):
        windows.append(int(config.window_size))
    return min(windows) if windows else None


@dataclass
class PrefixPlan:
    """How a batch shares prefixes: row ``r`` continues from prefix ``group[r]``, whose first
    ``lengths[group[r]]`` tokens are those of row ``rows[group[r]]``."""

    group: list[int]
    lengths: list[int]
    rows: list[int]

    @property
    def saved_tokens(self) -> int:
        """Tokens that are not run again thanks to the sharing."""
        sizes = [self.group.count(g) for g in range(len(self.lengths))]
        return sum((n - 1) * length for n, length in zip(sizes, self.lengths))


def plan_prefixes(ids: Sequence[Sequence[int]], starts: Sequence[int]) -> PrefixPlan:
    """Group rows that share a prefix (none of it read: at most ``starts[r]`` tokens of row ``r``).

    Rows are visited in lexicographic token order, so rows with long common prefixes are
    neighbours. A row joins the current group when the tokens saved grow: a group of ``n`` rows
    sharing ``L`` tokens saves ``(n - 1) × L``. So a contrast pair that differs only at its end (a
    CAA question with answers A and B) forms a group of its own, while texts that share only a
    template (persona prompts) form one group for the whole batch.

    Example:
        >>> plan_prefixes([[1, 2, 3, 4, 9], [1, 5, 6, 7, 7], [1, 2, 3, 4, 8]], [4, 4, 4]).group
        [0, 1, 0]
    """
    order = sorted(range(len(ids)), key=lambda r: list(ids[r]))
    group = [0] * len(ids)
    lengths: list[int] = []
    rows: list[int] = []
    members = 0
    for r in order:
        shared = 0
        if rows:
            shared = min(lengths[-1], int(starts[r]), common_prefix_length([ids[rows[-1]], ids[r]]))
        if rows and members * shared > (members - 1) * lengths[-1]:
            lengths[-1] = shared
            members += 1
        else:
            lengths.append(int(starts[r]))
            rows.append(r)
            members = 1
        group[r] = len(lengths) - 1
    return PrefixPlan(group, lengths, rows)


def _plan(lm: LM, ids: list[list[int]], ranges: list[tuple[int, int]]) -> PrefixPlan | None:
    """The prefix plan for this batch, or None when sharing does not pay (or cannot be used)."""
    if len(ids) < 2:
        return None
    if not (hf.accepts(lm.model, "position_ids") and hf.cache_keyword(lm.model)):
        _warn_no_sharing(lm)
        return None
    plan = plan_prefixes(ids, [start for start, _ in ranges])
    if min(plan.lengths) < 1 or plan.saved_tokens < max(MIN_SHARED_PREFIX, sum(map(len, ids)) // 20):
        return None
    window = sliding_window(lm.model.config)
    if window is not None:
        # a sliding-window cache keeps only the last tokens: the padded prefix + suffix must fit
        suffix = max(len(seq) - plan.lengths[g] for seq, g in zip(ids, plan.group))
        if max(plan.lengths) + suffix > window:
            return None
    return plan


_WARNED: set[int] = set()


def _warn_no_sharing(lm: LM) -> None:
    """Say once per model that shared prefixes cannot be run once (extraction is slower)."""
    if id(lm.model) not in _WARNED:
        _WARNED.add(id(lm.model))
        warnings.warn(
            f"{type(lm.model).__name__}.forward takes no position_ids or KV cache ({hf.versions()}): "
            "shared prefixes run once per text (share_prefix has no effect; results are the same)",
            RuntimeWarning,
            stacklevel=4,
        )


def _run_until(lm: LM, deepest: int, kwargs: dict[str, Any], hooks: dict[int, Any] | None = None) -> None:
    """``lm.model(**kwargs)`` under ``inference_mode``, stopped right after block ``deepest``;
    ``hooks`` (``{layer: forward hook}``) run first and are removed afterwards."""

    def stop(*_: Any) -> None:
        raise _StopForward

    handles = [lm.blocks[layer].register_forward_hook(hook) for layer, hook in (hooks or {}).items()]
    handles.append(lm.blocks[deepest].register_forward_hook(stop))
    try:
        with torch.inference_mode():
            lm.model(**kwargs)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()


def _prefix_cache(lm: LM, prefixes: list[list[int]], rows: list[int], deepest: int) -> tuple[Any, torch.Tensor]:
    """Key/value cache of the (left-padded) ``prefixes`` up to block ``deepest`` — one forward
    pass, stopped there like the batch's own — expanded so that row ``r`` holds prefix
    ``rows[r]``; and the prefixes' attention mask ``[len(rows), max prefix length]``."""
    ids, mask = pad_token_ids(prefixes, pad_id(lm.tokenizer), "left")
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    cache = hf.new_cache(lm.model)
    kwargs = hf.forward_kwargs(
        lm.model, input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), cache=cache, use_cache=True
    )
    _run_until(lm, deepest, kwargs)
    index = torch.tensor(rows)  # a CPU index works for the cache on any device (blocks may be split)
    hf.select_cache_rows(cache, index)
    return cache, mask[index]


def _forward_batch(
    lm: LM,
    ids: list[list[int]],
    ranges: list[tuple[int, int]],
    layers: list[int],
    side: str,
    keep_tokens: bool = False,
    share_prefix: bool = False,
) -> dict[int, torch.Tensor]:
    """One padded forward pass, stopped after ``max(layers)``, reducing read ranges in the hooks.

    With ``share_prefix``, prefixes that rows share (and do not read) run once
    (:func:`plan_prefixes`) and the rows continue from their cache.
    """
    device = lm.device
    plan = None if keep_tokens or not share_prefix else _plan(lm, ids, ranges)
    cache, prefix_mask = None, None
    if plan is not None:
        prefixes = [ids[r][:n] for r, n in zip(plan.rows, plan.lengths)]
        cache, prefix_mask = _prefix_cache(lm, prefixes, plan.group, max(layers))
        cut = [plan.lengths[g] for g in plan.group]
        ids = [seq[n:] for seq, n in zip(ids, cut)]
        ranges = [(start - n, end - n) for (start, end), n in zip(ranges, cut)]
    input_ids, mask = pad_token_ids(ids, pad_id(lm.tokenizer), side)
    width = input_ids.shape[1]
    weights = torch.zeros((len(ids), width), dtype=torch.float32)
    for row, (seq, (start, end)) in enumerate(zip(ids, ranges)):
        off = width - len(seq) if side == "left" else 0
        weights[row, off + start : off + end] = 1.0 / (end - start)
    input_ids, mask = input_ids.to(device), mask.to(device)
    shared = 0
    if prefix_mask is not None:
        shared = prefix_mask.shape[1]
        mask = torch.cat([prefix_mask.to(mask.dtype), mask], dim=1)
    kwargs = hf.forward_kwargs(
        lm.model,
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=position_ids(mask)[:, shared:],
        cache=cache,
        use_cache=cache is not None,
    )
    result: dict[int, torch.Tensor] = {}

    def make_hook(layer: int) -> Any:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            h = hf.block_hidden(output)
            if keep_tokens:
                result[layer] = h[0].float().cpu()
            else:
                w = weights.to(device=h.device, dtype=h.dtype)
                result[layer] = torch.einsum("bl,bld->bd", w, h).float().cpu()

        return hook

    _run_until(lm, max(layers), kwargs, {layer: make_hook(layer) for layer in layers})
    return result
