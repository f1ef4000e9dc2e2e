"""The root ``steerlab`` command and its global flags; every command module adds its commands to
:data:`app`, and :mod:`steerlab.cli` imports them all.

Example:
    >>> app.info.help.split(":")[0]
    'Activation steering for language models'
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
