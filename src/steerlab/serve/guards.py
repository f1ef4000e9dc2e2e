"""Checks every request passes before the API sees it: API key, body size, cross-site writes, content type.

Pure ASGI middlewares (no body buffering; each a :class:`Gate`: a check that may answer the request
itself, with a hook counting each refusal), plus :func:`error_response`, the one place that
renders an error in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.

* :class:`APIKeyMiddleware` — every path but a few open ones needs the key (401 otherwise),
  checked before anything else runs, body parsing included.
* :class:`BodyLimitMiddleware` — a request body larger than the limit is refused with 413:
  from its ``Content-Length`` before a byte is read, or (chunked / no length) as soon as the
  bytes read pass the limit.
* :class:`CrossSiteMiddleware` — a state-changing request (``POST``, ``PUT``, ``PATCH``,
  ``DELETE``) sent by a browser on behalf of another site is refused with 403, and such a
  request must carry a content type a cross-site page cannot send without a CORS preflight
  (415 otherwise). See :func:`cross_site` for the rule and ``docs/serve.md`` (*Cross-site
  requests*) for why both checks are needed.

Example:
    >>> from starlette.datastructures import Headers
    >>> cross_site(Headers({"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"}))
    >>> cross_site(Headers({"host": "127.0.0.1:8000", "origin": "https://evil.example"}))
    "Origin 'https://evil.example' is not this server (127.0.0.1:8000)"
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .schemas import error_body

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
"""Methods that change state: the ones checked for cross-site use."""

SIMPLE_CONTENT_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})
"""Content types a page of another site may POST without a CORS preflight (the Fetch standard's
CORS-safelisted request header values); a request without a content type is "simple" too."""

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class _SafeJSONResponse(JSONResponse):
    """A JSON response that renders whatever strings it holds (lone surrogates included)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_response(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error in OpenAI's shape, safe to render whatever the message holds.

    Example:
        >>> error_response(413, "too large", code="request_too_large").body
        b'{"error":{"message":"too large","type":"invalid_request_error","param":null,"code":"request_too_large"}}'
    """
    return _SafeJSONResponse(error_body(message, type_, code, param), status_code=status, headers=headers)


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a body passes its limit (an ``HTTPException``, so that
    FastAPI's body parsing lets it through instead of turning it into a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than this server's limit of {limit} bytes")
        self.limit = limit


def too_large_response(limit: int) -> JSONResponse:
    """The 413 of :class:`BodyLimitMiddleware`."""
    return error_response(
        413,
        f"the request body is larger than this server's limit of {limit} bytes (max_request_bytes)",
        code="request_too_large",
    )


class Gate:
    """A middleware that answers some requests itself (:meth:`check` returns the refusal) and
    passes the others on; ``on_reject`` is called with the status of each refusal (metrics)."""

    def __init__(self, app: ASGIApp, on_reject: Callable[[int], None] = lambda status: None) -> None:
        self.app = app
        self.on_reject = on_reject

    def check(self, scope: Scope) -> JSONResponse | None:  # pragma: no cover - abstract
        """The refusal of this (HTTP) request, or ``None`` to pass it on."""
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self.check(scope) if scope["type"] == "http" else None
        if refusal is None:
            await self.forward(scope, receive, send)
            return
        self.on_reject(refusal.status_code)
        await refusal(scope, receive, send)

    async def forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass a request that was not refused on to the app."""
        await self.app(scope, receive, send)


class BodyLimitMiddleware(Gate):
    """Refuse request bodies over ``limit(scope)`` bytes with 413 (``None``: no limit here).

    ``Content-Length`` over the limit is refused before anything is read; otherwise ``receive``
    counts the bytes and raises :class:`BodyTooLarge` as soon as they pass the limit (the app's
    handler for ``HTTPException`` answers it; if it escapes, the 413 is sent here).
    """

    def __init__(
        self, app: ASGIApp, limit: Callable[[Scope], int | None], on_reject: Callable[[int], None] = lambda status: None
    ) -> None:
        super().__init__(app, on_reject)
        self.limit = limit

    def check(self, scope: Scope) -> JSONResponse | None:
        """The 413 of a ``Content-Length`` over the limit (nothing read yet), or ``None``."""
        cap = self.limit(scope)
        length = Headers(scope=scope).get("content-length")
        if cap is not None and length is not None and length.strip().isdigit() and int(length) > cap:
            return too_large_response(cap)
        return None

    async def forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app with a ``receive`` that counts the body's bytes and stops past the limit."""
        if scope["type"] != "http" or (cap := self.limit(scope)) is None:
            await self.app(scope, receive, send)
            return
        seen = 0
        started = False

        async def capped_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise BodyTooLarge(cap)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, capped_receive, watched_send)
        except BodyTooLarge:
            if started:
                raise
            self.on_reject(413)
            await too_large_response(cap)(scope, receive, send)


