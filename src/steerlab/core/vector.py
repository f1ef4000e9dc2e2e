"""The :class:`SteeringVector`: one direction per layer plus what it was made for.

Saved as a folder (PEFT-style): ``vector.safetensors`` (tensors ``layer.{k}``) beside
``steering_config.json`` (metadata). Exported to / imported from llama.cpp control-vector GGUF
files: architecture ``controlvector``, one tensor ``direction.{k}`` per layer. llama.cpp adds
``direction.k`` to the output of block ``k`` (0-based) and has no slot for block 0 — the same
numbering as steerlab's layers, so ``direction.k`` is steerlab's layer ``k``.

Example:
    >>> v = SteeringVector({3: torch.ones(4)}, model_id="m", d_model=4, n_layers=6)
    >>> (2 * v - v).norms()
    {3: 2.0}
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidVectorError, LayerRangeError, ModelMismatchError, VectorFileError
from ..files import atomic_file, atomic_folder

CONFIG_NAME = "steering_config.json"
WEIGHTS_NAME = "vector.safetensors"
FORMAT_VERSION = 1


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


_REQUIRED_KEYS = ("model_id", "d_model", "n_layers", "layers")
_TEXT_KEYS = {"method": "custom", "site": "block_output", "data_hash": "", "created": None}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def checked_config(cfg: Any, where: str) -> dict[str, Any]:
    """Validate a vector's saved metadata; return the :class:`SteeringVector` arguments but ``directions``.

    Every field is checked for its type (a file edited by hand or written by another tool must
    fail here, with the field named, not deep inside torch): ``model_id`` a string, ``d_model``
    and ``n_layers`` positive integers, ``layers`` a list of integers, ``method``, ``site``,
    ``data_hash``, ``created`` strings (or absent / ``null``), ``meta`` an object (or absent /
    ``null``), ``format_version`` an integer this steerlab reads.

    Raises:
        VectorFileError: naming ``where`` and the first bad field.

    Example:
        >>> checked_config({"model_id": "m", "d_model": 4, "n_layers": 6, "layers": [3]}, "x")["d_model"]
        4
        >>> checked_config({"model_id": "m", "d_model": "abc", "n_layers": 6, "layers": [3]}, "x")
        Traceback (most recent call last):
        ...
        steerlab.errors.VectorFileError: x: 'd_model' must be a positive integer, not 'abc'; re-save the vector
    """

    def bad(key: str, want: str) -> VectorFileError:
        return VectorFileError(f"{where}: {key!r} must be {want}, not {_short(cfg[key])}; re-save the vector")

    if not isinstance(cfg, dict):
        raise VectorFileError(
            f"{where}: the config must be a JSON object, not {type(cfg).__name__}; re-save the vector"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in cfg]
    if missing:
        raise VectorFileError(f"{where}: the config lacks {', '.join(map(repr, missing))}; re-save the vector")
    version = cfg.get("format_version", FORMAT_VERSION)
    if not _is_int(version) or version < 1:
        raise bad("format_version", "a positive integer")
    if version > FORMAT_VERSION:
        raise VectorFileError(
            f"{where}: format_version {version} was written by a newer steerlab (this one reads "
            f"up to {FORMAT_VERSION}); upgrade steerlab"
        )
    if not isinstance(cfg["model_id"], str):
        raise bad("model_id", "a string")
    for key in ("d_model", "n_layers"):
        if not _is_int(cfg[key]) or cfg[key] < 1:
            raise bad(key, "a positive integer")
    layers = cfg["layers"]
    if not isinstance(layers, list) or not all(_is_int(k) for k in layers):
        raise bad("layers", "a list of integers")
    out: dict[str, Any] = {"model_id": cfg["model_id"], "d_model": cfg["d_model"], "n_layers": cfg["n_layers"]}
    for key, default in _TEXT_KEYS.items():
        value = cfg.get(key)
        if value is not None and not isinstance(value, str):
            raise bad(key, "a string")
        out[key] = value if value is not None else (default if default is not None else _now())
    meta = cfg.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise bad("meta", "a JSON object")
    out["meta"] = dict(meta or {})
    out["layers"] = list(layers)
    return out


@dataclass
class SteeringVector:
    """Per-layer steering directions with metadata.

    Attributes:
        directions: ``{layer: tensor}``; a tensor is ``[d_model]``, or ``[n_tokens, d_model]``
            for a token-wise (ActAdd) vector added at the front positions of a prompt.
        model_id: the model it was made with.
        d_model: residual width of that model.
        n_layers: block count of that model.
        method: how it was made (``mean_diff``, ``pca_diff``, ``actadd``, ...).
        site: where it acts: ``"block_output"`` (the residual stream after block ``k``).
        data_hash: hash of the contrast data.
        created: ISO timestamp.
        meta: free-form extra information (JSON-serialisable).
    """

    directions: dict[int, torch.Tensor]
    model_id: str
    d_model: int
    n_layers: int
    method: str = "custom"
    site: str = "block_output"
    data_hash: str = ""
    created: str = field(default_factory=_now)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.directions:
            raise InvalidVectorError("a SteeringVector needs at least one layer")
        clean: dict[int, torch.Tensor] = {}
        for layer, t in self.directions.items():
            layer = int(layer)
            if not 0 <= layer < self.n_layers:
                raise LayerRangeError(f"vector layer {layer} is outside a model of {self.n_layers} blocks")
            t = torch.as_tensor(t).detach().to(device="cpu", dtype=torch.float32)
            if t.dim() not in (1, 2) or t.shape[-1] != self.d_model:
                raise InvalidVectorError(
                    f"layer {layer}: tensor of shape {tuple(t.shape)} does not fit d_model={self.d_model} "
                    "(expected [d_model] or [n_tokens, d_model])"
                )
            if not torch.isfinite(t).all():
                raise InvalidVectorError(
                    f"layer {layer} holds NaN or inf values: rebuild the vector (check the data and "
                    "the model dtype; float16 capture can overflow)"
                )
            clean[layer] = t
        self.directions = dict(sorted(clean.items()))

    # ----------------------------------------------------------------- inspection
    @property
    def layers(self) -> list[int]:
        """Layers this vector has a direction for, ascending."""
        return list(self.directions)

    @property
    def tokenwise(self) -> bool:
        """True for ActAdd-style vectors with one row per steering-prompt token."""
        return any(t.dim() == 2 for t in self.directions.values())

    def norms(self) -> dict[int, float]:
        """L2 norm per layer (Frobenius for token-wise vectors)."""
        return {k: round(float(t.norm()), 6) for k, t in self.directions.items()}

    def describe(self) -> dict[str, Any]:
        """Metadata plus per-layer norms, JSON-ready (what ``steerlab inspect`` prints)."""
        return {**self._config(), "norms": self.norms()}

    # ----------------------------------------------------------------- arithmetic
    def _same_model(self, other: SteeringVector) -> None:
        mine = (self.model_id, self.d_model, self.n_layers)
        theirs = (other.model_id, other.d_model, other.n_layers)
        if mine != theirs:
            raise ModelMismatchError(f"cannot combine vectors of different models: {mine} vs {theirs}")

    def _combine(self, other: SteeringVector, sign: float) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        self._same_model(other)
        out: dict[int, torch.Tensor] = {k: v.clone() for k, v in self.directions.items()}
        for k, v in other.directions.items():
            if k in out and out[k].shape != v.shape:
                raise InvalidVectorError(f"layer {k}: shapes {tuple(out[k].shape)} and {tuple(v.shape)} differ")
            out[k] = out[k] + sign * v if k in out else sign * v
        return replace(self, directions=out, method="combined", created=_now())

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, 1.0)

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, -1.0)

    def __mul__(self, scalar: float) -> SteeringVector:
        if not isinstance(scalar, (int, float)) or isinstance(scalar, bool):
            return NotImplemented
        if not math.isfinite(scalar):
            raise InvalidVectorError(f"cannot scale a vector by {scalar}")
        return replace(self, directions={k: v * scalar for k, v in self.directions.items()})

    __rmul__ = __mul__

    def __truediv__(self, scalar: float) -> SteeringVector:
        if scalar == 0:
            raise InvalidVectorError("cannot divide a vector by zero")
        return self * (1.0 / scalar)

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def normalized(self, norm: float = 1.0) -> SteeringVector:
        """Each layer's direction rescaled to L2 norm ``norm``."""
        out = {}
        for k, v in self.directions.items():
            n = float(v.norm())
            if n == 0:
                raise InvalidVectorError(f"layer {k} is the zero vector and cannot be normalised")
            out[k] = v * (norm / n)
        return replace(self, directions=out)

    def select(self, layers: Iterable[int]) -> SteeringVector:
        """The vector restricted to ``layers`` (each must be present)."""
        wanted = [int(x) for x in layers]
        missing = [x for x in wanted if x not in self.directions]
        if missing:
            raise LayerRangeError(f"the vector has no layer(s) {missing}; it has {self.layers}")
        return replace(self, directions={k: self.directions[k] for k in wanted})

    def token_mean(self) -> SteeringVector:
        """A token-wise (ActAdd) vector collapsed to one direction per layer (mean over tokens)."""
        return replace(self, directions={k: (v.mean(0) if v.dim() == 2 else v) for k, v in self.directions.items()})

    # ----------------------------------------------------------------- model checks
    def check_model(self, lm: Any) -> None:
        """Raise :class:`ModelMismatchError` unless this vector was made for ``lm``'s model."""
        if self.d_model != lm.d_model or self.n_layers != lm.n_layers:
            raise ModelMismatchError(
                f"this vector was made for {self.model_id!r} (d_model={self.d_model}, "
                f"{self.n_layers} layers) but the model is {lm.model_id!r} (d_model={lm.d_model}, "
                f"{lm.n_layers} layers): extract a new vector on this model"
            )
        if self.model_id and lm.model_id and self.model_id != lm.model_id:
            raise ModelMismatchError(
                f"this vector was made for model {self.model_id!r} but the model is {lm.model_id!r}. "
                "If they are the same weights, set vec.model_id = lm.model_id; otherwise extract "
                "a new vector on this model"
            )

    # ----------------------------------------------------------------- persistence
    def _config(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "model_id": self.model_id,
            "d_model": self.d_model,
            "n_layers": self.n_layers,
            "layers": self.layers,
            "method": self.method,
            "site": self.site,
            "data_hash": self.data_hash,
            "created": self.created,
            "tokenwise": self.tokenwise,
            "meta": self.meta,
        }

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``vector.safetensors`` and ``steering_config.json`` into ``directory``.

        The folder is written as a temporary sibling and swapped in with one rename (other files
        already in ``directory`` are kept), so a crash leaves the old vector or the new one,
        never new weights beside an old config.
        """
        from safetensors.torch import save_file

        path = Path(directory)
        tensors = {f"layer.{k}": v.contiguous() for k, v in self.directions.items()}
        with atomic_folder(path, keep_other_files=True) as tmp:
            save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "steerlab": str(FORMAT_VERSION)})
            (tmp / CONFIG_NAME).write_text(json.dumps(self._config(), indent=2), encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> SteeringVector:
        """Read a vector folder written by :meth:`save`.

        Raises:
            VectorFileError: missing, corrupt or truncated files, or config and tensors disagree.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(directory)
        cfg_path, w_path = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not cfg_path.is_file() or not w_path.is_file():
            raise VectorFileError(
                f"{path} is not a steerlab vector folder: it needs {CONFIG_NAME} and {WEIGHTS_NAME} "
                "(write one with SteeringVector.save or `steerlab extract --out`)"
            )
        try:
            raw = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise VectorFileError(f"{cfg_path} is corrupt ({exc}); re-save the vector") from exc
        cfg = checked_config(raw, str(cfg_path))
        try:
            tensors = load_file(str(w_path))
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise VectorFileError(f"{w_path} is corrupt or truncated ({exc}); re-save the vector") from exc
        directions = {}
        for name, t in tensors.items():
            if not name.startswith("layer.") or not name[6:].isdigit():
                raise VectorFileError(f"{w_path}: unexpected tensor {name!r}")
            directions[int(name[6:])] = t
        layers = cfg.pop("layers")
        if sorted(directions) != sorted(layers):
            raise VectorFileError(f"{path}: the config lists layers {layers} but the weights hold {sorted(directions)}")
        try:
            return cls(directions=directions, **cfg)
        except (InvalidVectorError, LayerRangeError) as exc:
            raise VectorFileError(f"{path}: {exc}") from exc

    # ----------------------------------------------------------------- llama.cpp
    def to_gguf(self, path: str | os.PathLike[str], model_hint: str = "") -> Path:
        """Write a llama.cpp control vector (``--control-vector FILE``).

        Tensor ``direction.{k}`` holds steerlab layer ``k`` (llama.cpp adds it to the output of
        block ``k``). llama.cpp cannot steer block 0, and has no token-wise vectors.

        Raises:
            InvalidVectorError: the vector is token-wise or uses layer 0.
        """
        if self.tokenwise:
            raise InvalidVectorError(
                "llama.cpp control vectors hold one direction per layer; collapse this token-wise "
                "(ActAdd) vector first with vec.token_mean()"
            )
        if 0 in self.directions:
            raise InvalidVectorError(
                "llama.cpp control vectors cannot act on block 0; drop it with "
                "vec.select([k for k in vec.layers if k > 0])"
            )
        path = Path(path)
        with atomic_file(path) as tmp:
            self._write_gguf(tmp, model_hint)
        return path

    def _write_gguf(self, tmp: Path, model_hint: str) -> None:
        import numpy as np
        from gguf import GGUFWriter

        writer = GGUFWriter(str(tmp), "controlvector")
        writer.add_string("controlvector.model_hint", model_hint or self.meta.get("model_type", ""))
        writer.add_uint32("controlvector.layer_count", len(self.directions))
        for key, value in self._config().items():
            if key in ("layers", "meta"):
                value = json.dumps(value)
            if isinstance(value, bool):
                value = int(value)
            if isinstance(value, int):
                writer.add_int64(f"steerlab.{key}", value)
            else:
                writer.add_string(f"steerlab.{key}", str(value))
        for k, v in self.directions.items():
            writer.add_tensor(f"direction.{k}", v.numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str], lm: Any = None, limits: Any = None) -> SteeringVector:
        """Read a llama.cpp control vector (ours, repeng's or llama.cpp's own).

        Files without steerlab metadata take model id, width and depth from ``lm`` when given.
        The header is first walked within ``limits`` (a :class:`~steerlab.limits.Limits`; default
        its defaults) by :func:`steerlab.core.gguf_check.check_gguf`, so a file declaring millions of
        metadata items is refused at once instead of being parsed for minutes.

        Raises:
            VectorFileError: not a readable control-vector GGUF.
            LimitError: a header over ``limits`` (``max_gguf_items``, ``max_gguf_string_bytes``).
        """
        from gguf import GGUFReader

        from .gguf_check import check_gguf

        path = Path(path)
        if not path.is_file():
            raise VectorFileError(f"GGUF control vector not found: {path}")
        check_gguf(path, limits)
        try:
            reader = GGUFReader(str(path))
            arch = reader.fields.get("general.architecture")
            if arch is None or arch.contents() != "controlvector":
                raise ValueError("general.architecture is not 'controlvector'")
            meta = {k[len("steerlab.") :]: f.contents() for k, f in reader.fields.items() if k.startswith("steerlab.")}
            directions = {}
            for t in reader.tensors:
                if not t.name.startswith("direction.") or not t.name[10:].isdigit():
                    raise ValueError(f"unexpected tensor {t.name!r}")
                directions[int(t.name[10:])] = torch.tensor(t.data.reshape(-1).astype("float32"))
        except (ValueError, KeyError, IndexError, OSError, TypeError) as exc:
            raise VectorFileError(f"{path} is not a valid llama.cpp control vector ({exc})") from exc
        if not directions:
            raise VectorFileError(f"{path} holds no direction.N tensors")
        for key in ("layers", "meta"):
            if key not in meta:
                continue
            if not isinstance(meta[key], str):
                raise VectorFileError(f"{path}: steerlab.{key} must be a JSON string; re-export the vector")
            try:
                meta[key] = json.loads(meta[key])
            except (ValueError, RecursionError) as exc:
                raise VectorFileError(
                    f"{path}: steerlab.{key} is not valid JSON ({exc}); re-export the vector"
                ) from exc
        meta.setdefault("d_model", next(iter(directions.values())).numel())
        meta.setdefault("n_layers", lm.n_layers if lm is not None else max(directions) + 1)
        meta.setdefault("model_id", lm.model_id if lm is not None else "")
        meta.setdefault("method", "gguf")
        meta.setdefault("layers", sorted(directions))
        cfg = checked_config(meta, str(path))
        layers = cfg.pop("layers")
        if sorted(layers) != sorted(directions):
            raise VectorFileError(
                f"{path}: steerlab.layers lists {layers} but the file holds directions {sorted(directions)}"
            )
        try:
            return cls(directions=directions, **cfg)
        except (InvalidVectorError, LayerRangeError) as exc:
            raise VectorFileError(f"{path}: {exc}") from exc
