"""Extraction against the bare forward over the distinct token prefixes only (persona and CAA).

A causal model's activation at a token depends only on the tokens before it, so across a dataset
each distinct token prefix needs computing once: that is the least work any extraction can do.
Per dataset this measures, in one process, with the methods' order rotated every repetition:

* ``extract``: ``steerlab.extract(method="mean_diff")`` (``share_prefix=True``, the default);
* ``noshare``: the same with ``share_prefix=False`` (every token of every text);
* ``bare_distinct``: **the bare forward over the distinct prefixes only** — every text cut after its
  read token, the distinct sequences sorted; each one contributes the tokens after its common prefix
  with the one before it (a sequence that is a prefix of the next contributes nothing). These are
  the leaf chains of the prefix tree: every distinct prefix exactly once, as the fewest plain
  sequences (one per leaf). They run as length-sorted batches of ``batch_size`` rows, no cache,
  under ``inference_mode``, stopped after the deepest layer (their tokens lack the context before
  them: the cost of computing them, not their values);
* ``bare_full``: the bare truncated forward over every text (cut after its read token), the same
  batching — what the extraction costs without any sharing.

Counts reported beside the times: texts, tokens, distinct prefixes, and steerlab's plan (tokens it
runs, padded positions, forward passes).

Usage::

    python benchmarks/bench_extract.py --quick                 # stories260K, small sizes (~1 min)
    python benchmarks/bench_extract.py                         # SmolLM2-135M: 128 persona pairs, 1000 CAA pairs
    python benchmarks/bench_extract.py --caa-pairs 200 --reps 2
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import benchlib
from benchlib import log, maxrss_mb, peak_since_reset_mb, ratio, reset_peak, rss_mb, trim_heap

SHARED = benchlib.SHARED
OPENINGS = SHARED / "data" / "repe" / "all_truncated_outputs.json"
CAA = SHARED / "data" / "caa" / "datasets" / "generate" / "sycophancy" / "generate_dataset.json"
TARGET = 1.15  # extract / bare_distinct
METHODS = ("extract", "noshare", "bare_distinct", "bare_full")


@dataclass(frozen=True)
class Config:
    """One run's settings."""

    mode: str
    model: str
    persona_pairs: int
    caa_pairs: int
    layers: tuple[int, int]
    batch_size: int
    threads: int


FULL = Config("full", "default", persona_pairs=128, caa_pairs=1000, layers=(8, 19), batch_size=32, threads=1)
QUICK = Config(
    "quick",
    str(SHARED / "models" / "stories260K"),
    persona_pairs=64,
    caa_pairs=40,
    layers=(1, 3),
    batch_size=32,
    threads=1,
)


def _pairs(lm: Any, name: str, n: int) -> list[Any]:
    import steerlab

    if name == "persona":
        return steerlab.persona_pairs("happy", "sad", steerlab.load_openings(OPENINGS)[:n])
    return _fitting(lm, steerlab.caa_pairs(steerlab.load_caa(CAA)), n)


def _fitting(lm: Any, pairs: list[Any], n: int) -> list[Any]:
    """The first ``n`` pairs whose texts fit the model's context (stories260K's 512 tokens cut
    some CAA items out; a text that does not fit is refused, never truncated)."""
    from steerlab import hf_env
    from steerlab.data.pairs import render

    limit = lm.context_length
    out = []
    with hf_env.quiet(errors_only=True):  # no warning about the texts that do not fit: they are left out
        for p in pairs:
            if len(out) == n:
                break
            texts = [render(p.positive, lm), render(p.negative, lm)]
            if limit is None or max(len(x) for x in lm.tokenizer(texts)["input_ids"]) <= limit:
                out.append(p)
    return out


def _texts(lm: Any, pairs: list[Any]) -> tuple[list[str], list[Any]]:
    from steerlab.data.pairs import render

    texts, reads = [], []
    for p in pairs:
        texts += [render(p.positive, lm), render(p.negative, lm)]
        reads += [p.read, p.read]
    return texts, reads


def leaf_chains(sequences: list[list[int]]) -> list[list[int]]:
    """Every distinct prefix of ``sequences`` exactly once, as one plain sequence per leaf.

    Example:
        >>> leaf_chains([[1, 2, 3], [1, 2], [1, 4], [1, 2, 3]])
        [[1, 2, 3], [4]]
    """
    from steerlab.models.tokens import common_prefix_length

    ordered = sorted(set(map(tuple, sequences)))
    out: list[list[int]] = []
    previous: tuple[int, ...] = ()
    for i, seq in enumerate(ordered):
        shared = common_prefix_length([previous, seq])
        is_prefix = i + 1 < len(ordered) and ordered[i + 1][: len(seq)] == seq
        if not is_prefix:
            out.append(list(seq[shared:]))
            previous = seq
    return out


