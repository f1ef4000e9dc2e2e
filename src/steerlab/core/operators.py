"""How a steering changes the residual stream: one :class:`Operator` object per kind.

Each operator holds everything that its kind means — how it changes a hidden state, when it is a
no-op, whether several of it merge into one delta, and whether (and how) it can be baked into
weights — so the engine (:mod:`steerlab.runtime.session`), the specification (:mod:`steerlab.core.steering`) and
:mod:`steerlab.export.bake` ask the operator instead of switching on its name.

With ``c`` the coefficient, ``v`` the layer's direction and ``u = v/|v|``:

* ``"add"`` — ``h + c·v``; a token-wise (ActAdd) vector adds its row ``i`` at token ``i``;
* ``"ablate"`` — ``h − c·(h·u)u`` (``c=1`` removes the direction entirely);
* ``"clamp"`` — ``h + (c − h·u)u``: the projection on ``u`` is set to ``c``;
* ``"add_norm_preserving"`` — ``h + c·v`` rescaled to the norm of ``h``.

Example:
    >>> import torch
    >>> op = get_operator("clamp")
    >>> state = op.prepare(torch.tensor([2.0, 0.0]), coefficient=3.0)
    >>> h = torch.tensor([[[1.0, 5.0]]])
    >>> op.apply(h, torch.ones(1, 1, 1), state, torch.zeros(1, 1, dtype=torch.long)).tolist()
    [[[3.0, 5.0]]]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
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
    """

    tensor: torch.Tensor
    coefficient: float
    norm: float = 1.0


class Operator(ABC):
    """One kind of change to the residual stream (see the module docs).

    Subclasses set :attr:`name`, implement :meth:`apply`, and override the rules that differ.
    """

    name: ClassVar[str]
    merges: ClassVar[bool] = False
    """Several one-direction uses at the same positions sum into one ``[rows, 1, d]`` delta."""
    bake_mode: ClassVar[str | None] = None
    """How :mod:`steerlab.export.bake` writes it into weights (``"add"``, ``"ablate"``), or ``None``."""
    bake_refusal: ClassVar[str] = ""
    """Why it cannot be baked, when :attr:`bake_mode` is ``None``."""
    inplace_under_autograd: ClassVar[bool] = False
    """:meth:`apply_` is safe where autograd tracks ``h`` (it does not overwrite a value that the
    backward pass needs)."""

    def is_noop(self, coefficient: float) -> bool:
        """True when this operator with ``coefficient`` cannot change anything."""
        return coefficient == 0.0

    def prepare(self, direction: torch.Tensor, coefficient: float) -> OpState:
        """The per-layer state: by default the unit direction and ``|v|``."""
        norm = float(direction.norm())
        return OpState(direction / max(norm, 1e-12), coefficient, norm)

    @abstractmethod
    def apply(self, h: torch.Tensor, mask: torch.Tensor, state: OpState, index: torch.Tensor) -> torch.Tensor:
        """The changed hidden states.

        Args:
            h: ``[batch, length, d]`` block output.
            mask: ``[batch, length, 1]`` float, 1 where this steering acts.
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
    bake_mode = "add"
    inplace_under_autograd = True  # h + m·δ: backward needs neither h nor the old value

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
    bake_mode = "ablate"

    def apply(self, h: torch.Tensor, mask: torch.Tensor, state: OpState, index: torch.Tensor) -> torch.Tensor:
        u = state.tensor
        return h - (state.coefficient * mask) * (h @ u).unsqueeze(-1) * u


class Clamp(Operator):
    """``h + (c − h·u)u``: the projection on ``u`` is set to ``c`` (also for ``c = 0``)."""

    name = "clamp"
    bake_refusal = "it depends on each activation (it is not a fixed change of the weights)"

    def is_noop(self, coefficient: float) -> bool:
        return False

    def apply(self, h: torch.Tensor, mask: torch.Tensor, state: OpState, index: torch.Tensor) -> torch.Tensor:
        u = state.tensor
        return h + mask * (state.coefficient - (h @ u).unsqueeze(-1)) * u


class AddNormPreserving(Operator):
    """``h + c·v`` rescaled to ``|h|``."""

    name = "add_norm_preserving"
    bake_refusal = "it rescales each activation (it is not a fixed change of the weights)"

    def apply(self, h: torch.Tensor, mask: torch.Tensor, state: OpState, index: torch.Tensor) -> torch.Tensor:
        new = h + (state.coefficient * state.norm * mask) * state.tensor
        scale = h.norm(dim=-1, keepdim=True) / new.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return torch.where(mask > 0, new * scale, h)


OPERATORS: dict[str, Operator] = {op.name: op for op in (Add(), Ablate(), Clamp(), AddNormPreserving())}
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


def register_operator(op: Operator, replace: bool = False) -> None:
    """Make ``op`` available by its name (``replace=True`` to swap an existing one).

    Raises:
        SteeringSpecError: the name is taken and ``replace`` is False.
    """
    if op.name in OPERATORS and not replace:
        raise SteeringSpecError(f"an operator called {op.name!r} exists: pass replace=True to swap it")
    OPERATORS[op.name] = op
