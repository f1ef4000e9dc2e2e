"""Distributed extraction throughput: one process vs Ray with 1 and 2 workers, on this machine.

What is timed (all in one driver process, ``time.perf_counter``):

1. **one process** — ``steerlab.extract(method="mean_diff")`` on persona pairs, with 1 torch thread
   and with as many threads as the machine has cores (the fair single-process baseline);
2. **Ray start** — ``ray.init(num_cpus=max workers)`` (a local instance);
3. **pool start** — for each worker count, the actors starting and loading the model (once; later
   calls reuse them);
4. **Ray, N workers** — ``steerlab.extract(..., executor=RayExecutor(workers=N))`` on the warm pool
   (each worker 1 thread).

Every configuration gets one warm-up call, then ``--reps`` timed calls; medians are reported as
pairs per second and, for Ray, per worker. The vectors are checked against the single-process one
(max |difference|). The load average is recorded before and after every configuration: on a shared
machine other processes take cores too, and the numbers say so.

The per-worker rate is what this machine measured; a cluster of K workers each holding its own
cores would reach at most about K times it (the driver's merge costs little: one accumulator state
per shard) — an extrapolation from these measurements, not a promise.

Usage::

    python benchmarks/bench_distributed.py --quick        # stories260K, 64 pairs, 1 rep
    python benchmarks/bench_distributed.py                # default model, 256 pairs, 3 reps
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import benchlib
from benchlib import log

REPO = benchlib.REPO
SHARED = benchlib.SHARED
OPENINGS = SHARED / "data" / "repe" / "all_truncated_outputs.json"


def uptime() -> str:
    """The ``uptime`` line (load averages as the shell shows them)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def timed(fn: Callable[[], Any], reps: int) -> tuple[list[float], Any, list[float] | None, list[float] | None]:
    """One warm-up call, then ``reps`` timed calls: ``(seconds, last result, load before, load after)``."""
    out = fn()
    load_before = benchlib.loadavg()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(round(time.perf_counter() - t0, 3))
    return times, out, load_before, benchlib.loadavg()