def _bare(lm: Any, sequences: list[list[int]], deepest: int, batch_size: int) -> Any:
    """A callable running ``sequences`` as length-sorted batches, stopped after block ``deepest``."""
    import torch

    from steerlab.models.tokens import pad_id, pad_token_ids

    order = sorted(sequences, key=len)
    batches = [
        pad_token_ids(order[i : i + batch_size], pad_id(lm.tokenizer), "right")
        for i in range(0, len(order), batch_size)
    ]

    class Stop(Exception):
        pass

    def stop(*_: Any) -> None:
        raise Stop

    def run() -> None:
        handle = lm.blocks[deepest].register_forward_hook(stop)
        try:
            with torch.inference_mode():
                for ids, mask in batches:
                    try:
                        lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), use_cache=False)
                    except Stop:
                        pass
        finally:
            handle.remove()

    padded = sum(ids.numel() for ids, _ in batches)
    return run, {"rows": len(sequences), "tokens": sum(map(len, sequences)), "padded": padded, "passes": len(batches)}


def run_methods(methods: dict[str, Any], warmups: dict[str, Any], reps: int) -> dict[str, dict[str, Any]]:
    """One untimed warm-up call per method (on a small slice of the work), then ``reps`` timed calls
    each, rotating the order every repetition. Each call's wall time (``times_s``) and the process's
    CPU time (``cpu_s``: with one torch thread, the work itself, whatever other processes on a
    shared machine take). ``peak_rss_mb``: the process peak while the method ran (the kernel's
    high-water mark, reset before each call; model weights included)."""
    names = list(methods)
    out: dict[str, dict[str, Any]] = {n: {"times_s": [], "cpu_s": [], "peak_rss_mb": 0.0} for n in names}
    for name in names:
        warmups[name]()
    for rep in range(reps):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            gc.collect()
            trim_heap()
            can_reset = reset_peak()
            t0, c0 = time.perf_counter(), time.process_time()
            methods[name]()
            out[name]["cpu_s"].append(round(time.process_time() - c0, 4))
            out[name]["times_s"].append(round(time.perf_counter() - t0, 4))
            peak = peak_since_reset_mb() if can_reset else maxrss_mb()
            out[name]["peak_rss_mb"] = max(out[name]["peak_rss_mb"], peak or 0.0)
            out[name]["rss_before_mb"] = rss_mb()
    for rec in out.values():
        rec.update(median_s=statistics.median(rec["times_s"]), min_s=min(rec["times_s"]))
        rec.update(median_cpu_s=statistics.median(rec["cpu_s"]), min_cpu_s=min(rec["cpu_s"]))
    return out


