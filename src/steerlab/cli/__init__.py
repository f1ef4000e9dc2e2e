"""The ``steerlab`` command line (typer + rich): a thin shell over the library.

The root command lives in :mod:`~steerlab.cli.root`; importing this package imports every command
module, which adds its commands to it.

Example:
    $ steerlab demo
    $ steerlab extract --persona happy:sad --layers 8-19 --out vectors/happy
    $ steerlab generate --vector vectors/happy --coef 1.0 --compare "That game"
"""

from __future__ import annotations

from . import condition, evals, gen, serve, train, vectors  # noqa: F401  (they add their commands to app)
from .root import app

__all__ = ["app"]
