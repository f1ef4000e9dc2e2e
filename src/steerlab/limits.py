"""One place for every bound on input: :class:`Limits`, made from the model and the settings.

Every surface (library readers, the CLI, the server, uploads, checkpoints) checks what it is
given against one :class:`Limits` object *before* any work starts, and refuses what is over a
bound with a :class:`LimitError` that names the limit (its ``limit`` attribute is the field name,
e.g. ``"max_text_chars"``). The CLI turns it into exit code 2, the server into a 4xx answer.

The model fixes what no setting may exceed: its layers, its width, its context, its vocabulary
and the largest number its dtype holds. The settings add caps for what can grow without bound:
bytes of a body or an archive, members and header sizes of an archive, items and string sizes
of a GGUF file, characters of one text, tokens of one text to score.

Example:
    >>> lim = Limits(n_layers=30, d_model=576, context_length=8192)
    >>> lim.layer_list([8, 9, 10], "layers")
    [8, 9, 10]
    >>> lim.layer_list([3, 3], "layers")
    Traceback (most recent call last):
    ...
    steerlab.limits.LimitError: layers: layer 3 is given twice (a set of layers: name each once)
    >>> lim.check_tokens(9000, "pair 3 (positive)")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    steerlab.limits.LimitError: pair 3 (positive) has 9000 tokens: more than the model's context of ...
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from .errors import SteeringError

MAX_VECTOR_VALUE = 1e6
"""The largest ``|value|`` a steering vector may hold in a float32 model. Residual streams of the
models we know stay orders of magnitude below it; a vector beyond it is a broken file, and at
coefficient 16 values near float32's end (3.4e38) overflow the forward pass to inf/NaN."""


