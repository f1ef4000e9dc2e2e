"""The FastAPI application of ``steerlab serve``: an OpenAI-compatible API with steering.

Endpoints (all but ``/health`` and the static page ``/`` need the API key when one is set):

* ``POST /v1/completions``, ``POST /v1/chat/completions`` — OpenAI request/response shapes,
  streamed as server-sent events with ``"stream": true``; the extra field ``steering`` is a list
  of ``{"vector": NAME, "coefficient": C, "layers": [...], "positions": ...}`` (none: the plain
  model);
* ``GET /v1/models``;
* ``GET /v1/vectors``, ``GET /v1/vectors/{name}``, ``POST /v1/vectors`` (a ``.tar.gz``/``.zip``
  of a vector folder or a GGUF control vector, as a multipart ``file`` field or as the raw
  body; ``name`` and ``overwrite`` as form fields or query parameters),
  ``DELETE /v1/vectors/{name}``;
* ``GET /health`` (no key), ``GET /metrics``;
* ``GET /`` — the playground page.

Errors use OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` — all of them,
FastAPI's own (validation, 404, 405, unreadable bodies) and unexpected 500s included. Before a
request reaches an endpoint it passes the checks of :mod:`steerlab.serve.guards`: the API key,
cross-site writes and content types, and the body size (``max_request_bytes``).

Example:
    >>> import steerlab
    >>> from steerlab.serve import ServeSettings, create_app
    >>> lm = steerlab.load_model("default")  # doctest: +SKIP
    >>> app = create_app(lm, "vectors", ServeSettings(api_key="secret"))  # doctest: +SKIP
    >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import SteeringError
from ..model import LM
from ..steering import Composite, Steering, compose
from .batcher import Batcher, Delta, Done, Failed, GenParams, Job, QueueFull
from .guards import BodyLimitMiddleware, BodyTooLarge, CrossSiteMiddleware, error_response
from .schemas import ChatCompletionRequest, CompletionRequest, SteeringEntry, _GenerationFields
from .settings import ServeSettings
from .store import UploadLimits, VectorStore
from .store_errors import AlreadyExists, InvalidName, InvalidUpload, NotFound, StoreError, TooLarge, WrongModel

log = logging.getLogger("steerlab.serve")

_MULTIPART_OVERHEAD = 64 * 1024


class APIError(SteeringError):
    """An error answered in OpenAI's shape with ``status``."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """``{"error": {...}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        """This error as a response (renders whatever the message holds)."""
        return error_response(self.status, self.message, self.type, self.code, self.param, self.headers)


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          405: "invalid_request_error", 409: "conflict_error", 413: "invalid_request_error",
          415: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
          503: "server_error", 504: "timeout_error"}


def _http_error(request: Request, exc: StarletteHTTPException) -> APIError:
    """Starlette's / FastAPI's own errors (unknown path, wrong method, unreadable body) as an :class:`APIError`."""
    status = exc.status_code
    if isinstance(exc, BodyTooLarge):
        return APIError(413, f"{exc.detail} (max_request_bytes)", code="request_too_large")
    if status == 404:
        message, code = f"there is no endpoint {request.url.path!r} on this server", "not_found"
    elif status == 405:
        message, code = f"{request.method} is not allowed on {request.url.path!r}", "method_not_allowed"
    elif status == 400:
        cause = exc.__cause__
        why = ("it is nested too deeply" if isinstance(cause, RecursionError) else
               "it is not UTF-8" if isinstance(cause, UnicodeDecodeError) else str(exc.detail))
        message, code = f"the request body could not be read: {why}; send UTF-8 JSON", "invalid_body"
    else:
        message, code = str(exc.detail), None
    return APIError(status, message, _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error"),
                    code, headers=dict(exc.headers) if exc.headers else None)


_STORE_STATUS: dict[type[StoreError], int] = {InvalidName: 400, InvalidUpload: 400, NotFound: 404, AlreadyExists: 409,
                                               TooLarge: 413, WrongModel: 422, StoreError: 400}
"""The HTTP status of each store error (the most specific class in its MRO wins)."""


def _store_error(exc: StoreError, param: str | None = None) -> APIError:
    status = next(_STORE_STATUS[cls] for cls in type(exc).__mro__ if cls in _STORE_STATUS)
    return APIError(status, exc.message, _TYPES.get(status, "invalid_request_error"), exc.code, param)


