"""Limits and options of the steering server (:class:`ServeSettings`).

Example:
    >>> s = ServeSettings(max_batch=8, api_key="secret")
    >>> s.max_batch, s.max_coefficient
    (8, 16.0)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

API_KEY_ENV = "STEERLAB_API_KEY"
SCHEDULERS = ("continuous", "batch")


@dataclass
class ServeSettings:
    """Everything ``steerlab serve`` can be told, with safe defaults.

    Attributes:
        api_key: when set, every endpoint except ``/health`` and the static page at ``/`` needs
            ``Authorization: Bearer KEY`` (or ``X-API-Key: KEY``).
        max_tokens: the most tokens one completion may ask for (larger requests get a 400).
        default_max_tokens: used when a request gives no ``max_tokens``.
        max_prompt_tokens: the longest prompt accepted, in tokens (also capped by the model's
            context: prompt + ``max_tokens`` must fit in ``max_position_embeddings``).
        max_coefficient: the largest ``|coefficient|`` a steering entry may use.
        max_steering_entries: the most vectors one request may compose.
        max_n: the most choices (``n`` × prompts) one request may ask for.
        scheduler: ``"continuous"`` (a request joins the running batch at the next decoding
            step; models whose KV caches cannot be merged fall back to ``"batch"``) or
            ``"batch"`` (batch at a time: one ``generate`` call per batch, a request arriving
            meanwhile waits for it to end).
        max_batch: the most requests generating together.
        max_queue: the most requests waiting for a batch (not yet generating); more get a 429.
        batch_wait_ms: an idle worker gathers a burst of requests before starting them: until no
            request has arrived for this long (at most 10× this after the first; 0: never wait).
        request_timeout_s: a request still unfinished this long after it arrived is stopped
            (504, or an error event in a stream).
        max_request_bytes: the largest request body accepted on every endpoint but the upload
            (413 beyond, refused from ``Content-Length`` before reading, or as soon as a chunked
            body passes it).
        max_upload_bytes: the largest vector upload accepted (413 beyond).
        max_archive_members: the most entries an uploaded archive may hold.
        max_unpacked_bytes: the most bytes an uploaded archive may unpack to.
        model_aliases: extra names accepted in a request's ``model`` field (e.g. ``"default"``).
    """

    api_key: str | None = None
    max_tokens: int = 256
    default_max_tokens: int = 64
    max_prompt_tokens: int = 2048
    max_coefficient: float = 16.0
    max_steering_entries: int = 8
    max_n: int = 8
    scheduler: str = "continuous"
    max_batch: int = 16
    max_queue: int = 128
    batch_wait_ms: float = 5.0
    request_timeout_s: float = 120.0
    max_request_bytes: int = 1024 * 1024
    max_upload_bytes: int = 16 * 1024 * 1024
    max_archive_members: int = 16
    max_unpacked_bytes: int = 64 * 1024 * 1024
    model_aliases: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for name in ("max_tokens", "default_max_tokens", "max_prompt_tokens", "max_steering_entries", "max_n",
                     "max_batch", "max_queue", "max_request_bytes", "max_upload_bytes", "max_archive_members",
                     "max_unpacked_bytes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.batch_wait_ms < 0 or self.request_timeout_s <= 0 or self.max_coefficient < 0:
            raise ValueError("batch_wait_ms and max_coefficient must be >= 0 and request_timeout_s > 0")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler={self.scheduler!r}: use one of {', '.join(SCHEDULERS)}")
        self.default_max_tokens = min(self.default_max_tokens, self.max_tokens)
        if self.api_key == "":
            self.api_key = None

    @classmethod
    def from_env(cls, **kwargs: Any) -> ServeSettings:
        """Settings with ``api_key`` taken from ``$STEERLAB_API_KEY`` unless given."""
        if kwargs.get("api_key") is None:
            kwargs["api_key"] = os.environ.get(API_KEY_ENV) or None
        return cls(**kwargs)

    def limits(self) -> dict[str, Any]:
        """The public limits (everything but the key), JSON-ready."""
        out = asdict(self)
        out.pop("api_key")
        out["model_aliases"] = list(self.model_aliases)
        out["auth"] = self.api_key is not None
        return out
