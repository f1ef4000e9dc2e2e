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

Layout: this script prepares the inputs and runs the rounds; each scenario is a typed object in
``peers_scenarios.py`` (``--only`` picks them by name); the shared state is ``peers_context.py``;
``peers_worker.py`` runs one tool's steps (``peers_jobs.py``) in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import benchlib
from benchlib import log
from peers_context import (
    TOOLS,
    Context,
    EffectSettings,
    GenSettings,
    MixedSettings,
    PeersConfig,
    Prepared,
    Round,
    ToolSpec,
    label,
)
from peers_jobs import Pair, Step, Texts, VectorPaths
from peers_scenarios import Scenario, ScenarioResult, build_scenarios, in_tool_order, select, summarise_loads

REPO = benchlib.REPO
SHARED = benchlib.SHARED
OPENINGS = SHARED / "data" / "repe" / "all_truncated_outputs.json"
CAA = SHARED / "data" / "caa" / "datasets" / "generate" / "sycophancy" / "generate_dataset.json"
RESULTS = benchlib.RESULTS
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

FULL = PeersConfig(
    mode="full",
    model="default",
    layers=(8, 19),
    persona_pairs=128,
    caa_pairs=1000,
    gen=GenSettings(n_prompts=48, batch_size=16, new_tokens=24),
    mixed=MixedSettings(n_prompts=16, new_tokens=24),
    speed_coefficient=4.0,
    effect=EffectSettings(n_prompts=48, new_tokens=32, batch_size=16, coefficients=(1.0, 2.0, 4.0)),
    load=True,
    threads=None,
)
QUICK = PeersConfig(
    mode="quick",
    model=str(SHARED / "models" / "stories260K"),
    layers=(1, 3),
    persona_pairs=32,
    caa_pairs=8,
    gen=GenSettings(n_prompts=8, batch_size=4, new_tokens=8),
    mixed=MixedSettings(n_prompts=4, new_tokens=8),
    speed_coefficient=4.0,
    effect=EffectSettings(n_prompts=8, new_tokens=8, batch_size=8, coefficients=(2.0,)),
    load=False,
    threads=1,
)


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


def _caa_texts(cfg: PeersConfig, lm: Any) -> list[Pair]:
    import steerlab
    from steerlab.data.pairs import ChatText, render

    # the first cfg.caa_pairs pairs that fit the model's context (a longer text is refused, never
    # truncated: stories260K's 512 tokens hold about half of the sycophancy items)
    caa: list[Pair] = []
    context = lm.context_length or float("inf")
    for p in steerlab.caa_pairs(steerlab.load_caa(CAA)) if cfg.caa_pairs else []:
        if len(caa) == cfg.caa_pairs:
            break
        assert isinstance(p.positive, ChatText) and isinstance(p.negative, ChatText)  # answers "(A)"
        pair = (
            _cut_after_answer(render(p.positive, lm), p.positive.assistant[1]),
            _cut_after_answer(render(p.negative, lm), p.negative.assistant[1]),
        )
        if all(len(lm.tokenizer(t)["input_ids"]) <= context for t in pair):
            caa.append(pair)
    return caa


def render_texts(cfg: PeersConfig, lm: Any) -> Texts:
    """Every text of the run, rendered once with the model's chat template."""
    import steerlab
    from steerlab.data.pairs import render

    openings = steerlab.load_openings(OPENINGS)
    n_p = cfg.persona_pairs
    persona = [
        (render(p.positive, lm), render(p.negative, lm)) for p in steerlab.persona_pairs("happy", "sad", openings[:n_p])
    ]
    return Texts(
        persona=persona,
        caa=_caa_texts(cfg, lm),
        gen_prompts=openings[: cfg.gen.n_prompts],
        mixed_prompts=openings[: cfg.mixed.n_prompts],
        effect_prompts=openings[n_p : n_p + cfg.effect.n_prompts] if cfg.effect else [],
        check_text=persona[0][0],
    )


def mixed_vectors(ref: dict[int, Any], n: int, work: Path) -> tuple[str, ...]:
    """``n`` vectors, each its own direction and strength: the reference, its negation, or a random
    direction of the same norms, times a coefficient; saved in ``work``."""
    import torch

    gen = torch.Generator().manual_seed(0)
    paths: list[str] = []
    for i in range(n):
        kind, coef = i % 3, (1.0, 2.0, 4.0, 8.0)[i % 4]
        vec = {}
        for k, v in ref.items():
            if kind == 2:
                r = torch.randn(v.shape, generator=gen)
                v = r * (v.norm() / r.norm())
            vec[k] = v * (-coef if kind == 1 else coef)
        path = work / f"mixed{i}.pt"
        torch.save(vec, path)
        paths.append(str(path))
    return tuple(paths)


