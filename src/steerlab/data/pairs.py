"""Contrast data: pairs of texts that differ in the behaviour to steer.

A :class:`ContrastPair` holds a positive and a negative text (plain strings or
:class:`ChatText` turns rendered with the model's chat template at capture time) and *where* to
read the activation (:data:`Read`). Builders cover the papers' data:

* :func:`pairs_from_lists` (two lists) and :func:`pair_from_record` (one record of a file),
* :func:`caa_pair` / :func:`caa_pairs` for CAA A/B items (read at the answer letter),
* :func:`persona_pairs` for RepE-style persona prompts over sentence openings.

Files and datasets of pairs are read in :mod:`steerlab.data.sources` (``load_pairs``,
``open_pairs``), CAA files in :mod:`steerlab.data.ab` (``load_caa``).

Example:
    >>> pairs = persona_pairs("happy", "sad", ["That game", "I can see"])
    >>> pairs[0].positive.user
    "Act as if you're extremely happy."
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..errors import DatasetError
from ..limits import Limits
from .ab import Record, ab_letters
from .readers import DEFAULT_LIMITS, text_field

Read = str | int | tuple[int, int]
"""Where to read a text's activation.

* ``"last"`` — the last real token (default),
* ``"mean"`` — the mean over all real tokens,
* ``"all"`` — every token (used by ActAdd),
* ``"answer"`` — the answer letter of the last ``(X`` in the text (CAA),
* an ``int`` — a token index (negative counts from the end),
* ``(start, end)`` — mean over that token slice (negative indices count from the end).
"""

READ_KEYWORDS = ("last", "mean", "all", "answer")


class ChatModel(Protocol):
    """What rendering a :class:`ChatText` needs of a model: :meth:`steerlab.models.load.LM.chat`."""

    def chat(self, user: str, assistant: str = "", system: str | None = None) -> str:
        """The model text of a user turn and the start of the assistant's reply."""
        ...


@dataclass(frozen=True)
class ChatText:
    """One user turn plus the beginning of the assistant's reply.

    Rendered with :meth:`steerlab.models.load.LM.chat`: the model's chat template when it has one, else
    ``"{user}\n{assistant}"`` — the same text evaluation prompts use.
    """

    user: str
    assistant: str = ""
    system: str | None = None

    def render(self, lm: ChatModel) -> str:
        """Model text for ``lm`` (an :class:`~steerlab.models.load.LM`)."""
        return str(lm.chat(self.user, self.assistant, self.system))


Text = str | ChatText


def render(text: Text, lm: ChatModel) -> str:
    """Plain text of a :data:`Text` for ``lm``."""
    return text.render(lm) if isinstance(text, ChatText) else text


def validate_read(read: Read) -> Read:
    """Return ``read`` if it is a valid :data:`Read`, else raise :class:`DatasetError`."""
    if isinstance(read, str) and read in READ_KEYWORDS:
        return read
    if isinstance(read, int) and not isinstance(read, bool):
        return read
    if isinstance(read, tuple) and len(read) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in read):
        return read
    raise DatasetError(
        f"read={read!r} is not a read position: use 'last', 'mean', 'all', 'answer', a token "
        "index or a (start, end) token slice"
    )


@dataclass(frozen=True)
class ContrastPair:
    """A positive and a negative example of a behaviour, and where to read them."""

    positive: Text
    negative: Text
    read: Read = "last"

    def __post_init__(self) -> None:
        for side in (self.positive, self.negative):
            if not isinstance(side, (str, ChatText)):
                raise DatasetError(f"a ContrastPair side must be a str or ChatText, got {type(side).__name__}")
        validate_read(self.read)


class DataHash:
    """The running hash behind :func:`data_hash`, fed one pair at a time (for streamed data).

    Example:
        >>> h = DataHash()
        >>> h.update(ContrastPair("Love", "Hate"))
        >>> h.hexdigest() == data_hash([ContrastPair("Love", "Hate")])
        True
    """

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, pair: ContrastPair) -> None:
        """Add one pair."""
        self._h.update(json.dumps([repr(pair.positive), repr(pair.negative), repr(pair.read)]).encode())

    def hexdigest(self) -> str:
        """The short hash of the pairs added so far."""
        return self._h.hexdigest()[:16]


