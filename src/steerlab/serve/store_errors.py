"""What the vector store refuses, as domain errors: no HTTP here.

Each error carries a message that says what to do and a short machine-readable ``code`` (the
OpenAI-style ``error.code`` the server reports). The HTTP layer maps each class to a status in
one table (:data:`steerlab.serve.http_errors.STATUS`).

Example:
    >>> err = NotFound("no vector named 'x' in the store", "vector_not_found")
    >>> isinstance(err, StoreError), err.code
    (True, 'vector_not_found')
"""

from __future__ import annotations

from ..errors import SteeringError


class StoreError(SteeringError):
    """A store operation was refused; ``code`` names why (``invalid_upload``, ``vector_exists``, ...)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or CODES.get(type(self), "store_error")


class InvalidName(StoreError):
    """A vector name that could leave the store or is not allowed (see ``NAME_PATTERN``)."""


class NotFound(StoreError):
    """No vector of that name is served."""


class AlreadyExists(StoreError):
    """An upload to a name that is taken, without ``overwrite``."""


class InvalidUpload(StoreError):
    """An upload (or a store entry) that is malformed, unsafe or not a steering vector."""


class TooLarge(StoreError):
    """An upload, or what its archive unpacks to, is over the store's limits."""


class WrongModel(StoreError):
    """A vector made for another model than the served one."""


CODES: dict[type[StoreError], str] = {
    InvalidName: "invalid_vector_name",
    NotFound: "vector_not_found",
    AlreadyExists: "vector_exists",
    InvalidUpload: "invalid_upload",
    TooLarge: "upload_too_large",
    WrongModel: "vector_model_mismatch",
}
"""The default ``code`` of each error (a refusal may name a finer one, e.g. ``unsafe_archive``)."""
