"""What the per-token KL cap costs (``Steering(..., kl_cap=...)``, steerlab.runtime.kl_cap).

A capped row runs beside an unsteered shadow row (the batch doubles) plus one more prompt pass to
set the first strength, so whole ``steerlab.generate`` calls are timed, interleaved per round and
paired: ``add`` (one vector, plain add), ``add, kl_cap=1e9`` (a cap that never binds: the strength
stays 1, the same tokens, only the cap's machinery) and ``add, kl_cap=0.3`` (a cap that binds);
``ratio`` is the median over rounds of each call's time over ``add``'s in the same round. Also
reported: the mean KL to the unsteered model and the mean strength with the binding cap.

Usage::

    python benchmarks/bench_kl_cap.py [--model default] [--batch 16] [--tokens 24] [--rounds 5]

Writes JSON (machine, versions, git commit, load average) and prints a short table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import RESULTS, loadavg, log, machine_info, result_header, write_json


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS / "kl_cap.json")
    args = p.parse_args(argv)

    import torch

    import steerlab
    from steerlab.runtime.generate import encode
    from steerlab.runtime.kl_cap import capped_generate

    torch.set_num_threads(args.threads)
    started = time.time()
    machine = machine_info()  # its load average is the one at the start
    lm = steerlab.load_model(args.model)
    pairs = steerlab.pairs_from_lists(
        ["Lily was happy and loved the sun", "The dog was glad", "Tom smiled"],
        ["Lily was sad and hated the rain", "The dog was upset", "Tom cried"],
    )
    vec = steerlab.extract(lm, pairs, progress=False)
    prompts = [("Once upon a time there was a", "The cat sat")[i % 2] for i in range(args.batch)]
    settings: dict[str, Any] = {
        "add": steerlab.Steering(vec, 1.0),
        "add, kl_cap=1e9": steerlab.Steering(vec, 1.0, kl_cap=1e9),
        "add, kl_cap=0.3": steerlab.Steering(vec, 1.0, kl_cap=0.3),
    }
    times: dict[str, list[float]] = {k: [] for k in settings}
    outputs: dict[str, list[str]] = {}
    for r in range(args.rounds + 1):  # round 0 warms up
        order = list(settings)[r % len(settings) :] + list(settings)[: r % len(settings)]
        for name in order:
            t0 = time.perf_counter()
            outputs[name] = steerlab.generate(lm, prompts, steering=settings[name], max_new_tokens=args.tokens)
            if r:
                times[name].append(time.perf_counter() - t0)
        log(f"round {r}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items() if v))
    ratios = {k: statistics.median(t / a for t, a in zip(v, times["add"], strict=True)) for k, v in times.items()}
    ids, mask = encode(lm, prompts)
    _, trace = capped_generate(lm, ids, mask, [settings["add, kl_cap=0.3"]] * args.batch, args.tokens)
    kl, strength = trace.tensors()
    _, free = capped_generate(lm, ids, mask, [settings["add, kl_cap=1e9"]] * args.batch, args.tokens)
    kl_free, _ = free.tensors()
    res = {
        **result_header(
            "bench_kl_cap",
            started,
            args.rounds,
            {"model": args.model, "batch": args.batch, "tokens": args.tokens, "threads": args.threads},
            machine,
        ),
        "loadavg_end": loadavg(),
        "seconds_median": {k: statistics.median(v) for k, v in times.items()},
        "ratio_over_add": ratios,
        "same_tokens_uncapped": outputs["add, kl_cap=1e9"] == outputs["add"],
        "kl_mean": {"uncapped (kl_cap=1e9)": float(kl_free.mean()), "kl_cap=0.3": float(kl.mean())},
        "kl_over_cap_share": float((kl > 0.3).float().mean()),
        "strength_mean": float(strength.mean()),
    }
    lines = ["| setting | s / generate (median) | ratio over add |", "|---|---|---|"]
    lines += [f"| {k} | {res['seconds_median'][k]:.2f} | {ratios[k]:.2f}x |" for k in settings]
    lines.append(
        f"\nKL to the unsteered model per token, mean: {res['kl_mean']['uncapped (kl_cap=1e9)']:.3f} uncapped, "
        f"{res['kl_mean']['kl_cap=0.3']:.3f} with kl_cap=0.3 (over the cap on {res['kl_over_cap_share']:.0%} of "
        f"tokens; mean strength {res['strength_mean']:.2f}). Load average at start "
        f"{res['machine'].get('loadavg_start')}, at end {res['loadavg_end']}."
    )
    res["markdown"] = "\n".join(lines)
    write_json(args.out, res)
    print(res["markdown"])
    log(f"wrote {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
