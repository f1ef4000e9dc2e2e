"""The server's compiled decoding step (slots) vs its eager continuous step, per step, and what
compiling a step shape costs.

For each row count B (``--rows``): B prompts (each row with its own steering vector, 12 layers)
are prefilled once; then, in interleaved rounds, ``--steps`` decoding steps of

* **eager** — the continuous scheduler's step: one-token forward over a dynamic KV cache under a
  steering session of the B rows (``steer_rows(..., generating=True)``, the one-token fast path);
* **compiled** — :class:`steerlab.runtime.slots.SlotDecoder` with B slots over a static cache of
  ``--length`` positions, the rows' deltas in its buffer, the step compiled by TorchInductor.

Reported: ms per step (minimum and median over the rounds), the ratio eager/compiled, and the
wall time of the compiled step's first call (compiling the shape). Greedy tokens are not compared
here (the server tests do: tests/test_serve_compiled.py).

Usage::

    python benchmarks/bench_slots.py --quick      # stories260K
    python benchmarks/bench_slots.py              # SmolLM2-135M-Instruct ("default")

Writes ``benchmarks/results/serve_slots.json`` (``serve_slots_quick.json`` with ``--quick``) and
prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path
from typing import Any

import benchlib
import torch
from benchlib import log

import steerlab
from steerlab.models.tokens import pad_token_ids, position_ids
from steerlab.runtime import hf
from steerlab.runtime.passes import forward
from steerlab.runtime.session import steer_rows
from steerlab.runtime.slots import SlotDecoder, row_deltas

RESULTS = benchlib.RESULTS
PROMPT = "The weather today is"


def vectors(lm: steerlab.LM, n: int, layers: list[int]) -> list[steerlab.SteeringVector]:
    """``n`` random vectors (seeded) of a typical steering norm at ``layers``."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        per = {k: torch.randn(lm.d_model, generator=g) * 0.05 for k in layers}
        out.append(steerlab.SteeringVector(per, lm.model_id, lm.d_model, lm.n_layers))
    return out


def prefill(lm: steerlab.LM, rows: list[Any]) -> tuple[Any, torch.Tensor, int, list[int]]:
    ids = [lm.tokenizer(PROMPT).input_ids for _ in rows]
    batch, mask = pad_token_ids(ids, lm.tokenizer.pad_token_id or 0, "left")
    cache = hf.new_cache(lm.model)
    with steer_rows(lm, rows, prompt_length=mask.sum(-1)):
        out = forward(lm, batch, mask, position_ids=position_ids(mask), cache=cache, use_cache=True, logits_to_keep=1)
    return hf.output_cache(out) or cache, mask, int(batch.shape[1]), out.logits[:, -1].argmax(-1).tolist()


def eager_steps(lm: steerlab.LM, rows: list[Any], state: tuple[Any, torch.Tensor, int, list[int]], n: int) -> float:
    cache0, mask0, width, tokens = state
    cache = copy.deepcopy(cache0)
    lengths = mask0.sum(-1)
    ids = torch.tensor(tokens)[:, None]
    started = time.perf_counter()
    with steer_rows(lm, rows, prompt_length=lengths, generating=True):
        for i in range(n):
            mask = torch.ones(len(rows), width + i + 1, dtype=torch.long)
            out = forward(
                lm, ids, mask, position_ids=(lengths + i)[:, None], cache=cache, use_cache=True, logits_to_keep=1
            )
            cache = hf.output_cache(out) or cache
            ids = out.logits[:, -1].argmax(-1)[:, None]
    return (time.perf_counter() - started) / n


