"""Steering's per-step cost in decoding, where steps are short (issue 14's proxy) and on the default model.

Settings: plain, one vector for the whole batch, a different vector per row (16 rows), the
least-push operators ``push`` and ``rotate`` with the same vector (``vs add``: their step ratio over
the one vector's plain add), every steering at ``positions="generated"`` on every layer; and, for
reference, the floor of any hook-based steering: bare forward hooks that each do one in-place add
(no session, no positions).

**Eager, per step, interleaved.** Whole ``generate`` calls drift by ±10 % between runs on a shared
machine, more than the effect measured. So each setting decodes its own stream (its own KV cache
and tokens) and the streams advance one token at a time, alternately, in an order rotated every
step: every setting sees the same machine state within a few milliseconds. Only the one-token
forward is timed (wall clock, the steering session's hooks in place around it). ``step ratio`` is
the median, over ``rounds × new_tokens`` steps, of each step's time over plain's time at the same
step of the same round (paired, so that the machine's drift cancels); ``µs/step`` is each
setting's own median. The prompt's forward (prefill) is timed the same way, and the session's
set-up (building the per-layer deltas, once per ``generate`` call) on its own. ``end-to-end
ratio`` composes them as a ``generate`` call of ``new_tokens`` tokens pays:
``(set-up + prefill + n·step) / (prefill + n·step)`` against plain, with the paired ratios.

**In the hooks.** A separate decoding run per steered setting times steerlab's own hooks from
inside (the model's pre-hook and every block's hook): the direct cost per step, free of the
step-to-step scatter that hides a fraction of a percent on a long step.

**End to end.** Whole ``steerlab.generate`` calls, alternating settings, as a cross-check (min and
median over ``--e2e-rounds``, in the JSON only): noisier, but nothing left out.

**Compiled** (the short-step proxy only). One model instance per setting, each compiled with
``torch.compile(fullgraph=True)`` inside a steering session that stays open, decoding over a static
KV cache, interleaved per step as above: its tokens against the same instance's eager decoding,
its compile time, and the paired step ratio; a second plain instance shows how far two instances
differ by themselves. This is the path CUDA graphs take on a GPU.

Usage::

    python benchmarks/bench_steps.py --quick                   # stories260K only (~3 min)
    python benchmarks/bench_steps.py                            # + the default model (~6 min)
    python benchmarks/bench_steps.py --device cuda              # on a GPU

Writes JSON (machine, versions, git commit, load average) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchlib import RESULTS, SHARED, log, machine_info, result_header, write_json


@dataclass(frozen=True)
class StepCase:
    """One model's setting: batch, new tokens, layers steered, rounds."""

    name: str
    model: str
    batch: int
    new_tokens: int
    layers: tuple[int, ...] | None  # None: every layer
    rounds: int
    e2e_rounds: int
    target: float  # the bound on steered / plain per step


QUICK = StepCase("stories260K", str(SHARED / "models" / "stories260K"), 16, 64, None, 12, 5, 1.03)
DEFAULT = StepCase("SmolLM2-135M", "default", 16, 24, None, 6, 3, 1.01)
FLOOR = "floor: bare add hooks"
PLAIN2 = "plain, a second instance"


def _setup(case: StepCase, device: str) -> tuple[Any, list[str], dict[str, Any]]:
    import steerlab

    lm = steerlab.load_model(case.model, device=device)
    layers = list(case.layers) if case.layers is not None else list(range(lm.n_layers))
    pairs = steerlab.pairs_from_lists(
        ["Lily was happy and loved the sun", "The dog was glad", "Tom smiled"],
        ["Lily was sad and hated the rain", "The dog was upset", "Tom cried"],
    )
    vec = steerlab.extract(lm, pairs, layers=layers, progress=False)
    prompts = [("Once upon a time there was a", "The cat sat")[i % 2] for i in range(case.batch)]
    settings: dict[str, Any] = {
        "plain": None,
        "one vector": steerlab.Steering(vec, 1.0, positions="generated"),
        "a vector per row": [
            steerlab.Steering(vec * (0.5 + 0.1 * i), 1.0, positions="generated") for i in range(case.batch)
        ],
        # the least-push operators (issue 24), the same vector and positions: compare with "one vector"
        "push": steerlab.Steering(vec, 2.0, positions="generated", operator="push"),
        "rotate": steerlab.Steering(vec, 0.05, positions="generated", operator="rotate"),
    }
    return lm, prompts, settings


