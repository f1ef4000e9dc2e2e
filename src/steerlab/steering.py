"""What to do at inference time: :class:`Steering` (one vector, how strongly, where, how).

Several steerings compose (applied in order at each layer): ``s1 + s2`` or a list passed to
:func:`steerlab.steer`.

Positions (token indices count real tokens of each row, padding excluded):

* ``"all"`` — every token, prompt and generated;
* ``"prompt"`` — the prompt's tokens only;
* ``"generated"`` — only tokens after the prompt (CAA's "every position after the prompt");
* ``(start, end)`` — token indices ``start <= i < end`` (``end=None``: to the end);
* ``"actadd"`` — a token-wise (ActAdd) vector added front-aligned: row ``i`` at token ``i``.

Operators, with ``c`` the coefficient, ``v`` the layer's direction and ``u = v/|v|``:

* ``"add"`` — ``h + c·v``;
* ``"ablate"`` — ``h − c·(h·u)u`` (``c=1`` removes the direction entirely);
* ``"clamp"`` — ``h + (c − h·u)u``: the projection on ``u`` is set to ``c``;
* ``"add_norm_preserving"`` — ``h + c·v`` rescaled to the norm of ``h``.

Example:
    >>> s = Steering(vec, coefficient=4.0, positions="generated")  # doctest: +SKIP
    >>> (s + Steering(other, -2.0)).steerings  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import LayerRangeError, SteeringSpecError
from .vector import SteeringVector

Positions = str | tuple[int, int | None]
POSITION_KEYWORDS = ("all", "prompt", "generated", "actadd")
OPERATORS = ("add", "ablate", "clamp", "add_norm_preserving")


def positions_key(positions: Positions) -> Positions:
    """Validate ``positions`` and return its canonical (hashable) form."""
    if isinstance(positions, str):
        if positions not in POSITION_KEYWORDS:
            raise SteeringSpecError(
                f"positions={positions!r}: use 'all', 'prompt', 'generated', 'actadd' or (start, end)"
            )
        return positions
    if isinstance(positions, (tuple, list)) and len(positions) == 2:
        start, end = positions
        if not isinstance(start, int) or start < 0 or (end is not None and (not isinstance(end, int) or end <= start)):
            raise SteeringSpecError(
                f"positions={tuple(positions)!r}: a window is (start, end) with 0 <= start < end "
                "(end=None runs to the end)"
            )
        return (start, end)
    raise SteeringSpecError(f"positions={positions!r} is not understood")


@dataclass(frozen=True, eq=False)
class Steering:
    """One steering vector applied with a coefficient at chosen layers and positions.

    Args:
        vector: the :class:`~steerlab.vector.SteeringVector`.
        coefficient: the multiplier (``0`` disables it exactly).
        layers: subset of the vector's layers to use (default: all of them).
        positions: see the module docs; default ``"all"`` (``"actadd"`` for token-wise vectors).
        operator: ``"add"``, ``"ablate"``, ``"clamp"`` or ``"add_norm_preserving"``.
    """

    vector: SteeringVector
    coefficient: float = 1.0
    layers: Sequence[int] | None = None
    positions: Positions | None = None
    operator: str = "add"
    _layers: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.vector, SteeringVector):
            raise SteeringSpecError(f"Steering needs a SteeringVector, got {type(self.vector).__name__}")
        try:
            coef = float(self.coefficient)
        except (TypeError, ValueError):
            raise SteeringSpecError(f"coefficient={self.coefficient!r} is not a number") from None
        if not math.isfinite(coef):
            raise SteeringSpecError(f"coefficient={self.coefficient!r} must be finite")
        object.__setattr__(self, "coefficient", coef)
        if self.operator not in OPERATORS:
            raise SteeringSpecError(f"operator={self.operator!r}: use one of {', '.join(OPERATORS)}")
        default = "actadd" if self.vector.tokenwise else "all"
        key = positions_key(self.positions if self.positions is not None else default)
        object.__setattr__(self, "positions", key)
        if self.vector.tokenwise and (key != "actadd" or self.operator != "add"):
            raise SteeringSpecError(
                "a token-wise (ActAdd) vector is added front-aligned: use positions='actadd' and "
                "operator='add', or collapse it with vector.token_mean()"
            )
        if key == "actadd" and not self.vector.tokenwise:
            raise SteeringSpecError(
                "positions='actadd' needs a token-wise vector (method='actadd'); for a one-direction "
                "vector use a window such as positions=(0, 4)"
            )
        layers = tuple(self.vector.layers if self.layers is None else (int(x) for x in self.layers))
        missing = [x for x in layers if x not in self.vector.directions]
        if missing:
            raise LayerRangeError(f"layers {missing} are not in the vector (it has {self.vector.layers})")
        if not layers:
            raise LayerRangeError("Steering was given an empty list of layers")
        object.__setattr__(self, "_layers", layers)

    @property
    def where(self) -> Positions:
        """The validated positions (``positions`` with its default filled in)."""
        assert self.positions is not None
        return self.positions

    @property
    def active_layers(self) -> tuple[int, ...]:
        """The layers this steering acts on."""
        return self._layers

    @property
    def is_noop(self) -> bool:
        """True when the steering cannot change anything (coefficient 0 of a scaling operator)."""
        return self.coefficient == 0.0 and self.operator != "clamp"

    def __add__(self, other: Steering | Composite) -> Composite:
        return compose(self, other)


@dataclass(frozen=True, eq=False)
class Composite:
    """Several steerings applied together, in order."""

    steerings: tuple[Steering, ...]

    def __add__(self, other: Steering | Composite) -> Composite:
        return compose(self, other)


def compose(*items: Steering | Composite | None) -> Composite:
    """Combine steerings (``None`` entries are skipped) into one :class:`Composite`."""
    out: list[Steering] = []
    for item in items:
        if item is None:
            continue
        if isinstance(item, Composite):
            out.extend(item.steerings)
        elif isinstance(item, Steering):
            out.append(item)
        else:
            raise SteeringSpecError(f"cannot compose a {type(item).__name__}; pass Steering objects")
    return Composite(tuple(out))


SteeringLike = Steering | Composite
