"""``steerlab eval``, ``steerlab sweep`` and ``steerlab analyze``: the evaluation and analysis API
from the shell. Each writes ``{name}.json``, ``{name}.md``, ``{name}.png`` and ``run.json`` to ``--out``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import typer

from .root import app

if TYPE_CHECKING:
    from ..core.vector import SteeringVector
    from ..evaluate.frontier import Contender
    from ..evaluate.prompting import Prompt
    from ..evaluate.protocol import Evaluation
    from ..evaluate.report import Report
    from ..models.load import LM
from .common import (
    console,
    emit,
    executor_for,
    existing_path,
    file_hash,
    layer_sets_option,
    layers_option,
    model_option,
    out_folder,
    parse_float_list,
    parse_positions,
    positions_option,
    positive,
    progress_flag,
    resolve_layer,
    resolve_layer_sets,
    resolve_layers,
    run,
    status,
    text_option,
    write_manifest,
)

eval_app = typer.Typer(help="Measure what a vector does and what it costs.", no_args_is_help=True)
analyze_app = typer.Typer(help="Look inside vectors and the residual stream.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
app.add_typer(analyze_app, name="analyze")

MODEL = typer.Option(
    "default", "--model", "-m", callback=model_option, help="'default', a folder, a .gguf file or a hub id."
)
OUT = typer.Option(..., "--out", "-o", callback=out_folder, help="Folder for the JSON, markdown, PNG and run.json.")


@overload
def _load(model: str, vector: Path) -> tuple[LM, SteeringVector]: ...
@overload
def _load(model: str, vector: None = None) -> tuple[LM, None]: ...
@overload
def _load(model: str, vector: Path | None) -> tuple[LM, SteeringVector | None]: ...
def _load(model: str, vector: Path | None = None) -> tuple[LM, SteeringVector | None]:
    """The model, and the vector at ``vector`` checked against it (``None`` without one)."""
    import steerlab

    from .vectors import load_vector

    with status(f"loading {model}"):
        lm = steerlab.load_model(model)
    vec = None
    if vector is not None:
        vec = load_vector(vector, lm)
        vec.check_model(lm)
    return lm, vec


def _finish(report: Report, out: Path, name: str, lm: LM, data: Path | None, **extra: Any) -> None:
    report.write(out, name)
    write_manifest(out, lm, data_hash=file_hash(data) if data is not None else "", **extra)

    def human() -> None:
        console.print(report.to_markdown())
        console.print(f"\nwrote {out}/{name}.*")

    emit(report.to_dict(), human)


def _openings(path: Path | None) -> list[str]:
    import steerlab
    from steerlab.data.demo import OPENINGS

    return steerlab.load_openings(path) if path else list(OPENINGS)


PROMPT_MODE = typer.Option("prefix", help="prefix (before the opening / question) | system (a system turn).")


def _prompt(text: str | None, mode: str) -> Prompt | None:
    """``--prompt TEXT`` as a :class:`~steerlab.evaluate.prompting.Prompt` (``None`` without one)."""
    return None if text is None else _make_prompt(text, mode)


def _make_prompt(text: str, mode: str) -> Prompt:
    from steerlab.errors import SteeringSpecError
    from steerlab.evaluate.prompting import Prompt

    try:
        return Prompt(text, mode)  # type: ignore[arg-type]
    except SteeringSpecError as exc:
        raise typer.BadParameter(str(exc), param_hint="--prompt") from None


def _prompt_only_coefs(vector: Path | None, coefs: list[float]) -> list[float]:
    """Without a vector (prompting alone) the only coefficient is 0."""
    if vector is None:
        return [0.0]
    return coefs


@eval_app.command("sentiment")
def eval_sentiment(
    vector: Path | None = typer.Option(
        None, "--vector", "-v", callback=existing_path, help="Vector folder or .gguf (none: --prompt alone)."
    ),
    out: Path = OUT,
    model: str = MODEL,
    openings: Path | None = typer.Option(
        None, callback=existing_path, help="Sentence openings (JSON list or text lines); default built-in."
    ),
    coefs: str = typer.Option("-1,0,1", help="Coefficients, e.g. -1,0,1."),
    layers: str | None = typer.Option(None, callback=layers_option, help="Use only these layers of the vector."),
    positions: str = typer.Option("all", callback=positions_option, help="all|prompt|generated|START:END."),
    max_new_tokens: int = typer.Option(24, min=1),
    scorer: str = typer.Option(
        "vader", callback=model_option, help="'vader' or a text-classification model folder / hub id."
    ),
    limit: int | None = typer.Option(None, min=1, help="Use the first N openings."),
    batch_size: int = typer.Option(32, min=1),
    prompt: str | None = typer.Option(
        None, callback=text_option, help="Prompting: text put before every opening (end it with a space)."
    ),
    prompt_mode: str = PROMPT_MODE,
    chat: bool = typer.Option(False, help="Render each opening as a chat user turn (needed for --prompt-mode system)."),
) -> None:
    """Sentiment of continuations with and without steering (shares, bootstrap CIs, the seed's figure).

    With --prompt every row continues the prompted opening (without --vector: the prompt alone);
    perplexity is still measured under the plain model given the plain opening.

    Example: steerlab eval sentiment --vector vectors/happy --coefs -1,0,1 --out runs/sentiment
    """
    if vector is None and prompt is None:
        raise typer.BadParameter("give --vector, --prompt or both")
    coef_list = _prompt_only_coefs(vector, parse_float_list(coefs))
    instruction = _prompt(prompt, prompt_mode)

    def body() -> None:
        from steerlab.evaluate.sentiment import sentiment_shift

        items = _openings(openings)[:limit]  # data first: bad data fails before the model loads
        lm, vec = _load(model, vector)
        rep = sentiment_shift(
            lm,
            vec,
            items,
            coefficients=coef_list,
            layers=resolve_layers(layers, lm) if layers else None,
            positions=parse_positions(positions),
            max_new_tokens=max_new_tokens,
            scorer=scorer,
            batch_size=batch_size,
            progress=progress_flag(),
            prompt=instruction,
            chat=chat,
        )
        _finish(rep, out, "sentiment", lm, openings, coefficients=coef_list)

    run(body)


@eval_app.command("behavior")
def eval_behavior(
    vector: Path | None = typer.Option(
        None, "--vector", "-v", callback=existing_path, help="Vector folder or .gguf (none: --prompt alone)."
    ),
    items: Path = typer.Option(
        ..., callback=existing_path, help="CAA A/B items (test_dataset_ab.json) or mmlu.json / truthful_qa.json."
    ),
    out: Path = OUT,
    model: str = MODEL,
    coefs: str = typer.Option("-1,0,1", help="Coefficients, e.g. -1,0,1."),
    multipliers: str | None = typer.Option(None, hidden=True, help="Deprecated name of --coefs."),
    layers: str | None = typer.Option(None, callback=layers_option, help="Use only these layers of the vector."),
    limit: int | None = typer.Option(None, min=1, help="Use the first N items."),
    batch_size: int = typer.Option(16, min=1),
    prompt: str | None = typer.Option(
        None, callback=text_option, help="Prompting: text before every question, or the system turn."
    ),
    prompt_mode: str = PROMPT_MODE,
) -> None:
    """CAA A/B evaluation: p(matching) / (p(A)+p(B)) with the answer primed by '(' at each coefficient.

    With --prompt every item is read with the prompt (without --vector: the prompt alone).

    Example: steerlab eval behavior --vector vectors/syc --items test_dataset_ab.json --out runs/syc
    """
    if vector is None and prompt is None:
        raise typer.BadParameter("give --vector, --prompt or both")
    coef_list = _prompt_only_coefs(vector, parse_float_list(multipliers if multipliers is not None else coefs))
    instruction = _prompt(prompt, prompt_mode)

    def body() -> None:
        from steerlab.data.ab import load_ab_items
        from steerlab.evaluate.behavior import behavior_eval

        data = load_ab_items(items, limit=limit)
        lm, vec = _load(model, vector)
        rep = behavior_eval(
            lm,
            vec,
            data,
            coefficients=coef_list,
            layers=resolve_layers(layers, lm) if layers else None,
            batch_size=batch_size,
            progress=progress_flag(),
            name=items.parent.name,
            prompt=instruction,
        )
        _finish(rep, out, "behavior", lm, items, coefficients=coef_list)

    run(body)


TEXTS = typer.Option(
    ..., callback=existing_path, help="Neutral text: .txt lines, JSON list or CSV with a statement/text column."
)
COST_COEFS = typer.Option("-4,-2,-1,0,1,2,4", help="Coefficients.")
LAYERS = typer.Option(None, callback=layers_option, help="Use only these layers of the vector.")
LIMIT_TEXTS = typer.Option(None, min=1, help="Use the first N texts.")


def _offtarget_command(name: str, doc: str) -> Callable[..., None]:
    """The off-target cost command (:func:`steerlab.evaluate.cost.offtarget_cost`), writing
    ``{name}.*``: registered as ``eval cost`` and under its older name, ``eval fluency``."""

    def command(
        vector: Path = typer.Option(..., "--vector", "-v", callback=existing_path, help="Vector folder or .gguf."),
        texts: Path = TEXTS,
        out: Path = OUT,
        model: str = MODEL,
        coefs: str = COST_COEFS,
        layers: str | None = LAYERS,
        limit: int | None = LIMIT_TEXTS,
    ) -> None:
        coef_list = parse_float_list(coefs)

        def body() -> None:
            import steerlab
            from steerlab.evaluate.cost import offtarget_cost

            neutral = steerlab.load_texts(texts, limit=limit)
            lm, vec = _load(model, vector)
            rep = offtarget_cost(
                lm,
                vec,
                neutral,
                coefficients=coef_list,
                layers=resolve_layers(layers, lm) if layers else None,
                progress=progress_flag(),
            )
            _finish(rep, out, name, lm, texts, coefficients=coef_list)

        run(body)

    command.__doc__ = doc
    return command


eval_app.command("cost")(
    _offtarget_command(
        "cost",
        """Off-target cost: perplexity of neutral text under steering and KL to the unsteered model.

    Writes cost.json / .md / .png. `steerlab eval fluency` is the same command (it writes fluency.*).

    Example: steerlab eval cost --vector vectors/happy --texts facts.csv --out runs/cost
    """,
    )
)
eval_app.command("fluency")(
    _offtarget_command(
        "fluency",
        """Alias of `steerlab eval cost` (off-target perplexity and KL on neutral text); writes fluency.*.

    Example: steerlab eval fluency --vector vectors/happy --texts facts.csv --out runs/fluency
    """,
    )
)


def _sign(value: int) -> int:
    if value not in (1, -1):
        raise typer.BadParameter(f"must be 1 or -1 (got {value})")
    return value


def _evaluation(kind: str) -> Evaluation:
    from steerlab.errors import SteeringSpecError
    from steerlab.evaluate.protocol import get_evaluation

    try:
        return get_evaluation(kind)
    except SteeringSpecError as exc:
        raise typer.BadParameter(str(exc), param_hint="KIND") from None


def _sweep_data(evaluation: Evaluation, data: Path | None, limit: int | None) -> list[Any]:
    if data is not None and evaluation.load is not None:
        items = list(evaluation.load(data))
    elif data is None and evaluation.default_data is not None:
        items = evaluation.default_data()
    else:
        raise typer.BadParameter(f"--data is required for a {evaluation.name} sweep ({evaluation.data})")
    return items[:limit]


@app.command()
def sweep(
    kind: str = typer.Argument(..., help="The evaluation: sentiment | behavior | cost."),
    vector: Path = typer.Option(..., "--vector", "-v", callback=existing_path, help="Vector folder or .gguf."),
    data: Path | None = typer.Option(
        None, callback=existing_path, help="Openings (sentiment), A/B items (behavior) or texts (cost)."
    ),
    out: Path = OUT,
    model: str = MODEL,
    coefs: str = typer.Option("-2,-1,0,1,2", help="Coefficients."),
    layer_sets: str | None = typer.Option(
        None,
        callback=layer_sets_option,
        help="Layer groups separated by ';', e.g. '8-11;12-15;16'. Default: each layer of the vector alone.",
    ),
    metric: str | None = typer.Option(None, help="Metric for the table and heat map."),
    limit: int | None = typer.Option(None, min=1, help="Use the first N items."),
    autotune: bool = typer.Option(False, "--autotune", help="Pick the best setting under --budget instead."),
    budget: float = typer.Option(1.3, callback=positive, help="Auto-tune: maximum perplexity ratio."),
    direction: int = typer.Option(1, callback=_sign, help="Auto-tune: +1 or -1 (which way to push the behaviour)."),
    cost_texts: Path | None = typer.Option(
        None, callback=existing_path, help="Auto-tune: neutral texts for the perplexity budget."
    ),
    max_new_tokens: int = typer.Option(24, min=1, help="Sentiment: tokens per continuation."),
    workers: int | None = typer.Option(
        None,
        min=1,
        help="Run the layer sets on N Ray actors holding the model "
        "(pip install steerlab\\[ray]); the grids are the same.",
    ),
    ray_address: str | None = typer.Option(
        None, help="Join this Ray cluster (needs --workers); default: the cluster Ray finds, else a local instance."
    ),
) -> None:
    """Layer × coefficient grid of a metric (heat map), or --autotune under a perplexity budget.

    Example: steerlab sweep sentiment --vector vectors/happy --layer-sets '8-11;12-15' --coefs -1,0,1 --out runs/sw
    """
    if ray_address is not None and workers is None:
        executor_for(workers, ray_address)  # refuses --ray-address without --workers
    coef_list = parse_float_list(coefs)
    evaluation = _evaluation(kind)

    def body() -> None:
        import steerlab
        from steerlab.evaluate import sweep as sweep_mod
        from steerlab.evaluate.protocol import accepts

        items = _sweep_data(evaluation, data, limit)
        neutral = steerlab.load_texts(cost_texts) if cost_texts else None
        lm, vec = _load(model, vector)
        extra: dict[str, Any] = {"max_new_tokens": max_new_tokens} if accepts(evaluation, "max_new_tokens") else {}
        extra["executor"] = executor_for(workers, ray_address)
        extra.update(coefficients=coef_list, layer_sets=resolve_layer_sets(layer_sets, lm), progress=progress_flag())
        rep: Report
        if autotune:
            rep = sweep_mod.autotune(
                lm, vec, evaluation, items, budget=budget, direction=direction, cost_texts=neutral, **extra
            )
            name = "autotune"
        else:
            rep = sweep_mod.sweep(lm, vec, evaluation, items, metric=metric, **extra)
            name = f"sweep_{evaluation.name}"
        _finish(rep, out, name, lm, data, coefficients=coef_list)

    run(body)


def _named_vectors(specs: list[str]) -> dict[str, Path]:
    """``NAME=PATH`` (or a bare PATH, named by its folder) for each ``--vector``."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).stem, spec
        if not name or not path:
            raise typer.BadParameter(f"{spec!r}: write NAME=PATH, e.g. mean_diff=vectors/happy", param_hint="--vector")
        if name in out:
            raise typer.BadParameter(f"two vectors are called {name!r}", param_hint="--vector")
        existing_path(path)
        out[name] = Path(path)
    return out


def _sets_for(vec: SteeringVector, name: str, sets: list[list[int]] | None) -> list[list[int]] | None:
    """The layer sets a vector has every layer of (all of them when none were given)."""
    if sets is None:
        return None
    fit = [s for s in sets if set(s) <= set(vec.layers)]
    if not fit:
        raise typer.BadParameter(
            f"none of the layer sets {sets} fits vector {name!r} (layers {vec.layers})", param_hint="--layer-sets"
        )
    return fit


def _contenders(
    vecs: dict[str, SteeringVector],
    coefs: list[float],
    sets: list[list[int]] | None,
    positive: list[Prompt],
    negative: list[Prompt],
    combine: list[str],
) -> list[Contender]:
    from steerlab.evaluate.frontier import Contender

    out = [Contender.steering(name, vec, coefs, layer_sets=_sets_for(vec, name, sets)) for name, vec in vecs.items()]
    if positive or negative:
        out.append(Contender.prompting("prompting", positive=positive, negative=negative))
    for name in combine:
        if name not in vecs:
            raise typer.BadParameter(f"--combine {name!r}: no --vector of that name ({', '.join(vecs)})")
        if not (positive or negative):
            raise typer.BadParameter("--combine needs --positive-prompt / --negative-prompt")
        out.append(
            Contender.combined(
                f"prompting+{name}",
                vecs[name],
                coefs,
                positive=positive,
                negative=negative,
                layer_sets=_sets_for(vecs[name], name, sets),
            )
        )
    return out


@eval_app.command("frontier")
def eval_frontier(
    out: Path = OUT,
    vector: list[str] = typer.Option([], "--vector", "-v", help="NAME=PATH of a vector (repeat for each method)."),
    model: str = MODEL,
    openings: Path | None = typer.Option(
        None, callback=existing_path, help="Sentence openings (JSON list or text lines); default built-in."
    ),
    limit: int | None = typer.Option(None, min=1, help="Use the first N openings."),
    coefs: str = typer.Option("0.5,1,2", help="Coefficient magnitudes (each direction applies its sign)."),
    layer_sets: str | None = typer.Option(
        None,
        callback=layer_sets_option,
        help="Layer groups separated by ';' (each vector uses those it has). "
        "Default: all of a vector's layers together.",
    ),
    positive_prompt: list[str] = typer.Option(
        [], callback=text_option, help="Prompting toward positive sentiment (repeatable)."
    ),
    negative_prompt: list[str] = typer.Option(
        [], callback=text_option, help="Prompting toward negative sentiment (repeatable)."
    ),
    prompt_mode: str = PROMPT_MODE,
    combine: list[str] = typer.Option([], help="Also run this --vector NAME together with the prompts (repeatable)."),
    budget: float = typer.Option(1.15, callback=positive, help="Largest continuation perplexity ratio."),
    goal_positive: float = typer.Option(0.90, help="Goal line: positive share pushing up."),
    goal_negative: float = typer.Option(0.80, help="Goal line: negative share pushing down."),
    max_new_tokens: int = typer.Option(24, min=1),
    batch_size: int = typer.Option(32, min=1),
    seed: int = typer.Option(0, help="Shuffle of the selection / held-out halves."),
) -> None:
    """Effect–fluency frontier: positive / negative share against perplexity ratio for every method
    (vectors, prompting, prompt + vector), Pareto fronts, the best setting within --budget chosen
    on one half of the openings and reported on the other. Writes frontier.json / .md / .png.

    Example: steerlab eval frontier -v mean_diff=vectors/happy --positive-prompt 'A happy story. ' --out runs/fr
    """
    coef_list = parse_float_list(coefs)
    named = _named_vectors(vector)
    positive_prompts = [_make_prompt(t, prompt_mode) for t in positive_prompt]
    negative_prompts = [_make_prompt(t, prompt_mode) for t in negative_prompt]
    if not named and not (positive_prompts or negative_prompts):
        raise typer.BadParameter("give at least one --vector or prompt")

    def body() -> None:
        from steerlab.evaluate.frontier import frontier

        from .vectors import load_vector

        openings_list = _openings(openings)[:limit]
        lm, _ = _load(model)
        vecs = {name: load_vector(path, lm) for name, path in named.items()}
        for vec in vecs.values():
            vec.check_model(lm)
        contenders = _contenders(
            vecs, coef_list, resolve_layer_sets(layer_sets, lm), positive_prompts, negative_prompts, combine
        )
        rep = frontier(
            lm,
            contenders,
            openings_list,
            budget=budget,
            goal={1: goal_positive, -1: goal_negative},
            seed=seed,
            progress=progress_flag(),
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
        _finish(rep, out, "frontier", lm, openings, coefficients=coef_list)

    run(body)


@analyze_app.command("pca")
def analyze_pca(
    layer: int = typer.Option(..., help="Block whose output to analyse."),
    out: Path = OUT,
    model: str = MODEL,
    pairs: Path | None = typer.Option(None, callback=existing_path, help="Contrast pairs (labels positive/negative)."),
    texts: Path | None = typer.Option(None, callback=existing_path, help="Or plain texts."),
    center: bool = typer.Option(False, help="Pairs: centre each pair on its midpoint first."),
    components: int = typer.Option(8, min=1, help="Principal components."),
    save_direction: Path | None = typer.Option(None, help="Also save PC1 as a steering vector folder."),
) -> None:
    """PCA of residual-stream activations at a layer; PC directions usable as steering vectors.

    Example: steerlab analyze pca --pairs pairs.jsonl --layer 15 --center --out runs/pca
    """
    if (pairs is None) == (texts is None):
        raise typer.BadParameter("give exactly one of --pairs or --texts")

    def body() -> None:
        import steerlab
        from steerlab.analysis import contrast_pca, residual_pca

        contrast = steerlab.load_pairs(pairs) if pairs is not None else None
        plain = steerlab.load_texts(texts) if texts is not None else None
        lm, _ = _load(model)
        at = resolve_layer(layer, lm, "--layer")
        assert at is not None
        rep: Report
        if contrast is not None:
            rep = contrast_pca(lm, contrast, at, n_components=components, center=center, progress=progress_flag())
        else:
            rep = residual_pca(lm, list(plain or []), at, n_components=components, progress=progress_flag())
        if save_direction is not None:
            rep.direction(0).save(save_direction)
        _finish(rep, out, "pca", lm, pairs or texts, layer=at)

    run(body)


@analyze_app.command("projection")
def analyze_projection(
    vector: Path = typer.Option(..., "--vector", "-v", callback=existing_path, help="Vector folder or .gguf."),
    pairs: Path = typer.Option(..., callback=existing_path, help="Contrast pairs to project."),
    out: Path = OUT,
    model: str = MODEL,
    layers: str | None = typer.Option(None, callback=layers_option, help="Layers (default: the vector's)."),
) -> None:
    """Positive vs negative activations projected on a vector, per layer (histograms, Cohen's d).

    Example: steerlab analyze projection --vector vectors/happy --pairs pairs.jsonl --out runs/proj
    """

    def body() -> None:
        import steerlab
        from steerlab.analysis import projection

        data = steerlab.load_pairs(pairs)
        lm, vec = _load(model, vector)
        rep = projection(lm, data, vec, layers=resolve_layers(layers, lm) if layers else None, progress=progress_flag())
        _finish(rep, out, "projection", lm, pairs)

    run(body)


@analyze_app.command("similarity")
def analyze_similarity(
    vectors: list[Path] = typer.Argument(
        ..., callback=existing_path, help="One vector (across its layers) or several (between them)."
    ),
    out: Path = OUT,
    layer: int | None = typer.Option(None, help="Compare several vectors at this layer (default: mean)."),
) -> None:
    """Cosine similarity heat map: of one vector across layers, or between vectors.

    Example: steerlab analyze similarity vectors/happy vectors/angry --out runs/sim
    """

    def body() -> None:
        from steerlab.analysis import layer_similarity, vector_similarity

        from .vectors import load_vector

        vecs = {p.name: load_vector(p) for p in vectors}
        lacking = [name for name, v in vecs.items() if layer is not None and layer not in v.directions]
        if lacking:
            raise typer.BadParameter(f"vector(s) {lacking} have no direction at layer {layer}", param_hint="--layer")
        rep = layer_similarity(next(iter(vecs.values()))) if len(vecs) == 1 else vector_similarity(vecs, layer=layer)
        rep.write(out, "similarity")
        write_manifest(out, None)
        emit(rep.to_dict(), lambda: console.print(rep.to_markdown()))

    run(body)


@analyze_app.command("breakdown")
def analyze_breakdown(
    vector: Path = typer.Option(..., "--vector", "-v", callback=existing_path, help="Vector folder or .gguf."),
    texts: Path = typer.Option(..., callback=existing_path, help="Neutral texts."),
    out: Path = OUT,
    model: str = MODEL,
    coefs: str | None = typer.Option(None, help="Coefficients (default a log grid to ±16)."),
    layers: str | None = typer.Option(None, callback=layers_option, help="Use only these layers of the vector."),
    limit: int | None = typer.Option(None, min=1, help="Use the first N texts."),
) -> None:
    """Where and why the model breaks: coefficient vs added/residual norm ratio, perplexity and KL.

    Example: steerlab analyze breakdown --vector vectors/happy --texts facts.csv --out runs/breakdown
    """

    def body() -> None:
        import steerlab
        from steerlab.analysis import breakdown_curve

        neutral = steerlab.load_texts(texts, limit=limit)
        lm, vec = _load(model, vector)
        rep = breakdown_curve(
            lm,
            vec,
            neutral,
            coefficients=parse_float_list(coefs) if coefs else None,
            layers=resolve_layers(layers, lm) if layers else None,
            progress=progress_flag(),
        )
        _finish(rep, out, "breakdown", lm, texts)

    run(body)
