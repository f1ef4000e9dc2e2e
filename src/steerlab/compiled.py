"""Steering a model that ``torch.compile`` has compiled: make compiled code notice the hooks.

By default TorchDynamo does not guard on module hooks
(``torch._dynamo.config.skip_nnmodule_hook_guards = True``): a model compiled before a steering
session keeps running the graph it traced without the session's hooks (silently unsteered), and a
model compiled inside a session keeps replaying that session's deltas after it closed (silently
steered). steerlab turns the guards on whenever a session opens or closes in a process that has
imported TorchDynamo, and clears the graphs compiled without them, once, with a warning. No model
can have been compiled while TorchDynamo is not imported, so a process that never compiles pays
nothing (not even TorchDynamo's import).

Opening or closing a session makes compiled code re-check its guards and retrace where they fail
(the first steered call after a plain one does); a decoding loop inside one open session (as
:func:`steerlab.steer_rows` with ``generating=True`` allows) runs its graphs without retracing.
``benchmarks/bench_steps.py`` checks compiled steered decoding against eager, token for token.

Example:
    >>> from steerlab.compiled import guard_hooks
    >>> guard_hooks()  # no-op until torch._dynamo is imported
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
    dynamo.reset()
    log.warning(
        "steerlab: torch.compile now guards on module hooks (torch._dynamo.config.skip_nnmodule_hook_guards = "
        "False) and the graphs compiled before were cleared: they would have ignored or replayed steering hooks"
    )
    return True
