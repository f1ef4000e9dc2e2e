"""steerlab side by side with steering-vectors and repeng, and against the bare forward pass.

One command creates (if missing) a separate virtual environment for the peers — they need
``transformers < 5`` while steerlab uses 5.x — and runs every scenario for every tool on the same
model, the same texts and the same vectors, in fresh processes, alternating the tools round by
round, and reports medians and ratios:

1. **extraction** — persona pairs (happy/sad over RepE openings, layers 8–19): steerlab
   ``mean_diff`` vs steering-vectors (batch 1 and 32) vs repeng (``pca_diff``, batch 32) vs the
   *bare truncated forward* (the limit: every text once, length-sorted batches, stopped after the
   deepest layer), measured in each environment; plus CAA A/B pairs (sycophancy) for scale;
2. **steered generation** — 48 prompts, batch 16, 24 new tokens, one vector on 12 layers, vs
   plain ``generate`` in the same environment;
3. **mixed batch** — 16 prompts, each with its own vector and coefficient: steerlab in one call;
   the peers (no per-row steering) and, for reference, steerlab with 16 separate calls;
4. **load** — steerlab cold (GGUF conversion into an empty cache) and warm; transformers loading
   the GGUF itself and the converted folder (what a peer user does);
5. **peak memory** of every measured call (RSS high-water mark while it ran);
6. **effect at matched settings** — each tool's own persona vector, rescaled per layer to the same
   added norm (``c × ‖steerlab mean_diff‖``), continues held-out openings; the parent scores VADER
   positive share and the continuation perplexity under the unsteered model.

Usage::

    python benchmarks/bench_peers.py --quick      # stories260K, tiny sizes, 1 round (CI smoke test)
    python benchmarks/bench_peers.py              # SmolLM2-135M-Instruct, 3 rounds
    python benchmarks/bench_peers.py --reps 5 --threads 1 --caa-pairs 1000

Output: ``benchmarks/results/peers.json`` (``peers_quick.json``) with every time, and a markdown
table on stdout and in ``peers.md`` beside the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib
from benchlib import log, ratio

REPO = benchlib.REPO
SHARED = Path(os.environ.get("STEERLAB_SHARED") or REPO.parent / "shared")  # data: ../shared by default
OPENINGS = SHARED / "data" / "repe" / "all_truncated_outputs.json"
CAA = SHARED / "data" / "caa" / "datasets" / "generate" / "sycophancy" / "generate_dataset.json"
RESULTS = REPO / "benchmarks" / "results"
WORKER = Path(__file__).resolve().with_name("peers_worker.py")
PEER_VENV = REPO / ".venv-peers"
PEER_REQUIREMENTS = [
    "torch==2.13.0",
    "transformers>=4.46,<5",
    "steering-vectors==0.12.2",
    "repeng==0.4.0",
    "numpy<2",  # repeng 0.4 uses np.float_ at import time
    "accelerate",
    "gguf",
]
PEERS = ("steering-vectors", "repeng")

FULL: dict[str, Any] = {
    "mode": "full",
    "model": "default",
    "layers": [8, 19],
    "persona_pairs": 128,
    "caa_pairs": 1000,
    "gen": {"n_prompts": 48, "batch_size": 16, "new_tokens": 24},
    "mixed": {"n_prompts": 16, "new_tokens": 24},
    "speed_coefficient": 4.0,
    "effect": {"n_prompts": 48, "new_tokens": 32, "batch_size": 16, "coefficients": [1.0, 2.0, 4.0]},
    "load": True,
    "threads": None,
}
QUICK: dict[str, Any] = {
    "mode": "quick",
    "model": str(SHARED / "models" / "stories260K"),
    "layers": [1, 3],
    "persona_pairs": 32,
    "caa_pairs": 8,
    "gen": {"n_prompts": 8, "batch_size": 4, "new_tokens": 8},
    "mixed": {"n_prompts": 4, "new_tokens": 8},
    "speed_coefficient": 4.0,
    "effect": {"n_prompts": 8, "new_tokens": 8, "batch_size": 8, "coefficients": [2.0]},
    "load": False,
    "threads": 1,
}
TARGETS = {  # ratio-key suffix: limit (fastest peer: a floor, the others ceilings)
    ": steerlab/bare": 1.15,
    "steered/plain steerlab": 1.03,
    "steerlab one call/unsteered batch": 1.15,
    "fastest peer/steerlab": 2.0,
}


# --------------------------------------------------------------------------- peer environment
def peer_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _peer_env_ok(venv: Path) -> bool:
    py = peer_python(venv)
    if not py.is_file():
        return False
    probe = (
        "import transformers, steering_vectors, repeng, sys; "
        "sys.exit(0 if int(transformers.__version__.split('.')[0]) < 5 else 1)"
    )
    return subprocess.run([str(py), "-c", probe], capture_output=True).returncode == 0


def ensure_peer_env(venv: Path) -> dict[str, str | None]:
    """Create ``venv`` with the peers (pip, PyPI) unless it already works; return its versions."""
    if not _peer_env_ok(venv):
        log(f"creating the peers' environment {venv} ({', '.join(PEER_REQUIREMENTS)}); takes a few minutes")
        if not peer_python(venv).is_file():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        cmd = [
            str(peer_python(venv)),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *PEER_REQUIREMENTS,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not _peer_env_ok(venv):
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
            raise SystemExit(f"could not set up the peers' environment in {venv} (pip exit {proc.returncode})")
    code = (
        "import json; from importlib import metadata as m; print(json.dumps({p: m.version(p) for p in "
        "('torch', 'transformers', 'steering-vectors', 'repeng', 'numpy', 'scikit-learn')}))"
    )
    out = subprocess.run([str(peer_python(venv)), "-c", code], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout))


# --------------------------------------------------------------------------- inputs
def peer_model_dir(src: Path, work: Path) -> Path:
    """A copy of a transformers-5 checkpoint folder that transformers 4 reads the same way.

    Transformers 5 writes ``rope_parameters`` (4.x would silently fall back to its default RoPE
    theta) and a ``TokenizersBackend`` tokenizer class (4.x refuses it). The weights and
    ``tokenizer.json`` are linked, not copied.
    """
    cfg = json.loads((src / "config.json").read_text())
    tcfg_path = src / "tokenizer_config.json"
    tcfg = json.loads(tcfg_path.read_text()) if tcfg_path.is_file() else {}
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" in cfg and tcfg.get("tokenizer_class") != "TokenizersBackend":
        return src
    dst = work / "peer-model"
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in ("config.json", "tokenizer_config.json"):
            (dst / f.name).symlink_to(f.resolve())
    if "rope_theta" not in cfg and "rope_theta" in rope:
        cfg["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default":
            cfg["rope_scaling"] = rope
    (dst / "config.json").write_text(json.dumps(cfg, indent=1))
    if tcfg.get("tokenizer_class") == "TokenizersBackend":
        # a causal LM's tokenizer gives no token_type_ids (4.x generate() refuses them)
        tcfg.update(tokenizer_class="PreTrainedTokenizerFast", model_input_names=["input_ids", "attention_mask"])
    (dst / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=1))
    return dst


def random_checkpoint(src: Path, work: Path) -> Path:
    """A checkpoint with ``src``'s config and tokenizer and randomly initialised weights (seed 0)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    dst = work / "random-model"
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src), dtype=torch.float32)
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def _cut_after_answer(text: str, letter: str) -> str:
    """The rendered CAA text up to and including its answer letter (every tool reads the last token)."""
    i = text.rindex(f"({letter})")
    return text[: i + 2]


