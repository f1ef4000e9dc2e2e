"""How the vLLM engine reaches vLLM: a vLLM server over HTTP (:class:`HTTPBackend`) or a
``vllm.LLM`` in this process (:class:`InProcessBackend`).

Both take one job (prompt token ids, sampling options, the plugin's ``vllm_xargs``) and yield
:class:`Piece` s: new text, then the finish reason and the number of generated tokens.

* HTTP: ``POST {url}/v1/completions`` with the prompt as token ids (the same ids the
  transformers engine would run: steerlab renders chat templates and tokenizes), ``stream: true``
  and ``stream_options.include_usage``, the steering in ``vllm_xargs``. vLLM's server-sent events
  are read as they come.
* In process: ``LLM.generate`` on the jobs waiting together (vLLM batches them), steering in
  ``SamplingParams.extra_args``; the text arrives in one piece per job.

A steered request also carries a ``cache_salt`` derived from its steering (:func:`cache_salt`):
vLLM's prefix cache would otherwise hand the KV blocks of a steered prompt to an unsteered
request with the same prefix (and the reverse).

Example:
    >>> backend = HTTPBackend("http://127.0.0.1:8001")  # doctest: +SKIP
    >>> async for piece in backend.stream(job, {"hotwire": "[...]"}):  # doctest: +SKIP
    ...     print(piece.text, end="")
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ...errors import SteeringError
from ..jobs import GenParams, Job

if TYPE_CHECKING:
    import httpx


@dataclass(frozen=True)
class Piece:
    """Part of a generation: new ``text``; the last one has ``finish_reason`` (and ``tokens``,
    the generated token count, when the backend reports it)."""

    text: str = ""
    finish_reason: str | None = None
    tokens: int | None = None


class BackendError(SteeringError):
    """vLLM refused or failed a request; ``status`` is the HTTP status to report."""

    def __init__(self, message: str, status: int = 502, code: str = "vllm_error") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Backend(Protocol):
    """What the engine needs from a way to reach vLLM."""

    description: str

    def stream(self, job: Job, xargs: dict[str, str]) -> AsyncIterator[Piece]:
        """Generate ``job`` with these ``vllm_xargs``."""
        ...

    async def aclose(self) -> None:
        """Release connections / the engine."""
        ...


def cache_salt(xargs: dict[str, str]) -> str | None:
    """vLLM's ``cache_salt`` for a steered request: a hash of its steering, so that its KV blocks
    are shared only with requests steered the same way — never read by unsteered ones, and never
    taken from them (``None``: unsteered, the ordinary prefix cache).

    Example:
        >>> cache_salt({}) is None, cache_salt({"hotwire": "[]"}) == cache_salt({"hotwire": "[]"})
        (True, True)
    """
    if not xargs:
        return None
    return "steerlab-" + hashlib.sha256(json.dumps(xargs, sort_keys=True).encode()).hexdigest()


def sampling_fields(params: GenParams) -> dict[str, Any]:
    """The OpenAI / vLLM sampling fields of a job (shared by both backends).

    Example:
        >>> sampling_fields(GenParams(max_tokens=8, stop=("\\n",)))
        {'max_tokens': 8, 'temperature': 0.0, 'top_p': 1.0, 'ignore_eos': False, 'stop': ['\\n']}
    """
    out: dict[str, Any] = {
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "ignore_eos": params.ignore_eos,
    }
    if params.stop:
        out["stop"] = list(params.stop)
    if params.seed is not None:
        out["seed"] = params.seed
    return out


# ----------------------------------------------------------------------------- HTTP
class HTTPBackend:
    """A vLLM OpenAI-compatible server (``vllm serve``) with a steering plugin installed.

    Args:
        url: the server's base URL (``http://host:port``; a trailing ``/v1`` is accepted).
        model: the served model name (default: the first of ``GET /v1/models``).
        api_key: vLLM's ``--api-key``, if it was started with one.
        transport: an ``httpx`` transport (tests use ``httpx.ASGITransport``).
    """

    def __init__(
        self,
        url: str,
        model: str | None = None,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        import httpx

        base = url.rstrip("/")
        self.url = base[: -len("/v1")] if base.endswith("/v1") else base
        self.description = self.url
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            transport=transport,
            timeout=httpx.Timeout(None, connect=connect_timeout),
        )
        self._errors: tuple[type[BaseException], ...] = (httpx.HTTPError,)

    async def _model(self) -> str:
        if self.model is None:
            resp = await self._client.get("/v1/models")
            if resp.status_code != 200:
                raise BackendError(f"GET {self.url}/v1/models answered {resp.status_code}: {resp.text[:300]}")
            data = resp.json().get("data") or []
            if not data:
                raise BackendError(f"the vLLM server at {self.url} serves no model")
            self.model = str(data[0]["id"])
        return self.model

    async def stream(self, job: Job, xargs: dict[str, str]) -> AsyncIterator[Piece]:
        """``POST /v1/completions`` (streamed) and yield its text as it comes."""
        try:
            body: dict[str, Any] = {
                "model": await self._model(),
                "prompt": list(job.prompt_ids),
                "stream": True,
                "stream_options": {"include_usage": True},
                **sampling_fields(job.params),
            }
            if xargs:
                body["vllm_xargs"] = xargs
                body["cache_salt"] = cache_salt(xargs)
            async with self._client.stream("POST", "/v1/completions", json=body) as resp:
                if resp.status_code != 200:
                    raise _refusal(resp.status_code, (await resp.aread()).decode("utf-8", "replace"))
                async for line in resp.aiter_lines():
                    done, pieces = _parse_event(line)
                    for piece in pieces:
                        yield piece
                    if done:
                        return
        except self._errors as exc:
            raise BackendError(
                f"the vLLM server at {self.url} cannot be reached or broke off ({exc!r})", 502, "vllm_unreachable"
            ) from exc

    async def aclose(self) -> None:
        await self._client.aclose()


def _refusal(status: int, text: str) -> BackendError:
    """vLLM's error answer (OpenAI-shaped) as a :class:`BackendError` keeping a 4xx status."""
    try:
        message = str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = text[:500]
    return BackendError(
        f"vLLM refused the request: {message}",
        status if 400 <= status < 500 else 502,
        "vllm_refused" if 400 <= status < 500 else "vllm_error",
    )


