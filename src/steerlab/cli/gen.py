"""``steerlab demo`` and ``steerlab generate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from ..data.demo import OPENINGS
from .common import (
    FLAGS,
    console,
    emit,
    existing_path,
    finite,
    kl_cap_option,
    layers_option,
    model_option,
    parse_positions,
    positions_option,
    resolve_layers,
    run,
    say,
    status,
    text_option,
)
from .operator_options import OPERATOR_HELP, PARAMETER_HELP, make_operators, operator_option, parameter_option
from .root import app


@app.command()
def demo(
    model: str = typer.Option(
        "default", "--model", "-m", callback=model_option, help="'default', a folder, a .gguf file or a hub id."
    ),
    positive: str = typer.Option("happy", callback=text_option, help="Persona of the positive side."),
    negative: str = typer.Option("sad", callback=text_option, help="Persona of the negative side."),
    layers: str | None = typer.Option(
        None, callback=layers_option, help="Override the packaged setting's layers, e.g. 8-19 or 8,10,12."
    ),
    coef: float | None = typer.Option(
        None, callback=finite, help="Override the packaged setting's coefficients (shown as +coef and -coef)."
    ),
    max_new_tokens: int = typer.Option(24, min=1, help="Tokens to generate per prompt."),
    show: int = typer.Option(3, min=1, max=len(OPENINGS), help=f"Openings shown as rows (of the {len(OPENINGS)} run)."),
) -> None:
    """Build a 'happy − sad' vector on the default model and show baseline vs steered text.

    The method, layers and coefficient of each direction come from the packaged demo setting
    (steerlab/data/demo_setting.json: the strongest setting a frontier run found within its budget,
    that run's vectors extracted on the same persona pairs as the demo's); the output states it.
    Every column continues all the demo's openings in one batch; the first ``--show`` are printed
    with each text's sentiment (VADER compound), and each column's mean over all of them follows:
    a few rows alone say little about which way a column reads.

    Example: steerlab demo --coef 1.5
    """
    import steerlab
    from steerlab.data.demo_setting import DirectionSetting, load_demo_setting

    if positive.strip() == negative.strip():
        raise typer.BadParameter(
            f"--positive and --negative are the same persona ({positive!r}): the vector would be zero",
            param_hint="--negative",
        )
    setting = load_demo_setting()
    source = setting.source if layers is None and coef is None else f"{setting.source}; overridden on the command line"

    def body() -> None:
        with status(f"loading {model} (a first run converts the GGUF, ~30 s)"):
            lm = steerlab.load_model(model)
        chosen = dict(setting.directions)
        if layers is not None or coef is not None:
            override = None if layers is None else tuple(resolve_layers(layers, lm))
            chosen = {
                d: DirectionSetting(
                    s.method,
                    override or s.layers,
                    s.coefficient if coef is None else d * abs(coef),
                    operator=s.operator,
                    kl_cap=s.kl_cap,
                )
                for d, s in chosen.items()
            }
        from steerlab.evaluate.demo_run import COLUMNS, demo_columns, demo_rows, text_sentiment

        with status(f"extracting '{positive} − {negative}' ({chosen[1].method} / {chosen[-1].method})"):
            rows = demo_rows(lm, chosen, positive, negative)
        prompts = list(OPENINGS)
        with status(f"generating baseline and steered continuations of {len(prompts)} openings in one batch"):
            columns = demo_columns(lm, prompts, rows, max_new_tokens)
        scores = text_sentiment(columns)
        means = {name: round(sum(v) / len(v), 3) for name, v in scores.items()}
        used = {"positive": chosen[1].label, "negative": chosen[-1].label, "source": source}
        results: list[dict[str, Any]] = [
            {
                "prompt": p,
                **{name: columns[name][i] for name in COLUMNS},
                "sentiment": {name: round(scores[name][i], 3) for name in COLUMNS},
                "mean_sentiment": means,
                "setting": used,
            }
            for i, p in enumerate(prompts[:show])
        ]

        def human() -> None:
            table = Table(title=f"{lm.model_id}: '{positive} − {negative}' vector", show_lines=True)
            table.add_column("prompt", style="bold")
            table.add_column("baseline")
            table.add_column(f"{chosen[1].coefficient:+g} ({positive})", style="green")
            table.add_column(f"{chosen[-1].coefficient:+g} ({negative})", style="red")
            for r in results:
                cells = (Text(r[c].strip()) + Text(f" ({r['sentiment'][c]:+.2f})", style="dim") for c in COLUMNS)
                table.add_row(Text(r["prompt"]), *cells)  # Text: a continuation's brackets are not markup
            console.print(table)
            console.print(
                f"sentiment (VADER compound, mean over all {len(prompts)} openings): "
                f"baseline {means['baseline']:+.2f}, {positive} {means['positive']:+.2f}, "
                f"{negative} {means['negative']:+.2f}",
                markup=False,
            )
            console.print(f"setting: {positive} {used['positive']}; {negative} {used['negative']}", markup=False)
            console.print(f"source: {source}", markup=False)

        emit(results, human)

    run(body)


@app.command()
def generate(
    prompts: list[str] = typer.Argument(..., callback=text_option, help="One or more prompts."),
    model: str = typer.Option(
        "default", "--model", "-m", callback=model_option, help="'default', a folder, a .gguf file or a hub id."
    ),
    vector: list[Path] = typer.Option(
        [], "--vector", "-v", callback=existing_path, help="Vector folder or .gguf (repeat to compose)."
    ),
    coef: list[float] = typer.Option(
        [], "--coef", "-c", callback=finite, help="Coefficient for each --vector, in order."
    ),
    positions: list[str] = typer.Option(
        [],
        "--positions",
        callback=positions_option,
        help="all|prompt|generated|START:END, one for all vectors or one each.",
    ),
    operator: list[str] = typer.Option([], "--operator", callback=operator_option, help=OPERATOR_HELP),
    operator_param: list[str] = typer.Option([], "--operator-param", callback=parameter_option, help=PARAMETER_HELP),
    condition: Path | None = typer.Option(
        None,
        callback=existing_path,
        help="A condition folder (steerlab condition): steer only prompts that match it (CAST).",
    ),
    threshold: float | None = typer.Option(None, callback=finite, help="Override the condition's threshold."),
    relative: bool = typer.Option(
        False, "--relative", help="Coefficients are fractions of the residual norm at each layer (0.1 = 10 %)."
    ),
    layers: str | None = typer.Option(
        None, callback=layers_option, help="Steer only these layers of each vector, e.g. 10-14."
    ),
    kl_cap: float | None = typer.Option(
        None,
        "--kl-cap",
        callback=kl_cap_option,
        help="Cap (nats) on each token's KL from the unsteered distribution: strength scaled per token "
        "(greedy; each prompt runs beside an unsteered copy, about 2x the compute).",
    ),
    compare: bool = typer.Option(False, "--compare", help="Also show the unsteered continuation."),
    chat: bool = typer.Option(False, "--chat", help="Apply the chat template to each prompt."),
    max_new_tokens: int = typer.Option(48, min=1, help="Tokens to generate (prompt + these must fit the context)."),
    stream: bool = typer.Option(True, help="Stream tokens for a single prompt."),
) -> None:
    """Generate text, optionally steered by one or more vectors.

    Example: steerlab generate --vector vectors/happy --coef 1.0 --compare "That game"
    """
    import steerlab

    if threshold is not None and condition is None:
        raise typer.BadParameter("--threshold goes with --condition")

    from .vectors import load_vector

    if coef and len(coef) != len(vector):
        raise typer.BadParameter(f"{len(vector)} --vector but {len(coef)} --coef: give one --coef per --vector")
    if len(positions) not in (0, 1, len(vector)):
        raise typer.BadParameter("give one --positions for all vectors or one per --vector")
    operators = make_operators(operator, operator_param, len(vector))

    def body() -> None:
        from steerlab.core.condition import Condition

        cond = Condition.load(condition, threshold=threshold) if condition is not None else None  # before the model
        with status(f"loading {model}"):
            lm = steerlab.load_model(model)
        layer_list = resolve_layers(layers, lm) if layers else None
        steerings = []
        for i, path in enumerate(vector):
            vec = load_vector(path, lm)
            vec.check_model(lm)
            if relative:
                vec = steerlab.relative(vec, lm)
            pos = parse_positions(positions[i] if len(positions) > 1 else positions[0]) if positions else None
            steerings.append(
                steerlab.Steering(
                    vec,
                    coef[i] if coef else 1.0,
                    layers=layer_list,
                    positions=pos,
                    operator=operators[i],
                    condition=cond,
                    kl_cap=kl_cap,
                )
            )
        steering = steerlab.compose(*steerings) if steerings else None
        texts = [lm.chat(p) if chat else p for p in prompts]
        for i, text in enumerate(texts):  # past its context a model writes garbage rather than failing
            try:
                n = len(lm.tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])
                lm.check_context(n, max_new_tokens)
            except steerlab.ContextLengthError as exc:
                raise steerlab.ContextLengthError(f"prompt {i + 1}: {exc} (--max-new-tokens)") from None
        streaming = stream and len(prompts) == 1 and not FLAGS.json and not FLAGS.quiet and kl_cap is None
        results = []
        for label, s in ([("baseline", None)] if compare and steering is not None else []) + [("output", steering)]:
            if streaming:
                from transformers import TextStreamer

                say(label, style="bold")
                console.print(prompts[0], end="")
                out = steerlab.generate(
                    lm,
                    texts,
                    steering=s,
                    max_new_tokens=max_new_tokens,
                    streamer=TextStreamer(lm.tokenizer, skip_prompt=True, skip_special_tokens=True),
                )
            else:
                with status(f"generating ({label})"):
                    out = steerlab.generate(lm, texts, steering=s, max_new_tokens=max_new_tokens)
            results.append((label, out))
        data = [{"prompt": p, **{label: out[i] for label, out in results}} for i, p in enumerate(prompts)]

        def human() -> None:
            if streaming:
                return
            table = Table(show_lines=True)
            table.add_column("prompt", style="bold")
            for label, _ in results:
                table.add_column("steered" if label == "output" and compare else label)
            for row in data:
                table.add_row(row["prompt"], *[row[label].strip() for label, _ in results])
            console.print(table)

        emit(data, human)

    run(body)
