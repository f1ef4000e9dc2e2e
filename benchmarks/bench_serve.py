"""Schedulers of ``steerlab serve``: continuous batching vs batch at a time vs one at a time.

The scenario the server is built for: many clients stream completions at once, each steered by one
of 4 different vectors. The same requests go to three ``steerlab serve`` processes started from
the real command line, on the same model and store:

* **continuous** — ``--scheduler continuous --max-batch N``: a request joins the running batch at
  the next decoding step and leaves it when it is done;
* **batch** — ``--scheduler batch --max-batch N`` (the scheduler before continuous batching): the
  worker gathers the requests waiting into one ``generate`` call; a request that arrives while a
  batch decodes waits for the whole batch to end;
* **one at a time** — ``--scheduler batch --max-batch 1``: the queue served one request after
  another (what a server without batching does; each request is served alone);
* **compiled** — ``--scheduler continuous --compiled on --max-batch N``: continuous batching whose
  rows decode through one compiled step over a static cache (slots; the others run
  ``--compiled off``). Compiling a step shape is a long pause on a CPU: the warm-up runs each load
  pattern on every server until a pass makes no new step shape (``--warmup full``, the
  default; ``compiled_shapes`` in ``/metrics``), so that the timed runs measure the steps, and the
  JSON records each server's warm-up time and shapes.

``--servers`` picks which of them run (all four by default).

Two load patterns, each ``--concurrency`` requests (64; request ``i`` uses vector ``i % 4``):

* ``burst`` — every request is sent at the same moment;
* ``arrivals`` — requests arrive at random times (seeded, uniform over ``--spread`` seconds: a
  Poisson process given its count), so most arrive while others are generating.

Every request is greedy with ``ignore_eos`` and its own ``max_tokens`` (between the configured
bounds), streamed; the client measures the **time to first token** (request sent → first text
chunk), the request latency, and the **total tokens per second** (all completion tokens / time
from the first request sent to the last one finished). The texts of the three servers are
compared (they must match: greedy rows give the text of the same request served alone). Each
server gets a short warm-up, then ``--reps`` timed runs per pattern with the order of the servers
alternated (one at a time gets ``--solo-reps``, it is slow); medians of the throughput, and
percentiles over every request of every run.

Usage::

    python benchmarks/bench_serve.py --quick     # stories260K, 64 requests, 16-64 tokens (~3 min)
    python benchmarks/bench_serve.py             # SmolLM2-135M-Instruct ("default"), 64 requests, 8-40 tokens (~35 min)

Writes ``benchmarks/results/serve_schedulers.json`` (``serve_schedulers_quick.json`` with
``--quick``; ``--out`` overrides) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import benchlib
from benchlib import log

REPO = benchlib.REPO
SHARED = benchlib.SHARED
RESULTS = benchlib.RESULTS

PERSONAS = [("happy", "sad"), ("angry", "calm"), ("formal", "casual"), ("curious", "bored")]
PROMPTS = [
    "Once upon a time",
    "The weather today is",
    "My favourite food is",
    "Tell me about the sea.",
    "When I was young,",
    "The best way to learn is",
    "Yesterday at the park",
    "The old house on the hill",
    "Our team meeting went",
    "The cat looked at me and",
    "In the morning I usually",
    "The train was late, so",
    "A good friend is someone who",
    "The museum had a new",
    "After the storm,",
    "The recipe calls for",
]
PATTERNS = ("burst", "arrivals")


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """One run's settings (the JSON's ``config``)."""

    mode: str
    model: str
    layers: tuple[int, ...]
    coefficient: float
    min_tokens: int
    max_tokens: int
    threads: int | None
    concurrency: int = 64
    max_batch: int = 64
    spread_s: float = 8.0
    seed: int = 0
    vectors: tuple[str, ...] = tuple(p for p, _ in PERSONAS)

    def modes(self) -> dict[str, tuple[str, int, str]]:
        """Server name: (``--scheduler``, ``--max-batch``, ``--compiled``)."""
        return {
            "continuous": ("continuous", self.max_batch, "off"),
            "compiled": ("continuous", self.max_batch, "on"),
            "batch": ("batch", self.max_batch, "off"),
            "one_at_a_time": ("batch", 1, "off"),
        }


FULL = ServeConfig(
    mode="full",
    model="default",
    layers=tuple(range(8, 20)),
    coefficient=4.0,
    min_tokens=8,
    max_tokens=40,
    threads=1,
    spread_s=8.0,
)
QUICK = ServeConfig(
    mode="quick",
    model=str(SHARED / "models" / "stories260K"),
    layers=(1, 2, 3),
    coefficient=2.0,
    min_tokens=16,
    max_tokens=64,
    threads=1,
    spread_s=1.0,
)


def machine_info() -> dict[str, Any]:
    return benchlib.machine_info(("torch", "transformers", "fastapi", "uvicorn", "httpx"))


def make_store(cfg: ServeConfig, root: Path) -> list[str]:
    """Extract 4 persona vectors (untimed) into the store ``root``; returns their names."""
    import steerlab
    from steerlab.data.demo import OPENINGS

    lm = steerlab.load_model(cfg.model)
    names = []
    for pos, neg in PERSONAS:
        pairs = steerlab.persona_pairs(pos, neg, list(OPENINGS)[:32])
        vec = steerlab.extract(lm, pairs, method="mean_diff", layers=list(cfg.layers), progress=False)
        vec.save(root / pos)
        names.append(pos)
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """``steerlab serve`` in a subprocess (the real command line)."""

    def __init__(self, cfg: ServeConfig, store: Path, scheduler: str, max_batch: int, compiled: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "steerlab",
            "--quiet",
            "serve",
            "--model",
            cfg.model,
            "--vectors",
            str(store),
            "--port",
            str(self.port),
            "--scheduler",
            scheduler,
            "--max-batch",
            str(max_batch),
            "--compiled",
            compiled,
            "--max-queue",
            str(max(64, 2 * cfg.concurrency)),
            "--timeout",
            "3600",
            "--log-level",
            "warning",
        ]
        if cfg.threads:
            cmd += ["--threads", str(cfg.threads)]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL)

    def wait(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"steerlab serve exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError("steerlab serve did not come up")

    def metrics(self) -> dict[str, Any]:
        import httpx

        return dict(httpx.get(f"{self.url}/metrics", params={"format": "json"}, timeout=10).json())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def requests(names: list[str], cfg: ServeConfig) -> list[dict[str, Any]]:
    """``cfg.concurrency`` streamed requests: prompt ``i``, vector ``i % 4``, greedy, exactly
    ``max_tokens`` tokens (between the configured bounds, varying)."""
    span = cfg.max_tokens - cfg.min_tokens + 1
    return [
        {
            "model": cfg.model,
            "prompt": PROMPTS[i % len(PROMPTS)],
            "max_tokens": cfg.min_tokens + (i * 7) % span,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
            "steering": [{"vector": names[i % len(names)], "coefficient": cfg.coefficient}],
        }
        for i in range(cfg.concurrency)
    ]


def offsets(cfg: ServeConfig, pattern: str) -> list[float]:
    """When each request is sent (seconds after the start): all at 0 (``burst``), or seeded random
    times over ``spread_s`` (``arrivals``)."""
    if pattern == "burst":
        return [0.0] * cfg.concurrency
    rng = random.Random(cfg.seed)
    return [rng.uniform(0, cfg.spread_s) for _ in range(cfg.concurrency)]


async def one_request(client: Any, body: dict[str, Any], delay: float, t0: float) -> dict[str, Any]:
    """Send ``body`` ``delay`` s after ``t0`` and read its stream: times, text, tokens."""
    await asyncio.sleep(max(0.0, t0 + delay - time.perf_counter()))
    sent = time.perf_counter()
    first: float | None = None
    text, tokens = "", 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                if choice.get("text"):
                    first = first or time.perf_counter()
                    text += choice["text"]
    end = time.perf_counter()
    return {
        "sent": sent - t0,
        "ttft_s": (first or end) - sent,
        "latency_s": end - sent,
        "end": end - t0,
        "text": text,
        "tokens": tokens,
    }


async def load(url: str, bodies: list[dict[str, Any]], delays: list[float]) -> dict[str, Any]:
    """Send every request at its time; per-request times and texts, total tokens per second."""
    import httpx

    limits = httpx.Limits(max_connections=len(bodies) + 8)
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as client:
        t0 = time.perf_counter() + 0.05
        results = await asyncio.gather(*(one_request(client, b, d, t0) for b, d in zip(bodies, delays)))
    start = min(r["sent"] for r in results)
    wall = max(r["end"] for r in results) - start
    tokens = sum(r["tokens"] for r in results)
    return {
        "wall_s": wall,
        "completion_tokens": tokens,
        "tokens_per_s": tokens / wall,
        "ttft_s": [r["ttft_s"] for r in results],
        "latency_s": [r["latency_s"] for r in results],
        "texts": [r["text"] for r in results],
    }


def _step_rows(m: dict[str, Any]) -> tuple[int, float]:
    """Decoding steps and rows × steps so far (from ``/metrics?format=json``)."""
    steps = int(m.get("steps_total", 0))
    return steps, float(m.get("step_rows_total", m.get("mean_batch_size", 0.0) * steps))


def run_pattern(
    cfg: ServeConfig,
    servers: dict[str, ServeProcess],
    bodies: list[dict[str, Any]],
    pattern: str,
    reps: int,
    solo_reps: int,
) -> dict[str, list[dict[str, Any]]]:
    """``reps`` runs of one load pattern per server (order alternating); each run's results plus
    the server's mean rows per decoding step during it."""
    delays = offsets(cfg, pattern)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in servers}
    for rep in range(reps):
        order = list(servers) if rep % 2 == 0 else list(reversed(servers))
        for m in order:
            if m == "one_at_a_time" and rep >= solo_reps:
                continue
            before = _step_rows(servers[m].metrics())
            res = asyncio.run(load(servers[m].url, bodies, delays))
            after = _step_rows(servers[m].metrics())
            steps = after[0] - before[0]
            res["mean_batch_size"] = round((after[1] - before[1]) / steps, 2) if steps else None
            log(
                f"{pattern} rep {rep + 1}/{reps} {m}: {res['wall_s']:.2f} s, {res['tokens_per_s']:.1f} tok/s, "
                f"ttft p95 {percentile(res['ttft_s'], 0.95):.3f} s, load {os.getloadavg()[0]:.1f}"
            )
            runs[m].append(res)
    return runs


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """One server's runs of one pattern: throughput (median run), TTFT and latency percentiles
    over every request of every run."""
    ttft = [t for r in rs for t in r["ttft_s"]]
    lat = [t for r in rs for t in r["latency_s"]]
    return {
        "runs": len(rs),
        "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in rs), 2),
        "tokens_per_s_all": [round(r["tokens_per_s"], 2) for r in rs],
        "wall_s_median": round(statistics.median(r["wall_s"] for r in rs), 3),
        "completion_tokens": rs[0]["completion_tokens"],
        "ttft_s_p50": round(percentile(ttft, 0.5), 4),
        "ttft_s_p95": round(percentile(ttft, 0.95), 4),
        "ttft_s_max": round(max(ttft), 4),
        "ttft_s_p95_runs": [round(percentile(r["ttft_s"], 0.95), 4) for r in rs],
        "latency_s_p50": round(percentile(lat, 0.5), 4),
        "latency_s_p95": round(percentile(lat, 0.95), 4),
        "mean_batch_size": [r["mean_batch_size"] for r in rs],
    }


