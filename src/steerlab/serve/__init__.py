"""``steerlab serve``: an OpenAI-compatible steering server with a browser playground.

Needs the ``serve`` extra (``pip install steerlab[serve]``: fastapi, uvicorn, python-multipart).

Example:
    >>> import steerlab, uvicorn
    >>> from steerlab.serve import ServeSettings, create_app
    >>> lm = steerlab.load_model("default")  # doctest: +SKIP
    >>> app = create_app(lm, "vectors", ServeSettings(max_batch=16))  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP

See ``docs/serve.md`` for the HTTP API, curl and ``openai`` client examples.
"""

from __future__ import annotations

from .app import create_app
from .engines.base import Engine, EngineFactory, QueueFull
from .engines.local import Batcher
from .http_errors import STATUS, APIError
from .jobs import GenParams, Job
from .settings import API_KEY_ENV, ServeSettings
from .state import Server
from .store import NAME_PATTERN, VectorStore, check_name, pack_folder
from .store_errors import AlreadyExists, InvalidName, InvalidUpload, NotFound, StoreError, TooLarge, WrongModel

__all__ = [
    "API_KEY_ENV",
    "NAME_PATTERN",
    "STATUS",
    "APIError",
    "AlreadyExists",
    "Batcher",
    "Engine",
    "EngineFactory",
    "GenParams",
    "InvalidName",
    "InvalidUpload",
    "Job",
    "NotFound",
    "QueueFull",
    "ServeSettings",
    "Server",
    "StoreError",
    "TooLarge",
    "VectorStore",
    "WrongModel",
    "check_name",
    "create_app",
    "pack_folder",
]
