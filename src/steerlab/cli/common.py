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
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from ..errors import ContextLengthError, DatasetError, LayerRangeError, SteeringError, SteeringSpecError
from ..limits import LimitError, Limits

if TYPE_CHECKING:
    from ..executor import Executor

T = TypeVar("T")

# Markup off: nothing printed (a message, a prompt, a path, "pip install steerlab[ray]") is ever
# read as a rich style tag; styles are given as Text styles instead.
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)

_RANGE = re.compile(r"(-?\d+)-(-?\d+)")

USAGE_ERRORS: tuple[type[SteeringError], ...] = (
    LimitError,
    ContextLengthError,
    DatasetError,
    LayerRangeError,
    SteeringSpecError,
)
"""Library errors that mean the input was bad (data, layers, options, a text over the context):
exit code 2, as a bad option. Any other error is a runtime failure: exit code 1."""

LIMITS = Limits()
"""Bounds the command line checks before a model is loaded (texts given as arguments)."""


@dataclass
class Flags:
    """Global flags (``--quiet``, ``--json``, ``--debug``)."""

    quiet: bool = False
    json: bool = False
    debug: bool = False


FLAGS = Flags()


LayerItem = int | tuple[int, int]


def layer_items(spec: str) -> list[LayerItem]:
    """``"8-19,22"`` → ``[(8, 19), 22]``: layers and inclusive ranges as written, not expanded
    (ranges are bounded by the model's layers before they are expanded: :func:`resolve_layers`).

    Raises:
        typer.BadParameter: not integers or ranges, or a range that runs backwards.
    """
    out: list[LayerItem] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        m = _RANGE.fullmatch(part)
        try:
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                if hi < lo and (lo >= 0) == (hi >= 0):
                    raise typer.BadParameter(f"range {part!r} runs backwards; write low-high")
                out.append((lo, hi))
            else:
                out.append(int(part))
        except ValueError:
            raise typer.BadParameter(f"{part!r} is not an integer or a range like 8-19") from None
    if not out:
        raise typer.BadParameter(f"no values in {spec!r}; write e.g. 8-19 or 8,10,12")
    return out


def parse_int_list(spec: str) -> list[int]:
    """``"8-19"``, ``"8,10,12"``, ``"3"``, ``"-1"`` → list of ints (ranges inclusive, expanded as
    written; layers of a model go through :func:`resolve_layers`, which bounds them first)."""
    out: list[int] = []
    for item in layer_items(spec):
        out.extend(range(item[0], item[1] + 1) if isinstance(item, tuple) else [item])
    return out


def layers_option(value: str | None) -> str | None:
    """Option callback: the layers' syntax is checked before a model is loaded."""
    if value is not None:
        layer_items(value)
    return value


def layer_sets_option(value: str | None) -> str | None:
    """Option callback for ``--layer-sets`` (groups separated by ``;``)."""
    if value is not None:
        parts = [part for part in value.split(";") if part.strip()]
        if not parts:
            raise typer.BadParameter(f"no layer sets in {value!r}; write e.g. '8-11;12-15'")
        for part in parts:
            layer_items(part)
    return value


def resolve_layers(spec: str, lm: Any, option: str = "--layers") -> list[int]:
    """The layers ``spec`` names in ``lm``, sorted: a range is bounded by the model's layers before
    it is expanded, negative indices count from the end (``-1``: the last block) and are resolved
    here (the resolved layers are what a run records), and each layer may be named once
    (:meth:`steerlab.limits.Limits.layer_list`).

    Raises:
        LimitError: a layer outside the model, a duplicate, or a range that runs backwards.

    Example:
        >>> class M: n_layers, d_model, context_length = 5, 8, 64
        >>> resolve_layers("-1,1-2", M())
        [1, 2, 4]
    """
    limits = Limits(n_layers=int(lm.n_layers))
    out: list[int] = []
    for item in layer_items(spec):
        if isinstance(item, tuple):
            lo, hi = (limits.layer_list([x], option, negative=True)[0] for x in item)
            if hi < lo:
                raise LimitError(
                    f"{option}: the range {item[0]}-{item[1]} runs backwards in a model of "
                    f"{lm.n_layers} blocks (layers {lo} to {hi})"
                )
            out.extend(range(lo, hi + 1))
        else:
            out.append(item)
    return sorted(limits.layer_list(out, option, negative=True))


def resolve_layer_sets(spec: str | None, lm: Any, option: str = "--layer-sets") -> list[list[int]] | None:
    """``"8-11;12-15;16"`` → resolved layer groups (:func:`resolve_layers` each)."""
    if spec is None:
        return None
    return [resolve_layers(part, lm, option) for part in spec.split(";") if part.strip()]


def resolve_layer(layer: int | None, lm: Any, option: str) -> int | None:
    """One layer option (e.g. ``--layer -1``) resolved in ``lm``."""
    return None if layer is None else resolve_layers(str(layer), lm, option)[0]


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


