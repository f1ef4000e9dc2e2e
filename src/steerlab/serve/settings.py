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

from ..limits import Limits

API_KEY_ENV = "STEERLAB_API_KEY"
SCHEDULERS = ("continuous", "batch")
COMPILED = ("auto", "on", "off")
KL_CAP_SERVED = False
"""Whether requests may carry a ``kl_cap``: no engine of the server runs the unsteered shadow rows a
cap needs (:mod:`steerlab.runtime.kl_cap`), so the server refuses it (400, ``kl_cap_unsupported``)
and its presets leave it out (:mod:`steerlab.serve.presets`)."""


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
        compiled: whether the continuous scheduler decodes through a compiled step
            (:class:`~steerlab.serve.engines.compiled.CompiledScheduler`: rows whose steering is
            plain adds decode in the slots of one static KV cache, the others eagerly beside
            them): ``"on"``, ``"off"`` or ``"auto"`` (:func:`~steerlab.serve.engines.compiled.pays`:
            where it was measured to pay, docs/serve.md).
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
        max_score_tokens: the most tokens of one text ``POST /v1/cost/perplexity_ratio`` scores
            (prompt + continuation; also capped by the model's context).
        presets: offer the frontier's winners of ``steerlab demo`` as presets (``GET /v1/presets``,
            :mod:`steerlab.serve.presets`; built on the first request, or at start by ``steerlab
            serve``); ``False``: the endpoint lists none and says why.
        model_aliases: extra names accepted in a request's ``model`` field (e.g. ``"default"``);
            ones that are paths on this machine are accepted but never shown.

    The bounds among these become the server's one :class:`~steerlab.limits.Limits` object
    (:meth:`limit_settings`, ``Server.limits``), together with the model's own (layers, context,
    width); every request, upload and cost check reads it. Defaults are :class:`Limits`' own.
    """

    api_key: str | None = None
    max_tokens: int = Limits.max_new_tokens
    default_max_tokens: int = 64
    max_prompt_tokens: int = Limits.max_prompt_tokens
    max_coefficient: float = Limits.max_coefficient
    max_steering_entries: int = Limits.max_steering_entries
    max_n: int = Limits.max_choices
    scheduler: str = "continuous"
    compiled: str = "auto"
    max_batch: int = 16
    max_queue: int = 128
    batch_wait_ms: float = 5.0
    request_timeout_s: float = 120.0
    max_request_bytes: int = Limits.max_request_bytes
    max_upload_bytes: int = Limits.max_upload_bytes
    max_archive_members: int = Limits.max_archive_members
    max_unpacked_bytes: int = Limits.max_unpacked_bytes
    max_score_tokens: int = Limits.max_score_tokens
    presets: bool = True
    model_aliases: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for name in (
            "max_tokens",
            "default_max_tokens",
            "max_prompt_tokens",
            "max_steering_entries",
            "max_n",
            "max_batch",
            "max_queue",
            "max_request_bytes",
            "max_upload_bytes",
            "max_archive_members",
            "max_unpacked_bytes",
            "max_score_tokens",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.batch_wait_ms < 0 or self.request_timeout_s <= 0 or not self.max_coefficient > 0:
            raise ValueError("batch_wait_ms must be >= 0, max_coefficient and request_timeout_s > 0")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler={self.scheduler!r}: use one of {', '.join(SCHEDULERS)}")
        if self.compiled not in COMPILED:
            raise ValueError(f"compiled={self.compiled!r}: use one of {', '.join(COMPILED)}")
        self.default_max_tokens = min(self.default_max_tokens, self.max_tokens)
        if self.api_key == "":
            self.api_key = None

    @classmethod
    def from_env(cls, **kwargs: Any) -> ServeSettings:
        """Settings with ``api_key`` taken from ``$STEERLAB_API_KEY`` unless given."""
        if kwargs.get("api_key") is None:
            kwargs["api_key"] = os.environ.get(API_KEY_ENV) or None
        return cls(**kwargs)

    def limit_settings(self) -> dict[str, Any]:
        """The bounds of these settings as :class:`~steerlab.limits.Limits` fields (for
        ``Limits.for_model(lm, **settings.limit_settings())``)."""
        return {
            "max_new_tokens": self.max_tokens,
            "max_prompt_tokens": self.max_prompt_tokens,
            "max_coefficient": float(self.max_coefficient),
            "max_steering_entries": self.max_steering_entries,
            "max_choices": self.max_n,
            "max_request_bytes": self.max_request_bytes,
            "max_upload_bytes": self.max_upload_bytes,
            "max_archive_members": self.max_archive_members,
            "max_unpacked_bytes": self.max_unpacked_bytes,
            "max_score_tokens": self.max_score_tokens,
        }

    def serving(self) -> dict[str, Any]:
        """How requests are served (no bounds, no key, no aliases), JSON-ready: ``GET /v1/models``
        shows it beside the limits."""
        return {
            "scheduler": self.scheduler,
            "compiled": self.compiled,
            "max_batch": self.max_batch,
            "max_queue": self.max_queue,
            "batch_wait_ms": self.batch_wait_ms,
            "request_timeout_s": self.request_timeout_s,
            "default_max_tokens": self.default_max_tokens,
            "presets": self.presets,
            "auth": self.api_key is not None,
        }

    def limits(self) -> dict[str, Any]:
        """The settings (everything but the key and the aliases), JSON-ready."""
        out = asdict(self)
        out.pop("api_key")
        out.pop("model_aliases")  # may hold a path of this machine (``--model /abs/path``)
        out["auth"] = self.api_key is not None
        return out
