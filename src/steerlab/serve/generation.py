"""One (chat) completion request, from its validated body to its response: checked against the
server's limits, split into one :class:`~steerlab.serve.jobs.Job` per choice, queued, then
answered whole or streamed as server-sent events.

Shared by the completions and chat completions routes (:mod:`steerlab.serve.routes`).

Example:
    >>> response = await generate(server, req, req.prompts, request, chat=False)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from ..core.condition import Condition
from ..core.operators import get_operator
from ..core.steering import Composite, Steering, compose
from ..errors import SteeringError
from .http_errors import APIError, domain_errors, from_failed
from .jobs import Delta, Done, Event, Failed, GenParams, Job
from .schemas import SSE_DONE, Reply, SteeringEntry, _GenerationFields, error_body, sse
from .settings import KL_CAP_SERVED
from .state import Server
from .store_errors import NotFound

log = logging.getLogger("steerlab.serve")


# ---------------------------------------------------------------------------- request -> jobs
def _steering_entry(server: Server, i: int, e: SteeringEntry) -> Steering:
    """Entry ``i`` of the request's ``steering`` list, checked against the limits and the store."""
    param = f"steering[{i}]"
    lim = server.limits
    with domain_errors(f"{param}.coefficient"):
        lim.check_coefficient(e.coefficient, f"{param}.coefficient")
    with domain_errors(f"{param}.vector"):
        sv = server.store.get(e.vector)
    layers = None
    if e.layers is not None:  # a set of the model's layers (each once, at most n_layers) within the vector's
        with domain_errors(f"{param}.layers", "invalid_layers"):
            layers = lim.layer_list(e.layers, f"{param}.layers")
        missing = sorted(set(layers) - set(sv.vector.layers))
        if missing:
            raise APIError(
                400,
                f"{param}.layers: {missing} not in the vector (it has layers {sv.vector.layers})",
                code="invalid_layers",
                param=f"{param}.layers",
            )
    condition = None if e.condition is None else _condition(server, param, e.condition, e.threshold)
    with domain_errors(f"{param}.kl_cap", "invalid_kl_cap"):
        kl_cap = lim.check_kl_cap(e.kl_cap, f"{param}.kl_cap")
    if (
        kl_cap is not None and not KL_CAP_SERVED
    ):  # no engine of the server runs the shadow rows (steerlab.runtime.kl_cap)
        raise APIError(
            400,
            f"{param}.kl_cap: this server's engines decode one row per request and cannot run the unsteered "
            "shadow rows a KL cap needs; use `steerlab generate --kl-cap` or steerlab.generate",
            code="kl_cap_unsupported",
            param=f"{param}.kl_cap",
        )
    try:
        operator = get_operator(e.operator).with_parameters(e.operator_parameters or {})
        return Steering(
            sv.vector, e.coefficient, layers=layers, positions=e.positions, operator=operator, condition=condition
        )
    except SteeringError as exc:
        raise APIError(400, f"{param}: {exc}", code="invalid_steering", param=param) from None


def _condition(server: Server, param: str, name: str, threshold: float | None) -> Condition:
    """The store's condition ``name`` (CAST) with its saved threshold or ``threshold``."""
    where = f"{param}.condition"
    with domain_errors(where):
        try:
            stored = server.store.get(name)
        except NotFound:
            raise APIError(
                404,
                f"{where}: no condition named {name!r} in the store (upload a folder saved by "
                "`steerlab condition`; GET /v1/vectors lists them)",
                "not_found_error",
                "condition_not_found",
                where,
            ) from None
    try:
        return stored.condition(threshold)
    except SteeringError as exc:
        raise APIError(400, f"{where}: {exc}", code="invalid_condition", param=where) from None


def build_steering(server: Server, entries: Sequence[SteeringEntry] | None) -> Composite | None:
    """Validate the request's ``steering`` list and build the steering (``None``: plain model)."""
    if not entries:
        return None
    with domain_errors("steering"):
        server.limits.check_count(len(entries), "max_steering_entries", "steering entries")
    return compose(*(_steering_entry(server, i, e) for i, e in enumerate(entries)))


def _gen_params(req: _GenerationFields, server: Server, prompts: int) -> GenParams:
    """The request's sampling options, its ``max_tokens`` and ``n`` checked against the limits
    (and against the queue: a request that could never fit in it is a 400, not a 429)."""
    s, lim = server.settings, server.limits
    max_tokens = req.max_tokens if req.max_tokens is not None else s.default_max_tokens
    if max_tokens > lim.max_new_tokens:
        raise APIError(
            400,
            f"max_tokens={max_tokens} is over this server's limit of {lim.max_new_tokens} (max_new_tokens)",
            code="max_tokens_exceeded",
            param="max_tokens",
        )
    choices = prompts * req.n
    if choices > lim.max_choices:
        raise APIError(
            400,
            f"{prompts} prompt(s) × n={req.n} is over this server's limit of {lim.max_choices} "
            "choices per request (max_choices)",
            code="too_many_choices",
            param="n",
        )
    if choices > s.max_queue:
        raise APIError(
            400,
            f"{prompts} prompt(s) × n={req.n} = {choices} choices can never fit in this server's "
            f"queue of {s.max_queue} (max_queue): send fewer prompts or a smaller n",
            code="too_many_choices",
            param="n",
        )
    return GenParams(
        max_tokens=max_tokens,
        temperature=float(req.temperature or 0.0),
        top_p=float(req.top_p if req.top_p is not None else 1.0),
        seed=req.seed,
        stop=tuple(req.stops),
        ignore_eos=req.ignore_eos,
    )


