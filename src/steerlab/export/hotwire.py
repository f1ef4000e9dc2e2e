"""steerlab vectors for `hotwire-vllm <https://pypi.org/project/hotwire-vllm/>`_ (checked against 0.1.2).

hotwire keeps vLLM's CUDA graphs: vectors are loaded once, operator-side, from
``$HOTWIRE_VECTORS`` (a directory of ``.pt`` files, or one ``.pt``), each a ``(n_layers, d_model)``
tensor — or a dict whose first tensor is — loaded with ``torch.load(weights_only=True)``; the
vector's id is the file name without ``.pt``. A request names ``{"id", "layer", "scale"}`` entries
(a JSON string in ``vllm_xargs["hotwire"]``); each adds ``scale * V[layer]`` to the output of
decoder layer ``layer`` (0-based, steerlab's numbering) at every token of the request, or — with
``"decode_only": true`` — only in single-token (decode) steps.

So :func:`write` saves a ``{"directions": (n_layers, d_model) float32, "steerlab": config JSON}``
dict (rows of layers the vector lacks are zero; the config lets :func:`read` give the vector back
and lets the server check an export is current), and :func:`request_spec` turns a steering into
one entry per layer. What hotwire cannot do is refused (:class:`PluginUnsupported`): operators
that are no constant addition (the operator says,
:meth:`~steerlab.core.operators.Operator.fixed_form`; a registered one that adds ``s·v`` goes with
``scale`` ``s``), token-wise vectors, positions other than ``"all"`` and ``"generated"``
(``decode_only``), and two steerings on one layer (hotwire keeps one vector per layer and token:
the last entry wins).

Example:
    >>> write(vec, "hotwire_vectors/", name="happy")  # doctest: +SKIP
    PosixPath('hotwire_vectors/happy.pt')
    >>> vec = SteeringVector({k: torch.ones(4) for k in (3, 4)}, model_id="m", d_model=4, n_layers=6)
    >>> request_spec(Steering(vec, 4.0, layers=[3, 4]), name_of=lambda v: "happy")
    [{'id': 'happy', 'layer': 3, 'scale': 4.0}, {'id': 'happy', 'layer': 4, 'scale': 4.0}]
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..core.steering import Steering, SteeringLike
from ..core.vector import SteeringVector, checked_config
from ..errors import InvalidVectorError, LayerRangeError, VectorFileError
from ..files import atomic_file
from .common import PluginUnsupported, constant_addition, steerings_of

PLUGIN = "hotwire"
XARG = "hotwire"
"""The ``extra_args`` / ``vllm_xargs`` key hotwire reads."""
TENSOR_KEY = "directions"
CONFIG_KEY = "steerlab"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def digest(vec: SteeringVector) -> str:
    """A short content hash of ``vec``'s directions (layers and values)."""
    h = hashlib.sha256()
    for k, t in vec.directions.items():
        h.update(f"{k}:{tuple(t.shape)};".encode())
        h.update(t.to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def to_tensor(vec: SteeringVector) -> torch.Tensor:
    """``(n_layers, d_model)`` float32: row ``k`` is layer ``k`` (zero where the vector has none).

    Raises:
        PluginUnsupported: a token-wise (ActAdd) vector.
    """
    if vec.tokenwise:
        raise PluginUnsupported(
            "hotwire holds one direction per layer: collapse this token-wise (ActAdd) vector "
            "first with vec.token_mean(), or steer with the transformers engine",
            PLUGIN,
            code="tokenwise_vector",
        )
    out = torch.zeros(vec.n_layers, vec.d_model, dtype=torch.float32)
    for k, t in vec.directions.items():
        out[k] = t
    return out


def write(vec: SteeringVector, out: str | os.PathLike[str], name: str | None = None) -> Path:
    """Write ``vec`` where hotwire loads it: ``out`` itself when it ends in ``.pt``, else
    ``out/NAME.pt`` (a ``$HOTWIRE_VECTORS`` directory; ``NAME`` is the id requests use).

    Raises:
        PluginUnsupported: a token-wise vector.
        VectorFileError: a name hotwire cannot use as an id.
    """
    out = Path(out)
    if out.suffix == ".pt":
        path = out
    else:
        if not name:
            raise VectorFileError("give the vector's id (name=...) to write it into a directory")
        path = out / f"{name}.pt"
    vid = path.stem if name is None else name
    if not _ID.fullmatch(vid):
        raise VectorFileError(f"{vid!r} cannot be a hotwire id: use letters, digits, '_', '-' or '.'")
    tensor = to_tensor(vec)
    config = {**vec.describe(), "digest": digest(vec)}
    config.pop("norms", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        torch.save({TENSOR_KEY: tensor, CONFIG_KEY: json.dumps(config)}, tmp)
    return path


def _load(path: Path) -> tuple[torch.Tensor, dict[str, Any] | None]:
    """The tensor hotwire would use (the file's, or a dict's first) and our config, if any."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError) as exc:
        raise VectorFileError(f"{path} is not a readable .pt file ({exc})") from exc
    config = None
    if isinstance(obj, dict):
        raw = obj.get(CONFIG_KEY)
        config = json.loads(raw) if isinstance(raw, str) else None
        obj = next((v for v in obj.values() if isinstance(v, torch.Tensor)), None)
    if not isinstance(obj, torch.Tensor) or obj.dim() not in (1, 2):
        raise VectorFileError(f"{path}: expected a (n_layers, d_model) or (d_model,) tensor")
    return obj.to(torch.float32), config


def read(path: str | os.PathLike[str], lm: Any = None) -> SteeringVector:
    """A steerlab vector from a hotwire ``.pt`` (ours: exactly the exported vector; others: the
    non-zero rows, model id from ``lm``). A ``(d_model,)`` file, which hotwire uses at any layer,
    needs ``lm`` and becomes a vector on every layer.

    Raises:
        VectorFileError: unreadable, or not a steering vector.
    """
    path = Path(path)
    tensor, config = _load(path)
    try:
        if config is not None:
            cfg = checked_config(config, str(path))
            layers = cfg.pop("layers")
            return SteeringVector({k: tensor[k] for k in layers}, **cfg)
        if tensor.dim() == 1:
            if lm is None:
                raise VectorFileError(f"{path}: a single-row vector fits any layer; give the model (lm=...)")
            tensor = tensor.expand(lm.n_layers, -1)
        rows = {k: tensor[k] for k in range(tensor.shape[0]) if bool(tensor[k].any())}
        if not rows:
            raise VectorFileError(f"{path}: every row is zero")
        return SteeringVector(
            rows,
            model_id=lm.model_id if lm is not None else "",
            d_model=int(tensor.shape[-1]),
            n_layers=lm.n_layers if lm is not None else int(tensor.shape[0]),
            method="hotwire",
        )
    except (IndexError, InvalidVectorError, LayerRangeError) as exc:
        raise VectorFileError(f"{path}: {exc}") from exc


def exported_digest(path: str | os.PathLike[str]) -> str | None:
    """The content digest recorded in one of our exports (``None``: not ours, or unreadable)."""
    try:
        _, config = _load(Path(path))
    except VectorFileError:
        return None
    value = (config or {}).get("digest")
    return value if isinstance(value, str) else None


# ----------------------------------------------------------------------------- requests
def request_spec(steering: SteeringLike | None, name_of: Callable[[SteeringVector], str]) -> list[dict[str, Any]]:
    """hotwire's entries for one request: one ``{"id", "layer", "scale"}`` per steered layer
    (``"decode_only": true`` for ``positions="generated"``).

    Args:
        steering: the request's steering (validated as for the transformers engine).
        name_of: the hotwire id of a vector (its name in the store = its exported file's name).

    Raises:
        PluginUnsupported: what hotwire cannot do (see the module docstring).
    """
    out: list[dict[str, Any]] = []
    owner: dict[int, int] = {}
    for i, s in enumerate(steerings_of(steering)):
        scale = _check(i, s)
        if s.is_noop:
            continue  # a zero coefficient would still take a slot of hotwire's fixed bank
        vid = name_of(s.vector)
        for k in s.active_layers:
            if k in owner:
                raise PluginUnsupported(
                    f"steering[{owner[k]}] and steering[{i}] both act on layer {k}: hotwire keeps one vector per "
                    "layer (the last would silently win); combine them into one vector (a*v1 + b*v2), export it "
                    "and use that",
                    PLUGIN,
                    i,
                    "layer_conflict",
                )
            owner[k] = i
            entry: dict[str, Any] = {"id": vid, "layer": int(k), "scale": float(scale)}
            if s.where == "generated":
                entry["decode_only"] = True
            out.append(entry)
    return out


def _check(i: int, s: Steering) -> float:
    """The scale ``s`` adds its vector with, or why hotwire cannot steer with it."""
    form = constant_addition(s.op, s.coefficient)
    if isinstance(form, str):
        raise PluginUnsupported(
            f"hotwire only adds vectors; operator={s.op.name!r} is not available with this engine: {form} "
            "(use the transformers engine)",
            PLUGIN,
            i,
        )
    if s.condition is not None:
        raise PluginUnsupported("hotwire has no conditional (CAST) steering", PLUGIN, i)
    if s.vector.tokenwise:
        raise PluginUnsupported(
            "hotwire has no token-wise (ActAdd) vectors: collapse the vector with "
            "vec.token_mean(), or use the transformers engine",
            PLUGIN,
            i,
            "tokenwise_vector",
        )
    if s.where not in ("all", "generated"):
        raise PluginUnsupported(
            f"hotwire steers every token ('all') or decode steps only ('generated'); "
            f"positions={s.where!r} is not available (use the transformers engine)",
            PLUGIN,
            i,
            "unsupported_positions",
        )
    return form.scale


def xargs(spec: list[dict[str, Any]]) -> dict[str, str]:
    """The ``vllm_xargs`` of a request (empty without steering): the spec as a JSON string, the
    form hotwire documents for HTTP."""
    return {XARG: json.dumps(spec)} if spec else {}
