"""The ``steerlab`` command line (typer + rich): a thin shell over the library.

Example:
    $ steerlab demo
    $ steerlab extract --persona happy:sad --layers 8-19 --out vectors/happy
    $ steerlab generate --vector vectors/happy --coef 1.0 --compare "That game"
"""

from __future__ import annotations

import typer

from .common import FLAGS, quiet_env, run
from .operator_options import load_operator_plugins

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Activation steering for language models: extract, steer, evaluate, export.",
    pretty_exceptions_enable=False,
)


@app.callback()
def _global(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or status lines."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable JSON on stdout."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    """Activation steering for language models.

    Example: steerlab --quiet extract --persona happy:sad --out vectors/happy
    """
    FLAGS.quiet, FLAGS.json, FLAGS.debug = quiet, json_out, debug
    quiet_env()
    run(load_operator_plugins)  # operators of installed packages (entry points "steerlab.operators")


from . import condition, evals, gen, serve, vectors  # noqa: E402,F401  (command registration)

__all__ = ["app"]
