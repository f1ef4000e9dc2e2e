"""The installed transformers as a whole: its version, the checkpoint format it writes, its logging.

What steerlab knows of how transformers *calls* a model (keyword names, caches, block outputs) is in
:mod:`steerlab.runtime.hf`; this module holds the facts every layer may need without running a model
(an error message naming the versions, a cache tag, quieting progress bars while loading).

Example:
    >>> versions().startswith("transformers ")
    True
    >>> checkpoint_format().startswith("tf")
    True
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def versions() -> str:
    """``"transformers X, torch Y"``: the versions to name in an error about transformers' internals."""
    import transformers

    return f"transformers {transformers.__version__}, torch {torch.__version__}"


def checkpoint_format() -> str:
    """A tag for the checkpoint format this transformers writes (``"tf5"``): saved folders are
    read back only by the same major version."""
    import transformers

    return "tf" + transformers.__version__.split(".")[0]


@contextmanager
def quiet(errors_only: bool = False) -> Iterator[None]:
    """Silence transformers' progress bars (and, with ``errors_only``, its warnings) in the block."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    if errors_only:
        hf_logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        if errors_only:
            hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
