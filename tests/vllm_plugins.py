"""Python copies of the two vLLM steering plugins' loading and apply logic, run on a Hugging Face
model, and a small vLLM-like server built on them (for ``tests/test_vllm.py``).

Neither plugin can be installed here (vllm-lens needs Python >= 3.12 and pins vllm==0.30.0;
both need a GPU build of vLLM), so each piece below is a line-by-line copy of the plugin's own
code, cited ``file:line`` in the wheels ``vllm_lens-1.3.0`` and ``hotwire_vllm-0.1.2`` (unpack with
``pip download --no-deps vllm-lens==1.3.0 hotwire-vllm==0.1.2``). What is *not* the plugins' code
is vLLM's side, reduced to what the plugins read: which module is "decoder layer k" (the plugins'
own discovery, applied to the HF module tree), each forward step's token span and absolute start
(vLLM's ``query_start_loc`` / ``seq_lens``), prefill then one-token decode steps with a KV cache.

vLLM's decoder layers return ``(hidden_states, residual)`` with the residual stream their sum;
both plugins add to ``hidden_states`` (= to the stream). HF's decoder layers return the stream
itself, so the same addition lands on the same quantity.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from starlette.concurrency import run_in_threadpool

import steerlab
from steerlab import hf


# ============================================================================ hotwire-vllm 0.1.2
class HotwireState:
    """``hotwire/_state.py`` ``SteerState`` + ``hotwire/_bank.py`` ``VectorBank`` (no dose policy)."""

    def __init__(self, n_layers: int, hidden_dim: int, max_tokens: int, dtype: torch.dtype, n_slots: int = 16):
        self.hidden_dim = hidden_dim
        self.bank = torch.zeros(n_slots, hidden_dim, dtype=dtype)  # _bank.py:16 (model dtype: _patch.py:84)
        self.scales = torch.zeros(n_slots, dtype=torch.float32)  # _bank.py:17
        self._free = list(range(n_slots - 1, -1, -1))  # _bank.py:18
        self._by_id: dict[str, int] = {}
        self.slot_map = torch.full((n_layers, max_tokens), -1, dtype=torch.int32)  # _state.py:26
        self.store: dict[str, torch.Tensor] = {}

    def load_store(self, path: str | os.PathLike[str]) -> None:
        """``_state.py:38-51``: a directory of ``.pt`` files (or one), the id is the file stem."""
        path = os.fspath(path)
        files = ([os.path.join(path, f) for f in sorted(os.listdir(path)) if f.endswith(".pt")]
                 if os.path.isdir(path) else [path])
        for f in files:
            name = os.path.splitext(os.path.basename(f))[0]
            t = torch.load(f, map_location="cpu", weights_only=True)
            if isinstance(t, dict):
                t = next(v for v in t.values() if isinstance(v, torch.Tensor))
            self.store[name] = t

    def register(self, vector_id: str, vector: torch.Tensor, scale: float) -> int:
        """``_bank.py:22-36``."""
        if vector.shape != (self.hidden_dim,):
            raise ValueError(f"expected ({self.hidden_dim},), got {tuple(vector.shape)}")
        if vector_id in self._by_id:
            slot = self._by_id[vector_id]
        else:
            if not self._free:
                raise RuntimeError("vector bank full")
            slot = self._free.pop()
            self._by_id[vector_id] = slot
        self.bank[slot].copy_(vector.to(self.bank.dtype))
        self.scales[slot] = scale
        return slot

    def slot_for(self, vector_id: str, layer: int, scale: float) -> int | None:
        """``_state.py:69-93`` (an unknown id or a full bank: ``None``, the entry runs unsteered)."""
        key = f"{vector_id}@{layer}x{scale}"
        slot = self._by_id.get(key)
        if slot is not None:
            return slot
        t = self.store.get(vector_id)
        if t is None:
            return None
        row = t[layer] if t.dim() == 2 else t
        try:
            return self.register(key, row.to(torch.float32), scale)
        except RuntimeError:
            return None


def hotwire_parse_spec(raw: Any) -> list[dict[str, Any]] | None:
    """``_state.py:122-130``."""
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = json.loads(raw)
    if isinstance(raw, dict):
        raw = [raw]
    return raw  # type: ignore[no-any-return]


def hotwire_fill_slot_map(st: HotwireState, spans: list[tuple[Any, int]]) -> None:
    """``_patch.py:112-163`` (``_fill_slot_map`` / ``_walk_batch``): ``spans`` is each scheduled
    request's raw ``extra_args["hotwire"]`` and its token count this step, in batch order."""
    st.slot_map.fill_(-1)
    start = 0
    for raw, n in spans:
        try:
            spec = hotwire_parse_spec(raw) or False
        except Exception:
            spec = False
        if spec:
            for entry in spec:
                if entry.get("decode_only") and n > 1:
                    continue
                slot = st.slot_for(entry["id"], int(entry["layer"]), float(entry.get("scale", 1.0)))
                if slot is not None:
                    st.slot_map[int(entry["layer"]), start : start + n] = slot
        start += n


