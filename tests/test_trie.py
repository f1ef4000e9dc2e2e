"""The prefix tree (steerlab.extraction.trie): every distinct token prefix once, passes that can run, reads that
add up; and capture through it equal to the full forward."""

from __future__ import annotations

import importlib
import itertools
import random
import weakref

import pytest
import torch

import steerlab
from steerlab.extraction import trie
from steerlab.runtime import hf, passes

from .conftest import CAA, REPE
from .context_fit import caa_items_within_context

capture_mod = importlib.import_module("steerlab.extraction.capture")


def _random_sequences(rng: random.Random, n: int) -> list[list[int]]:
    """Sequences over a tiny vocabulary that share prefixes, repeat, and are prefixes of each other."""
    seqs: list[list[int]] = []
    for _ in range(n):
        if seqs and rng.random() < 0.5:
            base = rng.choice(seqs)
            seq = base[: rng.randint(1, len(base))] + [rng.randint(0, 3) for _ in range(rng.randint(0, 4))]
        else:
            seq = [rng.randint(0, 3) for _ in range(rng.randint(1, 9))]
        seqs.append(seq)
    return seqs


def _distinct_prefixes(seqs: list[list[int]]) -> int:
    return len({tuple(s[:i]) for s in seqs for i in range(1, len(s) + 1)})


@pytest.mark.parametrize("seed", range(20))
def test_tree_holds_every_sequence_and_each_prefix_once(seed: int) -> None:
    seqs = _random_sequences(random.Random(seed), 30)
    tree = trie.build_tree(seqs)
    assert tree.n_distinct == _distinct_prefixes(seqs)
    for seq, path in zip(seqs, tree.path_of):
        assert tree.paths[path] == tuple(seq)
        segs = tree.path_segments(path)
        assert [x for s in segs for x in tree.tokens(s)][: len(seq)] == seq
        assert tree.segments[segs[-1]].start < len(seq) <= tree.segments[segs[-1]].end
    for i, s in enumerate(tree.segments):  # runs with no branch inside: a split has >= 2 children
        assert s.length > 0 and all(tree.segments[c].parent == i for c in s.children)
        assert len(s.children) != 1 or any(tree.end_segment[p] == i for p in range(len(tree.paths)))


def test_duplicates_and_prefixes_share_the_longer_forward() -> None:
    tree = trie.build_tree([[5, 1, 2, 3], [5, 1], [5, 1, 2, 3], [5, 1, 2]])
    assert len(tree.segments) == 1 and tree.n_distinct == 4
    assert tree.path_of == [0, 1, 0, 2]


@pytest.mark.parametrize("seed", range(10))
def test_partition_is_optimal(seed: int) -> None:
    rng = random.Random(seed)
    widths = sorted(rng.randint(1, 20) for _ in range(rng.randint(1, 8)))
    context, budget, cost = rng.randint(0, 10), rng.randint(20, 80), rng.randint(0, 30)
    spawns = [rng.random() < 0.3 for _ in widths]
    cuts = trie.partition(widths, context, budget, cost, spawns)

    def total(cs: list[int]) -> float:
        out = 0
        for i, j in itertools.pairwise(cs):
            if j - i > 1 and (j - i) * (context + widths[j - 1]) > budget:
                return float("inf")
            out += cost * (1 + any(spawns[i:j])) + (j - i) * widths[j - 1]
        return out

    inner = range(1, len(widths))
    best = min(total([0, *c, len(widths)]) for k in range(len(widths)) for c in itertools.combinations(inner, k))
    assert total(cuts) == best < float("inf")