def prepare(cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    """Render all texts once with steerlab, build the vectors; write them into ``work``."""
    import torch

    import steerlab
    from steerlab.data import ChatText, render

    lm = steerlab.load_model(cfg["model"], dtype=cfg["dtype"], device=cfg["device"])
    openings = steerlab.load_openings(OPENINGS)
    n_p = cfg["persona_pairs"]
    persona = [
        (render(p.positive, lm), render(p.negative, lm)) for p in steerlab.persona_pairs("happy", "sad", openings[:n_p])
    ]
    caa: list[tuple[str, str]] = []
    if cfg["caa_pairs"]:
        for p in steerlab.caa_pairs(steerlab.load_caa(CAA, cfg["caa_pairs"])):
            assert isinstance(p.positive, ChatText) and isinstance(p.negative, ChatText)  # answers "(A)"
            caa.append(
                (
                    _cut_after_answer(render(p.positive, lm), p.positive.assistant[1]),
                    _cut_after_answer(render(p.negative, lm), p.negative.assistant[1]),
                )
            )
    e = cfg["effect"]
    data = {
        "persona": persona,
        "caa": caa,
        "gen_prompts": openings[: cfg["gen"]["n_prompts"]],
        "mixed_prompts": openings[: cfg["mixed"]["n_prompts"]],
        "effect_prompts": openings[n_p : n_p + e["n_prompts"]] if e else [],
        "check_text": persona[0][0],
    }
    (work / "data.json").write_text(json.dumps(data))
    layers = range(cfg["layers"][0], cfg["layers"][1] + 1)
    ref = steerlab.extract(
        lm, [steerlab.ContrastPair(p, n) for p, n in persona], method="mean_diff", layers=layers, progress=False
    )
    torch.save(ref.directions, work / "reference.pt")
    speed = {k: v * cfg["speed_coefficient"] for k, v in ref.directions.items()}
    torch.save(speed, work / "speed.pt")
    gen = torch.Generator().manual_seed(0)
    mixed: list[str] = []
    for i in range(cfg["mixed"]["n_prompts"]):
        # every row its own direction and strength: the reference, its negation, or a random
        # direction of the same norms, times a coefficient
        kind, coef = i % 3, (1.0, 2.0, 4.0, 8.0)[i % 4]
        vec = {}
        for k, v in ref.directions.items():
            if kind == 2:
                r = torch.randn(v.shape, generator=gen)
                v = r * (v.norm() / r.norm())
            vec[k] = v * (-coef if kind == 1 else coef)
        path = work / f"mixed{i}.pt"
        torch.save(vec, path)
        mixed.append(str(path))
    tokens = {
        name: sum(len(x) for p in pairs for x in lm.tokenizer(list(p))["input_ids"])
        for name, pairs in (("persona", persona), ("caa", caa))
    }
    info = {
        "model_id": lm.model_id,
        "n_layers": lm.n_layers,
        "d_model": lm.d_model,
        "model_dir": str(lm.model.name_or_path),
        "tokens": tokens,
        "reference_norms": {k: round(float(v.norm()), 4) for k, v in ref.directions.items()},
        "vectors": {"speed": str(work / "speed.pt"), "mixed": mixed},
    }
    del lm
    return info


# --------------------------------------------------------------------------- running
def spawn(python: Path, job: dict[str, Any], work: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one job of ``peers_worker.py`` in a fresh process; return its result."""
    fd, name = tempfile.mkstemp(prefix="job.", suffix=".json", dir=work)
    os.close(fd)
    job_path, result = Path(name), Path(name).with_suffix(".out.json")
    job_path.write_text(json.dumps(job))
    child_env = dict(
        os.environ,
        STEERLAB_QUIET="1",
        TRANSFORMERS_VERBOSITY="error",
        TQDM_DISABLE="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(WORKER.parent), os.environ.get("PYTHONPATH")) if p),
        **(env or {}),
    )
    cmd = [str(python), str(WORKER), "--job", str(job_path), "--result", str(result)]
    return benchlib.run_worker(cmd, result, f"{job['tool']} ({job['env']})", child_env)


def tool_jobs(cfg: dict[str, Any], info: dict[str, Any], work: Path, first: bool, last: bool) -> list[dict[str, Any]]:
    """The jobs of one round: one per tool and environment. The CAA scale run is in the ``first``
    round only (it is long: 2,000 texts of ~190 tokens); the ``last`` adds the effect runs."""
    g, m, e = cfg["gen"], cfg["mixed"], cfg["effect"]
    caa = bool(cfg["caa_pairs"]) and first
    last = last and bool(cfg["effect"])
    norms: dict[str, dict[str, float]] = {"none": {}}
    for c in e["coefficients"] if e else []:
        norms[f"{c:g}"] = {str(k): c * n for k, n in info["reference_norms"].items()}

    def effect(vec: str | None, unsteered_only: bool = False, name: str = "effect") -> list[dict[str, Any]]:
        if not last:
            return []
        ns = {"none": {}} if unsteered_only else {k: v for k, v in norms.items() if k != "none"}
        return [
            {
                "name": name,
                "kind": "effect",
                "vector": vec,
                "norms": ns,
                "new_tokens": e["new_tokens"],
                "batch_size": e["batch_size"],
            }
        ]

    def extract(name: str, data: str, bs: int, save: str | None = None) -> dict[str, Any]:
        return {
            "name": name,
            "kind": "extract",
            "data": data,
            "batch_size": bs,
            "save": str(work / save) if save else None,
        }

    gen_s = {
        "name": "generate",
        "kind": "generate",
        "steered": True,
        "new_tokens": g["new_tokens"],
        "batch_size": g["batch_size"],
    }
    gen_u = dict(gen_s, steered=False)
    mixed = {"name": "mixed", "kind": "mixed", "new_tokens": m["new_tokens"]}
    base: dict[str, Any] = {
        "layers": cfg["layers"],
        "threads": cfg["threads"],
        "data": str(work / "data.json"),
        "vectors": info["vectors"],
        "device": cfg["device"],
        "dtype": cfg["dtype"],
    }
    main_dir, peer_dir = info["model_dir"], info["peer_model_dir"]

    def plain(env: str, model_dir: str) -> dict[str, Any]:
        """The baselines in one environment (the unsteered effect texts come from steerlab's)."""
        return dict(
            base,
            tool="plain",
            env=env,
            model_dir=model_dir,
            scenarios=[
                extract("extract_persona", "persona", 32),
                *([extract("extract_caa", "caa", 32)] if caa else []),
                gen_u,
                mixed,
                {"name": "logits", "kind": "logits", "save": str(work / f"logits_{env}.pt")},
                *(effect(None, unsteered_only=True) if env == "steerlab" else []),
            ],
        )

    jobs = [
        dict(
            base,
            tool="steerlab",
            env="steerlab",
            model=cfg["model"],
            scenarios=[
                extract("extract_persona", "persona", 32, "vec_steerlab.pt"),
                dict(extract("extract_persona_noshare", "persona", 32), share_prefix=False),
                *([extract("extract_caa", "caa", 32)] if caa else []),
                gen_s,
                mixed,
                dict(mixed, name="separate", kind="separate"),
                dict(extract("extract_persona_pca_diff", "persona", 32, "vec_steerlab-pca_diff.pt"), method="pca_diff"),
                *effect(str(work / "vec_steerlab.pt")),
                *effect(str(work / "vec_steerlab-pca_diff.pt"), name="effect_pca_diff"),
            ],
        ),
        plain("steerlab", main_dir),
        plain("peers", peer_dir),
        dict(
            base,
            tool="steering-vectors",
            env="peers",
            model_dir=peer_dir,
            scenarios=[
                extract("extract_persona_b1", "persona", 1),
                *([extract("extract_caa_b1", "caa", 1)] if caa and cfg["device"].startswith("cuda") else []),
                extract("extract_persona", "persona", 32, "vec_steering-vectors.pt"),
                *([extract("extract_caa", "caa", 32)] if caa else []),
                gen_s,
                mixed,
                *effect(str(work / "vec_steering-vectors.pt")),
            ],
        ),
        dict(
            base,
            tool="repeng",
            env="peers",
            model_dir=peer_dir,
            scenarios=[
                extract("extract_persona", "persona", 32, "vec_repeng.pt"),
                *([extract("extract_caa", "caa", 32)] if caa else []),
                gen_s,
                mixed,
                *effect(str(work / "vec_repeng.pt")),
            ],
        ),
    ]
    only = cfg.get("only")
    if only:
        for job in jobs:
            job["scenarios"] = [sc for sc in job["scenarios"] if any(sc["name"].startswith(o) for o in only)]
    return jobs


def label(job: dict[str, Any]) -> str:
    return f"plain ({job['env']} env)" if job["tool"] == "plain" else job["tool"]


def load_runs(cfg: dict[str, Any], info: dict[str, Any], reps: int, peer_py: Path, work: Path) -> dict[str, Any]:
    """Cold steerlab load (empty cache) and transformers loading the GGUF itself, fresh processes."""
    out: dict[str, Any] = {}
    import steerlab.model as sm

    gguf = sm.default_gguf_path()
    cache = tempfile.mkdtemp(prefix="steerlab-cold-cache.")
    try:
        log("load: steerlab cold (GGUF conversion into an empty cache)")
        job = {
            "tool": "steerlab",
            "env": "steerlab",
            "model": "default",
            "threads": cfg["threads"],
            "data": str(work / "data.json"),
            "layers": cfg["layers"],
            "scenarios": [],
        }
        r = spawn(Path(sys.executable), job, work, env={"STEERLAB_CACHE": cache})
        out["steerlab cold"] = {"times_s": [r["load"]["time_s"]], "peak_rss_mb": r["load"]["peak_rss_mb"]}
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    times, peaks = [], []
    for i in range(reps):
        log(f"load: transformers 4 from the GGUF file ({i + 1}/{reps})")
        job = {
            "tool": "plain",
            "env": "peers",
            "model_dir": str(gguf.parent),
            "gguf_file": gguf.name,
            "threads": cfg["threads"],
            "data": str(work / "data.json"),
            "layers": cfg["layers"],
            "scenarios": [],
        }
        r = spawn(peer_py, job, work)
        times.append(r["load"]["time_s"])
        peaks.append(r["load"]["peak_rss_mb"])
    out["transformers 4 GGUF"] = {"times_s": times, "peak_rss_mb": max(peaks)}
    return out


# --------------------------------------------------------------------------- summary
def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{tool label: {scenario: {times_s, median_s, min_s, peak_rss_mb, ...}}}`` over the rounds."""
    table: dict[str, dict[str, Any]] = {}
    for r in runs:
        t = table.setdefault(label(r), {})
        loads = t.setdefault("load", {"times_s": [], "peak_rss_mb": 0.0})
        loads["times_s"].append(r["load"]["time_s"])
        loads["peak_rss_mb"] = max(loads["peak_rss_mb"], r["load"]["peak_rss_mb"] or 0.0)
        for name, rec in r["scenarios"].items():
            if name.startswith("effect") or name == "logits":
                continue
            s = t.setdefault(name, {"times_s": [], "peak_rss_mb": 0.0, "added_rss_mb": 0.0})
            s["times_s"].append(rec["time_s"])
            s["peak_rss_mb"] = max(s["peak_rss_mb"], rec["peak_rss_mb"] or 0.0)
            if "peak_gpu_mb" in rec:
                s["peak_gpu_mb"] = max(s.get("peak_gpu_mb", 0.0), rec["peak_gpu_mb"])
            s["added_rss_mb"] = max(
                s["added_rss_mb"], round((rec["peak_rss_mb"] or 0) - (rec["rss_before_mb"] or 0), 1)
            )
            for k in ("n_pairs", "batch_size", "n_prompts", "distinct_outputs"):
                if k in rec:
                    s[k] = rec[k]
    for t in table.values():
        for s in t.values():
            s["median_s"] = round(statistics.median(s["times_s"]), 4)
            s["min_s"] = round(min(s["times_s"]), 4)
    return table


def _med(table: dict[str, Any], tool: str, sc: str) -> float | None:
    rec = table.get(tool, {}).get(sc)
    return None if rec is None else rec["median_s"]


def ratios(table: dict[str, Any]) -> dict[str, float]:
    """The headline ratios (of medians)."""
    out: dict[str, float] = {}
    bare_main, bare_peer = "plain (steerlab env)", "plain (peers env)"

    def put(key: str, a: float | None, b: float | None) -> None:
        if a is not None and b is not None:
            out[key] = ratio(a, b)

    for sc in ("extract_persona", "extract_caa"):
        put(f"{sc}: steerlab/bare", _med(table, "steerlab", sc), _med(table, bare_main, sc))
        put(
            f"{sc}: steerlab without prefix sharing/bare",
            _med(table, "steerlab", sc + "_noshare"),
            _med(table, bare_main, sc),
        )
        put(f"{sc}: bare transformers 4/5", _med(table, bare_peer, sc), _med(table, bare_main, sc))
        for peer, name in (("steering-vectors", sc), ("steering-vectors", sc + "_b1"), ("repeng", sc)):
            key = f"{peer}{' b1' if name.endswith('_b1') else ''}"
            put(f"{sc}: {key}/bare", _med(table, peer, name), _med(table, bare_peer, sc))
            put(f"{sc}: {key}/steerlab", _med(table, peer, name), _med(table, "steerlab", sc))
        peers = [
            v
            for v in (
                _med(table, "steering-vectors", sc),
                _med(table, "steering-vectors", sc + "_b1"),
                _med(table, "repeng", sc),
            )
            if v is not None
        ]
        if peers:
            put(f"{sc}: fastest peer/steerlab", min(peers), _med(table, "steerlab", sc))
    put("generate: steered/plain steerlab", _med(table, "steerlab", "generate"), _med(table, bare_main, "generate"))
    for peer in PEERS:
        put(f"generate: steered/plain {peer}", _med(table, peer, "generate"), _med(table, bare_peer, "generate"))
        put(f"generate: {peer}/steerlab", _med(table, peer, "generate"), _med(table, "steerlab", "generate"))
    put("mixed: steerlab one call/unsteered batch", _med(table, "steerlab", "mixed"), _med(table, bare_main, "mixed"))
    put(
        "mixed: steerlab separate calls/one call", _med(table, "steerlab", "separate"), _med(table, "steerlab", "mixed")
    )
    for peer in PEERS:
        put(
            f"mixed: {peer} separate calls/steerlab one call",
            _med(table, peer, "mixed"),
            _med(table, "steerlab", "mixed"),
        )
    return out


def score_effect(cfg: dict[str, Any], runs: list[dict[str, Any]], work: Path) -> dict[str, Any]:
    """VADER positive share and continuation perplexity (unsteered model) of each tool's texts."""
    import torch

    import steerlab
    from steerlab.evaluate.fluency import continuation_nll, pooled_perplexity
    from steerlab.evaluate.sentiment import VaderScorer

    lm = steerlab.load_model(cfg["model"], dtype=cfg["dtype"], device=cfg["device"])
    prompts = json.loads((work / "data.json").read_text())["effect_prompts"]
    vader = VaderScorer()
    refs = {"mean_diff": torch.load(work / "vec_steerlab.pt")}
    if (work / "vec_steerlab-pca_diff.pt").is_file():
        refs["pca_diff"] = torch.load(work / "vec_steerlab-pca_diff.pt")
    out: dict[str, Any] = {"cosine_to_steerlab": {}, "rows": []}
    for peer in PEERS:
        if (work / f"vec_{peer}.pt").is_file():
            own = torch.load(work / f"vec_{peer}.pt")
            out["cosine_to_steerlab"][peer] = {
                method: {
                    str(k): round(float(torch.nn.functional.cosine_similarity(own[k], ref[k], dim=0)), 4) for k in ref
                }
                for method, ref in refs.items()
            }
    for r, name, eff in ((run, n, e) for run in runs for n, e in run["scenarios"].items() if n.startswith("effect")):
        tool = label(r) + (" pca_diff" if name.endswith("pca_diff") else "")
        for lab, texts in eff["texts"].items():
            scores = vader.score(texts)
            nll = continuation_nll(lm, prompts, texts)
            out["rows"].append(
                {
                    "tool": "unsteered" if r["tool"] == "plain" else tool,
                    "coefficient": lab,
                    "positive_share": round(sum(s.label == "positive" for s in scores) / len(scores), 4),
                    "negative_share": round(sum(s.label == "negative" for s in scores) / len(scores), 4),
                    "mean_compound": round(statistics.fmean(s.compound for s in scores), 4),
                    "perplexity": round(pooled_perplexity(nll), 3),
                    "sample": texts[0],
                }
            )
    base = next((row for row in out["rows"] if row["tool"] == "unsteered"), None)
    for row in out["rows"]:
        row["perplexity_ratio"] = ratio(row["perplexity"], base["perplexity"]) if base else None
    a, b = work / "logits_steerlab.pt", work / "logits_peers.pt"
    if a.is_file() and b.is_file():
        out["max_logit_diff_tf5_vs_tf4"] = round(float((torch.load(a) - torch.load(b)).abs().max()), 6)
    return out


def _target(key: str, value: float) -> str:
    for name, limit in TARGETS.items():
        if key.endswith(name):
            ok = value >= limit if name.startswith("fastest") else value <= limit
            sign = ">=" if name.startswith("fastest") else "<="
            return f" (target {sign} {limit}: {'ok' if ok else 'MISSED'})"
    return ""


def markdown(res: dict[str, Any]) -> str:
    m, cfg = res["machine"], res["config"]
    lines = [
        f"bench_peers — {cfg['mode']} mode, {res['prepare']['model_id']}, {res['reps']} rounds (median), "
        f"{m['gpu'] or m['cpu']} ({cfg['dtype']}), {m['cpu_count']} CPUs, torch threads {res['torch_threads']}, "
        "steerlab env transformers "
        f"{m['transformers']}, peers env transformers {res['peer_env']['transformers']} "
        f"(steering-vectors {res['peer_env']['steering-vectors']}, repeng {res['peer_env']['repeng']}), "
        f"commit {str(m['git_commit'])[:10]}{' (dirty)' if m['git_dirty'] else ''}, load average "
        f"{m['loadavg_start'][0]:.1f} → {m['loadavg_end'][0]:.1f}",
        "",
        "| tool | scenario | median s | min s | peak RSS MiB | added RSS MiB | peak GPU MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for tool, scs in res["table"].items():
        for sc, rec in scs.items():
            added, gpu_mb = rec.get("added_rss_mb", ""), rec.get("peak_gpu_mb", "")
            lines.append(
                f"| {tool} | {sc} | {rec['median_s']:.3f} | {rec['min_s']:.3f} | {rec['peak_rss_mb']:.0f} | {added} "
                f"| {gpu_mb} |"
            )
    for name, rec in res.get("load", {}).items():
        lines.append(
            f"| {name} | load | {statistics.median(rec['times_s']):.3f} | {min(rec['times_s']):.3f} | "
            f"{rec['peak_rss_mb']:.0f} |  |  |"
        )
    lines += ["", "| ratio (of medians) | value |", "|---|---:|"]
    for key, value in res["ratios"].items():
        lines.append(f"| {key} | {value:.3f}{_target(key, value)} |")
    eff = res.get("effect")
    if eff:
        lines += [
            "",
            f"Effect at matched added norm (c × ‖steerlab mean_diff‖ per layer), "
            f"{cfg['effect']['n_prompts']} held-out openings, {cfg['effect']['new_tokens']} greedy tokens:",
            "",
            "| tool | c | positive share | negative share | mean compound | perplexity | × unsteered |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for row in eff["rows"]:
            lines.append(
                f"| {row['tool']} | {row['coefficient']} | {row['positive_share']:.2f} | "
                f"{row['negative_share']:.2f} | {row['mean_compound']:+.3f} | {row['perplexity']:.2f} | "
                f"{row['perplexity_ratio']:.2f} |"
            )
        cos = eff["cosine_to_steerlab"]
        for peer, by_method in cos.items():
            lines.append(
                f"Cosine of {peer}'s vector to steerlab's, per layer: "
                + "; ".join(
                    f"{m} {min(v.values()):.3f}–{max(v.values()):.3f} (|cos| ≥ {min(abs(c) for c in v.values()):.3f})"
                    for m, v in by_method.items()
                )
            )
        if "max_logit_diff_tf5_vs_tf4" in eff:
            lines.append(
                f"Same model in both environments: max |logit difference| {eff['max_logit_diff_tf5_vs_tf4']:.2e}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="stories260K, tiny sizes, 1 round (smoke test)")
    ap.add_argument("--reps", type=int, default=None, help="rounds (default 3; 1 with --quick)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in the workers (default: torch's)")
    ap.add_argument("--caa-pairs", type=int, default=None, help="CAA pairs for the scale run (0: skip)")
    ap.add_argument("--no-load", action="store_true", help="skip the cold/GGUF load runs")
    ap.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="SCENARIO",
        help="run only the scenarios whose names start with these (e.g. extract_caa); no load runs",
    )
    ap.add_argument("--model", default=None, help="checkpoint folder instead of the default model")
    ap.add_argument(
        "--random-weights",
        action="store_true",
        help="with --model: its config and tokenizer, weights randomly initialised (seed 0); "
        "for timing an architecture whose weights are not at hand (no effect runs)",
    )
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: float32 on CPU, bfloat16 on GPU)")
    ap.add_argument("--peers-venv", type=Path, default=PEER_VENV, help=f"peers' environment (default {PEER_VENV})")
    ap.add_argument("--out", type=Path, default=None, help="JSON output (default benchmarks/results/peers.json)")
    args = ap.parse_args(argv)
    base = QUICK if args.quick else FULL
    reps = args.reps if args.reps is not None else (1 if args.quick else 3)
    if reps < 1:
        ap.error("--reps must be >= 1")
    cfg = dict(base, threads=args.threads if args.threads is not None else base["threads"])
    if args.caa_pairs is not None:
        cfg["caa_pairs"] = args.caa_pairs
    if args.no_load or args.only:
        cfg["load"] = False
    cfg["only"] = args.only
    if args.random_weights and not args.model:
        ap.error("--random-weights needs --model (a folder with config.json and the tokenizer)")
    import torch

    cfg["device"] = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg["dtype"] = args.dtype or ("bfloat16" if cfg["device"].startswith("cuda") else "float32")
    if args.model:
        cfg.update(model=args.model, load=False)
    cfg["random_weights"] = args.random_weights
    gpu = torch.cuda.get_device_name() if cfg["device"].startswith("cuda") else None
    if args.random_weights:
        cfg["effect"] = None  # random weights say nothing about sentiment
    out_path = args.out or RESULTS / ("peers_quick.json" if args.quick else "peers.json")
    started = time.time()
    peer_env = ensure_peer_env(args.peers_venv)
    res: dict[str, Any] = {
        "benchmark": "bench_peers",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "reps": reps,
        "config": cfg,
        "machine": benchlib.machine_info(),
        "peer_env": peer_env,
    }
    res["machine"]["gpu"] = gpu
    with tempfile.TemporaryDirectory(prefix="bench_peers.") as tmp:
        work = Path(tmp)
        if cfg["random_weights"]:
            cfg["model_source"] = cfg["model"]
            cfg["model"] = str(random_checkpoint(Path(cfg["model"]), work))
        log(f"preparing texts and vectors ({cfg['model']}, {cfg['device']}, {cfg['dtype']})")
        info = prepare(cfg, work)
        info["peer_model_dir"] = str(peer_model_dir(Path(info["model_dir"]), work))
        res["prepare"] = {k: v for k, v in info.items() if k != "vectors"}
        pythons = {"steerlab": Path(sys.executable), "peers": peer_python(args.peers_venv)}
        runs: list[dict[str, Any]] = []
        for rnd in range(reps):
            jobs = tool_jobs(cfg, info, work, first=rnd == 0, last=rnd == reps - 1)
            k = rnd % len(jobs)
            for job in jobs[k:] + jobs[:k]:
                log(f"round {rnd + 1}/{reps}: {label(job)}")
                r = spawn(pythons[job["env"]], job, work)
                r["round"] = rnd
                runs.append(r)
        if cfg["load"]:
            res["load"] = load_runs(cfg, info, reps, pythons["peers"], work)
        if cfg["effect"] and any("effect" in r["scenarios"] for r in runs):
            log("scoring the effect runs")
            res["effect"] = score_effect(cfg, runs, work)
    res["runs"] = runs
    res["torch_threads"] = sorted({r["torch_threads"] for r in runs})
    res["table"] = summarise(runs)
    res["ratios"] = ratios(res["table"])
    res["machine"]["loadavg_end"] = benchlib.loadavg()
    res["total_wall_s"] = round(time.time() - started, 1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out_path.with_name(out_path.name + ".tmp")
    tmp_out.write_text(json.dumps(res, indent=1) + "\n")
    os.replace(tmp_out, out_path)
    md = markdown(res)
    out_path.with_suffix(".md").write_text(md + "\n")
    log(f"done in {res['total_wall_s']} s; wrote {out_path} and {out_path.with_suffix('.md').name}")
    print(md)


if __name__ == "__main__":
    main()