def hotwire_steer(hidden: torch.Tensor, bank: torch.Tensor, slot_map: torch.Tensor, scales: torch.Tensor) -> None:
    """``_kernel.py:16-30`` (the Triton kernel, per token): in place, float32 arithmetic."""
    for tok in range(hidden.shape[0]):
        slot = int(slot_map[tok])
        if slot >= 0:
            h = hidden[tok].to(torch.float32)
            v = bank[slot].to(torch.float32)
            hidden[tok] = (h + scales[slot].to(torch.float32) * v).to(hidden.dtype)


@contextmanager
def hotwire_armed(model: Any, st: HotwireState) -> Iterator[int]:
    """``_patch.py:54-98``: every ``*DecoderLayer`` module whose name ends in ``.N`` is layer ``N``;
    its class's ``forward`` gets the steering op on its hidden-states output. Yields the number of
    armed layers; the class is restored on exit."""
    patched: dict[type, Callable[..., Any]] = {}
    n_found = 0
    for name, module in model.named_modules():
        if not type(module).__name__.endswith("DecoderLayer"):
            continue
        m = re.search(r"\.(\d+)$", name)
        if m is None:
            continue
        module._hotwire_idx = int(m.group(1))
        n_found += 1
        cls = type(module)
        if cls not in patched:
            patched[cls] = cls.forward
            cls.forward = _hotwire_forward(cls.forward, st)
    try:
        yield n_found
    finally:
        for cls, orig in patched.items():
            cls.forward = orig
        for _, module in model.named_modules():
            if hasattr(module, "_hotwire_idx"):
                del module._hotwire_idx


def _hotwire_forward(orig_forward: Callable[..., Any], st: HotwireState) -> Callable[..., Any]:
    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:  # _patch.py:55-67
        out = orig_forward(self, *args, **kwargs)
        idx = getattr(self, "_hotwire_idx", -1)
        if idx >= 0:
            hidden = out[0] if isinstance(out, tuple) else out
            flat = hidden.view(-1, hidden.shape[-1])  # vLLM's rows are (num_tokens, hidden)
            hotwire_steer(flat, st.bank, st.slot_map[idx, : flat.shape[0]], st.scales)
        return out

    return forward


# ============================================================================ vllm-lens 1.3.0
def lens_deserialize_tensor(d: dict[str, Any]) -> torch.Tensor:
    """``_helpers/_serialize.py:73-102`` (zstd frames are not expected from steerlab)."""
    raw = base64.b64decode(d["data"])
    assert d.get("compression") != "zstd", "steerlab writes uncompressed tensors"
    arr = np.frombuffer(raw, dtype=np.dtype(d["dtype"])).reshape(d["shape"])
    t = torch.from_numpy(arr.copy())
    original_dtype = d.get("original_dtype")
    if original_dtype == "torch.bfloat16":
        t = t.view(torch.bfloat16)
    elif original_dtype == "torch.float16":
        t = t.to(torch.float16)
    return t


class LensSteeringVector(BaseModel):
    """``_helpers/types.py:22-106`` (``SteeringVector``: same config, fields and validators)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    activations: torch.Tensor
    layer_indices: list[int]
    scale: float = 1.0
    norm_match: bool = False
    position_indices: list[int] | None = None

    @field_validator("activations", mode="before")
    @classmethod
    def _deserialize_activations(cls, v: Any) -> torch.Tensor:
        if isinstance(v, dict) and "data" in v:
            return lens_deserialize_tensor(v)
        if isinstance(v, torch.Tensor):
            return v
        raise ValueError(f"activations must be a torch.Tensor or a base64 dict, got {type(v)}")

    @model_validator(mode="after")
    def _check_shape(self) -> LensSteeringVector:
        if self.activations.dim() not in (2, 3):
            raise ValueError(f"activations must be 2D or 3D, got {self.activations.dim()}D")
        if self.activations.shape[0] != len(self.layer_indices):
            raise ValueError("activations dim 0 must match len(layer_indices)")
        return self

    @property
    def layer_index_map(self) -> dict[int, int]:
        return {li: i for i, li in enumerate(self.layer_indices)}


def lens_decode_steering_vectors(value: Any) -> list[LensSteeringVector] | None:
    """``_activations_plugin.py:260-276``: a list, or its JSON string (the ``vllm_xargs`` form)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = json.loads(value)
    return [v if isinstance(v, LensSteeringVector) else LensSteeringVector.model_validate(v) for v in value]