def prepare(cfg: PeersConfig, work: Path) -> Prepared:
    """Render all texts once with steerlab, build the vectors; write them into ``work``."""
    import torch

    import steerlab

    lm = steerlab.load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    texts = render_texts(cfg, lm)
    (work / "data.json").write_text(texts.to_json())
    ref = steerlab.extract(
        lm,
        [steerlab.ContrastPair(p, n) for p, n in texts.persona],
        method="mean_diff",
        layers=range(cfg.layers[0], cfg.layers[1] + 1),
        progress=False,
    ).directions
    torch.save(ref, work / "reference.pt")
    torch.save({k: v * cfg.speed_coefficient for k, v in ref.items()}, work / "speed.pt")
    model_dir = Path(lm.model.name_or_path)
    return Prepared(
        model_id=lm.model_id,
        n_layers=lm.n_layers,
        d_model=lm.d_model,
        model_dir=str(model_dir),
        peer_model_dir=str(peer_model_dir(model_dir, work)),
        tokens={
            name: sum(len(x) for p in pairs for x in lm.tokenizer(list(p))["input_ids"])
            for name, pairs in (("persona", texts.persona), ("caa", texts.caa))
        },
        reference_norms={k: round(float(v.norm()), 4) for k, v in ref.items()},
        vectors=VectorPaths(speed=str(work / "speed.pt"), mixed=mixed_vectors(ref, cfg.mixed.n_prompts, work)),
    )


# --------------------------------------------------------------------------- running
def round_steps(ctx: Context, scenarios: list[Scenario], tool: ToolSpec, rnd: Round) -> list[Step]:
    """``tool``'s steps in round ``rnd``: every scenario's, in registry order (owners noted)."""
    steps: list[Step] = []
    for sc in scenarios:
        for step in sc.steps(ctx, tool, rnd):
            ctx.owners[step.name] = sc.name
            steps.append(step)
    return steps


def run_rounds(ctx: Context, scenarios: list[Scenario]) -> None:
    """``ctx.reps`` rounds of one fresh process per tool, the order rotating every round."""
    for i in range(ctx.reps):
        rnd = Round(i, ctx.reps)
        jobs = [ctx.job(tool, round_steps(ctx, scenarios, tool, rnd)) for tool in TOOLS]
        k = i % len(jobs)
        for job in jobs[k:] + jobs[:k]:
            log(f"round {i + 1}/{ctx.reps}: {label(job.tool, job.env)}")
            r = ctx.spawn(job)
            r["round"] = i
            ctx.runs.append(r)


# --------------------------------------------------------------------------- report
def header(res: dict[str, Any]) -> str:
    m, cfg, peers = res["machine"], res["config"], res["peer_env"]
    return (
        f"bench_peers — {cfg['mode']} mode, {res['prepare']['model_id']}, {res['reps']} rounds (median), "
        f"{m['gpu'] or m['cpu']} ({cfg['dtype']}), {m['cpu_count']} CPUs, torch threads {res['torch_threads']}, "
        f"steerlab env transformers {m['transformers']}, peers env transformers {peers['transformers']} "
        f"(steering-vectors {peers['steering-vectors']}, repeng {peers['repeng']}), "
        f"commit {str(m['git_commit'])[:10]}{' (dirty)' if m['git_dirty'] else ''}, load average "
        f"{m['loadavg_start'][0]:.1f} → {m['loadavg_end'][0]:.1f}"
    )


