"""How a steering changes the residual stream: one :class:`Operator` object per kind.

Each operator holds everything that its kind means — how it changes a hidden state, when it is a
no-op, whether several of it merge into one delta, its own parameters (besides the coefficient),
and its *fixed form*: whether it is a fixed change that does not depend on the activation (a
:class:`ConstantAddition`, a :class:`DirectionRemoval`) or not (``None``, with :attr:`Operator.refusal`
saying why). The engine (:mod:`steerlab.runtime.session`), the specification
(:mod:`steerlab.core.steering`), :mod:`steerlab.export` (bake, vLLM plugins, llama.cpp control
vectors), the server's request schema and the CLI ask the operator instead of switching on its
name, so an operator added with :func:`register_operator` works everywhere.

With ``c`` the coefficient, ``v`` the layer's direction and ``u = v/|v|``:

* ``"add"`` — ``h + c·v``; a token-wise (ActAdd) vector adds its row ``i`` at token ``i``;
* ``"ablate"`` — ``h − c·(h·u)u`` (``c=1`` removes the direction entirely);
* ``"clamp"`` — ``h + (c − h·u)u``: the projection on ``u`` is set to ``c``;
* ``"add_norm_preserving"`` — ``h + c·v`` rescaled to the norm of ``h``;
* ``"push"`` — the least push along ``u`` that brings ``h·u`` up to ``ln(c)·|v|`` (for ``c > 0``;
  mirrored for ``c < 0``), nothing where it is already there (:class:`Push`);
* ``"rotate"`` — turn ``h`` by ``c`` radians toward ``u`` in the plane of ``h`` and ``u``, keeping
  its norm, only where ``h·u`` has the wrong sign by default (:class:`Rotate`).

Example:
    >>> import torch
    >>> op = get_operator("clamp")
    >>> state = op.prepare(torch.tensor([2.0, 0.0]), coefficient=3.0)
    >>> h = torch.tensor([[[1.0, 5.0]]])
    >>> op.apply(h, torch.ones(1, 1, 1), state, torch.zeros(1, 1, dtype=torch.long)).tolist()
    [[[3.0, 5.0]]]
    >>> get_operator("add").fixed_form(3.0), get_operator("ablate").fixed_form(1.0), op.fixed_form(3.0)
    (ConstantAddition(scale=3.0), DirectionRemoval(fraction=1.0), None)
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass
from typing import ClassVar

import torch

from ..errors import SteeringSpecError


@dataclass(frozen=True)
class OpState:
    """What an operator precomputes for one layer (on the block's device and dtype).

    Attributes:
        tensor: ``c·v`` for additions (``[n, d]`` for token-wise vectors), else the unit direction.
        coefficient: the coefficient.
        norm: ``|v|`` (used by ``add_norm_preserving``).
        graded: the mask passed to :meth:`Operator.apply` holds strengths in ``[0, 1]`` (a KL cap's
            per-row scale, :mod:`steerlab.runtime.kl_cap`), not only 0 and 1. Operators linear in the
            mask need nothing; :class:`Rotate` turns by ``|c|·mask`` radians.
    """

    tensor: torch.Tensor
    coefficient: float
    norm: float = 1.0
    graded: bool = False


@dataclass(frozen=True)
class ConstantAddition:
    """The operator adds ``scale · v`` at every token it acts on, whatever the activation.

    A bias can hold it (:func:`steerlab.bake`), and so can the vLLM plugins and llama.cpp control
    vectors (:mod:`steerlab.export`).
    """

    scale: float


@dataclass(frozen=True)
class DirectionRemoval:
    """The operator removes ``fraction`` of each activation's projection on ``u = v/|v|``:
    ``h − fraction·(h·u)u``. Weights orthogonalised against ``u`` hold it (:func:`steerlab.bake`)."""

    fraction: float


FixedForm = ConstantAddition | DirectionRemoval
"""What an operator is when it is a fixed change of the residual stream (see :meth:`Operator.fixed_form`)."""


class Operator(ABC):
    """One kind of change to the residual stream (see the module docs).

    Subclasses set :attr:`name`, implement :meth:`apply`, and override the rules that differ. An
    operator with parameters of its own is a frozen dataclass whose fields are floats (see
    :meth:`parameters`).
    """

    name: ClassVar[str]
    merges: ClassVar[bool] = False
    """Several one-direction uses at the same positions sum into one ``[rows, 1, d]`` delta: its
    :meth:`apply` depends on nothing but ``state.tensor``, and :meth:`prepare`'s tensors add up."""
    refusal: ClassVar[str] = "it depends on each activation (it is not a fixed change of the residual stream)"
    """Why it has no fixed form (when :meth:`fixed_form` is ``None``): bake and the exports quote it."""
    inplace_under_autograd: ClassVar[bool] = False
    """:meth:`apply_` is safe where autograd tracks ``h`` (it does not overwrite a value that the
    backward pass needs)."""
    tokenwise: ClassVar[bool] = False
    """It applies a token-wise (ActAdd) vector ``[n, d]``: row ``i`` at each row's token ``i``."""

    def is_noop(self, coefficient: float) -> bool:
        """True when this operator with ``coefficient`` cannot change anything."""
        return coefficient == 0.0

    def fixed_form(self, coefficient: float) -> FixedForm | None:
        """What this operator with ``coefficient`` does when that does not depend on the activation
        (``None``: it does; :attr:`refusal` says how)."""
        return None

    def parameters(self) -> dict[str, float]:
        """The operator's own parameters (besides the coefficient) and their values: the fields
        of a dataclass operator, else none. :meth:`with_parameters` sets them."""
        if not is_dataclass(self):
            return {}
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}

    def with_parameters(self, values: Mapping[str, float]) -> Operator:
        """This operator with its parameters set to ``values`` (others keep their values).

        Raises:
            SteeringSpecError: a parameter it does not declare, or a value that is not a finite number.
        """
        if not values:
            return self
        known = self.parameters()
        unknown = sorted(set(values) - set(known))
        if unknown or not is_dataclass(self) or isinstance(self, type):
            takes = ", ".join(known) if known else "none"
            raise SteeringSpecError(f"operator {self.name!r} has no parameter {unknown[0]!r} (its parameters: {takes})")
        checked = {}
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SteeringSpecError(f"operator {self.name!r}: {key}={value!r} must be a finite number")
            checked[key] = float(value)
        return dataclasses.replace(self, **checked)

    def prepare(self, direction: torch.Tensor, coefficient: float) -> OpState:
        """The per-layer state: by default the unit direction and ``|v|``."""
        norm = float(direction.norm())
        return OpState(direction / max(norm, 1e-12), coefficient, norm)

    @abstractmethod
    def apply(self, h: torch.Tensor, mask: torch.Tensor, state: OpState, index: torch.Tensor) -> torch.Tensor:
        """The changed hidden states.

        Args:
            h: ``[batch, length, d]`` block output.
            mask: ``[batch, length, 1]`` float, 1 where this steering acts, 0 where it does not
                (with ``state.graded``, a strength in between: the change at ``c·mask``).
            state: from :meth:`prepare`.
            index: ``[batch, length]`` each token's index among its row's real tokens.
        """

    def apply_(self, h: torch.Tensor, mask: torch.Tensor, state: OpState, index: torch.Tensor) -> None:
        """:meth:`apply` written into ``h`` itself (observers holding ``h`` see the change)."""
        h.copy_(self.apply(h, mask, state, index))

    def __repr__(self) -> str:
        return f"<operator {self.name!r}>"


