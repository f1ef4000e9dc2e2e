"""``steerlab train``: a trained steering vector (BiPO or RePS) from preference pairs.

The pairs come from a file (``--pairs``: ``{"prompt", "chosen", "rejected"}`` records or CAA A/B
items, :func:`steerlab.data.preference.load_preferences`) or from the model itself
(``--self-contrast``: each opening continued under a chosen and a rejected prompt,
:func:`steerlab.self_contrast`). Every optimiser step prints its loss and accuracy (``--json``:
one JSON line per step on stderr is not written; the summary is the JSON output), the training
state is saved to ``--checkpoint`` after every step and a run started again with the same
arguments resumes from it. ``--directions positive`` / ``negative`` trains a vector for one side
only (steer it with ``+c`` / ``−c``).

Example:
    $ steerlab train --method reps --self-contrast --layers 12 --directions negative --out vectors/sad_reps
    $ steerlab train --method bipo --pairs prefs.jsonl --layers 12 --lr 0.02 --epochs 6 --out vectors/bipo
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .common import (
    console,
    emit,
    existing_path,
    finite,
    layers_option,
    model_option,
    out_folder,
    resolve_layers,
    run,
    say,
    status,
    text_option,
    write_manifest,
)
from .root import app

TRAINED = ("bipo", "reps")
CHOSEN_PROMPT = "Write a cheerful, happy story."
REJECTED_PROMPT = "Write a sad, gloomy story."


def _factors(value: str) -> tuple[float, ...]:
    try:
        out = tuple(float(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"--factors {value!r}: give numbers, e.g. 0.5,1,2") from None
    return out


def _config(method: str, options: dict[str, Any]) -> Any:
    """The training settings, checked before any model loads (a bad one: exit 2)."""
    from ..extraction.train import TrainConfig, TrainingError

    try:
        return TrainConfig(**options).resolved(method)
    except TrainingError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command()
def train(
    out: Path = typer.Option(..., "--out", "-o", callback=out_folder, help="Folder to write the vector into."),
    method: str = typer.Option("reps", help="bipo | reps."),
    model: str = typer.Option(
        "default", "--model", "-m", callback=model_option, help="'default', a folder, a .gguf file or a hub id."
    ),
    pairs: Path | None = typer.Option(
        None, callback=existing_path, help="Preference pairs: .json / .jsonl of prompt/chosen/rejected or CAA items."
    ),
    self_contrast: bool = typer.Option(
        False, "--self-contrast", help="Pairs the model writes itself under --chosen-prompt / --rejected-prompt."
    ),
    chosen_prompt: str = typer.Option(CHOSEN_PROMPT, callback=text_option, help="--self-contrast: the chosen side."),
    rejected_prompt: str = typer.Option(
        REJECTED_PROMPT, callback=text_option, help="--self-contrast: the rejected side."
    ),
    openings: Path | None = typer.Option(
        None, callback=existing_path, help="--self-contrast: openings (JSON list or text lines; default: built-in)."
    ),
    n_openings: int = typer.Option(128, min=1, help="--self-contrast: how many openings to continue."),
    max_new_tokens: int = typer.Option(24, min=1, help="--self-contrast: tokens per continuation."),
    layers: str = typer.Option("12", callback=layers_option, help="Layers to train, e.g. 12 or 10,12."),
    lr: float = typer.Option(0.02, callback=finite, help="Adam learning rate."),
    epochs: int = typer.Option(6, min=1, help="Most passes over the pairs."),
    batch_size: int = typer.Option(16, min=1, help="Preference pairs per optimiser step."),
    directions: str | None = typer.Option(
        None, help="sample | both | positive | negative (default: sample for bipo, both for reps)."
    ),
    factors: str = typer.Option("1", help="Coefficients trained at, e.g. 0.5,1,2 (RePS samples several)."),
    positions: str = typer.Option("generated", help="generated | all (all: can be baked)."),
    holdout: float = typer.Option(0.2, callback=finite, help="Share of pairs held out for early stopping."),
    seed: int = typer.Option(0, help="Seeds the split, shuffling and sampled coefficients."),
    checkpoint: Path | None = typer.Option(
        None, help="Training state saved after every step; the same command again resumes from it."
    ),
) -> None:
    """Train a steering vector (BiPO or RePS) and save it as a folder.

    Example: steerlab train --method reps --self-contrast --layers 12 --out vectors/happy_reps
    """
    if method not in TRAINED:
        raise typer.BadParameter(f"--method {method!r}: use one of {', '.join(TRAINED)}")
    if (pairs is None) == (not self_contrast):
        raise typer.BadParameter("give exactly one of --pairs FILE or --self-contrast")
    options = dict(
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
        micro_batch_size=min(8, batch_size),
        directions=directions,
        factors=_factors(factors),
        positions=positions,
        holdout=holdout,
        seed=seed,
    )
    cfg = _config(method, options)
    import steerlab
    from steerlab.data.demo import OPENINGS

    def body() -> None:
        with status(f"loading {model}"):
            lm = steerlab.load_model(model)
        layer_list = resolve_layers(layers, lm)
        if pairs is not None:
            data = steerlab.load_preferences(pairs)
            source = str(pairs)
        else:
            texts = (steerlab.load_openings(openings) if openings else list(OPENINGS))[:n_openings]
            say(f"writing preference pairs: {len(texts)} openings under {chosen_prompt!r} / {rejected_prompt!r}")
            data = steerlab.self_contrast(lm, texts, chosen_prompt, rejected_prompt, max_new_tokens=max_new_tokens)
            source = "self_contrast"
        say(f"training {method} on {len(data)} pairs at layers {','.join(map(str, layer_list))}")

        def step(info: dict[str, Any]) -> None:
            say(f"epoch {info['epoch']} step {info['step']}: loss {info['loss']:.4f}, accuracy {info['accuracy']:.2f}")

        vec = steerlab.extract(
            lm,
            data,
            method=method,
            layers=layer_list,
            checkpoint=checkpoint,
            progress=False,
            config=cfg,
            on_step=step,
        )
        vec.meta["pairs_source"] = source
        vec.save(out)
        write_manifest(out, lm, data_hash=vec.data_hash, method=method, layers=layer_list)
        emit(
            {"out": str(out), "epochs_run": vec.meta.get("epochs_run"), **vec.describe()},
            lambda: console.print(
                f"wrote {out} ({method}, layers {','.join(map(str, layer_list))}, "
                f"{vec.meta.get('epochs_run', '?')} epochs, best held-out loss "
                f"{min(vec.meta.get('heldout_loss') or [float('nan')]):.4f})"
            ),
        )

    run(body)
