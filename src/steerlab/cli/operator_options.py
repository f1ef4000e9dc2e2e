"""``--operator NAME`` and ``--operator-param KEY=VALUE``: an operator of the registry, read when the
command runs (so one added with :func:`steerlab.core.operators.register_operator` is offered too),
with the parameters it declares.

Installed packages add operators to the command line (``steerlab generate``, ``steerlab serve``, the
exports) through the entry-point group ``steerlab.operators``: each entry names an
:class:`~steerlab.core.operators.Operator` instance or class, registered when a command starts
(:func:`load_operator_plugins`), e.g. in a package's ``pyproject.toml``::

    [project.entry-points."steerlab.operators"]
    cap = "mypackage.ops:CapProjection"

Example:
    >>> parse_parameters(["factor=2", "floor=-0.5"])
    {'factor': 2.0, 'floor': -0.5}
    >>> make_operator("add", []).name
    'add'
"""

from __future__ import annotations

import math
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

import typer

from ..errors import SteeringError

if TYPE_CHECKING:
    from ..core.operators import Operator

OPERATOR_HELP = (
    "How each vector acts: add (default), ablate, clamp, add_norm_preserving or a registered operator; "
    "one for all vectors or one each."
)
PARAMETER_HELP = "A parameter of the operator(s), KEY=VALUE (repeat); each --operator given must declare it."
PLUGINS = "steerlab.operators"
"""The entry-point group of operators from installed packages."""


def load_operator_plugins() -> list[str]:
    """Register the operators of the ``steerlab.operators`` entry points not registered yet; their names.

    Raises:
        SteeringSpecError: an entry that cannot be loaded or is not an operator (naming it).
    """
    from ..core.operators import OPERATORS, Operator, register_operator
    from ..errors import SteeringSpecError

    added = []
    for entry in entry_points(group=PLUGINS):
        try:
            obj = entry.load()
            op = obj() if isinstance(obj, type) else obj
        except Exception as exc:  # a broken plugin: say which, not a bare traceback
            raise SteeringSpecError(f"operator plugin {entry.name!r} ({entry.value}) failed to load: {exc}") from exc
        if not isinstance(op, Operator):
            raise SteeringSpecError(f"operator plugin {entry.name!r} ({entry.value}) is not a steerlab Operator")
        if op.name not in OPERATORS:
            register_operator(op)
            added.append(op.name)
    return added


def operator_option(value: list[str] | str | None) -> list[str] | str | None:
    """Option callback: each ``--operator`` names a registered operator (checked before a model loads)."""
    from ..core.operators import OPERATORS

    for name in value if isinstance(value, list) else [value]:
        if name is not None and name not in OPERATORS:
            raise typer.BadParameter(f"{name!r} is not a registered operator: use one of {', '.join(OPERATORS)}")
    return value


def parse_parameters(items: list[str]) -> dict[str, float]:
    """``["key=value", ...]`` as ``{key: float}`` (each key once, each value a finite number)."""
    out: dict[str, float] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not sep or not key or not math.isfinite(value):
            raise typer.BadParameter(f"{item!r}: give KEY=VALUE with a finite number", param_hint="--operator-param")
        if key in out:
            raise typer.BadParameter(f"{key!r} is given twice", param_hint="--operator-param")
        out[key] = value
    return out


def parameter_option(value: list[str]) -> list[str]:
    """Option callback: each ``--operator-param`` is ``KEY=VALUE`` (checked before a model loads)."""
    parse_parameters(value)
    return value


def make_operator(name: str, parameters: list[str]) -> Operator:
    """The registered operator ``name`` with ``parameters`` (``KEY=VALUE`` strings) set."""
    from ..core.operators import get_operator

    try:
        return get_operator(name).with_parameters(parse_parameters(parameters))
    except SteeringError as exc:
        raise typer.BadParameter(str(exc), param_hint="--operator-param") from None


def make_operators(names: list[str], parameters: list[str], n_vectors: int) -> list[Operator]:
    """One operator per vector: ``names`` holds none (``add``), one for all, or one each."""
    if len(names) not in (0, 1, n_vectors):
        raise typer.BadParameter("give one --operator for all vectors or one per --vector", param_hint="--operator")
    if parameters and not names:
        raise typer.BadParameter("--operator-param goes with --operator", param_hint="--operator-param")
    chosen = names or ["add"]
    return [make_operator(chosen[i] if len(chosen) > 1 else chosen[0], parameters) for i in range(n_vectors)]
