"""steerlab vs llama.cpp decoding on the same GGUF: ms per token at batch 1 and 16 rows, one thread each.

llama.cpp is the ``xllamacpp`` wheel's in-process server (16 slots, continuous batching, one thread,
greedy, the GGUF's own Q4_1 weights; unsteered: a control vector is one add per layer). steerlab
loads the same GGUF (dequantized to float32; ``--dtype bfloat16``; ``--dtype int8`` / ``int4``:
bfloat16 with int8 / 4-bit weights, :mod:`steerlab.models.quantize`, and what that changes against
float32) and decodes steered: one vector at batch 1, a vector (its own coefficient) per row with 16
rows. steerlab's routes:

* ``generate`` — ``steerlab.generate(..., compiled=False)``: ``model.generate`` with the steering hooks;
* ``static`` — :class:`steerlab.runtime.decode.Decoder` run eagerly (static KV cache, no compilation);
* ``compiled`` — the same step compiled by TorchInductor (the path ``generate`` takes where it pays).

Every round runs each route once, in a rotated order (interleaved rounds); a route's figure is its
minimum over the rounds (and the median beside it). The time is that of the decoding steps only
(prompt excluded): llama.cpp's own ``predicted_per_token_ms`` (the mean over the 16 slots, which
decode together), steerlab's wall time of its steps. Every route decodes ``--tokens`` tokens
(llama.cpp ``ignore_eos``, steerlab ``min_new_tokens`` / no end token).

Tokens: llama.cpp's unsteered greedy text is compared with steerlab's unsteered compiled text per
prompt (the number of leading tokens that agree). The weights are not equal: llama.cpp multiplies
Q4_1 blocks with activations quantized to Q8 and keeps an F16 KV cache, steerlab runs the
dequantized weights in float32, so texts agree for a while and may then part.

Usage::

    python benchmarks/bench_llamacpp.py                # 48 tokens, 3 rounds, float32
    python benchmarks/bench_llamacpp.py --quick        # 16 tokens, 1 round, batch 1 only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import RESULTS, machine_info

PROMPTS = [
    "Once upon a time, there was a little girl who",
    "The old lighthouse keeper looked at the sea and",
    "In the morning, the market was full of",
    "My favourite thing about the weekend is",
    "The scientist opened the box and found",
    "When the train stopped in the small town,",
    "The recipe for a good soup starts with",
    "Yesterday I walked to the park and saw",
    "The best advice my grandmother gave me was",
    "Deep in the forest there lived a fox that",
    "The meeting began late because",
    "On the first day of school, the teacher",
    "The city at night looks like",
    "He picked up the guitar and",
    "The letter arrived on a rainy Tuesday, and",
    "If I could travel anywhere, I would go to",
]
PAIRS = (
    ["I love this, it is wonderful", "What a great day", "She was happy and smiling", "This is excellent news"],
    ["I hate this, it is awful", "What a terrible day", "She was sad and crying", "This is dreadful news"],
)


def _llama_server(path: str, slots: int, threads: int) -> Any:
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = path
    p.n_parallel = slots
    p.n_ctx = slots * 256
    p.cpuparams.n_threads = threads
    p.cpuparams_batch.n_threads = threads
    p.cache_prompt = False
    return xllamacpp.Server(p)


def _llama(server: Any, prompts: list[str], tokens: int) -> tuple[float, list[str]]:
    """ms per decoding step (mean of the slots' own figure) and the texts, the prompts run at once."""

    def one(prompt: str) -> dict[str, Any]:
        req = {"prompt": prompt, "n_predict": tokens, "temperature": 0, "top_k": 1, "ignore_eos": True}
        req["cache_prompt"] = False
        out: dict[str, Any] = server.handle_completions(req)
        return out

    with ThreadPoolExecutor(len(prompts)) as pool:
        outs = list(pool.map(one, prompts))
    ms = statistics.mean(o["timings"]["predicted_per_token_ms"] for o in outs)
    return ms, [o["choices"][0]["text"] for o in outs]


class _Stamps:
    """A logits processor that notes the time of each decoding step of ``model.generate``."""

    def __init__(self) -> None:
        self.t: list[float] = []

    def __call__(self, _ids: Any, scores: Any) -> Any:
        self.t.append(time.perf_counter())
        return scores

    def ms_per_step(self) -> float:
        return (self.t[-1] - self.t[0]) / (len(self.t) - 1) * 1000


def _routes(
    lm: Any, prompts: list[str], rows: list[Any], tokens: int, backend_ok: bool
) -> dict[str, Callable[[], Any]]:
    import steerlab
    from steerlab.runtime.decode import Decoder, decoder
    from steerlab.runtime.generate import encode

    ids, mask = encode(lm, prompts)
    pad = lm.tokenizer.pad_token_id or 0
    static = Decoder(lm, len(prompts), ids.shape[1] + tokens, backend=None)

    def gen() -> float:
        stamps = _Stamps()
        steerlab.generate(
            lm, prompts, rows, max_new_tokens=tokens, compiled=False, min_new_tokens=tokens, logits_processor=[stamps]
        )
        return stamps.ms_per_step()

    def run(dec: Any) -> Callable[[], float]:
        def go() -> float:
            dec.run(ids, mask, rows, tokens, [], pad)
            return dec.timing["decode_s"] / dec.timing["steps"] * 1000

        return go

    out = {"generate": gen, "static": run(static)}
    if backend_ok:
        out["compiled"] = run(decoder(lm, len(prompts), ids.shape[1] + tokens))
    return out


def _agree(lm: Any, a: str, b: str) -> int:
    """Leading tokens on which two continuations agree."""
    x, y = (
        lm.tokenizer(a, add_special_tokens=False)["input_ids"],
        lm.tokenizer(b, add_special_tokens=False)["input_ids"],
    )
    n = 0
    for p, q in zip(x, y, strict=False):
        if p != q:
            break
        n += 1
    return n


def _fidelity(lm: Any, convert: Callable[[], Any]) -> dict[str, Any]:
    """What a lower precision changes against float32: next-token logits after each prompt (max
    |difference|, mean KL divergence, same top token) and 48 greedy tokens (leading tokens equal)."""
    import torch

    import steerlab
    from steerlab.runtime.generate import encode

    ids, mask = encode(lm, PROMPTS)
    with torch.inference_mode():
        before = lm.model(input_ids=ids, attention_mask=mask).logits[:, -1].float()
    texts = steerlab.generate(lm, PROMPTS[:4], max_new_tokens=48, compiled=False)
    convert()
    with torch.inference_mode():
        after = lm.model(input_ids=ids, attention_mask=mask).logits[:, -1].float()
    other = steerlab.generate(lm, PROMPTS[:4], max_new_tokens=48, compiled=False)
    kl = torch.nn.functional.kl_div(after.log_softmax(-1), before.log_softmax(-1), log_target=True, reduction="none")
    return {
        "max_abs_logit_diff": round(float((after - before).abs().max()), 3),
        "logit_range": round(float(before.max() - before.min()), 1),
        "mean_kl": round(float(kl.sum(-1).mean()), 4),
        "same_top_token": int((after.argmax(-1) == before.argmax(-1)).sum()),
        "prompts": len(PROMPTS),
        "greedy_tokens_agree_48": [_agree(lm, a, b) for a, b in zip(texts, other, strict=True)],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import steerlab
    from steerlab.models.load import default_gguf_path
    from steerlab.runtime.decode import decoder
    from steerlab.runtime.generate import encode

    torch.set_num_threads(args.threads)
    path = str(default_gguf_path())
    lm = steerlab.load_model("default")
    if args.dtype in ("int8", "int4"):
        from steerlab.models import quantize

        fidelity = _fidelity(lm, lambda: getattr(quantize, f"{args.dtype}_weights")(lm))
    elif args.dtype != "float32":
        lm.model.to(getattr(torch, args.dtype))
    n_layers = len(lm.blocks)
    vec = steerlab.extract(lm, steerlab.pairs_from_lists(*PAIRS), method="mean_diff", layers=[n_layers // 2])
    server = _llama_server(path, 16, args.threads)
    batches = [1] if args.quick else [1, 16]
    res: dict[str, Any] = {"tokens": args.tokens, "rounds": args.rounds, "threads": args.threads, "dtype": args.dtype}
    res["gguf"] = Path(path).name
    if args.dtype in ("int8", "int4"):
        res["vs_float32"] = fidelity
    for batch in batches:
        prompts = PROMPTS[:batch]
        rows = [steerlab.Steering(vec, 4.0 + 0.25 * i) for i in range(batch)]
        routes = _routes(lm, prompts, rows, args.tokens, not args.no_compile)
        t0 = time.perf_counter()
        routes["compiled"]() if "compiled" in routes else None  # compile (and warm) outside the rounds
        compile_s = time.perf_counter() - t0
        routes["llama.cpp"] = lambda prompts=prompts: _llama(server, prompts, args.tokens)[0]
        times: dict[str, list[float]] = {k: [] for k in routes}
        names = list(routes)
        for r in range(args.rounds):
            for k in names[r % len(names) :] + names[: r % len(names)]:
                times[k].append(routes[k]())
        entry = {k: {"min_ms": round(min(v), 2), "median_ms": round(statistics.median(v), 2)} for k, v in times.items()}
        base = entry["llama.cpp"]["min_ms"]
        for v in entry.values():
            v["x_llama"] = round(v["min_ms"] / base, 2)
        res[f"batch{batch}"] = {"ms_per_step": entry, "compile_s": round(compile_s, 1)}
        # tokens: unsteered, llama.cpp vs steerlab on the same route
        _, texts = _llama(server, prompts, args.tokens)
        ids, mask = encode(lm, prompts)
        dec = decoder(lm, batch, ids.shape[1] + args.tokens) if not args.no_compile else None
        if dec is not None:
            new = dec.run(ids, mask, [None] * batch, args.tokens, [], lm.tokenizer.pad_token_id or 0)
            mine = lm.tokenizer.batch_decode(new, skip_special_tokens=True)
            agree = [_agree(lm, a, b) for a, b in zip(mine, texts, strict=True)]
            res[f"batch{batch}"]["tokens_agree"] = agree
            res[f"batch{batch}"]["texts_equal"] = sum(a == b for a, b in zip(mine, texts, strict=True))
    res["machine"] = machine_info()
    res["load"] = os.getloadavg()
    return res


def markdown(res: dict[str, Any]) -> str:
    lines = [
        f"steerlab vs llama.cpp, {res['gguf']}, {res['tokens']} tokens, {res['threads']} thread(s), "
        f"steerlab {res['dtype']}, min of {res['rounds']} interleaved rounds (ms per decoding step)",
        "",
        "| batch | route | min ms | median ms | × llama.cpp |",
        "|---|---|---|---|---|",
    ]
    for key in ("batch1", "batch16"):
        if key not in res:
            continue
        for name, v in res[key]["ms_per_step"].items():
            lines.append(f"| {key[5:]} | {name} | {v['min_ms']} | {v['median_ms']} | {v['x_llama']} |")
    for key in ("batch1", "batch16"):
        if key in res and "tokens_agree" in res[key]:
            lines.append(
                f"\n{key}: compile {res[key]['compile_s']} s; unsteered texts equal to llama.cpp's: "
                f"{res[key]['texts_equal']}/{len(res[key]['tokens_agree'])}, leading tokens that agree "
                f"{res[key]['tokens_agree']}"
            )
    if "vs_float32" in res:
        lines.append(f"\n{res['dtype']} vs float32 (same steerlab model): {res['vs_float32']}")
    lines.append(f"\nload average at the end: {[round(x, 2) for x in res['load']]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "int8", "int4"])
    p.add_argument("--quick", action="store_true", help="16 tokens, 1 round, batch 1 only")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled route")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.tokens, args.rounds = 16, 1
    res = run(args)
    out = (
        args.out
        or RESULTS
        / f"llamacpp{'_quick' if args.quick else ''}{'' if args.dtype == 'float32' else '_' + args.dtype}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(markdown(res))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
