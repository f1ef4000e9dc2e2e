"""Steering's per-step cost in decoding, where steps are short (issue 14's proxy) and on the default model.

One process, one torch thread, runs alternating in rounds: plain ``generate``, one vector for the
whole batch, and a different vector per row (16 rows), every steering at ``positions="generated"``
on every layer the vector has. Each run's CPU time (``time.process_time``: the work of this process,
so other processes on a shared machine disturb it less than wall time) and wall time are recorded;
the table reports the minimum and the median over rounds, the ratio to plain, and the per-step cost
in microseconds. The steering session's set-up (building the per-layer deltas, once per
``generate`` call) is measured on its own and counted in the ratio, as users pay it.

Usage::

    python benchmarks/bench_steps.py --quick                   # stories260K only (~1 min)
    python benchmarks/bench_steps.py                            # + the default model
    python benchmarks/bench_steps.py --out benchmarks/results/steps.json

Writes JSON (machine, versions, git commit, load average) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from benchlib import RESULTS, SHARED, log, machine_info, result_header, write_json


@dataclass(frozen=True)
class StepCase:
    """One model's setting: batch, new tokens, layers steered, rounds."""

    name: str
    model: str
    batch: int
    new_tokens: int
    layers: tuple[int, ...] | None  # None: every layer
    rounds: int
    target: float  # the bound on steered / plain


QUICK = StepCase("stories260K", str(SHARED / "models" / "stories260K"), 16, 64, None, 9, 1.03)
DEFAULT = StepCase("SmolLM2-135M", "default", 16, 24, None, 5, 1.01)


def _setup(case: StepCase) -> tuple[Any, list[str], dict[str, Any]]:
    import steerlab

    lm = steerlab.load_model(case.model)
    layers = list(case.layers) if case.layers is not None else list(range(lm.n_layers))
    pairs = steerlab.pairs_from_lists(
        ["Lily was happy and loved the sun", "The dog was glad", "Tom smiled"],
        ["Lily was sad and hated the rain", "The dog was upset", "Tom cried"],
    )
    vec = steerlab.extract(lm, pairs, layers=layers, progress=False)
    prompts = [("Once upon a time there was a", "The cat sat")[i % 2] for i in range(case.batch)]
    settings: dict[str, Any] = {
        "plain": None,
        "one vector": steerlab.Steering(vec, 1.0, positions="generated"),
        "a vector per row": [
            steerlab.Steering(vec * (0.5 + 0.1 * i), 1.0, positions="generated") for i in range(case.batch)
        ],
    }
    return lm, prompts, settings


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _setup_cost(lm: Any, steering: Any, batch: int) -> float:
    """CPU seconds to open and close one steering session (per ``generate`` call)."""
    import steerlab

    rows = steering if isinstance(steering, list) else [steering] * batch
    start = time.process_time()
    for _ in range(20):
        with steerlab.steer_rows(lm, rows):
            pass
    return (time.process_time() - start) / 20


def run_case(case: StepCase) -> dict[str, Any]:
    """Alternating rounds of every setting; minimum and median CPU/wall time per setting."""
    import steerlab

    lm, prompts, settings = _setup(case)
    n = case.new_tokens

    def gen(steering: Any) -> None:
        steerlab.generate(lm, prompts, steering=steering, max_new_tokens=n, min_new_tokens=n)

    for s in settings.values():  # warm-up (the first steered call runs the position canary)
        gen(s)
    cpu: dict[str, list[float]] = {k: [] for k in settings}
    wall: dict[str, list[float]] = {k: [] for k in settings}
    for r in range(case.rounds):
        names = list(settings)
        for k in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order every round
            w, c = _timed(partial(gen, settings[k]))
            cpu[k].append(c)
            wall[k].append(w)
        log(f"{case.name}: round {r + 1}/{case.rounds}")
    rows = {}
    for k in settings:
        rows[k] = {
            "cpu_min_s": min(cpu[k]),
            "cpu_median_s": statistics.median(cpu[k]),
            "wall_min_s": min(wall[k]),
            "wall_median_s": statistics.median(wall[k]),
            "ratio_min": min(cpu[k]) / min(cpu["plain"]),
            "ratio_median": statistics.median(cpu[k]) / statistics.median(cpu["plain"]),
            "extra_us_per_step_min": (min(cpu[k]) - min(cpu["plain"])) / n * 1e6,
            "session_setup_ms": None if settings[k] is None else _setup_cost(lm, settings[k], case.batch) * 1e3,
        }
    plain_step = min(cpu["plain"]) / n * 1e3
    return {"case": asdict(case), "plain_ms_per_step": plain_step, "n_layers": lm.n_layers, "settings": rows}


def markdown(res: dict[str, Any]) -> str:
    """The short table."""
    out = [
        "| model | setting | CPU ms/step (min) | ratio min | ratio median | extra µs/step | set-up ms | target |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for case in res["cases"]:
        c = case["case"]
        for name, row in case["settings"].items():
            ok = "" if name == "plain" else ("met" if row["ratio_median"] <= c["target"] else "MISSED")
            setup = "" if row["session_setup_ms"] is None else f"{row['session_setup_ms']:.2f}"
            where = f"{c['name']} (batch {c['batch']}, {c['new_tokens']} tokens, {case['n_layers']} layers)"
            step_ms = row["cpu_min_s"] / c["new_tokens"] * 1e3
            out.append(
                f"| {where} | {name} | {step_ms:.3f} | {row['ratio_min']:.3f} | {row['ratio_median']:.3f} "
                f"| {row['extra_us_per_step_min']:.0f} | {setup} | ≤ {c['target']:.2f} {ok} |"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="stories260K only")
    p.add_argument("--rounds", type=int, default=None, help="rounds per case (default 9 / 5)")
    p.add_argument("--out", type=Path, default=RESULTS / "steps.json")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    cases = [QUICK] if args.quick else [QUICK, DEFAULT]
    if args.rounds:
        cases = [StepCase(**{**asdict(c), "rounds": args.rounds}) for c in cases]
    started = time.time()
    header = result_header("bench_steps", started, max(c.rounds for c in cases),
                           {"cases": [asdict(c) for c in cases]}, machine_info())
    res = {**header, "cases": [run_case(c) for c in cases]}
    res["markdown"] = markdown(res)
    write_json(args.out, res)
    print(res["markdown"])
    log(f"wrote {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
