"""``steerlab condition``: find a CAST condition on labelled prompts."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import (
    console,
    emit,
    existing_path,
    layers_option,
    model_option,
    out_folder,
    progress_flag,
    resolve_layers,
    run,
    status,
    write_manifest,
)
from .root import app


@app.command()
def condition(
    positive: Path = typer.Option(..., callback=existing_path, help="Prompts to steer (text lines, JSON list or CSV)."),
    negative: Path = typer.Option(..., callback=existing_path, help="Prompts to leave alone."),
    out: Path = typer.Option(..., "--out", "-o", callback=out_folder, help="Folder to write the condition into."),
    model: str = typer.Option(
        "default", "--model", "-m", callback=model_option, help="'default', a folder, a .gguf file or a hub id."
    ),
    layers: str | None = typer.Option(None, callback=layers_option, help="Layers to search (default: all)."),
    chat: bool = typer.Option(True, help="Render each prompt as a user turn (as generate --chat does)."),
) -> None:
    """Pick the layer, direction and threshold that tell two sets of prompts apart (CAST).

    Steer only matching prompts with `steerlab generate --condition OUT`.

    Example: steerlab condition --positive harmful.txt --negative harmless.txt --out vectors/harmful-cond
    """
    if positive.resolve() == negative.resolve():
        raise typer.BadParameter(
            f"--positive and --negative are the same file ({positive}): a condition tells two "
            "different sets of prompts apart",
            param_hint="--negative",
        )

    def body() -> None:
        import steerlab
        from steerlab.extraction.condition import find_condition

        pos_texts, neg_texts = steerlab.load_texts(positive), steerlab.load_texts(negative)
        with status(f"loading {model}"):
            lm = steerlab.load_model(model)
        layer_list = resolve_layers(layers, lm) if layers else None
        found = find_condition(lm, pos_texts, neg_texts, layers=layer_list, chat=chat, progress=progress_flag())
        found.condition.save(out)
        write_manifest(out, lm, layers=layer_list or list(range(lm.n_layers)))

        def human() -> None:
            c = found.condition
            console.print(
                f"layer {c.at}, threshold {c.threshold:+.4f} (cosine {c.comparator}), "
                f"accuracy {found.accuracy[c.at]:.3f} on the labelled prompts"
            )
            console.print(f"wrote {out}")

        emit(found.to_dict(), human)

    run(body)
