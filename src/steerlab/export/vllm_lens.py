"""steerlab vectors for `vllm-lens <https://pypi.org/project/vllm-lens/>`_ (checked against 1.3.0).

vllm-lens takes steering per request: ``SamplingParams.extra_args["apply_steering_vectors"]``
offline, or ``"vllm_xargs": {"apply_steering_vectors": "<JSON string>"}`` over vLLM's
OpenAI-compatible HTTP API. The value is a list of its ``SteeringVector`` objects in their JSON
form::

    {"activations": {"data": BASE64, "dtype": "float32", "original_dtype": "torch.float32",
                     "shape": [n_layers, d_model]},          # or [n_layers, n_positions, d_model]
     "layer_indices": [k, ...], "scale": c, "norm_match": false, "position_indices": null}

The plugin adds ``scale * activations[i]`` to the output of decoder layer ``layer_indices[i]``
(0-based, the same numbering as steerlab's layers) at every token of the request (2-D
activations), or row ``j`` of a 3-D one at absolute token position ``position_indices[j]``
(``null``: positions ``0..n_positions-1``).

Only the 2-D form works with vllm-lens 1.3.0 and the vLLM it requires (0.30): the
plugin takes a forward step's absolute start from ``attn_metadata.seq_lens``
(``_worker_ext.py:439-455``), but vLLM's V1 runner gives ``attn_metadata`` as a dict of per-layer
metadata, so it finds none and counts every decode step, and every prefill chunk after the first,
from position 0. A 3-D entry then steers the wrong tokens: ``"generated"`` steers nothing,
``"prompt"`` steers every generated token too, windows and token-wise rows land on the wrong
tokens (``tests/test_vllm.py`` runs the plugin's own module and shows each). So:

* a plain vector at ``positions="all"`` is one 2-D entry, the coefficient as ``scale``;
* ``"prompt"``, ``"generated"``, windows and token-wise (ActAdd) vectors are refused
  (:class:`~steerlab.export.PluginUnsupported`, saying why) — for ``"generated"`` use hotwire,
  for the others the transformers engine; a token-wise vector's ``token_mean()`` is a plain one;
* only operators that are a constant addition (``"add"``, or any operator whose
  :meth:`~steerlab.core.operators.Operator.fixed_form` is a
  :class:`~steerlab.core.operators.ConstantAddition` ``s·v``: ``scale`` is then ``s``); the others
  are refused with the operator's own reason. Conditional steering (CAST) is refused. vllm-lens's
  ``norm_match`` is not steerlab's ``add_norm_preserving`` and is never used.

Tensors are written uncompressed (vllm-lens reads a ``compression`` key only when it says
``"zstd"``); files it wrote with zstd compression are read when the ``zstandard`` package is
installed.

Example:
    >>> vec = SteeringVector({2: torch.ones(4)}, model_id="m", d_model=4, n_layers=6)
    >>> [(e["layer_indices"], e["scale"], e["position_indices"]) for e in steering_payload(Steering(vec, 4.0))]
    [([2], 4.0, None)]
    >>> steering_payload(Steering(vec, 4.0, positions="generated"))
    Traceback (most recent call last):
    ...
    steerlab.export.common.PluginUnsupported: vllm-lens 1.3.0 steers only positions='all', not 'generated': ...
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.steering import Steering, SteeringLike
from ..core.vector import SteeringVector
from ..errors import InvalidVectorError, VectorFileError
from ..files import atomic_file
from .common import PluginUnsupported, constant_addition, steerings_of

PLUGIN = "vllm-lens"
XARG = "apply_steering_vectors"
"""The ``extra_args`` / ``vllm_xargs`` key vllm-lens reads."""
POSITIONS_WHY = (
    "it places a step's tokens by the step's absolute start, which it reads from attn_metadata.seq_lens, but "
    "vLLM >= 0.30 (which it requires) passes attn_metadata as a dict of per-layer metadata, so every decode step "
    "(and every prefill chunk after the first) counts from position 0"
)
"""Why vllm-lens 1.3.0 cannot steer by position (``_worker_ext.py:439-455``)."""

_TORCH_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ----------------------------------------------------------------------------- tensors
def encode_tensor(t: torch.Tensor) -> dict[str, Any]:
    """A tensor in vllm-lens's JSON form (float32, uncompressed).

    Example:
        >>> encode_tensor(torch.ones(2))["shape"]
        [2]
    """
    arr = t.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy().astype("<f4", copy=False)
    return {
        "data": base64.b64encode(arr.tobytes()).decode("ascii"),
        "dtype": "float32",
        "original_dtype": "torch.float32",
        "shape": list(arr.shape),
    }


def decode_tensor(d: Any) -> torch.Tensor:
    """A tensor from vllm-lens's JSON form (what its ``deserialize_tensor`` reads), as float32.

    Raises:
        VectorFileError: not such a dict, or bytes that do not fit its shape.
    """
    if not isinstance(d, dict) or not isinstance(d.get("data"), str):
        raise VectorFileError("an activations entry must be a dict with base64 'data'")
    try:
        raw = base64.b64decode(d["data"], validate=True)
        if d.get("compression") == "zstd":
            raw = _unzstd(raw)
        original = str(d.get("original_dtype", ""))
        if original == "torch.bfloat16":  # stored as int16 bit patterns
            bits = torch.from_numpy(np.frombuffer(raw, dtype=np.int16).copy())
            return bits.view(torch.bfloat16).reshape(d["shape"]).float()
        arr = np.frombuffer(raw, dtype=np.dtype(d["dtype"])).reshape(d["shape"])
        return torch.from_numpy(arr.astype(np.float32))
    except (ValueError, TypeError, KeyError) as exc:
        raise VectorFileError(f"unreadable vllm-lens tensor ({exc})") from exc


def _unzstd(raw: bytes) -> bytes:
    try:
        import zstandard
    except ImportError:
        raise VectorFileError("this file's tensors are zstd-compressed: pip install zstandard to read it") from None
    return bytes(zstandard.ZstdDecompressor().decompress(raw))


# ----------------------------------------------------------------------------- files
def to_entries(vec: SteeringVector, scale: float = 1.0) -> list[dict[str, Any]]:
    """``vec`` as a vllm-lens ``apply_steering_vectors`` list (one 2-D entry).

    Raises:
        PluginUnsupported: a token-wise vector (vllm-lens 1.3.0 would put its rows at the wrong
            tokens, see :data:`POSITIONS_WHY`).
    """
    if vec.tokenwise:
        raise _tokenwise(None)
    layers = vec.layers
    acts = torch.stack([vec.directions[k] for k in layers])
    return [_entry(acts, layers, scale)]


def _entry(acts: torch.Tensor, layers: list[int], scale: float, positions: list[int] | None = None) -> dict[str, Any]:
    return {
        "activations": encode_tensor(acts),
        "layer_indices": [int(k) for k in layers],
        "scale": float(scale),
        "norm_match": False,
        "position_indices": positions,
    }


def write(vec: SteeringVector, path: str | os.PathLike[str]) -> Path:
    """Write ``vec`` as a JSON file holding the ``apply_steering_vectors`` list (scale 1).

    Send it as ``"vllm_xargs": {"apply_steering_vectors": <the file's text>}`` (the scale of each
    entry is the coefficient).

    Example:
        >>> write(vec, "happy.vllm-lens.json")  # doctest: +SKIP
    """
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(to_entries(vec)), encoding="utf-8")
    return path


def read(path: str | os.PathLike[str], lm: Any = None) -> SteeringVector:
    """A steerlab vector from an ``apply_steering_vectors`` JSON list (entries summed with their
    scales). Model id and depth come from ``lm`` when given.

    Raises:
        VectorFileError: unreadable, or steering a plain vector cannot hold (explicit positions,
            ``norm_match``).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise VectorFileError(f"{path} is not a readable vllm-lens JSON file ({exc})") from exc
    if isinstance(data, str):  # the doubly-encoded vllm_xargs string form
        data = json.loads(data)
    if not isinstance(data, list) or not data:
        raise VectorFileError(f"{path}: expected a non-empty JSON list of steering vectors")
    directions: dict[int, torch.Tensor] = {}
    for i, item in enumerate(data):
        for k, t in _entry_directions(item, f"{path}[{i}]").items():
            directions[k] = directions[k] + t if k in directions else t
    d_model = int(next(iter(directions.values())).shape[-1])
    n_layers = lm.n_layers if lm is not None else max(directions) + 1
    try:
        return SteeringVector(
            directions,
            model_id=lm.model_id if lm is not None else "",
            d_model=d_model,
            n_layers=n_layers,
            method="vllm-lens",
        )
    except InvalidVectorError as exc:
        raise VectorFileError(f"{path}: {exc}") from exc


