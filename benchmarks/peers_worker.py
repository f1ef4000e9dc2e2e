"""One tool's side of ``bench_peers.py``: load the model, run the job's steps, write JSON.

Runs in steerlab's environment (tools ``steerlab`` and ``plain``) or in the peers' environment
(tools ``steering-vectors``, ``repeng`` and ``plain``); it imports only what its tool needs, so the
peers' environment needs no steerlab. The parent (``bench_peers.py``) prepares the texts and the
vectors, so every tool sees exactly the same inputs; the job is a :class:`peers_jobs.WorkerJob`.

Every measured call is preceded by an untimed warm-up on a small slice of the same work, and is
measured with :func:`benchlib.measure` (wall time, peak RSS while it ran).

Example (what the parent runs)::

    .venv-peers/bin/python benchmarks/peers_worker.py --job job.json --result out.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import benchlib
from peers_jobs import EffectStep, ExtractStep, GenerateStep, LogitsStep, MixedStep, Pair, Step, Texts, WorkerJob

Pairs = list[Pair]
Vec = dict[int, Any]  # {layer: torch.Tensor [d_model]}


class _Stop(Exception):
    """Raised by the bare-forward hook after the deepest layer."""


# --------------------------------------------------------------------------- tools
class Tool:
    """A model plus one library's way to extract vectors and generate under steering."""

    name = "tool"

    def __init__(self, job: WorkerJob) -> None:
        self.job = job

    def extract(self, pairs: Pairs, layers: list[int], batch_size: int) -> Vec:
        raise NotImplementedError

    def generate(self, prompts: list[str], vec: Vec | None, new_tokens: int, batch_size: int) -> list[str]:
        raise NotImplementedError

    def separate(self, prompts: list[str], vecs: list[Vec], new_tokens: int) -> list[str]:
        """One steered call per prompt (what a tool without per-row steering must do)."""
        out: list[str] = []
        for p, v in zip(prompts, vecs):
            out += self.generate([p], v, new_tokens, 1)
        return out

    def mixed(self, prompts: list[str], vecs: list[Vec], new_tokens: int) -> list[str]:
        """One prompt per vector, as this tool can: by default :meth:`separate` calls."""
        return self.separate(prompts, vecs, new_tokens)

    def last_logits(self, text: str) -> Any:
        """Last-token logits of ``text`` (the same-model check; plain tools only)."""
        raise NotImplementedError


class HFTool(Tool):
    """Common part of the tools that hold a plain ``transformers`` model."""

    def __init__(self, job: WorkerJob) -> None:
        super().__init__(job)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if job.model_dir is None:
            raise ValueError(f"a {job.tool} job needs model_dir (a checkpoint folder)")
        self.torch = torch
        self.device = torch.device(job.device)
        path, gguf = job.model_dir, job.gguf_file
        kw = {"gguf_file": gguf} if gguf else {}
        dtype = getattr(torch, job.dtype)
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
        self.model = model.to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path, **kw)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def blocks(self) -> Any:
        return self.model.model.layers

    def encode(self, texts: Sequence[str], side: str) -> dict[str, Any]:
        self.tokenizer.padding_side = side
        enc = self.tokenizer(list(texts), return_tensors="pt", padding=True)
        return {k: v.to(self.device) for k, v in enc.items()}

    def plain_generate(self, prompts: list[str], new_tokens: int, batch_size: int) -> list[str]:
        """``model.generate`` on left-padded batches, exactly ``new_tokens`` greedy tokens each."""
        out: list[str] = []
        for s in range(0, len(prompts), batch_size):
            enc = self.encode(prompts[s : s + batch_size], "left")
            with self.torch.inference_mode():
                ids = self.model.generate(
                    **enc,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            n = enc["input_ids"].shape[1]
            out += self.tokenizer.batch_decode(ids[:, n:], skip_special_tokens=True)
        return out

    def last_logits(self, text: str) -> Any:
        enc = self.encode([text], "right")
        with self.torch.inference_mode():
            return self.model(**enc).logits[0, -1].float().cpu()


class Plain(HFTool):
    """No steering library: the bare truncated forward (the limit for extraction) and plain
    ``generate`` (the baseline for steered generation)."""

    name = "plain"

    def extract(self, pairs: Pairs, layers: list[int], batch_size: int) -> Vec:
        """The minimal work of extraction: every text once, length-sorted batches, a hook that
        stops the forward after the deepest layer. Returns nothing (no vector is built)."""
        torch = self.torch
        texts = [t for p in pairs for t in p]
        self.tokenizer.padding_side = "right"
        ids = self.tokenizer(texts)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        pad = self.tokenizer.pad_token_id

        def stop(*_: Any) -> None:
            raise _Stop

        handle = self.blocks[max(layers)].register_forward_hook(stop)
        try:
            with torch.inference_mode():
                for s in range(0, len(order), batch_size):
                    rows = [ids[i] for i in order[s : s + batch_size]]
                    width = max(len(r) for r in rows)
                    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.device)
                    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)
                    try:
                        self.model(input_ids=input_ids, attention_mask=mask, use_cache=False)
                    except _Stop:
                        pass
        finally:
            handle.remove()
        return {}

    def generate(self, prompts: list[str], vec: Vec | None, new_tokens: int, batch_size: int) -> list[str]:
        if vec:
            raise ValueError("the plain tool does not steer")
        return self.plain_generate(prompts, new_tokens, batch_size)

    def mixed(self, prompts: list[str], vecs: list[Vec], new_tokens: int) -> list[str]:
        """The baseline of the mixed scenario: one unsteered batch of the same prompts."""
        return self.plain_generate(prompts, new_tokens, len(prompts))


