"""The common shape of every evaluation result: typed, ``to_json()``, ``to_markdown()``, ``plot()``.

A result is only written as *complete* when its run finished: :meth:`Report.write` refuses a
result whose ``complete`` flag is false, so a partial run never leaves a report that looks whole.

Example:
    >>> class Demo(Report):
    ...     def rows(self): return [{"coef": 0.0, "score": 0.5}]
    >>> print(Demo(title="demo").to_markdown().splitlines()[2])
    | coef | score |
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from ..errors import SteeringError


class IncompleteReportError(SteeringError):
    """A report of a run that did not finish was about to be written."""


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else round(value, 6)
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    return value


def fmt(value: Any) -> str:
    """Format a table cell: floats to 3 decimals, everything else as text."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A GitHub markdown table of ``rows`` (dicts sharing keys)."""
    if not rows:
        return "_(no rows)_"
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


@dataclass
class Report:
    """Base class of evaluation results. Subclasses add fields and implement :meth:`rows`."""

    title: str = ""
    complete: bool = True
    settings: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """The result as table rows (one dict per row)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """Everything in the result, JSON-ready."""
        out = _jsonable(asdict(self))
        out["kind"] = type(self).__name__
        out["rows"] = _jsonable(self.rows())
        return out

    def to_json(self, indent: int = 2) -> str:
        """The result as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    def to_markdown(self) -> str:
        """A markdown section: title, table and settings."""
        head = f"### {self.title}\n\n" if self.title else ""
        note = "" if self.complete else "\n\n**INCOMPLETE RUN — numbers cover only part of the data.**"
        return head + markdown_table(self.rows()) + note

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Draw the result as a PNG at ``path`` (subclasses override)."""
        raise NotImplementedError(f"{type(self).__name__} has no plot")

    def write(self, out_dir: str | os.PathLike[str], name: str | None = None, plot: bool = True) -> Path:
        """Write ``{name}.json``, ``{name}.md`` and (if it has one) ``{name}.png`` into ``out_dir``.

        Raises:
            IncompleteReportError: the run did not finish.
        """
        if not self.complete:
            raise IncompleteReportError(
                f"{type(self).__name__} is from an incomplete run; refusing to write a report that looks complete"
            )
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = name or type(self).__name__.lower()
        (out / f"{stem}.json").write_text(self.to_json(), encoding="utf-8")
        (out / f"{stem}.md").write_text(self.to_markdown() + "\n", encoding="utf-8")
        if plot:
            try:
                self.plot(out / f"{stem}.png")
            except NotImplementedError:
                pass
        return out


def new_figure(width: float = 6.0, height: float = 4.0) -> Any:
    """A matplotlib figure on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(width, height), dpi=120)


def save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Save and close ``fig`` as a PNG."""
    import matplotlib.pyplot as plt

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(p)
    plt.close(fig)
    return p
