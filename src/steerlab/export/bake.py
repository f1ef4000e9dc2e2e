"""Bake a steering into the weights: a standard Hugging Face checkpoint that any engine can serve.

Two kinds of steering can be written into weights *exactly*:

Which one a steering is, its operator says (:meth:`~steerlab.core.operators.Operator.fixed_form`),
so an operator added with :func:`~steerlab.core.operators.register_operator` bakes when it declares
one of the two forms, and is refused with its own reason when it does not.

* **Constant addition** — :class:`~steerlab.core.steering.Steering` with ``operator="add"`` (or any
  operator whose fixed form is a :class:`~steerlab.core.operators.ConstantAddition` ``s·v``: the
  bias is then ``s·v``) and ``positions="all"`` (one direction per layer, any number of them
  composed). ``c·v`` at layer
  ``k`` becomes an output bias of block ``k``'s *last* projection that writes to the residual
  stream (the MLP down projection: llama ``mlp.down_proj``, gpt2 ``mlp.c_proj``, gpt_neox
  ``mlp.dense_4h_to_h``, opt ``fc2``...). That projection's output is the last thing added to the
  residual stream, so the block output moves by exactly ``c·v`` at every token — the same as the
  steering hook. Projections without a bias get one through the config (Llama ``mlp_bias=True``,
  OPT ``enable_bias=True``; the other biases this switches on are zero). Qwen2 and Mistral (without
  a sliding window) have no such switch and are written as the equivalent Llama checkpoint
  (``attention_bias=True`` carries Qwen2's q/k/v biases, ``mlp_bias=True`` the steering).
* **Directional ablation** — ``operator="ablate"`` (a
  :class:`~steerlab.core.operators.DirectionRemoval`), coefficient 1, positions ``"all"``, the same
  direction ``u`` at every layer ``0..n-1``: ``u`` is projected out of every matrix that writes to
  the residual stream (token and learned positional embeddings, each block's attention output and
  MLP output projections, and their biases), so the stream is orthogonal to ``u`` everywhere. A
  tied ``lm_head`` is untied and kept as it was; the final norm and ``lm_head`` are unchanged.

  Runtime ablation at steerlab layer ``k`` acts on the output of block ``k`` only. Orthogonalised
  weights also keep ``u`` out of the two points steerlab has no layer index for: the embeddings
  (block 0's input) and, inside each block, the stream between the attention and the MLP (what the
  MLP reads in sequential blocks). So the baked model equals :func:`runtime_equivalent` — runtime
  ablation at every block output *plus* those points — not plain ``steer(lm, steering)``, which
  lets the MLPs read ``u`` from the embeddings and the attention outputs. ``approximate=True``
  bakes other ablations (a subset of layers, different directions per layer, a coefficient other
  than 1) as the usual whole-model orthogonalisation with the mean direction of the layers and the
  coefficient as given.

Everything else is refused with a :class:`BakeError` that says why: positions other than
``"all"`` (weights cannot know where the prompt ends), token-wise vectors, operators without a
fixed form (``clamp`` and ``add_norm_preserving`` depend on the activation), and architectures where a bias is not a
plain addition (Gemma 2/3 normalise the MLP output after the down projection) or that steerlab has
not verified.

The baked folder loads with plain ``transformers`` (no steerlab import) and serves with vLLM or
TGI. It also holds ``steerlab_bake.json`` describing what was baked.

Example:
    >>> import steerlab
    >>> from steerlab.export.bake import bake
    >>> lm = steerlab.load_model("default")  # doctest: +SKIP
    >>> vec = steerlab.SteeringVector.load("vectors/happy")  # doctest: +SKIP
    >>> bake(lm, steerlab.Steering(vec, 4.0), "baked/happy")  # doctest: +SKIP
    PosixPath('baked/happy')
    >>> from transformers import AutoModelForCausalLM
    >>> model = AutoModelForCausalLM.from_pretrained("baked/happy")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch

from .. import hf_env
from ..core.operators import ConstantAddition, DirectionRemoval, FixedForm
from ..core.steering import Composite, Steering, SteeringLike, compose
from ..errors import SteeringError, UnsupportedArchitectureError
from ..files import atomic_folder
from ..models.layers import ARCHITECTURES, get_path
from ..models.load import LM
from ..runtime.session import SteeringSession, steer

BAKE_INFO = "steerlab_bake.json"
PARALLEL_TOL = 1e-6
"""Directions count as "the same" for an exact ablation bake when ``1 - |cos| <= PARALLEL_TOL``."""


class BakeError(SteeringError):
    """A steering cannot be written into the weights (exactly), or the output folder is in the way."""


class BakeArchitectureError(BakeError, UnsupportedArchitectureError):
    """The architecture cannot carry this steering in its weights (or steerlab has not verified it)."""


@dataclass(frozen=True)
class BakeSpec:
    """Where one architecture's residual-stream writers live (dotted paths as in the state dict)."""

    mlp_out: str
    """Last projection of a block that writes to the residual stream, relative to the block."""
    embeddings: tuple[str, ...]
    """Modules (relative to the model) whose output *is* the residual stream entering block 0."""
    bias_flag: str | None = None
    """Config attribute that must be True for ``mlp_out`` to have a bias (None: always has one)."""
    convert_to: str | None = None
    """Write a checkpoint of this model type instead (same weights) when ``bias_flag`` is None and
    the projection has no bias."""
    refuse_add: str | None = None
    refuse_ablate: str | None = None


