"""Throughput of ``steerlab serve``: dynamic batching vs serving requests one at a time.

The scenario the server is built for: 16 clients send a completion at the same moment, each
steered by one of 4 different vectors (4 requests per vector). The same burst is sent to two
``steerlab serve`` processes started from the real command line, on the same model and store:

* **batched** — ``--max-batch 16``: the worker gathers the burst into one batched ``generate``
  with one steering per row;
* **one at a time** — ``--max-batch 1``: the same server serving the queue one request after
  another (what a server without batching does).

Every request is greedy with ``ignore_eos`` so both servers do exactly the same work
(``16 × max_tokens`` tokens), and the texts of the two servers are compared (they must match).
Each mode gets one warm-up burst, then ``--reps`` timed bursts, with the order of the modes
alternated each repetition; the median wall time is reported, with tokens per second, request
latency and the speedup (one-at-a-time wall time / batched wall time).

Usage::

    python benchmarks/bench_serve.py --quick     # stories260K, 16 tokens per request (~1 min)
    python benchmarks/bench_serve.py             # SmolLM2-135M-Instruct ("default"), 32 tokens

Writes ``benchmarks/results/serve.json`` (``serve_quick.json`` with ``--quick``; ``--out``
overrides) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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

MODES = {"batched": 16, "one_at_a_time": 1}  # mode: the server's --max-batch


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """One run's settings (the JSON's ``config``): model, vectors' layers and strength, tokens per
    request, server threads, requests per burst."""

    mode: str
    model: str
    layers: tuple[int, ...]
    coefficient: float
    max_tokens: int
    threads: int | None
    concurrency: int = 16
    vectors: tuple[str, ...] = tuple(p for p, _ in PERSONAS)


FULL = ServeConfig(
    mode="full", model="default", layers=tuple(range(8, 20)), coefficient=4.0, max_tokens=32, threads=None
)
QUICK = ServeConfig(
    mode="quick",
    model=str(SHARED / "models" / "stories260K"),
    layers=(1, 2, 3),
    coefficient=2.0,
    max_tokens=16,
    threads=1,
)


def machine_info() -> dict[str, Any]:
    return benchlib.machine_info(("torch", "transformers", "fastapi", "uvicorn", "httpx"))


def make_store(cfg: ServeConfig, root: Path) -> list[str]:
    """Extract 4 persona vectors (untimed) into the store ``root``; returns their names."""
    import steerlab
    from steerlab.demo_data import OPENINGS

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

    def __init__(self, cfg: ServeConfig, store: Path, max_batch: int) -> None:
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
            "--max-batch",
            str(max_batch),
            "--max-queue",
            "64",
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

        return dict(httpx.get(f"{self.url}/metrics", timeout=10).json())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def requests(names: list[str], cfg: ServeConfig) -> list[dict[str, Any]]:
    """``cfg.concurrency`` requests: prompt ``i``, vector ``i % 4``, greedy, exactly ``max_tokens`` tokens."""
    return [
        {
            "model": cfg.model,
            "prompt": PROMPTS[i % len(PROMPTS)],
            "max_tokens": cfg.max_tokens,
            "temperature": 0,
            "ignore_eos": True,
            "steering": [{"vector": names[i % len(names)], "coefficient": cfg.coefficient}],
        }
        for i in range(cfg.concurrency)
    ]


async def burst(url: str, bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """Send every request at once; wall time, per-request latency, texts and token counts."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=64)) as client:

        async def one(body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
            t0 = time.perf_counter()
            r = await client.post("/v1/completions", json={k: v for k, v in body.items() if v is not None})
            r.raise_for_status()
            return time.perf_counter() - t0, r.json()

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(b) for b in bodies))
        wall = time.perf_counter() - t0
    latencies = [lat for lat, _ in results]
    return {
        "wall_s": wall,
        "latencies_s": latencies,
        "texts": [r["choices"][0]["text"] for _, r in results],
        "completion_tokens": sum(r["usage"]["completion_tokens"] for _, r in results),
    }