class _SSEResponse(StreamingResponse):
    """A stream that always watches for the client going away, then calls ``on_close``.

    Starlette only listens for ``http.disconnect`` on older ASGI servers; here the generation
    behind a stream is stopped as soon as its client disconnects, whatever the server.
    """

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def run(func: Callable[[], Any]) -> None:
                    await func()
                    tg.cancel_scope.cancel()

                tg.start_soon(run, partial(self.stream_response, send))
                await run(partial(self.listen_for_disconnect, receive))
        except Exception as exc:
            if not _client_gone(exc):
                raise
        finally:
            self.on_close()


def _client_gone(exc: BaseException) -> bool:
    """True for an ``OSError`` (writing to a closed connection), also inside an exception group."""
    inner = getattr(exc, "exceptions", None)
    if inner is not None:
        return all(_client_gone(e) for e in inner)
    return isinstance(exc, OSError)


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _page() -> str:
    try:
        return resources.files("steerlab.serve").joinpath("static/playground.html").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):  # pragma: no cover - a wheel built without package data
        return "<!doctype html><title>steerlab</title><p>The playground page is missing from this install.</p>"


class Server:
    """State of one served model: the model, its store, the batcher and the settings."""

    def __init__(self, lm: LM, store_dir: str | os.PathLike[str], settings: ServeSettings) -> None:
        self.lm = lm
        self.settings = settings
        self.tok_lock = threading.Lock()
        self.store = VectorStore(store_dir, lm, UploadLimits(settings.max_upload_bytes, settings.max_archive_members,
                                                             settings.max_unpacked_bytes))
        self.batcher = Batcher(lm, settings, self.tok_lock)
        self.created = int(time.time())
        self.context = lm.context_length
        self.names = {lm.model_id, *settings.model_aliases}

    # ------------------------------------------------------------------ auth
    def key_error(self, headers: Headers) -> APIError | None:
        """The 401 for a request without the right API key (``None``: let it through)."""
        key = self.settings.api_key
        if key is None:
            return None
        auth = headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")
        if not token:
            return APIError(401, "this server needs an API key: send 'Authorization: Bearer KEY'",
                            "authentication_error", "missing_api_key", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(token.encode(), key.encode()):
            return APIError(401, "invalid API key", "authentication_error", "invalid_api_key",
                            headers={"WWW-Authenticate": "Bearer"})
        return None

    # ------------------------------------------------------------------ models
    def model_card(self) -> dict[str, Any]:
        """The served model in ``GET /v1/models`` shape (plus a ``steerlab`` block)."""
        return {
            "id": self.lm.model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "steerlab",
            "steerlab": {
                "n_layers": self.lm.n_layers,
                "d_model": self.lm.d_model,
                "model_type": self.lm.model_type,
                "chat_template": self.lm.has_chat_template,
                "context": self.context,
                "aliases": sorted(self.names - {self.lm.model_id}),
                "limits": self.settings.limits(),
            },
        }

    def check_model_name(self, name: str | None) -> None:
        """404 unless ``name`` is the served model (or an alias), or absent."""
        if name is not None and name not in self.names:
            raise APIError(404, f"model {name!r} is not served here; this server serves {self.lm.model_id!r}",
                           "not_found_error", "model_not_found", "model")

    # ------------------------------------------------------------------ requests
    def steering(self, entries: Sequence[SteeringEntry] | None) -> Composite | None:
        """Validate the request's ``steering`` list and build the steering (``None``: plain model)."""
        if not entries:
            return None
        s = self.settings
        if len(entries) > s.max_steering_entries:
            raise APIError(400, f"at most {s.max_steering_entries} steering entries per request",
                           code="too_many_vectors", param="steering")
        built: list[Steering] = []
        for i, e in enumerate(entries):
            param = f"steering[{i}]"
            if abs(e.coefficient) > s.max_coefficient:
                raise APIError(400, f"{param}.coefficient={e.coefficient:g} is out of range: |coefficient| must be "
                               f"<= {s.max_coefficient:g}", code="coefficient_out_of_range",
                               param=f"{param}.coefficient")
            try:
                sv = self.store.get(e.vector)
            except StoreError as exc:
                raise _store_error(exc, f"{param}.vector") from None
            if e.layers is not None:
                missing = sorted(set(e.layers) - set(sv.vector.layers))
                if missing or not e.layers:
                    raise APIError(400, f"{param}.layers: {missing or 'empty'} not in the vector (it has layers "
                                   f"{sv.vector.layers})", code="invalid_layers", param=f"{param}.layers")
            try:
                built.append(Steering(sv.vector, e.coefficient, layers=e.layers, positions=e.positions,
                                      operator=e.operator))
            except SteeringError as exc:
                raise APIError(400, f"{param}: {exc}", code="invalid_steering", param=param) from None
        return compose(*built)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens added, as :func:`steerlab.generate.encode` does)."""
        with self.tok_lock:
            return list(self.lm.tokenizer(text, add_special_tokens=True)["input_ids"])

    def render_chat(self, req: ChatCompletionRequest) -> str:
        """The messages as model text: the chat template, or one line per message without one."""
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in req.messages]
        if self.lm.has_chat_template:
            with self.tok_lock:
                text = self.lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return str(text)
        return "".join(f"{m['content']}\n" for m in messages)

    def jobs(self, req: _GenerationFields, texts: Sequence[str], loop: asyncio.AbstractEventLoop,
             events: asyncio.Queue[Any]) -> list[Job]:
        """Validate limits and build one :class:`Job` per choice (``len(texts) × n``)."""
        s = self.settings
        self.check_model_name(req.model)
        max_tokens = req.max_tokens if req.max_tokens is not None else s.default_max_tokens
        if max_tokens > s.max_tokens:
            raise APIError(400, f"max_tokens={max_tokens} is over this server's limit of {s.max_tokens}",
                           code="max_tokens_exceeded", param="max_tokens")
        if len(texts) * req.n > s.max_n:
            raise APIError(400, f"{len(texts)} prompt(s) × n={req.n} is over this server's limit of {s.max_n} "
                           "choices per request", code="too_many_choices", param="n")
        steering = self.steering(req.steering)
        params = GenParams(
            max_tokens=max_tokens,
            temperature=float(req.temperature or 0.0),
            top_p=float(req.top_p if req.top_p is not None else 1.0),
            seed=req.seed,
            stop=tuple(req.stops),
            ignore_eos=req.ignore_eos,
        )
        deadline = time.monotonic() + s.request_timeout_s
        out: list[Job] = []
        for p, text in enumerate(texts):
            ids = self.encode(text)
            if not ids:
                raise APIError(400, "the prompt is empty", code="empty_prompt", param="prompt")
            if len(ids) > s.max_prompt_tokens:
                raise APIError(400, f"the prompt has {len(ids)} tokens; this server accepts at most "
                               f"{s.max_prompt_tokens}", code="prompt_too_long", param="prompt")
            if self.context is not None and len(ids) + max_tokens > self.context:
                raise APIError(400, f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                               f"context of {self.context} tokens", code="context_length_exceeded", param="max_tokens")
            for j in range(req.n):
                seed = None if params.seed is None else params.seed + j
                jp = params if seed == params.seed else GenParams(**{**params.__dict__, "seed": seed})
                out.append(Job(ids, steering, jp, loop, events, index=p * req.n + j, deadline=deadline))
        return out

    def submit(self, jobs: list[Job]) -> None:
        """Queue ``jobs``; 429 when the queue is full."""
        try:
            self.batcher.submit(jobs)
        except QueueFull as exc:
            raise APIError(429, str(exc), "rate_limit_error", "queue_full", headers={"Retry-After": "1"}) from None

    def cancel(self, jobs: Sequence[Job]) -> None:
        """Stop every job still running (client gone, or request over)."""
        for job in jobs:
            self.batcher.cancel(job)


OPEN_PATHS = frozenset({"/", "/health"})
"""Paths that never need the API key: the liveness probe and the static playground page."""
JSON_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
"""Endpoints whose body must be ``application/json``."""
UPLOAD_PATH = "/v1/vectors"


class _KeyMiddleware:
    """Checks the API key before anything else runs (body parsing included)."""

    def __init__(self, app: ASGIApp, server: Server) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            err = self.server.key_error(Headers(scope=scope))
            if err is not None:
                self.server.batcher.metrics.count("http_401")
                await err.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _collect(server: Server, request: Request, jobs: list[Job], events: asyncio.Queue[Any]) -> list[Done]:
    """Wait for every job (non-streaming); stops them if the client goes away."""

    async def gather() -> list[Done]:
        done: dict[int, Done] = {}
        while len(done) < len(jobs):
            ev = await events.get()
            if isinstance(ev, Failed):
                raise APIError(ev.status, ev.message, _TYPES.get(ev.status, "server_error"), ev.code)
            if isinstance(ev, Done):
                done[ev.index] = ev
        return [done[i] for i in sorted(done)]

    waiter = asyncio.ensure_future(gather())
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        finished, _ = await asyncio.wait({waiter, watcher}, timeout=server.settings.request_timeout_s + 30,
                                         return_when=asyncio.FIRST_COMPLETED)
        if waiter in finished:
            return waiter.result()
        if watcher in finished:
            server.batcher.metrics.count("client_disconnected")
            raise APIError(499, "the client closed the request", code="client_closed")
        raise APIError(504, "the request ran past the server's request timeout", "timeout_error", "timeout")
    finally:
        for task in (waiter, watcher):
            task.cancel()
        server.cancel(jobs)


def _usage(done: Sequence[Done], n: int) -> dict[str, int]:
    prompt = sum({d.index // n: d.prompt_tokens for d in done}.values())
    completion = sum(d.completion_tokens for d in done)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def create_app(lm: LM, store_dir: str | os.PathLike[str], settings: ServeSettings | None = None) -> FastAPI:
    """The steering server for ``lm`` with vectors in ``store_dir``.

    The worker thread starts now (so the app also works under test clients that skip the
    lifespan); it stops on the app's shutdown, or with ``app.state.server.batcher.close()``.

    Args:
        lm: the served model.
        store_dir: the vector store directory (created if missing).
        settings: limits and the optional API key (default: :class:`ServeSettings`).
    """
    settings = settings or ServeSettings()
    server = Server(lm, store_dir, settings)
    page = _page()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        server.batcher.close()

    app = FastAPI(title="steerlab serve", version="1", lifespan=lifespan,
                  description="OpenAI-compatible completions with activation steering.")
    app.state.server = server

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        server.batcher.metrics.count(f"http_{exc.status}")
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return await _api_error(request, _http_error(request, exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback; the client gets the OpenAI shape, no internals.
        return await _api_error(request, APIError(500, "internal server error (see the server's log)",
                                                  "server_error", "server_error"))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        message = f"{param}: {msg}" if param else msg
        server.batcher.metrics.count("http_400")
        return APIError(400, message, code="invalid_value", param=param).response()

    # Middlewares run outermost first: the key, then cross-site / content-type checks, then the
    # body size (add_middleware puts each new one outside the previous ones).
    def body_limit(scope: Scope) -> int | None:
        if scope["method"] == "POST" and scope["path"] == UPLOAD_PATH:
            return None  # the upload endpoint applies max_upload_bytes itself, the same way
        return settings.max_request_bytes

    app.add_middleware(BodyLimitMiddleware, limit=body_limit,
                       on_reject=lambda: server.batcher.metrics.count("http_413"))
    app.add_middleware(CrossSiteMiddleware, json_paths=JSON_PATHS, form_paths={UPLOAD_PATH},
                       on_reject=lambda status: server.batcher.metrics.count(f"http_{status}"))
    app.add_middleware(_KeyMiddleware, server=server)

    # ------------------------------------------------------------------ open
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        """The playground page (static: it holds no data; its API calls need the key)."""
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> JSONResponse:
        """Liveness: 200 while the worker runs, else 503."""
        ok = server.batcher.alive
        return JSONResponse({"status": "ok" if ok else "unavailable"}, status_code=200 if ok else 503)

    # ------------------------------------------------------------------ info
    @app.get("/metrics")
    async def metrics() -> dict[str, Any]:
        """Requests, tokens per second, queue length, batches."""
        out = server.batcher.snapshot()
        out["model"] = lm.model_id
        out["vectors"] = len(server.store.names())
        return out

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """The served model (OpenAI list shape)."""
        return {"object": "list", "data": [server.model_card()]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str) -> dict[str, Any]:
        """One model, by id or alias."""
        server.check_model_name(model)
        return server.model_card()

    # ------------------------------------------------------------------ vectors
    @app.get("/v1/vectors")
    async def list_vectors() -> dict[str, Any]:
        """The vectors of the store: name, layers, norms, method, model."""
        return {"object": "list", "data": server.store.describe_all()}

    @app.get("/v1/vectors/{name:path}")
    async def get_vector(name: str) -> dict[str, Any]:
        """One vector's description."""
        try:
            return server.store.get(name).describe()
        except StoreError as exc:
            raise _store_error(exc, "name") from None

    @app.delete("/v1/vectors/{name:path}")
    async def delete_vector(name: str) -> dict[str, Any]:
        """Remove a vector from the store."""
        try:
            await run_in_threadpool(server.store.delete, name)
        except StoreError as exc:
            raise _store_error(exc, "name") from None
        return {"id": name, "name": name, "object": "steering_vector", "deleted": True}

    @app.post(UPLOAD_PATH, status_code=201)
    async def upload_vector(request: Request, name: str | None = None, overwrite: bool = False) -> JSONResponse:
        """Add a vector: an archive of a vector folder or a GGUF control vector."""
        limit = settings.max_upload_bytes
        ctype = request.headers.get("content-type", "")
        multipart = ctype.startswith("multipart/form-data")
        body_cap = limit + (_MULTIPART_OVERHEAD if multipart else 0)
        too_big = APIError(413, f"the upload is larger than {limit} bytes", code="upload_too_large")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > body_cap:
            raise too_big
        with tempfile.SpooledTemporaryFile(max_size=1 << 20) as spool:
            total = 0
            async for chunk in request.stream():
                total += len(chunk)
                if total > body_cap:
                    raise too_big
                spool.write(chunk)
            spool.seek(0)
            filename = request.headers.get("x-filename") or ""
            data: Any = spool
            if multipart:

                async def chunks() -> AsyncGenerator[bytes, None]:
                    while block := spool.read(1 << 16):
                        yield block

                try:
                    form = await MultiPartParser(request.headers, chunks(), max_files=1, max_fields=4).parse()
                except MultiPartException as exc:
                    raise APIError(400, f"bad multipart body: {exc.message}", code="invalid_upload") from None
                upload = form.get("file")
                if not isinstance(upload, UploadFile):
                    raise APIError(400, "send the vector as the multipart field 'file'", code="invalid_upload",
                                   param="file")
                field_name = form.get("name")
                if isinstance(field_name, str) and field_name and name is None:
                    name = field_name
                field_over = form.get("overwrite")
                if isinstance(field_over, str):
                    overwrite = overwrite or field_over.lower() in ("1", "true", "yes", "on")
                filename = upload.filename or filename
                data = upload.file
            if not name:
                stem = Path(filename).name
                for suffix in (".tar.gz", ".tgz", ".tar", ".zip", ".gguf"):
                    if stem.endswith(suffix):
                        stem = stem[: -len(suffix)]
                        break
                name = stem
            if not name:
                raise APIError(400, "give the vector a name (form field or query parameter 'name')",
                               code="invalid_vector_name", param="name")
            try:
                info = await run_in_threadpool(server.store.add_upload, name, data, overwrite)
            except StoreError as exc:
                raise _store_error(exc, "file") from None
        server.batcher.metrics.count("vectors_uploaded")
        return JSONResponse(info, status_code=201)

    # ------------------------------------------------------------------ generation
    async def generate(req: _GenerationFields, texts: list[str], request: Request, chat: bool) -> Response:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        # tokenising a long prompt takes a while: off the event loop, so other requests go on
        jobs = await run_in_threadpool(server.jobs, req, texts, loop, events)
        server.submit(jobs)
        server.batcher.metrics.count("chat_completions" if chat else "completions")
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        head = {"id": rid, "created": created, "model": lm.model_id, "system_fingerprint": None}
        if not req.stream:
            done = await _collect(server, request, jobs, events)
            usage = _usage(done, req.n)
            if chat:
                choices = [{"index": d.index, "message": {"role": "assistant", "content": d.text}, "logprobs": None,
                            "finish_reason": d.finish_reason} for d in done]
                return JSONResponse({**head, "object": "chat.completion", "choices": choices, "usage": usage})
            choices = [{"index": d.index, "text": d.text, "logprobs": None, "finish_reason": d.finish_reason}
                       for d in done]
            return JSONResponse({**head, "object": "text_completion", "choices": choices, "usage": usage})

        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(index: int, text: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {} if text is None else {"content": text}
                if role:
                    delta = {"role": "assistant", "content": text or ""}
                choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
            out = {**head, "object": obj, "choices": [choice]}
            if include_usage:
                out["usage"] = None
            return out

        async def stream() -> AsyncIterator[str]:
            finished: list[Done] = []
            if chat:
                for job in jobs:
                    yield _sse(chunk(job.index, "", None, role=True))
            while len(finished) < len(jobs):
                ev = await events.get()
                if isinstance(ev, Delta):
                    yield _sse(chunk(ev.index, ev.text, None))
                elif isinstance(ev, Done):
                    finished.append(ev)
                    yield _sse(chunk(ev.index, None, ev.finish_reason))
                elif isinstance(ev, Failed):
                    server.batcher.metrics.count(f"http_{ev.status}")
                    err = APIError(ev.status, ev.message, _TYPES.get(ev.status, "server_error"), ev.code)
                    yield _sse(err.body())
                    break
            if include_usage and len(finished) == len(jobs):
                yield _sse({**head, "object": obj, "choices": [], "usage": _usage(finished, req.n)})
            yield "data: [DONE]\n\n"

        return _SSEResponse(stream(), on_close=lambda: server.cancel(jobs))

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Response:
        """OpenAI completions, with optional ``steering``."""
        return await generate(req, req.prompts, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Response:
        """OpenAI chat completions, with optional ``steering``."""
        return await generate(req, [await run_in_threadpool(server.render_chat, req)], request, chat=True)

    return app
