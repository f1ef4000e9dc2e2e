"""Per-request steered throughput of an OpenAI-compatible server: vLLM (plain, or with a steering
plugin), ``steerlab serve --engine vllm`` in front of it, or ``steerlab serve`` itself.

The measurement plan of ``docs/vllm.md``. For each concurrency level and each fraction of steered
requests, ``--requests`` completions (greedy, ``ignore_eos``, the same prompt length and
``--max-tokens`` each, so every server does the same work) are sent with at most ``concurrency``
in flight; steered requests get ``--steer-body`` merged into their body (a steerlab ``steering``
list, or a vLLM ``vllm_xargs`` from ``steerlab export``). Each request is streamed with
``stream_options.include_usage``: time to first token, time per output token after it, and the
token count come from the stream. Reported per cell: output tokens/s over the wall time, requests/s,
TTFT and TPOT medians and p99.

Usage (GPU machine; see docs/vllm.md for starting the servers)::

    python benchmarks/bench_vllm.py --url http://127.0.0.1:8001 --model meta-llama/Llama-3.1-8B-Instruct \\
        --label vllm-lens --steer-body @steer_vllm_lens.json --out results/vllm_lens.json
    python benchmarks/bench_vllm.py --url http://127.0.0.1:8000 --label steerlab-vllm \\
        --steer-body '{"steering": [{"vector": "happy", "coefficient": 4}]}'

Needs only ``httpx``. No GPU result has been measured with it yet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SENTENCE = "The quick brown fox jumps over the lazy dog while the sun sets slowly behind the hills. "


@dataclass
class Sample:
    steered: bool
    ttft_s: float
    tpot_s: float
    tokens: int
    total_s: float


def load_body(spec: str | None) -> dict[str, Any]:
    """``--steer-body``: JSON text, or ``@file`` holding it."""
    if not spec:
        return {}
    text = Path(spec[1:]).read_text(encoding="utf-8") if spec.startswith("@") else spec
    body = json.loads(text)
    if not isinstance(body, dict):
        raise SystemExit("--steer-body must be a JSON object merged into steered requests")
    return body


async def one(client: Any, url: str, body: dict[str, Any], steered: bool) -> Sample:
    t0 = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{resp.status_code}: {(await resp.aread())[:300]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and any(c.get("text") for c in chunk.get("choices") or []):
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    end = time.perf_counter()
    first = first or end
    return Sample(steered, first - t0, (end - first) / max(1, tokens - 1), tokens, end - t0)


async def cell(args: argparse.Namespace, concurrency: int, fraction: float, steer: dict[str, Any]) -> dict[str, Any]:
    import httpx

    prompt = SENTENCE * max(1, args.prompt_tokens // 18)
    base: dict[str, Any] = {
        "prompt": prompt,
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if args.model:
        base["model"] = args.model
    n_steered = round(args.requests * fraction)
    bodies = [({**base, **steer}, True) if i < n_steered else (base, False) for i in range(args.requests)]
    bodies = bodies[::2] + bodies[1::2]  # interleave steered and plain requests
    gate = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}

    async with httpx.AsyncClient(timeout=None, headers=headers) as client:

        async def run(body: dict[str, Any], steered: bool) -> Sample:
            async with gate:
                return await one(client, args.url, body, steered)

        await run(base, False)  # warm-up
        t0 = time.perf_counter()
        samples = await asyncio.gather(*(run(b, s) for b, s in bodies))
        wall = time.perf_counter() - t0
    return summarize(samples, wall, concurrency, fraction)


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) >= 2 else (values[0] if values else 0.0)


def summarize(samples: list[Sample], wall: float, concurrency: int, fraction: float) -> dict[str, Any]:
    tokens = sum(s.tokens for s in samples)
    ttft = [s.ttft_s for s in samples]
    tpot = [s.tpot_s for s in samples]
    return {
        "concurrency": concurrency,
        "steered_fraction": fraction,
        "requests": len(samples),
        "wall_s": round(wall, 3),
        "output_tokens": tokens,
        "output_tok_s": round(tokens / wall, 1),
        "req_s": round(len(samples) / wall, 3),
        "ttft_ms_p50": round(1000 * statistics.median(ttft), 2),
        "ttft_ms_p99": round(1000 * _pct(ttft, 99), 2),
        "tpot_ms_p50": round(1000 * statistics.median(tpot), 3),
        "tpot_ms_p99": round(1000 * _pct(tpot, 99), 3),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="server base URL (no /v1)")
    ap.add_argument("--model", default=None, help="the model field (vLLM needs its served name)")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--label", default="server")
    ap.add_argument("--steer-body", default=None, help="JSON (or @file) merged into steered requests")
    ap.add_argument("--concurrency", default="1,8,32,128")
    ap.add_argument("--fractions", default="0,0.5,1", help="fractions of steered requests")
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--prompt-tokens", type=int, default=512, help="approximate prompt length")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    steer = load_body(args.steer_body)
    fractions = [float(x) for x in args.fractions.split(",")]
    if not steer and any(fractions):
        fractions = [0.0]
    rows = []
    for c in (int(x) for x in args.concurrency.split(",")):
        for f in fractions:
            row = asyncio.run(cell(args, c, f, steer))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    print(f"| {args.label} | concurrency | steered | tok/s | req/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| | {r['concurrency']} | {r['steered_fraction']:.0%} | {r['output_tok_s']} | {r['req_s']} | "
            f"{r['ttft_ms_p50']} / {r['ttft_ms_p99']} | {r['tpot_ms_p50']} / {r['tpot_ms_p99']} |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {"label": args.label, "args": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=2, default=str
            )
        )


if __name__ == "__main__":
    main()