def data_hash(pairs: Iterable[ContrastPair]) -> str:
    """A short hash identifying the contrast data a vector was made from."""
    h = DataHash()
    for p in pairs:
        h.update(p)
    return h.hexdigest()


def check_pair(pair: object, where: str, limits: Limits | None = None) -> ContrastPair:
    """``pair`` if it is a :class:`ContrastPair` whose two sides are non-empty, different, valid
    text within ``limits.max_text_chars``, else an error naming ``where`` (e.g. ``"pair 3"``).

    Raises:
        DatasetError: not a pair, an empty side, or the same text on both sides (the pair says
            nothing: its difference, and a vector made of such pairs, is zero).
        LimitError: a side longer than ``max_text_chars`` or holding a lone surrogate.
    """
    if not isinstance(pair, ContrastPair):
        raise DatasetError(f"{where} is a {type(pair).__name__}, not a ContrastPair")
    limits = limits or DEFAULT_LIMITS
    for side, text in (("positive", pair.positive), ("negative", pair.negative)):
        parts = (text,) if isinstance(text, str) else (text.user, text.assistant, text.system or "")
        for part in parts:
            limits.check_text(part, f"{where} ({side})")
    if not str(render_plain(pair.positive)).strip() or not str(render_plain(pair.negative)).strip():
        raise DatasetError(f"{where} has an empty positive or negative text: both sides are needed")
    if pair.positive == pair.negative:
        raise DatasetError(
            f"{where} has the same positive and negative text ({_short(pair.positive)}): a pair must "
            "differ in the behaviour to steer; fix or drop it"
        )
    return pair


def _short(text: Text) -> str:
    plain = render_plain(text)
    return repr(plain if len(plain) <= 60 else plain[:57] + "...")


def check_pairs(pairs: Sequence[ContrastPair], limits: Limits | None = None) -> list[ContrastPair]:
    """Raise a clear :class:`DatasetError` if ``pairs`` is empty, one-sided or mistyped
    (each pair: :func:`check_pair`)."""
    pairs = list(pairs)
    if not pairs:
        raise DatasetError("no contrast pairs given: pass at least one ContrastPair")
    for i, p in enumerate(pairs):
        check_pair(p, f"item {i}" if not isinstance(p, ContrastPair) else f"pair {i}", limits)
    return pairs


def render_plain(text: Text) -> str:
    """Text of a side without any model (for validation and hashing)."""
    return text if isinstance(text, str) else f"{text.user} {text.assistant}"


def pair_texts(lm: ChatModel, pairs: Sequence[ContrastPair]) -> tuple[list[str], list[Read]]:
    """Rendered texts and read positions of ``pairs``, interleaved ``[pos0, neg0, pos1, neg1, ...]``.

    Activations captured from them keep the order: positives are rows ``[0::2]``, negatives
    ``[1::2]``.

    Example:
        >>> pair_texts(None, pairs_from_lists(["Love"], ["Hate"]))
        (['Love', 'Hate'], ['last', 'last'])
    """
    texts: list[str] = []
    reads: list[Read] = []
    for p in pairs:
        texts += [render(p.positive, lm), render(p.negative, lm)]
        reads += [p.read, p.read]
    return texts, reads


def pairs_from_lists(positives: Sequence[Text], negatives: Sequence[Text], read: Read = "last") -> list[ContrastPair]:
    """Zip two equally long lists into pairs.

    Example:
        >>> pairs_from_lists(["Love"], ["Hate"])[0].negative
        'Hate'
    """
    if len(positives) != len(negatives):
        raise DatasetError(f"{len(positives)} positive but {len(negatives)} negative texts: the lists must pair up")
    return check_pairs([ContrastPair(p, n, read) for p, n in zip(positives, negatives)])


