"""Shared pieces of the command line: parsing of ranges and lists, global flags, error handling,
progress, and the ``run.json`` manifest written into every output folder.

Example:
    >>> parse_int_list("8-10,12")
    [8, 9, 10, 12]
    >>> parse_float_list("-4,0,4")
    [-4.0, 0.0, 4.0]
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from ..errors import ContextLengthError, SteeringError

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)

_RANGE = re.compile(r"(-?\d+)-(-?\d+)")


@dataclass
class Flags:
    """Global flags (``--quiet``, ``--json``, ``--debug``)."""

    quiet: bool = False
    json: bool = False
    debug: bool = False


FLAGS = Flags()


def parse_int_list(spec: str) -> list[int]:
    """``"8-19"``, ``"8,10,12"``, ``"3"``, ``"-1"`` → list of ints (ranges inclusive)."""
    out: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        m = _RANGE.fullmatch(part)
        try:
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                if hi < lo:
                    raise typer.BadParameter(f"range {part!r} runs backwards; write low-high")
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise typer.BadParameter(f"{part!r} is not an integer or a range like 8-19") from None
    if not out:
        raise typer.BadParameter(f"no values in {spec!r}; write e.g. 8-19 or 8,10,12")
    return out


def parse_float_list(spec: str) -> list[float]:
    """``"-4,0,4"`` or ``"1.5"`` → list of floats."""
    try:
        out = [float(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        raise typer.BadParameter(f"{spec!r} is not a comma-separated list of numbers such as -4,0,4") from None
    if not out:
        raise typer.BadParameter(f"no numbers in {spec!r}")
    if not all(math.isfinite(x) for x in out):
        raise typer.BadParameter(f"{spec!r} holds nan or inf; give finite numbers")
    return out


# Option callbacks for floats (typer's min= lets NaN through and has no exclusive bound).
def finite(value: Any) -> Any:
    """The option (a float, or a list of floats) must be finite."""
    values: list[Any] = value if isinstance(value, list) else [value]
    if any(v is not None and not math.isfinite(v) for v in values):
        raise typer.BadParameter("must be a finite number")
    return value


def positive(value: float | None) -> float | None:
    """The option must be a number greater than 0."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"must be greater than 0 (got {value:g})")
    return value


def non_negative(value: float | None) -> float | None:
    """The option must be a finite number, 0 or more."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise typer.BadParameter(f"must be 0 or more (got {value:g})")
    return value


def parse_positions(spec: str) -> str | tuple[int, int | None]:
    """``all|prompt|generated`` or a window ``start:end`` (``end`` may be empty)."""
    if ":" in spec:
        start, _, end = spec.partition(":")
        try:
            return int(start or 0), (int(end) if end else None)
        except ValueError:
            raise typer.BadParameter(f"window {spec!r} must look like 0:8 or 3:") from None
    return spec


def say(message: str) -> None:
    """Print a status line unless ``--quiet`` or ``--json``."""
    if not (FLAGS.quiet or FLAGS.json):
        err_console.print(message)


@contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner while a step runs (hidden with ``--quiet`` / ``--json``)."""
    if FLAGS.quiet or FLAGS.json:
        yield
        return
    with err_console.status(message):
        yield


def progress_flag() -> bool | None:
    """``progress=`` argument for library calls: off when quiet."""
    return False if (FLAGS.quiet or FLAGS.json) else None


def run(fn: Callable[[], T]) -> T:
    """Run a command body: library errors become a one-line message (never wrapped) and exit code 1.

    Bad input found only once the model is loaded (a prompt longer than the model's context)
    exits with 2, as a bad option does.
    """
    try:
        return fn()
    except SteeringError as exc:
        if FLAGS.debug:
            raise
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2 if isinstance(exc, ContextLengthError) else 1) from None
    except (OSError, ValueError, RuntimeError) as exc:
        if FLAGS.debug:
            raise
        err_console.print(f"[red]error:[/red] {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
                          highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def emit(data: Any, human: Callable[[], None]) -> None:
    """Print ``data`` as JSON with ``--json``, else call ``human()``."""
    if FLAGS.json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        human()


def file_hash(path: Path) -> str:
    """sha256 (first 16 hex) of a file, or of a folder's files in name order."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def model_hash(lm: Any) -> str:
    """A cheap fingerprint of the weights (shapes and a strided sample of every tensor)."""
    h = hashlib.sha256()
    for name, p in sorted(lm.model.state_dict().items()):
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 64)].float().cpu().numpy().tobytes()
        h.update(name.encode() + str(tuple(p.shape)).encode() + sample)
    return h.hexdigest()[:16]


def write_manifest(out_dir: Path, lm: Any = None, seed: int | None = None, data_hash: str = "", **extra: Any) -> Path:
    """Write ``run.json`` (command, versions, model id and hash, seed, data hash) into ``out_dir``."""
    import torch
    import transformers

    from .. import __version__

    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "command": ["steerlab", *sys.argv[1:]],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "steerlab": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "model_id": getattr(lm, "model_id", None),
        "model_hash": model_hash(lm) if lm is not None else None,
        "seed": seed,
        "data_hash": data_hash,
        **extra,
    }
    path = out_dir / "run.json"
    path.write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    return path


def quiet_env() -> None:
    """Silence library progress bars when the CLI is quiet."""
    if FLAGS.quiet or FLAGS.json:
        os.environ["STEERLAB_QUIET"] = "1"