def _methods(
    lm: Any, pairs: list[Any], cut: list[list[int]], cfg: Config, only: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The timed callables, their warm-ups (the first 4 pairs' worth) and the bare runs' counts."""
    import steerlab

    layers = range(cfg.layers[0], cfg.layers[1] + 1)
    bs = cfg.batch_size

    def extract(share: bool, some: list[Any]) -> Any:
        return lambda: steerlab.extract(lm, some, layers=layers, batch_size=bs, progress=False, share_prefix=share)

    distinct, distinct_info = _bare(lm, leaf_chains(cut), cfg.layers[1], bs)
    full, full_info = _bare(lm, cut, cfg.layers[1], bs)
    methods = {
        "extract": extract(True, pairs),
        "noshare": extract(False, pairs),
        "bare_distinct": distinct,
        "bare_full": full,
    }
    warmups = {
        "extract": extract(True, pairs[:4]),
        "noshare": extract(False, pairs[:4]),
        "bare_distinct": _bare(lm, leaf_chains(cut[:8]), cfg.layers[1], bs)[0],
        "bare_full": _bare(lm, cut[:8], cfg.layers[1], bs)[0],
    }
    keep = [m for m in methods if m in only]
    return (
        {m: methods[m] for m in keep},
        {m: warmups[m] for m in keep},
        {"bare_distinct": distinct_info, "bare_full": full_info},
    )


def scenario(lm: Any, cfg: Config, name: str, n_pairs: int, reps: int, only: tuple[str, ...]) -> dict[str, Any]:
    from steerlab.extraction.capture import _encode, plan_capture

    pairs = _pairs(lm, name, n_pairs)
    texts, reads = _texts(lm, pairs)
    ids, ranges = _encode(lm, texts, reads)
    cut = [x[:end] for x, (_, end) in zip(ids, ranges)]
    t0 = time.perf_counter()
    plan = plan_capture(lm, texts, reads, cfg.batch_size)
    plan_s = time.perf_counter() - t0
    methods, warmups, counts = _methods(lm, pairs, cut, cfg, only)
    assert counts["bare_distinct"]["tokens"] == plan.tree.n_distinct
    log(f"{name}: {len(texts)} texts, {sum(map(len, cut))} tokens, {plan.tree.n_distinct} distinct prefixes")
    res = run_methods(methods, warmups, reps)
    return {
        "n_pairs": len(pairs),
        "n_texts": len(texts),
        "tokens": sum(map(len, cut)),
        "distinct_prefixes": plan.tree.n_distinct,
        "plan": {
            "computed": plan.n_computed,
            "padded": plan.n_padded,
            "passes": len(plan.passes),
            "plan_s": round(plan_s, 3),
        },
        **counts,
        "methods": res,
        "ratios": _ratios(res),
    }


def _ratios(res: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Ratios of medians and minima, of CPU and of wall time."""
    out = {}
    for a, b in (
        ("extract", "bare_distinct"),
        ("extract", "bare_full"),
        ("noshare", "bare_full"),
        ("bare_distinct", "bare_full"),
    ):
        if a in res and b in res:
            out[f"{a}/{b}"] = {
                k: ratio(res[a][f"{k}_s"], res[b][f"{k}_s"]) for k in ("median_cpu", "min_cpu", "median", "min")
            }
    return out


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        f"steerlab extraction vs the bare forward over distinct prefixes — {res['config']['mode']} mode, "
        f"model {res['model_id']}, reps {res['reps']} (median), {m['cpu_count']} CPUs, "
        f"{res['torch_threads']} torch thread(s), "
        f"load average {m['loadavg_start'][0]:.1f} at start, {m['loadavg_end'][0]:.1f} at end",
        "",
        "| data | texts | tokens | distinct prefixes | steerlab runs (padded, passes) "
        "| bare distinct (padded, batches) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, sc in res["scenarios"].items():
        p, d = sc["plan"], sc["bare_distinct"]
        lines.append(
            f"| {name} | {sc['n_texts']} | {sc['tokens']} | {sc['distinct_prefixes']} "
            f"({100 * sc['distinct_prefixes'] / sc['tokens']:.1f} %) | {p['computed']} ({p['padded']}, {p['passes']}) "
            f"| {d['tokens']} ({d['padded']}, {d['passes']}) |"
        )
    lines += [
        "",
        "| data | method | CPU s (median) | CPU s (min) | wall s (median) | wall s (min) | peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, sc in res["scenarios"].items():
        for meth, r in sc["methods"].items():
            lines.append(
                f"| {name} | {meth} | {r['median_cpu_s']:.3f} | {r['min_cpu_s']:.3f} | {r['median_s']:.3f} "
                f"| {r['min_s']:.3f} | {r['peak_rss_mb']:.0f} |"
            )
    lines += [
        "",
        "| data | ratio | CPU, medians | CPU, minima | wall, medians | wall, minima |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, sc in res["scenarios"].items():
        for key, v in sc["ratios"].items():
            mark = ""
            if key == "extract/bare_distinct":
                mark = f" (target <= {TARGET}: {'ok' if v['median_cpu'] <= TARGET else 'MISSED'})"
            lines.append(
                f"| {name} | {key} | {v['median_cpu']:.3f}{mark} | {v['min_cpu']:.3f} "
                f"| {v['median']:.3f} | {v['min']:.3f} |"
            )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="stories260K, small sizes")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per method (default 3)")
    ap.add_argument("--persona-pairs", type=int, default=None, help="persona pairs (0: skip)")
    ap.add_argument("--caa-pairs", type=int, default=None, help="CAA pairs (0: skip)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    ap.add_argument(
        "--methods", nargs="+", default=list(METHODS), choices=METHODS, help="methods to time (default: all)"
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="JSON output (default benchmarks/results/extract[_quick].json)"
    )
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    base = QUICK if args.quick else FULL
    cfg = replace(
        base,
        persona_pairs=base.persona_pairs if args.persona_pairs is None else args.persona_pairs,
        caa_pairs=base.caa_pairs if args.caa_pairs is None else args.caa_pairs,
        threads=base.threads if args.threads is None else args.threads,
    )
    os.environ.setdefault("STEERLAB_QUIET", "1")
    import torch

    import steerlab

    torch.set_num_threads(cfg.threads)
    started = time.time()
    res = benchlib.result_header("bench_extract", started, args.reps, asdict(cfg), benchlib.machine_info())
    lm = steerlab.load_model(cfg.model)
    res.update(model_id=lm.model_id, torch_threads=torch.get_num_threads(), scenarios={})
    for name, n in (("persona", cfg.persona_pairs), ("caa", cfg.caa_pairs)):
        if n:
            res["scenarios"][name] = scenario(lm, cfg, name, n, args.reps, tuple(args.methods))
    res["machine"]["loadavg_end"] = benchlib.loadavg()
    res["total_wall_s"] = round(time.time() - started, 1)
    out = args.out or benchlib.RESULTS / ("extract_quick.json" if args.quick else "extract.json")
    benchlib.write_json(out, res, indent=2)
    log(f"done in {res['total_wall_s']} s; wrote {out}")
    print(markdown(res))


if __name__ == "__main__":
    main()
