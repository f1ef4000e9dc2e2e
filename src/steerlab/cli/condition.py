"""``steerlab condition``: find a CAST condition on labelled prompts."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from .common import console, emit, parse_int_list, progress_flag, run, status, write_manifest


@app.command()
def condition(
    positive: Path = typer.Option(..., help="Prompts to steer (text lines, JSON list or CSV)."),
    negative: Path = typer.Option(..., help="Prompts to leave alone."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the condition into."),
    model: str = typer.Option("default", "--model", "-m", help="'default', a folder, a .gguf file or a hub id."),
    layers: str | None = typer.Option(None, help="Layers to search (default: all)."),
    chat: bool = typer.Option(True, help="Render each prompt as a user turn (as generate --chat does)."),
) -> None:
    """Pick the layer, direction and threshold that tell two sets of prompts apart (CAST).

    Steer only matching prompts with `steerlab generate --condition OUT`.

    Example: steerlab condition --positive harmful.txt --negative harmless.txt --out vectors/harmful-cond
    """

    def body() -> None:
        import steerlab
        from steerlab.condition import find_condition

        with status(f"loading {model}"):
            lm = steerlab.load_model(model)
        found = find_condition(
            lm,
            steerlab.load_texts(positive),
            steerlab.load_texts(negative),
            layers=parse_int_list(layers) if layers else None,
            chat=chat,
            progress=progress_flag(),
        )
        found.condition.save(out)
        write_manifest(out, lm)

        def human() -> None:
            c = found.condition
            console.print(f"layer {c.at}, threshold {c.threshold:+.4f} (cosine {c.comparator}), "
                          f"accuracy {found.accuracy[c.at]:.3f} on the labelled prompts")
            console.print(f"wrote {out}")

        emit(found.to_dict(), human)

    run(body)
