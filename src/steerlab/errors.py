"""Every error steerlab raises on purpose derives from :class:`SteeringError`.

Each message says what went wrong *and* what to do about it, so a user never has to read a
stack trace from deep inside torch.

Example:
    >>> from steerlab.errors import SteeringError, LayerRangeError
    >>> issubclass(LayerRangeError, SteeringError)
    True
"""

from __future__ import annotations


class SteeringError(Exception):
    """Base class of all steerlab errors."""


class ModelLoadError(SteeringError):
    """A model or tokenizer could not be found or loaded."""


class UnsupportedArchitectureError(SteeringError):
    """The model's decoder blocks could not be located automatically."""


class ModelMismatchError(SteeringError):
    """A vector made for one model was used with another (d_model, layer count or model id)."""


class LayerRangeError(SteeringError):
    """A layer index is outside the model (or outside the vector)."""


class InvalidVectorError(SteeringError):
    """A vector holds NaN/inf values, has the wrong shape or is otherwise unusable."""


class VectorFileError(SteeringError):
    """A saved vector (folder or GGUF file) is missing, corrupt or truncated."""


class ContextLengthError(SteeringError):
    """A prompt plus the tokens to generate do not fit in the model's context."""


class DatasetError(SteeringError):
    """Contrast data is empty, one-sided or malformed."""


class SteeringSpecError(SteeringError):
    """A :class:`~steerlab.core.steering.Steering` was given an invalid option."""


class TransformersCompatError(SteeringError):
    """transformers called the model in a way steerlab cannot read token positions from.

    Raised instead of steering the wrong tokens; the message names the installed versions.
    """


class NonFiniteError(SteeringError):
    """A forward pass gave NaN or infinite logits for some rows (a steering that overflows the model).

    Attributes:
        rows: the indices of the rows (prompts) whose logits are not finite.
    """

    def __init__(self, message: str, rows: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.rows = rows


class CheckpointError(DatasetError):
    """A resumable run's checkpoint file is unreadable, altered, or belongs to another run.

    The message names the file and what to do (usually: delete it to start the run over).
    """
