"""Reproduce docs/results.md on the default model (SmolLM2-135M-Instruct).

1. Sentiment ("happy" vs "sad"): ActAdd pair, CAA mean_diff and RepE pca_diff side by side; for each
   the layers and coefficient are auto-tuned (positive and negative direction) under a continuation
   perplexity budget on half of the held-out openings and reported on the other half.
2. CAA behaviours: A/B p(matching) at coefficients −1, 0, +1 at the auto-tuned layer, plus an MMLU
   capability check at that layer.
3. The breakdown curve of the happy vector.

Run:  .venv/bin/python scripts/results.py [--quick] [--out docs]
Reads ../shared/data (not copied into the repository).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import steerlab
from steerlab.analysis import breakdown_curve
from steerlab.evaluate.behavior import behavior_eval, behavior_vector, capability_eval, load_ab_items
from steerlab.evaluate.report import markdown_table
from steerlab.evaluate.sentiment import sentiment_shift
from steerlab.evaluate.sweep import autotune, split_halves

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REPE = SHARED / "data" / "repe"
CAA = SHARED / "data" / "caa" / "datasets"


def sentiment_section(lm: steerlab.LM, out: Path, quick: bool) -> tuple[str, dict[str, Any]]:
    openings = steerlab.load_openings(REPE / "all_truncated_outputs.json")
    train, held = openings[:128], openings[200 : 200 + (8 if quick else 96)]
    budget = 1.15
    vectors = {
        "actadd": steerlab.extract(lm, [steerlab.ContrastPair("Love", "Hate")], method="actadd", layers=[2, 6]),
        "mean_diff": steerlab.extract(lm, steerlab.persona_pairs("happy", "sad", train), method="mean_diff",
                                      layers=range(8, 20)),
        "pca_diff": steerlab.extract(lm, steerlab.persona_pairs("happy", "sad", train), method="pca_diff",
                                     layers=range(8, 20)),
    }
    # Compare methods at equal added norm: the PCA direction is rescaled, layer by layer, to the norm
    # of the mean-difference vector (its own scale, the mean projected gap, is much smaller when the
    # pair differences share a large common component that centred PCA removes).
    md_norms = vectors["mean_diff"].norms()
    pca = vectors["pca_diff"]
    vectors["pca_diff"] = steerlab.SteeringVector(
        {k: v / v.norm() * md_norms[k] for k, v in pca.directions.items()}, pca.model_id, pca.d_model,
        pca.n_layers, method="pca_diff", data_hash=pca.data_hash, meta={**pca.meta, "rescaled_to": "mean_diff norms"},
    )
    scale = {k: round(float(v.norm()), 3) for k, v in pca.directions.items()}
    print(f"  pca_diff own norms {scale}; mean_diff norms {md_norms}", flush=True)
    groups = [[*range(8, 20)], [*range(12, 20)]]
    plans: dict[str, dict[str, Any]] = {
        "actadd": {"layer_sets": [[2], [6]], "coefficients": [1, 2, 4], "positions": "actadd"},
        "mean_diff": {"layer_sets": groups, "coefficients": [0.5, 1.0, 1.5], "positions": "all"},
        "pca_diff": {"layer_sets": groups, "coefficients": [0.5, 1.0, 1.5], "positions": "all"},
    }
    if quick:
        for plan in plans.values():
            plan["layer_sets"] = plan["layer_sets"][:1]
            plan["coefficients"] = plan["coefficients"][1:2]
    rows, summary = [], {}
    for name, vec in vectors.items():
        plan = plans[name]
        tuned = {}
        for direction in (1, -1):
            t0 = time.perf_counter()
            rep = autotune(lm, vec, "sentiment", held, coefficients=[direction * c for c in plan["coefficients"]],
                           layer_sets=plan["layer_sets"], budget=budget, direction=direction,
                           positions=plan["positions"], max_new_tokens=24, progress=False)
            rep.write(out / "results", f"autotune_{name}_{'pos' if direction > 0 else 'neg'}")
            tuned[direction] = rep
            print(f"  {name} {direction:+d}: layers {rep.layers} coef {rep.coefficient} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        for direction, rep in tuned.items():
            b, s = rep.held_out["baseline"], rep.held_out["steered"]
            rows.append({
                "method": name, "direction": "+happy" if direction > 0 else "−happy (sad)",
                "layers": f"{rep.layers[0]}-{rep.layers[-1]}" if len(rep.layers) > 1 else str(rep.layers[0]),
                "coef": rep.coefficient,
                "positive share": f"{b['positive_share']:.2f} → {s['positive_share']:.2f}",
                "negative share": f"{b['negative_share']:.2f} → {s['negative_share']:.2f}",
                "VADER mean": f"{b['mean_compound']:.2f} → {s['mean_compound']:.2f}",
                "cont. ppl": f"{b['continuation_ppl']:.2f} → {s['continuation_ppl']:.2f}",
                "ppl ratio": s["continuation_ppl_ratio"],
                "n": rep.n_report,
            })
            summary[f"{name}{'+' if direction > 0 else '-'}"] = {"layers": rep.layers, "coef": rep.coefficient,
                                                                 "held_out": rep.held_out}
        # the seed's figure: baseline vs +steering vs −steering at the tuned settings (report half)
        pos, neg = tuned[1], tuned[-1]
        report_half = split_halves(held)[1]
        layers = sorted(set(pos.layers) | set(neg.layers))
        fig_vec = vec.select(layers)
        coefs = [neg.coefficient, 0.0, pos.coefficient]
        if pos.layers == neg.layers:
            rep = sentiment_shift(lm, fig_vec, report_half, coefficients=coefs, positions=plan["positions"],
                                  progress=False)
        else:  # different tuned layers per direction: evaluate each with its own layers
            rep = sentiment_shift(lm, vec.select(pos.layers), report_half, coefficients=[0.0, pos.coefficient],
                                  positions=plan["positions"], progress=False)
            neg_rep = sentiment_shift(lm, vec.select(neg.layers), report_half, coefficients=[neg.coefficient],
                                      positions=plan["positions"], progress=False)
            rep.by_coefficient = [neg_rep.by_coefficient[0], *rep.by_coefficient]
        rep.title = f"{name}: average sentiment class probabilities ({len(report_half)} held-out openings)"
        rep.write(out / "results", f"sentiment_{name}")
    md = (
        "pca_diff is compared at equal added norm (rescaled per layer to the mean_diff norms). "
        f"Held-out openings: {len(held)} (openings 200+ of RepE's all_truncated_outputs.json; vectors use "
        f"openings 0–127), greedy, 24 new tokens, VADER scorer. Auto-tune picks layers and coefficient on "
        f"one half under the budget *continuation perplexity ≤ {budget}× the unsteered continuations'* "
        "(perplexity of the continuation under the unsteered model) and reports the other half.\n\n"
        + markdown_table(rows)
        + "\n\n"
        + "".join(f"![{n}](results/sentiment_{n}.png)\n" for n in vectors)
    )
    return md, summary


def caa_section(lm: steerlab.LM, out: Path, quick: bool) -> tuple[str, dict[str, Any]]:
    behaviors = ["corrigible-neutral-HHH", "refusal", "survival-instinct"]
    if quick:
        behaviors = behaviors[:1]
    cost_texts = steerlab.load_texts(REPE / "facts_true_false.csv", limit=8 if quick else 32)
    layers = [10, 14] if quick else [6, 9, 12, 15, 18]
    rows, summary, capability_rows = [], {}, []
    for name in behaviors:
        t0 = time.perf_counter()
        vec = behavior_vector(lm, CAA / "generate" / name / "generate_dataset.json", layers=layers,
                              limit=32 if quick else 150)
        items = load_ab_items(CAA / "test" / name / "test_dataset_ab.json")
        tune = autotune(lm, vec, "behavior", items, coefficients=[1.0], layer_sets=[[k] for k in layers],
                        budget=1.3, direction=1, cost_texts=cost_texts, progress=False)
        layer = tune.layers[0]
        rep = behavior_eval(lm, vec.select([layer]), items, coefficients=(-1.0, 0.0, 1.0), progress=False,
                            name=name)
        rep.write(out / "results", f"caa_{name}")
        pts = {p.coefficient: p for p in rep.points}
        rows.append({"behavior": name, "layer": layer, "p(match) −1": pts[-1.0].mean, "0": pts[0.0].mean,
                     "+1": pts[1.0].mean, "letter mass": pts[0.0].letter_mass, "n": pts[0.0].n})
        summary[name] = {"layer": layer, "points": {m: p.mean for m, p in pts.items()}}
        if name == behaviors[0]:
            mmlu = capability_eval(lm, vec.select([layer]), CAA / "test" / "mmlu" / "mmlu.json",
                                   coefficients=(-1.0, 0.0, 1.0), limit=20 if quick else 100)
            mmlu.write(out / "results", "caa_mmlu")
            capability_rows = [{"set": "MMLU (A/B)", "vector": name, "layer": layer,
                                **{f"acc {p.coefficient:+g}": p.above_half for p in mmlu.points},
                                "n": mmlu.points[0].n}]
        print(f"  {name}: layer {layer} ({time.perf_counter() - t0:.0f} s)", flush=True)
    md = (
        "Vectors: mean difference at the answer letter over the behaviour's generate_dataset.json "
        f"({32 if quick else 150} items), candidate layers {layers}. The layer is "
        "auto-tuned for p(matching) at +1 with perplexity on neutral statements ≤ 1.3× (selection on half of "
        "the 50 held-out A/B items). The table reads all 50 items at that layer; steering acts on every "
        "position after the instruction; answers primed with '('.\n\n"
        + markdown_table(rows)
        + "\n\nCapability check at the same layer (MMLU items in CAA's A/B format; accuracy = p(correct) > 0.5):\n\n"
        + markdown_table(capability_rows)
        + "\n\n"
        + "".join(f"![{n}](results/caa_{n}.png)\n" for n in behaviors)
    )
    return md, summary


def breakdown_section(lm: steerlab.LM, out: Path, quick: bool) -> str:
    openings = steerlab.load_openings(REPE / "all_truncated_outputs.json")
    vec = steerlab.extract(lm, steerlab.persona_pairs("happy", "sad", openings[:128]), layers=range(8, 20))
    texts = steerlab.load_texts(REPE / "facts_true_false.csv", limit=16 if quick else 64)
    rep = breakdown_curve(lm, vec, texts, progress=False)
    rep.write(out / "results", "breakdown")
    bp = rep.breaking_point
    return (
        "Happy − sad mean_diff vector on layers 8–19, added at every position of "
        f"{len(texts)} neutral statements (RepE facts). x: coefficient; the added norm relative to the residual "
        "norm is the top axis. Breaking point (perplexity > 2× unsteered): "
        f"{'none in range' if bp is None else f'|c| = {bp:g}'}.\n\n"
        + rep.to_markdown()
        + "\n\n![breakdown](results/breakdown.png)\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer items and settings (a smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out: Path = args.out
    t0 = time.perf_counter()
    lm = steerlab.load_model("default")
    print("breakdown ...", flush=True)
    brk_md = breakdown_section(lm, out, args.quick)
    print("CAA behaviours ...", flush=True)
    caa_md, caa = caa_section(lm, out, args.quick)
    print("sentiment ...", flush=True)
    sent_md, sent = sentiment_section(lm, out, args.quick)
    minutes = (time.perf_counter() - t0) / 60
    (out / "results" / "summary.json").write_text(json.dumps({"sentiment": sent, "caa": caa}, indent=2, default=str))
    text = (ROOT / "scripts" / "results_template.md").read_text(encoding="utf-8").format(
        sentiment=sent_md, caa=caa_md, breakdown=brk_md, minutes=f"{minutes:.0f}",
        mode="quick" if args.quick else "full", model=lm.model_id,
    )
    (out / "results.md").write_text(text, encoding="utf-8")
    print(f"wrote {out / 'results.md'} in {minutes:.1f} min")


if __name__ == "__main__":
    main()
