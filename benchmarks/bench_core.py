"""Core performance benchmark of steerlab: extraction, steered generation, mixed batches, loading.

Everything is measured on ONE model in ONE run and reported as ratios against a baseline that
does the minimal work any tool must do:

1. **extraction** — ``steerlab.extract(method="mean_diff")`` on persona pairs vs the *bare
   truncated forward* (same rendered texts, length-sorted batches, ``inference_mode``, a hook that
   raises after the deepest layer) and, for context, a plain full forward (``lm_head`` included);
2. **generation** — ``steerlab.generate`` with one ``Steering`` for the batch vs ``steering=None``
   (``min_new_tokens == max_new_tokens`` so both produce exactly the same number of tokens);
3. **mixed** — one batched call where every prompt has its own ``Steering`` vs one unsteered batch
   vs one steered call per prompt;
4. **load** — cold (fresh ``STEERLAB_CACHE``: GGUF conversion; full mode only, once) and warm
   ``load_model``, each in a fresh process (quick mode: the scenario processes' own loads).

Each scenario runs in its own subprocess so that its peak RSS is its own. Inside a scenario the
methods get one warm-up call each, then ``--reps`` timed calls each (``time.perf_counter``), with the
order of the methods rotated every repetition; the median is reported, and the ratios are given
both of medians (the headline) and of minima.

Usage::

    python benchmarks/bench_core.py --quick            # stories260K, tiny sizes, < 60 s
    python benchmarks/bench_core.py [--reps 3] [--out benchmarks/results/core.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import benchlib
from benchlib import log, maxrss_mb, peak_since_reset_mb, ratio, reset_peak, rss_mb, trim_heap

REPO = benchlib.REPO
SHARED = benchlib.SHARED
OPENINGS = SHARED / "data" / "repe" / "all_truncated_outputs.json"
RESULTS = benchlib.RESULTS


@dataclass(frozen=True)
class ExtractSettings:
    """Extraction: ``n_pairs`` persona pairs, layers ``first..last``, texts per forward pass."""

    n_pairs: int
    layers: tuple[int, int]
    batch_size: int

    @property
    def layer_range(self) -> range:
        return range(self.layers[0], self.layers[1] + 1)


@dataclass(frozen=True)
class GenerateSettings:
    """Steered generation; the vector is a ``mean_diff`` of ``vector_pairs`` pairs."""

    n_prompts: int
    batch_size: int
    max_new_tokens: int
    coefficient: float
    vector_pairs: int


@dataclass(frozen=True)
class MixedSettings:
    """The mixed batch: ``n_prompts`` prompts, each with its own steering."""

    n_prompts: int
    max_new_tokens: int


@dataclass(frozen=True, kw_only=True)
class CoreConfig:
    """One run's settings; the JSON's ``config``, and what the parent hands each worker (``--config``)."""

    mode: str
    model: str
    extract: ExtractSettings
    generate: GenerateSettings
    mixed: MixedSettings
    cold_load: bool
    warm_load_reps: int | None  # None: --reps dedicated processes (+1 warm-up); 0: the scenario processes'
    default_threads: int | None  # None: torch's default
    threads: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CoreConfig:
        d = json.loads(text)
        e = d.pop("extract")
        return cls(
            **{k: v for k, v in d.items() if k not in ("generate", "mixed")},
            extract=ExtractSettings(e["n_pairs"], (e["layers"][0], e["layers"][1]), e["batch_size"]),
            generate=GenerateSettings(**d["generate"]),
            mixed=MixedSettings(**d["mixed"]),
        )


FULL = CoreConfig(
    mode="full",
    model="default",
    extract=ExtractSettings(n_pairs=128, layers=(8, 19), batch_size=32),
    generate=GenerateSettings(n_prompts=48, batch_size=16, max_new_tokens=24, coefficient=4.0, vector_pairs=32),
    mixed=MixedSettings(n_prompts=16, max_new_tokens=24),
    cold_load=True,
    warm_load_reps=None,
    default_threads=None,
)
QUICK = CoreConfig(
    mode="quick",
    model=str(SHARED / "models" / "stories260K"),
    extract=ExtractSettings(n_pairs=64, layers=(1, 3), batch_size=32),
    generate=GenerateSettings(n_prompts=12, batch_size=4, max_new_tokens=8, coefficient=4.0, vector_pairs=16),
    mixed=MixedSettings(n_prompts=4, max_new_tokens=8),
    cold_load=False,
    warm_load_reps=0,  # the warm loads of the scenario processes (saves 2+ fresh processes)
    # A 260K-parameter model is far too small for intra-op threads: when other processes keep the
    # cores busy, 2 OpenMP threads wait on each other at every op and generation gets 5-10x slower
    # and erratic. Quick mode is a smoke test, so it uses 1 thread unless --threads says otherwise.
    default_threads=1,
)
SCENARIO_PROCESSES = ("extract", "generate", "mixed")  # each in its own process; then the loads
TARGETS = {"extract/bare": 1.15, "steered/unsteered": 1.03, "mixed/unsteered": 1.15}


# --------------------------------------------------------------------------- timing helpers
class _CallCounter:
    """Counts forward calls of the model (one per generated token per batch)."""

    def __init__(self, model: Any) -> None:
        self.n = 0
        self.handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        self.n += 1

    def close(self) -> int:
        self.handle.remove()
        return self.n


def run_methods(
    methods: dict[str, Callable[[], Any]], reps: int, count_calls_of: Any = None
) -> dict[str, dict[str, Any]]:
    """One warm-up call per method, then ``reps`` timed calls each, rotating the order every rep.

    With ``count_calls_of`` (a model), the forward calls of the model during each (untimed)
    warm-up call are counted and stored as ``forward_calls``: one per generated token and batch,
    which checks that the compared methods generate the same number of tokens.

    Memory: before every call the heap is trimmed (``malloc_trim``) and the kernel's RSS high-water
    mark is reset; it is read after the call, so ``peak_rss_mb`` is the process peak while that
    method ran (model weights included; whatever stays resident from earlier work counts too) and
    ``rss_before_mb`` the lowest RSS seen just before a call of it.
    """
    names = list(methods)
    can_reset = reset_peak()
    out: dict[str, dict[str, Any]] = {
        n: {"times_s": [], "warmup_s": None, "peak_rss_mb": 0.0, "rss_before_mb": None} for n in names
    }

    def call(name: str) -> float:
        gc.collect()
        trim_heap()
        before = rss_mb()
        reset_peak()
        t0 = time.perf_counter()
        methods[name]()
        dt = time.perf_counter() - t0
        peak = peak_since_reset_mb() if can_reset else maxrss_mb()
        rec = out[name]
        rec["peak_rss_mb"] = max(rec["peak_rss_mb"], peak or 0.0)
        if before is not None:
            rb = rec["rss_before_mb"]
            rec["rss_before_mb"] = before if rb is None else min(rb, before)
        return dt

    for name in names:
        counter = _CallCounter(count_calls_of) if count_calls_of is not None else None
        out[name]["warmup_s"] = round(call(name), 4)
        if counter is not None:
            out[name]["forward_calls"] = counter.close()
    for rep in range(reps):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            out[name]["times_s"].append(round(call(name), 4))
    for rec in out.values():
        rec["median_s"] = round(statistics.median(rec["times_s"]), 4)
        rec["min_s"] = round(min(rec["times_s"]), 4)
    return out


def ratios(res: dict[str, dict[str, Any]], *pairs: tuple[str, str]) -> dict[str, dict[str, float]]:
    """``{"a/b": {"median": ..., "min": ...}}``: ratio of medians (the headline) and of minima
    (less sensitive to other processes slowing down single calls)."""
    return {
        f"{a}/{b}": {
            "median": ratio(res[a]["median_s"], res[b]["median_s"]),
            "min": ratio(res[a]["min_s"], res[b]["min_s"]),
        }
        for a, b in pairs
    }


# --------------------------------------------------------------------------- worker side
class _Stop(Exception):
    """Raised by the bare-forward hook after the deepest layer."""


def _quiet() -> None:
    os.environ.setdefault("STEERLAB_QUIET", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _load(cfg: CoreConfig) -> tuple[Any, dict[str, Any]]:
    import steerlab

    t0 = time.perf_counter()
    lm = steerlab.load_model(cfg.model)
    info = {"load_s": round(time.perf_counter() - t0, 3), "rss_after_load_mb": rss_mb()}
    info.update(model_id=lm.model_id, n_layers=lm.n_layers, d_model=lm.d_model)
    return lm, info


def _pairs(n: int) -> list[Any]:
    import steerlab

    openings = steerlab.load_openings(OPENINGS)
    return steerlab.persona_pairs("happy", "sad", openings[:n])


def _prompts(n: int) -> list[str]:
    import steerlab

    return steerlab.load_openings(OPENINGS)[:n]


def _padded(ids: list[list[int]], pad_id: int, side: str) -> tuple[Any, Any]:
    from steerlab.models.tokens import pad_token_ids

    return pad_token_ids(ids, pad_id, side)


def scenario_extract(cfg: CoreConfig, reps: int) -> dict[str, Any]:
    import torch

    import steerlab
    from steerlab.data.pairs import render

    lm, info = _load(cfg)
    ec = cfg.extract
    layers = ec.layer_range
    deepest = max(layers)
    bs = ec.batch_size
    pairs = _pairs(ec.n_pairs)
    t0 = time.perf_counter()
    texts = [render(side, lm) for p in pairs for side in (p.positive, p.negative)]
    render_s = time.perf_counter() - t0
    tok = lm.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    side = tok.padding_side or "right"
    device = lm.device

    def batches() -> list[tuple[Any, Any]]:
        ids = tok(texts, add_special_tokens=True)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        return [_padded([ids[i] for i in order[s : s + bs]], pad_id, side) for s in range(0, len(ids), bs)]

    def stop_hook(_m: Any, _a: Any, _o: Any) -> None:
        raise _Stop

    def bare() -> None:
        handle = lm.blocks[deepest].register_forward_hook(stop_hook)
        try:
            with torch.inference_mode():
                for input_ids, mask in batches():
                    try:
                        lm.model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False)
                    except _Stop:
                        pass
        finally:
            handle.remove()

    def full() -> None:
        with torch.inference_mode():
            for input_ids, mask in batches():
                lm.model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False)

    def extract() -> None:
        steerlab.extract(lm, pairs, method="mean_diff", layers=layers, batch_size=bs, progress=False)

    res = run_methods({"extract": extract, "bare": bare, "full": full}, reps)
    ids = tok(texts, add_special_tokens=True)["input_ids"]
    lens = sorted(len(x) for x in ids)
    padded = sum(max(lens[s : s + bs]) * len(lens[s : s + bs]) for s in range(0, len(lens), bs))
    info.update(
        n_pairs=len(pairs),
        n_texts=len(texts),
        layers=[min(layers), deepest],
        batch_size=bs,
        real_tokens=sum(lens),
        padded_tokens=padded,
        render_s=round(render_s, 4),
        methods=res,
        ratios=ratios(res, ("extract", "bare"), ("full", "bare")),
    )
    return info


def _first_use_check(lm: Any) -> float:
    """steerlab checks the token positions the first time a model is steered (a few tiny forward
    calls); run it here, untimed, so the warm-up's ``forward_calls`` count only the generation."""
    from steerlab.runtime.canary import check_positions

    t0 = time.perf_counter()
    check_positions(lm)
    return round(time.perf_counter() - t0, 4)