class SteeringVectors(HFTool):
    """``steering-vectors`` (David Chanin): ``train_steering_vector`` and ``SteeringVector.apply``."""

    name = "steering-vectors"

    def extract(self, pairs: Pairs, layers: list[int], batch_size: int) -> Vec:
        from steering_vectors import train_steering_vector

        sv = train_steering_vector(
            self.model,
            self.tokenizer,
            pairs,
            layers=layers,
            read_token_index=-1,
            batch_size=batch_size,
            show_progress=False,
        )
        return {int(k): v.float() for k, v in sv.layer_activations.items()}

    def generate(self, prompts: list[str], vec: Vec | None, new_tokens: int, batch_size: int) -> list[str]:
        from steering_vectors import SteeringVector

        if not vec:
            return self.plain_generate(prompts, new_tokens, batch_size)
        vec = {k: v.to(self.device, self.model.dtype) for k, v in vec.items()}
        with SteeringVector(vec, "decoder_block").apply(self.model, multiplier=1.0, min_token_index=0):
            return self.plain_generate(prompts, new_tokens, batch_size)


class Repeng(HFTool):
    """``repeng`` (Theia Vogel): ``ControlVector.train`` (PCA of differences) and ``ControlModel``."""

    name = "repeng"

    def __init__(self, job: WorkerJob) -> None:
        super().__init__(job)
        self.control: Any = None

    def extract(self, pairs: Pairs, layers: list[int], batch_size: int) -> Vec:
        from repeng import ControlVector, DatasetEntry

        if self.control is not None:
            raise RuntimeError("repeng extracts before its ControlModel wraps the blocks")
        dataset = [DatasetEntry(positive=p, negative=n) for p, n in pairs]
        cv = ControlVector.train(
            self.model, self.tokenizer, dataset, hidden_layers=layers, batch_size=batch_size, method="pca_diff"
        )
        return {int(k): self.torch.from_numpy(v).float() for k, v in cv.directions.items()}

    def generate(self, prompts: list[str], vec: Vec | None, new_tokens: int, batch_size: int) -> list[str]:
        from repeng import ControlModel, ControlVector

        if not vec:
            if self.control is not None:
                self.control.reset()
            return self.plain_generate(prompts, new_tokens, batch_size)
        if self.control is None:
            # ControlModel replaces the blocks by wrappers in place, on the layers of the first
            # vector; every vector in a run steers the same layers.
            self.control = ControlModel(self.model, sorted(vec))
        cv = ControlVector(model_type=self.model.config.model_type, directions={k: v.numpy() for k, v in vec.items()})
        self.control.set_control(cv, coeff=1.0)
        try:
            return self.plain_generate(prompts, new_tokens, batch_size)
        finally:
            self.control.reset()


