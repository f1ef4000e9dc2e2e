"""Batched reading of residual-stream activations (the output of chosen decoder blocks).

Texts are tokenised once, run in passes grouped by length to cut padding, under
``torch.inference_mode()``, and every forward pass is **stopped after the deepest requested block**:
no later block and no ``lm_head`` runs. Only the read positions are kept (reduced inside the
hook), so memory is ``O(texts × layers × d_model)`` for :func:`capture` and one batch for
:func:`iter_capture`. Left and right padding give the same result:
position ids are derived from the attention mask.

**Every distinct token prefix is computed once.** A causal model's activation at a token depends
only on the tokens up to it, and contrast texts repeat each other's openings: the chat template's
system turn and the persona instruction in every persona text, RepE's truncated openings that are
prefixes of one another, the whole question on both sides of a CAA pair. The texts' token ids
(each cut after its last read token) form a prefix tree (:mod:`steerlab.extraction.trie`); its runs of tokens
are grouped into forward passes, each row continuing from the key/value cache of the pass that ran
the tokens before it, and every text's read is summed from the passes that hold its tokens. A
text that is a prefix of another is read from the longer one's forward; duplicates run once.
Passes run depth first, so only the caches on one path of the tree are alive. The activations
equal the full forward's up to float rounding; pass ``share_prefix=False`` to run every token of
every text (length-sorted batches).

Example:
    >>> acts = capture(lm, ["I love it", "I hate it"], layers=[2, 3])  # doctest: +SKIP
    >>> acts[2].shape  # doctest: +SKIP
    torch.Size([2, 64])
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import hf_env
from ..data.pairs import Read, validate_read
from ..errors import DatasetError, LayerRangeError
from ..limits import Limits
from ..models.load import LM
from ..models.tokens import pad_id, pad_token_ids, position_ids
from ..progress import track
from ..runtime import hf
from ..runtime.passes import BlockHook, Prefix, can_continue, extend, run_until, sliding_window
from . import trie


def check_layers(lm: LM, layers: Sequence[int] | range | int) -> list[int]:
    """Normalise ``layers`` (negative indices allowed) and check they exist in ``lm``."""
    if isinstance(layers, int):
        layers = [layers]
    out: list[int] = []
    for layer in layers:
        idx = int(layer) + lm.n_layers if int(layer) < 0 else int(layer)
        if not 0 <= idx < lm.n_layers:
            raise LayerRangeError(
                f"layer {layer} is out of range: this model has {lm.n_layers} blocks (layers 0..{lm.n_layers - 1})"
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


Names = Callable[[int], str]
"""What an error calls text ``i`` of a capture (default ``"text {i}"``; extraction: ``"pair 3 (negative)"``)."""


def pair_names(first: int = 0) -> Names:
    """Names of interleaved pair texts ``[pos0, neg0, pos1, ...]`` whose first pair is pair ``first``.

    Example:
        >>> pair_names(10)(3)
        'pair 11 (negative)'
    """
    return lambda i: f"pair {first + i // 2} ({'positive' if i % 2 == 0 else 'negative'})"


def check_texts(
    lm: LM, texts: Sequence[str], names: Names | None = None, offsets: bool = False
) -> tuple[list[list[int]], list[Any] | None]:
    """Token ids of ``texts`` (and their offset mappings, with ``offsets``), each text checked
    against the model's :class:`~steerlab.limits.Limits` *before* any forward pass: its
    characters (``max_text_chars``, valid Unicode) before it is tokenised, its tokens against the
    context. Past its context a model does not fail, it reads garbage positions: a text that does
    not fit is refused, never truncated.

    Raises:
        LimitError: naming the text (``names(i)``) and the limit.
    """
    name = names or (lambda i: f"text {i}")
    limits = Limits.for_model(lm)
    for i, text in enumerate(texts):
        limits.check_text(text, name(i))
    enc = lm.tokenizer(list(texts), add_special_tokens=True, return_offsets_mapping=offsets, verbose=False)
    ids: list[list[int]] = enc["input_ids"]
    for i, x in enumerate(ids):
        limits.check_tokens(len(x), name(i))
    return ids, (enc["offset_mapping"] if offsets else None)


def _encode(
    lm: LM, texts: Sequence[str], reads: Read | Sequence[Read], names: Names | None = None
) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Token ids of ``texts`` (checked: :func:`check_texts`) and, per text, the token range
    ``[start, end)`` its read reduces over."""
    if not texts:
        raise DatasetError("no texts to capture")
    read_list = [reads] * len(texts) if isinstance(reads, (str, int, tuple)) else list(reads)
    if len(read_list) != len(texts):
        raise DatasetError(f"{len(read_list)} reads for {len(texts)} texts")
    for r in read_list:
        if validate_read(r) == "all":
            raise DatasetError("read='all' keeps every token: use capture_tokens() for that")
    need_offsets = any(r == "answer" for r in read_list)
    ids, offsets = check_texts(lm, texts, names, need_offsets)
    empty = next((i for i, x in enumerate(ids) if not x), None)
    if empty is not None:
        raise DatasetError(f"text {empty} ({texts[empty]!r}) has no tokens: drop it or add text")
    ranges = [
        _token_range(r, len(x), offsets[i] if offsets is not None else None, texts[i])
        for i, (r, x) in enumerate(zip(read_list, ids))
    ]
    return ids, ranges