def _vector(lm: Any, cfg: CoreConfig) -> Any:
    import steerlab

    pairs = _pairs(cfg.generate.vector_pairs)
    return steerlab.extract(lm, pairs, method="mean_diff", layers=cfg.extract.layer_range, progress=False)


def scenario_generate(cfg: CoreConfig, reps: int) -> dict[str, Any]:
    import steerlab

    lm, info = _load(cfg)
    gc_ = cfg.generate
    vec = _vector(lm, cfg)
    info["first_use_check_s"] = _first_use_check(lm)
    prompts = _prompts(gc_.n_prompts)
    steering = steerlab.Steering(vec, gc_.coefficient)
    kw = {
        "max_new_tokens": gc_.max_new_tokens,
        "min_new_tokens": gc_.max_new_tokens,
        "batch_size": gc_.batch_size,
    }
    outputs: dict[str, list[str]] = {}

    def steered() -> None:
        outputs["steered"] = steerlab.generate(lm, prompts, steering=steering, **kw)

    def unsteered() -> None:
        outputs["unsteered"] = steerlab.generate(lm, prompts, steering=None, **kw)

    n_batches = -(-len(prompts) // gc_.batch_size)
    res = run_methods({"steered": steered, "unsteered": unsteered}, reps, count_calls_of=lm.model)
    info.update(
        n_prompts=len(prompts),
        batch_size=gc_.batch_size,
        new_tokens=gc_.max_new_tokens,
        coefficient=gc_.coefficient,
        vector_layers=vec.layers,
        forward_calls={k: v["forward_calls"] for k, v in res.items()},
        expected_forward_calls=n_batches * gc_.max_new_tokens,
        outputs_differ=sum(a != b for a, b in zip(outputs["steered"], outputs["unsteered"], strict=True)),
        sample={"unsteered": outputs["unsteered"][0], "steered": outputs["steered"][0]},
        methods=res,
        ratios=ratios(res, ("steered", "unsteered")),
    )
    return info


def scenario_mixed(cfg: CoreConfig, reps: int) -> dict[str, Any]:
    import steerlab

    lm, info = _load(cfg)
    mc = cfg.mixed
    vec = _vector(lm, cfg)
    info["first_use_check_s"] = _first_use_check(lm)
    n = mc.n_prompts
    prompts = _prompts(n)
    # n different vectors (scaled copies) with n different coefficients, one per prompt.
    steerings = [steerlab.Steering(vec * (1 + i / 10), 2.0 + 0.25 * i) for i in range(n)]
    kw = {"max_new_tokens": mc.max_new_tokens, "min_new_tokens": mc.max_new_tokens}
    outputs: dict[str, list[str]] = {}

    def mixed() -> None:
        outputs["mixed"] = steerlab.generate(lm, prompts, steering=steerings, batch_size=n, **kw)

    def unsteered() -> None:
        outputs["unsteered"] = steerlab.generate(lm, prompts, steering=None, batch_size=n, **kw)

    def separate() -> None:
        outputs["separate"] = [
            steerlab.generate(lm, [p], steering=s, **kw)[0] for p, s in zip(prompts, steerings, strict=True)
        ]

    res = run_methods({"mixed": mixed, "unsteered": unsteered, "separate": separate}, reps, count_calls_of=lm.model)
    info.update(
        n_prompts=n,
        new_tokens=mc.max_new_tokens,
        coefficients=[s.coefficient for s in steerings],
        forward_calls={k: v["forward_calls"] for k, v in res.items()},
        expected_forward_calls={
            "mixed": mc.max_new_tokens,
            "unsteered": mc.max_new_tokens,
            "separate": n * mc.max_new_tokens,
        },
        outputs_differ_from_unsteered=sum(a != b for a, b in zip(outputs["mixed"], outputs["unsteered"], strict=True)),
        mixed_equals_separate=sum(a == b for a, b in zip(outputs["mixed"], outputs["separate"], strict=True)),
        methods=res,
        ratios=ratios(res, ("mixed", "unsteered"), ("separate", "mixed")),
    )
    return info


def scenario_load(cfg: CoreConfig, reps: int) -> dict[str, Any]:
    _lm, info = _load(cfg)
    info.update(cache=os.environ.get("STEERLAB_CACHE"))
    return info


SCENARIOS: dict[str, Callable[[CoreConfig, int], dict[str, Any]]] = {
    "extract": scenario_extract,
    "generate": scenario_generate,
    "mixed": scenario_mixed,
    "load": scenario_load,
}


def worker(name: str, cfg: CoreConfig, reps: int, result: Path) -> None:
    t0 = time.perf_counter()
    import torch

    import steerlab  # noqa: F401  (a fresh process: the import is part of what a user waits for)

    import_s = round(time.perf_counter() - t0, 3)
    _quiet()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    info = SCENARIOS[name](cfg, reps)
    info.update(
        import_s=import_s,
        scenario_wall_s=round(time.perf_counter() - t0, 2),
        peak_rss_mb=maxrss_mb(),
        torch_threads=torch.get_num_threads(),
    )
    result.write_text(json.dumps(info))


# --------------------------------------------------------------------------- parent side
def machine_info() -> dict[str, Any]:
    return benchlib.machine_info(("torch", "transformers", "steerlab"))


def spawn(name: str, cfg: CoreConfig, reps: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one scenario in a fresh Python process and return its result."""
    with tempfile.TemporaryDirectory(prefix="bench_core.") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            name,
            "--config",
            cfg.to_json(),
            "--reps",
            str(reps),
            "--result",
            str(result),
        ]
        child_env = dict(os.environ, STEERLAB_QUIET="1", TRANSFORMERS_VERBOSITY="error", **(env or {}))
        return benchlib.run_worker(cmd, result, f"scenario {name!r}", child_env)


def load_scenario(cfg: CoreConfig, reps: int, scenario_runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Cold load (full mode) and warm loads, each in a fresh process.

    The scenario workers are fresh processes that import steerlab and load the model from the warm
    cache too: with ``warm_load_reps == 0`` (quick mode) their loads are the warm samples (the first
    one is the warm-up) and no extra process is started.
    """
    out: dict[str, Any] = {}
    if cfg.cold_load:
        cache = tempfile.mkdtemp(prefix="steerlab-cold-cache.")
        try:
            log(f"load: cold (GGUF conversion into {cache})")
            out["cold"] = spawn("load", cfg, 0, env={"STEERLAB_CACHE": cache})
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    reps = reps if cfg.warm_load_reps is None else cfg.warm_load_reps
    if reps:
        log(f"load: warm x{reps + 1} (1 warm-up)")
        runs = [spawn("load", cfg, 0) for _ in range(reps + 1)]
    else:
        runs = scenario_runs
    warm = runs[1:]
    out["warm"] = {
        "source": "dedicated load processes" if reps else "the scenario processes (first one = warm-up)",
        "load_s_in_scenario_processes": [r["load_s"] for r in scenario_runs],
        "warmup_load_s": runs[0]["load_s"],
        "load_s": [r["load_s"] for r in warm],
        "median_load_s": round(statistics.median(r["load_s"] for r in warm), 3),
        "import_s": [r["import_s"] for r in warm],
        "median_import_s": round(statistics.median(r["import_s"] for r in warm), 3),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in warm),
        "rss_after_load_mb": warm[-1]["rss_after_load_mb"],
    }
    if "cold" in out:
        cold_warm = ratio(out["cold"]["load_s"], out["warm"]["median_load_s"])
        out["ratios"] = {"cold/warm": {"median": cold_warm, "min": cold_warm}}
    return out


def _target(key: str, value: float) -> str:
    limit = TARGETS.get(key)
    if limit is None:
        return ""
    return f" (target <= {limit}: {'ok' if value <= limit else 'MISSED'})"


def _load_avg(machine: dict[str, Any]) -> str:
    start, end = machine.get("loadavg_start"), machine.get("loadavg_end")
    if not start or not end:
        return "unknown"
    return f"{start[0]:.1f} at start, {end[0]:.1f} at end"


def markdown(res: dict[str, Any]) -> str:
    sc = res["scenarios"]
    lines = [
        f"steerlab core benchmark — {res['config']['mode']} mode, model {sc['extract']['model_id']}, "
        f"reps {res['reps']} (median), {res['machine']['cpu_count']} CPUs, "
        f"{sc['extract']['torch_threads']} torch threads, torch {res['machine']['torch']}, "
        f"load average {_load_avg(res['machine'])}",
        "",
        "| scenario | method | median s | min s | peak RSS MiB |",
        "|---|---|---:|---:|---:|",
    ]
    for name in ("extract", "generate", "mixed"):
        for meth, rec in sc[name]["methods"].items():
            lines.append(f"| {name} | {meth} | {rec['median_s']:.3f} | {rec['min_s']:.3f} | {rec['peak_rss_mb']:.0f} |")
    load = sc["load"]
    if "cold" in load:
        lines.append(
            f"| load | cold (GGUF conversion) | {load['cold']['load_s']:.3f} |  | {load['cold']['peak_rss_mb']:.0f} |"
        )
    w = load["warm"]
    lines.append(f"| load | warm | {w['median_load_s']:.3f} | {min(w['load_s']):.3f} | {w['peak_rss_mb']:.0f} |")
    lines.append(f"| load | import steerlab | {w['median_import_s']:.3f} | {min(w['import_s']):.3f} |  |")
    lines += ["", "| ratio | of medians | of minima |", "|---|---:|---:|"]
    for name in ("extract", "generate", "mixed", "load"):
        for key, value in sc[name].get("ratios", {}).items():
            lines.append(f"| {key} | {value['median']:.3f}{_target(key, value['median'])} | {value['min']:.3f} |")
    lines += ["", "| scenario | process peak RSS MiB | RSS after model load MiB |", "|---|---:|---:|"]
    for name in ("extract", "generate", "mixed"):
        lines.append(f"| {name} | {sc[name]['peak_rss_mb']:.0f} | {sc[name]['rss_after_load_mb']:.0f} |")
    g, m = sc["generate"], sc["mixed"]
    lines += [
        "",
        f"forward calls (= generated tokens per batch × batches): generate {g['forward_calls']} "
        f"(expected {g['expected_forward_calls']} each), mixed {m['forward_calls']}",
    ]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="stories260K and tiny sizes (< 60 s)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per method (default 3)")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON output (default benchmarks/results/core.json, core_quick.json with --quick)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads in the workers (default: torch's default; 1 with --quick)",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return ap


def run(cfg: CoreConfig, reps: int) -> dict[str, Any]:
    """Every scenario in its own process, then the loads; the result JSON."""
    started = time.time()
    res = benchlib.result_header("bench_core", started, reps, asdict(cfg), machine_info())
    res["scenarios"] = {}
    for name in SCENARIO_PROCESSES:
        log(f"{name}: running in a subprocess")
        res["scenarios"][name] = spawn(name, cfg, reps)
    runs = [res["scenarios"][n] for n in SCENARIO_PROCESSES]
    res["scenarios"]["load"] = load_scenario(cfg, reps, runs)
    res["machine"]["loadavg_end"] = benchlib.loadavg()
    res["total_wall_s"] = round(time.time() - started, 1)
    return res


def main(argv: list[str] | None = None) -> None:
    ap = parser()
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, CoreConfig.from_json(args.config), args.reps, args.result)
        return
    if args.reps < 1:
        ap.error("--reps must be >= 1")
    base = QUICK if args.quick else FULL
    cfg = replace(base, threads=base.default_threads if args.threads is None else args.threads)
    out = args.out or RESULTS / ("core_quick.json" if args.quick else "core.json")
    res = run(cfg, args.reps)
    benchlib.write_json(out, res, indent=2)
    log(f"done in {res['total_wall_s']} s; wrote {out}")
    print(markdown(res))


if __name__ == "__main__":
    main()
