"""``steerlab extract``, ``inspect``, ``export gguf|vllm-lens|hotwire|bake`` and ``import gguf``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from .root import app

if TYPE_CHECKING:
    from ..core.vector import SteeringVector

from .common import (
    console,
    emit,
    executor_for,
    existing_path,
    finite,
    layers_option,
    method_option,
    model_option,
    out_folder,
    progress_flag,
    resolve_layers,
    run,
    say,
    status,
    text_option,
    write_manifest,
)
from .operator_options import PARAMETER_HELP, make_operator, operator_option, parameter_option

export_app = typer.Typer(help="Convert vectors for other engines.", no_args_is_help=True)
import_app = typer.Typer(help="Bring vectors from other tools into steerlab.", no_args_is_help=True)
app.add_typer(export_app, name="export")
app.add_typer(import_app, name="import")


def _span(layers: list[int]) -> str:
    """``8-19`` for a run of layers, else ``8,10,12``."""
    if len(layers) > 1 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def load_vector(path: Path, lm: object = None) -> SteeringVector:
    """A vector folder or a ``.gguf`` control vector."""
    from ..core.vector import SteeringVector

    return SteeringVector.from_gguf(path, lm=lm) if path.suffix == ".gguf" else SteeringVector.load(path)


@app.command()
def extract(
    out: Path = typer.Option(..., "--out", "-o", callback=out_folder, help="Folder to write the vector into."),
    model: str = typer.Option(
        "default", "--model", "-m", callback=model_option, help="'default', a folder, a .gguf file or a hub id."
    ),
    pairs: Path | None = typer.Option(
        None,
        callback=existing_path,
        help="Contrast pairs: .json, .jsonl, .csv or .parquet (positive/negative, or CAA).",
    ),
    persona: str | None = typer.Option(
        None, callback=text_option, help="Persona pairs 'positive:negative', e.g. happy:sad."
    ),
    openings: Path | None = typer.Option(
        None, callback=existing_path, help="Sentence openings for --persona (JSON list or text lines)."
    ),
    method: str = typer.Option(
        "mean_diff", callback=method_option, help="actadd | mean_diff | pca_diff | pca_center | probe."
    ),
    layers: str = typer.Option(
        "8-19", callback=layers_option, help="Layers, e.g. 8-19, 8,10,12 or -1 (the last block)."
    ),
    batch_size: int = typer.Option(32, min=1, help="Texts per forward pass."),
    share_prefix: bool = typer.Option(
        True, help="Compute each distinct token prefix of the texts once (chat template, a CAA question)."
    ),
    workers: int | None = typer.Option(
        None,
        min=1,
        help="Read shards of the pairs on N Ray actors (pip install steerlab\\[ray]); --pairs files are then streamed.",
    ),
    ray_address: str | None = typer.Option(
        None, help="Join this Ray cluster (needs --workers); default: the cluster Ray finds, else a local instance."
    ),
) -> None:
    """Build a steering vector from contrast pairs and save it as a folder.

    Example: steerlab extract --persona happy:sad --layers 8-19 --out vectors/happy
    """
    if ray_address is not None and workers is None:
        executor_for(workers, ray_address)  # refuses --ray-address without --workers
    import steerlab
    from steerlab.data.demo import OPENINGS

    if (pairs is None) == (persona is None):
        raise typer.BadParameter("give exactly one of --pairs FILE or --persona positive:negative")
    if persona is not None:
        sides = [s.strip() for s in persona.split(":")]
        if len(sides) != 2 or not all(sides):
            raise typer.BadParameter("--persona must look like happy:sad (two non-empty personas)")
        if sides[0] == sides[1]:
            raise typer.BadParameter(f"--persona {persona!r} names the same persona twice: the vector would be zero")

    def body() -> None:
        data: Any
        if pairs is not None and (workers is not None or pairs.suffix.lower() == ".parquet"):
            data = steerlab.open_pairs(pairs)  # streamed: read in shards, never all in memory
        elif pairs is not None:
            data = steerlab.load_pairs(pairs)  # the same reader, all pairs in memory
        else:
            pos, neg = (s.strip() for s in (persona or ":").split(":"))
            texts = steerlab.load_openings(openings) if openings else list(OPENINGS)
            data = steerlab.persona_pairs(pos, neg, texts)
        with status(f"loading {model}"):
            lm = steerlab.load_model(model)
        layer_list = resolve_layers(layers, lm)
        say(f"extracting with {method} from {len(data)} pairs at layers {_span(layer_list)}")
        executor = executor_for(workers, ray_address)
        vec = steerlab.extract(
            lm,
            data,
            method=method,
            layers=layer_list,
            batch_size=batch_size,
            progress=progress_flag(),
            share_prefix=share_prefix,
            executor=executor,
        )
        vec.save(out)
        write_manifest(out, lm, data_hash=vec.data_hash, method=method, layers=layer_list)
        emit(
            {"out": str(out), **vec.describe()},
            lambda: console.print(f"wrote {out} ({method}, layers {_span(layer_list)})"),
        )

    run(body)


@app.command()
def inspect(
    path: Path = typer.Argument(..., callback=existing_path, help="A vector folder or a .gguf control vector."),
) -> None:
    """Show what a vector is: model, layers, norms, method, data hash.

    Example: steerlab inspect vectors/happy
    """

    def body() -> None:
        info = load_vector(path).describe()

        def human() -> None:
            table = Table(title=str(path))
            table.add_column("field")
            table.add_column("value")
            for key, value in info.items():
                table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
            console.print(table)

        emit(info, human)

    run(body)


@export_app.command("gguf")
def export_gguf(
    vector: Path = typer.Argument(..., callback=existing_path, help="A vector folder."),
    out: Path = typer.Argument(..., help="The .gguf file to write."),
    coef: float = typer.Option(1.0, "--coef", "-c", callback=finite, help="Coefficient folded into the file."),
    operator: str = typer.Option(
        "add",
        "--operator",
        callback=operator_option,
        help="How the vector acts: written when the operator is a constant addition, refused with its "
        "reason otherwise.",
    ),
    operator_param: list[str] = typer.Option([], "--operator-param", callback=parameter_option, help=PARAMETER_HELP),
) -> None:
    """Write a llama.cpp control vector (use with llama.cpp --control-vector FILE).

    The file holds what the steering adds at every token (coef * vector for add).

    Example: steerlab export gguf vectors/happy happy.gguf
    """
    op = make_operator(operator, operator_param)

    def body() -> None:
        from ..core.steering import Steering
        from ..core.vector import SteeringVector
        from ..export import gguf

        path = gguf.write(Steering(SteeringVector.load(vector), coef, operator=op), out)
        emit({"out": str(path)}, lambda: console.print(f"wrote {path}"))

    run(body)


@export_app.command("vllm-lens")
def export_vllm_lens(
    vector: Path = typer.Argument(..., callback=existing_path, help="A vector folder (or a .gguf control vector)."),
    out: Path = typer.Argument(..., help="The .json file to write."),
) -> None:
    """Write a vllm-lens steering list (the value of vllm_xargs / extra_args "apply_steering_vectors").

    Each entry's "scale" is the coefficient (1 in the file); it steers every token. Token-wise
    (ActAdd) vectors are refused: vllm-lens 1.3.0 places them wrongly. See docs/vllm.md.

    Example: steerlab export vllm-lens vectors/happy happy.vllm-lens.json
    """

    def body() -> None:
        from ..export import vllm_lens

        path = vllm_lens.write(load_vector(vector), out)
        emit({"out": str(path), "format": "vllm-lens"}, lambda: console.print(f"wrote {path}"))

    run(body)


def _store_entries(folder: Path) -> list[Path]:
    """The vector folders and .gguf files directly inside a store directory."""
    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".") and ((p / "steering_config.json").is_file() or p.suffix == ".gguf")
    )


def _vector_name(path: Path) -> str:
    """A vector's name in steerlab serve's store: a folder's name, a .gguf file's stem."""
    return path.stem if path.suffix == ".gguf" else path.name


@export_app.command("hotwire")
def export_hotwire(
    vector: Path = typer.Argument(
        ...,
        callback=existing_path,
        help="A vector folder, a .gguf control vector, or a store directory (every vector in it).",
    ),
    out: Path = typer.Argument(..., help="The HOTWIRE_VECTORS directory to write NAME.pt into (or a .pt file)."),
    name: str | None = typer.Option(
        None,
        "--name",
        help="The id requests use (default: the vector's folder or file name, as in steerlab serve's store).",
    ),
) -> None:
    """Write hotwire-vllm vector files: (n_layers, d_model) float32, the id is the file name.

    Start vLLM with HOTWIRE_VECTORS=OUT; a request then steers with
    vllm_xargs {"hotwire": "[{\"id\": NAME, \"layer\": k, \"scale\": c}, ...]"} (steerlab serve
    --engine vllm --vllm-plugin hotwire writes those for you). See docs/vllm.md.

    Example: steerlab export hotwire vectors/ hotwire_vectors/
    """

    def body() -> None:
        from ..errors import VectorFileError
        from ..export import hotwire

        is_store = vector.is_dir() and not (vector / "steering_config.json").is_file()
        sources = _store_entries(vector) if is_store else [vector]
        if is_store and (name or not sources):
            raise VectorFileError(
                f"{vector} holds no vectors"
                if not sources
                else "--name names one vector; give a vector folder, not a store directory"
            )
        written = [str(hotwire.write(load_vector(src), out, name=name or _vector_name(src))) for src in sources]
        emit({"out": written, "format": "hotwire"}, lambda: console.print("\n".join(f"wrote {p}" for p in written)))

    run(body)


@export_app.command("bake")
def export_bake(
    vector: Path = typer.Argument(..., callback=existing_path, help="A vector folder (or a .gguf control vector)."),
    out: Path = typer.Argument(..., help="Folder to write the baked Hugging Face checkpoint into."),
    model: str = typer.Option(
        "default", "--model", "-m", callback=model_option, help="'default', a folder, a .gguf file or a hub id."
    ),
    coef: float | None = typer.Option(
        None, "--coef", "-c", callback=finite, help="Coefficient (required to add; ablation: 1)."
    ),
    layers: str | None = typer.Option(
        None, callback=layers_option, help="Layers to use, e.g. 8-19 (default: all of the vector's)."
    ),
    ablate: bool = typer.Option(False, "--ablate", help="Bake directional ablation (orthogonalised weights)."),
    operator: str | None = typer.Option(
        None,
        "--operator",
        callback=operator_option,
        help="How the vector acts (default add; --ablate is --operator ablate): baked when the operator is a "
        "constant addition or a direction removal, refused with its reason otherwise.",
    ),
    operator_param: list[str] = typer.Option([], "--operator-param", callback=parameter_option, help=PARAMETER_HELP),
    approximate: bool = typer.Option(False, "--approximate", help="Allow ablations that are only approximate."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it holds an earlier bake."),
) -> None:
    """Fold a steering into the weights: a plain HF checkpoint that vLLM / TGI / transformers serve.

    Adds coef * vector at every token (as an MLP output bias), or with --ablate removes the
    direction from every residual-stream writer. Needs no steerlab to load.

    Example: steerlab export bake vectors/happy baked/happy --model default --coef 4 --layers 8-19
    """

    if ablate and operator is not None:
        raise typer.BadParameter("--ablate is --operator ablate: give one of them", param_hint="--ablate")
    name = "ablate" if ablate else operator or "add"
    if coef is None and name != "ablate":
        raise typer.BadParameter("give --coef C (the coefficient to bake), or --ablate")
    op = make_operator(name, operator_param)

    def body() -> None:
        import steerlab
        from steerlab.export.bake import bake

        with status(f"loading {model}"):
            lm = steerlab.load_model(model)
        vec = load_vector(vector, lm)
        assert isinstance(vec, steerlab.SteeringVector)
        layer_list = resolve_layers(layers, lm) if layers else None
        steering = steerlab.Steering(vec, 1.0 if coef is None else coef, layers=layer_list, operator=op)
        with status(f"baking into {out}"):
            path = bake(lm, steering, out, approximate=approximate, overwrite=overwrite)
        used = list(steering.active_layers)
        write_manifest(
            path,
            lm,
            operator=name,
            operator_parameters=op.parameters(),
            coefficient=steering.coefficient,
            layers=used,
            vector=str(vector),
        )
        info = json.loads((path / "steerlab_bake.json").read_text(encoding="utf-8"))
        span = f"{used[0]}-{used[-1]}" if used == list(range(used[0], used[-1] + 1)) else ",".join(map(str, used))
        message = f"wrote {path} ({name}, coefficient {steering.coefficient}, layers {span}); vllm serve {path}"
        emit({"out": str(path), **info}, lambda: console.print(message))

    run(body)


@import_app.command("gguf")
def import_gguf(
    gguf_file: Path = typer.Argument(..., callback=existing_path, help="A llama.cpp control vector (.gguf)."),
    out: Path = typer.Argument(..., help="Vector folder to write."),
    model: str | None = typer.Option(
        None, "--model", "-m", callback=model_option, help="Model the file was made for (fills in metadata)."
    ),
) -> None:
    """Convert a llama.cpp / repeng control vector into a steerlab vector folder.

    Example: steerlab import gguf happy.gguf vectors/happy-from-gguf --model default
    """

    def body() -> None:
        import steerlab

        lm = steerlab.load_model(model) if model else None
        vec = steerlab.SteeringVector.from_gguf(gguf_file, lm=lm)
        if lm is not None:
            vec.check_model(lm)
        vec.save(out)
        emit({"out": str(out), **vec.describe()}, lambda: console.print(f"wrote {out}"))

    run(body)
