"""What the vLLM steering plugins share: the error for what a plugin cannot do, and the token
positions a steering names once a request's prompt length and ``max_tokens`` are known.

Both plugins add to the output of vLLM's decoder layer ``k`` (0-based: the module
``model.layers.k``), which is steerlab's layer ``k`` (the residual stream after block ``k``), so a
steerlab layer index goes to them unchanged. See ``docs/vllm.md`` for the plugin sources this
rests on.

Example:
    >>> list(explicit_positions((2, 5), prompt_len=3, max_tokens=4))
    [2, 3, 4]
    >>> list(explicit_positions("generated", prompt_len=3, max_tokens=2))
    [3, 4]
"""

from __future__ import annotations

from ..errors import SteeringSpecError
from ..positions import Positions
from ..steering import Composite, Steering, SteeringLike


class PluginUnsupported(SteeringSpecError):
    """A steering that a vLLM steering plugin cannot express (an operator, positions, a token-wise
    vector, two vectors on one layer, ...).

    Attributes:
        plugin: ``"vllm-lens"`` or ``"hotwire"``.
        index: which steering of the request (``None``: the request as a whole).
        code: a short machine-readable reason (the server's ``error.code``).
    """

    def __init__(self, message: str, plugin: str, index: int | None = None, code: str = "unsupported_by_plugin"):
        super().__init__(message)
        self.plugin = plugin
        self.index = index
        self.code = code


def steerings_of(steering: SteeringLike | None) -> tuple[Steering, ...]:
    """The steerings of ``steering`` in order (a single one, a composite's, or none)."""
    if steering is None:
        return ()
    if isinstance(steering, Composite):
        return steering.steerings
    return (steering,)


def explicit_positions(where: Positions, prompt_len: int, max_tokens: int) -> range:
    """The absolute token positions (0 = the prompt's first token) that ``where`` selects in a
    sequence of ``prompt_len`` prompt tokens followed by up to ``max_tokens`` generated ones.

    ``"all"`` is every position; ``"prompt"`` the first ``prompt_len``; ``"generated"`` the rest;
    a window ``(start, end)`` is clipped to the sequence (``end=None``: to its end).
    """
    total = prompt_len + max_tokens
    if where == "all":
        return range(total)
    if where == "prompt":
        return range(prompt_len)
    if where == "generated":
        return range(prompt_len, total)
    if isinstance(where, tuple):
        start, end = where
        return range(min(start, total), total if end is None else min(end, total))
    raise SteeringSpecError(f"positions={where!r} is not understood")
