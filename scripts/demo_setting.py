"""Write the setting `steerlab demo` uses (src/steerlab/data/demo_setting.json) from a frontier report.

Per direction it picks, among the budgeted choices of the steering methods (a vector, no
prompt), the one with the highest held-out effect (steerlab.evaluate.demo_choice.from_frontier);
with ``--budget B``, the vector setting with the highest effect among all settings costing at most
``B`` that do not loop (a demo may spend more than the frontier's budget to read clearly).

Usage:
    python scripts/demo_setting.py docs/results/frontier_default.json [--budget 1.5] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from steerlab.data.demo_setting import write_demo_setting
from steerlab.evaluate.demo_choice import from_frontier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("frontier", type=Path, help="a frontier report JSON (FrontierReport.to_dict)")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the packaged file)")
    parser.add_argument(
        "--budget", type=float, default=None, help="choose among all settings within this cost (default: budgeted)"
    )
    args = parser.parse_args()
    setting = from_frontier(json.loads(args.frontier.read_text(encoding="utf-8")), budget=args.budget)
    dest = write_demo_setting(setting, args.out)
    print(json.dumps(setting.to_dict(), indent=2))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
