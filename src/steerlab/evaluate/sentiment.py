"""Sentiment shift: does a steering vector move the mood of what the model writes?

Each sentence opening is continued greedily once per coefficient (``0`` = the unsteered model),
every continuation is scored by a sentiment :class:`Scorer`, and the result is summarised per
coefficient with bootstrap confidence intervals (:class:`SentimentReport`). All coefficients run
together in batched ``generate`` calls with per-row steering.

Scorers:

* :class:`VaderScorer` (default) — the rule-based VADER analyser (``vaderSentiment``), offline
  and fast.
* :class:`HFScorer` — any Hugging Face text-classification model, e.g.
  ``cardiffnlp/twitter-roberta-base-sentiment-latest`` (labels negative/neutral/positive), the
  classifier used by the original happy/sad steering experiment; a hub id needs internet access,
  a local folder does not.

Example:
    >>> report = sentiment_shift(lm, happy, openings, coefficients=(-4, 0, 4))  # doctest: +SKIP
    >>> print(report.to_markdown())  # doctest: +SKIP
    >>> report.plot("sentiment.png")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .. import hf
from ..errors import DatasetError, SteeringError, SteeringSpecError
from ..generate import generate
from ..model import LM
from ..progress import track
from ..steering import Positions, Steering
from ..vector import SteeringVector
from .fluency import continuation_perplexity
from .report import Report, fmt, new_figure, save_figure

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


_GENERIC_LABEL = re.compile(r"^(label[_ ]?)?(\d+)$")


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
    if n in (2, 3) and all(_GENERIC_LABEL.match(x) for x in names):
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
            with hf.quiet():
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


# --------------------------------------------------------------------------- statistics
def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    n_bootstrap: int = 1000,
    seed: int = 0,
    indices: np.ndarray | None = None,
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of ``values`` (items resampled with
    replacement ``n_bootstrap`` times; ``nan`` when there is nothing to resample).

    Example:
        >>> lo, hi = bootstrap_ci([0.0, 1.0, 1.0, 0.0], n_bootstrap=200)
        >>> 0.0 <= lo <= 0.5 <= hi <= 1.0
        True
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0 or (indices is None and n_bootstrap <= 0):
        return (math.nan, math.nan)
    if indices is None:
        indices = np.random.default_rng(seed).integers(0, x.size, size=(n_bootstrap, x.size))
    if indices.size == 0:
        return (math.nan, math.nan)
    means = x[indices].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return (float(lo), float(hi))


def _nan_stat(values: Sequence[float], fn: Any) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(fn(finite)) if finite else math.nan


# --------------------------------------------------------------------------- report
@dataclass
class SentimentRow:
    """Sentiment of the continuations at one coefficient (CIs are 95% bootstrap intervals)."""

    coefficient: float
    n: int
    mean_compound: float
    compound_ci: tuple[float, float]
    positive_share: float
    positive_ci: tuple[float, float]
    neutral_share: float
    neutral_ci: tuple[float, float]
    negative_share: float
    negative_ci: tuple[float, float]
    mean_negative: float
    mean_neutral: float
    mean_positive: float
    median_perplexity: float = math.nan
    mean_perplexity: float = math.nan


def coefficient_label(coefficient: float) -> str:
    """``"baseline"`` for 0, ``"+c steering"`` / ``"−c steering"`` otherwise.

    Example:
        >>> coefficient_label(0.0), coefficient_label(4.0), coefficient_label(-1.5)
        ('baseline', '+4 steering', '−1.5 steering')
    """
    if coefficient == 0:
        return "baseline"
    sign = "+" if coefficient > 0 else "−"
    return f"{sign}{abs(coefficient):g} steering"


def _ci_text(value: float, ci: tuple[float, float]) -> str:
    return f"{fmt(value)} [{fmt(ci[0])}, {fmt(ci[1])}]"


@dataclass
class SentimentReport(Report):
    """Result of :func:`sentiment_shift`: one :class:`SentimentRow` per coefficient.

    Attributes:
        scorer: the scorer's name.
        by_coefficient: the rows, in the order the coefficients were given.
        examples: ``{str(coefficient): [(opening, continuation), ...]}`` — the first 5.

    Example:
        >>> report.positive_share(1.0) > report.positive_share(-1.0)  # doctest: +SKIP
        True
    """

    scorer: str = ""
    by_coefficient: list[SentimentRow] = field(default_factory=list)
    examples: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def row(self, coefficient: float) -> SentimentRow:
        """The row of ``coefficient``.

        Raises:
            KeyError: no such coefficient in the report.
        """
        for r in self.by_coefficient:
            if math.isclose(r.coefficient, float(coefficient), rel_tol=1e-9, abs_tol=1e-12):
                return r
        raise KeyError(
            f"coefficient {coefficient} is not in the report (it has {[r.coefficient for r in self.by_coefficient]})"
        )

    def positive_share(self, coefficient: float) -> float:
        """Share of continuations labelled positive at ``coefficient``."""
        return self.row(coefficient).positive_share

    def negative_share(self, coefficient: float) -> float:
        """Share of continuations labelled negative at ``coefficient``."""
        return self.row(coefficient).negative_share

    def mean_compound(self, coefficient: float) -> float:
        """Mean compound score at ``coefficient``."""
        return self.row(coefficient).mean_compound

    def rows(self) -> list[dict[str, Any]]:
        """One table row per coefficient: shares with their 95% CIs and the median perplexity."""
        return [
            {
                "coef": r.coefficient,
                "n": r.n,
                "mean_compound": r.mean_compound,
                "ci": f"[{fmt(r.compound_ci[0])}, {fmt(r.compound_ci[1])}]",
                "positive": _ci_text(r.positive_share, r.positive_ci),
                "neutral": _ci_text(r.neutral_share, r.neutral_ci),
                "negative": _ci_text(r.negative_share, r.negative_ci),
                "ppl": r.median_perplexity,
            }
            for r in self.by_coefficient
        ]

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Grouped bars of the average class probabilities (negative/neutral/positive), one bar per
        coefficient in each group, saved as a PNG at ``path``."""
        fig = new_figure(6.5, 4.0)
        ax = fig.add_subplot(1, 1, 1)
        k = max(1, len(self.by_coefficient))
        width = 0.8 / k
        x = np.arange(len(LABELS))
        for j, r in enumerate(self.by_coefficient):
            values = [r.mean_negative, r.mean_neutral, r.mean_positive]
            ax.bar(x - 0.4 + width * (j + 0.5), values, width, label=coefficient_label(r.coefficient))
        ax.set_xticks(x)
        ax.set_xticklabels(list(LABELS))
        ax.set_ylabel("average class probability")
        ax.set_ylim(0, 1.05)
        ax.set_title(self.title or "Sentiment under steering")
        if self.by_coefficient:
            ax.legend()
        return save_figure(fig, path)


