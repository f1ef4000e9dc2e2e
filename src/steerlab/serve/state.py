"""The state one served model shares across requests, and the FastAPI dependency that hands it out.

:func:`~steerlab.serve.app.create_app` builds one :class:`Server` and keeps it as
``app.state.server``; routes take it as a parameter of type :data:`ServerDep`.

Example:
    >>> from fastapi import APIRouter
    >>> router = APIRouter()
    >>> @router.get("/v1/models")
    ... async def models(server: ServerDep) -> dict:
    ...     return {"object": "list", "data": [server.model_card()]}
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from typing import Annotated, Any, cast

from fastapi import Depends, Request

from ..limits import Limits
from ..models.load import LM
from .cost import CostService
from .engines.base import Engine, EngineFactory
from .engines.local import local_engine
from .http_errors import APIError
from .jobs import Job
from .presets import PresetService
from .schemas import ChatCompletionRequest
from .settings import ServeSettings
from .store import VectorStore

try:  # transformers renders chat templates with jinja2 (and needs it to render any)
    from jinja2 import TemplateError

    TEMPLATE_ERRORS: tuple[type[Exception], ...] = (TemplateError,)
except ImportError:  # pragma: no cover
    TEMPLATE_ERRORS = ()


class Server:
    """State of one served model: the model, its store, the generation engine and the settings.

    Args:
        lm: the served model.
        store_dir: the vector store directory (created if missing).
        settings: limits and the optional API key.
        engine: builds the generation engine (default: the local engine,
            :func:`~steerlab.serve.engines.local.local_engine`; for vLLM,
            :func:`steerlab.serve.engines.vllm.engine_factory`).
    """

    def __init__(
        self,
        lm: LM,
        store_dir: str | os.PathLike[str],
        settings: ServeSettings,
        engine: EngineFactory | None = None,
    ) -> None:
        self.lm = lm
        self.settings = settings
        self.tok_lock = threading.Lock()  # HF fast tokenizers are not safe to call from two threads at once
        # the one set of bounds every request, upload and cost check reads: the model's and the settings'
        self.limits = Limits.for_model(lm, **settings.limit_settings())
        self.store = VectorStore(store_dir, lm, self.limits)
        make: EngineFactory = local_engine if engine is None else engine
        self.engine: Engine = make(lm, settings, self.tok_lock, self.store)
        self.cost = CostService(lm, self.store, self.engine.model_lock, self.limits, self.tok_lock)
        self.presets = PresetService(lm, self.store, self.engine.model_lock, self.tok_lock, enabled=settings.presets)
        self.created = int(time.time())
        self.context = lm.context_length
        self.names = {lm.model_id, *settings.model_aliases}

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
                "aliases": sorted(a for a in self.names - {self.lm.model_id} if not _is_path(a)),
                "limits": self.limits.public(),
                "serving": self.settings.serving(),
                "operators": operator_names(),
            },
        }

    def check_model_name(self, name: str | None) -> None:
        """404 unless ``name`` is the served model (or an alias), or absent."""
        if name is not None and name not in self.names:
            raise APIError(
                404,
                f"model {name!r} is not served here; this server serves {self.lm.model_id!r}",
                "not_found_error",
                "model_not_found",
                "model",
            )

    # ------------------------------------------------------------------ tokenizer
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens added, as :func:`steerlab.runtime.generate.encode` does)."""
        with self.tok_lock:
            return list(self.lm.tokenizer(text, add_special_tokens=True)["input_ids"])

    def render_chat(self, req: ChatCompletionRequest) -> str:
        """The messages as model text: the chat template, or one line per message without one.

        Raises:
            APIError: 400 when the model's chat template refuses the conversation (many do:
                roles that do not alternate, a system message where none is allowed).
        """
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in req.messages]
        if self.lm.has_chat_template:
            try:
                with self.tok_lock:
                    text = self.lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except TEMPLATE_ERRORS as exc:
                raise APIError(
                    400,
                    f"the model's chat template refuses these messages: {exc}",
                    code="invalid_messages",
                    param="messages",
                ) from None
            return str(text)
        return "".join(f"{m['content']}\n" for m in messages)

    # ------------------------------------------------------------------ jobs
    def cancel(self, jobs: Sequence[Job]) -> None:
        """Stop every job still running (client gone, or request over)."""
        for job in jobs:
            self.engine.cancel(job)

    def count(self, name: str) -> None:
        """Add one to the metrics counter ``name``."""
        self.engine.metrics.count(name)


def operator_names() -> list[str]:
    """The operators a request's ``steering[i].operator`` may name now (the registry's).

    Example:
        >>> operator_names()[:4]
        ['add', 'ablate', 'clamp', 'add_norm_preserving']
    """
    from ..core.operators import OPERATORS

    return list(OPERATORS)


def _is_path(name: str) -> bool:
    """Whether a model name is a path on this machine (absolute, relative to a folder, or ``~``):
    such aliases are accepted in requests but never shown (they reveal the server's layout).

    Example:
        >>> _is_path("/srv/models/llama"), _is_path("./m"), _is_path("default"), _is_path("org/model")
        (True, True, False, False)
    """
    return os.path.isabs(name) or name.startswith(("~", ".")) or "\\" in name or os.path.exists(name)


def get_server(request: Request) -> Server:
    """The app's :class:`Server` (a FastAPI dependency)."""
    return cast(Server, request.app.state.server)


ServerDep = Annotated[Server, Depends(get_server)]
"""A route parameter of this type receives the app's :class:`Server`."""
