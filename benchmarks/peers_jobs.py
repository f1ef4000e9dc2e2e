"""What ``bench_peers.py`` hands a worker process: typed jobs and inputs, serialised to JSON.

Standard library only: ``peers_worker.py`` imports it in the peers' environment, which has no
steerlab. A :class:`WorkerJob` says which tool to load and which steps to measure, in order; the
:class:`Texts` (``data.json``) are rendered once by the parent so every tool sees the same inputs.

Example::

    job = WorkerJob(tool="plain", env="peers", data="data.json", layers=(1, 3), model_dir="model",
                    steps=(GenerateStep(name="generate", steered=False, new_tokens=8, batch_size=4),))
    assert WorkerJob.from_json(job.to_json()) == job
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

Pair = tuple[str, str]


@dataclass(frozen=True, kw_only=True)
class ExtractStep:
    """Extract a vector from the pairs ``data`` (``"persona"`` or ``"caa"``), timed; ``save`` it
    (a ``.pt`` file) for the effect runs. ``share_prefix``/``method``: steerlab only."""

    kind: ClassVar[str] = "extract"
    name: str
    data: str
    batch_size: int
    save: str | None = None
    share_prefix: bool | None = None
    method: str | None = None

    def options(self) -> dict[str, Any]:
        """The steerlab-only options that are set (keyword arguments of ``Tool.extract``)."""
        return {k: v for k, v in (("share_prefix", self.share_prefix), ("method", self.method)) if v is not None}


@dataclass(frozen=True, kw_only=True)
class GenerateStep:
    """Greedy generation of the ``gen_prompts``, exactly ``new_tokens`` each, steered by the speed
    vector or not, timed."""

    kind: ClassVar[str] = "generate"
    name: str
    steered: bool
    new_tokens: int
    batch_size: int


@dataclass(frozen=True, kw_only=True)
class MixedStep:
    """The ``mixed_prompts``, each with its own vector: as the tool can (``separate``: one call per
    prompt), timed."""

    kind: ClassVar[str] = "mixed"
    name: str
    new_tokens: int
    separate: bool = False


@dataclass(frozen=True, kw_only=True)
class EffectStep:
    """Continue the ``effect_prompts`` with the tool's own ``vector`` rescaled per layer to each
    entry of ``norms`` (``{label: {layer: norm}}``; an empty entry: unsteered). Not a timing."""

    kind: ClassVar[str] = "effect"
    name: str
    vector: str | None
    norms: dict[str, dict[str, float]]
    new_tokens: int
    batch_size: int


@dataclass(frozen=True, kw_only=True)
class LogitsStep:
    """Save the last-token logits of ``check_text`` (the same-model check across environments)."""

    kind: ClassVar[str] = "logits"
    name: str
    save: str


Step = ExtractStep | GenerateStep | MixedStep | EffectStep | LogitsStep
STEP_KINDS: dict[str, type[Step]] = {c.kind: c for c in (ExtractStep, GenerateStep, MixedStep, EffectStep, LogitsStep)}


def step_to_dict(step: Step) -> dict[str, Any]:
    return {"kind": step.kind, **asdict(step)}


def step_from_dict(d: dict[str, Any]) -> Step:
    d = dict(d)
    return STEP_KINDS[d.pop("kind")](**d)


@dataclass(frozen=True, kw_only=True)
class VectorPaths:
    """The vectors the parent built (``torch.save`` files): the speed vector and one per mixed row."""

    speed: str
    mixed: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class WorkerJob:
    """One worker process: load ``tool``'s model (timed), then run ``steps`` in order.

    steerlab loads ``model`` (a ``load_model`` name or folder); the transformers tools load
    ``model_dir`` (with ``gguf_file``: that GGUF file in it).
    """

    tool: str
    env: str
    data: str
    layers: tuple[int, int]
    threads: int | None = None
    device: str = "cpu"
    dtype: str = "float32"
    model: str | None = None
    model_dir: str | None = None
    gguf_file: str | None = None
    vectors: VectorPaths | None = None
    steps: tuple[Step, ...] = ()

    def to_json(self) -> str:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["vectors"] = None if self.vectors is None else asdict(self.vectors)
        d["steps"] = [step_to_dict(s) for s in self.steps]
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> WorkerJob:
        d = json.loads(text)
        v = d.pop("vectors")
        return cls(
            **{k: val for k, val in d.items() if k not in ("layers", "steps")},
            layers=(d["layers"][0], d["layers"][1]),
            vectors=None if v is None else VectorPaths(speed=v["speed"], mixed=tuple(v["mixed"])),
            steps=tuple(step_from_dict(s) for s in d["steps"]),
        )


@dataclass(frozen=True, kw_only=True)
class Texts:
    """Every text the tools read (``data.json``), rendered once with the model's chat template."""

    persona: list[Pair]
    caa: list[Pair]
    gen_prompts: list[str]
    mixed_prompts: list[str]
    effect_prompts: list[str]
    check_text: str

    def pairs(self, name: str) -> list[Pair]:
        """The pairs of an :class:`ExtractStep` (``"persona"`` or ``"caa"``)."""
        if name not in ("persona", "caa"):
            raise ValueError(f"unknown pair set {name!r}: use 'persona' or 'caa'")
        pairs: list[Pair] = getattr(self, name)
        return pairs

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Texts:
        d = json.loads(text)
        for k in ("persona", "caa"):
            d[k] = [(p, n) for p, n in d[k]]
        return cls(**d)
