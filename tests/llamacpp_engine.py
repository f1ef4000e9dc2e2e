"""llama.cpp itself, through the C API of the prebuilt ``xllamacpp`` wheel (ctypes, no compiler).

``xllamacpp`` (PyPI, CPU wheel) links llama.cpp and ggml into its extension module and exports
their C API (``llama_*``, ``ggml_*``, ``gguf_*``). Its Python API is a server and cannot set a
control vector, so this module calls the C functions directly — only functions whose arguments are
pointers and integers. The by-value parameter structs (``llama_model_params``,
``llama_context_params``, ``llama_batch``) change with llama.cpp versions, so they are never
looked into: each is made by the library's own function (``llama_*_default_params``,
``llama_batch_get_one``) into an oversized opaque buffer and handed back unchanged. The x86-64 and
arm64 calling conventions pass and return structs this large through memory, so the extra room is
harmless (4 KiB against the < 300 bytes of this version's structs). Threads are set with
``llama_set_n_threads``; everything else keeps llama.cpp's defaults (``n_ctx`` 512, F16 KV cache).

Anything missing or refused raises :class:`LlamaCppAPIError` saying which call failed, so a
changed library makes the test fail loudly instead of skipping.

Example::

    eng = LlamaCpp(default_gguf_path(), n_threads=1)
    base = eng.last_logits(ids)                          # next-token logits after ``ids``
    eng.set_control_vector(data, eng.n_embd, 10, 14)     # llama_set_adapter_cvec
    steered = eng.last_logits(ids)
    tensors = read_gguf_tensors("happy.gguf")            # ggml's own GGUF reader
"""

from __future__ import annotations

import ctypes
import importlib.util
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

GGML_TYPE_F32 = 0  # enum ggml_type; F32 has been 0 since ggml began
_OPAQUE_WORDS = 512  # 4 KiB of room for a by-value struct; the real ones are < 300 bytes


class LlamaCppAPIError(RuntimeError):
    """The bundled llama.cpp lacks a function we need or refused a call (its API changed?)."""


class _Opaque(ctypes.Structure):
    """A by-value llama.cpp struct we never look inside; larger than any real one."""

    _fields_ = [("words", ctypes.c_uint64 * _OPAQUE_WORDS)]


class _GGUFInitParams(ctypes.Structure):
    """``struct gguf_init_params`` (gguf.h): unchanged since GGUF was introduced."""

    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]


_LOG_CB = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_P = ctypes.c_void_p
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    # name: (restype, argtypes) as in llama.h / ggml.h / gguf.h
    "llama_backend_init": (None, []),
    "llama_log_set": (None, [_LOG_CB, _P]),
    "llama_model_default_params": (_Opaque, []),
    "llama_model_load_from_file": (_P, [ctypes.c_char_p, _Opaque]),
    "llama_model_free": (None, [_P]),
    "llama_model_n_embd": (ctypes.c_int32, [_P]),
    "llama_model_n_layer": (ctypes.c_int32, [_P]),
    "llama_model_get_vocab": (_P, [_P]),
    "llama_vocab_n_tokens": (ctypes.c_int32, [_P]),
    "llama_tokenize": (
        ctypes.c_int32,
        [
            _P,
            ctypes.c_char_p,
            ctypes.c_int32,
            ctypes.POINTER(ctypes.c_int32),
            ctypes.c_int32,
            ctypes.c_bool,
            ctypes.c_bool,
        ],
    ),
    "llama_context_default_params": (_Opaque, []),
    "llama_init_from_model": (_P, [_P, _Opaque]),
    "llama_free": (None, [_P]),
    "llama_set_n_threads": (None, [_P, ctypes.c_int32, ctypes.c_int32]),
    "llama_get_memory": (_P, [_P]),
    "llama_memory_clear": (None, [_P, ctypes.c_bool]),
    "llama_batch_get_one": (_Opaque, [ctypes.POINTER(ctypes.c_int32), ctypes.c_int32]),
    "llama_decode": (ctypes.c_int32, [_P, _Opaque]),
    "llama_get_logits_ith": (ctypes.POINTER(ctypes.c_float), [_P, ctypes.c_int32]),
    "llama_set_adapter_cvec": (
        ctypes.c_int32,
        [_P, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32],
    ),
    "gguf_init_from_file": (_P, [ctypes.c_char_p, _GGUFInitParams]),
    "gguf_get_n_tensors": (ctypes.c_int64, [_P]),
    "gguf_get_tensor_name": (ctypes.c_char_p, [_P, ctypes.c_int64]),
    "gguf_get_tensor_type": (ctypes.c_int, [_P, ctypes.c_int64]),
    "gguf_free": (None, [_P]),
    "ggml_get_tensor": (_P, [_P, ctypes.c_char_p]),
    "ggml_n_dims": (ctypes.c_int, [_P]),
    "ggml_nelements": (ctypes.c_int64, [_P]),
    "ggml_get_data_f32": (ctypes.POINTER(ctypes.c_float), [_P]),
    "ggml_free": (None, [_P]),
}


