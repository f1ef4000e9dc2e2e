"""The steering setting ``steerlab demo`` shows: a packaged JSON file (``demo_setting.json``) naming,
for each direction, the extraction method, the layers and the signed coefficient, and where they
come from (``source``).

:func:`steerlab.evaluate.demo_choice.from_frontier` chooses it from a frontier report;
``scripts/demo_setting.py FRONTIER_JSON`` writes it into the package (:func:`write_demo_setting`).

Example:
    >>> s = load_demo_setting()
    >>> sorted(s.directions)
    [-1, 1]
    >>> s.directions[1].coefficient > 0 > s.directions[-1].coefficient
    True
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import SteeringError
from ..files import atomic_file
from ..limits import LimitError, Limits

FILE = "demo_setting.json"
"""The packaged setting, beside this module."""
KEYS = {1: "positive", -1: "negative"}


class DemoSettingError(SteeringError):
    """A demo setting (or the frontier report it is built from) that cannot be used."""

    code = "invalid_demo_setting"


@dataclass(frozen=True)
class DirectionSetting:
    """How the demo steers one way: a vector from ``method`` at ``layers``, times ``coefficient``,
    applied by ``operator``.

    Attributes:
        held_out_effect, held_out_cost: what the frontier measured for it (``None``: not measured).
        operator: how the vector acts (``"add"``, ``"push"``, ``"rotate"``, ...).
        kl_cap: a per-token KL cap in nats (``None``: none; :mod:`steerlab.runtime.kl_cap`).
    """

    method: str
    layers: tuple[int, ...]
    coefficient: float
    held_out_effect: float | None = None
    held_out_cost: float | None = None
    operator: str = "add"
    kl_cap: float | None = None

    @property
    def label(self) -> str:
        """e.g. ``mean_diff L8-19 c=+1``."""
        ls = self.layers
        span = (
            f"{ls[0]}-{ls[-1]}"
            if len(ls) > 1 and list(ls) == list(range(ls[0], ls[-1] + 1))
            else ",".join(map(str, ls))
        )
        how = "" if self.operator == "add" else f" ({self.operator})"
        cap = "" if self.kl_cap is None else f" KL<={self.kl_cap:g}"
        return f"{self.method}{how} L{span} c={self.coefficient:+g}{cap}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "layers": list(self.layers),
            "coefficient": self.coefficient,
            "held_out_effect": self.held_out_effect,
            "held_out_cost": self.held_out_cost,
            "operator": self.operator,
            **({} if self.kl_cap is None else {"kl_cap": self.kl_cap}),
        }


@dataclass(frozen=True)
class DemoSetting:
    """Both directions of the demo and where they come from.

    Attributes:
        directions: ``{+1: ..., -1: ...}``.
        source: where the setting comes from (a frontier report, or the fixed default).
    """

    directions: dict[int, DirectionSetting]
    source: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (what :func:`load_demo_setting` reads)."""
        return {
            "source": self.source,
            **{KEYS[d]: s.to_dict() for d, s in sorted(self.directions.items(), reverse=True)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DemoSetting:
        """Read the JSON form; :class:`DemoSettingError` when a field is missing or wrong."""
        try:
            directions = {}
            for d, key in KEYS.items():
                e = data[key]
                layers = tuple(int(x) for x in e["layers"])
                coef = float(e["coefficient"])
                if not layers or not math.isfinite(coef) or coef * d <= 0:
                    raise ValueError(f"{key}: needs layers and a finite coefficient of sign {d:+d}")
                directions[d] = DirectionSetting(
                    str(e["method"]),
                    layers,
                    coef,
                    held_out_value(e.get("held_out_effect")),
                    held_out_value(e.get("held_out_cost")),
                    str(e.get("operator", "add")),
                    Limits.check_kl_cap(e.get("kl_cap"), f"{key}.kl_cap"),
                )
            return cls(directions, str(data["source"]))
        except (KeyError, TypeError, ValueError, LimitError) as exc:
            raise DemoSettingError(
                f"not a demo setting ({type(exc).__name__}: {exc}); "
                "rebuild it with scripts/demo_setting.py FRONTIER_JSON"
            ) from None


def held_out_value(x: Any) -> float | None:
    """A measured value as a float, ``None`` where it was not measured (``None`` or not finite).

    Example:
        >>> held_out_value(0.5), held_out_value(float("nan")), held_out_value(None)
        (0.5, None, None)
    """
    return None if x is None or not math.isfinite(float(x)) else float(x)


def load_demo_setting(path: str | os.PathLike[str] | None = None) -> DemoSetting:
    """The packaged demo setting (or the one at ``path``)."""
    if path is None:
        text = resources.files("steerlab.data").joinpath(FILE).read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    return DemoSetting.from_dict(json.loads(text))


def write_demo_setting(setting: DemoSetting, path: str | os.PathLike[str] | None = None) -> Path:
    """Write ``setting`` as JSON (default: the packaged file) and return its path."""
    dest = Path(path) if path is not None else Path(__file__).with_name(FILE)
    with atomic_file(dest) as tmp:
        tmp.write_text(json.dumps(setting.to_dict(), indent=2) + "\n", encoding="utf-8")
    return dest
