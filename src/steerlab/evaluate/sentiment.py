"""Sentiment shift: does a steering vector move the mood of what the model writes?

Each sentence opening is continued greedily once per coefficient (``0`` = the unsteered model),
every continuation is scored by a sentiment :class:`Scorer`, and the result is summarised per
coefficient with bootstrap confidence intervals (:class:`SentimentReport`). All coefficients run
together in batched ``generate`` calls with per-row steering.

Prompting is a row like any other: with ``prompt=`` every coefficient continues the *prompted*
opening (``vector=None`` with coefficient ``0``: the prompt alone). The fluency cost of every row
is the perplexity of its continuation under the unsteered, unprompted model given the plain
opening, and ``continuation_ppl_ratio`` divides it by that of the unsteered, unprompted model's
own continuations (the report's ``reference`` row) — so steered, prompted and combined rows pay in
the same currency.

The scorers (VADER by default, or any Hugging Face text classifier) are in
:mod:`steerlab.evaluate.scorers`.

Example:
    >>> report = sentiment_shift(lm, happy, openings, coefficients=(-4, 0, 4))  # doctest: +SKIP
    >>> print(report.to_markdown())  # doctest: +SKIP
    >>> report.plot("sentiment.png")  # doctest: +SKIP
    >>> cheer = sentiment_shift(lm, None, openings, [0], prompt="Here is a happy story. ")  # doctest: +SKIP
    >>> cheer.by_coefficient[0].ppl_ratio  # cost against the plain model's own continuations  # doctest: +SKIP
    1.27
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.steering import Positions, Steering
from ..core.vector import SteeringVector
from ..data.demo import OPENINGS
from ..data.texts import load_openings
from ..errors import DatasetError, SteeringError, SteeringSpecError
from ..models.load import LM
from ..progress import track
from ..runtime.generate import generate
from .degeneracy import distinct_n, repeated_ngrams
from .likelihood import continuation_nll, perplexities
from .prompting import Prompt, PromptLike, as_prompt
from .protocol import Evaluation
from .report import Report, fmt, new_figure, save_figure
from .scorers import LABELS, Scorer, SentimentScore, get_scorer
from .stats import bootstrap_ci, finite_stat, resample_indices

__all__ = ["SentimentReport", "SentimentRow", "coefficient_label", "sentiment_shift"]


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
    ppl_ratio: float = math.nan
    distinct_2: float = math.nan
    repeated_3gram: float = math.nan


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
        prompt: the prompt every row continued (``{"text", "mode", "name"}``), or ``None``.
        reference: the unsteered, unprompted model on the plain openings — what
            ``ppl_ratio`` divides by (``None`` when fluency was not measured).

    Example:
        >>> report.positive_share(1.0) > report.positive_share(-1.0)  # doctest: +SKIP
        True
    """

    scorer: str = ""
    by_coefficient: list[SentimentRow] = field(default_factory=list)
    examples: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    prompt: dict[str, str] | None = None
    reference: SentimentRow | None = None

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

    @property
    def coefficients(self) -> list[float]:
        """The coefficients, in the order given."""
        return [r.coefficient for r in self.by_coefficient]

    def metrics(self) -> dict[str, list[float]]:
        """``positive_share``, ``negative_share``, ``mean_compound``, ``continuation_ppl`` (the
        mean perplexity of the continuations under the unsteered, unprompted model) and
        ``continuation_ppl_ratio`` (that over the :attr:`reference`'s), one value per coefficient."""
        rows = self.by_coefficient
        return {
            "positive_share": [r.positive_share for r in rows],
            "negative_share": [r.negative_share for r in rows],
            "mean_compound": [r.mean_compound for r in rows],
            "continuation_ppl": [r.mean_perplexity for r in rows],
            "continuation_ppl_ratio": [r.ppl_ratio for r in rows],
            "distinct_2": [r.distinct_2 for r in rows],
            "repeated_3gram": [r.repeated_3gram for r in rows],
        }

    def rows(self) -> list[dict[str, Any]]:
        """One table row per coefficient (the prompt's label first when there is one): shares with
        their 95% CIs, the median perplexity and the mean-perplexity ratio to the reference."""
        lead = {"prompt": self.prompt["name"]} if self.prompt else {}
        return [
            {
                **lead,
                "coef": r.coefficient,
                "n": r.n,
                "mean_compound": r.mean_compound,
                "ci": f"[{fmt(r.compound_ci[0])}, {fmt(r.compound_ci[1])}]",
                "positive": _ci_text(r.positive_share, r.positive_ci),
                "neutral": _ci_text(r.neutral_share, r.neutral_ci),
                "negative": _ci_text(r.negative_share, r.negative_ci),
                "ppl": r.median_perplexity,
                "ppl_ratio": r.ppl_ratio,
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
def _checked(openings: Sequence[str], coefficients: Sequence[float], batch_size: int) -> tuple[list[str], list[float]]:
    """The openings as a list and the coefficients without repeats, or a clear error."""
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
    return items, coefs


def _score(scorer: Scorer, texts: list[str], batch_size: int, progress: bool | None) -> list[SentimentScore]:
    scores: list[SentimentScore] = []
    for start in track(range(0, len(texts), batch_size), "scoring sentiment", enabled=progress):
        scores += scorer.score(texts[start : start + batch_size])
    if len(scores) != len(texts):
        raise SteeringError(f"scorer {scorer.name!r} returned {len(scores)} scores for {len(texts)} texts")
    return scores


def _summary(
    coefficient: float,
    scores: Sequence[SentimentScore],
    ppl: Sequence[float],
    idx: np.ndarray,
    texts: Sequence[str] = (),
) -> SentimentRow:
    """The row of one coefficient: means, shares and their bootstrap intervals (resampled along
    ``idx``), and how much its continuations ``texts`` repeat themselves (:mod:`.degeneracy`)."""
    compound = np.array([s.compound for s in scores])
    shares = {lab: np.array([s.label == lab for s in scores], dtype=float) for lab in LABELS}
    return SentimentRow(
        coefficient=coefficient,
        n=len(scores),
        mean_compound=float(compound.mean()),
        compound_ci=bootstrap_ci(compound, indices=idx),
        positive_share=float(shares["positive"].mean()),
        positive_ci=bootstrap_ci(shares["positive"], indices=idx),
        neutral_share=float(shares["neutral"].mean()),
        neutral_ci=bootstrap_ci(shares["neutral"], indices=idx),
        negative_share=float(shares["negative"].mean()),
        negative_ci=bootstrap_ci(shares["negative"], indices=idx),
        mean_negative=float(np.mean([s.negative for s in scores])),
        mean_neutral=float(np.mean([s.neutral for s in scores])),
        mean_positive=float(np.mean([s.positive for s in scores])),
        median_perplexity=finite_stat(ppl, np.median),
        mean_perplexity=finite_stat(ppl, np.mean),
        distinct_2=distinct_n(texts, 2),
        repeated_3gram=repeated_ngrams(texts, 3),
    )


def _steerings(
    vector: SteeringVector | None,
    coefs: Sequence[float],
    layers: Sequence[int] | None,
    positions: Positions | None,
    operator: str,
    kl_cap: float | None = None,
) -> list[Steering | None]:
    """One steering per coefficient (``None`` at 0); without a vector only coefficient 0 is possible."""
    if vector is None:
        if any(c != 0 for c in coefs):
            raise SteeringSpecError(
                f"coefficients {[c for c in coefs if c != 0]} need a vector: without one (prompting alone) "
                "use coefficients=[0]"
            )
        return [None] * len(coefs)
    where = None if vector.tokenwise and positions in (None, "all") else positions
    return [
        None if c == 0 else Steering(vector, c, layers=layers, positions=where, operator=operator, kl_cap=kl_cap)
        for c in coefs
    ]


def _continue(
    lm: LM,
    texts: list[str],
    rows: list[Steering | None],
    max_new_tokens: int,
    batch_size: int,
    progress: bool | None,
) -> list[str]:
    """Greedy continuations of already-rendered ``texts``, steered per row, in ``batch_size`` chunks."""
    out: list[str] = []
    for start in track(range(0, len(texts), batch_size), "generating continuations", enabled=progress):
        out += generate(
            lm,
            texts[start : start + batch_size],
            steering=rows[start : start + batch_size],
            max_new_tokens=max_new_tokens,
        )
    return out


@dataclass
class _Reference:
    """The unsteered, unprompted model's continuations of the plain openings, scored."""

    scores: list[SentimentScore]
    ppl: list[float]
    texts: list[str]


def sentiment_shift(
    lm: LM,
    vector: SteeringVector | None,
    openings: Sequence[str],
    coefficients: Sequence[float] = (-1.0, 0.0, 1.0),
    *,
    layers: Sequence[int] | None = None,
    positions: Positions | None = "all",
    operator: str = "add",
    kl_cap: float | None = None,
    max_new_tokens: int = 24,
    scorer: str | os.PathLike[str] | Scorer | None = None,
    batch_size: int = 32,
    chat: bool = False,
    n_bootstrap: int = 1000,
    seed: int = 0,
    progress: bool | None = None,
    fluency: bool = True,
    prompt: PromptLike | None = None,
) -> SentimentReport:
    """Continue every opening greedily at each coefficient and measure the sentiment it ends up with.

    Rows (openings × coefficients) are generated together in ``batch_size`` chunks with per-row
    steering; coefficient ``0`` is the unsteered model (whatever the operator). Only the
    continuation (stripped) is scored. With ``fluency=True`` each continuation's perplexity under
    the *unsteered, unprompted* model given the plain opening is measured as well, and divided by
    that of the unsteered, unprompted model's own continuations (``ppl_ratio``; the reference
    rows are generated once more only when the grid does not already hold them).

    Args:
        lm: the model.
        vector: the steering vector (made for ``lm``), or ``None`` for prompting alone (then the
            only coefficient is ``0``).
        openings: sentence openings to continue (e.g. RepE's ``all_truncated_outputs.json``).
        coefficients: steering strengths; duplicates are dropped.
        layers: subset of the vector's layers (default: all).
        positions: where to steer (see :mod:`steerlab.core.steering`); token-wise (ActAdd) vectors
            are added front-aligned whatever is given here unless it is a window.
        operator: ``"add"``, ``"ablate"``, ``"clamp"``, ``"add_norm_preserving"``, ``"push"``,
            ``"rotate"`` or a registered one.
        kl_cap: a per-token KL cap (nats) on each steered row (:mod:`steerlab.runtime.kl_cap`;
            greedy, about twice the generation cost); ``None``: none.
        max_new_tokens: length of each continuation.
        scorer: ``"vader"`` (default), a classifier folder / hub id, or a :class:`Scorer`.
        batch_size: rows per ``generate`` call, texts per scoring batch.
        chat: render each opening as a user turn with the chat template (the model answers it)
            instead of continuing it as plain text.
        n_bootstrap: bootstrap resamples for the 95% intervals (``0``: no intervals).
        seed: seed of the bootstrap.
        progress: show progress bars (default: unless ``STEERLAB_QUIET`` is set).
        fluency: also measure perplexity under the unsteered, unprompted model.
        prompt: a :class:`~steerlab.evaluate.prompting.Prompt` (or a prefix string) every row
            continues from: prompting as a method, alone or with the vector.

    Raises:
        DatasetError: no openings.
        ModelMismatchError: the vector was made for another model (raised before generating).
        SteeringSpecError / LayerRangeError: invalid coefficients, positions, operator or layers,
            non-zero coefficients without a vector, or a system prompt without ``chat``.
        ScorerLoadError: the scorer cannot be loaded.

    Example:
        >>> openings = steerlab.load_openings("all_truncated_outputs.json")  # doctest: +SKIP
        >>> r = sentiment_shift(lm, happy, openings[:64], coefficients=(-4, 0, 4))  # doctest: +SKIP
        >>> r.mean_compound(4) > r.mean_compound(0) > r.mean_compound(-4)  # doctest: +SKIP
        True
    """
    items, coefs = _checked(openings, coefficients, batch_size)
    instruction = as_prompt(prompt)
    if vector is not None:
        vector.check_model(lm)
    steerings = _steerings(vector, coefs, layers, positions, operator, kl_cap)
    plain = [lm.chat(o) if chat else o for o in items]
    shown = plain if instruction is None else [instruction.render(lm, o, chat) for o in items]
    sc = get_scorer(scorer)

    k = len(coefs)
    continuations = _continue(
        lm,
        [t for t in shown for _ in coefs],
        [s for _ in items for s in steerings],
        max_new_tokens,
        batch_size,
        progress,
    )
    scores = _score(sc, [c.strip() for c in continuations], batch_size, progress)
    ppl = _fluency(lm, [t for t in plain for _ in coefs], continuations, batch_size, progress, fluency)
    reference = _reference(
        lm, plain, coefs, instruction, scores, ppl, continuations, max_new_tokens, batch_size, sc, progress, fluency
    )

    idx = resample_indices(len(items), n_bootstrap, seed)
    # rows are opening-major: the rows of coefficient j are j, j + k, j + 2k, ...
    results = [_summary(c, scores[j::k], ppl[j::k], idx, continuations[j::k]) for j, c in enumerate(coefs)]
    ref_row = None if reference is None else _summary(0.0, reference.scores, reference.ppl, idx, reference.texts)
    for r in results:
        r.ppl_ratio = _ratio(r.mean_perplexity, ref_row)
    if ref_row is not None:
        ref_row.ppl_ratio = 1.0
    n = len(items)
    examples = {str(c): [(items[i], continuations[i * k + j]) for i in range(min(5, n))] for j, c in enumerate(coefs)}
    method = "prompting" if vector is None else vector.method
    used = (list(layers) if layers is not None else vector.layers) if vector is not None else []
    return SentimentReport(
        title=f"Sentiment shift: {method}{_with(instruction)} on {lm.model_id} ({sc.name})",
        settings={
            "model_id": lm.model_id,
            "vector_method": method,
            "layers": used,
            "positions": positions,
            "operator": operator,
            "kl_cap": kl_cap,
            "coefficients": coefs,
            "n_openings": n,
            "max_new_tokens": max_new_tokens,
            "scorer": sc.name,
            "chat": chat,
            "n_bootstrap": n_bootstrap,
            "seed": seed,
            "fluency": fluency,
            "prompt": None if instruction is None else instruction.describe(),
        },
        scorer=sc.name,
        by_coefficient=results,
        examples=examples,
        prompt=None if instruction is None else instruction.describe(),
        reference=ref_row,
    )


def _with(prompt: Prompt | None) -> str:
    return "" if prompt is None else f" with {prompt.label}"


def _ratio(value: float, reference: SentimentRow | None) -> float:
    base = math.nan if reference is None else reference.mean_perplexity
    return value / base if math.isfinite(base) and base > 0 else math.nan


def _fluency(
    lm: LM, plain: list[str], continuations: list[str], batch_size: int, progress: bool | None, fluency: bool
) -> list[float]:
    """Perplexity of each continuation under the unsteered model given its *plain* opening."""
    if not fluency:
        return [math.nan] * len(continuations)
    return perplexities(continuation_nll(lm, plain, continuations, batch_size=batch_size, progress=progress))


def _reference(
    lm: LM,
    plain: list[str],
    coefs: list[float],
    prompt: Prompt | None,
    scores: list[SentimentScore],
    ppl: list[float],
    texts: list[str],
    max_new_tokens: int,
    batch_size: int,
    scorer: Scorer,
    progress: bool | None,
    fluency: bool,
) -> _Reference | None:
    """The unsteered, unprompted continuations: the coefficient-0 rows when the grid has them,
    else generated here (``None`` without ``fluency``)."""
    if not fluency:
        return None
    k = len(coefs)
    if prompt is None and 0.0 in coefs:
        j = coefs.index(0.0)
        return _Reference(scores[j::k], ppl[j::k], texts[j::k])
    conts = _continue(lm, plain, [None] * len(plain), max_new_tokens, batch_size, progress)
    return _Reference(
        _score(scorer, [c.strip() for c in conts], batch_size, progress),
        _fluency(lm, plain, conts, batch_size, progress, True),
        conts,
    )


EVALUATION = Evaluation(
    "sentiment",
    sentiment_shift,
    metrics=(
        "positive_share",
        "negative_share",
        "mean_compound",
        "continuation_ppl",
        "continuation_ppl_ratio",
        "distinct_2",
        "repeated_3gram",
    ),
    data="sentence openings",
    load=load_openings,
    default_data=lambda: list(OPENINGS),
    effect={1: "positive_share", -1: "negative_share"},
    cost="continuation_ppl",
)
""":func:`sentiment_shift` as the evaluation protocol sees it (registered as ``"sentiment"`` by
:mod:`steerlab.evaluate`)."""