@pytest.mark.parametrize("window", [None, 6])
@pytest.mark.parametrize("seed", range(10))
def test_passes_can_run(seed: int, window: int | None) -> None:
    """Every row continues from its parent's row in an earlier pass that ends where it starts;
    caches fit the window; every segment runs once (or inside a child's row); budget holds."""
    seqs = _random_sequences(random.Random(seed), 25)
    tree = trie.build_tree(seqs)
    budget = 40
    passes, where = trie.plan_passes(tree, budget, pass_cost=4, window=window)
    assert set(where) == set(range(len(tree.segments)))
    for p, ps in enumerate(passes):
        assert ps.parent < p
        if len(ps.segments) > 1:
            assert len(ps.segments) * (ps.context + ps.width) <= budget
        for seg, start, prow in zip(ps.segments, ps.starts, ps.parent_rows):
            assert where[seg] == (p, ps.segments.index(seg))
            assert 0 < tree.segments[seg].end - start <= ps.width
            if not ps.cached:
                assert start == 0 and prow == -1
                continue
            parent = passes[ps.parent]
            assert parent.context + parent.width == ps.context
            assert tree.segments[parent.segments[prow]].end == start  # continues exactly there
            assert window is None or ps.context + ps.width <= window
    run = sorted(s for ps in passes for s in ps.segments)
    assert len(run) == len(set(run))


@pytest.mark.parametrize("seed", range(10))
def test_reads_add_up_to_each_span(seed: int) -> None:
    rng = random.Random(seed)
    seqs = _random_sequences(rng, 25)
    spans = []
    for s in seqs:
        a = rng.randrange(len(s))
        spans.append((a, rng.randint(a + 1, len(s))))
    plan = trie.plan(seqs, spans, budget=30, pass_cost=3 * (seed % 3), window=5 if seed % 2 else None)
    assert sorted(plan.order()) == list(range(len(seqs)))
    completes = {t: p for p, texts in enumerate(plan.done) for t in texts}
    for t, (seq, (a, b)) in enumerate(zip(seqs, spans)):
        tokens = []
        chain = {completes[t]}  # the passes alive when the text completes: its pass and its ancestors
        while plan.passes[min(chain)].parent >= 0:
            chain.add(plan.passes[min(chain)].parent)
        for p, r in plan.parts[t]:  # in the order of the text's tokens
            assert p in chain
            row, lo, hi = plan.ranges[p][r]
            ps = plan.passes[p]
            tokens += plan.tree.tokens(ps.segments[row], ps.starts[row])[lo:hi]
        assert tokens == seq[a:b]


def test_a_short_opening_runs_inside_each_row() -> None:
    """A lone shared BOS costs less to repeat than a pass of its own: every row runs it, and each
    text reads it from its own row (the rows may land in passes that do not descend from one
    another)."""
    seqs = [[9, 1], [9, 2, 2, 2, 2, 2, 2, 2, 2], [9]]
    plan = trie.plan(seqs, [(0, 2), (0, 9), (0, 1)], budget=100, pass_cost=3)
    assert [p.segments for p in plan.passes] == [[1], [2]] and all(p.parent == -1 for p in plan.passes)
    assert plan.n_computed == 2 + 9 and plan.tree.n_distinct == 10
    for t, parts in enumerate(plan.parts):
        assert {p for p, _ in parts} == {next(p for p, done in enumerate(plan.done) if t in done)}