def kl_cap_option(value: float | None) -> float | None:
    """Option callback: a KL cap above 0 in nats (``inf``: no cap), checked by
    :meth:`steerlab.limits.Limits.check_kl_cap` before a model loads."""
    from ..limits import LimitError, Limits

    try:
        return Limits.check_kl_cap(value, "--kl-cap")
    except LimitError as exc:
        raise typer.BadParameter(str(exc)) from None


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
    """``all|prompt|generated`` or a window ``start:end`` (``end`` may be empty), checked as the
    library checks a :class:`~steerlab.core.steering.Steering`'s positions."""
    from ..core.positions import positions_key

    value: str | tuple[int, int | None] = spec
    if ":" in spec:
        start, _, end = spec.partition(":")
        try:
            value = int(start or 0), (int(end) if end else None)
        except ValueError:
            raise typer.BadParameter(f"window {spec!r} must look like 0:8 or 3:") from None
    try:
        positions_key(value)
    except SteeringError as exc:
        raise typer.BadParameter(str(exc), param_hint="--positions") from None
    return value


def positions_option(value: Any) -> Any:
    """Option callback: each ``--positions`` value is checked before a model is loaded."""
    for spec in value if isinstance(value, list) else [value]:
        if spec is not None:
            parse_positions(spec)
    return value


def existing_path(value: Any) -> Any:
    """Option / argument callback: each given path must exist (``file not found`` otherwise, at once)."""
    for path in value if isinstance(value, list) else [value]:
        if path is not None and not Path(path).exists():
            raise typer.BadParameter(f"file not found: {path}")
    return value


def model_option(value: str | None) -> str | None:
    """Option callback for ``--model`` (and ``--scorer``): a value that names a file or folder
    (:func:`steerlab.data.sources.looks_like_path`) must exist, so it is never looked up on the Hub."""
    from ..data.sources import looks_like_path

    if value is not None and value not in ("default", "vader") and looks_like_path(value) and not Path(value).exists():
        raise typer.BadParameter(f"not found: {value} (give 'default', an existing folder or .gguf file, or a hub id)")
    return value


def out_folder(value: Path | None) -> Path | None:
    """Option callback for ``--out`` folders: an existing file there is refused at once."""
    if value is not None and value.exists() and not value.is_dir():
        raise typer.BadParameter(f"{value} is a file: give a folder to write into")
    return value


def text_option(value: Any) -> Any:
    """Option / argument callback: texts given on the command line are valid Unicode within
    ``max_text_chars`` (bytes that are not UTF-8 arrive as lone surrogates)."""
    for i, text in enumerate(value if isinstance(value, list) else [value]):
        if text is not None:
            try:
                LIMITS.check_text(text, f"value {i + 1}" if isinstance(value, list) else "the value")
            except LimitError as exc:
                raise typer.BadParameter(str(exc)) from None
    return value


def method_option(value: str) -> str:
    """Option callback: the extraction method must be registered."""
    from ..extraction.methods import get_method

    try:
        get_method(value)
    except SteeringError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def executor_for(workers: int | None, ray_address: str | None) -> Executor | None:
    """``--workers N [--ray-address ADDR]`` as a Ray executor (``None``: this process).

    Raises:
        typer.BadParameter: ``--ray-address`` without ``--workers``.
        DistributedError: Ray is not installed.
    """
    if workers is None:
        if ray_address is not None:
            raise typer.BadParameter("--ray-address needs --workers N (how many Ray actors to start)")
        return None
    from ..distributed import RayExecutor

    say(f"on {workers} Ray workers" + (f" at {ray_address}" if ray_address else " (found, else local)"))
    return RayExecutor(workers, ray_address)


def say(message: str, style: str | None = None) -> None:
    """Print a status line (plain text, never markup) unless ``--quiet`` or ``--json``."""
    if not (FLAGS.quiet or FLAGS.json):
        err_console.print(Text(message, style=style or ""))


def warn(label: str, message: str) -> None:
    """A yellow ``label:`` and a plain message on stderr (shown even with ``--quiet``)."""
    err_console.print(Text.assemble((f"{label}:", "yellow"), " ", message), highlight=False, soft_wrap=True)


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
    """Run a command body: an error becomes one line on stderr (never a traceback; ``--debug``
    shows it) and an exit code: 2 for bad input (:data:`USAGE_ERRORS`: data, layers, options, a
    text longer than the model's context, any :class:`~steerlab.limits.LimitError`), as a bad
    option; 1 for a runtime failure (a malformed vector file, a model that does not load, an
    unexpected error).
    """
    try:
        return fn()
    except SteeringError as exc:
        if FLAGS.debug:
            raise
        _error(str(exc))
        raise typer.Exit(2 if isinstance(exc, USAGE_ERRORS) else 1) from None
    except (typer.exceptions.TyperException, typer.Exit, typer.Abort):
        raise  # usage errors raised inside a body (typer.BadParameter: exit 2), and exits
    except Exception as exc:
        if FLAGS.debug:
            raise
        _error(f"{type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
        raise typer.Exit(1) from None


def _error(message: str) -> None:
    err_console.print(Text.assemble(("error:", "red"), " ", message), highlight=False, soft_wrap=True)


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