_NO_BIAS = (
    "its MLP down projection has no bias and transformers' {arch} config has no switch that adds "
    "one, so a constant addition cannot be stored in a plain {arch} checkpoint. Steer at runtime "
    "(steerlab.steer), or use llama.cpp control vectors"
)
_POST_NORM = (
    "{arch} normalises the attention and MLP outputs (post_attention_layernorm / "
    "post_feedforward_layernorm) before adding them to the residual stream, so neither a bias nor an "
    "orthogonalised projection acts as a plain change of the block output. Steer at runtime "
    "(steerlab.steer)"
)

BAKE_SPECS: dict[str, BakeSpec] = {
    "gpt2": BakeSpec("mlp.c_proj", ("transformer.wte", "transformer.wpe")),
    "gpt_neo": BakeSpec("mlp.c_proj", ("transformer.wte", "transformer.wpe")),
    "gpt_neox": BakeSpec("mlp.dense_4h_to_h", ("gpt_neox.embed_in",)),
    "llama": BakeSpec("mlp.down_proj", ("model.embed_tokens",), bias_flag="mlp_bias"),
    "qwen2": BakeSpec("mlp.down_proj", ("model.embed_tokens",), convert_to="llama"),
    "mistral": BakeSpec("mlp.down_proj", ("model.embed_tokens",), convert_to="llama"),
    "qwen3": BakeSpec(
        "mlp.down_proj",
        ("model.embed_tokens",),
        refuse_add=_NO_BIAS.format(arch="qwen3") + " (its q/k norms have no Llama equivalent either)",
    ),
    "phi3": BakeSpec("mlp.down_proj", ("model.embed_tokens",), refuse_add=_NO_BIAS.format(arch="phi3")),
    "gemma": BakeSpec("mlp.down_proj", ("model.embed_tokens",), refuse_add=_NO_BIAS.format(arch="gemma")),
    "gemma2": BakeSpec(
        "mlp.down_proj", (), refuse_add=_POST_NORM.format(arch="gemma2"), refuse_ablate=_POST_NORM.format(arch="gemma2")
    ),
    "gemma3_text": BakeSpec(
        "mlp.down_proj", (), refuse_add=_POST_NORM.format(arch="gemma3"), refuse_ablate=_POST_NORM.format(arch="gemma3")
    ),
    "gemma3": BakeSpec(
        "mlp.down_proj", (), refuse_add=_POST_NORM.format(arch="gemma3"), refuse_ablate=_POST_NORM.format(arch="gemma3")
    ),
    "opt": BakeSpec("fc2", ("model.decoder.embed_tokens", "model.decoder.embed_positions"), bias_flag="enable_bias"),
}
"""``model_type`` → :class:`BakeSpec`. Only architectures checked against their transformers code
(the MLP output is the last term added to the residual stream) are listed."""


