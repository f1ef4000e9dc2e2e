"""steerlab: activation steering for Hugging Face causal language models.

Example:
    >>> import steerlab
    >>> lm = steerlab.load_model("default")  # doctest: +SKIP
    >>> pairs = steerlab.persona_pairs("happy", "sad", ["That game", "I can see"])
    >>> vec = steerlab.extract(lm, pairs, method="mean_diff", layers=range(8, 20))  # doctest: +SKIP
    >>> steerlab.generate(lm, ["That game"], steering=steerlab.Steering(vec, 4.0))  # doctest: +SKIP
"""

from __future__ import annotations

from .core.steering import Composite, Steering, compose
from .core.vector import SteeringVector
from .data.ab import load_caa
from .data.pairs import ChatText, ContrastPair, caa_pair, caa_pairs, pairs_from_lists, persona_pairs
from .data.preference import PreferencePair, load_preferences, preference_pairs, self_contrast
from .data.sources import load_pairs, open_pairs
from .data.texts import load_openings, load_texts
from .errors import (
    CheckpointError,
    ContextLengthError,
    DatasetError,
    InvalidVectorError,
    LayerRangeError,
    ModelLoadError,
    ModelMismatchError,
    NonFiniteError,
    SteeringError,
    SteeringSpecError,
    UnsupportedArchitectureError,
    VectorFileError,
)
from .export.bake import bake
from .extraction.capture import capture, capture_tokens
from .extraction.extract import extract
from .extraction.methods import REGISTRY as METHODS
from .extraction.scale import relative, residual_norms
from .limits import LimitError, Limits
from .models.load import LM, load_model, wrap_model
from .runtime.generate import generate
from .runtime.session import steer, steer_rows

__version__ = "0.1.0"

__all__ = [
    "LM",
    "METHODS",
    "ChatText",
    "CheckpointError",
    "Composite",
    "ContextLengthError",
    "ContrastPair",
    "DatasetError",
    "InvalidVectorError",
    "LayerRangeError",
    "LimitError",
    "Limits",
    "ModelLoadError",
    "ModelMismatchError",
    "NonFiniteError",
    "PreferencePair",
    "Steering",
    "SteeringError",
    "SteeringSpecError",
    "SteeringVector",
    "UnsupportedArchitectureError",
    "VectorFileError",
    "bake",
    "caa_pair",
    "caa_pairs",
    "capture",
    "capture_tokens",
    "compose",
    "extract",
    "generate",
    "load_caa",
    "load_model",
    "load_openings",
    "load_pairs",
    "load_preferences",
    "load_texts",
    "open_pairs",
    "pairs_from_lists",
    "persona_pairs",
    "preference_pairs",
    "relative",
    "residual_norms",
    "self_contrast",
    "steer",
    "steer_rows",
    "wrap_model",
]