def _entry_directions(item: Any, where: str) -> dict[int, torch.Tensor]:
    if not isinstance(item, dict) or "activations" not in item or "layer_indices" not in item:
        raise VectorFileError(f"{where}: an entry needs 'activations' and 'layer_indices'")
    if item.get("norm_match"):
        raise VectorFileError(f"{where}: norm_match steering has no steerlab equivalent")
    if item.get("position_indices") is not None:
        raise VectorFileError(f"{where}: explicit position_indices cannot be held by a steerlab vector")
    acts = decode_tensor(item["activations"]) * float(item.get("scale", 1.0))
    layers = item["layer_indices"]
    if acts.dim() not in (2, 3) or not isinstance(layers, list) or len(layers) != acts.shape[0]:
        raise VectorFileError(f"{where}: activations of shape {tuple(acts.shape)} do not match layer_indices")
    return {int(k): acts[i] for i, k in enumerate(layers)}


# ----------------------------------------------------------------------------- requests
def steering_payload(steering: SteeringLike | None) -> list[dict[str, Any]]:
    """The ``apply_steering_vectors`` list for one request steered by ``steering``.

    Args:
        steering: the request's steering (validated as for the transformers engine).

    Raises:
        PluginUnsupported: an operator that is no constant addition, a condition, positions other than
            ``"all"`` or a token-wise vector (vllm-lens 1.3.0 places them wrongly, see
            :data:`POSITIONS_WHY`).
    """
    out: list[dict[str, Any]] = []
    for i, s in enumerate(steerings_of(steering)):
        entry = _steering_entry(i, s)
        if entry is not None:
            out.append(entry)
    return out