def _parse_event(line: str) -> tuple[bool, list[Piece]]:
    """One server-sent-event line of vLLM's stream: ``(finished, pieces)``."""
    if not line.startswith("data:"):
        return False, []
    data = line[5:].strip()
    if data == "[DONE]":
        return True, []
    chunk = json.loads(data)
    if "error" in chunk:
        err = chunk["error"]
        raise BackendError(f"vLLM failed the request: {err.get('message', err) if isinstance(err, dict) else err}")
    pieces = [Piece(c.get("text") or "", c.get("finish_reason")) for c in chunk.get("choices") or []]
    usage = chunk.get("usage")
    if usage:
        pieces.append(Piece(tokens=int(usage.get("completion_tokens", 0))))
    return False, pieces


# ----------------------------------------------------------------------------- in process
@dataclass(eq=False)
class _Pending:
    job: Job
    xargs: dict[str, str]
    done: asyncio.Future[Piece]


class InProcessBackend:
    """A ``vllm.LLM`` in this process (its steering plugin installed in the same environment).

    Jobs waiting together go to one ``LLM.generate`` call (at most ``max_batch``), run in a
    thread; each job's text comes back whole.

    Args:
        llm: the ``vllm.LLM`` (or an object with its ``generate(prompts, sampling_params, use_tqdm)``).
        sampling_params: ``vllm.SamplingParams`` (or a stand-in taking the same keywords).
        max_batch: the most jobs per ``generate`` call.
    """

    description = "vllm.LLM (in process)"

    def __init__(self, llm: Any, sampling_params: Callable[..., Any], max_batch: int = 16) -> None:
        self.llm = llm
        self.sampling_params = sampling_params
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task[None] | None = None

    @classmethod
    def load(cls, model: str, max_batch: int = 16, **llm_kwargs: Any) -> InProcessBackend:
        """Start ``vllm.LLM(model, **llm_kwargs)``.

        Raises:
            BackendError: vLLM is not installed here.
        """
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise BackendError(
                "vLLM is not installed in this environment: pip install vllm (and a steering "
                "plugin), or point --vllm-url at a running vLLM server",
                503,
            ) from exc
        return cls(LLM(model=model, **llm_kwargs), SamplingParams, max_batch)

    async def stream(self, job: Job, xargs: dict[str, str]) -> AsyncIterator[Piece]:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.ensure_future(self._work())
        done: asyncio.Future[Piece] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(job, xargs, done))
        yield await done

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [p for p in batch if not p.done.cancelled()]
            if not live:
                continue
            try:
                outs = await asyncio.to_thread(self._generate, live)
            except Exception as exc:  # the whole call failed: every job of it fails
                for p in live:
                    if not p.done.done():
                        p.done.set_exception(BackendError(f"vllm.LLM.generate failed: {exc!r}"))
                continue
            for p, piece in zip(live, outs):
                if not p.done.done():
                    p.done.set_result(piece)

    def _generate(self, batch: Sequence[_Pending]) -> list[Piece]:
        prompts = [_tokens_prompt(p) for p in batch]
        params = [
            self.sampling_params(**sampling_fields(p.job.params), extra_args=dict(p.xargs) or None) for p in batch
        ]
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        return [
            Piece(o.outputs[0].text, o.outputs[0].finish_reason or "length", len(o.outputs[0].token_ids)) for o in outs
        ]

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()


def _tokens_prompt(p: _Pending) -> dict[str, Any]:
    """vLLM's ``TokensPrompt`` of a job (with its ``cache_salt`` when steered)."""
    out: dict[str, Any] = {"prompt_token_ids": list(p.job.prompt_ids)}
    salt = cache_salt(p.xargs)
    if salt is not None:
        out["cache_salt"] = salt
    return out