def compare(summary: dict[str, dict[str, Any]], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Continuous vs the others (those that ran): TTFT p95 ratios, throughput ratios, identical texts
    (to the one-at-a-time server's, else to the eager continuous one's)."""
    out: dict[str, Any] = {}

    def ratio(name: str, a: str, b: str, key: str, digits: int) -> None:
        if a in summary and b in summary:
            out[name] = round(summary[a][key] / summary[b][key], digits)

    ratio("ttft_p95_batch_over_continuous", "batch", "continuous", "ttft_s_p95", 2)
    ratio("ttft_p50_batch_over_continuous", "batch", "continuous", "ttft_s_p50", 2)
    ratio("tokens_per_s_continuous_over_batch", "continuous", "batch", "tokens_per_s", 3)
    ratio("tokens_per_s_continuous_over_one_at_a_time", "continuous", "one_at_a_time", "tokens_per_s", 2)
    ratio("ttft_p95_continuous_over_compiled", "continuous", "compiled", "ttft_s_p95", 3)
    ratio("tokens_per_s_compiled_over_continuous", "compiled", "continuous", "tokens_per_s", 3)
    reference = "one_at_a_time" if "one_at_a_time" in runs else next(iter(runs))
    alone = runs[reference][0]["texts"]
    out["texts_reference"] = reference
    out["texts_identical_to_alone"] = {m: all(r["texts"] == alone for r in rs) for m, rs in runs.items()}
    return out


def measure(
    cfg: ServeConfig,
    store: Path,
    bodies: list[dict[str, Any]],
    reps: int,
    solo_reps: int,
    names: list[str],
    warmup: str,
) -> dict[str, Any]:
    """Start the servers ``names``, warm each up, run both patterns; summaries per pattern."""
    modes = cfg.modes()
    servers = {m: ServeProcess(cfg, store, *modes[m]) for m in names}
    try:
        for s in servers.values():
            s.wait()
        warm: dict[str, float] = {}
        for m, s in servers.items():
            log(f"warm-up ({warmup}): {m}")
            begun = time.monotonic()
            if warmup == "full" and m != "one_at_a_time":
                shapes = None
                for _ in range(6):  # until a pass of both patterns makes no new compiled step shape
                    for pattern in PATTERNS:
                        asyncio.run(load(s.url, bodies, offsets(cfg, pattern)))
                    now = s.metrics().get("compiled_shapes")
                    if now == shapes:
                        break
                    shapes = now
            else:
                asyncio.run(load(s.url, bodies[:4], [0.0] * 4))
            warm[m] = round(time.monotonic() - begun, 1)
            log(f"warm-up {m}: {warm[m]} s, compiled shapes {s.metrics().get('compiled_shapes')}")
        out: dict[str, Any] = {"warmup_s": warm}
        for pattern in PATTERNS:
            runs = run_pattern(cfg, servers, bodies, pattern, reps, solo_reps)
            summary = {m: summarise(rs) for m, rs in runs.items()}
            out[pattern] = {
                "summary": summary,
                "comparison": compare(summary, runs),
                "offsets_s": [round(x, 3) for x in offsets(cfg, pattern)],
            }
        out["server_metrics"] = {m: s.metrics() for m, s in servers.items()}
        return out
    finally:
        for s in servers.values():
            s.stop()


def markdown(result: dict[str, Any], out: Path) -> str:
    cfg, machine = result["config"], result["machine"]
    lines = [
        f"\n### steerlab serve schedulers: {cfg['concurrency']} streamed requests over {len(cfg['vectors'])} "
        f"vectors, {cfg['min_tokens']}-{cfg['max_tokens']} tokens each, --max-batch {cfg['max_batch']} "
        f"({cfg['mode']}: {cfg['model']}, threads={cfg['threads'] or 'default'})\n",
        "| load | server | TTFT p50 | TTFT p95 | latency p95 | tokens/s | mean batch |",
        "|---|---|---|---|---|---|---|",
    ]
    for pattern in PATTERNS:
        for m, s in result[pattern]["summary"].items():
            batch = "/".join(str(b) for b in s["mean_batch_size"])
            lines.append(
                f"| {pattern} | {m} | {s['ttft_s_p50']:.3f} s | {s['ttft_s_p95']:.3f} s | "
                f"{s['latency_s_p95']:.2f} s | {s['tokens_per_s']:.1f} | {batch} |"
            )
    for pattern in PATTERNS:
        c = result[pattern]["comparison"]
        ratios = ", ".join(f"{k} **{v}×**" for k, v in c.items() if k.startswith(("ttft", "tokens")))
        lines.append(
            f"\n{pattern}: {ratios}; texts identical to {c['texts_reference']}'s: {c['texts_identical_to_alone']}"
        )
    lines.append(f"\nwarm-up (s): {result['warmup_s']}")
    lines.append(f"\nload average {machine['loadavg_start'][0]:.2f} → {machine['loadavg_end'][0]:.2f}; wrote {out}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="stories260K, 16-64 tokens per request")
    ap.add_argument("--reps", type=int, default=3, help="timed runs per pattern and server")
    ap.add_argument(
        "--solo-reps",
        type=int,
        default=None,
        help="timed runs of the one-at-a-time server (default: --reps with --quick, else 1)",
    )
    ap.add_argument("--concurrency", type=int, default=None, help="requests per run (64)")
    ap.add_argument("--max-batch", type=int, default=None, help="--max-batch of the batching servers (64)")
    ap.add_argument("--max-tokens", type=int, default=None, help="the most tokens per request")
    ap.add_argument("--spread", type=float, default=None, help="seconds over which the 'arrivals' requests arrive")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of each server (1)")
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    ap.add_argument(
        "--servers",
        default="continuous,compiled,batch,one_at_a_time",
        help="comma-separated servers to run (continuous, compiled, batch, one_at_a_time)",
    )
    ap.add_argument(
        "--warmup",
        choices=("full", "short"),
        default="full",
        help="full: each load pattern once per server before timing (compiles the compiled server's "
        "step shapes); short: 4 requests",
    )
    args = ap.parse_args(argv)
    base = QUICK if args.quick else FULL
    cfg = replace(
        base,
        max_tokens=args.max_tokens or base.max_tokens,
        threads=args.threads or base.threads,
        concurrency=args.concurrency or base.concurrency,
        max_batch=args.max_batch or base.max_batch,
        spread_s=args.spread if args.spread is not None else base.spread_s,
    )
    solo_reps = args.solo_reps or (args.reps if args.quick else 1)
    out = args.out or RESULTS / ("serve_schedulers_quick.json" if args.quick else "serve_schedulers.json")
    os.environ.setdefault("STEERLAB_QUIET", "1")
    started = time.time()
    result = benchlib.result_header("bench_serve", started, args.reps, asdict(cfg), machine_info())
    result["solo_reps"] = solo_reps
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        store = Path(tmp) / "vectors"
        log(f"extracting {len(PERSONAS)} vectors on {cfg.model}")
        bodies = requests(make_store(cfg, store), cfg)
        names = [n.strip() for n in args.servers.split(",") if n.strip()]
        unknown = sorted(set(names) - set(cfg.modes()))
        if unknown or not names:
            ap.error(f"--servers: unknown {unknown} (use {', '.join(cfg.modes())})")
        result["servers"] = names
        result.update(measure(cfg, store, bodies, args.reps, solo_reps, names, args.warmup))
    result["machine"]["loadavg_end"] = benchlib.loadavg()
    result["total_wall_s"] = round(time.time() - started, 1)
    benchlib.write_json(out, result, indent=2)
    print(markdown(result, out))


if __name__ == "__main__":
    main()