class Add(Operator):
    """``h + c·v``; a token-wise (ActAdd) vector ``[n, d]`` adds row ``i`` at token ``i < n``."""

    name = "add"
    merges = True
    tokenwise = True
    inplace_under_autograd = True  # h + m·δ: backward needs neither h nor the old value

    def fixed_form(self, coefficient: float) -> FixedForm | None:
        return ConstantAddition(coefficient)

    def prepare(self, direction: torch.Tensor, coefficient: float) -> OpState:
        return OpState(coefficient * direction, coefficient)

    @staticmethod
    def _factors(
        h: torch.Tensor, mask: torch.Tensor, state: OpState, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        delta = state.tensor
        if delta.dim() == 2:  # token-wise: front-aligned, row i of the vector at token i
            n = delta.shape[0]
            idx = index.to(h.device)
            front = ((idx >= 0) & (idx < n)).unsqueeze(-1).to(mask.dtype)
            return mask * front, delta[idx.clamp(0, n - 1)]
        return mask, delta

    def apply(self, h: torch.Tensor, mask: torch.Tensor, state: OpState, index: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(h, *self._factors(h, mask, state, index))

    def apply_(self, h: torch.Tensor, mask: torch.Tensor, state: OpState, index: torch.Tensor) -> None:
        h.addcmul_(*self._factors(h, mask, state, index))


class Ablate(Operator):
    """``h − c·(h·u)u``."""

    name = "ablate"

    def fixed_form(self, coefficient: float) -> FixedForm | None:
        return DirectionRemoval(coefficient)

    def apply(self, h: torch.Tensor, mask: torch.Tensor, state: OpState, index: torch.Tensor) -> torch.Tensor:
        u = state.tensor
        return h - (state.coefficient * mask) * (h @ u).unsqueeze(-1) * u


class Clamp(Operator):
    """``h + (c − h·u)u``: the projection on ``u`` is set to ``c`` (also for ``c = 0``)."""

    name = "clamp"

    def is_noop(self, coefficient: float) -> bool:
        return False

    def apply(self, h: torch.Tensor, mask: torch.Tensor, state: OpState, index: torch.Tensor) -> torch.Tensor:
        u = state.tensor
        return h + mask * (state.coefficient - (h @ u).unsqueeze(-1)) * u


class AddNormPreserving(Operator):
    """``h + c·v`` rescaled to ``|h|``."""

    name = "add_norm_preserving"
    refusal = "it rescales each activation (it is not a fixed change of the residual stream)"

    def apply(self, h: torch.Tensor, mask: torch.Tensor, state: OpState, index: torch.Tensor) -> torch.Tensor:
        new = h + (state.coefficient * state.norm * mask) * state.tensor
        scale = h.norm(dim=-1, keepdim=True) / new.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return torch.where(mask > 0, new * scale, h)


def _sided(direction: torch.Tensor, coefficient: float) -> OpState:
    """The state of ``push`` / ``rotate``: the unit direction on the side the coefficient points to
    (``sign(c)·u``), so that a projection on it is positive where the token is already on target."""
    norm = float(direction.norm())
    side = -1.0 if coefficient < 0 else 1.0
    return OpState(direction * (side / max(norm, 1e-12)), coefficient, norm)


class Push(Operator):
    """Minimal push: move ``h`` along ``u`` only as far as needed for its projection on ``±u`` to
    reach a target, and not at all where it is already there (LiSeCo's closed form, AxBench's
    thresholding intervention, StTP). For ``c > 0`` the target is ``ln(c)·|v|``::

        h + max(0, ln(c)·|v| − h·u) · u

    and for ``c < 0`` the mirror image (projection at most ``−ln|c|·|v|``). So ``|c| = 1`` is the
    *sign condition*: only tokens projecting on the wrong side of zero are moved, onto zero;
    ``|c| = e`` asks for a margin of ``|v|`` on the right side; ``|c| < 1`` moves only tokens far on
    the wrong side, and as ``c → 0`` the target recedes to ``−∞`` (``c = 0`` moves nothing). The
    target is in units of the vector's norm (for a mean-difference vector, the distance between the
    two sides' means), so one coefficient means the same at every layer. Use it at layers where the
    two sides project with opposite signs (:func:`steerlab.extraction.sign.opposite_sign_layers`):
    there the sign of ``h·u`` is a classifier, and the push is spent only on tokens it places on
    the wrong side.

    Example:
        >>> op = get_operator("push")
        >>> state = op.prepare(torch.tensor([2.0, 0.0]), coefficient=math.e)  # target: h·u ≥ 1·|v| = 2
        >>> h = torch.tensor([[[-3.0, 1.0], [0.5, 1.0], [4.0, 1.0]]])
        >>> op.apply(h, torch.ones(1, 3, 1), state, torch.zeros(1, 3, dtype=torch.long)).tolist()
        [[[2.0, 1.0], [2.0, 1.0], [4.0, 1.0]]]
    """

    name = "push"
    refusal = "it moves each token by how far its own projection is from the target (not a fixed change)"

    def prepare(self, direction: torch.Tensor, coefficient: float) -> OpState:
        return _sided(direction, coefficient)

    def apply(self, h: torch.Tensor, mask: torch.Tensor, state: OpState, index: torch.Tensor) -> torch.Tensor:
        if state.coefficient == 0.0:
            return h
        return torch.addcmul(h, self._push(h, mask, state), state.tensor)

    def apply_(self, h: torch.Tensor, mask: torch.Tensor, state: OpState, index: torch.Tensor) -> None:
        if state.coefficient != 0.0:  # in place: h + 0·u leaves a token as it was
            h.addcmul_(self._push(h, mask, state), state.tensor)

    @staticmethod
    def _push(h: torch.Tensor, mask: torch.Tensor, state: OpState) -> torch.Tensor:
        """``[..., 1]``: how far each token moves along ``sign(c)·u`` (0 where it is on target or masked)."""
        target = math.log(abs(state.coefficient)) * state.norm
        return (h @ state.tensor).unsqueeze(-1).neg_().add_(target).clamp_min_(0.0).mul_(mask)


@dataclass(frozen=True)
class Rotate(Operator):
    """Rotation toward the direction, norm-preserving (angular steering): each token's residual is
    turned by ``|c|`` radians in the plane of ``h`` and ``u``, toward ``u`` for ``c > 0`` and toward
    ``−u`` for ``c < 0`` (so ``c = −π``, 180°, points it along ``−u`` wherever it was along ``u``),
    and never past ``±u``. Its norm is kept. With ``selective=1`` (the default; Selective Steering) only
    tokens whose projection has the wrong sign turn; the others are left exactly as they were.

    Attributes:
        selective: ``1``: only tokens with ``h·u`` of the wrong sign; ``0``: every token.

    Example:
        >>> op = get_operator("rotate")
        >>> state = op.prepare(torch.tensor([1.0, 0.0]), coefficient=math.pi / 2)  # 90°
        >>> h = torch.tensor([[[-1.0, -2.0], [1.0, 1.0]]])  # the second one already has h·u > 0
        >>> out = op.apply(h, torch.ones(1, 2, 1), state, torch.zeros(1, 2, dtype=torch.long))
        >>> [[round(x, 4) for x in t] for t in out[0].tolist()]
        [[2.0, -1.0], [1.0, 1.0]]
    """

    name: ClassVar[str] = "rotate"
    refusal: ClassVar[str] = "it turns each activation by an angle (it is not a fixed change of the residual stream)"
    selective: float = 1.0

    def __post_init__(self) -> None:
        if self.selective not in (0.0, 1.0):
            raise SteeringSpecError(f"operator 'rotate': selective={self.selective!r} must be 0 or 1")

    def prepare(self, direction: torch.Tensor, coefficient: float) -> OpState:
        return _sided(direction, coefficient)

    def apply(self, h: torch.Tensor, mask: torch.Tensor, state: OpState, index: torch.Tensor) -> torch.Tensor:
        if state.coefficient == 0.0:
            return h
        rest, k_rest, k_u = self._turn(h, mask, state)
        return torch.addcmul(h, rest, k_rest).addcmul_(k_u, state.tensor)

    def apply_(self, h: torch.Tensor, mask: torch.Tensor, state: OpState, index: torch.Tensor) -> None:
        if state.coefficient == 0.0:
            return
        rest, k_rest, k_u = self._turn(h, mask, state)
        h.addcmul_(rest, k_rest).addcmul_(k_u, state.tensor)

    def _turn(
        self, h: torch.Tensor, mask: torch.Tensor, state: OpState
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rest, k_rest, k_u)``: the turned token is ``h + k_rest·rest + k_u·u'``, both factors 0
        (exactly) where a token does not turn, so it is left exactly as it was.

        In the plane of ``u' = sign(c)·u`` and ``w = rest/|rest|``, ``h = a·u' + b·w`` (``b ≥ 0``);
        turning by ``α`` toward ``u'`` gives ``(a cos α + b sin α, b cos α − a sin α)``, and where
        that passes ``u'`` (second part < 0) the token is set along ``u'`` with its norm. No
        trigonometry per token. Selective with ``α ≤ π/2`` (the usual case), only tokens with
        ``a < 0`` turn, and they cannot pass ``u'``: ``k_rest = cos α − 1 − sin α·a/b`` and
        ``k_u = a(cos α − 1) + b sin α``, a dozen small ops fewer than the general case."""
        angle = min(abs(state.coefficient), math.pi)
        su = state.tensor
        a = (h @ su).unsqueeze(-1)
        rest = torch.addcmul(h, a, su, value=-1.0)
        b = torch.linalg.vector_norm(rest, dim=-1, keepdim=True)
        if self.selective and angle <= math.pi / 2 and not state.graded:
            cos, sin = math.cos(angle), math.sin(angle)
            k_rest = (a / b.clamp_min(1e-12)).mul_(-sin).add_(cos - 1.0)
            k_u = torch.add(a * (cos - 1.0), b, alpha=sin)
            on = (a < 0) * mask
        else:
            k_rest, k_u, on = self._general(a, b, mask, angle, state.graded)
        return rest, k_rest.mul_(on), k_u.mul_(on)

    def _general(
        self, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, angle: float, graded: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(k_rest, k_u, on)`` of :meth:`_turn` for any angle, every token or a graded mask."""
        cos: float | torch.Tensor
        sin: float | torch.Tensor
        if graded:  # a strength per token: the angle scales with it, and only a zero strength is off
            scaled = mask * angle
            cos, sin = torch.cos(scaled), torch.sin(scaled)
            on = (mask > 0).to(a.dtype)
        else:
            cos, sin = math.cos(angle), math.sin(angle)
            on = mask
        if self.selective:
            on = (a < 0) * on
        new_b = b * cos - a * sin
        new_a = torch.where(new_b < 0, torch.hypot(a, b), a * cos + b * sin)
        k_rest = new_b.clamp_min_(0.0).div_(b.clamp_min(1e-12)).sub_(1.0)
        return k_rest, new_a.sub_(a), on


OPERATORS: dict[str, Operator] = {
    op.name: op for op in (Add(), Ablate(), Clamp(), AddNormPreserving(), Push(), Rotate())
}
"""The operators by name."""


def get_operator(operator: str | Operator) -> Operator:
    """The :class:`Operator` called ``operator`` (an instance is returned as it is).

    Raises:
        SteeringSpecError: no operator has that name.
    """
    if isinstance(operator, Operator):
        return operator
    op = OPERATORS.get(operator) if isinstance(operator, str) else None
    if op is None:
        raise SteeringSpecError(f"operator={operator!r}: use one of {', '.join(OPERATORS)}")
    return op


BUILTIN = frozenset(OPERATORS)
"""The names of steerlab's own operators (never unregistered)."""


def register_operator(op: Operator, replace: bool = False) -> None:
    """Make ``op`` available by its name (``replace=True`` to swap an existing one): in
    :class:`~steerlab.core.steering.Steering`, the CLI's ``--operator``, the server's
    ``"operator"`` field and the exports.

    Raises:
        SteeringSpecError: the name is taken and ``replace`` is False, or it is not a usable name.
    """
    if not isinstance(op, Operator):
        raise SteeringSpecError(f"register_operator takes an Operator, got {type(op).__name__}")
    name = getattr(op, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise SteeringSpecError(f"an operator's name must be an identifier (letters, digits, _), not {name!r}")
    if name in OPERATORS and not replace:
        raise SteeringSpecError(f"an operator called {name!r} exists: pass replace=True to swap it")
    OPERATORS[name] = op


def unregister_operator(name: str) -> Operator:
    """Remove the operator registered as ``name`` and return it (steerlab's own stay).

    Raises:
        SteeringSpecError: no such operator, or one of steerlab's own.
    """
    if name in BUILTIN:
        raise SteeringSpecError(f"{name!r} is one of steerlab's own operators; it stays registered")
    if name not in OPERATORS:
        raise SteeringSpecError(f"no operator called {name!r} is registered")
    return OPERATORS.pop(name)
