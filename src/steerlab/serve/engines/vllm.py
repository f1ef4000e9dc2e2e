"""``steerlab serve --engine vllm``: the same OpenAI-compatible API and ``steering`` field, with
generation done by vLLM and steering by a vLLM plugin (vllm-lens or hotwire-vllm).

:class:`VLLMEngine` is an :class:`~steerlab.serve.engines.base.Engine`, as the local
:class:`~steerlab.serve.engines.local.Batcher` is, so the routes, the validation, the store and
the playground are unchanged. Each :class:`Job` (one choice: prompt
token ids, the validated steering, sampling options) becomes one vLLM request: the steering is
translated to the plugin's ``vllm_xargs`` (:mod:`.vllm_requests`, refusing what the plugin cannot
do with a 400 before anything is queued), the request goes to vLLM (:mod:`.vllm_backends`) and its
text comes back as the same ``Delta``/``Done``/``Failed`` events the local engine sends.

vLLM does its own continuous batching: ``max_batch`` here is how many requests are forwarded to
it at once, ``max_queue`` how many more may wait. The steerlab side needs the model's tokenizer
and config only: :func:`load_shell` builds an :class:`~steerlab.models.load.LM` without weights.

Example:
    >>> from steerlab.serve import create_app
    >>> lm = load_shell("meta-llama/Llama-3.1-8B-Instruct")  # doctest: +SKIP
    >>> options = VLLMOptions(url="http://127.0.0.1:8001", plugin="vllm-lens")
    >>> app = create_app(lm, "vectors", engine=engine_factory(options))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from ... import hf_env
from ...export import PluginUnsupported
from ...models.load import LM
from ..http_errors import APIError
from ..jobs import Delta, Done, Failed, Job
from ..metrics import Metrics
from ..settings import ServeSettings
from ..store import VectorStore
from .base import EngineFactory, check_room
from .vllm_backends import Backend, BackendError, HTTPBackend, InProcessBackend
from .vllm_requests import PLUGINS, Translator, VectorLookup

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")

log = logging.getLogger("steerlab.serve")

__all__ = ["PLUGINS", "VLLMEngine", "VLLMOptions", "engine_factory", "load_shell"]


@dataclass
class VLLMOptions:
    """How to reach vLLM and which plugin steers there.

    Attributes:
        url: a vLLM server (``vllm serve ...``); ``None``: a ``vllm.LLM`` in this process.
        plugin: ``"vllm-lens"`` or ``"hotwire"``.
        model: the model name vLLM serves (default: asked from ``GET /v1/models``), or, in
            process, the model to load.
        api_key: vLLM's ``--api-key``.
        hotwire_dir: the ``$HOTWIRE_VECTORS`` directory, when visible from here (checked per request).
        hotwire_slots: the vLLM server's ``$HOTWIRE_SLOTS`` (hotwire's default is 16).
        backend: a ready backend; overrides ``url``.
        transport: an ``httpx`` transport for the HTTP backend (tests: ``httpx.ASGITransport``).
    """

    url: str | None = None
    plugin: str = "vllm-lens"
    model: str | None = None
    api_key: str | None = None
    hotwire_dir: str | os.PathLike[str] | None = None
    hotwire_slots: int | None = None
    backend: Backend | None = None
    transport: httpx.AsyncBaseTransport | None = None

    def make_backend(self, max_batch: int) -> Backend:
        """The backend these options describe."""
        if self.backend is not None:
            return self.backend
        if self.url:
            return HTTPBackend(self.url, self.model, self.api_key, self.transport)
        if not self.model:
            raise BackendError("an in-process vLLM needs the model to load")
        return InProcessBackend.load(self.model, max_batch)


class VLLMEngine:
    """Forwards jobs to vLLM with the plugin's steering fields (an :class:`~steerlab.serve.engines.base.Engine`).

    Args:
        lm: the served model (tokenizer and config; no weights needed).
        settings: ``max_batch`` (requests forwarded at once), ``max_queue``.
        store: the vector store (hotwire ids are store names).
        options: see :class:`VLLMOptions`.
    """

    model_lock = None  # the model runs in vLLM, not here

    def __init__(self, lm: LM, settings: ServeSettings, store: VectorLookup, options: VLLMOptions) -> None:
        self.lm = lm
        self.settings = settings
        self.options = options
        self.metrics = Metrics()
        self.translator = Translator(options.plugin, store, options.hotwire_dir, options.hotwire_slots)
        self._lock = threading.Lock()
        self._waiting = 0
        self._running = 0
        self._closed = False
        self._tasks: dict[Job, concurrent.futures.Future[None]] = {}
        self._started: set[Job] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="steerlab-vllm", daemon=True)
        self._thread.start()
        try:
            self._slots = self._call(self._make_semaphore())
            self.backend = self._call(self._make_backend())
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            raise

    # ------------------------------------------------------------------ loop helpers
    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _make_semaphore(self) -> asyncio.Semaphore:
        return asyncio.Semaphore(self.settings.max_batch)

    async def _make_backend(self) -> Backend:
        return self.options.make_backend(self.settings.max_batch)

    # ------------------------------------------------------------------ API
    @property
    def alive(self) -> bool:
        """Whether the forwarding loop runs."""
        return self._thread.is_alive() and not self._closed

    @property
    def description(self) -> str:
        """The plugin and where vLLM runs."""
        return f"{self.options.plugin}, {self.backend.description}"

    def submit(self, jobs: Sequence[Job]) -> None:
        """Translate every job's steering, then forward them (all or none).

        Raises:
            APIError: 400 when the plugin cannot express a job's steering.
            QueueFull: ``max_queue`` requests wait already, or the server is closing.
        """
        xargs = [self._xargs(job) for job in jobs]
        with self._lock:
            check_room(self._waiting, len(jobs), self.settings.max_queue, self._closed, self.metrics)
            self._waiting += len(jobs)
        self.metrics.count("accepted", len(jobs))
        for job, xa in zip(jobs, xargs):
            fut = asyncio.run_coroutine_threadsafe(self._run(job, xa), self._loop)
            with self._lock:
                self._tasks[job] = fut
            fut.add_done_callback(partial(self._forget, job))

    def _xargs(self, job: Job) -> dict[str, str]:
        try:
            return self.translator.xargs(job.steering, len(job.prompt_ids), job.params.max_tokens)
        except PluginUnsupported as exc:
            param = "steering" if exc.index is None else f"steering[{exc.index}]"
            raise APIError(
                400, f"{param}: {exc} (this server steers through vLLM with {exc.plugin})", code=exc.code, param=param
            ) from None

    def _forget(self, job: Job, _future: object = None) -> None:
        """A job's future is done (finished, failed or cancelled before it started)."""
        with self._lock:
            self._tasks.pop(job, None)
            if job in self._started:
                self._started.discard(job)
                self._running -= 1
            else:
                self._waiting -= 1
        if not job.finished:
            self._cancelled(job)

    def cancel(self, job: Job) -> None:
        """Stop ``job`` (its client went away): its vLLM request is closed (vLLM aborts it)."""
        if job.finished:
            return
        job.cancelled.set()
        with self._lock:
            fut = self._tasks.get(job)
        if fut is not None:
            fut.cancel()

    def queue_length(self) -> int:
        """Requests waiting to be forwarded."""
        with self._lock:
            return self._waiting

    def running(self) -> int:
        """Requests being generated by vLLM now."""
        with self._lock:
            return self._running

    def close(self, timeout: float = 10.0) -> None:
        """Stop forwarding: running and waiting requests fail with 503, connections close."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            tasks = list(self._tasks.values())
        for fut in tasks:
            fut.cancel()
        if not self._loop.is_closed() and self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self.backend.aclose(), self._loop).result(timeout)
            except Exception:  # closing connections must not stop the shutdown
                log.warning("vLLM backend did not close cleanly", exc_info=True)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    def snapshot(self) -> dict[str, Any]:
        """Metrics plus queue state and where generation happens."""
        out = self.metrics.snapshot()
        with self._lock:
            out["queue_length"] = self._waiting
            out["running"] = self._running
        out["max_batch"] = self.settings.max_batch
        out["max_queue"] = self.settings.max_queue
        out["engine"] = {"name": "vllm", "plugin": self.options.plugin, "backend": self.backend.description}
        if self.options.plugin == "hotwire":
            out["engine"]["hotwire_slots_used"] = self.translator.slots_used()
        return out

    # ------------------------------------------------------------------ worker
    async def _run(self, job: Job, xargs: dict[str, str]) -> None:
        async with self._slots:
            with self._lock:
                self._waiting -= 1
                self._running += 1
                self._started.add(job)
            try:
                await self._forward_until_deadline(job, xargs)
            except asyncio.CancelledError:
                self._cancelled(job)

    def _cancelled(self, job: Job) -> None:
        """End a job that stopped without an answer: its client left, or the server is closing."""
        if job.finished:
            return
        if job.cancelled.is_set():
            self.metrics.count("cancelled")
            job.finished = True
        elif self._closed:
            job.send(Failed(job.index, 503, "the server is shutting down", "server_shutdown"))
        else:
            job.send(Failed(job.index, 500, "internal server error (see the server's log)", "server_error"))

    async def _forward_until_deadline(self, job: Job, xargs: dict[str, str]) -> None:
        left = job.deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            await asyncio.wait_for(self._forward(job, xargs), timeout=left if left != float("inf") else None)
        except (asyncio.TimeoutError, TimeoutError):
            self.metrics.count("timed_out")
            job.send(Failed(job.index, 504, "the request ran past the server's request timeout", "timeout"))
        except BackendError as exc:
            self.metrics.count("vllm_errors")
            job.send(Failed(job.index, exc.status, str(exc), exc.code))
        except (ValueError, KeyError, TypeError):  # an answer we cannot read
            log.exception("unreadable answer from vLLM")
            self.metrics.count("vllm_errors")
            job.send(
                Failed(job.index, 502, "vLLM sent an answer steerlab cannot read (see the server's log)", "vllm_error")
            )

    async def _forward(self, job: Job, xargs: dict[str, str]) -> None:
        t0 = time.monotonic()
        text, finish, tokens, pieces = "", None, None, 0
        async for piece in self.backend.stream(job, xargs):
            if piece.text:
                text += piece.text
                pieces += 1
                job.send(Delta(job.index, piece.text))
            finish = piece.finish_reason or finish
            tokens = piece.tokens if piece.tokens is not None else tokens
        n = tokens if tokens is not None else pieces
        self.metrics.add_tokens(n)
        self.metrics.add_batch(1, len(job.prompt_ids), time.monotonic() - t0)
        job.send(Done(job.index, text, _finish(finish), len(job.prompt_ids), n))


def _finish(reason: str | None) -> str:
    """vLLM's finish reason as steerlab reports it (``stop`` or ``length``)."""
    return "stop" if reason == "stop" else "length"