def pair_from_record(rec: object, where: str, read: Read = "last", limits: Limits | None = None) -> ContrastPair:
    """One record of a pairs file as a pair: ``positive`` and ``negative`` text fields (optionally
    ``read``), or a CAA A/B item (:func:`caa_pair`); its text fields must hold text
    (:func:`~steerlab.data.readers.text_field`).

    Example:
        >>> pair_from_record({"positive": "Love", "negative": "Hate", "read": [0, 2]}, "row 1").read
        (0, 2)
    """
    if not isinstance(rec, Mapping):
        raise DatasetError(f"{where}: expected an object with 'positive' and 'negative' keys")
    if "answer_matching_behavior" in rec:
        return caa_pair(rec, where, limits)
    if "positive" in rec and "negative" in rec:
        return ContrastPair(
            text_field(rec, "positive", where, limits),
            text_field(rec, "negative", where, limits),
            _read_of(rec, where, read),
        )
    raise DatasetError(
        f"{where}: needs 'positive' and 'negative' keys (or CAA 'question' / "
        "'answer_matching_behavior' / 'answer_not_matching_behavior')"
    )


def _read_of(rec: Record, where: str, default: Read) -> Read:
    """A record's ``read`` field (a JSON ``[start, end]`` list is a slice), else ``default``."""
    read = rec.get("read", default)
    if isinstance(read, list) and len(read) == 2:
        read = tuple(read)
    try:
        return validate_read(read)
    except DatasetError as exc:
        raise DatasetError(f"{where}: field 'read': {exc}") from None


def caa_pair(rec: Record, where: str = "item", limits: Limits | None = None) -> ContrastPair:
    """One CAA A/B item as a pair read at the answer letter.

    The question is the user turn, the answer ``"(A)"`` starts the assistant turn.
    """
    for key in ("question", "answer_matching_behavior", "answer_not_matching_behavior"):
        if key not in rec:
            raise DatasetError(f"{where}: CAA item lacks {key!r}")
    question = text_field(rec, "question", where, limits)
    matching = text_field(rec, "answer_matching_behavior", where, limits)
    not_matching = text_field(rec, "answer_not_matching_behavior", where, limits)
    match, other = ab_letters(question, matching, not_matching, where)
    return ContrastPair(ChatText(question, f"({match})"), ChatText(question, f"({other})"), "answer")


def caa_pairs(items: Iterable[Record]) -> list[ContrastPair]:
    """CAA A/B items (dicts) as contrast pairs read at the answer letter."""
    return check_pairs([caa_pair(rec, f"item {i}") for i, rec in enumerate(items)])


PERSONA_TEMPLATE = "Act as if you're extremely {persona}."


def persona_pairs(
    positive: str,
    negative: str,
    openings: Sequence[str],
    template: str = PERSONA_TEMPLATE,
) -> list[ContrastPair]:
    """RepE-style persona pairs: the same sentence opening under two persona instructions.

    Each pair is ``ChatText(template.format(persona=...), opening)``, read at the last token; the
    chat template is applied when the model has one.

    Example:
        >>> p = persona_pairs("happy", "sad", ["That game"])[0]
        >>> (p.positive.assistant, p.negative.user)
        ('That game', "Act as if you're extremely sad.")
    """
    if "{persona}" not in template:
        raise DatasetError("the persona template must contain '{persona}'")
    openings = [o for i, o in enumerate(openings) if DEFAULT_LIMITS.check_text(o, f"opening {i}").strip()]
    DEFAULT_LIMITS.check_text(positive, "the positive persona")
    DEFAULT_LIMITS.check_text(negative, "the negative persona")
    if not openings:
        raise DatasetError("no non-empty sentence openings given for persona_pairs")
    return check_pairs(
        [
            ContrastPair(
                ChatText(template.format(persona=positive), o),
                ChatText(template.format(persona=negative), o),
            )
            for o in openings
        ]
    )