def lens_set_steering_data(sv_list: list[LensSteeringVector], num_layers: int,
                           dtype: torch.dtype) -> list[LensSteeringVector]:
    """``_worker_ext.py:1003-1035``: layer indices checked, activations moved to the model dtype."""
    out = []
    for sv in sv_list:
        for idx in sv.layer_indices:
            if idx < 0 or idx >= num_layers:
                raise ValueError(f"layer_index {idx} out of range [0, {num_layers})")
        out.append(sv.model_copy(update={"activations": sv.activations.to(dtype=dtype)}))
    return out


def lens_layers_from_registry(model: Any, registry: dict[str, Any]) -> dict[int, Any]:
    """``_worker_ext.py:99-138``: a registered attention module's path, cut after its first integer
    segment, is decoder layer ``int(segment)``."""
    layer_map: dict[int, Any] = {}
    for prefix in registry:
        segments = prefix.split(".")
        idx_pos = next((i for i, seg in enumerate(segments) if seg.isdigit()), None)
        assert idx_pos is not None
        layer_idx = int(segments[idx_pos])
        layer = model.get_submodule(".".join(segments[: idx_pos + 1]))
        assert layer_map.get(layer_idx, layer) is layer
        layer_map[layer_idx] = layer
    return layer_map


def hf_attention_registry(model: Any) -> dict[str, Any]:
    """A stand-in for vLLM's ``static_forward_context`` (attention modules by full path; vLLM's own
    paths end in ``.self_attn.attn``, the HF ones in ``.self_attn``: the same first integer)."""
    return {name: m for name, m in model.named_modules() if name.endswith("self_attn")}


def lens_apply_steering(configs: list[LensSteeringVector], layer_idx: int, target: torch.Tensor, start: int,
                        end: int, abs_start: int) -> None:
    """``_worker_ext.py:308-364`` (``norm_match`` aside: steerlab never sends it)."""
    n_tokens = end - start
    for cfg in configs:
        if layer_idx not in cfg.layer_index_map:
            continue
        assert not cfg.norm_match
        vec = cfg.activations[cfg.layer_index_map[layer_idx]].to(target.dtype)
        if vec.dim() == 1:
            target[start:end] = target[start:end] + vec.unsqueeze(0) * cfg.scale
        else:
            pos_indices = cfg.position_indices if cfg.position_indices is not None else list(range(vec.shape[0]))
            abs_end = abs_start + n_tokens
            for pi, abs_pos in enumerate(pos_indices):
                if pi >= vec.shape[0]:
                    break
                if abs_pos < abs_start or abs_pos >= abs_end:
                    continue
                rel = abs_pos - abs_start + start
                target[rel] = target[rel] + vec[pi] * cfg.scale


@dataclass
class Span:
    """One scheduled request of a forward step: vLLM's ``query_start_loc`` rows and the absolute
    position of its first token (``seq_lens - n_query``)."""

    key: str
    start: int
    end: int
    abs_start: int


@dataclass
class LensWorker:
    """``_worker_ext.py``'s ``install_hooks`` (962-997) and the steering half of ``_hook_inner``
    (367-455) on an HF model; ``spans`` is set by the driver before each forward step."""

    model: Any
    steering: dict[str, list[LensSteeringVector]] = field(default_factory=dict)
    spans: list[Span] = field(default_factory=list)

    @contextmanager
    def installed(self) -> Iterator[list[int]]:
        layer_map = lens_layers_from_registry(self.model, hf_attention_registry(self.model))
        handles = [layer.register_forward_hook(self._hook(idx)) for idx, layer in sorted(layer_map.items())]
        try:
            yield sorted(layer_map)
        finally:
            for h in handles:
                h.remove()

    def _hook(self, layer_idx: int) -> Callable[..., Any]:
        def hook(_module: Any, _inp: Any, output: Any) -> Any:
            per_req = [self.steering.get(s.key, []) for s in self.spans]
            if not any(per_req):
                return None
            if isinstance(output, tuple):  # _worker_ext.py:426-433
                modified: Any = (output[0].clone(), *output[1:])
                target = modified[0]
            else:
                modified = output.clone()
                target = modified
            flat = target.view(-1, target.shape[-1])  # vLLM's rows are (num_tokens, hidden)
            for span, configs in zip(self.spans, per_req):
                if configs:
                    lens_apply_steering(configs, layer_idx, flat, span.start, span.end, span.abs_start)
            return modified

        return hook


