"""Prompting as a method: an instruction placed before what the model continues or answers.

A :class:`Prompt` is the baseline every steering method has to beat: instead of adding a vector,
tell the model what to do. It is either a **prefix** put before the text (``"Here is a cheerful
story. " + opening``) or a **system** turn (chat models; ``lm.chat(question, system=text)``).

The evaluations take it as the ``prompt=`` option, alone (``vector=None``, coefficient ``0``) or
together with a vector (every coefficient then runs on the prompted text). What a prompt *costs*
is measured against the same reference as steering: the sentiment evaluation scores the
perplexity of a prompted continuation under the unsteered, *unprompted* model given the plain
opening, so a prompt that makes the model write unlikely text pays for it like a vector does.

Example:
    >>> happy = Prompt("Here is a cheerful, joyful and happy story. ", name="cheerful")
    >>> happy.render_text("The dog")
    'Here is a cheerful, joyful and happy story. The dog'
    >>> as_prompt("Be kind. ").label
    'prompt "Be kind."'
    >>> report = sentiment_shift(lm, None, openings, coefficients=[0], prompt=happy)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import SteeringSpecError

__all__ = ["Prompt", "PromptLike", "as_prompt"]

PromptMode = Literal["prefix", "system"]


@dataclass(frozen=True)
class Prompt:
    """An instruction given to the model instead of (or with) a steering vector.

    Attributes:
        text: the instruction. A prefix is put in front of the text exactly as written (end it
            with a space or newline); a system turn is passed to the chat template.
        mode: ``"prefix"`` (before the opening / question) or ``"system"`` (a system turn; the
            evaluation must use the chat template).
        name: a short label for tables and plots (default: the first words of the text).
    """

    text: str
    mode: PromptMode = "prefix"
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise SteeringSpecError("a Prompt needs a non-empty text, e.g. Prompt('Here is a happy story. ')")
        if self.mode not in ("prefix", "system"):
            raise SteeringSpecError(f"Prompt mode {self.mode!r}: use 'prefix' or 'system'")

    @property
    def label(self) -> str:
        """``name`` if given, else the text's first words in quotes."""
        if self.name:
            return self.name
        words = self.text.split()
        short = " ".join(words[:6]) + (" …" if len(words) > 6 else "")
        return f'prompt "{short}"'

    def render_text(self, text: str) -> str:
        """``text`` with the prefix in front (plain continuation).

        Raises:
            SteeringSpecError: a system prompt (plain text has no turns: use ``chat=True``).
        """
        if self.mode == "system":
            raise SteeringSpecError(
                f"{self.label} is a system turn, which plain-text continuation has no place for: "
                "evaluate with chat=True or use mode='prefix'"
            )
        return self.text + text

    def render_chat(self, lm: Any, user: str, assistant: str = "") -> str:
        """One chat turn with the prompt as a prefix of the user turn or as the system turn."""
        if self.mode == "system":
            return str(lm.chat(user, assistant, system=self.text))
        return str(lm.chat(self.text + user, assistant))

    def render(self, lm: Any, text: str, chat: bool) -> str:
        """What the model reads for ``text``: :meth:`render_chat` with ``chat``, else :meth:`render_text`."""
        return self.render_chat(lm, text) if chat else self.render_text(text)

    def describe(self) -> dict[str, str]:
        """``{"text", "mode", "name"}`` for report settings."""
        return {"text": self.text, "mode": self.mode, "name": self.label}


PromptLike = Prompt | str | Mapping[str, Any]


def as_prompt(prompt: PromptLike | None) -> Prompt | None:
    """A :class:`Prompt` from a prompt, a prefix string or a ``{"text", "mode", "name"}`` mapping.

    Example:
        >>> as_prompt({"text": "Be happy.", "mode": "system"}).mode
        'system'
        >>> as_prompt(None) is None
        True
    """
    if prompt is None or isinstance(prompt, Prompt):
        return prompt
    if isinstance(prompt, str):
        return Prompt(prompt)
    if isinstance(prompt, Mapping):
        unknown = set(prompt) - {"text", "mode", "name"}
        if unknown or "text" not in prompt:
            raise SteeringSpecError(f"a prompt mapping has keys text, mode, name (got {sorted(prompt)})")
        return Prompt(str(prompt["text"]), prompt.get("mode", "prefix"), str(prompt.get("name", "")))
    raise SteeringSpecError(f"prompt must be a Prompt, a string or a mapping, not {type(prompt).__name__}")
