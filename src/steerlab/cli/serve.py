"""``steerlab serve``: the OpenAI-compatible steering server and its playground page."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import typer

from ..limits import Limits
from .common import (
    FLAGS,
    emit,
    model_option,
    non_negative,
    positive,
    run,
    say,
    status,
    warn,
)
from .root import app


def _scheduler(value: str) -> str:
    from steerlab.serve.settings import SCHEDULERS

    if value not in SCHEDULERS:
        raise typer.BadParameter(f"use one of {', '.join(SCHEDULERS)} (got {value!r})")
    return value


def _compiled(value: str) -> str:
    from steerlab.serve.settings import COMPILED

    if value not in COMPILED:
        raise typer.BadParameter(f"use one of {', '.join(COMPILED)} (got {value!r})")
    return value


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def serve(
    model: str = typer.Option(
        "default", "--model", "-m", callback=model_option, help="'default', a folder, a .gguf file or a hub id."
    ),
    vectors: Path = typer.Option(Path("vectors"), "--vectors", help="The vector store directory (created if missing)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on."),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="STEERLAB_API_KEY",
        show_envvar=True,
        help="Require 'Authorization: Bearer KEY' on every endpoint except /health and the page at /.",
    ),
    max_tokens: int = typer.Option(256, min=1, help="Most tokens one completion may ask for."),
    default_max_tokens: int = typer.Option(64, min=1, help="Tokens generated when a request gives no max_tokens."),
    max_prompt_tokens: int = typer.Option(2048, min=1, help="Longest prompt accepted, in tokens."),
    max_coefficient: float = typer.Option(
        16.0, callback=non_negative, help="Largest |coefficient| a steering entry may use."
    ),
    scheduler: str = typer.Option(
        "continuous",
        callback=_scheduler,
        help="continuous: a request joins the running batch at the next step; batch: one batch at a time "
        "(a request arriving meanwhile waits for the whole batch).",
    ),
    compiled: str = typer.Option(
        "auto",
        callback=_compiled,
        help="on: the continuous scheduler decodes rows whose steering is plain adds through one compiled step "
        "(compiled at its first use of each shape: a long pause on a CPU); off: eagerly; auto: "
        "on where measured to pay (docs/serve.md).",
    ),
    max_batch: int = typer.Option(16, min=1, help="Most requests generated together."),
    max_queue: int = typer.Option(128, min=1, help="Most requests waiting for a batch; more get HTTP 429."),
    batch_wait_ms: float = typer.Option(
        5.0,
        callback=non_negative,
        help="An idle server gathers a burst of requests until none arrived for this long (ms).",
    ),
    timeout: float = typer.Option(
        120.0, "--timeout", callback=positive, help="Seconds before an unfinished request is stopped (504)."
    ),
    max_request_mb: float = typer.Option(
        1.0, callback=positive, help="Largest request body (uploads aside), in MiB; more get HTTP 413."
    ),
    max_upload_mb: float = typer.Option(16.0, callback=positive, help="Largest vector upload, in MiB."),
    max_score_tokens: int = typer.Option(
        Limits.max_score_tokens,
        min=1,
        help="Most tokens of one text the cost endpoint scores "
        "(prompt + continuation; also capped by the model's context).",
    ),
    presets: bool = typer.Option(
        True,
        "--presets/--no-presets",
        help="Offer steerlab demo's frontier winners as presets (GET /v1/presets, the playground), built in "
        "the background at start (default model: a few seconds, generation waits for them).",
    ),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1, ... (default: cuda when available)."),
    threads: int | None = typer.Option(None, min=1, help="torch intra-op threads (default: torch's choice)."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
    engine: str = typer.Option(
        "transformers",
        help="transformers (steerlab generates) or vllm (a vLLM server "
        "with a steering plugin generates; see docs/vllm.md).",
    ),
    vllm_url: str | None = typer.Option(
        None, help="--engine vllm: the vLLM server, e.g. http://127.0.0.1:8001 (default: a vllm.LLM in this process)."
    ),
    vllm_plugin: str = typer.Option(
        "vllm-lens", help="--engine vllm: the plugin installed in vLLM: vllm-lens or hotwire."
    ),
    vllm_model: str | None = typer.Option(
        None,
        help="--engine vllm: the model name vLLM serves (default: asked "
        "from its /v1/models; in process: --model's checkpoint).",
    ),
    vllm_api_key: str | None = typer.Option(
        None, envvar="VLLM_API_KEY", show_envvar=True, help="--engine vllm: vLLM's --api-key, if it has one."
    ),
    hotwire_vectors: Path | None = typer.Option(
        None,
        help="--vllm-plugin hotwire: the HOTWIRE_VECTORS directory, "
        "if visible here (each request's vectors are checked to be "
        "exported and current).",
    ),
    hotwire_slots: int | None = typer.Option(
        None,
        min=1,
        help="--vllm-plugin hotwire: vLLM's HOTWIRE_SLOTS "
        "(requests that would overflow hotwire's slot bank are refused).",
    ),
) -> None:
    """Serve a model with an OpenAI-compatible API, steering vectors and a playground page.

    Example: steerlab serve --model default --vectors vectors/ --port 8000
    """
    import steerlab

    if engine not in ("transformers", "vllm"):
        raise typer.BadParameter("--engine must be transformers or vllm")
    if vllm_plugin not in ("vllm-lens", "hotwire"):
        raise typer.BadParameter("--vllm-plugin must be vllm-lens or hotwire")

    def body() -> None:
        import torch
        import uvicorn

        from steerlab.serve import ServeSettings, create_app

        if threads is not None:
            torch.set_num_threads(threads)
        settings = ServeSettings.from_env(
            api_key=api_key,
            max_tokens=max_tokens,
            default_max_tokens=default_max_tokens,
            max_prompt_tokens=max_prompt_tokens,
            max_coefficient=max_coefficient,
            scheduler=scheduler,
            compiled=compiled,
            max_batch=max_batch,
            max_queue=max_queue,
            batch_wait_ms=batch_wait_ms,
            request_timeout_s=timeout,
            max_request_bytes=max(1, int(max_request_mb * 1024 * 1024)),
            max_upload_bytes=max(1, int(max_upload_mb * 1024 * 1024)),
            max_score_tokens=max_score_tokens,
            presets=presets,
            model_aliases=(model,),  # accepted in requests; never shown when it is a path (/v1/models)
        )
        factory = None
        with status(f"loading {model}"):
            if engine == "vllm":
                from steerlab.models.load import resolve_model
                from steerlab.serve.engines.vllm import VLLMOptions, engine_factory, load_shell

                lm = load_shell(model)
                source = None if vllm_url else str(resolve_model(model)[0])
                factory = engine_factory(
                    VLLMOptions(
                        vllm_url, vllm_plugin, vllm_model or source, vllm_api_key, hotwire_vectors, hotwire_slots
                    )
                )
            else:
                lm = steerlab.load_model(model, device=device)
        api = create_app(lm, vectors, settings, engine=factory)
        store = api.state.server.store
        if presets:
            api.state.server.presets.future()  # built in the background now, not at the first page load
        for name, why in store.skipped.items():
            warn(f"skipped {vectors / name}", why)
        if settings.api_key is None and not _loopback(host):
            warn(
                "warning",
                f"serving on {host} without an API key: anyone who can "
                "reach this port can use the model (set --api-key or STEERLAB_API_KEY)",
            )
        url = f"http://{host}:{port}"
        where = "" if factory is None else f" ({api.state.server.engine.description})"
        info = {
            "url": url,
            "model": lm.model_id,
            "vectors": store.names(),
            "auth": settings.api_key is not None,
            "engine": engine + where,
        }
        emit(
            info,
            lambda: say(
                f"serving {lm.model_id} with {len(store.names())} vector(s) from "
                f"{vectors} at {url} (playground: {url}/)"
            ),
        )
        uvicorn.run(api, host=host, port=port, log_level="warning" if FLAGS.quiet or FLAGS.json else log_level)

    run(body)
