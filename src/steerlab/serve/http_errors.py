"""Errors as HTTP answers: :class:`APIError`, the one table from domain errors to statuses, and
the app's exception handlers (every error in OpenAI's shape, FastAPI's own and 500s included).

The store and the engines raise domain errors (:mod:`.store_errors`, :class:`.engines.base.QueueFull`)
and know nothing of HTTP; :data:`STATUS` is the only place that gives them a status.

Example:
    >>> from steerlab.serve.store_errors import NotFound
    >>> err = from_domain(NotFound("no vector named 'x'"), param="name")
    >>> err.status, err.type, err.code
    (404, 'not_found_error', 'vector_not_found')
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import SteeringError
from ..limits import LimitError
from .engines.base import QueueFull
from .guards import BodyTooLarge, error_response
from .jobs import Failed
from .schemas import error_body
from .store_errors import AlreadyExists, InvalidName, InvalidUpload, NotFound, StoreError, TooLarge, WrongModel

STATUS: dict[type[SteeringError], int] = {
    InvalidName: 400,
    InvalidUpload: 400,
    NotFound: 404,
    AlreadyExists: 409,
    TooLarge: 413,
    WrongModel: 422,
    StoreError: 400,
    QueueFull: 429,
}
"""The HTTP status of each domain error (the most specific class in an error's MRO wins)."""

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}
"""OpenAI's ``error.type`` of each status."""


def error_type(status: int) -> str:
    """OpenAI's ``error.type`` for ``status`` (``server_error`` for unlisted 5xx)."""
    return ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


@dataclass(eq=False)
class APIError(SteeringError):
    """An error answered in OpenAI's shape with ``status``.

    Example:
        >>> APIError(400, "the prompt is empty", code="empty_prompt", param="prompt").body()["error"]["code"]
        'empty_prompt'
    """

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        """``{"error": {...}}``."""
        return error_body(self.message, self.type, self.code, self.param)

    def response(self) -> JSONResponse:
        """This error as a response (renders whatever the message holds)."""
        return error_response(self.status, self.message, self.type, self.code, self.param, self.headers)


LIMIT_CODES: dict[str | None, str] = {
    None: "invalid_value",
    "max_coefficient": "coefficient_out_of_range",
    "max_new_tokens": "max_tokens_exceeded",
    "max_prompt_tokens": "prompt_too_long",
    "context_length": "context_length_exceeded",
    "max_choices": "too_many_choices",
    "max_steering_entries": "too_many_vectors",
    "n_layers": "invalid_layers",
    "max_request_bytes": "request_too_large",
    "max_upload_bytes": "upload_too_large",
    "max_unpacked_bytes": "upload_too_large",
}
"""OpenAI-style ``error.code`` of a :class:`~steerlab.limits.LimitError` by its limit (others:
``limit_exceeded``)."""


def from_limit(exc: LimitError, param: str | None = None, code: str | None = None) -> APIError:
    """The :class:`APIError` of a :class:`~steerlab.limits.LimitError`: its own status (400, 413
    for bytes), a code from :data:`LIMIT_CODES` unless ``code`` is given, its message (naming the limit).

    Example:
        >>> err = from_limit(LimitError("3 tokens: more than the limit of 2 (max_score_tokens)", "max_score_tokens"))
        >>> err.status, err.code
        (400, 'limit_exceeded')
    """
    code = code or LIMIT_CODES.get(exc.limit, "limit_exceeded")
    return APIError(exc.status, str(exc), error_type(exc.status), code, param)


def from_domain(exc: StoreError | QueueFull | LimitError, param: str | None = None) -> APIError:
    """The :class:`APIError` of a domain error, its status from :data:`STATUS` (a limit's: its own)."""
    if isinstance(exc, LimitError):
        return from_limit(exc, param)
    status = next(STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS)
    headers = {"Retry-After": "1"} if status == 429 else None
    return APIError(status, str(exc), error_type(status), getattr(exc, "code", None), param, headers)


@contextmanager
def domain_errors(param: str | None = None, code: str | None = None) -> Iterator[None]:
    """Turn the store's, the queue's and the limits' errors raised in the block into :class:`APIError`
    (``param``; ``code`` overrides a limit's code)."""
    try:
        yield
    except LimitError as exc:
        raise from_limit(exc, param, code) from None
    except (StoreError, QueueFull) as exc:
        raise from_domain(exc, param) from None


def from_http(request: Request, exc: StarletteHTTPException) -> APIError:
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
        why = (
            "it is nested too deeply"
            if isinstance(cause, RecursionError)
            else "it is not UTF-8"
            if isinstance(cause, UnicodeDecodeError)
            else str(exc.detail)
        )
        message, code = f"the request body could not be read: {why}; send UTF-8 JSON", "invalid_body"
    else:
        message, code = str(exc.detail), None
    return APIError(status, message, error_type(status), code, headers=dict(exc.headers) if exc.headers else None)


def from_validation(exc: RequestValidationError) -> APIError:
    """A request that does not match its schema, as a 400 naming the first bad field."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    message = f"{param}: {msg}" if param else msg
    return APIError(400, message, code="invalid_value", param=param)


def install_handlers(app: FastAPI, count: Callable[[str], None]) -> None:
    """Answer every error of ``app`` in OpenAI's shape; ``count("http_<status>")`` each one (metrics)."""

    async def api_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        count(f"http_{exc.status}")
        return exc.response()

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return await api_error(request, from_http(request, exc))

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return await api_error(request, from_validation(exc))

    async def unexpected(request: Request, _exc: Exception) -> JSONResponse:
        # Starlette logs the traceback; the client gets the OpenAI shape, no internals.
        return await api_error(
            request, APIError(500, "internal server error (see the server's log)", "server_error", "server_error")
        )

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, unexpected)


def from_failed(event: Failed) -> APIError:
    """The :class:`APIError` of a choice the worker could not finish (timeout, shutdown, a failed batch)."""
    return APIError(event.status, event.message, error_type(event.status), event.code)