class Steerlab(Tool):
    """steerlab: ``extract(method="mean_diff")``, ``generate`` with one steering per row."""

    name = "steerlab"

    def __init__(self, job: WorkerJob) -> None:
        super().__init__(job)
        import steerlab

        if job.model is None:
            raise ValueError("a steerlab job needs model (a load_model name or folder)")
        self.sl = steerlab
        self.lm = steerlab.load_model(job.model, dtype=job.dtype, device=job.device)

    def _vector(self, vec: Vec) -> Any:
        lm = self.lm
        return self.sl.SteeringVector(
            directions=vec, model_id=lm.model_id, d_model=lm.d_model, n_layers=lm.n_layers, method="bench"
        )

    def extract(
        self, pairs: Pairs, layers: list[int], batch_size: int, share_prefix: bool = True, method: str = "mean_diff"
    ) -> Vec:
        cps = [self.sl.ContrastPair(p, n) for p, n in pairs]
        v = self.sl.extract(
            self.lm,
            cps,
            method=method,
            layers=layers,
            batch_size=batch_size,
            progress=False,
            share_prefix=share_prefix,
        )
        return dict(v.directions)

    def _steering(self, vec: Vec | None) -> Any:
        return None if not vec else self.sl.Steering(self._vector(vec), 1.0)

    def generate(self, prompts: list[str], vec: Vec | None, new_tokens: int, batch_size: int) -> list[str]:
        return self.sl.generate(
            self.lm,
            prompts,
            steering=self._steering(vec),
            max_new_tokens=new_tokens,
            batch_size=batch_size,
            min_new_tokens=new_tokens,
            do_sample=False,
        )

    def mixed(self, prompts: list[str], vecs: list[Vec], new_tokens: int) -> list[str]:
        """All rows in one call, each with its own steering."""
        return self.sl.generate(
            self.lm,
            prompts,
            steering=[self._steering(v) for v in vecs],
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
        )


TOOLS: dict[str, type[Tool]] = {
    "plain": Plain,
    "steerlab": Steerlab,
    "steering-vectors": SteeringVectors,
    "repeng": Repeng,
}


