"""Behaviour read-out on CAA multiple-choice (A/B) items, steered at several coefficients.

The protocol of CAA (Rimsky et al., "Steering Llama 2 via Contrastive Activation Addition"):

* the question is the user turn and the assistant's answer is primed with ``"("``
  (``lm.chat(question, "(")``; plain ``"{question}\\n("`` for a model without a chat template);
* one forward pass; at the last position (the ``"("``) the next-token distribution gives
  ``p(matching letter) / (p(matching letter) + p(not-matching letter))``;
* steering adds ``coefficient × vector`` at every position *after the instruction*: every token
  from where the assistant's answer begins (the ``"("`` and anything after it), never the question.

Behaviour items (``question`` / ``answer_matching_behavior`` / ``answer_not_matching_behavior``)
and capability items (MMLU / TruthfulQA: ``prompt`` / ``correct`` / ``incorrect``) are read by
:mod:`steerlab.data.ab` into one :class:`~steerlab.data.ab.ABItem`; for capability sets
"positive" is the correct answer, so the same number reads as p(correct) and the share of items
above 0.5 as accuracy.

All coefficients run in the same batches with per-row steering (rows = items × coefficients):
one forward pass per batch, no generation.

Prompting is a row like any other: with ``prompt=`` (a :class:`~steerlab.evaluate.prompting.Prompt`
put before the question or as the system turn) every coefficient reads the prompted item; with
``vector=None`` and coefficient 0 it is the prompt alone. The prompt is part of the instruction,
so steering still starts where the assistant's answer begins.

Example:
    >>> vec = behavior_vector(lm, CAA / "generate/sycophancy/generate_dataset.json",
    ...                       layers=[13], limit=200)  # doctest: +SKIP
    >>> from steerlab.data.ab import load_ab_items
    >>> items = load_ab_items(CAA / "test/sycophancy/test_dataset_ab.json")  # doctest: +SKIP
    >>> report = behavior_eval(lm, vec, items, coefficients=(-1, 0, 1))  # doctest: +SKIP
    >>> print(report.to_markdown())  # doctest: +SKIP
    >>> report.plot("sycophancy.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.steering import Steering, SteeringLike
from ..core.vector import SteeringVector
from ..data.ab import ABItem, Record, as_ab_items, load_ab_items, load_caa
from ..data.pairs import caa_pairs
from ..errors import DatasetError, SteeringSpecError
from ..extraction.extract import extract
from ..limits import Limits
from ..models.load import LM
from ..models.tokens import common_prefix_length, pad_id, pad_token_ids, position_ids
from ..progress import track
from ..runtime.passes import forward
from ..runtime.session import steer_rows
from .prompting import Prompt, PromptLike, as_prompt
from .protocol import Evaluation
from .report import Report, new_figure, save_figure
from .stats import bootstrap_ci, resample_indices

PRIME = "("
"""The assistant's answer starts with this; the next token is the answer letter."""


# --------------------------------------------------------------------------- tokens
@dataclass(frozen=True)
class _Prepared:
    """One item as token ids: the context fed to the model, where steering starts, the letters."""

    ids: list[int]
    prompt_length: int
    positive_id: int
    negative_id: int


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    return common_prefix_length([a, b])


def _chat(lm: LM, prompt: Prompt | None, user: str, assistant: str) -> str:
    return lm.chat(user, assistant) if prompt is None else prompt.render_chat(lm, user, assistant)


