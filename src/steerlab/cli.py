"""The ``steerlab`` command line (typer + rich). Thin: every command calls the library.

Example:
    $ steerlab demo
    $ steerlab inspect vectors/happy
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .errors import SteeringError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Activation steering for language models.")
console = Console()
err = Console(stderr=True)


def parse_layers(spec: str) -> list[int]:
    """``"8-19"``, ``"8,10,12"`` or ``"3"`` → list of ints.

    Example:
        >>> parse_layers("8-10,12")
        [8, 9, 10, 12]
    """
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            lo, hi = part[0] + part[1:].split("-", 1)[0], part[1:].split("-", 1)[1]
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part))
    if not out:
        raise typer.BadParameter(f"no layers in {spec!r}; write e.g. 8-19 or 8,10,12")
    return out


def _fail(exc: Exception, debug: bool) -> None:
    if debug:
        raise exc
    err.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(1)


@app.command()
def demo(
    model: str = typer.Option("default", help="Model: 'default', a folder, a .gguf file or a hub id."),
    positive: str = typer.Option("happy", help="Persona of the positive side."),
    negative: str = typer.Option("sad", help="Persona of the negative side."),
    layers: str = typer.Option("8-19", help="Layers to read and steer, e.g. 8-19 or 8,10,12."),
    coef: float = typer.Option(1.0, help="Steering coefficient (applied as +coef and -coef)."),
    max_new_tokens: int = typer.Option(24, help="Tokens to generate per prompt."),
    debug: bool = typer.Option(False, help="Show tracebacks."),
) -> None:
    """Build a 'happy − sad' vector on the default model and show baseline vs steered text.

    Example: steerlab demo --coef 1.5
    """
    import steerlab
    from steerlab.demo_data import DEMO_PROMPTS, OPENINGS

    try:
        with console.status(f"loading {model} (the first run converts the GGUF, ~30 s)"):
            lm = steerlab.load_model(model)
        pairs = steerlab.persona_pairs(positive, negative, list(OPENINGS))
        with console.status(f"extracting '{positive} − {negative}' from {len(pairs)} pairs"):
            vec = steerlab.extract(lm, pairs, method="mean_diff", layers=parse_layers(layers), progress=False)
        prompts = list(DEMO_PROMPTS)
        rows: list[steerlab.Steering | None] = [None, steerlab.Steering(vec, coef), steerlab.Steering(vec, -coef)]
        with console.status("generating baseline and steered continuations in one batch"):
            flat = steerlab.generate(
                lm,
                [p for p in prompts for _ in rows],
                steering=[r for _ in prompts for r in rows],
                max_new_tokens=max_new_tokens,
            )
    except SteeringError as exc:
        _fail(exc, debug)
    table = Table(title=f"{lm.model_id}: '{positive} − {negative}' mean_diff vector, layers {layers}", show_lines=True)
    table.add_column("prompt", style="bold")
    table.add_column("baseline")
    table.add_column(f"+{coef:g} ({positive})", style="green")
    table.add_column(f"−{coef:g} ({negative})", style="red")
    for i, p in enumerate(prompts):
        table.add_row(p, *[flat[i * len(rows) + j].strip() for j in range(len(rows))])
    console.print(table)


@app.command()
def inspect(
    path: Path = typer.Argument(..., help="A vector folder or a .gguf control vector."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show what a vector is: model, layers, norms, method, data hash.

    Example: steerlab inspect vectors/happy
    """
    from .vector import SteeringVector

    try:
        vec = SteeringVector.from_gguf(path) if path.suffix == ".gguf" else SteeringVector.load(path)
    except SteeringError as exc:
        _fail(exc, False)
    info = vec.describe()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    table = Table(title=str(path))
    table.add_column("field")
    table.add_column("value")
    for key, value in info.items():
        table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    console.print(table)


def main() -> None:  # pragma: no cover - console entry point
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