def plan_capture(
    lm: LM, texts: Sequence[str], reads: Read | Sequence[Read] = "last", batch_size: int = 32
) -> trie.Plan:
    """The passes :func:`iter_capture` runs with ``share_prefix`` (counts: ``plan.tree.n_distinct``
    distinct prefixes, ``plan.n_computed`` tokens run, ``plan.n_padded`` positions, ``len(plan.passes)``)."""
    return _plan(lm, *_encode(lm, texts, reads), batch_size)


def _plan(lm: LM, ids: list[list[int]], ranges: list[tuple[int, int]], batch_size: int) -> trie.Plan:
    """Plan with a budget of ``batch_size`` × the longest text's positions per pass (what the plain
    path's longest batch holds)."""
    budget = batch_size * max(end for _, end in ranges)
    return trie.plan(ids, ranges, budget, pass_cost(lm), sliding_window(lm.model.config))


BLOCK_CALL_S = 3e-4
"""Seconds one decoder block's call costs beyond its arithmetic on an accelerator (Python, launches)."""
ACCELERATOR_FLOPS = {torch.float32: 3e13, torch.float16: 2e14, torch.bfloat16: 2e14}
"""Arithmetic an accelerator sustains on a small model's matrix products, FLOP/s, per weight dtype."""


def pass_cost(lm: LM) -> int:
    """What one more forward pass costs, in token positions, when planning passes.

    On a CPU a pass reads every weight once, about as long as computing 20-40 tokens, at any model
    size (:data:`steerlab.extraction.trie.PASS_COST`). On an accelerator the arithmetic is so fast that a
    block's call overhead (:data:`BLOCK_CALL_S`) is worth many tokens: its ratio to one token's
    ``2 × parameters`` FLOP, at least :data:`~steerlab.extraction.trie.PASS_COST`.
    """
    if lm.device.type == "cpu":
        return trie.PASS_COST
    weights = [p for block in lm.blocks for p in block.parameters()]
    if not weights:
        return trie.PASS_COST
    per_token = 2 * sum(p.numel() for p in weights) / ACCELERATOR_FLOPS.get(weights[0].dtype, 3e13)
    return max(trie.PASS_COST, round(len(lm.blocks) * BLOCK_CALL_S / per_token))


@dataclass(frozen=True)
class CaptureOptions:
    """How :func:`iter_capture` runs its passes (the keywords of :func:`capture`, see there).

    Example:
        >>> CaptureOptions(batch_size=8).share_prefix
        True
    """

    batch_size: int = 32
    padding_side: str | None = None
    progress: bool | None = None
    share_prefix: bool = True
    names: Names | None = None