# ============================================================================ a vLLM-like driver
class PluginModel:
    """One HF model with one plugin armed, generating like vLLM (greedy): the prompt in prefill
    chunks, then one token per decode step, a KV cache between them; per request, the plugin reads
    ``extra_args`` exactly as in vLLM."""

    def __init__(self, lm: steerlab.LM, plugin: str, hotwire_dir: str | os.PathLike[str] | None = None,
                 prefill_chunk: int | None = None) -> None:
        self.lm = lm
        self.plugin = plugin
        self.prefill_chunk = prefill_chunk
        self.lock = threading.Lock()
        cfg = lm.model.config
        dtype = next(lm.model.parameters()).dtype
        self.hot = HotwireState(cfg.num_hidden_layers, cfg.hidden_size, 4096, dtype)
        if hotwire_dir is not None:
            self.hot.load_store(hotwire_dir)
        self.lens = LensWorker(lm.model)
        self.dtype = dtype

    @contextmanager
    def armed(self) -> Iterator[None]:
        """The plugin installed on the model for the block (removed after)."""
        if self.plugin == "hotwire":
            with hotwire_armed(self.lm.model, self.hot) as n:
                assert n == self.lm.n_layers
                yield
        else:
            with self.lens.installed() as layers:
                assert layers == list(range(self.lm.n_layers))
                yield

    def step(self, ids: list[int], raw: Any, abs_start: int, cache: Any) -> torch.Tensor:
        """One forward step of one request (``ids`` new tokens at ``abs_start``): its last logits."""
        n = len(ids)
        if self.plugin == "hotwire":
            hotwire_fill_slot_map(self.hot, [(raw, n)])
        else:
            self.lens.spans = [Span("req", 0, n, abs_start)]
        kwargs = hf.forward_kwargs(self.lm.model, input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
        with torch.inference_mode():
            return self.lm.model(**kwargs).logits[0, -1]  # type: ignore[no-any-return]

    def generate(self, prompt: list[int], max_tokens: int, xargs: dict[str, Any] | None,
                 ignore_eos: bool = False) -> Iterator[int]:
        """Greedy tokens of one request steered by its ``vllm_xargs`` (as ``extra_args``)."""
        extra = dict(xargs or {})
        raw = extra.get("hotwire")
        eos = self.lm.tokenizer.eos_token_id
        with self.lock, self.armed():
            if self.plugin == "vllm-lens":
                svs = lens_decode_steering_vectors(extra.pop("apply_steering_vectors", None))
                self.lens.steering = {"req": lens_set_steering_data(svs, self.lm.n_layers, self.dtype)} if svs else {}
            cache = hf.new_cache(self.lm.model)
            chunk = self.prefill_chunk or len(prompt)
            for s in range(0, len(prompt), chunk):
                logits = self.step(prompt[s : s + chunk], raw, s, cache)
            pos = len(prompt)
            for i in range(max_tokens):
                tok = int(logits.argmax())
                yield tok
                if (tok == eos and not ignore_eos) or i == max_tokens - 1:
                    return
                logits = self.step([tok], raw, pos, cache)
                pos += 1


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
            return JSONResponse({"error": {"message": "this fake takes greedy token-id prompts for its model",
                                           "type": "BadRequestError", "code": 400}}, status_code=400)
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
            out.append({**head, "choices": [{"index": 0, "text": text[len(sent):], "logprobs": None,
                                             "finish_reason": None, "stop_reason": None}], "usage": None})
            sent = text
        if hit is not None:
            break
    out.append({**head, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": finish,
                                     "stop_reason": None}], "usage": None})
    if (body.get("stream_options") or {}).get("include_usage"):
        out.append({**head, "choices": [], "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(ids),
                                                     "total_tokens": len(prompt) + len(ids)}})
    return out
