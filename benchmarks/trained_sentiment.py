"""Sentiment on held-out openings: a trained (BiPO) vector vs mean_diff vs prompting, one run.

1. **Data** — :func:`steerlab.self_contrast` continues RepE openings 0–127 under a cheerful and a
   sad story prompt (24 greedy tokens each); the preference pairs are cached (``--pairs``).
2. **Vectors** — ``bipo`` (timed end to end, one torch thread) and, on the very same pairs,
   ``mean_diff`` (prompt + preferred vs prompt + dispreferred, mean over the tokens); also
   ``mean_diff`` on happy/sad persona pairs over the same openings (the vector of docs/results.md).
3. **Evaluation** — held-out openings 200–295 continued greedily (24 tokens) at a grid of
   coefficients (:func:`steerlab.evaluate.sentiment.sentiment_shift`, VADER), and under the
   cheerful prompt itself (prompting). Perplexity of each continuation under the unsteered model
   given the plain opening; its ratio to the unsteered continuations' is the fluency cost.

Usage::

    python benchmarks/trained_sentiment.py [--layers 12] [--lr 0.03] [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import benchlib
from benchlib import log

POSITIVE = "Write a cheerful, happy story."
NEGATIVE = "Write a sad, gloomy story."


def _pairs(lm: Any, openings: list[str], path: Path) -> list[Any]:
    import steerlab

    if path.is_file():
        return [steerlab.PreferencePair(**d) for d in json.loads(path.read_text())]
    log(f"self_contrast on {len(openings)} openings")
    pairs = steerlab.self_contrast(lm, openings, POSITIVE, NEGATIVE, max_new_tokens=24, batch_size=32)
    benchlib.write_json(path, [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs])
    return pairs


def _row(report: Any, c: float) -> dict[str, Any]:
    r, base = report.row(c), report.row(0.0)
    return {
        "coefficient": c, "positive_share": r.positive_share, "negative_share": r.negative_share,
        "mean_compound": r.mean_compound, "mean_ppl": r.mean_perplexity,
        "ppl_ratio": r.mean_perplexity / base.mean_perplexity,
    }  # fmt: skip


def _prompting(lm: Any, held: list[str], base_ppl: float) -> dict[str, Any]:
    import numpy as np

    import steerlab
    from steerlab.evaluate.likelihood import continuation_nll, perplexities
    from steerlab.evaluate.scorers import get_scorer

    out: dict[str, Any] = {}
    for name, prompt in (("cheerful prompt", POSITIVE), ("sad prompt", NEGATIVE)):
        texts = [steerlab.ChatText(prompt, o).render(lm) for o in held]
        conts = steerlab.generate(lm, texts, max_new_tokens=24, batch_size=32)
        scores = get_scorer("vader").score([c.strip() for c in conts])
        ppl = float(np.mean(perplexities(continuation_nll(lm, held, conts))))
        out[name] = {
            "positive_share": float(np.mean([s.label == "positive" for s in scores])),
            "negative_share": float(np.mean([s.label == "negative" for s in scores])),
            "mean_compound": float(np.mean([s.compound for s in scores])),
            "mean_ppl": ppl, "ppl_ratio": ppl / base_ppl,
        }  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="12", help="comma-separated layers of the trained vector")
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--method", default="bipo")
    ap.add_argument("--coefs", default="0.5,1,1.5,2", help="coefficients of the trained vector (and their negatives)")
    ap.add_argument("--md-coefs", default="0.25,0.5,1,1.5", help="coefficients of the mean_diff vectors")
    ap.add_argument("--n-held", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1)
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    ap.add_argument("--pairs", type=Path, default=tmp / "steerlab_sentiment_pairs.json", help="cached pairs (JSON)")
    ap.add_argument("--out", type=Path, default=benchlib.RESULTS / "trained_sentiment.json")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("STEERLAB_QUIET", "1")
    import steerlab
    from steerlab.evaluate.sentiment import sentiment_shift

    started = time.time()
    machine = benchlib.machine_info()
    lm = steerlab.load_model("default")
    openings = steerlab.load_openings(benchlib.SHARED / "data" / "repe" / "all_truncated_outputs.json")
    train_openings, held = openings[:128], openings[200 : 200 + args.n_held]
    pairs = _pairs(lm, train_openings, args.pairs)
    layers = [int(x) for x in args.layers.split(",")]

    log(f"training {args.method} on {len(pairs)} pairs at layers {layers}")
    t0 = time.perf_counter()
    trained = steerlab.extract(lm, pairs, method=args.method, layers=layers, lr=args.lr, epochs=args.epochs)
    train_s = time.perf_counter() - t0
    log(f"trained in {train_s:.0f} s: {trained.meta['heldout_loss']}")
    md_same = steerlab.extract(lm, steerlab.data.preference.contrast_pairs(pairs), method="mean_diff", layers=layers)
    md_persona = steerlab.extract(
        lm, steerlab.persona_pairs("happy", "sad", train_openings), method="mean_diff", layers=range(12, 20)
    )
    results: dict[str, Any] = {}
    coefs = [float(c) for c in args.coefs.split(",")]
    md_coefs = [float(c) for c in args.md_coefs.split(",")]
    runs = [
        (args.method, trained, coefs, "generated"),
        (f"mean_diff (same pairs, layers {args.layers})", md_same, md_coefs, "all"),
        ("mean_diff (persona happy/sad, layers 12-19)", md_persona, md_coefs, "all"),
    ]
    base_ppl = float("nan")
    for name, vec, cs, positions in runs:
        log(f"sentiment: {name}")
        grid = sorted({0.0, *cs, *(-c for c in cs)})
        rep = sentiment_shift(lm, vec, held, grid, positions=positions, max_new_tokens=24, n_bootstrap=0)
        base_ppl = rep.row(0.0).mean_perplexity
        results[name] = {"positions": positions, "norms": vec.norms(), "rows": [_row(rep, c) for c in grid]}
    log("prompting")
    results["prompting"] = _prompting(lm, held, base_ppl)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    out = {
        **benchlib.result_header("trained_sentiment", started, 1, config, machine),
        "n_pairs": len(pairs), "n_heldout_openings": len(held), "train_seconds": round(train_s, 1),
        "train_meta": trained.meta, "loadavg_end": benchlib.loadavg(), "results": results,
    }  # fmt: skip
    benchlib.write_json(args.out, out)
    _table(out)


def _table(out: dict[str, Any]) -> None:
    print(f"{out['n_pairs']} pairs, trained in {out['train_seconds']} s; {out['n_heldout_openings']} held-out openings")
    print("| method | coef | positive share | negative share | VADER mean | ppl ratio |")
    print("|---|---|---|---|---|---|")
    for name, res in out["results"].items():
        if name == "prompting":
            for p, r in res.items():
                print(f"| {p} | – | {r['positive_share']:.2f} | {r['negative_share']:.2f} | "
                      f"{r['mean_compound']:.2f} | {r['ppl_ratio']:.3f} |")  # fmt: skip
            continue
        for r in res["rows"]:
            print(f"| {name} | {r['coefficient']:g} | {r['positive_share']:.2f} | {r['negative_share']:.2f} | "
                  f"{r['mean_compound']:.2f} | {r['ppl_ratio']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