def iter_capture(
    lm: LM,
    texts: Sequence[str],
    layers: Sequence[int] | range | int,
    reads: Read | Sequence[Read] = "last",
    options: CaptureOptions = CaptureOptions(),
    skip_batches: int = 0,
) -> Iterator[tuple[list[int], dict[int, torch.Tensor]]]:
    """Stream activations batch by batch: yields ``(text indices, {layer: [batch, d_model]})``.

    Every batch but the last has ``options.batch_size`` texts, in an order fixed by the texts, reads and
    ``batch_size``, so a run can resume by skipping the first ``skip_batches`` (their passes are not
    run unless a later batch needs them). With ``share_prefix`` each distinct token prefix is
    computed once (see the module docstring) and texts come in the order their reads complete;
    without, texts are length-sorted and every token of every text runs. Memory stays at one pass
    per level of the prefix tree (or one batch). Every text is checked before the first pass
    (:func:`check_texts`; ``names`` names them in errors).
    """
    batch_size = options.batch_size
    layer_list = check_layers(lm, layers)
    ids, ranges = _encode(lm, texts, reads, options.names)
    side = options.padding_side or lm.tokenizer.padding_side or "right"
    total = n_batches(len(texts), batch_size) - skip_batches
    enabled = options.progress if total > 1 else False
    if options.share_prefix and _can_share(lm):
        plan = _plan(lm, ids, ranges, batch_size)
        done = _run_plan(lm, plan, layer_list, side, skip_batches * batch_size)
        yield from track(_rebatch(done, batch_size), "capturing activations", total=total, enabled=enabled)
        return
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)][skip_batches:]
    for batch in track(batches, "capturing activations", enabled=enabled):
        yield batch, _forward_batch(lm, [ids[i] for i in batch], [ranges[i] for i in batch], layer_list, side)


def batch_order(lm: LM, share_prefix: bool) -> str:
    """A tag for the order in which :func:`iter_capture` yields texts: a run resumes (by skipping
    batches) only under the same order."""
    return f"prefix-tree-v1-cost{pass_cost(lm)}" if share_prefix and _can_share(lm) else "length-sorted"


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
    names: Names | None = None,
) -> dict[int, torch.Tensor]:
    """Read block-output activations of ``texts`` at ``layers``.

    Args:
        lm: the model.
        texts: already-rendered texts (see :func:`steerlab.data.pairs.render`).
        layers: block indices (negative from the end).
        reads: one :data:`~steerlab.data.pairs.Read` for all texts or one per text; ``"all"`` is not
            allowed here (use :func:`capture_tokens`).
        batch_size: texts per forward pass.
        padding_side: ``"left"`` or ``"right"``; default the tokenizer's.
        progress: show a progress bar (default: on unless ``STEERLAB_QUIET``).
        share_prefix: compute every distinct token prefix of ``texts`` once (same activations up to
            float rounding; ``False`` runs every token of every text).
        names: what errors call text ``i`` (a text over ``max_text_chars`` or the model's context
            is refused before any pass: :func:`check_texts`).

    Returns:
        ``{layer: float32 CPU tensor [len(texts), d_model]}``.
    """
    layer_list = check_layers(lm, layers)
    out = {layer: torch.empty(len(texts), lm.d_model, dtype=torch.float32) for layer in layer_list}
    options = CaptureOptions(batch_size, padding_side, progress, share_prefix, names)
    for batch, acts in iter_capture(lm, texts, layer_list, reads, options):
        index = torch.tensor(batch)
        for layer in layer_list:
            out[layer][index] = acts[layer]
    return out


def capture_tokens(lm: LM, text: str | list[int], layers: Sequence[int] | range | int) -> dict[int, torch.Tensor]:
    """Activations of every token of one text (or token-id list): ``{layer: [n_tokens, d_model]}``."""
    layer_list = check_layers(lm, layers)
    ids = check_texts(lm, [text], lambda _: "the text")[0][0] if isinstance(text, str) else text
    Limits.for_model(lm).check_tokens(len(ids), "the text")
    return _forward_batch(lm, [ids], [(0, len(ids))], layer_list, "right", keep_tokens=True)


