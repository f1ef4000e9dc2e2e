"""Where each architecture keeps its decoder blocks: one table, one place.

Steering and capture act on the *output of a decoder block* (the residual stream after block
``k``). :func:`find_blocks` maps a model to its ``nn.ModuleList`` of blocks using
:data:`ARCHITECTURES`; unknown architectures raise a clear error that says how to name the block
list by hand (``load_model(..., blocks="model.layers")``).

Example:
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> m = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    >>> len(find_blocks(m))
    2
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ..errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class ArchSpec:
    """Attribute paths, relative to the ``*ForCausalLM`` module, of the parts steerlab uses."""

    blocks: str
    """Dotted path of the ``nn.ModuleList`` of decoder blocks."""
    attn_out: str
    """Dotted path, relative to one block, of the attention output projection."""


_LLAMA_LIKE = ArchSpec("model.layers", "self_attn.o_proj")

ARCHITECTURES: dict[str, ArchSpec] = {
    "gpt2": ArchSpec("transformer.h", "attn.c_proj"),
    "gpt_neo": ArchSpec("transformer.h", "attn.attention.out_proj"),
    "gpt_neox": ArchSpec("gpt_neox.layers", "attention.dense"),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "gemma3": ArchSpec("model.language_model.layers", "self_attn.o_proj"),
    "phi3": _LLAMA_LIKE,
    "opt": ArchSpec("model.decoder.layers", "self_attn.out_proj"),
}
"""``config.model_type`` → :class:`ArchSpec`. Add a row here to support a new architecture."""


def get_path(root: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path (``"model.layers"``, ``"model.layers.3.mlp"``) of ``root``.

    Raises:
        AttributeError: there is no module at ``path``.
    """
    return root.get_submodule(path)


def _supported() -> str:
    return ", ".join(sorted(ARCHITECTURES))


def find_blocks(model: nn.Module, blocks: str | None = None) -> nn.ModuleList:
    """Return the decoder blocks of ``model`` (a Hugging Face causal LM).

    Args:
        model: the ``*ForCausalLM`` module.
        blocks: a dotted path to use instead of the table, for architectures not in it.

    Raises:
        UnsupportedArchitectureError: the architecture is not in :data:`ARCHITECTURES` and no
            ``blocks`` path was given, or the path does not lead to a ``ModuleList``.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if blocks is None:
        spec = ARCHITECTURES.get(str(model_type))
        if spec is None:
            raise UnsupportedArchitectureError(
                f"steerlab does not know where the decoder blocks of model_type={model_type!r} "
                f"live (known: {_supported()}). Name the block list by hand, e.g. "
                "load_model(path, blocks='model.layers'), after finding it with print(model)."
            )
        blocks = spec.blocks
    try:
        found = get_path(model, blocks)
    except (AttributeError, IndexError, TypeError) as exc:
        raise UnsupportedArchitectureError(
            f"model_type={model_type!r} has no module at {blocks!r}; pass the dotted path of its "
            "decoder block list (an nn.ModuleList) as blocks=..."
        ) from exc
    if not isinstance(found, nn.ModuleList) or len(found) == 0:
        raise UnsupportedArchitectureError(
            f"{blocks!r} in model_type={model_type!r} is not a non-empty nn.ModuleList of "
            "decoder blocks; pass the right dotted path as blocks=..."
        )
    return found
