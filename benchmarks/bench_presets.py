"""What the server's presets (``GET /v1/presets``, steerlab.serve.presets) cost at start and at the
first request.

Per round, interleaved: ``create_app`` on stories260K with presets on and off (the same objects
either way: nothing is built at start, so the two differ by noise only), then the first
``GET /v1/presets`` of each new app (stories260K: the packaged setting does not fit, nothing is
built). With ``--default`` also the default model:
the first ``GET /v1/presets`` on an empty store (both vectors built) and on a store that already
holds them (a restart: reused).

Usage::

    python benchmarks/bench_presets.py [--rounds 5] [--default]

Writes JSON (machine, versions, git commit, load average) and prints a short table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import RESULTS, loadavg, log, machine_info, result_header, write_json

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"


def first_request(lm: Any, store: Path, presets: bool = True) -> tuple[float, float, dict[str, Any]]:
    """Seconds to ``create_app`` and to answer its first ``GET /v1/presets``, and the answer."""
    from fastapi.testclient import TestClient

    from steerlab.serve import ServeSettings, create_app

    t0 = time.perf_counter()
    app = create_app(lm, store, ServeSettings(presets=presets))
    made = time.perf_counter() - t0
    with TestClient(app) as c:
        t0 = time.perf_counter()
        body = c.get("/v1/presets").json()
        asked = time.perf_counter() - t0
    return made, asked, body


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--default", action="store_true", help="also build the presets on the default model")
    p.add_argument("--out", type=Path, default=RESULTS / "presets.json")
    args = p.parse_args(argv)

    import steerlab

    started = time.time()
    machine = machine_info()
    lm = steerlab.load_model(STORIES)
    times: dict[str, list[float]] = {"create_app, presets on": [], "create_app, presets off": [], "first GET": []}
    for r in range(args.rounds + 1):  # round 0 warms up
        with tempfile.TemporaryDirectory() as d:
            for on in (r % 2 == 0, r % 2 == 1):
                made, asked, _ = first_request(lm, Path(d) / f"s{on}", on)
                if r:
                    times[f"create_app, presets {'on' if on else 'off'}"].append(made)
                    if on:
                        times["first GET"].append(asked)
    res: dict[str, Any] = {
        **result_header("bench_presets", started, args.rounds, {"default": args.default}, machine),
        "stories260K_ms_median": {k: 1000 * statistics.median(v) for k, v in times.items()},
    }
    lines = ["| stories260K | ms (median) |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in res["stories260K_ms_median"].items()]
    if args.default:
        big = steerlab.load_model("default")
        with tempfile.TemporaryDirectory() as d:
            _, build, body = first_request(big, Path(d))
            _, reuse, again = first_request(big, Path(d))
        res["default"] = {
            "build_s": build,
            "restart_s": reuse,
            "labels": [x["label"] for x in body["data"]],
            "reused": [x["available"] for x in again["data"]],
        }
        lines += ["", "| default model | s |", "|---|---|", f"| first GET, empty store (built) | {build:.2f} |"]
        lines.append(f"| first GET after a restart (reused) | {reuse:.3f} |")
    res["loadavg_end"] = loadavg()
    lines.append(f"\nLoad average at start {machine.get('loadavg_start')}, at end {res['loadavg_end']}.")
    res["markdown"] = "\n".join(lines)
    write_json(args.out, res)
    print(res["markdown"])
    log(f"wrote {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
