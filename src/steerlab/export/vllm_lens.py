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
(``null``: positions ``0..n_positions-1``). So:

* a plain vector at ``positions="all"`` is one 2-D entry, the coefficient as ``scale``;
* a token-wise (ActAdd) vector is one 3-D entry with ``position_indices: null`` — steerlab's
  front-aligned rows exactly;
* ``"prompt"``, ``"generated"`` and windows need the request's prompt length and ``max_tokens``:
  the vector repeated once per position (3-D), refused above :data:`MAX_PAYLOAD_FLOATS`;
* only ``operator="add"``; conditional steering (CAST) is refused. vllm-lens's ``norm_match`` is
  not steerlab's ``add_norm_preserving`` and is never used.

Tensors are written uncompressed (vllm-lens reads a ``compression`` key only when it says
``"zstd"``); files it wrote with zstd compression are read when the ``zstandard`` package is
installed.

Example:
    >>> entries = to_entries(vec)  # doctest: +SKIP
    >>> xargs(steering_payload(Steering(vec, 4.0), prompt_len=12, max_tokens=32))  # doctest: +SKIP
    {'apply_steering_vectors': '[{"activations": {...}, "layer_indices": [8, 9], "scale": 4.0, ...}]'}
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InvalidVectorError, VectorFileError
from ..files import atomic_file
from ..steering import Steering, SteeringLike
from ..vector import SteeringVector
from .common import PluginUnsupported, explicit_positions, steerings_of

PLUGIN = "vllm-lens"
XARG = "apply_steering_vectors"
"""The ``extra_args`` / ``vllm_xargs`` key vllm-lens reads."""
MAX_PAYLOAD_FLOATS = 1 << 22
"""The most floats (16 MiB as float32) one request's steering may send for position-specific
steering (``"prompt"``, ``"generated"``, windows): beyond it the request is refused."""

_TORCH_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ----------------------------------------------------------------------------- tensors
def encode_tensor(t: torch.Tensor) -> dict[str, Any]:
    """A tensor in vllm-lens's JSON form (float32, uncompressed).

    Example:
        >>> encode_tensor(torch.ones(2))["shape"]
        [2]
    """
    arr = t.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy().astype("<f4", copy=False)
    return {"data": base64.b64encode(arr.tobytes()).decode("ascii"), "dtype": "float32",
            "original_dtype": "torch.float32", "shape": list(arr.shape)}


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
    """``vec`` as a vllm-lens ``apply_steering_vectors`` list (one entry; token-wise: 3-D)."""
    layers = vec.layers
    acts = torch.stack([vec.directions[k] for k in layers])
    return [_entry(acts, layers, scale)]


def _entry(acts: torch.Tensor, layers: list[int], scale: float, positions: list[int] | None = None) -> dict[str, Any]:
    return {"activations": encode_tensor(acts), "layer_indices": [int(k) for k in layers], "scale": float(scale),
            "norm_match": False, "position_indices": positions}


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
        return SteeringVector(directions, model_id=lm.model_id if lm is not None else "", d_model=d_model,
                              n_layers=n_layers, method="vllm-lens")
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
def steering_payload(
    steering: SteeringLike | None, prompt_len: int, max_tokens: int, max_floats: int = MAX_PAYLOAD_FLOATS
) -> list[dict[str, Any]]:
    """The ``apply_steering_vectors`` list for one request steered by ``steering``.

    Args:
        steering: the request's steering (validated as for the transformers engine).
        prompt_len: the prompt's tokens (to place ``"prompt"``/``"generated"``/windows).
        max_tokens: the most tokens the request generates.
        max_floats: cap on the floats sent for position-specific steering.

    Raises:
        PluginUnsupported: an operator other than ``add``, a condition, or position-specific
            steering over ``max_floats``.
    """
    out: list[dict[str, Any]] = []
    budget = max_floats
    for i, s in enumerate(steerings_of(steering)):
        entry = _steering_entry(i, s, prompt_len, max_tokens, budget)
        if entry is not None:
            budget -= _floats(entry)
            out.append(entry)
    return out


def _floats(entry: dict[str, Any]) -> int:
    return int(np.prod(entry["activations"]["shape"])) if entry["position_indices"] is not None else 0


def _steering_entry(i: int, s: Steering, prompt_len: int, max_tokens: int, budget: int) -> dict[str, Any] | None:
    if s.op.name != "add":
        raise PluginUnsupported(f"vllm-lens only adds vectors; operator={s.op.name!r} is not available with this "
                                "engine (use the transformers engine)", PLUGIN, i)
    if s.condition is not None:
        raise PluginUnsupported("vllm-lens has no conditional (CAST) steering", PLUGIN, i)
    if s.is_noop:
        return None
    layers = list(s.active_layers)
    acts = torch.stack([s.vector.directions[k] for k in layers])
    if s.vector.tokenwise or s.where == "all":
        return _entry(acts, layers, s.coefficient)  # 3-D with position_indices None: front-aligned
    positions = list(explicit_positions(s.where, prompt_len, max_tokens))
    if not positions:
        return None
    floats = len(layers) * len(positions) * s.vector.d_model
    if floats > budget:
        raise PluginUnsupported(
            f"positions={s.where!r} on this request is {len(positions)} positions × {len(layers)} layers: "
            f"{floats} floats, over the {MAX_PAYLOAD_FLOATS} vllm-lens payload cap; use positions='all', fewer "
            "layers or a shorter window", PLUGIN, i, "steering_payload_too_large")
    rows = acts[:, None, :].expand(len(layers), len(positions), acts.shape[-1])
    return _entry(rows, layers, s.coefficient, positions)


def xargs(payload: list[dict[str, Any]]) -> dict[str, str]:
    """The ``vllm_xargs`` of a request (empty without steering): vLLM's HTTP API takes flat values,
    so the list goes as a JSON string, as vllm-lens's own client sends it."""
    return {XARG: json.dumps(payload)} if payload else {}
