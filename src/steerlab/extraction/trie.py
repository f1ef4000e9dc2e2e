"""Every distinct token prefix once: a prefix tree over a dataset's token ids, cut into forward passes.

A causal model's activation at a token depends only on the tokens up to it, so across a whole
dataset each distinct token prefix needs computing once. :func:`build_tree` merges the token-id
sequences into a radix tree of :class:`Segment` s (runs of tokens with no branch inside; identical
sequences merge, and a sequence that is a prefix of another ends inside the longer one's segments).
:func:`plan_passes` cuts the tree into forward passes: a :class:`Pass` runs a group of segments as
padded rows, each row continuing from the key/value cache of the pass that ran its parent segment.
Passes are numbered in the depth-first order they run in, so only the passes on the path from a
root to the current one are alive at any time (memory is bounded by the tree's depth, not its
size). Which segments share a pass is chosen per group of siblings: sorted by length and cut where
the padding a longer row would add costs more than one more forward call (:data:`PASS_COST`), and
so that no pass holds more token positions (cache included) than ``budget``.

Pure Python: :mod:`steerlab.extraction.capture` runs the plan.

Example:
    >>> tree = build_tree([[1, 2, 3, 4], [1, 2, 5], [1, 2], [1, 2, 5]])
    >>> [(s.start, s.end, s.parent) for s in tree.segments], tree.n_distinct
    ([(0, 2, -1), (2, 4, 0), (2, 3, 0)], 5)
    >>> [(p.segments, p.starts) for p in plan_passes(tree, budget=64, pass_cost=1)[0]]
    [([0], [0]), ([2], [2]), ([1], [2])]
    >>> [(p.segments, p.starts) for p in plan_passes(tree, budget=64)[0]]  # [1, 2] is cheaper to repeat
    [([2, 1], [0, 0])]
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

PASS_COST = 32
"""What one more forward call costs, in padded token positions (the default on a CPU: a call reads
every weight once, which for a 135M-parameter model takes about as long as computing ~25 tokens)."""


@dataclass
class Segment:
    """Tokens ``[start, end)`` of the sequence ``tree.paths[path]``, a run with no branch inside;
    it follows segment ``parent`` (-1: it starts at the first token)."""

    start: int
    end: int
    path: int
    parent: int
    children: list[int] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass
class Tree:
    """A radix tree over token-id sequences.

    Attributes:
        paths: the distinct sequences, in first-seen order.
        path_of: per input sequence, its index in ``paths``.
        segments: the tree's runs of tokens; ``roots`` are those that start at the first token.
        end_segment: per path, the segment that holds its last token.
    """

    paths: list[tuple[int, ...]]
    path_of: list[int]
    segments: list[Segment]
    roots: list[int]
    end_segment: list[int]

    @property
    def n_distinct(self) -> int:
        """Distinct non-empty prefixes of the sequences (the tree's tokens)."""
        return sum(s.length for s in self.segments)

    def tokens(self, segment: int, start: int | None = None) -> tuple[int, ...]:
        """Token ids of ``segment`` (from depth ``start`` instead of its own start if given)."""
        s = self.segments[segment]
        return self.paths[s.path][s.start if start is None else start : s.end]

    def path_segments(self, path: int) -> list[int]:
        """The segments on ``path``, from its first token to its last."""
        out = [self.end_segment[path]]
        while self.segments[out[-1]].parent >= 0:
            out.append(self.segments[out[-1]].parent)
        return out[::-1]


def build_tree(sequences: Sequence[Sequence[int]]) -> Tree:
    """The radix tree of ``sequences`` (each at least one token long).

    Sequences are inserted in sorted order, so each one shares its longest common prefix with the
    one before it: the segments of the previous sequence below that depth are complete, the one that
    crosses it is split, and the new sequence's remaining tokens become one new segment (or extend
    the previous one's last segment when the previous sequence is a prefix of it).
    """
    index: dict[tuple[int, ...], int] = {}
    path_of = [index.setdefault(tuple(seq), len(index)) for seq in sequences]
    paths = list(index)
    tree = Tree(paths, path_of, [], [], [-1] * len(paths))
    ends: list[list[int]] = []  # per segment: the paths whose last token it holds
    stack: list[int] = []  # the segments on the previous path
    previous: tuple[int, ...] = ()
    for p in sorted(range(len(paths)), key=paths.__getitem__):
        path = paths[p]
        shared = _shared_length(previous, path)
        while stack and tree.segments[stack[-1]].start >= shared:
            stack.pop()
        top = stack[-1] if stack else -1
        if top >= 0 and tree.segments[top].end > shared:
            _split(tree, ends, top, shared)
        if top >= 0 and not tree.segments[top].children and len(previous) == shared:
            tree.segments[top].end, tree.segments[top].path = len(path), p  # the previous path is a prefix
        else:
            tree.segments.append(Segment(shared, len(path), p, top))
            ends.append([])
            (tree.segments[top].children if top >= 0 else tree.roots).append(len(tree.segments) - 1)
            stack.append(len(tree.segments) - 1)
        ends[stack[-1]].append(p)
        tree.end_segment[p] = stack[-1]
        previous = path
    return tree


def _shared_length(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Length of the common prefix of ``a`` and ``b``."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def _split(tree: Tree, ends: list[list[int]], seg: int, depth: int) -> None:
    """Cut segment ``seg`` at ``depth``: its tokens from ``depth`` on become its only child."""
    s = tree.segments[seg]
    lower = len(tree.segments)
    tree.segments.append(Segment(depth, s.end, s.path, seg, s.children))
    for child in s.children:
        tree.segments[child].parent = lower
    s.end, s.children = depth, [lower]
    moved = [p for p in ends[seg] if len(tree.paths[p]) > depth]
    ends[seg] = [p for p in ends[seg] if len(tree.paths[p]) <= depth]
    ends.append(moved)
    for p in moved:
        tree.end_segment[p] = lower


@dataclass
class Pass:
    """One forward pass: row ``r`` runs the tokens of segment ``segments[r]`` from depth
    ``starts[r]``, continuing from row ``parent_rows[r]`` of pass ``parent``'s key/value cache (of
    ``context`` columns); a pass with ``context == 0`` starts from nothing and its rows run from
    depth 0. ``parent`` is the pass that ran the rows' parent segments (even when its cache is not
    used; -1 for roots)."""

    segments: list[int]
    starts: list[int]
    parent: int
    parent_rows: list[int]
    context: int
    width: int

    @property
    def cached(self) -> bool:
        """Whether the rows continue from the parent pass's cache."""
        return self.context > 0


class _Row(NamedTuple):
    """A row to plan: segment ``segment`` run from depth ``start``, continuing from the row of
    segment ``anchor`` (-1: from nothing)."""

    segment: int
    start: int
    anchor: int


def plan_passes(
    tree: Tree, budget: int, pass_cost: int = PASS_COST, window: int | None = None
) -> tuple[list[Pass], dict[int, tuple[int, int]]]:
    """Cut ``tree`` into forward passes, in the (depth-first) order they run; and where each
    segment's tokens are run: ``{segment: (pass, row)}``.

    The children of a pass's rows are grouped into child passes (:func:`partition`). A pass holds
    at most ``budget`` token positions, its cache included (a single row may exceed it). A group
    of one segment whose run costs less than a pass is run inside each of its children's rows
    instead (a short common opening, such as a lone BOS token). With a sliding ``window``, a cache
    keeps only the last ``window`` tokens, so a row whose context and own tokens exceed it starts
    from nothing and runs its whole prefix (start 0).
    """
    planner = _Planner(tree, budget, pass_cost, window)
    todo = [(-1, rows, 0) for rows, _ in reversed(planner.groups([_Row(r, 0, -1) for r in tree.roots], 0))]
    while todo:
        parent, rows, context = todo.pop()
        p = planner.add(parent, rows, context)
        ps = planner.passes[p]
        children = [_Row(c, tree.segments[c].start, r.segment) for r in rows for c in tree.segments[r.segment].children]
        if children:
            todo.extend((p, g, ctx) for g, ctx in reversed(planner.groups(children, context + ps.width)))
    where = planner.where
    for seg, host in reversed(planner.hosted):
        where[seg] = where[host]
    return planner.passes, where


class _Planner:
    """The state of :func:`plan_passes`: passes so far, where segments run, inlined segments."""

    def __init__(self, tree: Tree, budget: int, pass_cost: int, window: int | None) -> None:
        self.tree, self.budget, self.pass_cost, self.window = tree, budget, pass_cost, window
        self.passes: list[Pass] = []
        self.where: dict[int, tuple[int, int]] = {}
        self.hosted: list[tuple[int, int]] = []  # (segment, the child whose rows run it), in order

    def add(self, parent: int, rows: list[_Row], context: int) -> int:
        """Append the pass of ``rows``; return its index."""
        p = len(self.passes)
        segs = self.tree.segments
        parent_rows = [self.where[r.anchor][1] if context else -1 for r in rows]
        width = max(segs[r.segment].end - r.start for r in rows)
        self.passes.append(
            Pass([r.segment for r in rows], [r.start for r in rows], parent, parent_rows, context, width)
        )
        self.where.update((r.segment, (p, i)) for i, r in enumerate(rows))
        return p

    def groups(self, rows: list[_Row], context: int) -> list[tuple[list[_Row], int]]:
        """Sibling rows (continuing from ``context`` cache columns) cut into passes: ``(rows,
        context)``, context 0 for rows that start from nothing (roots, or past the window)."""
        segs = self.tree.segments
        fits = [r for r in rows if context and self._fits(context, segs[r.segment].end - r.start)]
        fitting = set(fits)
        fresh = [r._replace(start=0, anchor=-1) for r in rows if r not in fitting]
        out: list[tuple[list[_Row], int]] = []
        for group, ctx in ((fits, context), (fresh, 0)):
            group = self._inline(group, ctx)
            width = {r: segs[r.segment].end - r.start for r in group}
            ordered = sorted(group, key=lambda r: (width[r], r.segment))
            spawns = [bool(segs[r.segment].children) for r in ordered]
            cuts = partition([width[r] for r in ordered], ctx, self.budget, self.pass_cost, spawns)
            out += [(ordered[i:j], ctx) for i, j in itertools.pairwise(cuts)]
        return out

    def _fits(self, context: int, width: int) -> bool:
        return self.window is None or context + width <= self.window

    def _inline(self, rows: list[_Row], context: int) -> list[_Row]:
        """While ``rows`` is one segment with children, run it inside its children's rows when that
        repeats fewer tokens than a pass costs, or when none of them could continue from its cache
        (past the window) anyway."""
        segs = self.tree.segments
        while len(rows) == 1 and segs[rows[0].segment].children:
            row, children = rows[0], segs[rows[0].segment].children
            width = segs[row.segment].end - row.start
            cheap = width * (len(children) - 1) <= self.pass_cost
            useless = not any(self._fits(context + width, segs[c].length) for c in children)
            longest = max(segs[c].end for c in children) - row.start
            if not (cheap or useless) or (context and not self._fits(context, longest)):
                break
            self.hosted.append((row.segment, children[0]))
            rows = [row._replace(segment=c) for c in children]
        return rows


def partition(
    widths: Sequence[int],
    context: int,
    budget: int,
    pass_cost: int = PASS_COST,
    spawns: Sequence[bool] | None = None,
) -> list[int]:
    """Cut points ``[0, ..., len(widths)]`` splitting ascending ``widths`` into passes at least cost.

    A pass of rows ``i..j-1`` costs ``pass_cost + (j - i) × widths[j - 1]`` (every row padded to
    the longest), one ``pass_cost`` more if one of its rows ``spawns`` (has children: they run in
    passes of their own, which one more cut multiplies), and may hold ``(j - i) × (context +
    widths[j - 1]) <= budget`` positions.

    Example:
        >>> partition([1, 1, 2, 6, 7], context=0, budget=1000, pass_cost=10)
        [0, 3, 5]
        >>> partition([1, 1, 2, 6, 7], context=0, budget=1000, pass_cost=10, spawns=[True] * 5)
        [0, 5]
    """
    n = len(widths)
    best = [0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = widths[j - 1]
        rows = max(1, budget // (context + width))
        spawned = False
        for i in range(j - 1, max(j - rows, 0) - 1, -1):
            spawned = spawned or bool(spawns and spawns[i])
            cost = best[i] + pass_cost * (1 + spawned) + (j - i) * width
            if cost < best[j]:
                best[j], cut[j] = cost, i
    out = [n]
    while out[-1] > 0:
        out.append(cut[out[-1]])
    return out[::-1]


def _rows_on_path(
    tree: Tree, passes: list[Pass], where: dict[int, tuple[int, int]], path: int
) -> list[tuple[int, tuple[int, int]]]:
    """The segments on ``path`` with the ``(pass, row)`` that runs each for this path: a segment run
    inside its children's rows is read from the row of the child the path goes through (the
    passes that complete the path's reads descend from that row's pass, not another child's)."""
    out = []
    below: tuple[int, int] | None = None
    for seg in reversed(tree.path_segments(path)):
        p, row = where[seg]
        if passes[p].segments[row] == seg or below is None:
            below = (p, row)
        out.append((seg, below))
    return out[::-1]


@dataclass
class Plan:
    """A tree, its passes and where each text's read positions are computed.

    Attributes:
        tree: the prefix tree of the texts' token ids (each cut after its last read token).
        passes: the forward passes, in the order they run.
        ranges: per pass, the distinct ``(row, start, end)`` token ranges (in the row's own
            tokens) that some text reads.
        parts: per text, the ``(pass, range)`` pairs whose sums add up to its read.
        done: per pass, the texts (ascending) whose last read token it computes.
    """

    tree: Tree
    passes: list[Pass]
    ranges: list[list[tuple[int, int, int]]]
    parts: list[list[tuple[int, int]]]
    done: list[list[int]]

    @property
    def n_computed(self) -> int:
        """Tokens the passes run (the tree's distinct prefixes, plus any rerun for a window)."""
        return sum(self.tree.segments[s].end - start for p in self.passes for s, start in zip(p.segments, p.starts))

    @property
    def n_padded(self) -> int:
        """Token positions the passes run, padding included."""
        return sum(len(p.segments) * p.width for p in self.passes)

    def order(self) -> list[int]:
        """The texts in the order their reads complete."""
        return [t for texts in self.done for t in texts]


def plan(
    sequences: Sequence[Sequence[int]],
    spans: Sequence[tuple[int, int]],
    budget: int,
    pass_cost: int = PASS_COST,
    window: int | None = None,
) -> Plan:
    """Plan reading tokens ``spans[i] = (start, end)`` of every ``sequences[i]``.

    Tokens after a span's end cannot change it, so each sequence enters the tree cut there.

    Example:
        >>> p = plan([[1, 2, 3], [1, 2, 4], [1, 2]], [(2, 3), (0, 3), (1, 2)], budget=64, pass_cost=0)
        >>> p.n_computed, len(p.passes), p.order()
        (4, 3, [2, 0, 1])
    """
    tree = build_tree([seq[:end] for seq, (_, end) in zip(sequences, spans)])
    passes, where = plan_passes(tree, budget, pass_cost, window)
    ranges: list[list[tuple[int, int, int]]] = [[] for _ in passes]
    index: list[dict[tuple[int, int, int], int]] = [{} for _ in passes]
    parts: list[list[tuple[int, int]]] = []
    done: list[list[int]] = [[] for _ in passes]
    for text, (path, (start, end)) in enumerate(zip(tree.path_of, spans)):
        mine = []
        for seg, (p, row) in _rows_on_path(tree, passes, where, path):
            s = tree.segments[seg]
            lo, hi = max(start, s.start), min(end, s.end)
            if lo < hi:
                key = (row, lo - passes[p].starts[row], hi - passes[p].starts[row])
                if key not in index[p]:
                    index[p][key] = len(ranges[p])
                    ranges[p].append(key)
                mine.append((p, index[p][key]))
        parts.append(mine)
        done[where[tree.end_segment[path]][0]].append(text)
    return Plan(tree, passes, ranges, parts, done)