def _prepare(lm: LM, items: Sequence[ABItem], prompt: Prompt | None = None) -> list[_Prepared]:
    """Token ids of each item's context and its two letter tokens.

    The letter token is the token the tokenizer gives the letter right after ``"("`` in context:
    ``lm.chat(q, "(" + letter)`` is tokenised and the first token after the ``lm.chat(q, "(")``
    prefix is taken. If the tokenizer merges ``"(A"`` into one token (so the primed text is not a
    prefix of the answered one), the context is cut back to the tokens the three texts share and
    the two full-text tokens that follow (``"(A"`` vs ``"(B"``) are compared there instead.

    Steering starts at ``prompt_length`` = the token count of ``lm.chat(q, "")`` (the instruction,
    up to where the assistant's answer begins), capped so that the read position is always steered.
    A ``prompt`` is rendered into every text (before the question, or as the system turn).
    """
    tok = lm.tokenizer
    limits = Limits.for_model(lm)
    for i, it in enumerate(items):  # bounded before the tokenizer sees it
        limits.check_text(it.prompt, f"item {i}")
    instr = [_chat(lm, prompt, it.prompt, "") for it in items]
    primed = [_chat(lm, prompt, it.prompt, PRIME) for it in items]
    pos_txt = [_chat(lm, prompt, it.prompt, PRIME + it.positive_letter) for it in items]
    neg_txt = [_chat(lm, prompt, it.prompt, PRIME + it.negative_letter) for it in items]
    enc = tok(instr + primed + pos_txt + neg_txt, add_special_tokens=True)["input_ids"]
    n = len(items)
    out: list[_Prepared] = []
    for i in range(n):
        ins, ctx, pos, neg = enc[i], enc[n + i], enc[2 * n + i], enc[3 * n + i]
        # past its context a model reads garbage positions: an item that does not fit is refused, never truncated
        limits.check_tokens(max(len(pos), len(neg)), f"item {i} (answered)")
        k = len(ctx)
        if len(pos) > k and len(neg) > k and pos[:k] == ctx and neg[:k] == ctx:
            context, pid, nid = ctx, pos[k], neg[k]
        else:  # "(A" is one token (or the letter merges with "(" otherwise): compare full-text tokens
            k = min(_common(ctx, pos), _common(ctx, neg), _common(pos, neg))
            if k == 0 or k >= min(len(pos), len(neg)):
                raise DatasetError(f"item {i}: cannot locate the answer-letter token after {PRIME!r}")
            context, pid, nid = ctx[:k], pos[k], neg[k]
        if pid == nid:
            raise DatasetError(
                f"item {i}: ({items[i].positive_letter}) and ({items[i].negative_letter}) start with the "
                "same token; the letters cannot be told apart"
            )
        start = min(_common(ins, context), len(context) - 1)
        out.append(_Prepared(list(context), start, int(pid), int(nid)))
    return out


def _read(
    lm: LM,
    prepared: Sequence[_Prepared],
    settings: Sequence[Sequence[SteeringLike | None]],
    batch_size: int,
    progress: bool | None,
) -> np.ndarray:
    """``[n_items, n_settings, 2]``: p(positive)/(p(pos)+p(neg)) and p(pos)+p(neg) per item and
    steering setting. Items are length-sorted into batches of ``batch_size``; each batch is one
    forward pass over ``items × settings`` rows, left-padded (the last column is every row's last
    token) and steered per row after each item's ``prompt_length``."""
    if batch_size < 1:
        raise SteeringSpecError(f"batch_size={batch_size}: use a positive number of items per batch")
    n, n_set = len(prepared), len(settings[0])
    out = np.zeros((n, n_set, 2), dtype=np.float64)
    order = sorted(range(n), key=lambda i: len(prepared[i].ids))
    chunks = [order[s : s + batch_size] for s in range(0, n, batch_size)]
    pad = pad_id(lm.tokenizer)
    for chunk in track(chunks, "A/B read-out", enabled=progress):
        ids, mask = pad_token_ids([prepared[i].ids for i in chunk for _ in range(n_set)], pad, "left")
        lengths = torch.tensor([prepared[i].prompt_length for i in chunk for _ in range(n_set)], dtype=torch.long)
        row_steer: list[SteeringLike | None] = [settings[i][s] for i in chunk for s in range(n_set)]
        ids, mask = ids.to(lm.device), mask.to(lm.device)
        # left padding must not shift positions (absolute embeddings); no cache, the last logits only
        with steer_rows(lm, row_steer, prompt_length=lengths.to(lm.device)), torch.inference_mode():
            last = forward(lm, ids, mask, position_ids=position_ids(mask), use_cache=False, logits_to_keep=1)
        logits = last.logits[:, -1].double()
        logp = torch.log_softmax(logits, dim=-1)
        pid = torch.tensor([prepared[i].positive_id for i in chunk for _ in range(n_set)], device=logp.device)
        nid = torch.tensor([prepared[i].negative_id for i in chunk for _ in range(n_set)], device=logp.device)
        lp = logp.gather(1, pid[:, None]).squeeze(1)
        ln = logp.gather(1, nid[:, None]).squeeze(1)
        ratio = torch.sigmoid(lp - ln)  # = p(pos) / (p(pos) + p(neg)), without under/overflow
        mass = lp.exp() + ln.exp()
        vals = torch.stack([ratio, mass], -1).cpu().numpy().reshape(len(chunk), n_set, 2)
        out[chunk] = vals
    return out


