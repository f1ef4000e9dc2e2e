"""Sentiment scorers: turn texts into negative / neutral / positive probabilities.

* :class:`VaderScorer` (default) — the rule-based VADER analyser (``vaderSentiment``), offline
  and fast.
* :class:`HFScorer` — any Hugging Face text-classification model, e.g.
  ``cardiffnlp/twitter-roberta-base-sentiment-latest`` (labels negative/neutral/positive), the
  classifier used by the original happy/sad steering experiment; a hub id needs internet access,
  a local folder does not.
* anything else with a ``name`` and ``score(texts)`` (the :class:`Scorer` protocol).

Example:
    >>> get_scorer("vader").score(["What a lovely day!"])[0].label
    'positive'
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .. import hf_env
from ..errors import SteeringError

__all__ = [
    "LABELS",
    "NEUTRAL_SCORE",
    "HFScorer",
    "Scorer",
    "ScorerLoadError",
    "SentimentScore",
    "VaderScorer",
    "get_scorer",
    "label_classes",
    "vader_label",
]

LABELS = ("negative", "neutral", "positive")
VADER_THRESHOLD = 0.05


class ScorerLoadError(SteeringError):
    """A sentiment scorer (classifier model or VADER) could not be loaded."""


@dataclass(frozen=True)
class SentimentScore:
    """The sentiment of one text.

    Attributes:
        negative, neutral, positive: class probabilities (they sum to 1).
        compound: one number in ``[-1, 1]`` (negative to positive).
        label: ``"negative"``, ``"neutral"`` or ``"positive"``.
    """

    negative: float
    neutral: float
    positive: float
    compound: float
    label: str


NEUTRAL_SCORE = SentimentScore(0.0, 1.0, 0.0, 0.0, "neutral")


@runtime_checkable
class Scorer(Protocol):
    """Anything with a ``name`` and ``score(texts) -> list[SentimentScore]``.

    Example:
        >>> class Always:
        ...     name = "always-neutral"
        ...     def score(self, texts): return [NEUTRAL_SCORE for _ in texts]
        >>> isinstance(Always(), Scorer)
        True
    """

    name: str

    def score(self, texts: Sequence[str]) -> list[SentimentScore]:
        """One :class:`SentimentScore` per text."""
        ...


def vader_label(compound: float, threshold: float = VADER_THRESHOLD) -> str:
    """VADER's standard label of a compound score: ``>= 0.05`` positive, ``<= -0.05`` negative.

    Example:
        >>> vader_label(0.3), vader_label(0.0), vader_label(-0.05)
        ('positive', 'neutral', 'negative')
    """
    if compound >= threshold:
        return "positive"
    if compound <= -threshold:
        return "negative"
    return "neutral"


class VaderScorer:
    """VADER (``vaderSentiment``): class probabilities from its neg/neu/pos proportions,
    label from its compound score with the standard ±0.05 thresholds.

    Empty texts score as fully neutral.

    Example:
        >>> VaderScorer().score(["I love this, wonderful!"])[0].label
        'positive'
    """

    name = "vader"

    def __init__(self) -> None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as exc:
            raise ScorerLoadError(
                "the default sentiment scorer needs vaderSentiment: pip install vaderSentiment "
                "(or pass scorer='<classifier folder>' to use a Hugging Face model)"
            ) from exc
        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, texts: Sequence[str]) -> list[SentimentScore]:
        """Score each text."""
        out: list[SentimentScore] = []
        for text in texts:
            s = self._analyzer.polarity_scores(text)
            neg, neu, pos = float(s["neg"]), float(s["neu"]), float(s["pos"])
            total = neg + neu + pos
            if total <= 0:
                out.append(NEUTRAL_SCORE)
                continue
            compound = max(-1.0, min(1.0, float(s["compound"])))
            out.append(SentimentScore(neg / total, neu / total, pos / total, compound, vader_label(compound)))
        return out


_GENERIC_LABEL = re.compile(r"(label[_ ]?)?(\d+)")


def label_classes(id2label: Mapping[Any, str]) -> list[str]:
    """Map a classifier's ``config.id2label`` to ``negative``/``neutral``/``positive`` per index.

    Names are matched case-insensitively by prefix (``"negative"``, ``"NEG"``, ``"Neutral"``,
    ``"pos"``); generic names (``"LABEL_0"``, ``"1"``) follow index order: 2 labels are
    negative/positive, 3 labels negative/neutral/positive.

    Raises:
        ScorerLoadError: the labels cannot be mapped.

    Example:
        >>> label_classes({0: "LABEL_0", 1: "LABEL_1"})
        ['negative', 'positive']
        >>> label_classes({0: "Positive", 1: "NEG"})
        ['positive', 'negative']
    """
    n = len(id2label)
    names = [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))).strip().lower() for i in range(n)]
    mapped: list[str] = []
    for name in names:
        cls = next((c for c in LABELS if name.startswith(c[:3])), None)
        if cls is None:
            break
        mapped.append(cls)
    if len(mapped) == n and "negative" in mapped and "positive" in mapped:
        return mapped
    if n in (2, 3) and all(_GENERIC_LABEL.fullmatch(x) for x in names):
        return ["negative", "positive"] if n == 2 else list(LABELS)
    raise ScorerLoadError(
        f"cannot tell which of the classifier's labels {names} are negative/neutral/positive: "
        "use a sentiment model whose id2label names them (e.g. 'negative', 'neutral', 'positive')"
    )


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1 or os.path.isabs(spec)


class HFScorer:
    """A Hugging Face text-classification model as a sentiment scorer.

    Its labels are mapped with :func:`label_classes`; class probabilities are the softmax summed
    per class, ``compound = p(positive) − p(negative)`` and the label is the most probable class.
    Empty texts score as fully neutral. Texts longer than the model's limit are truncated.

    Args:
        model_id_or_folder: a local checkpoint folder, or a hub id such as
            ``"cardiffnlp/twitter-roberta-base-sentiment-latest"`` (needs internet access or a
            filled Hugging Face cache).
        device: where to run it (default: CUDA if available, else CPU).
        batch_size: texts per forward pass.

    Raises:
        ScorerLoadError: the model or tokenizer cannot be loaded, or its labels are not
            sentiment classes.

    Example:
        >>> scorer = HFScorer("models/twitter-roberta-base-sentiment-latest")  # doctest: +SKIP
        >>> scorer.score(["What a lovely day"])[0].label  # doctest: +SKIP
        'positive'
    """

    def __init__(self, model_id_or_folder: str | os.PathLike[str], device: str | None = None, batch_size: int = 32):
        import torch

        spec = os.fspath(model_id_or_folder)
        self.name = spec
        self.batch_size = max(1, int(batch_size))
        path = Path(spec).expanduser()
        if path.exists():
            if not (path / "config.json").is_file():
                raise ScorerLoadError(
                    f"{spec} holds no config.json: give a Hugging Face text-classification checkpoint folder"
                )
            source = str(path)
        elif _looks_like_path(spec):
            raise ScorerLoadError(
                f"sentiment model folder not found: {spec}. Give an existing local checkpoint folder "
                "(save_pretrained output) or a hub id (hub ids need internet access)"
            )
        else:
            source = spec
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            with hf_env.quiet():
                tokenizer = AutoTokenizer.from_pretrained(source)
                model = AutoModelForSequenceClassification.from_pretrained(source)
        except Exception as exc:  # transformers raises many kinds (OSError, ValueError, HF errors)
            reason = str(exc).strip().rstrip(".")
            raise ScorerLoadError(
                f"could not load the sentiment classifier {spec!r}: {reason}. Hub ids need internet "
                "access (or a filled Hugging Face cache); offline, download the model once and pass "
                "its local folder, or use the default scorer 'vader'"
            ) from exc
        self.classes = label_classes(dict(model.config.id2label))
        config_pad = model.config.pad_token_id
        if tokenizer.pad_token_id is None:
            if config_pad is not None:
                tokenizer.pad_token = tokenizer.convert_ids_to_tokens(int(config_pad))
            else:
                tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if config_pad is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        elif tokenizer.pad_token_id != config_pad:
            # sequence classifiers find a row's last token by config.pad_token_id: pad with it
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(int(config_pad))
        limit = getattr(tokenizer, "model_max_length", 512)
        self.max_length = int(limit) if isinstance(limit, int) and 0 < limit <= 4096 else 512
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        index = {c: [i for i, x in enumerate(self.classes) if x == c] for c in LABELS}
        self._index = index

    def score(self, texts: Sequence[str]) -> list[SentimentScore]:
        """Score each text."""
        import torch

        out: list[SentimentScore | None] = [NEUTRAL_SCORE if not t.strip() else None for t in texts]
        todo = [i for i, s in enumerate(out) if s is None]
        for start in range(0, len(todo), self.batch_size):
            rows = todo[start : start + self.batch_size]
            enc = self.tokenizer(
                [texts[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                probs = torch.softmax(self.model(**enc).logits.float(), dim=-1).cpu()
            for r, i in enumerate(rows):
                p = {c: float(probs[r, idx].sum()) if idx else 0.0 for c, idx in self._index.items()}
                total = sum(p.values()) or 1.0
                neg, neu, pos = (p[c] / total for c in LABELS)
                label = max(zip((neg, neu, pos), LABELS))[1]
                out[i] = SentimentScore(neg, neu, pos, max(-1.0, min(1.0, pos - neg)), label)
        return [s if s is not None else NEUTRAL_SCORE for s in out]


def get_scorer(spec: str | os.PathLike[str] | Scorer | None = None) -> Scorer:
    """A scorer from a spec: ``None``/``"vader"`` → :class:`VaderScorer`, a :class:`Scorer` is
    returned as is, anything else is a Hugging Face classifier (:class:`HFScorer`).

    Example:
        >>> get_scorer().name
        'vader'
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "vader"):
        return VaderScorer()
    if isinstance(spec, (str, os.PathLike)):
        return HFScorer(spec)
    if isinstance(spec, Scorer):
        return spec
    raise ScorerLoadError(
        f"cannot use a {type(spec).__name__} as a sentiment scorer: pass 'vader', a classifier "
        "folder or hub id, or an object with name and score(texts)"
    )