def markdown(res: dict[str, Any], done: list[tuple[Scenario, ScenarioResult]]) -> str:
    """The report: the tool table (worker loads, then each scenario's rows), the ratios, the notes."""
    lines = [
        header(res),
        "",
        "| tool | scenario | median s | min s | peak RSS MiB | added RSS MiB | peak GPU MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += [_load_row(tool, steps["load"]) for tool, steps in res["table"].items() if "load" in steps]
    for sc, result in done:
        lines += sc.table(result)
    lines += ["", "| ratio (of medians) | value |", "|---|---:|"]
    for sc, result in done:
        lines += sc.ratio_rows(result)
    for sc, result in done:
        lines += sc.notes(result)
    return "\n".join(lines)


def _load_row(tool: str, rec: dict[str, Any]) -> str:
    """A worker's model load (warm: every round's process loads the model)."""
    return f"| {tool} | load | {rec['median_s']:.3f} | {rec['min_s']:.3f} | {rec['peak_rss_mb']:.0f} |  |  |"


def collect(res: dict[str, Any], ctx: Context, done: list[tuple[Scenario, ScenarioResult]]) -> None:
    """Add the run's results to the JSON: sections, every worker run, the table, the ratios."""
    res["config"] = ctx.cfg.to_dict()
    res["prepare"] = ctx.prepared.summary()
    res.update({r.name: r.section for _, r in done if r.section is not None})
    res["runs"] = ctx.runs
    res["torch_threads"] = sorted({r["torch_threads"] for r in ctx.runs})
    table: dict[str, dict[str, Any]] = {}
    for part in (summarise_loads(ctx.runs), *(r.table for _, r in done)):
        for tool, steps in part.items():
            table.setdefault(tool, {}).update(steps)
    res["table"] = in_tool_order(table)
    res["ratios"] = {k: v for _, r in done for k, v in r.ratios.items()}


# --------------------------------------------------------------------------- command line
def parser() -> argparse.ArgumentParser:
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
        help="run only the scenarios whose names start with these (extract_persona, extract_caa, generate, "
        "mixed, effect; effect brings extract_persona, whose vectors it uses); no load runs",
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
    return ap


def configure(ap: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[PeersConfig, int, list[Scenario]]:
    """The run's configuration, its number of rounds and its scenarios (``ap.error`` if invalid)."""
    base = QUICK if args.quick else FULL
    reps = args.reps if args.reps is not None else (1 if args.quick else 3)
    if reps < 1:
        ap.error("--reps must be >= 1")
    if args.random_weights and not args.model:
        ap.error("--random-weights needs --model (a folder with config.json and the tokenizer)")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = replace(
        base,
        model=args.model or base.model,
        caa_pairs=base.caa_pairs if args.caa_pairs is None else args.caa_pairs,
        effect=None if args.random_weights else base.effect,  # random weights say nothing about sentiment
        load=base.load and not (args.no_load or args.only or args.model),
        threads=base.threads if args.threads is None else args.threads,
        only=tuple(args.only) if args.only else None,
        device=device,
        dtype=args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"),
        random_weights=args.random_weights,
    )
    try:
        scenarios = select(build_scenarios(cfg), cfg.only)
    except ValueError as e:
        ap.error(str(e))
    return cfg, reps, scenarios


def context(cfg: PeersConfig, work: Path, reps: int, peers_venv: Path) -> Context:
    """The shared state: the model (a random-weight copy with ``--random-weights``), the texts and
    vectors, the interpreters of both environments."""
    if cfg.random_weights:
        cfg = replace(cfg, model_source=cfg.model, model=str(random_checkpoint(Path(cfg.model), work)))
    log(f"preparing texts and vectors ({cfg.model}, {cfg.device}, {cfg.dtype})")
    pythons = {"steerlab": Path(sys.executable), "peers": peer_python(peers_venv)}
    return Context(cfg=cfg, work=work, prepared=prepare(cfg, work), pythons=pythons, reps=reps)


def main(argv: list[str] | None = None) -> None:
    ap = parser()
    args = ap.parse_args(argv)
    cfg, reps, scenarios = configure(ap, args)
    out_path = args.out or RESULTS / ("peers_quick.json" if args.quick else "peers.json")
    started = time.time()
    peer_env = ensure_peer_env(args.peers_venv)
    res = benchlib.result_header("bench_peers", started, reps, cfg.to_dict(), benchlib.machine_info())
    res["peer_env"] = peer_env
    res["machine"]["gpu"] = _gpu_name() if cfg.cuda else None
    with tempfile.TemporaryDirectory(prefix="bench_peers.") as tmp:
        ctx = context(cfg, Path(tmp), reps, args.peers_venv)
        run_rounds(ctx, scenarios)
        done = [(sc, sc.run(ctx)) for sc in scenarios]
    collect(res, ctx, done)
    res["machine"]["loadavg_end"] = benchlib.loadavg()
    res["total_wall_s"] = round(time.time() - started, 1)
    benchlib.write_json(out_path, res, indent=1)
    md = markdown(res, done)
    out_path.with_suffix(".md").write_text(md + "\n")
    log(f"done in {res['total_wall_s']} s; wrote {out_path} and {out_path.with_suffix('.md').name}")
    print(md)


def _gpu_name() -> str:
    import torch

    return str(torch.cuda.get_device_name())


if __name__ == "__main__":
    main()