def _can_share(lm: LM) -> bool:
    """Whether passes can continue from a cache with explicit positions (else warn once)."""
    if can_continue(lm):
        return True
    if id(lm.model) not in _WARNED:
        _WARNED.add(id(lm.model))
        warnings.warn(
            f"{type(lm.model).__name__}.forward takes no position_ids or KV cache ({hf_env.versions()}): "
            "shared prefixes run once per text (share_prefix has no effect; results are the same)",
            RuntimeWarning,
            stacklevel=4,
        )
    return False


_WARNED: set[int] = set()


@dataclass
class _Ran(Prefix):
    """A pass that has run: the prefix its rows leave (its cache, while later passes continue from
    it, and its full attention mask) and, per layer, the sums of its read ranges ``[n_ranges, d_model]``."""

    sums: dict[int, torch.Tensor]


def _run_plan(
    lm: LM, plan: trie.Plan, layers: list[int], side: str, skip: int
) -> Iterator[tuple[list[int], dict[int, torch.Tensor]]]:
    """Run ``plan``'s passes in order, yielding the texts each completes with their reads; the
    first ``skip`` texts of :meth:`~steerlab.extraction.trie.Plan.order` are not yielded, and passes that
    only they need are not run."""
    position = {t: i for i, t in enumerate(plan.order())}
    needed = _needed(plan, position, skip)
    last_child: dict[int, int] = {}
    for p, ps in enumerate(plan.passes):
        if needed[p] and ps.parent >= 0:
            last_child[ps.parent] = p
    alive: list[tuple[int, _Ran]] = []  # the passes from a root to the current one
    for p, ps in enumerate(plan.passes):
        if not needed[p]:
            continue
        while alive and alive[-1][0] != ps.parent:
            alive.pop()
        parent = alive[-1][1] if alive else None
        ran = _run_pass(lm, plan, p, layers, side, parent, p in last_child, last_child.get(ps.parent) == p)
        alive.append((p, ran))
        texts = [t for t in plan.done[p] if position[t] >= skip]
        if texts:
            yield texts, _gather(plan, texts, dict(alive), layers, lm.d_model)


def _needed(plan: trie.Plan, position: dict[int, int], skip: int) -> list[bool]:
    """Per pass: whether it or a pass after it in its subtree completes a text not skipped."""
    last = [max((position[t] for t in texts), default=-1) for texts in plan.done]
    for p in range(len(plan.passes) - 1, -1, -1):  # children come after their parent
        parent = plan.passes[p].parent
        if parent >= 0:
            last[parent] = max(last[parent], last[p])
    return [n >= skip for n in last]


def _run_pass(
    lm: LM, plan: trie.Plan, p: int, layers: list[int], side: str, parent: _Ran | None, keep: bool, last: bool
) -> _Ran:
    """Run pass ``p`` (continuing from ``parent``'s cache; its last child takes the cache over)
    and sum its read ranges; keep its own cache if passes continue from it."""
    ps = plan.passes[p]
    rows = [plan.tree.tokens(s, start) for s, start in zip(ps.segments, ps.starts)]
    input_ids, mask = pad_token_ids(rows, pad_id(lm.tokenizer), side)
    input_ids, mask = input_ids.to(lm.device), mask.to(lm.device)
    prefix = None
    if ps.cached:
        assert parent is not None and parent.cache is not None and parent.width == ps.context
        # a CPU index works for the cache on any device; the last child takes the cache over
        prefix = parent.rows(torch.tensor(ps.parent_rows), take=last)
    offsets = [ps.width - len(r) if side == "left" else 0 for r in rows]
    flat, owner = _range_positions(plan.ranges[p], ps.width, offsets)
    sums: dict[int, torch.Tensor] = {}

    def make_hook(layer: int) -> BlockHook:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            h = hf.block_hidden(output).flatten(0, 1)
            picked = h[flat.to(h.device)].float()
            total = torch.zeros(len(plan.ranges[p]), h.shape[-1], dtype=torch.float32, device=h.device)
            sums[layer] = total.index_add_(0, owner.to(h.device), picked).cpu()

        return hook

    hooks = {layer: make_hook(layer) for layer in layers} if plan.ranges[p] else {}
    with torch.inference_mode():
        _, ran = extend(lm, input_ids, mask, prefix, keep=keep, until=max(layers), hooks=hooks)
    return _Ran(ran.cache, ran.mask, sums)