_lib: ctypes.CDLL | None = None
_log: deque[str] = deque(maxlen=20)


@_LOG_CB
def _on_log(level: int, text: bytes | None, user_data: int | None) -> None:
    if text:
        _log.append(text.decode("utf-8", "replace"))


def _recent_log() -> str:
    tail = "".join(_log).strip()
    return f"\nllama.cpp log:\n{tail}" if tail else ""


def xllamacpp_version() -> str:
    """The installed xllamacpp version (each release bundles a newer llama.cpp)."""
    from importlib.metadata import version

    return version("xllamacpp")


def xllamacpp_available() -> bool:
    """Whether the ``xllamacpp`` wheel is installed (the only reason to skip the engine test)."""
    return importlib.util.find_spec("xllamacpp") is not None


def library() -> ctypes.CDLL:
    """The shared library of ``xllamacpp`` that exports llama.cpp's C API, typed and initialised."""
    global _lib
    if _lib is not None:
        return _lib
    spec = importlib.util.find_spec("xllamacpp")
    if spec is None or spec.origin is None:
        raise LlamaCppAPIError("xllamacpp is not installed: pip install xllamacpp (it is in steerlab[dev])")
    pkg = Path(spec.origin).parent
    candidates = sorted(p for p in pkg.rglob("*") if p.suffix in (".so", ".dylib", ".dll", ".pyd") or ".so." in p.name)
    found: tuple[Path, ctypes.CDLL] | None = None
    for path in candidates:
        try:
            cand = ctypes.CDLL(str(path))
        except OSError:
            continue
        if hasattr(cand, "llama_decode"):
            found = (path, cand)
            break
    if found is None:
        raise LlamaCppAPIError(
            f"no shared library of xllamacpp {xllamacpp_version()} under {pkg} exports llama.cpp's C API "
            f"(looked at {[p.name for p in candidates]}); update tests/llamacpp_engine.py"
        )
    path, lib = found
    missing = [name for name in _SIGNATURES if not hasattr(lib, name)]
    if missing:
        raise LlamaCppAPIError(
            f"{path.name} of xllamacpp {xllamacpp_version()} lacks {missing}: the llama.cpp it bundles changed "
            "its C API; update tests/llamacpp_engine.py to its llama.h (or pin xllamacpp in pyproject.toml)"
        )
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    lib.llama_log_set(_on_log, None)
    lib.llama_backend_init()
    _lib = lib
    return lib


class GGUFTensor(NamedTuple):
    """One tensor as ggml reads it: name, ``ggml_type`` number, number of dims, float32 values."""

    name: str
    ggml_type: int
    n_dims: int
    data: np.ndarray