# ---------------------------------------------------------------- capture through the tree
class _Counter:
    """Counts the real (unpadded) new tokens and the forward calls that continue from a cache."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.tokens = self.cached_calls = self.calls = 0
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, model: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        got = hf.call_inputs(model, args, kwargs)
        assert got.attention_mask is not None
        self.tokens += int(got.attention_mask[:, -got.length :].sum())
        self.calls += 1
        self.cached_calls += bool(got.past)

    def __enter__(self) -> _Counter:
        return self

    def __exit__(self, *_: object) -> None:
        self.handle.remove()


def _texts(lm: steerlab.LM) -> list[str]:
    """Persona texts (RepE openings are prefixes of one another), a text that is a prefix of
    another, duplicates, and CAA-style answers."""
    openings = steerlab.load_openings(REPE / "all_truncated_outputs.json")[:12]
    texts = [f"Act as if you're extremely {p}. {o}" for p in ("happy", "sad") for o in openings]
    texts += [
        texts[0],
        texts[3],
        "Question?\n (A) yes\n (B) no\nAnswer: (A)",
        "Question?\n (A) yes\n (B) no\nAnswer: (B)",
    ]
    texts.append(texts[1][: len(texts[1]) // 2])
    return texts


@pytest.mark.parametrize("read", ["last", "mean", 0, 2, -2, (1, 4), (2, -1)])
def test_capture_equals_the_full_forward(lm: steerlab.LM, read: object) -> None:
    texts = _texts(lm)
    ids = [lm.tokenizer(t)["input_ids"] for t in texts]
    for side in ("left", "right"):
        full = steerlab.capture(lm, texts, [0, 2, 4], read, batch_size=5, padding_side=side, share_prefix=False)
        with _Counter(lm.model) as count:
            shared = steerlab.capture(lm, texts, [0, 2, 4], read, batch_size=5, padding_side=side)
        for k in full:
            # float noise: prefix-shared passes continue from caches (other shapes than one full forward);
            # measured max |difference| 1.0e-5 / 9.5e-6 / 8.6e-6 (AVX512 / AVX2 / default): >= 24x margin
            torch.testing.assert_close(shared[k], full[k], atol=1e-4, rtol=1e-4)
        plan = capture_mod.plan_capture(lm, texts, read, batch_size=5)
        assert count.tokens == plan.n_computed and count.calls == len(plan.passes)
        if read == "mean":
            assert plan.tree.n_distinct == _distinct_prefixes(ids)
        assert plan.n_computed <= plan.tree.n_distinct + 3 * len(texts)  # a short opening may repeat


def test_answer_reads_and_caa_pairs(lm: steerlab.LM) -> None:
    """CAA pairs read at the answer letter: each pair's question runs once (the tokens after the
    letter are not run at all), and the vector equals the full forward's."""
    syc = CAA / "generate" / "sycophancy" / "generate_dataset.json"
    pairs = steerlab.caa_pairs(caa_items_within_context(lm, syc, 6))
    texts = [steerlab.data.pairs.render(s, lm) for p in pairs for s in (p.positive, p.negative)]
    full = steerlab.capture(lm, texts, [1, 3], "answer", share_prefix=False)
    with _Counter(lm.model) as count:
        shared = steerlab.capture(lm, texts, [1, 3], "answer")
    for k in full:
        # float noise, as above: measured max |difference| 2.6e-6 / 3.6e-6 / 3.6e-6 (AVX512 / AVX2 / default)
        torch.testing.assert_close(shared[k], full[k], atol=1e-4, rtol=1e-4)
    plan = capture_mod.plan_capture(lm, texts, "answer")
    questions = sum(len(x) for x in lm.tokenizer(texts[0::2])["input_ids"])
    # each pair's question runs once (a short prefix shared *across* pairs may be run again rather
    # than cost a pass of its own: trie.PASS_COST)
    assert count.tokens == plan.n_computed and plan.tree.n_distinct <= plan.n_computed <= questions + len(pairs)
    assert count.cached_calls > 0
    letters = [lm.tokenizer(t, return_offsets_mapping=True) for t in texts]
    assert plan.tree.n_distinct < sum(len(x["input_ids"]) for x in letters) * 0.6


def test_streaming_resumes_exactly(lm: steerlab.LM) -> None:
    """Batches come in a fixed order of exactly batch_size texts; skipping k of them yields the
    same later batches and runs fewer passes."""
    texts = _texts(lm)
    everything = list(capture_mod.iter_capture(lm, texts, [1, 3], "mean", capture_mod.CaptureOptions(batch_size=4)))
    assert [len(b) for b, _ in everything] == [4] * (len(texts) // 4) + ([len(texts) % 4] if len(texts) % 4 else [])
    assert sorted(t for b, _ in everything for t in b) == list(range(len(texts)))
    with _Counter(lm.model) as all_calls:
        list(capture_mod.iter_capture(lm, texts, [1, 3], "mean", capture_mod.CaptureOptions(batch_size=4)))
    with _Counter(lm.model) as resumed_calls:
        resumed = list(
            capture_mod.iter_capture(
                lm, texts, [1, 3], "mean", capture_mod.CaptureOptions(batch_size=4), skip_batches=3
            )
        )
    assert resumed_calls.calls < all_calls.calls
    assert [b for b, _ in resumed] == [b for b, _ in everything[3:]]
    for (_, a), (_, b) in zip(resumed, everything[3:]):
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)