ADD = "one vector"
OPERATOR_SETTINGS = ("push", "rotate")
"""Settings whose cost is also read over a plain add (``vs add``: their paired step ratio over
``one vector``'s; the issue's goal is ≤ 1.03)."""


class _BareHooks:
    """The floor: one forward hook per steered block doing ``h.add_(delta)``, nothing else."""

    def __init__(self, lm: Any, steering: Any) -> None:
        self.lm = lm
        dtype = next(lm.model.parameters()).dtype
        directions = steering.vector.directions
        self.deltas = {k: (steering.coefficient * v).to(lm.device, dtype) for k, v in directions.items()}
        self.handles: list[Any] = []

    def __enter__(self) -> _BareHooks:
        for k, delta in self.deltas.items():

            def hook(_m: Any, _a: Any, out: Any, delta: Any = delta) -> None:
                (out[0] if isinstance(out, tuple) else out).add_(delta)

            self.handles.append(self.lm.blocks[k].register_forward_hook(hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


class _Decoder:
    """Greedy decoding of the prompts, one forward per :meth:`step`, timed; ``session`` (if any) is
    entered around each forward only, ``static`` uses a static KV cache (for compiled models)."""

    def __init__(
        self,
        lm: Any,
        model: Any,
        prompts: list[str],
        n: int,
        static: bool = False,
        session: AbstractContextManager[Any] | None = None,
    ) -> None:
        from steerlab.runtime.generate import encode

        self.lm, self.model, self.n, self.static, self.session = lm, model, n, static, session
        ids, mask = encode(lm, prompts)
        self.ids, self.mask0 = ids.to(lm.device), mask.to(lm.device)
        self.restart()

    def restart(self) -> None:
        """A new KV cache; the next :meth:`step` runs the prompt."""
        from transformers import StaticCache

        from steerlab.runtime import hf

        length = self.ids.shape[1] + self.n + 1
        self.cache = (
            StaticCache(config=self.lm.model.config, max_cache_len=length)
            if self.static
            else hf.new_cache(self.lm.model)
        )
        self.x, self.mask = self.ids, self.mask0
        self.tokens: list[Any] = []
        self.position = (self.mask.cumsum(-1) - 1).clamp(min=0)

    def step(self) -> float:
        """One forward (the prompt, then one token per row); its wall time in seconds."""
        import torch

        from steerlab.runtime import hf

        with self.session or nullcontext(), torch.inference_mode():
            kwargs = hf.forward_kwargs(
                self.lm.model,
                input_ids=self.x,
                attention_mask=self.mask,
                position_ids=self.position,
                cache=self.cache,
                use_cache=True,
            )
            _sync(self.lm)
            start = time.perf_counter()
            logits = self.model(**kwargs).logits
            _sync(self.lm)
            took = time.perf_counter() - start
        self.x = logits[:, -1].argmax(-1, keepdim=True)
        self.tokens.append(self.x)
        self.mask = torch.cat([self.mask, torch.ones_like(self.x)], 1)
        self.position = self.position[:, -1:] + 1
        return took

    def run(self) -> Any:
        """Tokens of one whole decoding loop from a new cache."""
        import torch

        self.restart()
        for _ in range(self.n + 1):
            self.step()
        return torch.cat(self.tokens, 1)


def _rotated(names: list[str], i: int) -> Iterator[str]:
    o = i % len(names)
    yield from names[o:] + names[:o]


def _sessions(lm: Any, settings: dict[str, Any], batch: int, mask: Any) -> tuple[dict[str, Any], dict[str, float]]:
    """One steering session per setting (built, not entered) and its set-up time in seconds."""
    import steerlab

    made: dict[str, Any] = {}
    setup: dict[str, float] = {}
    for k, s in settings.items():
        if k == FLOOR:
            made[k] = _BareHooks(lm, s)
            continue
        if s is None:
            made[k] = None
            continue
        rows = s if isinstance(s, list) else [s] * batch
        prompt_len = mask.sum(-1)
        start = time.perf_counter()
        cm = steerlab.steer_rows(lm, rows, prompt_length=prompt_len)
        session = cm.__enter__()
        setup[k] = time.perf_counter() - start
        cm.__exit__(None, None, None)  # hooks off; the session object is re-entered around each forward
        made[k] = session
    return made, setup


def _hook_time(case: StepCase, lm: Any, prompts: list[str], steering: Any) -> float:
    """Seconds per decoding step spent inside steerlab's hooks (the model's pre-hook and every
    block's hook, timed from inside): the direct cost, free of the machine's step-to-step scatter."""
    from steerlab.runtime.session import SteeringSession

    class Timed(SteeringSession):
        spent = 0.0

        def _pre_hook(self, module: Any, args: Any, kwargs: Any) -> None:
            start = time.perf_counter()
            super()._pre_hook(module, args, kwargs)
            Timed.spent += time.perf_counter() - start

        def _make_hook(self, layer: int) -> Any:
            inner = super()._make_hook(layer)

            def hook(*args: Any) -> Any:
                start = time.perf_counter()
                out = inner(*args)
                Timed.spent += time.perf_counter() - start
                return out

            return hook

    decoder = _Decoder(lm, lm.model, prompts, case.new_tokens)
    rows = steering if isinstance(steering, list) else [steering] * len(prompts)
    with Timed(lm, [], rows=rows, prompt_length=decoder.mask0.sum(-1)):
        decoder.step()  # the prompt
        Timed.spent = 0.0
        for _ in range(case.new_tokens):
            decoder.step()
    return Timed.spent / case.new_tokens


def _interleaved(case: StepCase, lm: Any, prompts: list[str], settings: dict[str, Any]) -> dict[str, Any]:
    """Per-step and prefill times (s) of every setting, interleaved; set-up times of the sessions."""
    names = list(settings)
    steps: dict[str, list[float]] = {k: [] for k in names}
    prefill: dict[str, list[float]] = {k: [] for k in names}
    setup: dict[str, list[float]] = {k: [] for k in names}
    for r in range(case.rounds + 1):  # round 0 warms up (and runs the position canary)
        first = _Decoder(lm, lm.model, prompts, case.new_tokens)
        sessions, made = _sessions(lm, settings, case.batch, first.mask0)
        streams = {k: _Decoder(lm, lm.model, prompts, case.new_tokens, session=sessions[k]) for k in names}
        for i in range(case.new_tokens + 1):  # the prompt, then one token at a time
            for k in _rotated(names, i + r):
                took = streams[k].step()
                if r:
                    (steps if i else prefill)[k].append(took)
        if r:
            for k, v in made.items():
                setup[k].append(v)
            log(f"{case.name}: interleaved round {r}/{case.rounds}")
    return {"steps": steps, "prefill": prefill, "setup": setup}


def _sync(lm: Any) -> None:
    import torch

    if lm.device.type == "cuda":
        torch.cuda.synchronize()


def _end_to_end(case: StepCase, lm: Any, prompts: list[str], settings: dict[str, Any]) -> dict[str, list[float]]:
    """Wall seconds of whole ``steerlab.generate`` calls, alternating settings (floor excluded)."""
    import steerlab

    n = case.new_tokens
    names = [k for k in settings if k != FLOOR]
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(case.e2e_rounds + 1):
        for k in _rotated(names, r):
            _sync(lm)
            start = time.perf_counter()
            steerlab.generate(lm, prompts, steering=settings[k], max_new_tokens=n, min_new_tokens=n)
            _sync(lm)
            if r:
                times[k].append(time.perf_counter() - start)
    return times


def _compiled(case: StepCase, device: str, prompts: list[str], settings: dict[str, Any]) -> dict[str, Any]:
    """``torch.compile(model, fullgraph=True)`` decoding over a static cache, interleaved like the
    eager section: one model instance per setting, each compiled once inside its own steering session
    that stays open (a new session makes a compiled model retrace). Per setting: its tokens against
    the same instance's eager decoding, compile time, and per-step times."""
    import torch

    import steerlab

    torch._dynamo.reset()
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    old_limit = getattr(torch._dynamo.config, limit)
    setattr(torch._dynamo.config, limit, 64)  # one set of graphs per instance, all alive at once
    # a second plain instance shows how much instances differ by themselves (memory placement)
    settings = {"plain": None, PLAIN2: None, **{k: v for k, v in settings.items() if k != FLOOR}}
    names = list(settings)
    out: dict[str, Any] = {}
    streams: dict[str, _Decoder] = {}
    try:
        with ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            for k in names:
                lm = steerlab.load_model(case.model, device=device)
                eager_decoder = _Decoder(lm, lm.model, prompts, case.new_tokens, static=True)
                s = settings[k]
                if s is not None:
                    rows = s if isinstance(s, list) else [s] * case.batch
                    stack.enter_context(steerlab.steer_rows(lm, rows, prompt_length=eager_decoder.mask0.sum(-1)))
                eager = eager_decoder.run()
                stream = _Decoder(lm, torch.compile(lm.model, fullgraph=True), prompts, case.new_tokens, static=True)
                start = time.perf_counter()
                tokens = stream.run()  # compiles (a graph break raises)
                out[k] = {
                    "tokens_equal_eager": bool(torch.equal(tokens, eager)),
                    "token_agreement": (tokens == eager).float().mean().item(),
                    "compile_s": time.perf_counter() - start,
                    "steps": [],
                }
                streams[k] = stream
                log(
                    f"{case.name}: compiled {k} in {out[k]['compile_s']:.0f} s, tokens equal eager: "
                    f"{out[k]['tokens_equal_eager']}"
                )
            for r in range(case.rounds):
                for st in streams.values():
                    st.restart()
                for i in range(case.new_tokens + 1):
                    for k in _rotated(names, i + r):
                        took = streams[k].step()
                        if i:
                            out[k]["steps"].append(took)
    finally:
        setattr(torch._dynamo.config, limit, old_limit)
        torch._dynamo.reset()
    return out


def run_case(case: StepCase, device: str, compiled: bool = True) -> dict[str, Any]:
    """Interleaved per-step times, set-up and prefill, and whole-call times, per setting."""
    lm, prompts, settings = _setup(case, device)
    settings[FLOOR] = settings["one vector"]
    inter = _interleaved(case, lm, prompts, settings)
    e2e = _end_to_end(case, lm, prompts, settings)
    med = statistics.median
    n = case.new_tokens
    step0, pre0 = med(inter["steps"]["plain"]), med(inter["prefill"]["plain"])
    rows: dict[str, Any] = {}
    for k in settings:
        step, pre = med(inter["steps"][k]), med(inter["prefill"][k])
        setup = med(inter["setup"][k]) if inter["setup"][k] else 0.0
        # paired: the same step of the same round, every setting within a few ms of the others
        ratio = med([a / b for a, b in zip(inter["steps"][k], inter["steps"]["plain"], strict=True)])
        pre_ratio = med([a / b for a, b in zip(inter["prefill"][k], inter["prefill"]["plain"], strict=True)])
        row = {
            "step_us_median": step * 1e6,
            "step_us_q1_q3": [q * 1e6 for q in statistics.quantiles(inter["steps"][k], n=4)[::2]],
            "step_ratio": ratio,
            "step_ratio_of_medians": step / step0,
            "extra_us_per_step": (ratio - 1) * step0 * 1e6,
            "prefill_ms_median": pre * 1e3,
            "prefill_ratio": pre_ratio,
            "setup_ms_median": setup * 1e3,
            "end_to_end_ratio": (setup + pre0 * pre_ratio + n * step0 * ratio) / (pre0 + n * step0),
            "steps_timed": len(inter["steps"][k]),
        }
        if k not in ("plain", FLOOR):
            spent = _hook_time(case, lm, prompts, settings[k])
            row["hook_us_per_step"] = spent * 1e6
            row["hook_share_of_plain_step"] = spent / step0
        if k in e2e:
            row["generate_s_min"] = min(e2e[k])
            row["generate_s_median"] = med(e2e[k])
            row["generate_ratio_min"] = min(e2e[k]) / min(e2e["plain"])
            row["generate_ratio_median"] = med(e2e[k]) / med(e2e["plain"])
        rows[k] = row
    res = {"case": asdict(case), "device": device, "n_layers": lm.n_layers, "settings": rows}
    if compiled:
        comp = _compiled(case, device, prompts, settings)
        res["compiled"] = {
            k: {
                "step_us_median": med(v["steps"]) * 1e6,
                "step_ratio": med([a / b for a, b in zip(v["steps"], comp["plain"]["steps"], strict=True)]),
                "eager_step_ratio": med(v["steps"]) / step0,
                "tokens_equal_eager": v["tokens_equal_eager"],
                "token_agreement": v["token_agreement"],
                "compile_s": v["compile_s"],
                "steps_timed": len(v["steps"]),
            }
            for k, v in comp.items()
        }
    return res


def markdown(res: dict[str, Any]) -> str:
    """The short table."""
    out = [
        "| model | setting | µs/step (median) | step ratio | extra µs/step | in steerlab's hooks µs/step (share) "
        "| set-up ms | end-to-end ratio | target (step) | vs add |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for case in res["cases"]:
        c = case["case"]
        where = (
            f"{c['name']} on {case['device']} (batch {c['batch']}, {c['new_tokens']} tokens, {case['n_layers']} layers)"
        )
        for name, row in case["settings"].items():
            steered = name not in ("plain", FLOOR)
            ok = f"≤ {c['target']:.2f} " + ("met" if row["step_ratio"] <= c["target"] else "MISSED") if steered else ""
            hooks = (
                f"{row['hook_us_per_step']:.0f} ({row['hook_share_of_plain_step']:.2%})"
                if "hook_us_per_step" in row
                else ""
            )
            out.append(
                f"| {where} | {name} | {row['step_us_median']:.0f} | {row['step_ratio']:.3f} "
                f"| {row['extra_us_per_step']:+.0f} | {hooks} | {row['setup_ms_median']:.2f} "
                f"| {row['end_to_end_ratio']:.3f} | {ok} | {_vs_add(case, name)} |"
            )
    compiled = [c for c in res["cases"] if "compiled" in c]
    if compiled:
        out += [
            "",
            "| model | setting (torch.compile, fullgraph, static cache) | µs/step (median) | step ratio "
            "| vs eager plain | tokens equal eager | compile s |",
            "|---|---|---:|---:|---:|---|---:|",
        ]
        for case in compiled:
            for name, row in case["compiled"].items():
                out.append(
                    f"| {case['case']['name']} on {case['device']} | {name} | {row['step_us_median']:.0f} "
                    f"| {row['step_ratio']:.3f} | {row['eager_step_ratio']:.3f} "
                    f"| {'yes' if row['tokens_equal_eager'] else 'no'} ({row['token_agreement']:.1%}) "
                    f"| {row['compile_s']:.0f} |"
                )
    return "\n".join(out)


def _vs_add(case: dict[str, Any], name: str) -> str:
    """An operator setting's step ratio over the plain add's (goal ≤ 1.03), else ``""``."""
    rows = case["settings"]
    if name not in OPERATOR_SETTINGS or ADD not in rows:
        return ""
    over = rows[name]["step_ratio"] / rows[ADD]["step_ratio"]
    return f"{over:.3f} ({'met' if over <= 1.03 else 'MISSED'} ≤ 1.03)"


@contextmanager
def _threads(n: int) -> Iterator[None]:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="stories260K only")
    p.add_argument("--default-only", action="store_true", help="SmolLM2-135M only (no compiled section)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per case (default 12 / 6)")
    p.add_argument("--e2e-rounds", type=int, default=None, help="whole-generate rounds per case (default 5 / 3)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--no-compiled", action="store_true", help="skip the torch.compile section")
    p.add_argument("--out", type=Path, default=RESULTS / "steps.json")
    args = p.parse_args(argv)
    cases = [QUICK] if args.quick else [DEFAULT] if args.default_only else [QUICK, DEFAULT]
    over = {k: v for k, v in (("rounds", args.rounds), ("e2e_rounds", args.e2e_rounds)) if v}
    cases = [StepCase(**{**asdict(c), **over}) for c in cases]
    started = time.time()
    header = result_header(
        "bench_steps",
        started,
        max(c.rounds for c in cases),
        {"cases": [asdict(c) for c in cases], "device": args.device, "threads": args.threads},
        machine_info(),
    )
    with _threads(args.threads):
        # the compiled section runs on the short-step proxy only (compiling the default model takes minutes)
        compiled = not args.no_compiled and not args.default_only
        res = {**header, "cases": [run_case(c, args.device, compiled and c is cases[0]) for c in cases]}
    res["markdown"] = markdown(res)
    write_json(args.out, res)
    print(res["markdown"])
    log(f"wrote {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
