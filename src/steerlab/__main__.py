"""``python -m steerlab`` runs the command line."""

from .cli import app

app()