def _prompt_ids(server: Server, text: str, max_tokens: int) -> list[int]:
    """The prompt's token ids, checked against ``max_text_chars`` (before tokenising),
    ``max_prompt_tokens`` and the model's context."""
    with domain_errors("prompt"):
        server.limits.check_text(text, "the prompt")
    ids = server.encode(text)
    if not ids:
        raise APIError(400, "the prompt is empty", code="empty_prompt", param="prompt")
    param = "max_tokens" if len(ids) <= server.limits.max_prompt_tokens else "prompt"
    with domain_errors(param):
        server.limits.check_generation(len(ids), max_tokens, "the prompt")
    return ids


def build_jobs(
    server: Server,
    req: _GenerationFields,
    texts: Sequence[str],
    loop: asyncio.AbstractEventLoop,
    events: asyncio.Queue[Event],
) -> list[Job]:
    """Validate limits and build one :class:`Job` per choice (``len(texts) × n``; seeds ``seed + j``)."""
    server.check_model_name(req.model)
    params = _gen_params(req, server, len(texts))
    steering = build_steering(server, req.steering)
    deadline = time.monotonic() + server.settings.request_timeout_s
    vectors = tuple(e.vector for e in req.steering or ())
    out: list[Job] = []
    for p, text in enumerate(texts):
        ids = _prompt_ids(server, text, params.max_tokens)
        for j in range(req.n):
            seed = None if params.seed is None else params.seed + j
            jp = params if seed == params.seed else GenParams(**{**params.__dict__, "seed": seed})
            out.append(Job(ids, steering, jp, loop, events, index=p * req.n + j, deadline=deadline, vectors=vectors))
    return out


# ---------------------------------------------------------------------------- jobs -> response
async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _gather(jobs: Sequence[Job], events: asyncio.Queue[Event]) -> list[Done]:
    done: dict[int, Done] = {}
    while len(done) < len(jobs):
        ev = await events.get()
        if isinstance(ev, Failed):
            raise from_failed(ev)
        if isinstance(ev, Done):
            done[ev.index] = ev
    return [done[i] for i in sorted(done)]


async def collect(server: Server, request: Request, jobs: list[Job], events: asyncio.Queue[Event]) -> list[Done]:
    """Wait for every job (non-streaming); stops them if the client goes away."""
    waiter = asyncio.ensure_future(_gather(jobs, events))
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        finished, _ = await asyncio.wait(
            {waiter, watcher}, timeout=server.settings.request_timeout_s + 30, return_when=asyncio.FIRST_COMPLETED
        )
        if waiter in finished:
            return waiter.result()
        if watcher in finished:
            server.count("client_disconnected")
            raise APIError(499, "the client closed the request", code="client_closed")
        raise APIError(504, "the request ran past the server's request timeout", "timeout_error", "timeout")
    finally:
        for task in (waiter, watcher):
            task.cancel()
        server.cancel(jobs)


async def stream(
    server: Server, reply: Reply, jobs: Sequence[Job], events: asyncio.Queue[Event], n: int
) -> AsyncIterator[str]:
    """The jobs' events as server-sent events, ending with ``[DONE]`` (a failure: one error event
    in OpenAI's shape; an unexpected exception too, as a 500 would be)."""
    finished: list[Done] = []
    try:
        if reply.chat:
            for job in jobs:
                yield sse(reply.chunk(job.index, "", None, role=True))
        while len(finished) < len(jobs):
            ev = await events.get()
            if isinstance(ev, Delta):
                yield sse(reply.chunk(ev.index, ev.text, None))
            elif isinstance(ev, Done):
                finished.append(ev)
                yield sse(reply.chunk(ev.index, None, ev.finish_reason))
            elif isinstance(ev, Failed):
                server.count(f"http_{ev.status}")
                yield sse(from_failed(ev).body())
                break
        if reply.include_usage and len(finished) == len(jobs):
            yield sse(reply.usage_chunk(finished, n))
    except Exception:  # the status is sent already: the error goes in the stream, as any failure's
        log.exception("stream failed")
        server.count("http_500")
        yield sse(error_body("internal server error (see the server's log)", "server_error", "server_error"))
    yield SSE_DONE


class SSEResponse(StreamingResponse):
    """A stream that always watches for the client going away, then calls ``on_close``.

    Starlette only listens for ``http.disconnect`` on older ASGI servers; here the generation
    behind a stream is stopped as soon as its client disconnects, whatever the server.
    """

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(
            content, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def run(func: Callable[[], Awaitable[None]]) -> None:
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


async def generate(server: Server, req: _GenerationFields, texts: list[str], request: Request, chat: bool) -> Response:
    """Answer a (chat) completion request for the prompt ``texts``: JSON, or a stream."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event] = asyncio.Queue()
    # tokenising a long prompt takes a while: off the event loop, so other requests go on
    jobs = await run_in_threadpool(build_jobs, server, req, texts, loop, events)
    with domain_errors():
        server.engine.submit(jobs)
    server.count("chat_completions" if chat else "completions")
    reply = Reply(chat, server.lm.model_id, include_usage=bool(req.stream_options and req.stream_options.include_usage))
    if not req.stream:
        done = await collect(server, request, jobs, events)
        return JSONResponse(reply.body(done, req.n))
    return SSEResponse(stream(server, reply, jobs, events, req.n), on_close=lambda: server.cancel(jobs))