def row(
    name: str, n_pairs: int, times: list[float], workers: int, load: tuple[Any, Any], **extra: Any
) -> dict[str, Any]:
    median = statistics.median(times)
    rate = n_pairs / median
    out = {
        "config": name,
        "workers": workers,
        "seconds": times,
        "median_s": round(median, 3),
        "pairs_per_s": round(rate, 2),
        "pairs_per_s_per_worker": round(rate / max(workers, 1), 2),
        "loadavg_before": load[0],
        "loadavg_after": load[1],
        **extra,
    }
    log(f"{name}: median {median:.2f} s, {rate:.1f} pairs/s")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="stories260K, 64 pairs, 1 rep")
    ap.add_argument("--model", default=None, help="model (default: 'default', or stories260K with --quick)")
    ap.add_argument("--pairs", type=int, default=None, help="persona pairs (default 256; 64 with --quick)")
    ap.add_argument("--layers", default=None, help="first-last layer (default 8-19; 1-4 with --quick)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--reps", type=int, default=None, help="timed calls per configuration (default 3; 1 --quick)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    quick = args.quick
    model = args.model or (str(SHARED / "models" / "stories260K") if quick else "default")
    n_pairs = args.pairs or (64 if quick else 256)
    first, last = (int(x) for x in (args.layers or ("1-4" if quick else "8-19")).split("-"))
    reps = args.reps or (1 if quick else 3)
    out_path = args.out or benchlib.RESULTS / ("distributed_quick.json" if quick else "distributed.json")
    started = time.time()
    machine = benchlib.machine_info(("torch", "transformers", "ray", "steerlab"))
    machine["uptime_start"] = uptime()
    log(f"machine: {machine['cpu_count']} cores; {machine['uptime_start']}")

    import ray
    import torch

    import steerlab
    from steerlab.distributed import RayExecutor, actors, shutdown_pool

    os.environ.setdefault("STEERLAB_QUIET", "1")
    lm = steerlab.load_model(model)
    openings = steerlab.load_openings(OPENINGS)
    pairs = steerlab.persona_pairs("happy", "sad", (openings * (1 + n_pairs // len(openings)))[:n_pairs])
    layers = range(first, last + 1)
    cores = os.cpu_count() or 1

    def extract(workers: int | None = None) -> Any:
        executor = RayExecutor(workers) if workers else None
        return steerlab.extract(lm, pairs, layers=layers, batch_size=args.batch_size, progress=False, executor=executor)

    rows: list[dict[str, Any]] = []
    reference = None
    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        times, vec, *load = timed(extract, reps)
        reference = reference if reference is not None else vec
        rows.append(
            row(f"one process, {threads} torch thread(s)", n_pairs, times, 0, (load[0], load[1]), threads=threads)
        )
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ray.init(num_cpus=max(args.workers), include_dashboard=False, logging_level=logging.WARNING)
    ray_start = round(time.perf_counter() - t0, 2)
    log(f"ray.init(num_cpus={max(args.workers)}): {ray_start} s")
    for workers in args.workers:
        t0 = time.perf_counter()
        handles = actors(lm, workers)
        ray.get([h.pid.remote() for h in handles])  # each actor has loaded the model
        pool_start = round(time.perf_counter() - t0, 2)
        log(f"{workers} worker(s) started and loaded the model: {pool_start} s")
        times, vec, *load = timed(partial(extract, workers), reps)
        assert vec is not None
        assert reference is not None
        diff = max(float((vec.directions[k] - reference.directions[k]).abs().max()) for k in layers)
        rows.append(
            row(
                f"Ray, {workers} worker(s)",
                n_pairs,
                times,
                workers,
                (load[0], load[1]),
                pool_start_s=pool_start,
                shards=vec.meta["shards"],
                max_abs_diff_vs_one_process=diff,
            )
        )
        shutdown_pool()
    ray.shutdown()
    ray_rows = {r["workers"]: r for r in rows if r["workers"]}
    one = ray_rows.get(1)
    scaling = {
        str(w): {
            "speedup_vs_1_worker": round(r["pairs_per_s"] / one["pairs_per_s"], 3) if one else None,
            "per_worker_rate": r["pairs_per_s_per_worker"],
        }
        for w, r in ray_rows.items()
    }
    result = benchlib.result_header(
        "distributed",
        started,
        reps,
        {
            "model": model,
            "model_id": lm.model_id,
            "n_pairs": n_pairs,
            "layers": [first, last],
            "batch_size": args.batch_size,
            "workers": args.workers,
            "threads_per_worker": 1,
        },
        machine,
    )
    machine["loadavg_end"] = benchlib.loadavg()
    machine["uptime_end"] = uptime()
    result.update(
        ray_init_s=ray_start,
        rows=rows,
        scaling=scaling,
        projection=(
            "a cluster of K workers, each with its own cores, would read at most about "
            f"K x {ray_rows[min(ray_rows)]['pairs_per_s_per_worker']} pairs/s (the per-worker rate "
            "measured here); an extrapolation, not a measurement"
        ),
    )
    benchlib.write_json(out_path, result)
    print(markdown(result))
    log(f"wrote {out_path}")
    return 0


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| configuration | median s | pairs/s | pairs/s per worker | load avg (before → after) |",
        "|---|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        load = f"{r['loadavg_before'][0]:.1f} → {r['loadavg_after'][0]:.1f}" if r["loadavg_before"] else "-"
        per = r["pairs_per_s_per_worker"] if r["workers"] else "-"
        lines.append(f"| {r['config']} | {r['median_s']} | {r['pairs_per_s']} | {per} | {load} |")
    return "\n".join(lines) + "\n\n" + json.dumps(result["scaling"])


if __name__ == "__main__":
    raise SystemExit(main())
