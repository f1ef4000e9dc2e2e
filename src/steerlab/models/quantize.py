"""Weight-only int8 / int4 for CPU decoding: each linear layer's weight on an integer grid.

Opt-in, for models that came quantized (the default model's GGUF is Q4_1: its float32 weights are
already a 4-bit grid, so an int8 grid per output channel loses little more). :func:`int8_weights`
converts the model to bfloat16 and replaces every ``nn.Linear`` of its decoder blocks and its
``lm_head`` with :class:`Int8Linear`, which multiplies with torch's own weight-only int8 kernel
(``aten._weight_int8pack_mm``: bfloat16 activations, int8 weights, one scale per output channel).
At batch 1 a decoding step then reads a quarter of float32's bytes. Steering is unchanged (it acts
on the residual stream, in bfloat16): coefficient 0 is the plain run of the same model, rows
without steering are bit-identical, the cache equals recompute — as for any model.

:func:`int4_weights` does the same with 4-bit weights in groups of 32 inputs, each group with its own
scale and minimum (``aten._weight_int4pack_mm_for_cpu``): the layout of GGUF's Q4_1, the default
model's own format, so the grid is close to the one the weights came on (the scales are rounded to
bfloat16, so not exactly it).

What changes in the numbers (measured by ``benchmarks/bench_llamacpp.py --dtype int8`` / ``int4``,
see docs/benchmarks.md): logits move by bfloat16 rounding plus the int8 grid; greedy texts agree with
float32's for a while and may then part.

Example:
    >>> lm = int8_weights(steerlab.load_model("default"))  # doctest: +SKIP
    >>> steerlab.generate(lm, "Hello", steering=Steering(vec, 4.0))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .load import LM


class Int8Linear(torch.nn.Module):
    """A linear layer whose weight is int8, symmetric, one scale per output channel.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> lin = torch.nn.Linear(64, 8).to(torch.bfloat16)
        >>> q = Int8Linear(lin)
        >>> x = torch.randn(2, 64, dtype=torch.bfloat16)
        >>> bool((q(x) - lin(x)).abs().max() < 0.05)
        True
    """

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        if not fits(linear):
            raise ValueError(
                f"torch's int8 kernel needs an input width that is a multiple of 16 (got {linear.in_features})"
            )
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        self.in_features, self.out_features = linear.in_features, linear.out_features
        dtype = linear.weight.dtype
        self.register_buffer("weight_int8", torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scale.to(dtype))
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out = torch.ops.aten._weight_int8pack_mm(flat, self.weight_int8, self.scales)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


GROUP = 32
"""Inputs per int4 group (GGUF's Q4_1 block)."""


class Int4Linear(torch.nn.Module):
    """A linear layer whose weight is 4-bit, asymmetric, one scale and minimum per group of
    :data:`GROUP` inputs of each output channel (bfloat16 activations).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> lin = torch.nn.Linear(64, 16).to(torch.bfloat16)
        >>> q = Int4Linear(lin)
        >>> x = torch.randn(2, 64, dtype=torch.bfloat16)
        >>> bool((q(x) - lin(x)).abs().max() < 0.2)
        True
    """

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        if not fits(linear, GROUP):
            raise ValueError(
                f"int4 groups need an input width that is a multiple of {GROUP} (got {linear.in_features})"
            )
        weight = linear.weight.detach().float()
        n, k = weight.shape
        groups = weight.view(n, k // GROUP, GROUP)
        low, high = groups.amin(-1), groups.amax(-1)
        step = grid_step(groups, low, high)
        q = torch.round((groups - low[..., None]) / step[..., None]).clamp(0, 15).to(torch.int32).view(n, k)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int4", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2))
        # the kernel computes (q - 8) * scale + zero: zero = low + 8 * scale
        self.register_buffer("scales_zeros", torch.stack([step.t(), (low + 8 * step).t()], -1).to(torch.bfloat16))
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).contiguous()
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.weight_int4, GROUP, self.scales_zeros)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def grid_step(groups: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Each group's step: the grid its values already lie on where there is one (a weight that
    came as Q4_1: the smallest gap between its distinct values, when every value is a whole
    number of such gaps above the minimum and at most 15 of them), else ``(max - min) / 15``.

    Example:
        >>> g = torch.tensor([[[0.5, 0.7, 1.1, 0.5]]])  # levels 0, 1, 3 of a 0.2 grid
        >>> grid_step(g, g.amin(-1), g.amax(-1))
        tensor([[0.2000]])
    """
    tiny = torch.finfo(torch.float32).tiny
    even = ((high - low) / 15).clamp(min=tiny)
    ordered = groups.sort(-1).values
    gaps = ordered.diff(dim=-1)
    gaps = torch.where(gaps > even[..., None] * 1e-3, gaps, torch.inf)
    found = gaps.amin(-1).clamp(min=tiny)
    levels = (groups - low[..., None]) / found[..., None]
    on_grid = ((levels - levels.round()).abs().amax(-1) < 1e-3) & (levels.amax(-1) < 15.5) & torch.isfinite(found)
    return torch.where(on_grid, found, even)


def fits(linear: torch.nn.Linear, multiple: int = 16, outputs: int = 1) -> bool:
    """Whether torch's kernels take this layer: its input width a multiple of ``multiple`` (16 for
    int8: torch 2.13 returns NaN or infinite values for other widths, or crashes; 32 for int4 groups)
    and its output width a multiple of ``outputs`` (16 for int4's packing).

    Example:
        >>> fits(torch.nn.Linear(64, 8)), fits(torch.nn.Linear(172, 64))
        (True, False)
    """
    return linear.in_features % multiple == 0 and linear.out_features % outputs == 0


def int8_weights(lm: LM) -> LM:
    """Convert ``lm`` in place to bfloat16 with int8 weights in every linear layer of its blocks and
    its ``lm_head`` (:class:`Int8Linear`) that :func:`fits` the kernel (the others stay bfloat16);
    returns it. CPU only (torch's kernel is a CPU kernel).

    Raises:
        ValueError: the model is not on a CPU.
    """
    return _quantize(lm, Int8Linear, 16)


def int4_weights(lm: LM) -> LM:
    """:func:`int8_weights` with 4-bit weights in groups of 32 in the blocks (:class:`Int4Linear`);
    the ``lm_head`` gets int8 (the default model's output matrix, tied to its embeddings, did not
    come on a 4-bit grid)."""
    return _quantize(lm, Int4Linear, GROUP, 16, head=Int8Linear)


def _quantize(
    lm: LM,
    kind: Callable[[torch.nn.Linear], torch.nn.Module],
    multiple: int,
    outputs: int = 1,
    head: Callable[[torch.nn.Linear], torch.nn.Module] | None = None,
) -> LM:
    if lm.device.type != "cpu":
        raise ValueError(f"int8 / int4 weights use torch's CPU kernels; the model is on {lm.device}")
    model = lm.model.to(torch.bfloat16)
    targets: list[tuple[torch.nn.Module, str, torch.nn.Linear, Callable[[torch.nn.Linear], torch.nn.Module]]] = []
    for block in lm.blocks:
        for parent in block.modules():
            for name, child in parent.named_children():
                if isinstance(child, torch.nn.Linear) and fits(child, multiple, outputs):
                    targets.append((parent, name, child, kind))
    output = model.get_output_embeddings()
    head_kind = head or kind
    if isinstance(output, torch.nn.Linear) and fits(output, *((16, 1) if head is Int8Linear else (multiple, outputs))):
        for parent in model.modules():
            for name, child in parent.named_children():
                if child is output:
                    targets.append((parent, name, output, head_kind))
    for parent, name, linear, make in targets:
        setattr(parent, name, make(linear))
    return lm
