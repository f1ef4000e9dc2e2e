"""Streamed, resumable extraction: mean-difference sums in O(layers × d), checkpoint after each batch."""

from __future__ import annotations

import importlib

import pytest
import torch

import steerlab

capture_mod = importlib.import_module("steerlab.capture")  # the modules, not the same-named functions
extract_mod = importlib.import_module("steerlab.extract")

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

    monkeypatch.setattr(extract_mod, "iter_capture", flaky)
    with pytest.raises(KeyboardInterrupt):
        steerlab.extract(lm, pairs, layers=[2], batch_size=4, checkpoint=ckpt)
    assert ckpt.is_file()
    skipped: list[int] = []

    def counting(*args, **kwargs):
        skipped.append(kwargs.get("skip_batches", 0))
        yield from real(*args, **kwargs)

    monkeypatch.setattr(extract_mod, "iter_capture", counting)
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

    monkeypatch.setattr(extract_mod, "iter_capture", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        steerlab.extract(lm, steerlab.pairs_from_lists(POS, NEG), layers=[2], batch_size=4, checkpoint=ckpt)
    monkeypatch.setattr(extract_mod, "iter_capture", real)
    with pytest.raises(steerlab.DatasetError, match="another extraction"):
        steerlab.extract(lm, steerlab.pairs_from_lists(POS[:6], NEG[:6]), layers=[2], batch_size=4, checkpoint=ckpt)
