"""A steering as a llama.cpp control vector (``--control-vector FILE``).

llama.cpp adds a control vector's ``direction.k`` to the output of block ``k`` at every token
(``--control-vector-scaled FILE S`` first multiplies it by ``S``); several files add up. So a
steering goes into one file when it is a constant addition at every token: each operator says
whether it is one (:meth:`~steerlab.core.operators.Operator.fixed_form`), and the file holds
``s·v`` for an operator that adds ``s·v`` (``"add"``: ``s`` is the coefficient), summed over
the steerings of a composite, at their active layers. Operators that are no constant addition,
positions other than ``"all"`` and conditions (CAST) are refused, saying why; token-wise vectors
and block 0 are refused by :meth:`~steerlab.core.vector.SteeringVector.to_gguf`.

Example:
    >>> import torch
    >>> vec = SteeringVector({2: torch.ones(4)}, model_id="m", d_model=4, n_layers=6)
    >>> control_vector(Steering(vec, 3.0)).directions[2].tolist()
    [3.0, 3.0, 3.0, 3.0]
    >>> control_vector(Steering(vec, 3.0, operator="clamp"))
    Traceback (most recent call last):
    ...
    steerlab.export.gguf.ControlVectorError: steering[0]: operator='clamp' cannot be a llama.cpp control vector: ...
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.steering import Steering, SteeringLike
from ..core.vector import SteeringVector
from ..errors import SteeringSpecError
from .common import constant_addition, steerings_of


class ControlVectorError(SteeringSpecError):
    """A steering that a llama.cpp control vector cannot carry."""


def _part(i: int, s: Steering) -> SteeringVector:
    """What steering ``i`` adds at every token, as a vector (its active layers only)."""
    form = constant_addition(s.op, s.coefficient)
    if isinstance(form, str):
        raise ControlVectorError(
            f"steering[{i}]: operator={s.op.name!r} cannot be a llama.cpp control vector: {form} "
            "(a control vector adds a fixed vector at every token)"
        )
    if s.condition is not None:
        raise ControlVectorError(f"steering[{i}]: llama.cpp control vectors have no conditional (CAST) steering")
    if s.where != "all":
        raise ControlVectorError(
            f"steering[{i}]: positions={s.where!r}: a llama.cpp control vector acts on every token (positions='all')"
        )
    return s.vector.select(s.active_layers) * form.scale


def control_vector(steering: SteeringLike) -> SteeringVector:
    """The vector that llama.cpp, adding it at every token, steers with as ``steering`` does.

    Raises:
        ControlVectorError: nothing to export, or a steering that is no constant addition at every
            token (the message says which and why).
        ModelMismatchError: steerings of vectors made for different models.
    """
    items = steerings_of(steering)
    if not items:
        raise ControlVectorError("nothing to export: pass at least one Steering")
    total = _part(0, items[0])
    for i, s in enumerate(items[1:], start=1):
        total = total + _part(i, s)
    return total


def write(steering: SteeringLike, path: str | os.PathLike[str], model_hint: str = "") -> Path:
    """Write :func:`control_vector` of ``steering`` to ``path`` (see
    :meth:`~steerlab.core.vector.SteeringVector.to_gguf`)."""
    return control_vector(steering).to_gguf(path, model_hint)