# --------------------------------------------------------------------------- scenarios
def _timed(warm: Callable[[], Any], fn: Callable[[], Any]) -> tuple[dict[str, Any], Any]:
    """Untimed warm-up call, then one measured call; returns the record and ``fn``'s result.

    On a GPU the call ends with ``torch.cuda.synchronize()`` (inside the timing) and the record
    also holds ``peak_gpu_mb``, the most GPU memory torch allocated during the call.
    """
    import torch

    cuda = torch.cuda.is_available()

    def synced() -> Any:
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        return out

    t0 = time.perf_counter()
    warm()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rec = benchlib.measure(synced)
    if cuda:
        rec["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    rec["warmup_s"] = round(time.perf_counter() - t0 - rec["time_s"], 4)
    return rec, rec.pop("result")


def _load_vec(path: str) -> Vec:
    import torch

    return {int(k): v for k, v in torch.load(path).items()}


def _scaled(vec: Vec, norms: dict[int, float]) -> Vec:
    """``vec`` with each layer rescaled to the given norm (the matched-norm comparison)."""
    return {k: v * (float(norms[k]) / float(v.norm())) for k, v in vec.items()}


@dataclass(frozen=True)
class Inputs:
    """What every step of a job reads: the texts, the layers, the parent's vectors."""

    texts: Texts
    layers: list[int]
    job: WorkerJob

    def speed_vector(self) -> Vec:
        if self.job.vectors is None:
            raise ValueError("this job has no vectors (the parent sets them for generation steps)")
        return _load_vec(self.job.vectors.speed)

    def mixed_vectors(self) -> list[Vec]:
        if self.job.vectors is None:
            raise ValueError("this job has no vectors (the parent sets them for mixed steps)")
        return [_load_vec(p) for p in self.job.vectors.mixed]


def _extract(tool: Tool, step: ExtractStep, inp: Inputs) -> dict[str, Any]:
    import torch

    pairs = inp.texts.pairs(step.data)
    bs, layers = step.batch_size, inp.layers
    head = pairs[: min(len(pairs), max(bs, 4))]
    kw = step.options()
    rec, vec = _timed(partial(tool.extract, head, layers, bs, **kw), partial(tool.extract, pairs, layers, bs, **kw))
    if vec and step.save:
        torch.save({int(k): v.detach().cpu().float() for k, v in vec.items()}, step.save)
    rec.update(n_pairs=len(pairs), batch_size=bs)
    return rec


def _generate(tool: Tool, step: GenerateStep, inp: Inputs) -> dict[str, Any]:
    prompts = inp.texts.gen_prompts
    vec = inp.speed_vector() if step.steered else None
    rec, texts = _timed(
        partial(tool.generate, prompts[:2], vec, 2, 2),
        partial(tool.generate, prompts, vec, step.new_tokens, step.batch_size),
    )
    rec.update(n_prompts=len(prompts), sample=texts[0])
    return rec


def _mixed(tool: Tool, step: MixedStep, inp: Inputs) -> dict[str, Any]:
    prompts = inp.texts.mixed_prompts
    vecs = inp.mixed_vectors()
    fn = tool.separate if step.separate else tool.mixed
    rec, texts = _timed(partial(fn, prompts[:2], vecs[:2], 2), partial(fn, prompts, vecs, step.new_tokens))
    rec.update(n_prompts=len(prompts), distinct_outputs=len(set(texts)))
    return rec


def _effect(tool: Tool, step: EffectStep, inp: Inputs) -> dict[str, Any]:
    """Continuations of the held-out openings with the tool's own vector at each matched norm."""
    prompts = inp.texts.effect_prompts
    own = _load_vec(step.vector) if step.vector else None
    texts: dict[str, list[str]] = {}
    t0 = time.perf_counter()
    for lab, norms in step.norms.items():
        vec = _scaled(own, {int(k): v for k, v in norms.items()}) if own and norms else None
        texts[lab] = tool.generate(prompts, vec, step.new_tokens, step.batch_size)
    return {"time_s": round(time.perf_counter() - t0, 3), "texts": texts}


def _logits(tool: Tool, step: LogitsStep, inp: Inputs) -> dict[str, Any]:
    import torch

    torch.save(tool.last_logits(inp.texts.check_text), step.save)
    return {}


def run_step(tool: Tool, step: Step, inp: Inputs) -> dict[str, Any]:
    """Run one step; its record (time, memory, sizes) for the result's ``scenarios``."""
    match step:
        case ExtractStep():
            return _extract(tool, step, inp)
        case GenerateStep():
            return _generate(tool, step, inp)
        case MixedStep():
            return _mixed(tool, step, inp)
        case EffectStep():
            return _effect(tool, step, inp)
        case LogitsStep():
            return _logits(tool, step, inp)


def run_job(job: WorkerJob) -> dict[str, Any]:
    """Load the tool's model (measured) and run ``job.steps`` in order."""
    import torch

    if job.threads:
        torch.set_num_threads(job.threads)
    out: dict[str, Any] = {"tool": job.tool, "env": job.env, "pid": os.getpid()}
    out["versions"] = {
        p: benchlib.version(p)
        for p in ("torch", "transformers", "steerlab", "steering-vectors", "repeng", "numpy", "scikit-learn")
    }
    out["rss_start_mb"] = benchlib.rss_mb()
    load = benchlib.measure(lambda: TOOLS[job.tool](job))
    tool: Tool = load.pop("result")
    out["load"] = load
    out["torch_threads"] = torch.get_num_threads()
    inp = Inputs(Texts.from_json(Path(job.data).read_text()), list(range(job.layers[0], job.layers[1] + 1)), job)
    out["scenarios"] = {step.name: run_step(tool, step, inp) for step in job.steps}
    out["peak_rss_mb"] = benchlib.maxrss_mb()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="one tool's side of bench_peers.py")
    ap.add_argument("--job", type=Path, required=True)
    ap.add_argument("--result", type=Path, required=True)
    args = ap.parse_args()
    os.environ.setdefault("STEERLAB_QUIET", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    out = run_job(WorkerJob.from_json(args.job.read_text()))
    args.result.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
