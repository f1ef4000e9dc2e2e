"""Request and response bodies of the OpenAI-compatible API: requests as pydantic v2 models (plus
steerlab's ``steering`` field), responses built by :class:`Reply` and :func:`error_body`.

Unknown fields are rejected (a misspelt ``steering`` must not silently serve the plain model);
OpenAI fields steerlab does not implement are accepted only at their neutral value. Types are
strict (pydantic's strict mode): a string is a string, an integer an integer, a boolean
``true``/``false`` — ``"4"``, ``4.0`` or ``1`` are refused where they would be coerced and hide
bad input. Bounds that depend on the model or the settings (layers, coefficients, token and text
sizes) are checked against the server's :class:`~steerlab.limits.Limits` when the request is
built (:mod:`steerlab.serve.generation`). Every value
that could break a batch is refused here, at the edge, with a 400 for that request alone: a
``temperature`` too small to divide by, a ``seed`` outside int64, a ``positions`` bound beyond
:data:`MAX_POSITION`, text that is not valid Unicode (a lone surrogate such as ``"\\ud800"``).

Example:
    >>> req = CompletionRequest.model_validate(
    ...     {"model": "default", "prompt": "Once upon a time", "max_tokens": 8,
    ...      "steering": [{"vector": "happy", "coefficient": 4.0, "positions": [0, 4]}]})
    >>> req.steering[0].positions
    (0, 4)
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:  # the engine's events; no import of torch for the request models
    from .jobs import Done

MIN_TEMPERATURE = 0.01
"""The smallest sampling temperature (as vLLM's floor); 0 means greedy, values in between are
refused: dividing logits by them overflows to inf/NaN and would fail the whole batch."""
SEED_RANGE = (-(2**63), 2**63 - 1)
"""``seed`` must fit int64 (what ``torch.Generator.manual_seed`` takes, ``+ n - 1`` included)."""
MAX_POSITION = 2**31 - 1
"""The largest token index a ``positions`` window may name."""

Position = Annotated[int, Field(ge=0, le=MAX_POSITION)]


def _bad_text(value: Any) -> str | None:
    """Where ``value`` (parsed JSON) holds a string that is not valid Unicode, e.g. ``prompt[1]``."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return where or "the request"
        elif isinstance(item, dict):
            for key, sub in item.items():
                name = key if isinstance(key, str) else repr(key)
                if _bad_text(name) is not None:
                    return where or "the request"
                stack.append((f"{where}.{name}" if where else name, sub))
        elif isinstance(item, (list, tuple)):
            stack.extend((f"{where}[{i}]", sub) for i, sub in enumerate(item))
    return None


def _check_text(data: Any) -> Any:
    where = _bad_text(data)
    if where is not None:
        raise ValueError(
            f"{where} is not valid Unicode text (it holds a lone surrogate such as \\ud800); send UTF-8 text"
        )
    return data


class SteeringEntry(BaseModel):
    """One vector of the store applied with a coefficient.

    Attributes:
        vector: name of a vector in the store (``GET /v1/vectors``).
        coefficient: multiplier; ``|coefficient|`` is capped by the server's ``max_coefficient``.
        layers: a subset of the vector's layers (default: all of them).
        positions: ``"all"``, ``"prompt"``, ``"generated"`` or a token window ``[start, end]``
            (``end`` may be ``null``: to the end); leave it unset for a token-wise (ActAdd) vector,
            which is added front-aligned at each prompt's first tokens.
        operator: ``"add"`` (default), ``"ablate"``, ``"clamp"``, ``"add_norm_preserving"`` or any
            operator registered with :func:`~steerlab.core.operators.register_operator` (the names of
            :data:`~steerlab.core.operators.OPERATORS` when the request arrives).
        operator_parameters: the operator's own parameters (``{"name": number}``), for an operator
            that declares some (:meth:`~steerlab.core.operators.Operator.parameters`).
        condition: name of a condition in the store (CAST, saved by ``steerlab condition``): the
            vector acts only on rows whose prompt matches it, on their generated tokens
            (``positions`` must be unset or ``"generated"``).
        threshold: overrides the condition's threshold (a cosine similarity in ``[-1, 1]``).
        kl_cap: a per-token cap (nats) on the KL from the unsteered next-token distribution
            (:mod:`steerlab.runtime.kl_cap`). Part of the API's shape; this server's engines decode
            one row per request and cannot run the unsteered shadow rows a cap needs, so a request
            with a cap is refused (400, ``kl_cap_unsupported``): use ``steerlab generate --kl-cap``
            or :func:`steerlab.generate`.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    vector: str = Field(min_length=1, max_length=200)
    coefficient: float = 1.0
    layers: list[int] | None = Field(default=None, max_length=1024)
    positions: Literal["all", "prompt", "generated"] | tuple[Position, Position | None] | None = None
    operator: str = Field(default="add", min_length=1, max_length=100)
    operator_parameters: dict[str, float] | None = Field(default=None, max_length=32)
    condition: str | None = Field(default=None, min_length=1, max_length=200)
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0)
    kl_cap: float | None = None

    @model_validator(mode="after")
    def _threshold_needs_condition(self) -> SteeringEntry:
        if self.threshold is not None and self.condition is None:
            raise ValueError("threshold goes with condition: name a condition of the store")
        return self

    @field_validator("operator")
    @classmethod
    def _registered(cls, value: str) -> str:
        from ..core.operators import OPERATORS  # the registry as it is now (torch only when a request comes)

        if value not in OPERATORS:
            raise ValueError(f"operator {value!r} is not registered: use one of {', '.join(OPERATORS)}")
        return value

    @field_validator("positions", mode="before")
    @classmethod
    def _window(cls, value: Any) -> Any:
        if value == "actadd":
            raise ValueError(
                "positions='actadd' is not a position: a token-wise (ActAdd) vector is added "
                "front-aligned at each prompt's first tokens by itself; leave positions unset"
            )
        if isinstance(value, (list, tuple)):
            ok = len(value) == 2 and all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in value)
            if not ok or value[0] is None:
                raise ValueError("a positions window is [start, end]: two integers (end may be null)")
            if any(v is not None and not 0 <= v <= MAX_POSITION for v in value):
                raise ValueError(f"positions window bounds must be between 0 and {MAX_POSITION}")
            return tuple(value)  # JSON has no tuples; strict mode takes one
        return value

    @field_validator("coefficient")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("coefficient must be a finite number")
        return value


class PerplexityRatioRequest(BaseModel):
    """``POST /v1/cost/perplexity_ratio``: how much less likely the unsteered model finds the
    steered continuation of ``prompt`` than the unsteered one.

    Attributes:
        prompt: the prompt both continuations followed.
        chat: ``prompt`` was sent as one user message (``/v1/chat/completions``): the chat
            template is applied, as for the completion.
        steered: the steered continuation (the completion's text, without the prompt).
        unsteered: the unsteered continuation.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1)
    chat: bool = False
    steered: str
    unsteered: str

    @model_validator(mode="before")
    @classmethod
    def _unicode(cls, data: Any) -> Any:
        return _check_text(data)


class OmittedField(BaseModel):
    """A field of a preset the server leaves out of its ``steering`` entry, and why."""

    model_config = ConfigDict(extra="forbid", strict=True)

    field: str
    reason: str


class PresetSteering(BaseModel):
    """A preset's entry, ready for a request's ``steering`` list (a :class:`SteeringEntry`; no
    ``kl_cap``: the server refuses one, :data:`~steerlab.serve.settings.KL_CAP_SERVED`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    vector: str
    coefficient: float
    operator: str


class Preset(BaseModel):
    """One of ``GET /v1/presets``' presets (:func:`steerlab.serve.presets.describe`): a frontier
    winner of ``steerlab demo``, its store vector (``None`` and ``reason`` when it is not available),
    what the frontier measured for it and the setting's source."""

    model_config = ConfigDict(extra="forbid", strict=True)

    object: Literal["steering_preset"]
    id: str
    direction: Literal["positive", "negative"]
    label: str
    available: bool
    reason: str | None
    vector: str | None
    method: str
    layers: list[int]
    coefficient: float
    operator: str
    kl_cap: float | None
    held_out_effect: float | None
    held_out_cost: float | None
    source: str
    omitted: list[OmittedField]
    steering: PresetSteering | None


class PresetList(BaseModel):
    """``GET /v1/presets``: the presets for the served ``model``; ``data`` is empty and ``reason``
    says why where the setting (from ``source``, chosen on ``made_for``) does not fit it.

    Example:
        >>> PresetList.model_validate({"object": "list", "model": "stories260K", "source": None,
        ...                            "made_for": None, "reason": "turned off", "data": []}).reason
        'turned off'
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    object: Literal["list"]
    model: str
    source: str | None
    made_for: str | None
    reason: str | None
    data: list[Preset]


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with token counts."""

    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool = False


def _neutral(name: str, value: Any, neutral: tuple[Any, ...]) -> None:
    if value not in neutral:
        raise ValueError(f"{name}={value!r} is not supported by steerlab serve")


class _GenerationFields(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="forbid", strict=True)
    NEUTRAL: ClassVar[dict[str, tuple[Any, ...]]] = {
        "presence_penalty": (None, 0, 0.0),
        "frequency_penalty": (None, 0, 0.0),
    }
    """OpenAI fields accepted only at one of these values."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    steering: list[SteeringEntry] | None = None
    ignore_eos: bool = False
    # OpenAI fields accepted at their neutral value only (or ignored: user, metadata, store).
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None

    @property
    def stops(self) -> list[str]:
        """The stop strings as a list."""
        return list(self.stop or [])

    @model_validator(mode="before")
    @classmethod
    def _unicode(cls, data: Any) -> Any:
        return _check_text(data)

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: float | None) -> float | None:
        if value is not None and 0 < value < MIN_TEMPERATURE:
            raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE} (got {value:g})")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else list(value)
        if len(stops) > 4 or any(not s for s in stops) or any(len(s) > 200 for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings of at most 200 characters")
        return stops

    @model_validator(mode="after")
    def _unsupported(self) -> _GenerationFields:
        for name, neutral in self.NEUTRAL.items():
            _neutral(name, getattr(self, name), neutral)
        if self.logit_bias:
            raise ValueError("logit_bias is not supported by steerlab serve")
        return self


class CompletionRequest(_GenerationFields):
    """``POST /v1/completions``: continue ``prompt`` (one string or a list of strings)."""

    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None
    NEUTRAL: ClassVar[dict[str, tuple[Any, ...]]] = {
        **_GenerationFields.NEUTRAL,
        "echo": (False,),
        "logprobs": (None,),
        "best_of": (None, 1),
        "suffix": (None,),
    }

    @model_validator(mode="after")
    def _empty(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt is an empty list")
        return self

    @property
    def prompts(self) -> list[str]:
        """The prompt(s) as a list."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class ContentPart(BaseModel):
    """A text part of a message's ``content`` list (other part types are rejected)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One chat message."""

    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        """The message's text (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_GenerationFields):
    """``POST /v1/chat/completions``: answer ``messages`` through the model's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    NEUTRAL: ClassVar[dict[str, tuple[Any, ...]]] = {
        **_GenerationFields.NEUTRAL,
        "logprobs": (None, False),
        "top_logprobs": (None, 0),
    }

    @model_validator(mode="after")
    def _chat_unsupported(self) -> ChatCompletionRequest:
        if self.tools:
            raise ValueError("tools are not supported by steerlab serve")
        _neutral("tool_choice", self.tool_choice, (None, "none"))
        if self.response_format and self.response_format.get("type") != "text":
            raise ValueError("only response_format={'type': 'text'} is supported by steerlab serve")
        if self.max_tokens is None and self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self


