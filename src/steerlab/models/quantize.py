"""Weight-only int8 for CPU decoding: each linear layer's weight as int8 per output channel.

Opt-in, for models that came quantized (the default model's GGUF is Q4_1: its float32 weights are
already a 4-bit grid, so an int8 grid per output channel loses little more). :func:`int8_weights`
converts the model to bfloat16 and replaces every ``nn.Linear`` of its decoder blocks and its
``lm_head`` with :class:`Int8Linear`, which multiplies with torch's own weight-only int8 kernel
(``aten._weight_int8pack_mm``: bfloat16 activations, int8 weights, one scale per output channel).
At batch 1 a decoding step then reads a quarter of float32's bytes. Steering is unchanged (it acts
on the residual stream, in bfloat16): coefficient 0 is the plain run of the same model, rows
without steering are bit-identical, the cache equals recompute — as for any model.

What changes in the numbers (measured by ``benchmarks/bench_llamacpp.py --dtype int8``, see
docs/benchmarks.md): logits move by bfloat16 rounding plus the int8 grid; greedy texts agree with
float32's for a while and may then part.

Example:
    >>> lm = int8_weights(steerlab.load_model("default"))  # doctest: +SKIP
    >>> steerlab.generate(lm, "Hello", steering=Steering(vec, 4.0))  # doctest: +SKIP
"""

from __future__ import annotations

import torch

from .load import LM


class Int8Linear(torch.nn.Module):
    """A linear layer whose weight is int8, symmetric, one scale per output channel.

    Example:
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


def fits(linear: torch.nn.Linear) -> bool:
    """Whether torch's int8 kernel takes this layer: its input width a multiple of 16 (torch 2.13
    returns NaN or infinite values for other widths, or crashes).

    Example:
        >>> fits(torch.nn.Linear(64, 8)), fits(torch.nn.Linear(172, 64))
        (True, False)
    """
    return linear.in_features % 16 == 0


def int8_weights(lm: LM) -> LM:
    """Convert ``lm`` in place to bfloat16 with int8 weights in every linear layer of its blocks and
    its ``lm_head`` (:class:`Int8Linear`) that :func:`fits` the kernel (the others stay bfloat16);
    returns it. CPU only (torch's kernel is a CPU kernel).

    Raises:
        ValueError: the model is not on a CPU.
    """
    if lm.device.type != "cpu":
        raise ValueError(f"int8 weights use torch's CPU kernel; the model is on {lm.device}")
    model = lm.model.to(torch.bfloat16)
    targets: list[tuple[torch.nn.Module, str, torch.nn.Linear]] = []
    for block in lm.blocks:
        for parent in block.modules():
            for name, child in parent.named_children():
                if isinstance(child, torch.nn.Linear) and fits(child):
                    targets.append((parent, name, child))
    head = model.get_output_embeddings()
    if isinstance(head, torch.nn.Linear) and fits(head):
        for parent in model.modules():
            for name, child in parent.named_children():
                if child is head:
                    targets.append((parent, name, head))
    for parent, name, linear in targets:
        setattr(parent, name, Int8Linear(linear))
    return lm
