"""Batched (steered) generation.

``steering`` is one steering for the whole batch, or a list with one steering (or ``None``) per
prompt — different vectors and coefficients in one batched ``generate`` call.

Example:
    >>> steerlab.generate(lm, ["That game"], steering=Steering(vec, 4.0, positions="generated"),
    ...                   max_new_tokens=24)  # doctest: +SKIP
    [' was the best thing ...']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessorList

from ..core.steering import SteeringLike
from ..errors import DatasetError, SteeringSpecError
from ..limits import Limits
from ..models.load import LM
from ..models.tokens import pad_id, pad_token_ids
from .decode import compiled_route, decoder, eos_ids
from .finite import FiniteLogits
from .kl_cap import capped_generate, check_capped_kwargs, row_caps
from .passes import hf_generate
from .session import steer_rows


def encode(lm: LM, texts: Sequence[str], padding_side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise ``texts`` and pad them on ``padding_side``: ``(input_ids, attention_mask)`` on the
    model's device."""
    if not texts:
        raise DatasetError("no texts to encode")
    ids = lm.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    input_ids, mask = pad_token_ids(ids, pad_id(lm.tokenizer), padding_side)
    return input_ids.to(lm.device), mask.to(lm.device)


def _rows(steering: SteeringLike | Sequence[SteeringLike | None] | None, n: int) -> list[SteeringLike | None]:
    if steering is None or not isinstance(steering, (list, tuple)):
        return [steering] * n  # type: ignore[list-item]
    if len(steering) != n:
        raise SteeringSpecError(
            f"got {len(steering)} steerings for {n} prompts: pass one Steering for the whole batch "
            "or a list with one Steering (or None) per prompt"
        )
    return list(steering)


def generate(
    lm: LM,
    prompts: str | Sequence[str],
    steering: SteeringLike | Sequence[SteeringLike | None] | None = None,
    max_new_tokens: int = 32,
    chat: bool = False,
    batch_size: int | None = None,
    padding_side: str = "left",
    compiled: bool | None = None,
    **generate_kwargs: Any,
) -> list[str]:
    """Continue ``prompts`` (greedy by default), optionally steered; returns the new text of each.

    Args:
        lm: the model.
        prompts: one prompt or a list.
        steering: one steering for all rows, or a list with one steering (or ``None``) per prompt.
        max_new_tokens: tokens to generate.
        chat: render each prompt as a user turn with the chat template.
        batch_size: prompts per ``generate`` call (default: all at once).
        padding_side: ``"left"`` (default) or ``"right"``.
        compiled: decode through the compiled step (:mod:`steerlab.runtime.decode`): ``None``
            (default) where it pays (:func:`steerlab.runtime.decode.pays`), ``True`` whenever the
            call allows it (greedy, left padding, no other ``generate`` keyword, steering that
            decodes as plain adds), ``False`` never. The tokens are those of ``model.generate``.
            Chunks with a ``kl_cap`` steering always decode eagerly (:mod:`steerlab.runtime.kl_cap`:
            greedy, left padding, each capped row beside an unsteered shadow row, about 2x the rows).
        **generate_kwargs: passed to ``model.generate`` (``do_sample``, ``temperature``,
            ``use_cache``, ...).

    Raises:
        LimitError: a prompt that is not text, is longer than the limit, or holds a lone surrogate.
        ContextLengthError: a prompt plus ``max_new_tokens`` does not fit the model's context.
        NonFiniteError: a step gave NaN or infinite logits for some prompts (a steering that
            overflows the model); the message names them. Nothing is argmaxed or sampled from them.
    """
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if not items:
        return []
    rows = _rows(steering, len(items))
    limits = Limits.for_model(lm)
    for i, p in enumerate(items):  # not text, too long or a lone surrogate: refused before the tokenizer sees it
        limits.check_text(p, f"prompt {i}")
    texts = [lm.chat(p) if chat else p for p in items]
    step = batch_size or len(texts)
    kwargs: dict[str, Any] = {"do_sample": False, "pad_token_id": pad_id(lm.tokenizer)}
    kwargs.update(generate_kwargs)
    if not kwargs.get("do_sample"):
        kwargs.setdefault("temperature", None)
        kwargs.setdefault("top_p", None)
        kwargs.setdefault("top_k", None)
    out: list[str] = []
    caps = row_caps(rows)
    if any(c is not None for c in caps):
        check_capped_kwargs(kwargs)
    route = compiled_route(lm, compiled, padding_side, generate_kwargs)
    for start in range(0, len(texts), step):
        chunk = texts[start : start + step]
        input_ids, mask = encode(lm, chunk, padding_side)
        lm.check_context(int(mask.sum(-1).max()), max_new_tokens)  # past its context a model writes garbage
        if any(c is not None for c in caps[start : start + step]):  # eager, with unsteered shadow rows
            if padding_side != "left":
                raise SteeringSpecError("kl_cap decodes left-padded rows (padding_side='left')")
            capped, _ = capped_generate(
                lm, input_ids, mask, rows[start : start + step], max_new_tokens, start, **kwargs
            )
            out += lm.tokenizer.batch_decode(capped, skip_special_tokens=True)
            continue
        if route(len(chunk), input_ids.shape[1] + max_new_tokens, max_new_tokens):
            dec = decoder(lm, len(chunk), input_ids.shape[1] + max_new_tokens)
            new = dec.run(
                input_ids, mask, rows[start : start + step], max_new_tokens, eos_ids(lm), kwargs["pad_token_id"], start
            )
            if new is not None:  # None: this steering does not decode as plain adds
                out += lm.tokenizer.batch_decode(new, skip_special_tokens=True)
                continue
        # one reduction per step over the logits: never argmax or sample NaN (checked before the others)
        guard = FiniteLogits(start, len(chunk))
        kwargs["logits_processor"] = LogitsProcessorList([guard, *(generate_kwargs.get("logits_processor") or ())])
        with steer_rows(lm, rows[start : start + step], prompt_length=mask.sum(-1)), torch.inference_mode():
            seqs = hf_generate(lm, input_ids, mask, max_new_tokens=max_new_tokens, **kwargs)
        new = seqs[:, input_ids.shape[1] :]
        out += lm.tokenizer.batch_decode(new, skip_special_tokens=True)
    return out
