"""Steering a model that ``torch.compile`` has compiled: make compiled code notice the hooks.

By default TorchDynamo does not guard on module hooks
(``torch._dynamo.config.skip_nnmodule_hook_guards = True``): a model compiled before a steering
session keeps running the graph it traced without the session's hooks (silently unsteered), and a
model compiled inside a session keeps replaying that session's deltas after it closed (silently
steered). steerlab turns the guards on whenever a session opens or closes in a process that has
imported TorchDynamo, and, if TorchDynamo has compiled anything by then, clears the graphs compiled
without them, once, with a warning (transformers imports TorchDynamo without compiling anything: a
process that never compiles sees no warning). No model can have been compiled while TorchDynamo is
not imported, so a process that never compiles pays nothing (not even TorchDynamo's import).

Opening or closing a session makes compiled code re-check its guards and retrace where they fail
(the first steered call after a plain one does); a decoding loop inside one open session (as
:func:`steerlab.steer_rows` with ``generating=True`` allows) runs its graphs without retracing.
``benchmarks/bench_steps.py`` checks compiled steered decoding against eager, token for token.

Example:
    >>> import torch._dynamo
    >>> from steerlab.runtime.compiled import guard_hooks
    >>> torch._dynamo.reset()  # no compiled graph left in this process
    >>> guard_hooks()  # the guards are on from now on; nothing had to be cleared
    False
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("steerlab")


def guard_hooks() -> bool:
    """Make compiled code guard on module hooks; return whether compiled graphs had to be cleared.

    Called by every steering session as it opens and closes (cheap: a dictionary lookup while
    TorchDynamo is not imported, an attribute read once the guards are on).
    """
    dynamo = sys.modules.get("torch._dynamo")
    config = sys.modules.get("torch._dynamo.config")
    if dynamo is None or config is None or not getattr(config, "skip_nnmodule_hook_guards", False):
        return False
    setattr(config, "skip_nnmodule_hook_guards", False)  # noqa: B010 (a module found at run time)
    if not compiled_anything():
        return False  # graphs compiled from now on guard on hooks; there is nothing to clear
    dynamo.reset()
    log.warning(
        "steerlab: torch.compile now guards on module hooks (torch._dynamo.config.skip_nnmodule_hook_guards = "
        "False) and the graphs compiled before were cleared: they would have ignored or replayed steering hooks"
    )
    return True


def compiled_anything() -> bool:
    """Whether TorchDynamo has been handed any frame to compile in this process (and the code is alive).

    TorchDynamo records every frame it converts in ``torch._dynamo.convert_frame.input_codes`` (weak
    references, cleared by ``torch._dynamo.reset()``); with none alive, no compiled graph exists. A
    torch without that record counts as having compiled (the warning is then the safe side).

    Example:
        >>> import torch, torch._dynamo
        >>> from steerlab.runtime.compiled import compiled_anything
        >>> torch._dynamo.reset()
        >>> compiled_anything()
        False
        >>> torch.compile(lambda x: x + 1, backend="eager")(torch.ones(1))
        tensor([2.])
        >>> compiled_anything()
        True
        >>> torch._dynamo.reset()
    """
    convert = sys.modules.get("torch._dynamo.convert_frame")
    if convert is None:
        return "torch._dynamo" in sys.modules  # imported in part: assume the worst
    seen = getattr(getattr(convert, "input_codes", None), "seen", None)
    if seen is None:
        return True
    return any(ref() is not None for ref in seen)