@dataclass
class BakePlan:
    """What :func:`bake` will write, worked out (and validated) from a steering."""

    mode: Literal["add", "ablate"]
    """``"add"`` (every operator's fixed form is a :class:`~steerlab.core.operators.ConstantAddition`:
    a bias) or ``"ablate"`` (one :class:`~steerlab.core.operators.DirectionRemoval`: orthogonalised
    weights)."""
    deltas: dict[int, torch.Tensor] = field(default_factory=dict)
    """add: ``{layer: c·v summed over the steerings}`` (float32, CPU)."""
    direction: torch.Tensor | None = None
    """ablate: the unit direction (float32, CPU)."""
    coefficient: float = 1.0
    """ablate: the fraction of the projection removed."""
    approximate: bool = False
    steerings: tuple[Steering, ...] = ()

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary (what goes into ``steerlab_bake.json``)."""
        out: dict[str, Any] = {
            "mode": self.mode,
            "approximate": self.approximate,
            "steerings": [
                {
                    "model_id": s.vector.model_id,
                    "method": s.vector.method,
                    "data_hash": s.vector.data_hash,
                    "layers": list(s.active_layers),
                    "coefficient": s.coefficient,
                    "operator": s.operator,
                    **({"operator_parameters": s.op.parameters()} if s.op.parameters() else {}),
                    "positions": s.where,
                }
                for s in self.steerings
            ],
        }
        if self.mode == "add":
            out["layers"] = sorted(self.deltas)
            out["bias_norms"] = {str(k): round(float(v.norm()), 6) for k, v in sorted(self.deltas.items())}
        else:
            out["coefficient"] = self.coefficient
        return out


# ---------------------------------------------------------------------------------- planning
def plan(lm: LM, steering: SteeringLike | Sequence[SteeringLike], approximate: bool = False) -> BakePlan:
    """Check that ``steering`` can be baked into ``lm`` and work out what to write.

    Raises:
        BakeError: the steering cannot be expressed in the weights (the message says why).
        BakeArchitectureError: the architecture cannot carry it.
        ModelMismatchError: a vector was made for another model.
    """
    if isinstance(steering, (Steering, Composite)):
        items = list(compose(steering).steerings)
    else:
        items = list(compose(*steering).steerings)
    if not items:
        raise BakeError("nothing to bake: pass at least one Steering")
    for s in items:
        s.vector.check_model(lm)
        if s.vector.tokenwise:
            raise BakeError(
                "a token-wise (ActAdd) vector adds a different row at each prompt position, which "
                "no weight can do; collapse it with vector.token_mean() (a different steering) or "
                "steer at runtime"
            )
        if s.where != "all":
            raise BakeError(
                f"positions={s.where!r}: a baked bias acts on every token, so only positions='all' "
                "can be baked (the weights cannot know where a prompt ends); steer at runtime for "
                "'prompt', 'generated' or windows"
            )
    forms = [(s, _form(s)) for s in items]
    additions = [(s, f) for s, f in forms if isinstance(f, ConstantAddition)]
    removals = [(s, f) for s, f in forms if isinstance(f, DirectionRemoval)]
    if not removals:
        _spec(lm, "add")
        deltas: dict[int, torch.Tensor] = {}
        for s, form in additions:
            if s.is_noop:
                continue
            for layer in s.active_layers:
                v = form.scale * s.vector.directions[layer].to(torch.float32)
                deltas[layer] = deltas[layer] + v if layer in deltas else v
        return BakePlan("add", deltas=deltas, steerings=tuple(items))
    if additions:
        raise BakeError(
            "cannot bake additions and ablations together (a bias and orthogonalised weights do not "
            "compose in the order steering applies them); bake one kind"
        )
    _spec(lm, "ablate")
    if len(items) > 1:
        raise BakeError("bake one ablation at a time (compose several directions into one vector first)")
    return _plan_ablation(lm, *removals[0], approximate)


def _form(s: Steering) -> FixedForm:
    """What ``s``'s operator is as a fixed change (a bias or orthogonalised weights), or the
    operator's own reason why it is none."""
    form = s.op.fixed_form(s.coefficient)
    if form is None:
        raise BakeError(
            f"operator={s.operator!r}: {s.op.refusal}; only constant additions (as a bias: 'add') and "
            "direction removals (as orthogonalised weights: 'ablate') can be baked"
        )
    return form