# --------------------------------------------------------------------------- evaluation
def sentiment_shift(
    lm: LM,
    vector: SteeringVector,
    openings: Sequence[str],
    coefficients: Sequence[float] = (-1.0, 0.0, 1.0),
    layers: Sequence[int] | None = None,
    positions: Positions = "all",
    operator: str = "add",
    max_new_tokens: int = 24,
    scorer: str | os.PathLike[str] | Scorer | None = None,
    batch_size: int = 32,
    chat: bool = False,
    n_bootstrap: int = 1000,
    seed: int = 0,
    progress: bool | None = None,
    fluency: bool = True,
) -> SentimentReport:
    """Continue every opening greedily at each coefficient and measure the sentiment it ends up with.

    Rows (openings × coefficients) are generated together in ``batch_size`` chunks with per-row
    steering; coefficient ``0`` is the unsteered model (whatever the operator). Only the
    continuation (stripped) is scored. With ``fluency=True`` each continuation's perplexity under
    the *unsteered* model is measured as well.

    Args:
        lm: the model.
        vector: the steering vector (made for ``lm``).
        openings: sentence openings to continue (e.g. RepE's ``all_truncated_outputs.json``).
        coefficients: steering strengths; duplicates are dropped.
        layers: subset of the vector's layers (default: all).
        positions: where to steer (see :mod:`steerlab.steering`).
        operator: ``"add"``, ``"ablate"``, ``"clamp"`` or ``"add_norm_preserving"``.
        max_new_tokens: length of each continuation.
        scorer: ``"vader"`` (default), a classifier folder / hub id, or a :class:`Scorer`.
        batch_size: rows per ``generate`` call, texts per scoring batch.
        chat: render each opening as a user turn with the chat template (the model answers it)
            instead of continuing it as plain text.
        n_bootstrap: bootstrap resamples for the 95% intervals (``0``: no intervals).
        seed: seed of the bootstrap.
        progress: show progress bars (default: unless ``STEERLAB_QUIET`` is set).
        fluency: also measure perplexity under the unsteered model.

    Raises:
        DatasetError: no openings.
        ModelMismatchError: the vector was made for another model (raised before generating).
        SteeringSpecError / LayerRangeError: invalid coefficients, positions, operator or layers.
        ScorerLoadError: the scorer cannot be loaded.

    Example:
        >>> openings = steerlab.load_openings("all_truncated_outputs.json")  # doctest: +SKIP
        >>> r = sentiment_shift(lm, happy, openings[:64], coefficients=(-4, 0, 4))  # doctest: +SKIP
        >>> r.mean_compound(4) > r.mean_compound(0) > r.mean_compound(-4)  # doctest: +SKIP
        True
    """
    items = [openings] if isinstance(openings, str) else list(openings)
    if not items:
        raise DatasetError("no sentence openings given: pass at least one opening to continue")
    bad = [i for i, o in enumerate(items) if not isinstance(o, str)]
    if bad:
        raise DatasetError(f"openings must be strings; item {bad[0]} is a {type(items[bad[0]]).__name__}")
    try:
        coefs = list(dict.fromkeys(float(c) for c in coefficients))
    except (TypeError, ValueError):
        raise SteeringSpecError(f"coefficients={coefficients!r} must be numbers") from None
    if not coefs:
        raise SteeringSpecError("no coefficients given: pass e.g. coefficients=(-1, 0, 1)")
    if batch_size < 1:
        raise SteeringSpecError(f"batch_size={batch_size} must be at least 1")
    vector.check_model(lm)
    steerings: list[Steering | None] = [
        None if c == 0 else Steering(vector, c, layers=layers, positions=positions, operator=operator) for c in coefs
    ]
    sc = get_scorer(scorer)

    prompts = [o for o in items for _ in coefs]
    rows = [s for _ in items for s in steerings]
    continuations: list[str] = []
    for start in track(range(0, len(prompts), batch_size), "generating continuations", enabled=progress):
        continuations += generate(
            lm,
            prompts[start : start + batch_size],
            steering=rows[start : start + batch_size],
            max_new_tokens=max_new_tokens,
            chat=chat,
        )
    texts = [c.strip() for c in continuations]
    scores: list[SentimentScore] = []
    for start in track(range(0, len(texts), batch_size), "scoring sentiment", enabled=progress):
        scores += sc.score(texts[start : start + batch_size])
    if len(scores) != len(texts):
        raise SteeringError(f"scorer {sc.name!r} returned {len(scores)} scores for {len(texts)} texts")
    if fluency:
        rendered = [lm.chat(p) if chat else p for p in prompts]
        ppl = continuation_perplexity(lm, rendered, continuations, batch_size=batch_size, progress=progress)
    else:
        ppl = [math.nan] * len(prompts)

    n = len(items)
    k = len(coefs)
    idx = np.random.default_rng(seed).integers(0, n, size=(max(0, n_bootstrap), n))
    results: list[SentimentRow] = []
    examples: dict[str, list[tuple[str, str]]] = {}
    for j, c in enumerate(coefs):
        mine = [scores[i * k + j] for i in range(n)]
        compound = np.array([s.compound for s in mine])
        shares = {lab: np.array([s.label == lab for s in mine], dtype=float) for lab in LABELS}
        row_ppl = [ppl[i * k + j] for i in range(n)]
        results.append(
            SentimentRow(
                coefficient=c,
                n=n,
                mean_compound=float(compound.mean()),
                compound_ci=bootstrap_ci(compound, indices=idx),
                positive_share=float(shares["positive"].mean()),
                positive_ci=bootstrap_ci(shares["positive"], indices=idx),
                neutral_share=float(shares["neutral"].mean()),
                neutral_ci=bootstrap_ci(shares["neutral"], indices=idx),
                negative_share=float(shares["negative"].mean()),
                negative_ci=bootstrap_ci(shares["negative"], indices=idx),
                mean_negative=float(np.mean([s.negative for s in mine])),
                mean_neutral=float(np.mean([s.neutral for s in mine])),
                mean_positive=float(np.mean([s.positive for s in mine])),
                median_perplexity=_nan_stat(row_ppl, np.median),
                mean_perplexity=_nan_stat(row_ppl, np.mean),
            )
        )
        examples[str(c)] = [(items[i], continuations[i * k + j]) for i in range(min(5, n))]
    return SentimentReport(
        title=f"Sentiment shift: {vector.method} vector on {lm.model_id} ({sc.name})",
        settings={
            "model_id": lm.model_id,
            "vector_method": vector.method,
            "layers": list(layers) if layers is not None else vector.layers,
            "positions": positions,
            "operator": operator,
            "coefficients": coefs,
            "n_openings": n,
            "max_new_tokens": max_new_tokens,
            "scorer": sc.name,
            "chat": chat,
            "n_bootstrap": n_bootstrap,
            "seed": seed,
            "fluency": fluency,
        },
        scorer=sc.name,
        by_coefficient=results,
        examples=examples,
    )
