"""Measure what ``steerlab demo`` shows: the mean VADER compound of its three columns (baseline,
positive, negative) on the demo's prompts and on the 24 OPENINGS, for the packaged demo setting (or
``--setting JSON``). Writes JSON and prints a short table.

Usage:
    python scripts/demo_columns.py [--setting PATH] [--model default] [--out docs/results/demo_columns.json]
        [--label NAME] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch

import steerlab
from steerlab.data.demo import DEMO_PROMPTS, OPENINGS
from steerlab.data.demo_setting import load_demo_setting
from steerlab.evaluate.demo_run import column_sentiment, demo_columns, demo_rows

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", type=Path, default=None, help="a demo setting JSON (default: the packaged one)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "demo_columns.json")
    parser.add_argument("--label", default="packaged", help="the key this measurement is stored under in --out")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setting = load_demo_setting(args.setting)
    lm = steerlab.load_model(args.model)
    t0 = time.perf_counter()
    rows = demo_rows(lm, setting.directions)
    result = {}
    for name, prompts in (("demo_prompts", DEMO_PROMPTS), ("openings", OPENINGS)):
        cols = demo_columns(lm, list(prompts), rows, args.max_new_tokens)
        result[name] = {
            "n": len(prompts),
            "vader_mean": column_sentiment(cols),
            "examples": {k: v[:3] for k, v in cols.items()},
        }
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    entry = {
        "setting": setting.to_dict(),
        "model": lm.model_id,
        "max_new_tokens": args.max_new_tokens,
        "commit": commit,
        "seconds": round(time.perf_counter() - t0, 1),
        **result,
    }
    data = json.loads(args.out.read_text()) if args.out.exists() else {}
    data[args.label] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"{args.label}: {setting.directions[1].label} / {setting.directions[-1].label}")
    print(f"{'prompts':<14} {'n':>3} {'baseline':>9} {'positive':>9} {'negative':>9}")
    for name, r in result.items():
        m = r["vader_mean"]
        print(f"{name:<14} {r['n']:>3} {m['baseline']:>+9.3f} {m['positive']:>+9.3f} {m['negative']:>+9.3f}")


if __name__ == "__main__":
    main()