class LimitError(SteeringError):
    """Input over one of the :class:`Limits` (or otherwise unusable at the edge).

    Attributes:
        limit: the name of the limit (a :class:`Limits` field), or ``None`` for malformed input.
        status: the HTTP status the server answers it with (400, or 413 for byte limits).
    """

    def __init__(self, message: str, limit: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.limit = limit
        self.status = status


@dataclass(frozen=True)
class Limits:
    """The bounds one model and one set of settings put on input.

    Attributes:
        n_layers: decoder blocks of the model (``None``: no model yet, layers are not checked).
        d_model: residual width of the model.
        context_length: the most tokens the model attends over (``None``: unknown).
        vocab_size: the model's vocabulary (token ids must be below it).
        max_value: the largest ``|value|`` a vector may hold (float32 models: :data:`MAX_VECTOR_VALUE`;
            narrower dtypes: their largest number over ``max_coefficient``).
        max_coefficient: the largest ``|coefficient|`` a request may use.
        max_text_chars: characters of one text (a prompt, a side of a pair, an opening, a field),
            checked before it is tokenised.
        max_prompt_tokens: tokens of one generation prompt (never more than the context).
        max_new_tokens: tokens one generation may ask for.
        max_score_tokens: tokens of one text scored by the model (prompt + continuation).
        max_upload_bytes: bytes of one uploaded file.
        max_request_bytes: bytes of one request body (other than uploads).
        max_archive_members: entries of one uploaded archive.
        max_unpacked_bytes: bytes an uploaded archive may unpack to.
        max_header_bytes: bytes of one archive header record (a tar GNU long name or a pax header).
        max_gguf_items: key-value pairs, tensors, or items of one metadata array in a GGUF file.
        max_gguf_string_bytes: bytes of one string in a GGUF file.
        max_steering_entries: vectors one request (or one steering) may compose.
        max_choices: completions one request may ask for (prompts × ``n``).
        max_record_chars: characters of one record of a streamed data file (a JSONL line), checked
            while it is read, before it is parsed.
        max_file_bytes: bytes of a data file that is parsed whole (a ``.json`` list, a ``.txt`` list
            of texts); larger data is streamed (``.jsonl``, ``.csv``, ``.parquet``).
    """

    n_layers: int | None = None
    d_model: int | None = None
    context_length: int | None = None
    vocab_size: int | None = None
    max_value: float = MAX_VECTOR_VALUE
    max_coefficient: float = 16.0
    max_text_chars: int = 100_000
    max_prompt_tokens: int = 2048
    max_new_tokens: int = 256
    max_score_tokens: int = 2304
    max_upload_bytes: int = 16 * 1024 * 1024
    max_request_bytes: int = 1024 * 1024
    max_archive_members: int = 16
    max_unpacked_bytes: int = 64 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    max_gguf_items: int = 4096
    max_gguf_string_bytes: int = 1024 * 1024
    max_steering_entries: int = 8
    max_choices: int = 8
    max_record_chars: int = 4 * 1024 * 1024
    max_file_bytes: int = 512 * 1024 * 1024

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"Limits.{f.name} must be a positive number (got {value!r})")
        if self.context_length is not None:
            object.__setattr__(self, "max_prompt_tokens", min(self.max_prompt_tokens, self.context_length))
            object.__setattr__(self, "max_score_tokens", min(self.max_score_tokens, self.context_length))

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_model(cls, lm: Any, **settings: Any) -> Limits:
        """The limits of ``lm`` (an :class:`~steerlab.models.load.LM`) with ``settings`` on top.

        ``settings`` are :class:`Limits` fields; unknown names are ignored, so a settings object's
        ``__dict__`` can be passed whole.

        Example:
            >>> Limits.for_model(lm, max_coefficient=8.0).n_layers  # doctest: +SKIP
            30
        """
        known = {f.name for f in fields(cls)}
        given = {k: v for k, v in settings.items() if k in known and v is not None}
        coefficient = float(given.get("max_coefficient", cls.max_coefficient))
        dtype = _dtype(lm)
        max_value = float(given.pop("max_value", MAX_VECTOR_VALUE))
        if dtype is not None and dtype.is_floating_point and dtype != torch.float64:
            max_value = min(max_value, torch.finfo(dtype).max / max(coefficient, 1.0) / 4)
        vocab = getattr(getattr(lm, "tokenizer", None), "__len__", None)
        if lm.context_length is not None:  # a long-context model takes long texts: ~16 characters a token at most
            given.setdefault("max_text_chars", max(cls.max_text_chars, 16 * int(lm.context_length)))
        return cls(
            n_layers=int(lm.n_layers),
            d_model=int(lm.d_model),
            context_length=lm.context_length,
            vocab_size=int(vocab()) if callable(vocab) else None,
            max_value=max_value,
            **given,
        )

    def with_settings(self, **settings: Any) -> Limits:
        """A copy with some fields changed (unknown names ignored)."""
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in settings.items() if k in known and v is not None})

    # ------------------------------------------------------------------ layers
    def layer_list(self, layers: Iterable[Any], where: str, *, negative: bool = False) -> list[int]:
        """``layers`` as a list of distinct in-range layer indices, in the order given.

        Args:
            layers: integers (``bool`` and other types are refused).
            where: what names the list in a message (``"--layers"``, ``"steering[0].layers"``).
            negative: count negative indices from the end (``-1``: the last block); the resolved
                index is returned, so callers record what was used.

        Raises:
            LimitError: an empty list, a non-integer, a duplicate, or a layer outside the model.
        """
        out: list[int] = []
        seen: set[int] = set()
        for item in layers:
            if isinstance(item, bool) or not isinstance(item, int):
                raise LimitError(f"{where}: {item!r} is not a layer index (an integer)")
            idx = item
            if self.n_layers is not None:
                if negative and -self.n_layers <= item < 0:
                    idx = item + self.n_layers
                if not 0 <= idx < self.n_layers:
                    raise LimitError(
                        f"{where}: layer {item} is outside the model: it has {self.n_layers} blocks "
                        f"(layers 0..{self.n_layers - 1})",
                        "n_layers",
                    )
            elif idx < 0:
                raise LimitError(f"{where}: layer {item} is negative; layers count from 0")
            if idx in seen:
                raise LimitError(f"{where}: layer {idx} is given twice (a set of layers: name each once)")
            seen.add(idx)
            out.append(idx)
            if len(out) > (self.n_layers or 4096):
                raise LimitError(f"{where}: more layers than the model has", "n_layers")
        if not out:
            raise LimitError(f"{where}: no layers given")
        return out

    # ------------------------------------------------------------------ texts and tokens
    def check_text(self, text: Any, where: str) -> str:
        """``text`` if it is a string of valid Unicode within ``max_text_chars``.

        Raises:
            LimitError: not a string, a lone surrogate (``"\\ud800"``), or too long.

        Example:
            >>> Limits(max_text_chars=5).check_text("hello!", "pair 2 (positive)")
            Traceback (most recent call last):
            ...
            steerlab.limits.LimitError: pair 2 (positive) has 6 characters: more than the limit of 5 (max_text_chars)
        """
        if not isinstance(text, str):
            raise LimitError(f"{where} must be text, not {_kind(text)}")
        if len(text) > self.max_text_chars:
            raise LimitError(
                f"{where} has {len(text)} characters: more than the limit of {self.max_text_chars} (max_text_chars)",
                "max_text_chars",
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise LimitError(f"{where} is not valid Unicode text (it holds a lone surrogate such as \\ud800)") from None
        return text

    def check_tokens(self, n: int, where: str, limit: str = "context_length") -> None:
        """Refuse a text of ``n`` tokens over the context (or over ``limit``, another token field)."""
        cap = self.context_length if limit == "context_length" else getattr(self, limit)
        if cap is None:
            return
        if n > cap:
            what = f"the model's context of {cap} tokens" if limit == "context_length" else f"the limit of {cap} tokens"
            raise LimitError(f"{where} has {n} tokens: more than {what} ({limit})", limit)

    def check_generation(self, prompt_tokens: int, new_tokens: int, where: str = "the prompt") -> None:
        """Refuse a prompt over ``max_prompt_tokens``, or a prompt + new tokens over the context."""
        self.check_tokens(prompt_tokens, where, "max_prompt_tokens")
        if new_tokens > self.max_new_tokens:
            raise LimitError(
                f"{new_tokens} new tokens is over the limit of {self.max_new_tokens} (max_new_tokens)", "max_new_tokens"
            )
        ctx = self.context_length
        if ctx is not None and prompt_tokens + new_tokens > ctx:
            raise LimitError(
                f"{where} ({prompt_tokens} tokens) + {new_tokens} new tokens exceed the model's context "
                f"of {ctx} tokens (context_length)",
                "context_length",
            )

    # ------------------------------------------------------------------ numbers and vectors
    def check_coefficient(self, value: Any, where: str) -> float:
        """``value`` as a float if it is a finite number within ``±max_coefficient``."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise LimitError(f"{where} must be a finite number (got {value!r})")
        if abs(value) > self.max_coefficient:
            raise LimitError(
                f"{where}={value:g} is out of range: |coefficient| must be <= {self.max_coefficient:g} "
                "(max_coefficient)",
                "max_coefficient",
            )
        return float(value)

    @staticmethod
    def check_kl_cap(value: Any, where: str = "kl_cap") -> float | None:
        """A per-token KL cap (nats) as a float: a number above 0; ``None`` or ``inf`` mean no cap
        (returned as ``None``, so an infinite cap is exactly the uncapped path).

        Example:
            >>> Limits.check_kl_cap(0.5), Limits.check_kl_cap(float("inf")), Limits.check_kl_cap(None)
            (0.5, None, None)
        """
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not value > 0:
            raise LimitError(f"{where} must be a number above 0 (nats; inf or none for no cap), got {value!r}")
        return None if math.isinf(value) else float(value)

    def check_directions(self, directions: Mapping[int, torch.Tensor], where: str) -> None:
        """Refuse a vector whose values are not finite, whose norm overflows, or beyond ``max_value``.

        Example:
            >>> Limits().check_directions({3: torch.full((4,), 1e30)}, "the upload")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            steerlab.limits.LimitError: the upload: layer 3 holds values up to 1e+30, beyond the limit of 1e+06 ...
        """
        for layer, t in directions.items():
            t = torch.as_tensor(t)
            if not torch.isfinite(t).all():
                raise LimitError(f"{where}: layer {layer} holds NaN or inf values", "max_value")
            if t.numel() == 0:
                continue
            peak = float(t.detach().abs().max().double())
            if peak > self.max_value:
                raise LimitError(
                    f"{where}: layer {layer} holds values up to {peak:.3g}, beyond the limit of "
                    f"{self.max_value:.3g} (max_value): a broken vector",
                    "max_value",
                )
            if not math.isfinite(float(t.detach().float().norm())):
                raise LimitError(f"{where}: layer {layer}'s norm overflows float32", "max_value")

    def check_bytes(self, n: int, limit: str, what: str) -> None:
        """Refuse ``n`` bytes over the byte limit named ``limit`` (HTTP 413)."""
        cap = int(getattr(self, limit))
        if n > cap:
            raise LimitError(f"{what} is larger than the limit of {cap} bytes ({limit})", limit, status=413)

    def check_count(self, n: int, limit: str, what: str) -> None:
        """Refuse a count ``n`` over the limit named ``limit``."""
        cap = int(getattr(self, limit))
        if n > cap:
            raise LimitError(f"{what}: {n} is more than the limit of {cap} ({limit})", limit)

    def public(self) -> dict[str, Any]:
        """Every limit, JSON-ready (``GET /v1/models`` shows them)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _dtype(lm: Any) -> torch.dtype | None:
    try:
        return next(lm.model.parameters()).dtype
    except (AttributeError, StopIteration, TypeError):
        return None


def _kind(value: Any) -> str:
    """How a message names the type of a value read from JSON, CSV or Parquet."""
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object", bytes: "bytes"}
    for t, name in names.items():
        if type(value) is t:
            return name
    return type(value).__name__