# --------------------------------------------------------------------------- responses
def clean_text(text: str) -> str:
    """``text`` encodable as UTF-8 (lone surrogates become ``\\udXXX`` escapes).

    Example:
        >>> clean_text("ok \\ud800")
        'ok \\\\ud800'
    """
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(
    message: str, type_: str = "invalid_request_error", code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """An error in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}`` (always renderable).

    Example:
        >>> error_body("the prompt is empty", code="empty_prompt", param="prompt")["error"]["param"]
        'prompt'
    """
    return {
        "error": {
            "message": clean_text(message),
            "type": type_,
            "param": None if param is None else clean_text(param),
            "code": code,
        }
    }


def usage(done: Sequence[Done], n: int) -> dict[str, int]:
    """Token counts of a response; each prompt (shared by its ``n`` choices) counts once."""
    prompt = sum({d.index // n: d.prompt_tokens for d in done}.values())
    completion = sum(d.completion_tokens for d in done)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def sse(data: Any) -> str:
    """One server-sent event carrying ``data`` as JSON."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"
"""The last event of every stream."""


@dataclass(frozen=True)
class Reply:
    """The OpenAI-shaped bodies of one (chat) completion response: whole, or as stream chunks.

    Example:
        >>> reply = Reply(chat=True, model="m", id="chatcmpl-1", created=0)
        >>> reply.chunk(0, "Hi", None)["choices"][0]["delta"]
        {'content': 'Hi'}
    """

    chat: bool
    model: str
    include_usage: bool = False
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex)

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "created": self.created, "model": self.model, "system_fingerprint": None, "object": obj}

    def body(self, done: Sequence[Done], n: int) -> dict[str, Any]:
        """The whole response (``stream: false``)."""
        if self.chat:
            choices = [
                {
                    "index": d.index,
                    "message": {"role": "assistant", "content": d.text},
                    "logprobs": None,
                    "finish_reason": d.finish_reason,
                }
                for d in done
            ]
            return {**self._head("chat.completion"), "choices": choices, "usage": usage(done, n)}
        choices = [{"index": d.index, "text": d.text, "logprobs": None, "finish_reason": d.finish_reason} for d in done]
        return {**self._head("text_completion"), "choices": choices, "usage": usage(done, n)}

    @property
    def chunk_object(self) -> str:
        """``object`` of each stream chunk."""
        return "chat.completion.chunk" if self.chat else "text_completion"

    def chunk(self, index: int, text: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
        """One stream chunk: new ``text`` of choice ``index``, or its ``finish`` reason (``role``: the
        chat stream's first chunk of a choice)."""
        if self.chat:
            delta: dict[str, Any] = {} if text is None else {"content": text}
            if role:
                delta = {"role": "assistant", "content": text or ""}
            choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        out = {**self._head(self.chunk_object), "choices": [choice]}
        if self.include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, done: Sequence[Done], n: int) -> dict[str, Any]:
        """The last chunk of a stream with ``stream_options.include_usage``."""
        return {**self._head(self.chunk_object), "choices": [], "usage": usage(done, n)}
