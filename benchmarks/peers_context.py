"""The shared state of one ``bench_peers.py`` run: its configuration, the prepared inputs, the
tool processes and how to start a worker.

Example::

    ctx = Context(cfg=cfg, work=work, prepared=prepared, pythons={"steerlab": ..., "peers": ...}, reps=3)
    result = ctx.spawn(ctx.job(STEERLAB, steps))   # one fresh worker process
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import benchlib
from peers_jobs import Step, Texts, VectorPaths, WorkerJob

WORKER = Path(__file__).resolve().with_name("peers_worker.py")


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class GenSettings:
    """Steered generation: prompts, batch size, exactly ``new_tokens`` greedy tokens each."""

    n_prompts: int
    batch_size: int
    new_tokens: int


@dataclass(frozen=True)
class MixedSettings:
    """The mixed batch: ``n_prompts`` prompts, each with its own vector."""

    n_prompts: int
    new_tokens: int


@dataclass(frozen=True)
class EffectSettings:
    """The effect at matched norm: held-out prompts, tokens, and the norm multiples ``c``."""

    n_prompts: int
    new_tokens: int
    batch_size: int
    coefficients: tuple[float, ...]


@dataclass(frozen=True, kw_only=True)
class PeersConfig:
    """Everything one run is set to (written to the JSON as ``config``)."""

    mode: str
    model: str
    layers: tuple[int, int]
    persona_pairs: int
    caa_pairs: int
    gen: GenSettings
    mixed: MixedSettings
    speed_coefficient: float
    effect: EffectSettings | None
    load: bool
    threads: int | None
    only: tuple[str, ...] | None = None
    device: str = "cpu"
    dtype: str = "float32"
    random_weights: bool = False
    model_source: str | None = None  # with random weights: the checkpoint whose config was used

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def to_dict(self) -> dict[str, Any]:
        """The JSON's ``config`` (``model_source`` only with random weights)."""
        d = asdict(self)
        if d["model_source"] is None:
            del d["model_source"]
        return d


# --------------------------------------------------------------------------- tools and rounds
@dataclass(frozen=True)
class ToolSpec:
    """One process per round: a tool (a class of ``peers_worker.py``) in an environment."""

    tool: str
    env: str  # "steerlab" or "peers"

    @property
    def label(self) -> str:
        return label(self.tool, self.env)


def label(tool: str, env: str) -> str:
    """The name of a tool's row in the tables (the plain tool runs in both environments)."""
    return f"plain ({env} env)" if tool == "plain" else tool


STEERLAB = ToolSpec("steerlab", "steerlab")
PLAIN_MAIN = ToolSpec("plain", "steerlab")
PLAIN_PEERS = ToolSpec("plain", "peers")
STEERING_VECTORS = ToolSpec("steering-vectors", "peers")
REPENG = ToolSpec("repeng", "peers")
TOOLS = (STEERLAB, PLAIN_MAIN, PLAIN_PEERS, STEERING_VECTORS, REPENG)
PEERS = (STEERING_VECTORS, REPENG)


@dataclass(frozen=True)
class Round:
    """Round ``index`` of ``count`` (the CAA scale run is in the first, the effect in the last)."""

    index: int
    count: int

    @property
    def first(self) -> bool:
        return self.index == 0

    @property
    def last(self) -> bool:
        return self.index == self.count - 1


# --------------------------------------------------------------------------- context
@dataclass(frozen=True, kw_only=True)
class Prepared:
    """What the parent built before the rounds (texts in ``data.json``, vectors in ``.pt`` files)."""

    model_id: str
    n_layers: int
    d_model: int
    model_dir: str
    peer_model_dir: str
    tokens: dict[str, int]
    reference_norms: dict[int, float]  # ‖steerlab mean_diff‖ per layer (the matched norms)
    vectors: VectorPaths

    def summary(self) -> dict[str, Any]:
        """The JSON's ``prepare`` section (the vector paths left out)."""
        d = asdict(self)
        del d["vectors"]
        return d


@dataclass(kw_only=True)
class Context:
    """A run's shared state, handed to every scenario: configuration, work folder, prepared
    inputs, the interpreters of both environments, and the worker results of the rounds."""

    cfg: PeersConfig
    work: Path
    prepared: Prepared
    pythons: dict[str, Path]  # environment -> interpreter
    reps: int
    runs: list[dict[str, Any]] = field(default_factory=list)
    owners: dict[str, str] = field(default_factory=dict)  # step name -> scenario name

    @property
    def data(self) -> str:
        return str(self.work / "data.json")

    def texts(self) -> Texts:
        return Texts.from_json(Path(self.data).read_text())

    def path(self, name: str) -> str:
        """A file in the work folder (saved vectors, logits)."""
        return str(self.work / name)

    def job(self, tool: ToolSpec, steps: list[Step]) -> WorkerJob:
        """The job of ``tool`` in a round: its model, the shared inputs and ``steps``."""
        model_dir = self.prepared.model_dir if tool.env == "steerlab" else self.prepared.peer_model_dir
        return WorkerJob(
            tool=tool.tool,
            env=tool.env,
            data=self.data,
            layers=self.cfg.layers,
            threads=self.cfg.threads,
            device=self.cfg.device,
            dtype=self.cfg.dtype,
            model=self.cfg.model if tool.tool == "steerlab" else None,
            model_dir=None if tool.tool == "steerlab" else model_dir,
            vectors=self.prepared.vectors,
            steps=tuple(steps),
        )

    def spawn(self, job: WorkerJob, env: dict[str, str] | None = None) -> dict[str, Any]:
        """Run ``job`` in a fresh ``peers_worker.py`` process of its environment; its result."""
        fd, name = tempfile.mkstemp(prefix="job.", suffix=".json", dir=self.work)
        os.close(fd)
        job_path, result = Path(name), Path(name).with_suffix(".out.json")
        job_path.write_text(job.to_json())
        child_env = dict(
            os.environ,
            STEERLAB_QUIET="1",
            TRANSFORMERS_VERBOSITY="error",
            TQDM_DISABLE="1",
            PYTHONPATH=os.pathsep.join(p for p in (str(WORKER.parent), os.environ.get("PYTHONPATH")) if p),
            **(env or {}),
        )
        cmd = [str(self.pythons[job.env]), str(WORKER), "--job", str(job_path), "--result", str(result)]
        return benchlib.run_worker(cmd, result, f"{job.tool} ({job.env})", child_env)