def _plan_ablation(lm: LM, s: Steering, form: DirectionRemoval, approximate: bool) -> BakePlan:
    units = []
    for layer in s.active_layers:
        v = s.vector.directions[layer].to(torch.float32)
        n = float(v.norm())
        if n == 0:
            raise BakeError(f"layer {layer} of the vector is the zero vector: nothing to ablate")
        units.append(v / n)
    first = units[0]
    aligned = [u if float(u @ first) >= 0 else -u for u in units]
    mean = torch.stack(aligned).mean(0)
    direction = mean / mean.norm()
    problems = []
    if sorted(s.active_layers) != list(range(lm.n_layers)):
        problems.append(
            f"it acts on layers {list(s.active_layers)}, not on all {lm.n_layers} layers 0..{lm.n_layers - 1} "
            "(orthogonalised weights remove the direction from the whole residual stream)"
        )
    worst = max(1.0 - abs(float(u @ first)) for u in units)
    if worst > PARALLEL_TOL:
        problems.append(
            f"its layers point in different directions (1 - |cos| up to {worst:.2g}); one set of "
            "weights can remove only one direction everywhere"
        )
    if form.fraction != 1.0:
        problems.append(
            f"coefficient={s.coefficient} removes only part ({form.fraction:g}) of the projection at each layer, "
            "which compounds over layers at runtime but not in the weights (use coefficient 1)"
        )
    if problems and not approximate:
        raise BakeError(
            "this ablation cannot be baked exactly: "
            + "; ".join(problems)
            + ". Pass approximate=True (CLI: --approximate) to orthogonalise the whole model against "
            "the mean direction of its layers with this coefficient instead"
        )
    return BakePlan(
        "ablate", direction=direction, coefficient=form.fraction, approximate=bool(problems), steerings=(s,)
    )


def _spec(lm: LM, mode: Literal["add", "ablate"]) -> BakeSpec:
    model_type = lm.model_type
    spec = BAKE_SPECS.get(model_type)
    arch = ARCHITECTURES.get(model_type)
    if spec is None or arch is None:
        raise BakeArchitectureError(
            f"baking is not verified for model_type={model_type!r} (verified: "
            f"{', '.join(sorted(k for k, v in BAKE_SPECS.items() if not v.refuse_add))} for additions); "
            "steer at runtime with steerlab.steer"
        )
    if lm.blocks is not get_path(lm.model, arch.blocks):
        raise BakeArchitectureError(
            "the model's blocks were named by hand (blocks=...); baking needs the standard layout"
        )
    refusal = spec.refuse_add if mode == "add" else spec.refuse_ablate
    if refusal:
        raise BakeArchitectureError(
            f"cannot bake an {'addition' if mode == 'add' else 'ablation'} into model_type={model_type!r}: {refusal}"
        )
    cfg = lm.model.config
    if model_type == "opt" and not getattr(cfg, "do_layer_norm_before", True):
        raise BakeArchitectureError(
            "this OPT model applies its layer norms after the residual additions "
            "(do_layer_norm_before=False), so a bias or an orthogonalised projection is not a plain "
            "change of the block output; steer at runtime"
        )
    if mode == "add" and spec.convert_to:
        sliding = [t for t in (getattr(cfg, "layer_types", None) or []) if t != "full_attention"]
        if (model_type == "mistral" and getattr(cfg, "sliding_window", None) is not None) or sliding:
            raise BakeArchitectureError(
                f"{model_type} has no config switch for an MLP bias, and this one uses sliding-window "
                "attention, so it cannot be rewritten as the equivalent Llama checkpoint either; "
                "steer at runtime"
            )
    return spec


