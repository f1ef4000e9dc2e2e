"""What to do at inference time: :class:`Steering` (one vector, how strongly, where, how).

This module is the *specification*; :mod:`steerlab.runtime.session` applies it. Several steerings compose
(applied in order at each layer): ``s1 + s2`` or a list passed to :func:`steerlab.steer`.
Where they act is described in :mod:`steerlab.core.positions` (``"all"``, ``"prompt"``,
``"generated"``, a ``(start, end)`` window); how, in :mod:`steerlab.core.operators` (``"add"``,
``"ablate"``, ``"clamp"``, ``"add_norm_preserving"``, or one added with
:func:`~steerlab.core.operators.register_operator`). A token-wise (ActAdd) vector is added
front-aligned, row ``i`` at token ``i`` of each row's prompt.

Example:
    >>> s = Steering(vec, coefficient=4.0, positions="generated")  # doctest: +SKIP
    >>> (s + Steering(other, -2.0)).steerings  # doctest: +SKIP
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import LayerRangeError, SteeringSpecError
from ..limits import LimitError, Limits
from .condition import Condition
from .operators import OPERATORS, Operator, get_operator
from .positions import POSITION_KEYWORDS, Positions, positions_key
from .vector import SteeringVector

__all__ = [
    "OPERATORS",
    "POSITION_KEYWORDS",
    "Composite",
    "Positions",
    "Steering",
    "SteeringLike",
    "compose",
    "positions_key",
]


@dataclass(frozen=True, eq=False)
class Steering:
    """One steering vector applied with a coefficient at chosen layers and positions.

    Args:
        vector: the :class:`~steerlab.core.vector.SteeringVector`.
        coefficient: the multiplier (``0`` disables it exactly).
        layers: subset of the vector's layers to use (default: all of them).
        positions: see :mod:`steerlab.core.positions`; default ``"all"``. Token-wise (ActAdd) vectors
            take none: they act front-aligned at each row's first tokens.
        operator: a name from :data:`steerlab.core.operators.OPERATORS` (``"add"``, ``"ablate"``,
            ``"clamp"``, ``"add_norm_preserving"``, or a registered one) or an
            :class:`~steerlab.core.operators.Operator` (e.g. one with its parameters set:
            ``get_operator(name).with_parameters({...})``).
        condition: a :class:`~steerlab.core.condition.Condition` read on each row's prompt: rows whose
            prompt does not match are not steered (CAST). Acts on generated tokens only.
        kl_cap: a per-token cap (nats) on the KL from the unsteered next-token distribution
            (Dynamic Activation Composition): in :func:`steerlab.generate` each capped row runs beside
            an unsteered shadow row fed the same tokens, and its strength is scaled after each step
            so the KL stays near the cap (:mod:`steerlab.runtime.kl_cap`; about twice the rows).
            ``None`` or ``inf``: no cap. Greedy decoding only.
    """

    vector: SteeringVector
    coefficient: float = 1.0
    layers: Sequence[int] | None = None
    positions: Positions | None = None
    operator: str | Operator = "add"
    condition: Condition | None = None
    kl_cap: float | None = None
    _op: Operator = field(init=False, repr=False)
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
        try:
            object.__setattr__(self, "kl_cap", Limits.check_kl_cap(self.kl_cap))
        except LimitError as exc:
            raise SteeringSpecError(str(exc)) from None
        op = get_operator(self.operator)
        object.__setattr__(self, "_op", op)
        object.__setattr__(self, "operator", op.name)
        if self.condition is not None:
            self._check_condition()
        if self.vector.tokenwise:
            if self.positions is not None or not op.tokenwise:
                takes = ", ".join(repr(name) for name, o in OPERATORS.items() if o.tokenwise)
                raise SteeringSpecError(
                    "a token-wise (ActAdd) vector is added front-aligned at each row's first tokens: "
                    f"leave positions unset and use an operator that applies it ({takes}), or collapse it "
                    "with vector.token_mean()"
                )
        else:
            object.__setattr__(self, "positions", positions_key("all" if self.positions is None else self.positions))
        layers = tuple(self.vector.layers if self.layers is None else self._layer_set(self.layers))
        missing = [x for x in layers if x not in self.vector.directions]
        if missing:
            raise LayerRangeError(f"layers {missing} are not in the vector (it has {self.vector.layers})")
        object.__setattr__(self, "_layers", layers)

    def _layer_set(self, layers: Sequence[int]) -> list[int]:
        """``layers`` as distinct layer indices of the vector's model (:meth:`Limits.layer_list
        <steerlab.limits.Limits.layer_list>`): ``[1, 1]`` would add the vector twice at layer 1, a
        doubled coefficient in disguise."""
        given = list(layers)
        if not given:
            raise LayerRangeError("Steering was given an empty list of layers")
        ints = []
        for x in given:
            try:
                ints.append(x if isinstance(x, bool) else operator.index(x))  # numpy ints too; not 1.5
            except TypeError:
                raise SteeringSpecError(f"layers: {x!r} is not a layer index (an integer)") from None
        try:
            return Limits(n_layers=self.vector.n_layers).layer_list(ints, "layers")
        except LimitError as exc:
            raise LayerRangeError(str(exc)) from None

    def _check_condition(self) -> None:
        if not isinstance(self.condition, Condition):
            raise SteeringSpecError(f"condition must be a steerlab Condition, got {type(self.condition).__name__}")
        if self.vector.tokenwise:
            raise SteeringSpecError("a token-wise (ActAdd) vector acts on the prompt; it cannot be conditional")
        if self.positions is None:
            object.__setattr__(self, "positions", "generated")
        elif self.positions != "generated":
            raise SteeringSpecError(
                f"positions={self.positions!r}: a conditional steering reads the prompt and acts on the "
                "generated tokens (positions='generated')"
            )
        if self.condition.vector.model_id != self.vector.model_id:
            raise SteeringSpecError(
                f"the condition was made for {self.condition.vector.model_id!r}, the vector for "
                f"{self.vector.model_id!r}"
            )

    @property
    def where(self) -> Positions:
        """The validated positions (``"all"`` when unset; token-wise vectors select their front
        tokens themselves)."""
        return "all" if self.positions is None else self.positions

    @property
    def active_layers(self) -> tuple[int, ...]:
        """The layers this steering acts on."""
        return self._layers

    @property
    def op(self) -> Operator:
        """The :class:`~steerlab.core.operators.Operator` object."""
        return self._op

    @property
    def is_noop(self) -> bool:
        """True when the steering cannot change anything (its operator says so for its coefficient)."""
        return self._op.is_noop(self.coefficient)

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
