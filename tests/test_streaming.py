"""Streamed, resumable extraction: mean-difference sums in O(layers × d), checkpoint after each batch."""

from __future__ import annotations

import importlib

import pytest
import torch

import steerlab

capture_mod = importlib.import_module("steerlab.extraction.capture")  # the modules, not the same-named functions
accumulate_mod = importlib.import_module("steerlab.extraction.accumulate")

POS = [f"Lily was happy and the sun was out on day {i}" for i in range(10)]
NEG = [f"Lily was sad and the rain fell on day {i}" for i in range(10)]


def test_streamed_mean_diff_equals_full_capture(lm):
    pairs = steerlab.pairs_from_lists(POS, NEG)
    vec = steerlab.extract(lm, pairs, layers=[1, 3], batch_size=3)
    texts = [t for p, n in zip(POS, NEG) for t in (p, n)]
    acts = steerlab.capture(lm, texts, [1, 3])
    for k in (1, 3):
        torch.testing.assert_close(vec.directions[k], (acts[k][0::2] - acts[k][1::2]).mean(0), rtol=1e-4, atol=1e-5)


def test_interrupted_extraction_resumes(lm, tmp_path, monkeypatch):
    pairs = steerlab.pairs_from_lists(POS, NEG)
    want = steerlab.extract(lm, pairs, layers=[2], batch_size=4)
    ckpt = tmp_path / "happy.ckpt"
    real = capture_mod.iter_capture
    seen: list[int] = []

    def flaky(*args, **kwargs):
        for n, item in enumerate(real(*args, **kwargs)):
            if n == 2:
                raise KeyboardInterrupt
            seen.append(n)
            yield item

    monkeypatch.setattr(accumulate_mod, "iter_capture", flaky)
    with pytest.raises(KeyboardInterrupt):
        steerlab.extract(lm, pairs, layers=[2], batch_size=4, checkpoint=ckpt)
    assert ckpt.is_file()
    skipped: list[int] = []

    def counting(*args, **kwargs):
        skipped.append(kwargs.get("skip_batches", 0))
        yield from real(*args, **kwargs)

    monkeypatch.setattr(accumulate_mod, "iter_capture", counting)
    got = steerlab.extract(lm, pairs, layers=[2], batch_size=4, checkpoint=ckpt)
    assert skipped == [2]
    torch.testing.assert_close(got.directions[2], want.directions[2], rtol=1e-5, atol=1e-6)
    assert not ckpt.exists()


def test_checkpoint_of_another_run_is_refused(lm, tmp_path, monkeypatch):
    ckpt = tmp_path / "c.ckpt"
    real = capture_mod.iter_capture

    def stop_after_one(*args, **kwargs):
        gen = real(*args, **kwargs)
        yield next(gen)
        raise KeyboardInterrupt

    monkeypatch.setattr(accumulate_mod, "iter_capture", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        steerlab.extract(lm, steerlab.pairs_from_lists(POS, NEG), layers=[2], batch_size=4, checkpoint=ckpt)
    monkeypatch.setattr(accumulate_mod, "iter_capture", real)
    with pytest.raises(steerlab.DatasetError, match="another extraction"):
        steerlab.extract(lm, steerlab.pairs_from_lists(POS[:6], NEG[:6]), layers=[2], batch_size=4, checkpoint=ckpt)


class _PositiveMean(steerlab.extraction.methods.Accumulator):
    """A streaming method that is not a mean difference: the mean of the positive texts only."""

    def __init__(self, d_model: int) -> None:
        self.total = torch.zeros(d_model, dtype=torch.float64)
        self.n = torch.zeros(1, dtype=torch.float64)

    def update(self, acts: torch.Tensor, positive: torch.Tensor) -> None:
        self.total += acts[positive].double().sum(0)
        self.n += float(positive.sum())

    def merge(self, other: steerlab.extraction.methods.Accumulator) -> None:
        assert isinstance(other, _PositiveMean)
        self.total += other.total
        self.n += other.n

    def finalize(self) -> torch.Tensor:
        return (self.total / self.n).float()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"total": self.total.clone(), "n": self.n.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.total, self.n = state["total"].clone(), state["n"].clone()


def test_extract_runs_the_streaming_methods_own_accumulator(lm):
    """A streaming method that is not a mean difference gets its own result (it used to be
    replaced by a hard-coded mean difference)."""
    method = steerlab.extraction.methods.ReadOutMethod(
        "positive_mean", lambda pos, neg: pos.mean(0), "mean of positives", accumulator=_PositiveMean
    )
    steerlab.extraction.methods.register(method)
    try:
        pairs = steerlab.pairs_from_lists(POS, NEG)
        vec = steerlab.extract(lm, pairs, method="positive_mean", layers=[2], batch_size=3)
        acts = steerlab.capture(lm, POS, [2])
        torch.testing.assert_close(vec.directions[2], acts[2].mean(0), rtol=1e-4, atol=1e-5)
    finally:
        del steerlab.extraction.methods.REGISTRY["positive_mean"]


def test_register_refuses_to_replace_silently():
    mean_diff = steerlab.extraction.methods.get_method("mean_diff")
    with pytest.raises(steerlab.DatasetError, match="replace=True"):
        steerlab.extraction.methods.register(mean_diff)
    assert steerlab.extraction.methods.register(mean_diff, replace=True) is mean_diff


def test_accumulators_merge_exactly_and_match_fit():
    method = steerlab.extraction.methods.get_method("mean_diff")
    assert method.accumulator is not None
    torch.manual_seed(0)
    acts = torch.randn(12, 5)
    positive = torch.tensor([i % 2 == 0 for i in range(12)])
    whole = method.accumulator(5)
    whole.update(acts, positive)
    a, b = method.accumulator(5), method.accumulator(5)
    a.update(acts[:7], positive[:7])
    b.update(acts[7:], positive[7:])
    a.merge(b)
    assert torch.equal(a.finalize(), whole.finalize())
    torch.testing.assert_close(whole.finalize(), method.fit(acts[positive], acts[~positive]))
    restored = method.accumulator(5)
    restored.load_state_dict(whole.state_dict())
    assert torch.equal(restored.finalize(), whole.finalize())