def ab_probabilities(
    lm: LM,
    items: Sequence[ABItem | Record],
    steering: SteeringLike | Sequence[SteeringLike | None] | None = None,
    batch_size: int = 16,
    progress: bool | None = None,
) -> list[float]:
    """p(positive letter) / (p(positive) + p(negative)) of each item, at the ``"("`` priming the
    assistant's answer.

    Args:
        lm: the model.
        items: :class:`ABItem` objects (or raw CAA / MMLU records).
        steering: one steering for every item, or a list with one (or ``None``) per item. For the
            CAA protocol use ``positions="generated"``: "generated" here means every token after
            the instruction (``lm.chat(question, "")``), i.e. the ``"("`` and later.
        batch_size: items per forward pass.
        progress: show a progress bar.

    Example:
        >>> items = load_ab_items(CAA / "test/sycophancy/test_dataset_ab.json", limit=8)  # doctest: +SKIP
        >>> ab_probabilities(lm, items, Steering(vec, 1.0, positions="generated"))  # doctest: +SKIP
        [0.71, 0.42, ...]
    """
    ab = as_ab_items(items)
    if isinstance(steering, (list, tuple)):
        if len(steering) != len(ab):
            raise SteeringSpecError(
                f"got {len(steering)} steerings for {len(ab)} items: pass one steering for all of them "
                "or a list with one steering (or None) per item"
            )
        per_item: list[SteeringLike | None] = list(steering)
    else:
        per_item = [steering] * len(ab)  # type: ignore[list-item]
    vals = _read(lm, _prepare(lm, ab), [[s] for s in per_item], batch_size, progress)
    return [float(x) for x in vals[:, 0, 0]]


# --------------------------------------------------------------------------- report
@dataclass
class BehaviorPoint:
    """The read-out at one coefficient.

    Attributes:
        coefficient: the steering coefficient (``0``: the unsteered model).
        mean: mean p(matching) (capability sets: mean p(correct)).
        ci_low, ci_high: bootstrap 95% confidence interval of the mean (percentile, over items).
        above_half: share of items with p > 0.5 (capability sets: accuracy).
        letter_mass: mean p(A) + p(B), how much of the next-token distribution the two letters get.
        n: number of items.
        probabilities: the per-item values, in item order.
    """

    coefficient: float
    mean: float
    ci_low: float
    ci_high: float
    above_half: float
    letter_mass: float
    n: int
    probabilities: list[float] = field(default_factory=list)

    @property
    def multiplier(self) -> float:
        """Deprecated name of :attr:`coefficient`."""
        warnings.warn("BehaviorPoint.multiplier is deprecated: use .coefficient", DeprecationWarning, stacklevel=2)
        return self.coefficient