def test_extraction_checkpoint_resumes_with_sharing(lm: steerlab.LM, tmp_path, monkeypatch) -> None:
    accumulate_mod = importlib.import_module("steerlab.extraction.accumulate")
    openings = steerlab.load_openings(REPE / "all_truncated_outputs.json")[:20]
    pairs = steerlab.persona_pairs("happy", "sad", openings)
    want = steerlab.extract(lm, pairs, layers=[2, 4], batch_size=6, share_prefix=False)
    real = capture_mod.iter_capture

    def interrupted(*args, **kwargs):
        for n, item in enumerate(real(*args, **kwargs)):
            if n == 3:
                raise KeyboardInterrupt
            yield item

    ckpt = tmp_path / "persona.ckpt"
    monkeypatch.setattr(accumulate_mod, "iter_capture", interrupted)
    with pytest.raises(KeyboardInterrupt):
        steerlab.extract(lm, pairs, layers=[2, 4], batch_size=6, checkpoint=ckpt)
    monkeypatch.setattr(accumulate_mod, "iter_capture", real)
    with pytest.raises(steerlab.DatasetError, match="another extraction"):  # batches differ without sharing
        steerlab.extract(lm, pairs, layers=[2, 4], batch_size=6, checkpoint=ckpt, share_prefix=False)
    got = steerlab.extract(lm, pairs, layers=[2, 4], batch_size=6, checkpoint=ckpt)
    assert not ckpt.exists()
    for k in (2, 4):
        # float noise: with vs without prefix sharing; measured max |difference| 1.4e-6 / 7.6e-7 / 1.0e-6
        # (AVX512 / AVX2 / default): >= 11x margin
        torch.testing.assert_close(got.directions[k], want.directions[k], atol=1e-5, rtol=1e-4)


def test_only_the_caches_on_one_path_stay_alive(lm: steerlab.LM, monkeypatch: pytest.MonkeyPatch) -> None:
    """Passes run depth first: at any time the caches alive are those of the current pass's
    ancestors (that still have passes to continue them), not one per pass."""
    monkeypatch.setattr(capture_mod, "pass_cost", lambda lm: 0)  # the deepest tree of passes
    texts = _texts(lm)
    plan = capture_mod.plan_capture(lm, texts, "last", batch_size=4)

    def depth(p: int) -> int:
        return 0 if p < 0 else 1 + depth(plan.passes[p].parent)

    real = capture_mod._run_pass
    made: list[weakref.ref] = []
    alive: list[int] = []

    def run_pass(*args: object) -> object:
        alive.append(sum(r() is not None and r().cache is not None for r in made))
        ran = real(*args)
        made.append(weakref.ref(ran))
        return ran

    monkeypatch.setattr(capture_mod, "_run_pass", run_pass)
    steerlab.capture(lm, texts, [1], batch_size=4)
    assert len(alive) == len(plan.passes) >= 12
    assert max(alive) <= max(depth(p) for p in range(len(plan.passes))) < len(plan.passes) / 3


def test_a_text_without_tokens_is_refused(lm: steerlab.LM, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tokenizer that adds no BOS turns "" into no tokens: nothing to read, for either path."""
    monkeypatch.setattr(type(lm.tokenizer), "__call__", lambda self, texts, **kw: {"input_ids": [[1, 5], []]})
    for share in (True, False):
        with pytest.raises(steerlab.DatasetError, match=r"text 1 .* has no tokens"):
            steerlab.capture(lm, ["a b", ""], [1], share_prefix=share)


def test_cache_rows_leaves_the_cache_as_it_was(lm: steerlab.LM) -> None:
    cache = hf.new_cache(lm.model)
    ids = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 10]])
    with torch.inference_mode():
        passes.run_until(lm, 2, ids, cache=cache, use_cache=True)
    before = [t.clone() for layer in cache.layers[:3] for t in (layer.keys, layer.values)]
    rows = hf.cache_rows(cache, torch.tensor([1, 1, 0]))
    assert hf.cache_length(rows) == 4
    assert torch.equal(rows.layers[0].keys[0], cache.layers[0].keys[1])
    after = [t for layer in cache.layers[:3] for t in (layer.keys, layer.values)]
    assert all(torch.equal(a, b) and a.shape[0] == 2 for a, b in zip(after, before))