def engine_factory(options: VLLMOptions) -> EngineFactory:
    """What :func:`steerlab.serve.create_app` takes as ``engine=``: builds the :class:`VLLMEngine`."""

    def make(lm: LM, settings: ServeSettings, _tok_lock: threading.Lock, store: VectorStore) -> VLLMEngine:
        return VLLMEngine(lm, settings, store, options)

    return make


def load_shell(name_or_path: str | os.PathLike[str], blocks: str | None = None) -> LM:
    """An :class:`~steerlab.models.load.LM` with the model's tokenizer and config but no weights (on
    PyTorch's ``meta`` device): all the steerlab side of a vLLM-backed server needs.

    Example:
        >>> lm = load_shell("../shared/models/stories260K")  # doctest: +SKIP
        >>> lm.n_layers, lm.d_model, lm.device.type  # doctest: +SKIP
        (5, 64, 'meta')
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ...errors import ModelLoadError
    from ...models.load import resolve_model, wrap_model

    source, model_id = resolve_model(name_or_path)
    try:
        with hf_env.quiet():
            tokenizer = AutoTokenizer.from_pretrained(str(source))
            config = AutoConfig.from_pretrained(str(source))
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not read the tokenizer and config of {os.fspath(name_or_path)!r}: {exc}") from exc
    return wrap_model(model, tokenizer, model_id, blocks)
