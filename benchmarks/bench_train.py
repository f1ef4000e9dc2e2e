"""Speed of trained steering vectors: one training step vs a bare forward + backward, and a whole run.

Scenarios, on the same preference batches (``--batch`` pairs; each pair's chosen and rejected
completion under one drawn direction — BiPO's ``d ~ U{−1, 1}`` — so 2 rows per pair, or 4 with
``--both``):

* ``steerlab step`` — what :func:`steerlab.extract` does per optimiser step: the prompts run once
  without autograd (they are not steered), the completions continue from their cache in one padded
  batch, the vector is added through the steering engine, loss on the completion tokens, backward;
* ``bare step`` — the minimal alternative: every row in full (prompt + completion) through
  ``model(...)``, a forward hook adding the vector at the same layers on the completion tokens,
  log-softmax of the completion tokens, backward into the vector;
* ``inference forward`` — the same full rows under ``inference_mode`` (no backward), for scale;
* ``whole run`` — ``steerlab.extract(method="bipo")`` on all pairs end to end (reference pass,
  epochs, held-out evaluation), with its steps and epochs.

The step scenarios run twice: on the sentiment pairs (short prompts: RepE openings, nothing to
share) and on CAA sycophancy A/B items (``--caa``: long questions, answers of a few tokens — where
running each prompt once pays).

Tokens/s count the tokens of the full rows (prompt + completion, each row) for every scenario, so
the numbers compare like with like. Each step scenario gets one untimed warm-up, then ``--reps``
timed calls in rotating order; medians are reported.

Usage::

    python benchmarks/bench_train.py --quick        # stories260K, synthetic pairs, seconds
    python benchmarks/bench_train.py                # SmolLM2-135M-Instruct, 128 self-contrast pairs
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchlib
from benchlib import log, ratio


def _quick_pairs() -> list[Any]:
    from steerlab.data.preference import PreferencePair

    names = ["Lily", "Tom", "Sue", "Ben", "Mia", "Max", "Anna", "Sam"]
    good = [" was happy. She smiled and laughed all day.", " felt very glad and loved the warm sun."]
    bad = [" was sad. She cried and cried all day.", " felt very bad and hated the cold rain."]
    return [PreferencePair(n, g, b) for n in names for g, b in zip(good, bad)]


def _pairs(lm: Any, args: argparse.Namespace) -> list[Any]:
    import steerlab

    if args.quick:
        return _quick_pairs()
    path: Path = args.pairs
    if path.is_file():
        import json

        return [steerlab.PreferencePair(**d) for d in json.loads(path.read_text())][: args.n_pairs]
    openings = steerlab.load_openings(benchlib.SHARED / "data" / "repe" / "all_truncated_outputs.json")
    log(f"self_contrast on {args.n_pairs} openings (cached in {path})")
    pairs = steerlab.self_contrast(lm, openings[: args.n_pairs], "Write a cheerful, happy story.",
                                   "Write a sad, gloomy story.", max_new_tokens=24, batch_size=32)  # fmt: skip
    benchlib.write_json(path, [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs])
    return pairs


class Steps:
    """The step scenarios on one fixed batch."""

    def __init__(self, lm: Any, pairs: list[Any], layers: list[int], both: bool) -> None:
        import torch

        from steerlab.extraction.train.encode import encode_pairs
        from steerlab.extraction.train.loop import live_vector

        self.lm, self.layers = lm, layers
        self.enc = encode_pairs(lm, pairs)
        gen = torch.Generator().manual_seed(0)
        signs = torch.randint(2, (len(self.enc),), generator=gen).tolist()
        self.coefs = [(1.0, -1.0) if both else ((1.0,) if s else (-1.0,)) for s in signs]
        self.params = {k: (0.01 * torch.randn(lm.d_model, generator=gen)).requires_grad_() for k in layers}
        self.vec = live_vector(lm, self.params)
        self.rows = [(p.prompt, p.completion(rej), c) for p, pc in zip(self.enc, self.coefs) for c in pc
                     for rej in (False, True)]  # fmt: skip
        self.tokens = sum(len(p) + len(c) for p, c, _ in self.rows)

    def steerlab_step(self) -> float:
        from steerlab.extraction.train.forward import completion_logps, pair_rows

        prompts, rows, prompt_steering = pair_rows(self.enc, self.coefs, self.vec, "generated")
        loss = -completion_logps(self.lm, prompts, rows, prompt_steering).sum()
        loss.backward()
        self._zero()
        return float(loss.detach())

    def bare_step(self) -> float:
        import torch

        from steerlab.models.tokens import pad_id, pad_token_ids
        from steerlab.runtime import hf

        ids, mask = pad_token_ids([p + c for p, c, _ in self.rows], pad_id(self.lm.tokenizer), "right")
        completion = torch.zeros_like(mask)
        for i, (p, c, _) in enumerate(self.rows):
            completion[i, len(p) : len(p) + len(c)] = 1
        sign = torch.tensor([c for _, _, c in self.rows])[:, None, None]
        where = completion[..., None].float() * sign

        def hook(layer: int) -> Callable[..., Any]:
            return lambda _m, _a, out: hf.with_block_hidden(out, hf.block_hidden(out) + where * self.params[layer])

        handles = [self.lm.blocks[k].register_forward_hook(hook(k)) for k in self.layers]
        try:
            logits = self.lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        finally:
            for h in handles:
                h.remove()
        logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        loss = -(logp * completion[:, 1:]).sum()
        loss.backward()
        self._zero()
        return float(loss)

    def inference_forward(self) -> float:
        import torch

        from steerlab.models.tokens import pad_id, pad_token_ids

        ids, mask = pad_token_ids([p + c for p, c, _ in self.rows], pad_id(self.lm.tokenizer), "right")
        with torch.inference_mode():
            return float(self.lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits[0, 0, 0])

    def _zero(self) -> None:
        for p in self.params.values():
            p.grad = None


def _steps(lm: Any, pairs: list[Any], args: argparse.Namespace, layers: list[int]) -> dict[str, Any]:
    from steerlab.extraction.train.loop import frozen

    steps = Steps(lm, pairs, layers, args.both)
    names = {"steerlab step": steps.steerlab_step, "bare step": steps.bare_step,
             "inference forward": steps.inference_forward}  # fmt: skip
    times: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, Any] = {}
    with frozen(lm):
        for fn in names.values():
            fn()  # warm-up
        order = list(names)
        for rep in range(args.reps):
            for n in order[rep % len(order) :] + order[: rep % len(order)]:
                rec = benchlib.measure(names[n])
                times[n].append(rec["time_s"])
                peaks[n] = max(peaks.get(n) or 0, rec["peak_rss_mb"] or 0)
                log(f"{n}: {rec['time_s']:.2f} s")
    med = {n: statistics.median(t) for n, t in times.items()}
    return {
        "rows": len(steps.rows), "tokens": steps.tokens, "times_s": times, "median_s": med,
        "tokens_per_s": {n: round(steps.tokens / t, 1) for n, t in med.items()},
        "peak_rss_mb": peaks, "steerlab_over_bare": ratio(med["steerlab step"], med["bare step"]),
    }  # fmt: skip


def _whole(lm: Any, pairs: list[Any], args: argparse.Namespace, layers: list[int]) -> dict[str, Any]:
    import steerlab

    steps: list[float] = []
    t0 = time.perf_counter()
    rec = benchlib.measure(lambda: steerlab.extract(
        lm, pairs, method="bipo", layers=layers, lr=args.lr, epochs=args.epochs, progress=False,
        on_step=lambda _: steps.append(time.perf_counter() - t0),
    ))  # fmt: skip
    vec = rec.pop("result")
    meta = vec.meta
    n_train = meta["n_train"]
    enc_tokens = _row_tokens(lm, pairs)
    rows_per_pair = 2 if meta["directions"] == "sample" else 4
    return {
        **rec, "steps": meta["steps"], "epochs_run": meta["epochs_run"], "n_train": n_train,
        "n_heldout": meta["n_heldout"], "heldout_loss": meta["heldout_loss"],
        "heldout_accuracy": meta["heldout_accuracy"], "first_step_done_s": round(steps[0], 2) if steps else None,
        "train_tokens_per_epoch": round(enc_tokens * n_train / len(pairs) * rows_per_pair),
    }  # fmt: skip


def _row_tokens(lm: Any, pairs: list[Any]) -> float:
    """Mean tokens of one pair's two full rows (prompt + completion each), halved: per row."""
    from steerlab.extraction.train.encode import encode_pairs

    enc = encode_pairs(lm, pairs)
    return sum(2 * len(p.prompt) + len(p.chosen) + len(p.rejected) for p in enc) / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="stories260K and synthetic pairs (seconds)")
    ap.add_argument("--n-pairs", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16, help="pairs in the timed step")
    ap.add_argument("--both", action="store_true", help="score both directions per pair (4 rows a pair)")
    ap.add_argument("--layers", default=None, help="comma-separated (default: 12; 2 with --quick)")
    ap.add_argument("--lr", type=float, default=0.03)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-whole", action="store_true", help="skip the end-to-end training run")
    ap.add_argument("--caa", action=argparse.BooleanOptionalAction, default=True, help="also time CAA items")
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    ap.add_argument("--pairs", type=Path, default=tmp / "steerlab_sentiment_pairs.json", help="cached pairs (JSON)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("STEERLAB_QUIET", "1")
    import steerlab

    started = time.time()
    machine = benchlib.machine_info()
    lm = steerlab.load_model(benchlib.SHARED / "models" / "stories260K" if args.quick else "default")
    layers = [int(x) for x in (args.layers or ("2" if args.quick else "12")).split(",")]
    pairs = _pairs(lm, args)
    log(f"{len(pairs)} pairs, layers {layers}, model {lm.model_id}")
    out: dict[str, Any] = benchlib.result_header("bench_train", started, args.reps, {
        **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "layers": layers,
        "model": lm.model_id, "threads": torch.get_num_threads(),
    }, machine)  # fmt: skip
    out["step"] = _steps(lm, pairs[: args.batch], args, layers)
    if args.caa and not args.quick:
        items = steerlab.load_caa(benchlib.SHARED / "data" / "caa" / "datasets" / "generate" / "sycophancy"
                                  / "generate_dataset.json", limit=args.batch)  # fmt: skip
        log(f"CAA step: {len(items)} sycophancy items")
        out["step_caa"] = _steps(lm, steerlab.preference_pairs(items), args, layers)
    if not args.no_whole:
        log("whole run")
        out["whole"] = _whole(lm, pairs, args, layers)
    out["loadavg_end"] = benchlib.loadavg()
    path = args.out or benchlib.RESULTS / ("train_quick.json" if args.quick else "train.json")
    benchlib.write_json(path, out)
    _table(out)


def _table(out: dict[str, Any]) -> None:
    print("| data | scenario | rows | tokens | median s | tokens/s | × bare step | peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for key, data in (("step", "sentiment pairs"), ("step_caa", "CAA items")):
        s = out.get(key)
        if s is None:
            continue
        bare = s["median_s"]["bare step"]
        for name, t in s["median_s"].items():
            print(f"| {data} | {name} | {s['rows']} | {s['tokens']} | {t:.2f} | {s['tokens_per_s'][name]:.0f} | "
                  f"{ratio(t, bare):.2f} | {s['peak_rss_mb'][name]} |")  # fmt: skip
    w = out.get("whole")
    if w:
        print(f"\nwhole run: {w['time_s']:.0f} s, {w['steps']} steps, {w['epochs_run']} epochs, "
              f"{w['n_train']} train / {w['n_heldout']} held-out pairs, held-out loss {w['heldout_loss']}")  # fmt: skip
    print(f"load average: start {out['machine']['loadavg_start']}, end {out['loadavg_end']}")


if __name__ == "__main__":
    main()