def read_gguf_tensors(path: str | Path) -> list[GGUFTensor]:
    """Read a GGUF file with ggml's own C reader, as ``common_control_vector_load_one`` does.

    Non-F32 tensors come back with empty ``data`` (llama.cpp refuses them; so does our loader).
    """
    lib = library()
    ctx = ctypes.c_void_p()
    gguf = lib.gguf_init_from_file(str(path).encode(), _GGUFInitParams(False, ctypes.pointer(ctx)))
    if not gguf:
        raise LlamaCppAPIError(f"ggml's gguf_init_from_file rejected {path}{_recent_log()}")
    try:
        out = []
        for i in range(lib.gguf_get_n_tensors(gguf)):
            name = lib.gguf_get_tensor_name(gguf, i)
            ttype = lib.gguf_get_tensor_type(gguf, i)
            t = lib.ggml_get_tensor(ctx, name)
            if not t:
                raise LlamaCppAPIError(f"ggml_get_tensor found no {name!r} in {path}")
            n = lib.ggml_nelements(t)
            data = (
                np.ctypeslib.as_array(lib.ggml_get_data_f32(t), shape=(n,)).copy()
                if ttype == GGML_TYPE_F32
                else np.zeros(0, dtype=np.float32)
            )
            out.append(GGUFTensor(name.decode(), int(ttype), int(lib.ggml_n_dims(t)), data))
        return out
    finally:
        lib.gguf_free(gguf)
        if ctx:
            lib.ggml_free(ctx)


class LlamaCpp:
    """One llama.cpp model and context (library defaults: ``n_ctx`` 512, F16 KV cache)."""

    def __init__(self, model_path: str | Path, n_threads: int = 1) -> None:
        lib = self._lib = library()
        mparams = lib.llama_model_default_params()
        self._model = lib.llama_model_load_from_file(str(model_path).encode(), mparams)
        if not self._model:
            raise LlamaCppAPIError(f"llama_model_load_from_file failed on {model_path}{_recent_log()}")
        cparams = lib.llama_context_default_params()
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            lib.llama_model_free(self._model)
            raise LlamaCppAPIError(f"llama_init_from_model failed{_recent_log()}")
        lib.llama_set_n_threads(self._ctx, n_threads, n_threads)
        self.n_embd = int(lib.llama_model_n_embd(self._model))
        self.n_layer = int(lib.llama_model_n_layer(self._model))
        self.n_vocab = int(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self._model)))

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """``llama_tokenize``: llama.cpp's own token ids for ``text`` (BOS as the file says)."""
        vocab = self._lib.llama_model_get_vocab(self._model)
        raw = text.encode("utf-8")
        size = len(raw) + 8
        for _ in range(2):
            buf = (ctypes.c_int32 * size)()
            n = self._lib.llama_tokenize(vocab, raw, len(raw), buf, size, add_special, parse_special)
            if n >= 0:
                return list(buf[:n])
            size = -n
        raise LlamaCppAPIError(f"llama_tokenize returned {n}{_recent_log()}")

    def set_control_vector(self, data: np.ndarray | None, n_embd: int, il_start: int, il_end: int) -> None:
        """``llama_set_adapter_cvec``: ``data`` is ``n_embd`` floats per layer from layer 1; None clears."""
        if data is None:
            rc = self._lib.llama_set_adapter_cvec(self._ctx, None, 0, n_embd, -1, -1)
        else:
            buf = np.ascontiguousarray(data, dtype=np.float32)
            ptr = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            rc = self._lib.llama_set_adapter_cvec(self._ctx, ptr, buf.size, n_embd, il_start, il_end)
        if rc != 0:
            raise LlamaCppAPIError(f"llama_set_adapter_cvec returned {rc}{_recent_log()}")

    def last_logits(self, ids: Sequence[int]) -> np.ndarray:
        """Next-token logits after ``ids`` (one batch from an empty KV cache), float32 ``[n_vocab]``."""
        lib = self._lib
        lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)
        tokens = (ctypes.c_int32 * len(ids))(*ids)
        batch = lib.llama_batch_get_one(tokens, len(ids))
        rc = lib.llama_decode(self._ctx, batch)
        if rc != 0:
            raise LlamaCppAPIError(f"llama_decode returned {rc}{_recent_log()}")
        ptr = lib.llama_get_logits_ith(self._ctx, -1)
        if not ptr:
            raise LlamaCppAPIError(f"llama_get_logits_ith(-1) returned NULL{_recent_log()}")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def close(self) -> None:
        """Free the context and the model."""
        if self._ctx:
            self._lib.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            self._lib.llama_model_free(self._model)
            self._model = None