def _steering_entry(i: int, s: Steering) -> dict[str, Any] | None:
    form = constant_addition(s.op, s.coefficient)
    if isinstance(form, str):
        raise PluginUnsupported(
            f"vllm-lens only adds vectors; operator={s.op.name!r} is not available with this engine: {form} "
            "(use the transformers engine)",
            PLUGIN,
            i,
        )
    if s.condition is not None:
        raise PluginUnsupported("vllm-lens has no conditional (CAST) steering", PLUGIN, i)
    if s.vector.tokenwise:
        raise _tokenwise(i)
    if s.where != "all":
        raise PluginUnsupported(
            f"vllm-lens 1.3.0 steers only positions='all', not {s.where!r}: {POSITIONS_WHY}. So 'generated' would "
            "steer nothing, 'prompt' would steer the generated tokens too and windows would land on the wrong "
            "tokens. Use positions='all', hotwire for 'generated', or the transformers engine",
            PLUGIN,
            i,
            "unsupported_positions",
        )
    if s.is_noop:
        return None
    layers = list(s.active_layers)
    return _entry(torch.stack([s.vector.directions[k] for k in layers]), layers, form.scale)


def _tokenwise(i: int | None) -> PluginUnsupported:
    return PluginUnsupported(
        f"vllm-lens 1.3.0 cannot steer with a token-wise (ActAdd) vector: its rows go at absolute positions and "
        f"{POSITIONS_WHY}, so its first row would be added to every generated token. Use the vector's token_mean() "
        "(a plain vector) or the transformers engine",
        PLUGIN,
        i,
        "tokenwise_vector",
    )


def xargs(payload: list[dict[str, Any]]) -> dict[str, str]:
    """The ``vllm_xargs`` of a request (empty without steering): vLLM's HTTP API takes flat values,
    so the list goes as a JSON string, as vllm-lens's own client sends it."""
    return {XARG: json.dumps(payload)} if payload else {}
