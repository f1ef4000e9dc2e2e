"""The peer benchmark: its helpers, and its quick mode end to end (CI smoke test, no timing asserted).

The end-to-end test creates the peers' environment (``.venv-peers``, or ``$STEERLAB_PEERS_VENV``)
with pip on first use, as the documented command does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_peers  # noqa: E402
import peers_context  # noqa: E402
from peers_jobs import EffectStep, ExtractStep, GenerateStep, LogitsStep, MixedStep, Texts, VectorPaths, WorkerJob  # noqa: E402
from peers_scenarios import Effect, Extraction, build_scenarios, select  # noqa: E402


def _checkpoint(folder: Path, config: dict, tokenizer_class: str) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": tokenizer_class}))
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "tokenizer.json").write_text("{}")
    return folder


def test_peer_model_dir_keeps_rope_theta_for_transformers_4(tmp_path: Path) -> None:
    src = _checkpoint(
        tmp_path / "m", {"rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}}, "TokenizersBackend"
    )
    work = tmp_path / "work"
    work.mkdir()
    dst = bench_peers.peer_model_dir(src, work)
    assert dst != src
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["rope_theta"] == 100000.0 and "rope_scaling" not in cfg
    tcfg = json.loads((dst / "tokenizer_config.json").read_text())
    assert tcfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tcfg["model_input_names"] == ["input_ids", "attention_mask"]
    assert (dst / "model.safetensors").resolve() == (src / "model.safetensors").resolve()
    # the source folder is left as it was
    assert "rope_theta" not in json.loads((src / "config.json").read_text())


def test_peer_model_dir_uses_a_transformers_4_folder_as_is(tmp_path: Path) -> None:
    src = _checkpoint(tmp_path / "m", {"rope_theta": 10000.0}, "LlamaTokenizer")
    assert bench_peers.peer_model_dir(src, tmp_path) == src


def test_caa_text_is_cut_after_the_answer_letter() -> None:
    text = "<|im_start|>user\nQ?\n (A) yes\n (B) no<|im_end|>\n<|im_start|>assistant\n(B)<|im_end|>\n"
    assert bench_peers._cut_after_answer(text, "B").endswith("assistant\n(B")


def test_ratios_compare_within_each_environment() -> None:
    rec = {"median_s": 1.0}
    table = {
        "steerlab": {"extract_persona": {"median_s": 1.0}, "generate": {"median_s": 1.01}},
        "plain (steerlab env)": {"extract_persona": {"median_s": 0.9}, "generate": {"median_s": 1.0}},
        "plain (peers env)": {"extract_persona": rec, "generate": {"median_s": 2.0}},
        "steering-vectors": {"extract_persona": {"median_s": 3.0}, "generate": {"median_s": 2.2}},
    }
    scenarios = {s.name: s for s in build_scenarios(bench_peers.FULL)}
    r = scenarios["extract_persona"].ratios(table) | scenarios["generate"].ratios(table)
    assert r["extract_persona: steerlab/bare"] == pytest.approx(1.111, abs=1e-3)
    assert r["extract_persona: steering-vectors/bare"] == 3.0  # against the bare forward of its own env
    assert r["extract_persona: fastest peer/steerlab"] == 3.0
    assert r["generate: steered/plain steering-vectors"] == 1.1
    assert "extract_persona: repeng/steerlab" not in r
    assert scenarios["extract_caa"].ratios(table) == {}  # no CAA timings in this table


def test_worker_job_survives_json() -> None:
    """The parent writes the job as JSON and the worker (another environment) reads it back."""
    job = WorkerJob(
        tool="steerlab",
        env="steerlab",
        data="/w/data.json",
        layers=(8, 19),
        threads=1,
        model="default",
        vectors=VectorPaths(speed="/w/speed.pt", mixed=("/w/mixed0.pt", "/w/mixed1.pt")),
        steps=(
            ExtractStep(name="extract_persona_noshare", data="persona", batch_size=32, share_prefix=False),
            GenerateStep(name="generate", steered=True, new_tokens=24, batch_size=16),
            MixedStep(name="separate", new_tokens=24, separate=True),
            EffectStep(name="effect", vector=None, norms={"none": {}}, new_tokens=32, batch_size=16),
            LogitsStep(name="logits", save="/w/logits_steerlab.pt"),
        ),
    )
    back = WorkerJob.from_json(job.to_json())
    assert back == job
    assert [type(s) for s in back.steps] == [type(s) for s in job.steps]
    assert back.steps[0].options() == {"share_prefix": False}  # only steerlab's options that are set
    texts = Texts(persona=[("a", "b")], caa=[], gen_prompts=["x"], mixed_prompts=[], effect_prompts=[], check_text="a")
    assert Texts.from_json(texts.to_json()) == texts


def test_only_selects_scenarios_and_what_they_need() -> None:
    scenarios = build_scenarios(bench_peers.FULL)
    assert [s.name for s in scenarios] == ["extract_persona", "extract_caa", "generate", "mixed", "load", "effect"]
    assert [s.name for s in select(scenarios, ["effect"])] == ["extract_persona", "effect"]  # its vectors
    assert [s.name for s in select(scenarios, ["extract"])] == ["extract_persona", "extract_caa"]
    with pytest.raises(ValueError, match="no such scenario"):
        select(scenarios, ["extract_persona_b1"])
    quick = build_scenarios(bench_peers.QUICK)
    assert "load" not in [s.name for s in quick] and isinstance(quick[-1], Effect)


def test_scenarios_build_each_tools_steps(tmp_path: Path) -> None:
    """One process per tool and round: each scenario adds its steps (CAA in the first round only,
    the effect in the last, steering-vectors at batch 1 on CPU for persona pairs only)."""
    cfg = bench_peers.QUICK
    prepared = peers_context.Prepared(
        model_id="m",
        n_layers=5,
        d_model=8,
        model_dir="/m",
        peer_model_dir="/p",
        tokens={},
        reference_norms={1: 2.0, 2: 3.0},
        vectors=VectorPaths(speed="s.pt", mixed=()),
    )
    ctx = peers_context.Context(cfg=cfg, work=tmp_path, prepared=prepared, pythons={}, reps=2)
    scenarios = build_scenarios(cfg)
    first, last = peers_context.Round(0, 2), peers_context.Round(1, 2)

    def names(tool: peers_context.ToolSpec, rnd: peers_context.Round) -> list[str]:
        return [st.name for sc in scenarios for st in sc.steps(ctx, tool, rnd)]

    assert names(peers_context.STEERING_VECTORS, first) == [
        "extract_persona_b1",
        "extract_persona",
        "extract_caa",
        "generate",
        "mixed",
    ]
    assert names(peers_context.STEERLAB, last) == [
        "extract_persona",
        "extract_persona_noshare",
        "extract_persona_pca_diff",
        "generate",
        "mixed",
        "separate",
        "effect",
        "effect_pca_diff",
    ]
    assert names(peers_context.PLAIN_PEERS, last) == ["extract_persona", "generate", "mixed", "logits"]
    effect = next(st for sc in scenarios for st in sc.steps(ctx, peers_context.REPENG, last) if st.name == "effect")
    assert isinstance(effect, EffectStep) and effect.norms == {"2": {"1": 4.0, "2": 6.0}}  # c × ‖steerlab‖
    persona = next(s for s in scenarios if isinstance(s, Extraction))
    (plain,) = persona.steps(ctx, peers_context.PLAIN_MAIN, first)
    assert isinstance(plain, ExtractStep) and plain.save is None and plain.options() == {}


@pytest.mark.slow  # creates .venv-peers (pip: torch, transformers 4, the peers) on first use
def test_quick_mode_end_to_end(tmp_path: Path) -> None:
    venv = Path(os.environ.get("STEERLAB_PEERS_VENV", REPO / ".venv-peers"))
    out = tmp_path / "peers_quick.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_peers.py"),
            "--quick",
            "--peers-venv",
            str(venv),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())
    assert res["peer_env"]["transformers"].split(".")[0] == "4"
    table = res["table"]
    assert set(table) == {"steerlab", "plain (steerlab env)", "plain (peers env)", "steering-vectors", "repeng"}
    for tool in ("steerlab", "steering-vectors", "repeng"):
        assert {"extract_persona", "extract_caa", "generate", "mixed"} <= set(table[tool])
    assert "extract_persona_b1" in table["steering-vectors"] and "separate" in table["steerlab"]
    for key in (
        "extract_persona: steerlab/bare",
        "extract_persona: fastest peer/steerlab",
        "generate: steered/plain steerlab",
        "generate: steered/plain repeng",
        "mixed: steerlab one call/unsteered batch",
    ):
        assert res["ratios"][key] > 0
    # every row of the mixed batch had its own vector: the outputs differ
    assert table["steerlab"]["mixed"]["distinct_outputs"] > 1
    eff = res["effect"]
    # both mean-difference implementations find the same vector; the model is the same in both envs
    cos = eff["cosine_to_steerlab"]
    assert min(cos["steering-vectors"]["mean_diff"].values()) > 0.999
    # repeng's PCA of differences is steerlab's pca_diff axis (each orients it by its own rule)
    assert min(abs(c) for c in cos["repeng"]["pca_diff"].values()) > 0.99
    assert eff["max_logit_diff_tf5_vs_tf4"] < 1e-3
    assert {r["tool"] for r in eff["rows"]} == {
        "unsteered",
        "steerlab",
        "steerlab pca_diff",
        "steering-vectors",
        "repeng",
    }
    assert out.with_suffix(".md").read_text().startswith("bench_peers — quick mode")
