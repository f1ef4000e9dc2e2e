"""Steering a model that ``torch.compile`` has compiled: make compiled code notice the hooks (and give
each compiled decoding step a code object of its own: :func:`own_code`).

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

import itertools
import logging
import sys
import types
from collections.abc import Callable
from typing import Any

log = logging.getLogger("steerlab")

_MADE = itertools.count()


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


def own_code(method: Callable[..., Any], owner: object, name: str) -> Callable[..., Any]:
    """``method`` (a function defined in a class) bound to ``owner`` through a code object of its own.

    TorchDynamo keeps its compiled graphs per code object, at most ``recompile_limit`` (8) of them,
    and with ``fullgraph=True`` one more is an error (``FailOnRecompileLimitHit``). A compiled step
    whose every instance holds its own tensors (a cache, buffers: guards of its graph) would fail
    at the ninth instance if they shared the method's code object; with one code object each, each
    instance holds exactly its own graph. ``name`` (made unique here) names it in TorchDynamo's logs.

    Example:
        >>> class Step:
        ...     def run(self, x):
        ...         return x + 1
        >>> a, b = Step(), Step()
        >>> fa, fb = own_code(Step.run, a, "step"), own_code(Step.run, b, "step")
        >>> fa(1), fa.__code__ is fb.__code__, fa.__code__ is Step.run.__code__
        (2, False, False)
    """
    fn = getattr(method, "__func__", method)
    code = fn.__code__.replace(co_name=f"{name}_{next(_MADE)}")
    own = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    return types.MethodType(own, owner)
