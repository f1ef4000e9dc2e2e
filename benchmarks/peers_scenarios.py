"""The scenarios of ``bench_peers.py``, each a small typed object, registered in :func:`build_scenarios`.

A scenario adds its steps to the tool processes of every round (:meth:`Scenario.steps`: one
process per tool and round runs the steps of all scenarios, so a model is loaded once per round),
then turns what they measured into a :class:`ScenarioResult` (:meth:`Scenario.run`): its part of
the ``table`` (``{tool: {step: summary over rounds}}``), its ratios and, for the load and effect
scenarios, a JSON section of its own. :meth:`Scenario.table` and :meth:`Scenario.notes` write its
markdown.

Example::

    scenarios = select(build_scenarios(cfg), ["extract_persona", "effect"])
    ...  # the rounds: ctx.runs, ctx.owners
    results = [sc.run(ctx) for sc in scenarios]
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from benchlib import log, ratio
from peers_context import (
    PEERS,
    PLAIN_MAIN,
    PLAIN_PEERS,
    REPENG,
    STEERING_VECTORS,
    STEERLAB,
    TOOLS,
    Context,
    EffectSettings,
    GenSettings,
    MixedSettings,
    PeersConfig,
    Round,
    ToolSpec,
    label,
)
from peers_jobs import EffectStep, ExtractStep, GenerateStep, LogitsStep, MixedStep, Step, WorkerJob

Table = dict[str, dict[str, dict[str, Any]]]  # {tool label: {step name: summary}}
BARE_MAIN, BARE_PEERS = PLAIN_MAIN.label, PLAIN_PEERS.label


@dataclass
class ScenarioResult:
    """What a scenario measured: its rows of the tool table, its ratios, its own JSON section."""

    name: str
    table: Table = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    section: dict[str, Any] | None = None  # written to the JSON under ``name`` (load, effect)


@dataclass(frozen=True)
class Target:
    """A limit for ratios whose key ends with ``suffix``: a ceiling, or a ``floor``."""

    suffix: str
    limit: float
    floor: bool = False

    def verdict(self, value: float) -> str:
        ok = value >= self.limit if self.floor else value <= self.limit
        return f" (target {'>=' if self.floor else '<='} {self.limit}: {'ok' if ok else 'MISSED'})"


class Scenario(ABC):
    """One thing compared across the tools. ``needs``: scenarios whose steps this one reads."""

    name: str
    needs: ClassVar[tuple[str, ...]] = ()
    targets: ClassVar[tuple[Target, ...]] = ()

    def steps(self, ctx: Context, tool: ToolSpec, rnd: Round) -> list[Step]:
        """The steps ``tool``'s process runs for this scenario in round ``rnd`` (default: none)."""
        return []

    @abstractmethod
    def run(self, ctx: Context) -> ScenarioResult:
        """Summarise the rounds (``ctx.runs``) and run whatever this scenario runs on its own."""

    def table(self, result: ScenarioResult) -> list[str]:
        """Markdown rows of the tool table (``| tool | scenario | median s | ... |``)."""
        return []

    def ratio_rows(self, result: ScenarioResult) -> list[str]:
        """Markdown rows of the ratio table, each checked against its target."""
        return [f"| {key} | {value:.3f}{self.verdict(key, value)} |" for key, value in result.ratios.items()]

    def verdict(self, key: str, value: float) -> str:
        return next((t.verdict(value) for t in self.targets if key.endswith(t.suffix)), "")

    def notes(self, result: ScenarioResult) -> list[str]:
        """Markdown after the tables (default: none)."""
        return []