def _range_positions(
    ranges: list[tuple[int, int, int]], width: int, offsets: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``(row, start, end)`` ranges of a ``[rows, width]`` pass: the flat positions they cover
    and, per position, which range it belongs to."""
    flat: list[int] = []
    owner: list[int] = []
    for i, (row, start, end) in enumerate(ranges):
        base = row * width + offsets[row]
        flat += range(base + start, base + end)
        owner += [i] * (end - start)
    return torch.tensor(flat, dtype=torch.long), torch.tensor(owner, dtype=torch.long)


def _gather(
    plan: trie.Plan, texts: list[int], ran: dict[int, _Ran], layers: list[int], d_model: int
) -> dict[int, torch.Tensor]:
    """The reads of ``texts``: the sums of their ranges over the passes they span, averaged."""
    by_pass: dict[int, tuple[list[int], list[int]]] = {}
    count = torch.zeros(len(texts), 1)
    for i, t in enumerate(texts):
        for q, r in plan.parts[t]:
            rows, picks = by_pass.setdefault(q, ([], []))
            rows.append(i)
            picks.append(r)
            _, start, end = plan.ranges[q][r]
            count[i] += end - start
    out = {}
    for layer in layers:
        acts = torch.zeros(len(texts), d_model, dtype=torch.float32)
        for q, (rows, picks) in by_pass.items():
            acts.index_add_(0, torch.tensor(rows), ran[q].sums[layer][torch.tensor(picks)])
        out[layer] = acts / count
    return out


def _rebatch(
    items: Iterator[tuple[list[int], dict[int, torch.Tensor]]], size: int
) -> Iterator[tuple[list[int], dict[int, torch.Tensor]]]:
    """Regroup ``(texts, {layer: acts})`` items into batches of exactly ``size`` texts (the last
    one smaller), keeping their order."""
    texts: list[int] = []
    parts: list[dict[int, torch.Tensor]] = []
    for batch, acts in items:
        texts += batch
        parts.append(acts)
        while len(texts) >= size:
            merged = {k: torch.cat([a[k] for a in parts]) for k in parts[0]}
            yield texts[:size], {k: v[:size].clone() for k, v in merged.items()}
            texts = texts[size:]
            parts = [{k: v[size:] for k, v in merged.items()}] if texts else []
    if texts:
        yield texts, {k: torch.cat([a[k] for a in parts]) for k in parts[0]}


def _forward_batch(
    lm: LM,
    ids: list[list[int]],
    ranges: list[tuple[int, int]],
    layers: list[int],
    side: str,
    keep_tokens: bool = False,
) -> dict[int, torch.Tensor]:
    """One padded forward pass over whole texts, stopped after ``max(layers)``, reducing read
    ranges in the hooks (every token of every text runs: the plain path)."""
    device = lm.device
    input_ids, mask = pad_token_ids(ids, pad_id(lm.tokenizer), side)
    width = input_ids.shape[1]
    weights = torch.zeros((len(ids), width), dtype=torch.float32)
    for row, (seq, (start, end)) in enumerate(zip(ids, ranges)):
        off = width - len(seq) if side == "left" else 0
        weights[row, off + start : off + end] = 1.0 / (end - start)
    input_ids, mask = input_ids.to(device), mask.to(device)
    result: dict[int, torch.Tensor] = {}

    def make_hook(layer: int) -> BlockHook:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            h = hf.block_hidden(output)
            if keep_tokens:
                result[layer] = h[0].float().cpu()
            else:
                w = weights.to(device=h.device, dtype=h.dtype)
                result[layer] = torch.einsum("bl,bld->bd", w, h).float().cpu()

        return hook

    hooks = {layer: make_hook(layer) for layer in layers}
    with torch.inference_mode():
        run_until(lm, max(layers), input_ids, mask, hooks=hooks, position_ids=position_ids(mask), use_cache=False)
    return result
