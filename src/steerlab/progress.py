"""Progress bars for long work (rich), silenced with ``STEERLAB_QUIET=1`` or ``progress=False``.

Example:
    >>> for _ in track(range(3), "work", enabled=False):
    ...     pass
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress_enabled(enabled: bool | None) -> bool:
    """``enabled`` if given, else on unless ``STEERLAB_QUIET`` is set."""
    if enabled is not None:
        return enabled
    return os.environ.get("STEERLAB_QUIET", "") in ("", "0")


def track(items: Iterable[T], description: str, total: int | None = None, enabled: bool | None = None) -> Iterator[T]:
    """Iterate ``items`` showing a rich progress bar (on stderr) when enabled."""
    if not progress_enabled(enabled):
        yield from items
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        yield from bar.track(items, total=total, description=description)