# ---------------------------------------------------------------------------------- writing
def _llama_config(config: Any) -> Any:
    """The Llama config of a Qwen2 / Mistral model (same weights, no sliding window)."""
    from transformers import LlamaConfig

    wanted = set(LlamaConfig().to_dict())
    src = config.to_dict()
    kept = {k: v for k, v in src.items() if k in wanted and k not in ("model_type", "architectures")}
    kept["attention_bias"] = config.model_type == "qwen2"  # q/k/v biases (o_proj's stays zero)
    kept["mlp_bias"] = True
    kept.pop("transformers_version", None)
    out = LlamaConfig(**kept)
    out.architectures = ["LlamaForCausalLM"]
    return out


def _expected_keys(config: Any) -> dict[str, tuple[torch.Size, bool]]:
    """State-dict keys (shape, is-parameter) a plain transformers model of ``config`` has."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    params = {n for n, _ in skeleton.named_parameters(remove_duplicate=False)}
    return {k: (v.shape, k in params) for k, v in skeleton.state_dict().items()}


def _bake_add(lm: LM, spec: BakeSpec, p: BakePlan, sd: dict[str, torch.Tensor]) -> tuple[Any, dict[str, Any]]:
    config = copy.deepcopy(lm.model.config)
    changes: dict[str, Any] = {}
    arch = ARCHITECTURES[lm.model_type]
    probe = f"{arch.blocks}.0.{spec.mlp_out}.bias"
    if probe not in sd:
        if spec.bias_flag is not None:
            setattr(config, spec.bias_flag, True)
            changes[spec.bias_flag] = True
        elif spec.convert_to == "llama":
            config = _llama_config(lm.model.config)
            changes["model_type"] = {"from": lm.model_type, "to": "llama"}
            changes["attention_bias"] = config.attention_bias
            changes["mlp_bias"] = True
        else:  # pragma: no cover - every listed architecture is handled above
            raise BakeArchitectureError(f"{lm.model_type}: no bias route")
    for layer, delta in p.deltas.items():
        key = f"{arch.blocks}.{layer}.{spec.mlp_out}.bias"
        base = sd.get(key)
        if base is None:
            ref = sd[f"{arch.blocks}.{layer}.{spec.mlp_out}.weight"]
            base = torch.zeros(delta.shape[-1], dtype=ref.dtype, device=ref.device)
        sd[key] = (base.to(torch.float32) + delta.to(base.device)).to(base.dtype)
    return config, changes


def _project_out(t: torch.Tensor, u: torch.Tensor, c: float, out_dim: int) -> torch.Tensor:
    """``t`` with ``c`` times its component along ``u`` removed on the residual axis ``out_dim``."""
    x = t.to(torch.float32)
    u = u.to(x.device)
    if x.dim() == 1:
        return (x - c * (x @ u) * u).to(t.dtype)
    if out_dim == 0:  # nn.Linear [d_model, in]
        return (x - c * torch.outer(u, u @ x)).to(t.dtype)
    return (x - c * torch.outer(x @ u, u)).to(t.dtype)  # Embedding / Conv1D [.., d_model]


def _bake_ablate(lm: LM, spec: BakeSpec, p: BakePlan, sd: dict[str, torch.Tensor]) -> tuple[Any, dict[str, Any]]:
    from transformers.pytorch_utils import Conv1D

    assert p.direction is not None
    u, c = p.direction, p.coefficient
    model = lm.model
    config = copy.deepcopy(model.config)
    changes: dict[str, Any] = {}
    arch = ARCHITECTURES[lm.model_type]
    embeddings = list(spec.embeddings)
    if lm.model_type == "opt" and getattr(model.model.decoder, "project_in", None) is not None:
        embeddings = ["model.decoder.project_in", "model.decoder.embed_positions"]
    writers = embeddings + [
        f"{arch.blocks}.{k}.{sub}" for k in range(lm.n_layers) for sub in (arch.attn_out, spec.mlp_out)
    ]
    out_emb = model.get_output_embeddings()
    in_emb = model.get_input_embeddings()
    tied = out_emb is not None and out_emb.weight is in_emb.weight
    for path in writers:
        module = get_path(model, path)
        if isinstance(module, (torch.nn.Embedding, Conv1D)):
            out_dim = 1
        elif isinstance(module, torch.nn.Linear):
            out_dim = 0
        else:  # pragma: no cover - the table names only these kinds
            raise BakeArchitectureError(f"{path} is a {type(module).__name__}; cannot orthogonalise it")
        sd[f"{path}.weight"] = _project_out(sd[f"{path}.weight"], u, c, out_dim)
        if f"{path}.bias" in sd:
            sd[f"{path}.bias"] = _project_out(sd[f"{path}.bias"], u, c, 0)
    if tied and id(in_emb) in {id(get_path(model, w)) for w in embeddings}:
        name = next(
            n
            for n, prm in model.named_parameters(remove_duplicate=False)
            if prm is out_emb.weight and not n.startswith(tuple(embeddings))
        )
        sd[name] = out_emb.weight.detach()  # the original weights; embed_tokens now holds new ones
        config.tie_word_embeddings = False
        changes["tie_word_embeddings"] = False
    return config, changes


def _state_dict(lm: LM) -> dict[str, torch.Tensor]:
    sd = dict(lm.model.state_dict())
    meta = [k for k, v in sd.items() if v.device.type == "meta"]
    if meta:
        raise BakeError(
            f"{len(meta)} weights are offloaded to disk (e.g. {meta[0]}); load the model without disk "
            "offload (enough CPU memory) to bake it"
        )
    return sd


def _complete(sd: dict[str, torch.Tensor], config: Any, dtype: torch.dtype) -> list[str]:
    """Add the zero biases a changed config switches on; check nothing else is missing or extra."""
    expected = _expected_keys(config)
    added = []
    for key, (shape, is_param) in expected.items():
        if key in sd:
            if sd[key].shape != shape:
                raise BakeError(f"internal: {key} has shape {tuple(sd[key].shape)}, expected {tuple(shape)}")
            continue
        if not key.endswith(".bias") or not is_param:
            if not is_param:  # a buffer the model recomputes itself (e.g. rotary tables)
                continue
            raise BakeError(f"internal: the baked config expects weight {key} that the model lacks")
        ref = next(v for k, v in sd.items() if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0])
        sd[key] = torch.zeros(shape, dtype=dtype, device=ref.device)
        added.append(key)
    extra = [k for k in sd if k not in expected]
    if extra:
        raise BakeError(f"internal: the baked checkpoint would hold unexpected weights {extra[:3]}")
    return added


def bake(
    lm: LM,
    steering: SteeringLike | Sequence[SteeringLike],
    out_dir: str | os.PathLike[str],
    approximate: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a Hugging Face checkpoint of ``lm`` with ``steering`` folded into its weights.

    ``lm`` itself is not modified: the changed tensors are new, the rest are saved as they are.

    Args:
        lm: the model (any dtype; the checkpoint keeps it).
        steering: additions (``operator="add"``, ``positions="all"``; several compose) or one
            ablation (``operator="ablate"``); see the module docs for what is exact.
        out_dir: folder to write (must not exist, or be empty).
        approximate: allow ablations that can only be approximated by orthogonalised weights.
        overwrite: replace ``out_dir`` if it holds an earlier bake (``steerlab_bake.json``).

    Returns:
        ``out_dir``. Load it with ``AutoModelForCausalLM.from_pretrained(out_dir)``.

    Raises:
        BakeError: the steering cannot be baked (why is in the message), or ``out_dir`` is in use.
        BakeArchitectureError: the architecture cannot carry this steering.

    Example:
        >>> bake(lm, Steering(vec, 4.0) + Steering(other, -2.0), "baked/mix")  # doctest: +SKIP
        >>> bake(lm, Steering(refusal_all_layers, 1.0, operator="ablate"), "baked/no-refusal")  # doctest: +SKIP
    """
    p = plan(lm, steering, approximate=approximate)
    spec = _spec(lm, p.mode)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (overwrite and (out / BAKE_INFO).is_file()):
            raise BakeError(
                f"{out} already exists and is not empty; choose a new folder"
                + (" (overwrite=True replaces only earlier bakes)" if overwrite else "")
            )
    sd = _state_dict(lm)
    dtype = next(lm.model.parameters()).dtype
    if p.mode == "add":
        config, changes = _bake_add(lm, spec, p, sd)
    else:
        config, changes = _bake_ablate(lm, spec, p, sd)
    added = _complete(sd, config, dtype)
    info = {
        "steerlab_bake": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_id": lm.model_id,
        "source_model_type": lm.model_type,
        "model_type": config.model_type,
        "projection": spec.mlp_out if p.mode == "add" else None,
        "config_changes": changes,
        "zero_biases_added": len(added),
        "equivalent": (
            "steerlab.steer(lm, steering) with the same steering"
            if p.mode == "add"
            else (
                "approximate: whole-model orthogonalisation"
                if p.approximate
                else "steerlab.export.bake.runtime_equivalent(lm, steering): ablation at every block output, "
                "at block 0's input and at every attention output"
            )
        ),
        **p.describe(),
    }
    with atomic_folder(out) as tmp:
        with hf_env.quiet(errors_only=True):
            lm.model.save_pretrained(tmp, state_dict=sd)
        if "model_type" not in changes:  # save_pretrained filled in the class name
            config.architectures = list(getattr(lm.model.config, "architectures", None) or [])
        config.dtype = lm.model.config.dtype
        config.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)
        (tmp / BAKE_INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------- checking
@contextmanager
def runtime_equivalent(lm: LM, steering: SteeringLike | Sequence[SteeringLike]) -> Iterator[SteeringSession]:
    """Steer ``lm`` at runtime exactly as the checkpoint :func:`bake` writes for ``steering`` computes.

    For additions this is :func:`steerlab.steer`. For an (exact) ablation it also removes the
    direction from block 0's input (the embeddings) and from every attention output (so the MLPs
    read a stream without it), which orthogonalised weights do and steerlab layers cannot name.

    Raises:
        BakeError: the steering cannot be baked exactly.

    Example:
        >>> with runtime_equivalent(lm, Steering(vec_all_layers, 1.0, operator="ablate")):  # doctest: +SKIP
        ...     reference = lm.model(**batch).logits
    """
    p = plan(lm, steering)
    with steer(lm, list(p.steerings)) as session:
        if p.mode != "ablate":
            yield session
            return
        assert p.direction is not None
        param = next(lm.blocks[0].parameters())
        u = p.direction.to(device=param.device, dtype=param.dtype)

        def ablate(h: torch.Tensor) -> torch.Tensor:
            return h - (h @ u.to(h.device)).unsqueeze(-1) * u.to(h.device)

        def pre_hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if args:
                return (ablate(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": ablate(kwargs["hidden_states"])}

        def out_hook(_module: Any, _args: Any, output: torch.Tensor) -> torch.Tensor:
            return ablate(output)

        attn_out = ARCHITECTURES[lm.model_type].attn_out
        handles = [lm.blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)]
        handles += [get_path(block, attn_out).register_forward_hook(out_hook) for block in lm.blocks]
        try:
            yield session
        finally:
            for handle in handles:
                handle.remove()