def _origin_host(origin: str) -> str | None:
    """``host[:port]`` of an ``Origin`` header, the port dropped when it is the scheme's default."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return host if port is None or port == _DEFAULT_PORTS.get(parts.scheme) else f"{host}:{port}"


def _host(host: str, scheme_of_origin: str) -> str:
    host = host.strip().lower()
    default = _DEFAULT_PORTS.get(scheme_of_origin)
    return host[: -len(f":{default}")] if default and host.endswith(f":{default}") else host


def cross_site(headers: Headers) -> str | None:
    """Why a request comes from another site's page (``None``: it does not, or it is no browser's).

    The rule (as Go's ``net/http.CrossOriginProtection``): ``Sec-Fetch-Site``, sent by every
    current browser, must be ``same-origin`` or ``none`` (typed by the user); without it, an
    ``Origin`` header must name this server's own host (the ``Host`` header). A request with
    neither header is not from a (current) browser — curl, SDKs, scripts — and passes.
    """
    site = headers.get("sec-fetch-site")
    if site is not None:
        return None if site.strip().lower() in ("same-origin", "none") else f"Sec-Fetch-Site is {site!r}"
    origin = headers.get("origin")
    if origin is None:
        return None
    host = headers.get("host", "")
    mine = _origin_host(origin.strip().lower())
    if mine is None or mine != _host(host, urlsplit(origin.strip().lower()).scheme):
        return f"Origin {origin!r} is not this server ({host})"
    return None


def media_type(headers: Headers) -> str:
    """The request's content type without parameters, lower-case (``""`` when absent)."""
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


class CrossSiteMiddleware(Gate):
    """Refuse state-changing requests from other sites' pages (403) and "simple" bodies (415).

    Args:
        app: the application.
        json_paths: paths whose body must be JSON (``application/json`` or ``*+json``).
        form_paths: paths that also take ``multipart/form-data`` (a simple type: only the
            ``Origin`` / ``Sec-Fetch-Site`` check protects them) or any non-simple type.
        on_reject: called with the status of each refusal (metrics).
    """

    def __init__(
        self,
        app: ASGIApp,
        json_paths: Collection[str],
        form_paths: Collection[str],
        on_reject: Callable[[int], None] = lambda status: None,
    ) -> None:
        super().__init__(app, on_reject)
        self.json_paths = frozenset(json_paths)
        self.form_paths = frozenset(form_paths)

    def check(self, scope: Scope) -> JSONResponse | None:
        """The refusal for this request, or ``None``."""
        if scope["method"] not in UNSAFE_METHODS:
            return None
        headers = Headers(scope=scope)
        why = cross_site(headers)
        if why is not None:
            return error_response(
                403,
                f"cross-site request refused: {why}. This server takes state-changing "
                "requests only from its own pages and from non-browser clients",
                "permission_error",
                "cross_site_request",
            )
        if scope["method"] != "POST":
            return None  # only POST can be a "simple" cross-site request; the others have no body here
        kind = media_type(headers)
        path = scope["path"]
        if path in self.json_paths and not (kind == "application/json" or kind.endswith("+json")):
            return error_response(
                415,
                f"send the request body as JSON with 'Content-Type: application/json' "
                f"(got {kind or 'no content type'!r})",
                code="unsupported_media_type",
            )
        if path in self.form_paths and (not kind or (kind in SIMPLE_CONTENT_TYPES and kind != "multipart/form-data")):
            return error_response(
                415,
                "send the file as the multipart field 'file' (curl -F file=@x.tar.gz) or as "
                "the raw body with 'Content-Type: application/octet-stream' (got "
                f"{kind or 'no content type'!r})",
                code="unsupported_media_type",
            )
        return None


def key_refusal(headers: Headers, key: str | None) -> JSONResponse | None:
    """The 401 for a request without the right API key (``None``: let it through).

    The key comes as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``, compared in constant time.

    Example:
        >>> key_refusal(Headers({"authorization": "Bearer secret"}), "secret") is None
        True
        >>> key_refusal(Headers({}), "secret").status_code
        401
    """
    if key is None:
        return None
    auth = headers.get("authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")
    challenge = {"WWW-Authenticate": "Bearer"}
    if not token:
        return error_response(
            401,
            "this server needs an API key: send 'Authorization: Bearer KEY'",
            "authentication_error",
            "missing_api_key",
            headers=challenge,
        )
    if not hmac.compare_digest(token.encode(), key.encode()):
        return error_response(401, "invalid API key", "authentication_error", "invalid_api_key", headers=challenge)
    return None


class APIKeyMiddleware(Gate):
    """Refuse requests without the API ``key`` (401), except on ``open_paths``; no key: all pass."""

    def __init__(
        self,
        app: ASGIApp,
        key: str | None,
        open_paths: Collection[str],
        on_reject: Callable[[int], None] = lambda status: None,
    ) -> None:
        super().__init__(app, on_reject)
        self.key = key
        self.open_paths = frozenset(open_paths)

    def check(self, scope: Scope) -> JSONResponse | None:
        """The 401 of a request without the key on a closed path, or ``None``."""
        if scope["path"] in self.open_paths:
            return None
        return key_refusal(Headers(scope=scope), self.key)
