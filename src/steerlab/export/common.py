"""What the exports share: the error for what a vLLM plugin cannot do, the steerings of a request
in order, and what a steering's operator adds (every export but bake carries additions only).

Both plugins add to the output of vLLM's decoder layer ``k`` (0-based: the module
``model.layers.k``), which is steerlab's layer ``k`` (the residual stream after block ``k``), so a
steerlab layer index goes to them unchanged. See ``docs/vllm.md`` for the plugin sources this
rests on.

Example:
    >>> err = PluginUnsupported("no clamp here", "hotwire", index=1)
    >>> err.plugin, err.index, err.code
    ('hotwire', 1, 'unsupported_by_plugin')
    >>> from steerlab.core.operators import get_operator
    >>> constant_addition(get_operator("add"), 2.0)
    ConstantAddition(scale=2.0)
    >>> constant_addition(get_operator("clamp"), 2.0)
    'it depends on each activation (it is not a fixed change of the residual stream)'
"""

from __future__ import annotations

from ..core.operators import ConstantAddition, DirectionRemoval, Operator
from ..core.steering import Composite, Steering, SteeringLike
from ..errors import SteeringSpecError


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


def constant_addition(op: Operator, coefficient: float) -> ConstantAddition | str:
    """What ``op`` at ``coefficient`` adds at every token it acts on (its
    :class:`~steerlab.core.operators.ConstantAddition`), or why it is no constant addition: the
    operator's own reason, or that it removes a direction (which only baked weights carry)."""
    form = op.fixed_form(coefficient)
    if isinstance(form, ConstantAddition):
        return form
    if isinstance(form, DirectionRemoval):
        return "it removes a direction from each activation (only orthogonalised weights carry that: steerlab.bake)"
    return op.refusal
