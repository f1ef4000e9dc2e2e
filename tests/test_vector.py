"""SteeringVector: arithmetic, save/load, llama.cpp GGUF layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf import GGUFReader

import steerlab
from steerlab import SteeringVector


def make(layers=(1, 2), d=8, n=4, model_id="m", scale=1.0) -> SteeringVector:
    g = torch.Generator().manual_seed(0)
    return SteeringVector({k: scale * torch.randn(d, generator=g) for k in layers}, model_id, d, n, method="t")


def test_arithmetic():
    a, b = make(), make(layers=(2, 3), scale=2.0)
    s = a + b
    assert s.layers == [1, 2, 3]
    torch.testing.assert_close(s.directions[2], a.directions[2] + b.directions[2])
    torch.testing.assert_close((a - a).directions[1], torch.zeros(8))
    torch.testing.assert_close((3 * a).directions[1], a.directions[1] * 3)
    torch.testing.assert_close((a * 3).directions[1], (-a * -3).directions[1])
    torch.testing.assert_close((a / 2).directions[1], a.directions[1] / 2)
    assert all(abs(n - 5.0) < 1e-5 for n in a.normalized(5.0).norms().values())


def test_arithmetic_refuses_other_models():
    with pytest.raises(steerlab.ModelMismatchError):
        _ = make() + make(model_id="other")


def test_save_load_roundtrip(tmp_path):
    v = make()
    v.meta["note"] = "x"
    v.save(tmp_path / "v")
    w = SteeringVector.load(tmp_path / "v")
    assert w.layers == v.layers and w.model_id == v.model_id and w.meta == {"note": "x"}
    for k in v.layers:
        assert torch.equal(w.directions[k], v.directions[k])
    cfg = json.loads((tmp_path / "v" / "steering_config.json").read_text())
    assert cfg["method"] == "t" and cfg["d_model"] == 8 and cfg["n_layers"] == 4


def test_tokenwise_roundtrip(tmp_path, actadd_vec):
    actadd_vec.save(tmp_path / "a")
    w = SteeringVector.load(tmp_path / "a")
    assert w.tokenwise and torch.equal(w.directions[2], actadd_vec.directions[2])


def test_gguf_layout_matches_llama_cpp(tmp_path):
    v = make(layers=(1, 3))
    path = v.to_gguf(tmp_path / "v.gguf", model_hint="llama")
    reader = GGUFReader(str(path))
    assert reader.fields["general.architecture"].contents() == "controlvector"
    assert reader.fields["controlvector.model_hint"].contents() == "llama"
    assert reader.fields["controlvector.layer_count"].contents() == 2
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    # llama.cpp adds direction.k to the output of block k (0-based): same as steerlab layer k.
    assert sorted(tensors) == ["direction.1", "direction.3"]
    np.testing.assert_array_equal(tensors["direction.3"].reshape(-1), v.directions[3].numpy())
    w = SteeringVector.from_gguf(path)
    assert w.layers == [1, 3] and w.model_id == "m" and w.n_layers == 4
    assert torch.equal(w.directions[1], v.directions[1])


def test_gguf_from_foreign_file_takes_model_info_from_lm(tmp_path, lm):
    from gguf import GGUFWriter

    path = tmp_path / "foreign.gguf"
    writer = GGUFWriter(str(path), "controlvector")
    writer.add_tensor("direction.2", np.ones(lm.d_model, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    v = SteeringVector.from_gguf(path, lm=lm)
    assert v.model_id == lm.model_id and v.n_layers == lm.n_layers and v.layers == [2]
    steerlab.generate(lm, "The cat", steering=steerlab.Steering(v, 1.0), max_new_tokens=2)


def test_gguf_refuses_layer0_and_tokenwise(tmp_path, actadd_vec):
    with pytest.raises(steerlab.InvalidVectorError, match="block 0"):
        make(layers=(0, 1)).to_gguf(tmp_path / "x.gguf")
    with pytest.raises(steerlab.InvalidVectorError, match="token_mean"):
        actadd_vec.to_gguf(tmp_path / "y.gguf")
    assert actadd_vec.token_mean().directions[2].shape == (actadd_vec.d_model,)


@pytest.mark.parametrize("fail_at", ["config", "rename"])
def test_interrupted_save_leaves_the_old_vector_whole(tmp_path, monkeypatch, fail_at):
    """A crash while saving over an existing vector leaves the old weights beside the old config
    (never new weights with an old config), other files in the folder, and no temporary files."""
    import os
    from pathlib import Path

    old, new = make(scale=1.0), make(scale=2.0)
    folder = tmp_path / "v"
    old.save(folder)
    (folder / "run.json").write_text("{}")
    if fail_at == "config":
        real_write = Path.write_text

        def write_text(self, *args, **kwargs):
            if self.name == "steering_config.json":
                raise KeyboardInterrupt
            return real_write(self, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)
    else:  # the moment the new folder would take the old one's place
        monkeypatch.setattr("steerlab.files._exchange", lambda a, b: False)
        real_replace = os.replace
        failed = []

        def replace(src, dst):
            if Path(dst) == folder and Path(src).parent == tmp_path and not failed:
                failed.append(src)
                raise KeyboardInterrupt
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        new.save(folder)
    monkeypatch.undo()
    back = SteeringVector.load(folder)
    assert torch.equal(back.directions[1], old.directions[1])
    assert (folder / "run.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["v"]
    new.save(folder)
    assert torch.equal(SteeringVector.load(folder).directions[1], new.directions[1])
    assert (folder / "run.json").is_file()


# ---------------------------------------------------------------- malformed metadata
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layers": 5}, "'layers' must be a list of integers"),
        ({"layers": ["1", "2"]}, "'layers' must be a list of integers"),
        ({"layers": [1.5, 2]}, "'layers' must be a list of integers"),
        ({"meta": [1, 2]}, "'meta' must be a JSON object"),
        ({"meta": "note"}, "'meta' must be a JSON object"),
        ({"d_model": "abc"}, "'d_model' must be a positive integer"),
        ({"d_model": True}, "'d_model' must be a positive integer"),
        ({"d_model": 8.0}, "'d_model' must be a positive integer"),
        ({"n_layers": 0}, "'n_layers' must be a positive integer"),
        ({"n_layers": None}, "'n_layers' must be a positive integer"),
        ({"model_id": 7}, "'model_id' must be a string"),
        ({"method": ["t"]}, "'method' must be a string"),
        ({"created": 2024}, "'created' must be a string"),
        ({"format_version": "1"}, "'format_version' must be a positive integer"),
        ({"format_version": 99}, "newer steerlab"),
        ({"d_model": 9}, "does not fit d_model=9"),
        ({"n_layers": 2}, "outside a model of 2 blocks"),
    ],
)
def test_load_validates_every_config_field(tmp_path, change, message):
    make().save(tmp_path / "v")
    cfg_path = tmp_path / "v" / "steering_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(change)
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(steerlab.VectorFileError, match=message) as info:
        SteeringVector.load(tmp_path / "v")
    assert str(tmp_path / "v") in str(info.value)  # the user's own path is named


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "must be a JSON object, not list"),
        ('{"model_id": "m"}', "lacks 'd_model', 'n_layers', 'layers'"),
        ("[[[[" * 100_000, "is corrupt"),
    ],
)
def test_load_refuses_configs_that_are_not_objects(tmp_path, text, message):
    make().save(tmp_path / "v")
    (tmp_path / "v" / "steering_config.json").write_text(text)
    with pytest.raises(steerlab.VectorFileError, match=message):
        SteeringVector.load(tmp_path / "v")


def test_load_accepts_null_optional_fields(tmp_path):
    make().save(tmp_path / "v")
    cfg_path = tmp_path / "v" / "steering_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(meta=None, method=None, data_hash=None)
    cfg_path.write_text(json.dumps(cfg))
    w = SteeringVector.load(tmp_path / "v")
    assert w.meta == {} and w.method == "custom" and w.data_hash == ""


def _gguf(path, fields, d=8):
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "controlvector")
    for key, value in fields.items():
        if isinstance(value, int):
            writer.add_int64(f"steerlab.{key}", value)
        else:
            writer.add_string(f"steerlab.{key}", value)
    writer.add_tensor("direction.1", np.ones(d, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"meta": "{not json"}, "steerlab.meta is not valid JSON"),
        ({"meta": "[1, 2]"}, "'meta' must be a JSON object"),
        ({"layers": "[1"}, "steerlab.layers is not valid JSON"),
        ({"layers": "[2]"}, r"steerlab.layers lists \[2\] but the file holds directions \[1\]"),
        ({"layers": 5}, "steerlab.layers must be a JSON string"),
        ({"d_model": "abc"}, "'d_model' must be a positive integer"),
        ({"n_layers": "4"}, "'n_layers' must be a positive integer"),
        ({"model_id": 3}, "'model_id' must be a string"),
    ],
)
def test_from_gguf_validates_steerlab_metadata(tmp_path, fields, message):
    path = _gguf(tmp_path / "v.gguf", fields)
    with pytest.raises(steerlab.VectorFileError, match=message):
        SteeringVector.from_gguf(path)


def test_from_gguf_roundtrip_keeps_metadata(tmp_path):
    v = make(layers=(1, 3))
    v.meta["note"] = {"a": [1, 2]}
    w = SteeringVector.from_gguf(v.to_gguf(tmp_path / "v.gguf"))
    assert (w.model_id, w.d_model, w.n_layers, w.method, w.meta) == ("m", 8, 4, "t", {"note": {"a": [1, 2]}})
    assert w.created == v.created and w.data_hash == v.data_hash