def measure_modes(
    cfg: ServeConfig, store: Path, bodies: list[dict[str, Any]], reps: int
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]]]:
    """Start one server per mode, send one warm-up burst each, then ``reps`` timed bursts, the
    order of the modes alternating; the bursts and each server's ``/metrics``."""
    servers = {m: ServeProcess(cfg, store, b) for m, b in MODES.items()}
    try:
        for s in servers.values():
            s.wait()
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
        for m, s in servers.items():
            log(f"warm-up: {m}")
            asyncio.run(burst(s.url, bodies))
        for rep in range(reps):
            for m in list(MODES) if rep % 2 == 0 else list(reversed(MODES)):
                res = asyncio.run(burst(servers[m].url, bodies))
                log(
                    f"rep {rep + 1}/{reps} {m}: {res['wall_s']:.2f} s, "
                    f"{res['completion_tokens'] / res['wall_s']:.1f} tok/s"
                )
                runs[m].append(res)
        return runs, {m: s.metrics() for m, s in servers.items()}
    finally:
        for s in servers.values():
            s.stop()


def summarise(rs: list[dict[str, Any]], n_requests: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """One mode's bursts: median wall time, throughput, request latency (median, p95)."""
    walls = [r["wall_s"] for r in rs]
    lats = sorted(lat for r in rs for lat in r["latencies_s"])
    wall = statistics.median(walls)
    tokens = rs[0]["completion_tokens"]
    return {
        "wall_s_median": round(wall, 4),
        "wall_s_all": [round(w, 4) for w in walls],
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2),
        "requests_per_s": round(n_requests / wall, 3),
        "latency_s_median": round(statistics.median(lats), 4),
        "latency_s_p95": round(lats[min(len(lats) - 1, int(0.95 * len(lats)))], 4),
        "server_mean_batch_size": metrics.get("mean_batch_size"),
    }


def markdown(result: dict[str, Any], out: Path) -> str:
    cfg, machine, speedup = result["config"], result["machine"], result["speedup"]
    lines = [
        f"\n### steerlab serve: {cfg['concurrency']} concurrent requests, {len(cfg['vectors'])} vectors, "
        f"{cfg['max_tokens']} tokens each ({cfg['mode']}: {cfg['model']}, threads={cfg['threads'] or 'default'})\n",
        "| mode | wall (median) | tokens/s | requests/s | latency p50 | latency p95 | mean batch |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {m} | {s['wall_s_median']:.2f} s | {s['tokens_per_s']:.1f} | {s['requests_per_s']:.2f} | "
        f"{s['latency_s_median']:.2f} s | {s['latency_s_p95']:.2f} s | {s['server_mean_batch_size']} |"
        for m, s in result["summary"].items()
    ]
    lines.append(
        f"\nbatching speedup: **{speedup:.2f}×** (texts identical across modes: "
        f"{result['texts_identical_across_modes']}); load average {machine['loadavg_start'][0]:.2f} → "
        f"{machine['loadavg_end'][0]:.2f}; wrote {out}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="stories260K, 16 tokens per request")
    ap.add_argument("--reps", type=int, default=3, help="timed bursts per mode (median reported)")
    ap.add_argument("--concurrency", type=int, default=16, help="requests per burst")
    ap.add_argument("--max-tokens", type=int, default=None, help="tokens per request")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of each server")
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = ap.parse_args(argv)
    base = QUICK if args.quick else FULL
    cfg = replace(
        base,
        max_tokens=args.max_tokens or base.max_tokens,
        threads=args.threads or base.threads,
        concurrency=args.concurrency,
    )
    out = args.out or RESULTS / ("serve_quick.json" if args.quick else "serve.json")
    os.environ.setdefault("STEERLAB_QUIET", "1")
    started = time.time()
    result = benchlib.result_header("bench_serve", started, args.reps, asdict(cfg), machine_info())
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        store = Path(tmp) / "vectors"
        log(f"extracting {len(PERSONAS)} vectors on {cfg.model}")
        bodies = requests(make_store(cfg, store), cfg)
        runs, server_metrics = measure_modes(cfg, store, bodies, args.reps)
    summary = {m: summarise(rs, len(bodies), server_metrics[m]) for m, rs in runs.items()}
    result["machine"]["loadavg_end"] = benchlib.loadavg()
    result.update(
        summary=summary,
        speedup=round(summary["one_at_a_time"]["wall_s_median"] / summary["batched"]["wall_s_median"], 3),
        texts_identical_across_modes=all(r["texts"] == runs["batched"][0]["texts"] for rs in runs.values() for r in rs),
        server_metrics=server_metrics,
        total_wall_s=round(time.time() - started, 1),
    )
    benchlib.write_json(out, result, indent=2)
    print(markdown(result, out))


if __name__ == "__main__":
    main()