# --------------------------------------------------------------------------- summaries
def in_tool_order(table: Table) -> Table:
    order = [t.label for t in TOOLS]
    return dict(sorted(table.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def _finish(s: dict[str, Any]) -> None:
    s["median_s"] = round(statistics.median(s["times_s"]), 4)
    s["min_s"] = round(min(s["times_s"]), 4)


def _add_record(s: dict[str, Any], rec: dict[str, Any]) -> None:
    s["times_s"].append(rec["time_s"])
    s["peak_rss_mb"] = max(s["peak_rss_mb"], rec["peak_rss_mb"] or 0.0)
    if "peak_gpu_mb" in rec:
        s["peak_gpu_mb"] = max(s.get("peak_gpu_mb", 0.0), rec["peak_gpu_mb"])
    s["added_rss_mb"] = max(s["added_rss_mb"], round((rec["peak_rss_mb"] or 0) - (rec["rss_before_mb"] or 0), 1))
    for k in ("n_pairs", "batch_size", "n_prompts", "distinct_outputs"):
        if k in rec:
            s[k] = rec[k]


def summarise_steps(runs: Iterable[dict[str, Any]], names: set[str]) -> Table:
    """``{tool: {step: {times_s, median_s, min_s, peak_rss_mb, added_rss_mb, ...}}}`` over the rounds."""
    table: Table = {}
    for r in runs:
        for name, rec in r["scenarios"].items():
            if name in names:
                s = table.setdefault(label(r["tool"], r["env"]), {}).setdefault(
                    name, {"times_s": [], "peak_rss_mb": 0.0, "added_rss_mb": 0.0}
                )
                _add_record(s, rec)
    for steps in table.values():
        for s in steps.values():
            _finish(s)
    return in_tool_order(table)


def summarise_loads(runs: Iterable[dict[str, Any]]) -> Table:
    """``{tool: {"load": {times_s, median_s, min_s, peak_rss_mb}}}``: each worker's model load."""
    table: Table = {}
    for r in runs:
        s = table.setdefault(label(r["tool"], r["env"]), {}).setdefault("load", {"times_s": [], "peak_rss_mb": 0.0})
        s["times_s"].append(r["load"]["time_s"])
        s["peak_rss_mb"] = max(s["peak_rss_mb"], r["load"]["peak_rss_mb"] or 0.0)
    for steps in table.values():
        _finish(steps["load"])
    return in_tool_order(table)


def table_row(tool: str, step: str, rec: dict[str, Any]) -> str:
    added, gpu_mb = rec.get("added_rss_mb", ""), rec.get("peak_gpu_mb", "")
    return (
        f"| {tool} | {step} | {rec['median_s']:.3f} | {rec['min_s']:.3f} | {rec['peak_rss_mb']:.0f} | {added} "
        f"| {gpu_mb} |"
    )


class _Ratios:
    """Ratios of medians from a table, skipping those whose steps did not run."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.out: dict[str, float] = {}

    def med(self, tool: str, step: str) -> float | None:
        rec = self.table.get(tool, {}).get(step)
        return None if rec is None else float(rec["median_s"])

    def put(self, key: str, a: float | None, b: float | None) -> None:
        if a is not None and b is not None:
            self.out[key] = ratio(a, b)


class TimedScenario(Scenario):
    """A scenario of timed steps: its result is the summary of its steps over the rounds."""

    def run(self, ctx: Context) -> ScenarioResult:
        table = summarise_steps(ctx.runs, {step for step, owner in ctx.owners.items() if owner == self.name})
        return ScenarioResult(self.name, table=table, ratios=self.ratios(table))

    def ratios(self, table: Table) -> dict[str, float]:
        """The headline ratios (of medians) of this scenario's steps."""
        return {}

    def table(self, result: ScenarioResult) -> list[str]:
        return [table_row(tool, step, rec) for tool, steps in result.table.items() for step, rec in steps.items()]


def vector_file(tool: str, method: str = "") -> str:
    """Where a tool's persona vector is saved in the work folder (the effect runs read it)."""
    return f"vec_{tool}{'-' + method if method else ''}.pt"


# --------------------------------------------------------------------------- the scenarios
@dataclass(frozen=True)
class Extraction(TimedScenario):
    """Every tool extracts a vector from the pairs ``texts`` (``"persona"`` or ``"caa"``); the bare
    truncated forward of each environment (the ``plain`` tool) is the limit."""

    name: str
    texts: str
    batch_size: int = 32
    save_vectors: bool = False  # save each tool's vector (the effect's inputs), with steerlab's pca_diff
    no_share_run: bool = False  # also steerlab with share_prefix=False
    first_round_only: bool = False  # a long run: once
    b1_on_cpu: bool = True  # steering-vectors at batch 1 on a CPU too (slow on long texts)
    targets: ClassVar[tuple[Target, ...]] = (
        Target(": steerlab/bare", 1.15),
        Target("fastest peer/steerlab", 2.0, floor=True),
    )

    def _step(
        self, ctx: Context, suffix: str = "", *, batch_size: int | None = None, save: str = "", **kw: Any
    ) -> Step:
        return ExtractStep(
            name=self.name + suffix,
            data=self.texts,
            batch_size=batch_size or self.batch_size,
            save=ctx.path(save) if save and self.save_vectors else None,
            **kw,
        )

    def steps(self, ctx: Context, tool: ToolSpec, rnd: Round) -> list[Step]:
        if self.first_round_only and not rnd.first:
            return []
        if tool == STEERLAB:
            out = [self._step(ctx, save=vector_file("steerlab"))]
            if self.no_share_run:
                out.append(self._step(ctx, "_noshare", share_prefix=False))
            if self.save_vectors:
                out.append(self._step(ctx, "_pca_diff", save=vector_file("steerlab", "pca_diff"), method="pca_diff"))
            return out
        if tool == STEERING_VECTORS:
            b1 = [self._step(ctx, "_b1", batch_size=1)] if self.b1_on_cpu or ctx.cfg.cuda else []
            return [*b1, self._step(ctx, save=vector_file(tool.tool))]
        if tool == REPENG:
            return [self._step(ctx, save=vector_file(tool.tool))]
        return [self._step(ctx)]  # plain: the bare truncated forward, in both environments

    def ratios(self, table: Table) -> dict[str, float]:
        r, sc = _Ratios(table), self.name
        steerlab = r.med("steerlab", sc)
        r.put(f"{sc}: steerlab/bare", steerlab, r.med(BARE_MAIN, sc))
        r.put(f"{sc}: steerlab without prefix sharing/bare", r.med("steerlab", sc + "_noshare"), r.med(BARE_MAIN, sc))
        r.put(f"{sc}: bare transformers 4/5", r.med(BARE_PEERS, sc), r.med(BARE_MAIN, sc))
        times = []
        for key, tool, step in (
            ("steering-vectors", "steering-vectors", sc),
            ("steering-vectors b1", "steering-vectors", sc + "_b1"),
            ("repeng", "repeng", sc),
        ):
            t = r.med(tool, step)
            r.put(f"{sc}: {key}/bare", t, r.med(BARE_PEERS, sc))  # against the bare forward of its own env
            r.put(f"{sc}: {key}/steerlab", t, steerlab)
            if t is not None:
                times.append(t)
        if times:
            r.put(f"{sc}: fastest peer/steerlab", min(times), steerlab)
        return r.out


@dataclass(frozen=True)
class Generation(TimedScenario):
    """Steered generation (the speed vector on every layer) vs plain ``generate`` of each environment."""

    name: str
    settings: GenSettings
    targets: ClassVar[tuple[Target, ...]] = (Target("steered/plain steerlab", 1.03),)

    def steps(self, ctx: Context, tool: ToolSpec, rnd: Round) -> list[Step]:
        g = self.settings
        steered = tool.tool != "plain"
        return [GenerateStep(name=self.name, steered=steered, new_tokens=g.new_tokens, batch_size=g.batch_size)]

    def ratios(self, table: Table) -> dict[str, float]:
        r, sc = _Ratios(table), self.name
        r.put(f"{sc}: steered/plain steerlab", r.med("steerlab", sc), r.med(BARE_MAIN, sc))
        for peer in PEERS:
            r.put(f"{sc}: steered/plain {peer.tool}", r.med(peer.label, sc), r.med(BARE_PEERS, sc))
            r.put(f"{sc}: {peer.tool}/steerlab", r.med(peer.label, sc), r.med("steerlab", sc))
        return r.out


@dataclass(frozen=True)
class MixedBatch(TimedScenario):
    """Every prompt with its own vector: steerlab in one call (and, for reference, one call per
    prompt: ``separate``); the peers one call per prompt; plain one unsteered batch."""

    name: str
    settings: MixedSettings
    targets: ClassVar[tuple[Target, ...]] = (Target("steerlab one call/unsteered batch", 1.15),)

    def steps(self, ctx: Context, tool: ToolSpec, rnd: Round) -> list[Step]:
        n = self.settings.new_tokens
        out: list[Step] = [MixedStep(name=self.name, new_tokens=n)]
        if tool == STEERLAB:
            out.append(MixedStep(name="separate", new_tokens=n, separate=True))
        return out

    def ratios(self, table: Table) -> dict[str, float]:
        r, sc = _Ratios(table), self.name
        one_call = r.med("steerlab", sc)
        r.put(f"{sc}: steerlab one call/unsteered batch", one_call, r.med(BARE_MAIN, sc))
        r.put(f"{sc}: steerlab separate calls/one call", r.med("steerlab", "separate"), one_call)
        for peer in PEERS:
            r.put(f"{sc}: {peer.tool} separate calls/steerlab one call", r.med(peer.label, sc), one_call)
        return r.out


@dataclass(frozen=True)
class Load(Scenario):
    """Loading the default model in fresh processes: steerlab cold (GGUF conversion into an empty
    cache), and transformers 4 from the GGUF file itself (what a peer's user does), ``reps`` times.
    (The warm loads are every round's worker loads: the ``load`` rows of each tool.)"""

    name: str = "load"

    def _job(
        self,
        ctx: Context,
        tool: ToolSpec,
        model: str | None = None,
        model_dir: str | None = None,
        gguf: str | None = None,
    ) -> WorkerJob:
        """A job that only loads: steerlab's ``model``, or transformers' ``model_dir`` (with a ``gguf`` file)."""
        cfg = ctx.cfg
        return WorkerJob(
            tool=tool.tool,
            env=tool.env,
            data=ctx.data,
            layers=cfg.layers,
            threads=cfg.threads,
            model=model,
            model_dir=model_dir,
            gguf_file=gguf,
        )

    def run(self, ctx: Context) -> ScenarioResult:
        import steerlab.models.load as sm

        gguf = sm.default_gguf_path()
        cache = tempfile.mkdtemp(prefix="steerlab-cold-cache.")
        try:
            log("load: steerlab cold (GGUF conversion into an empty cache)")
            r = ctx.spawn(self._job(ctx, STEERLAB, model="default"), env={"STEERLAB_CACHE": cache})
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        cold = {"times_s": [r["load"]["time_s"]], "peak_rss_mb": r["load"]["peak_rss_mb"]}
        section: dict[str, Any] = {"steerlab cold": cold}
        loads = []
        for i in range(ctx.reps):
            log(f"load: transformers 4 from the GGUF file ({i + 1}/{ctx.reps})")
            job = self._job(ctx, PLAIN_PEERS, model_dir=str(gguf.parent), gguf=gguf.name)
            loads.append(ctx.spawn(job)["load"])
        section["transformers 4 GGUF"] = {
            "times_s": [x["time_s"] for x in loads],
            "peak_rss_mb": max(x["peak_rss_mb"] for x in loads),
        }
        return ScenarioResult(self.name, section=section)

    def table(self, result: ScenarioResult) -> list[str]:
        return [
            f"| {name} | load | {statistics.median(rec['times_s']):.3f} | {min(rec['times_s']):.3f} | "
            f"{rec['peak_rss_mb']:.0f} |  |  |"
            for name, rec in (result.section or {}).items()
        ]


@dataclass(frozen=True)
class Effect(Scenario):
    """Each tool's own persona vector, rescaled per layer to ``c × ‖steerlab mean_diff‖``, continues
    held-out openings (last round); the parent scores VADER sentiment and the continuation
    perplexity under the unsteered model. Also checks that both environments' models give the same
    logits."""

    name: str
    settings: EffectSettings
    needs: ClassVar[tuple[str, ...]] = ("extract_persona",)  # it saves the vectors

    def _step(self, vector: str | None, norms: dict[str, dict[str, float]], suffix: str = "") -> Step:
        e = self.settings
        return EffectStep(
            name=self.name + suffix, vector=vector, norms=norms, new_tokens=e.new_tokens, batch_size=e.batch_size
        )

    def steps(self, ctx: Context, tool: ToolSpec, rnd: Round) -> list[Step]:
        if not rnd.last:
            return []
        norms = {
            f"{c:g}": {str(k): c * n for k, n in ctx.prepared.reference_norms.items()}
            for c in self.settings.coefficients
        }
        if tool == STEERLAB:
            return [
                self._step(ctx.path(vector_file("steerlab")), norms),
                self._step(ctx.path(vector_file("steerlab", "pca_diff")), norms, "_pca_diff"),
            ]
        if tool.tool == "plain":
            logits = LogitsStep(name="logits", save=ctx.path(f"logits_{tool.env}.pt"))
            return [logits, self._step(None, {"none": {}})] if tool == PLAIN_MAIN else [logits]
        return [self._step(ctx.path(vector_file(tool.tool)), norms)]

    def run(self, ctx: Context) -> ScenarioResult:
        if not any(n.startswith(self.name) for r in ctx.runs for n in r["scenarios"]):
            return ScenarioResult(self.name)
        log("scoring the effect runs")
        return ScenarioResult(self.name, section=score_effect(ctx, self.name))

    def notes(self, result: ScenarioResult) -> list[str]:
        eff, e = result.section, self.settings
        if not eff:
            return []
        lines = [
            "",
            f"Effect at matched added norm (c × ‖steerlab mean_diff‖ per layer), "
            f"{e.n_prompts} held-out openings, {e.new_tokens} greedy tokens:",
            "",
            "| tool | c | positive share | negative share | mean compound | perplexity | × unsteered |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for row in eff["rows"]:
            lines.append(
                f"| {row['tool']} | {row['coefficient']} | {row['positive_share']:.2f} | "
                f"{row['negative_share']:.2f} | {row['mean_compound']:+.3f} | {row['perplexity']:.2f} | "
                f"{row['perplexity_ratio']:.2f} |"
            )
        for peer, by_method in eff["cosine_to_steerlab"].items():
            lines.append(
                f"Cosine of {peer}'s vector to steerlab's, per layer: "
                + "; ".join(
                    f"{m} {min(v.values()):.3f}–{max(v.values()):.3f} (|cos| ≥ {min(abs(c) for c in v.values()):.3f})"
                    for m, v in by_method.items()
                )
            )
        if "max_logit_diff_tf5_vs_tf4" in eff:
            lines.append(
                f"Same model in both environments: max |logit difference| {eff['max_logit_diff_tf5_vs_tf4']:.2e}"
            )
        return lines


def _cosines(work: Path) -> dict[str, dict[str, dict[str, float]]]:
    """Per peer and steerlab method: the cosine of the peer's vector to steerlab's, per layer."""
    import torch

    refs = {"mean_diff": torch.load(work / vector_file("steerlab"))}
    if (work / vector_file("steerlab", "pca_diff")).is_file():
        refs["pca_diff"] = torch.load(work / vector_file("steerlab", "pca_diff"))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for peer in PEERS:
        if (work / vector_file(peer.tool)).is_file():
            own = torch.load(work / vector_file(peer.tool))
            out[peer.tool] = {
                method: {
                    str(k): round(float(torch.nn.functional.cosine_similarity(own[k], ref[k], dim=0)), 4) for k in ref
                }
                for method, ref in refs.items()
            }
    return out


def score_effect(ctx: Context, name: str) -> dict[str, Any]:
    """VADER positive share and continuation perplexity (unsteered model) of each tool's texts."""
    import torch

    import steerlab
    from steerlab.evaluate.likelihood import continuation_nll, pooled_perplexity
    from steerlab.evaluate.scorers import VaderScorer

    cfg = ctx.cfg
    lm = steerlab.load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    prompts = ctx.texts().effect_prompts
    vader = VaderScorer()
    out: dict[str, Any] = {"cosine_to_steerlab": _cosines(ctx.work), "rows": []}
    effect_runs = [(r, step, eff) for r in ctx.runs for step, eff in r["scenarios"].items() if step.startswith(name)]
    for run, step, eff in effect_runs:
        tool = label(run["tool"], run["env"]) + (" pca_diff" if step.endswith("pca_diff") else "")
        for lab, texts in eff["texts"].items():
            scores = vader.score(texts)
            nll = continuation_nll(lm, prompts, texts)
            out["rows"].append(
                {
                    "tool": "unsteered" if run["tool"] == "plain" else tool,
                    "coefficient": lab,
                    "positive_share": round(sum(s.label == "positive" for s in scores) / len(scores), 4),
                    "negative_share": round(sum(s.label == "negative" for s in scores) / len(scores), 4),
                    "mean_compound": round(statistics.fmean(s.compound for s in scores), 4),
                    "perplexity": round(pooled_perplexity(nll), 3),
                    "sample": texts[0],
                }
            )
    base = next((row for row in out["rows"] if row["tool"] == "unsteered"), None)
    for row in out["rows"]:
        row["perplexity_ratio"] = ratio(row["perplexity"], base["perplexity"]) if base else None
    a, b = ctx.work / "logits_steerlab.pt", ctx.work / "logits_peers.pt"
    if a.is_file() and b.is_file():
        out["max_logit_diff_tf5_vs_tf4"] = round(float((torch.load(a) - torch.load(b)).abs().max()), 6)
    return out


# --------------------------------------------------------------------------- the registry
def build_scenarios(cfg: PeersConfig) -> list[Scenario]:
    """Every scenario ``cfg`` enables, in the order their steps run in a worker process."""
    candidates: list[Scenario | None] = [
        Extraction("extract_persona", "persona", save_vectors=True, no_share_run=True),
        Extraction("extract_caa", "caa", first_round_only=True, b1_on_cpu=False) if cfg.caa_pairs else None,
        Generation("generate", cfg.gen),
        MixedBatch("mixed", cfg.mixed),
        Load() if cfg.load else None,
        Effect("effect", cfg.effect) if cfg.effect else None,
    ]
    return [s for s in candidates if s is not None]


def select(scenarios: list[Scenario], only: Iterable[str] | None) -> list[Scenario]:
    """The scenarios whose names start with one of ``only`` (all without it), with those they need."""
    if not only:
        return scenarios
    prefixes = list(only)
    unknown = [o for o in prefixes if not any(s.name.startswith(o) for s in scenarios)]
    if unknown:
        names = ", ".join(s.name for s in scenarios)
        raise ValueError(f"--only {' '.join(unknown)}: no such scenario in this run (choose from {names})")
    chosen = {s.name for s in scenarios if any(s.name.startswith(o) for o in prefixes)}
    chosen |= {n for s in scenarios if s.name in chosen for n in s.needs}
    return [s for s in scenarios if s.name in chosen]