@dataclass
class BehaviorReport(Report):
    """A/B read-out at several coefficients (from :func:`behavior_eval` / :func:`capability_eval`).

    Attributes:
        behavior: the behaviour (or capability set) name.
        capability: ``True`` for MMLU / TruthfulQA: the value is p(correct), ``above_half`` accuracy.
        points: one :class:`BehaviorPoint` per coefficient, in the order given.
        prompt: the prompt every item was read with (``{"text", "mode", "name"}``), or ``None``.
    """

    behavior: str = ""
    capability: bool = False
    points: list[BehaviorPoint] = field(default_factory=list)
    prompt: dict[str, str] | None = None

    def point(self, coefficient: float) -> BehaviorPoint:
        """The point at ``coefficient``.

        Raises:
            KeyError: no such coefficient in the report.
        """
        for p in self.points:
            if p.coefficient == float(coefficient):
                return p
        raise KeyError(f"no coefficient {coefficient} in this report ({self.coefficients})")

    @property
    def coefficients(self) -> list[float]:
        """The coefficients, in the order given."""
        return [p.coefficient for p in self.points]

    def metrics(self) -> dict[str, list[float]]:
        """``p_matching`` (mean p(matching), or p(correct) on capability sets), ``above_half`` and
        ``p_not_matching`` (``1 − p_matching``), one value per coefficient."""
        return {
            "p_matching": [p.mean for p in self.points],
            "above_half": [p.above_half for p in self.points],
            "p_not_matching": [1 - p.mean for p in self.points],
        }

    @property
    def value_name(self) -> str:
        """``"p_correct"`` for capability sets, else ``"p_matching"``."""
        return "p_correct" if self.capability else "p_matching"

    def rows(self) -> list[dict[str, Any]]:
        share = "accuracy" if self.capability else "share_above_0.5"
        lead = {"prompt": self.prompt["name"]} if self.prompt else {}
        return [
            {
                **lead,
                "coefficient": p.coefficient,
                self.value_name: p.mean,
                "ci_low": p.ci_low,
                "ci_high": p.ci_high,
                share: p.above_half,
                "letter_mass": p.letter_mass,
                "n": p.n,
            }
            for p in self.points
        ]

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Mean p(matching) (or p(correct)) against the coefficient with 95% CI error bars."""
        fig = new_figure()
        ax = fig.add_subplot(1, 1, 1)
        pts = sorted(self.points, key=lambda p: p.coefficient)
        xs = [p.coefficient for p in pts]
        ys = [p.mean for p in pts]
        lo = [max(p.mean - p.ci_low, 0.0) if np.isfinite(p.ci_low) else 0.0 for p in pts]
        hi = [max(p.ci_high - p.mean, 0.0) if np.isfinite(p.ci_high) else 0.0 for p in pts]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=4, label=self.behavior or "items")
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel("steering coefficient")
        ax.set_ylabel("p(correct answer)" if self.capability else "p(answer matching behaviour)")
        ax.set_title(self.title or self.behavior)
        ax.legend(loc="best")
        return save_figure(fig, path)


# --------------------------------------------------------------------------- evaluation
def _name(items: Sequence[ABItem], name: str) -> str:
    if name:
        return name
    cats = {it.category for it in items}
    return cats.pop() if len(cats) == 1 and "" not in cats else "behavior"


def _checked_coefficients(coefficients: Sequence[float], multipliers: Sequence[float] | None) -> list[float]:
    if multipliers is not None:
        warnings.warn("multipliers= is deprecated: use coefficients=", DeprecationWarning, stacklevel=3)
        coefficients = multipliers
    coefs = [float(c) for c in coefficients]
    if not coefs:
        raise SteeringSpecError("no coefficients given: pass e.g. coefficients=(-1, 0, 1)")
    if len(set(coefs)) != len(coefs):
        raise SteeringSpecError(f"coefficients {coefs} repeat a value")
    return coefs


def _points(vals: np.ndarray, coefficients: Sequence[float], n_bootstrap: int, seed: int) -> list[BehaviorPoint]:
    """One :class:`BehaviorPoint` per coefficient from ``_read``'s ``[items, coefficients, 2]`` values."""
    idx = resample_indices(vals.shape[0], n_bootstrap, seed)
    points = []
    for j, c in enumerate(coefficients):
        probs = vals[:, j, 0]
        lo, hi = bootstrap_ci(probs, indices=idx)
        points.append(
            BehaviorPoint(
                coefficient=c,
                mean=float(probs.mean()),
                ci_low=lo,
                ci_high=hi,
                above_half=float((probs > 0.5).mean()),
                letter_mass=float(vals[:, j, 1].mean()),
                n=vals.shape[0],
                probabilities=[float(x) for x in probs],
            )
        )
    return points