def compiled_steps(
    dec: SlotDecoder, lm: steerlab.LM, rows: list[Any], state: tuple[Any, torch.Tensor, int, list[int]], n: int
) -> float:
    cache, _, width, tokens = state
    dec.clear()
    kv = hf.kv_tensors(cache)
    for slot, (row, tok) in enumerate(zip(rows, tokens, strict=True)):
        deltas = row_deltas(lm, row, width)
        assert deltas is not None
        dec.join(slot, [(k[slot : slot + 1], v[slot : slot + 1]) for k, v in kv], width, tok, deltas)
    started = time.perf_counter()
    for _ in range(n):
        logits = dec.step()
        for slot, tok in enumerate(logits.argmax(-1).tolist()):
            dec.feed(slot, tok)
    return (time.perf_counter() - started) / n


def measure(lm: steerlab.LM, batch: int, length: int, steps: int, rounds: int, layers: list[int]) -> dict[str, Any]:
    rows = [steerlab.Steering(v, 4.0) for v in vectors(lm, batch, layers)]
    with torch.inference_mode():
        state = prefill(lm, rows)
        dec = SlotDecoder(lm, batch, length)
        dec.clear()
        started = time.perf_counter()
        compiled_steps(dec, lm, rows, state, 1)
        compile_s = time.perf_counter() - started
        log(f"rows {batch}: compiled the step in {compile_s:.1f} s")
        eager, comp = [], []
        for r in range(rounds):
            pair = [
                ("eager", lambda: eager_steps(lm, rows, state, steps)),
                ("compiled", lambda: compiled_steps(dec, lm, rows, state, steps)),
            ]
            for name, fn in pair if r % 2 == 0 else reversed(pair):
                (eager if name == "eager" else comp).append(fn() * 1000)
        log(f"rows {batch}: eager {min(eager):.2f} ms, compiled {min(comp):.2f} ms per step")
    return {
        "rows": batch,
        "length": length,
        "compile_s": round(compile_s, 1),
        "eager_ms": {"min": round(min(eager), 3), "median": round(statistics.median(eager), 3)},
        "compiled_ms": {"min": round(min(comp), 3), "median": round(statistics.median(comp), 3)},
        "eager_over_compiled": round(min(eager) / min(comp), 3),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="stories260K")
    ap.add_argument("--rows", default="1,4,16", help="comma-separated row counts (slots)")
    ap.add_argument("--length", type=int, default=128, help="static cache positions")
    ap.add_argument("--steps", type=int, default=32, help="decoding steps per round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = str(benchlib.SHARED / "models" / "stories260K") if args.quick else "default"
    layers = [1, 2, 3] if args.quick else list(range(8, 20))
    out = args.out or RESULTS / ("serve_slots_quick.json" if args.quick else "serve_slots.json")
    started = time.time()
    config = {
        "model": model,
        "length": args.length,
        "steps": args.steps,
        "threads": args.threads,
        "layers": layers,
        # transformers' switch for SDPA's own grouped-query attention under a mask (else, compiled, the
        # keys and values are repeated over every head for the whole static cache each step)
        "TRANSFORMERS_SDPA_FORCE_GQA": os.environ.get("TRANSFORMERS_SDPA_FORCE_GQA"),
    }
    result = benchlib.result_header("bench_slots", started, args.rounds, config, benchlib.machine_info())
    lm = steerlab.load_model(model)
    result["runs"] = [measure(lm, int(b), args.length, args.steps, args.rounds, layers) for b in args.rows.split(",")]
    result["machine"]["loadavg_end"] = benchlib.loadavg()
    result["total_wall_s"] = round(time.time() - started, 1)
    benchlib.write_json(out, result, indent=2)
    lines = [
        f"\n### compiled slot step vs eager continuous step ({model}, cache {args.length}, threads={args.threads})\n",
        "| rows | eager ms/step | compiled ms/step | eager/compiled | compile s |",
        "|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['rows']} | {r['eager_ms']['min']:.2f} | {r['compiled_ms']['min']:.2f} | "
            f"{r['eager_over_compiled']}× | {r['compile_s']} |"
        )
    m = result["machine"]
    lines.append(f"\nload average {m['loadavg_start'][0]:.2f} → {m['loadavg_end'][0]:.2f}; wrote {out}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