def behavior_eval(
    lm: LM,
    vector: SteeringVector | None,
    items: Sequence[ABItem | Record] | str | os.PathLike[str],
    coefficients: Sequence[float] = (-1.0, 0.0, 1.0),
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    name: str = "",
    limit: int | None = None,
    capability: bool = False,
    multipliers: Sequence[float] | None = None,
    prompt: PromptLike | None = None,
) -> BehaviorReport:
    """CAA A/B behaviour evaluation: mean p(matching) per coefficient, steering after the instruction.

    All items × coefficients are read in the same batches with per-row steering.

    Args:
        lm: the model.
        vector: the steering vector (e.g. from :func:`behavior_vector`).
        items: :class:`ABItem` objects, raw records, or a path for :func:`~steerlab.data.ab.load_ab_items`.
        coefficients: steering coefficients; ``0`` is the unsteered model.
        layers: the vector's layers to steer (default: all of them).
        batch_size: items per forward pass (each pass holds ``items × coefficients`` rows).
        progress: show a progress bar.
        n_bootstrap: bootstrap resamples for the 95% CI (``0``: no CI).
        seed: bootstrap seed.
        name: the behaviour's name (default: the items' common category).
        limit: use only the first ``limit`` items.
        capability: the items are a capability set (MMLU / TruthfulQA): the value reads as
            p(correct) and ``above_half`` as accuracy (see :func:`capability_eval`).
        multipliers: deprecated name of ``coefficients``.
        prompt: a :class:`~steerlab.evaluate.prompting.Prompt` (or a prefix string) read with
            every item; with ``vector=None`` (coefficient 0 only) it is prompting alone.

    Example:
        >>> r = behavior_eval(lm, vec, CAA / "test/sycophancy/test_dataset_ab.json")  # doctest: +SKIP
        >>> r.point(1.0).mean - r.point(-1.0).mean  # doctest: +SKIP
        0.12

    Raises:
        DatasetError: a malformed item (named by its index).
        SteeringSpecError: no or repeated coefficients, or non-zero ones without a vector.
        LayerRangeError: ``layers`` not in the vector.
    """
    coefs = _checked_coefficients(coefficients, multipliers)
    instruction = as_prompt(prompt)
    if vector is None and any(c != 0.0 for c in coefs):
        raise SteeringSpecError("non-zero coefficients need a vector: for prompting alone use coefficients=[0]")
    if isinstance(items, (str, os.PathLike)):
        ab, source = load_ab_items(items, limit), {"source": str(items)}
    else:
        ab, source = as_ab_items(items)[:limit], {}
    steerings: list[SteeringLike | None] = [
        None if c == 0.0 or vector is None else Steering(vector, c, layers=layers, positions="generated") for c in coefs
    ]
    vals = _read(lm, _prepare(lm, ab, instruction), [steerings] * len(ab), batch_size, progress)
    behavior = _name(ab, name)
    kind = "capability" if capability else "behaviour"
    settings: dict[str, Any] = {
        "set": kind,
        "capability": capability,
        "coefficients": coefs,
        "layers": ([] if vector is None else list(vector.layers)) if layers is None else [int(x) for x in layers],
        "positions": "after the instruction (the '(' priming the answer and later)",
        "batch_size": batch_size,
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "model_id": lm.model_id,
        "vector": None
        if vector is None
        else {"method": vector.method, "model_id": vector.model_id, "data_hash": vector.data_hash},
        "prompt": None if instruction is None else instruction.describe(),
        **source,
        **({"limit": limit} if limit is not None else {}),
    }
    return BehaviorReport(
        title=f"CAA A/B {kind}: {behavior}" + ("" if instruction is None else f" with {instruction.label}"),
        settings=settings,
        behavior=behavior,
        capability=capability,
        points=_points(vals, coefs, n_bootstrap, seed),
        prompt=None if instruction is None else instruction.describe(),
    )


def capability_eval(
    lm: LM,
    vector: SteeringVector,
    path: str | os.PathLike[str],
    coefficients: Sequence[float] = (-1.0, 0.0, 1.0),
    *,
    limit: int | None = None,
    **options: Any,
) -> BehaviorReport:
    """Capability cost of steering on ``mmlu.json`` / ``truthful_qa.json``: p(correct) per coefficient.

    :func:`behavior_eval` with ``capability=True`` and the file's name as the set's name: its
    ``above_half`` (the ``accuracy`` column) is the share of items where p(correct) > 0.5.
    ``options`` are :func:`behavior_eval`'s (``layers``, ``batch_size``, ``n_bootstrap``, ...).

    Example:
        >>> r = capability_eval(lm, vec, CAA / "test/mmlu/mmlu.json", limit=100)  # doctest: +SKIP
        >>> [p.above_half for p in r.points]  # doctest: +SKIP
        [0.41, 0.45, 0.44]
    """
    return behavior_eval(lm, vector, path, coefficients, name=Path(path).stem, limit=limit, capability=True, **options)


EVALUATION = Evaluation(
    "behavior",
    behavior_eval,
    metrics=("p_matching", "above_half", "p_not_matching"),
    data="CAA A/B items",
    load=load_ab_items,
    effect={1: "p_matching", -1: "p_not_matching"},
)
""":func:`behavior_eval` as the evaluation protocol sees it (registered as ``"behavior"`` by
:mod:`steerlab.evaluate`)."""


# --------------------------------------------------------------------------- vectors
def behavior_vector(
    lm: LM,
    generate_path: str | os.PathLike[str],
    layers: Sequence[int] | range | int,
    limit: int | None = None,
    method: str = "mean_diff",
    batch_size: int = 32,
    progress: bool | None = None,
) -> SteeringVector:
    """A CAA behaviour vector from a ``generate_dataset.json``: the answer-letter activations of the
    matching minus the not-matching answer (``caa_pairs`` + :func:`steerlab.extract`).

    Example:
        >>> vec = behavior_vector(lm, CAA / "generate/sycophancy/generate_dataset.json",
        ...                       layers=[13], limit=200)  # doctest: +SKIP
    """
    return extract(
        lm,
        caa_pairs(load_caa(Path(generate_path), limit)),
        method=method,
        layers=layers,
        batch_size=batch_size,
        progress=progress,
    )
