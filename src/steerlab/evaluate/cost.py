"""Off-target cost of steering: how much a steering disturbs the model on neutral, held-out text.

Two numbers per steering, both measured on the same (right-padded) batches, real tokens only:

* **perplexity** of the texts under the steered model (pooled over all predicted tokens), and its
  ratio to the unsteered perplexity;
* **KL divergence** ``KL(unsteered || steered)`` of the next-token distributions, averaged over
  every real predicted position (float32 ``log_softmax``).

A well-behaved steering vector moves the behaviour it targets while leaving both close to their
unsteered values (ratio 1, KL 0) on text that has nothing to do with it.

Example:
    >>> texts = load_texts("../shared/data/repe/facts_true_false.csv", limit=64)  # doctest: +SKIP
    >>> report = offtarget_cost(lm, vec, texts, coefficients=(-4, 0, 4))  # doctest: +SKIP
    >>> print(report.to_markdown())  # doctest: +SKIP
    >>> report.plot("cost.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.steering import Steering, SteeringLike, compose
from ..core.vector import SteeringVector
from ..data.texts import load_texts
from ..errors import DatasetError, SteeringSpecError
from ..extraction.capture import check_texts
from ..models.load import LM
from ..progress import track
from ..runtime import hf
from ..runtime.generate import encode
from ..runtime.passes import hooked
from ..runtime.score import predicting, score
from .likelihood import TextStats, summed_kl, summed_nll
from .prompted_cost import prompted_stats
from .prompting import Prompt, PromptLike, as_prompt
from .protocol import Evaluation
from .report import Report, new_figure, save_figure

DEFAULT_COEFFICIENTS: tuple[float, ...] = (-4, -2, -1, 0, 1, 2, 4)


def _is_noop(steering: SteeringLike | None) -> bool:
    if steering is None:
        return True
    return all(s.is_noop for s in compose(steering).steerings)


def _prepare(lm: LM, texts: Sequence[str]) -> tuple[list[str], int]:
    """Texts with at least 2 tokens (sorted by length to cut padding) and the number skipped."""
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise DatasetError("no texts given: pass at least one text of 2 or more tokens")
    ids, _ = check_texts(lm, list(texts))  # over max_text_chars or the context: refused before any work
    kept = [(len(x), t) for x, t in zip(ids, texts) if len(x) >= 2]
    skipped = len(texts) - len(kept)
    if not kept:
        raise DatasetError(f"all {len(texts)} texts are shorter than 2 tokens: nothing to score")
    kept.sort(key=lambda item: item[0])
    return [t for _, t in kept], skipped


def run_stats(
    lm: LM,
    texts: Sequence[str],
    steerings: Sequence[SteeringLike | None],
    batch_size: int = 16,
    progress: bool | None = None,
    norm_layers: Sequence[int] = (),
    norm_skip_first: bool = True,
) -> tuple[list[TextStats], dict[int, float]]:
    """:func:`text_stats` for several steerings at once, sharing one unsteered pass per batch.

    Also measures, on that unsteered pass, the mean per-token L2 norm of the residual stream (block
    output) at ``norm_layers`` over the real tokens of the scored texts — without the first token
    of each text when ``norm_skip_first`` (that token is an attention sink whose norm can be 100x
    the others', e.g. ~22,000 against ~150 in SmolLM2's middle layers, and would dominate the mean).

    Returns:
        one :class:`TextStats` per steering (in order), and ``{layer: mean token norm}``.

    Raises:
        DatasetError: no text has 2 or more tokens.
    """
    kept, skipped = _prepare(lm, texts)
    n = len(steerings)
    nll = [0.0] * n
    kl = [0.0] * n
    base_nll = 0.0
    n_tokens = 0
    norm_sum = dict.fromkeys(norm_layers, 0.0)
    norm_count = 0
    batches = [range(i, min(i + batch_size, len(kept))) for i in range(0, len(kept), batch_size)]

    def make_hook(layer: int, real: torch.Tensor) -> Callable[..., None]:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            h = hf.block_hidden(output)
            norms = h.float().norm(dim=-1) * real.to(device=h.device, dtype=torch.float32)
            norm_sum[layer] += float(norms.sum())

        return hook

    for rows in track(batches, "scoring texts", enabled=progress if len(batches) > 1 else False):
        input_ids, mask = encode(lm, [kept[i] for i in rows], padding_side="right")
        valid = predicting(mask)  # position t predicts token t + 1, which must be real
        targets = input_ids[:, 1:][valid]
        counted = mask > 0
        if norm_skip_first:
            counted[:, 0] = False  # right padding: column 0 is each text's first token
        with hooked(lm, {layer: make_hook(layer, counted) for layer in norm_layers}), torch.inference_mode():
            base = score(lm, input_ids, mask, valid)
        norm_count += int(counted.sum())
        base_nll += summed_nll(base, targets)
        n_tokens += int(valid.sum())
        for k, steering in enumerate(steerings):
            if _is_noop(steering):
                nll[k] += summed_nll(base, targets)
                continue
            with torch.inference_mode():
                steered = score(lm, input_ids, mask, valid, steering=steering)
            nll[k] += summed_nll(steered, targets)
            kl[k] += summed_kl(base, steered)
    stats = [
        TextStats.pooled(nll[k], base_nll, None if steerings[k] is None else kl[k], len(kept), n_tokens, skipped)
        for k in range(n)
    ]
    norms = {layer: s / norm_count if norm_count else float("nan") for layer, s in norm_sum.items()}
    return stats, norms


def text_stats(
    lm: LM,
    texts: Sequence[str],
    steering: SteeringLike | None = None,
    batch_size: int = 16,
    progress: bool | None = None,
) -> TextStats:
    """Perplexity of ``texts`` under the (steered) model and, with a steering, the mean per-token
    ``KL(unsteered || steered)`` of the next-token distributions.

    Each batch is right-padded and run once unsteered and once inside :func:`steerlab.steer`;
    only real predicted positions count. Texts shorter than 2 tokens are skipped
    (``TextStats.skipped``).

    Example:
        >>> s = text_stats(lm, ["The dog ran to the park."], Steering(vec, 4.0))  # doctest: +SKIP
        >>> s.perplexity, s.ppl_ratio, s.kl  # doctest: +SKIP

    Raises:
        DatasetError: no texts, or none with 2 or more tokens.
    """
    return run_stats(lm, texts, [steering], batch_size=batch_size, progress=progress)[0][0]


@dataclass
class CostReport(Report):
    """Perplexity, perplexity ratio and KL on neutral text, per steering coefficient.

    Attributes:
        coefficients: the coefficients, in the order given.
        perplexity, ppl_ratio, kl: per coefficient (ratio to the unsteered perplexity; KL in nats
            per token, 0 for the unsteered model).
        base_perplexity: the unsteered perplexity.
        n_texts, n_tokens, skipped: texts scored, predicted tokens, texts too short to score.
    """

    coefficients: list[float] = field(default_factory=list)
    perplexity: list[float] = field(default_factory=list)
    ppl_ratio: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    base_perplexity: float = float("nan")
    n_texts: int = 0
    n_tokens: int = 0
    skipped: int = 0

    def metrics(self) -> dict[str, list[float]]:
        """``ppl_ratio``, ``kl`` and ``perplexity``, one value per coefficient."""
        return {"ppl_ratio": self.ppl_ratio, "kl": self.kl, "perplexity": self.perplexity}

    def rows(self) -> list[dict[str, Any]]:
        """One row per coefficient: ``coefficient, perplexity, ppl_ratio, kl``."""
        return [
            {"coefficient": c, "perplexity": p, "ppl_ratio": r, "kl": k}
            for c, p, r, k in zip(self.coefficients, self.perplexity, self.ppl_ratio, self.kl)
        ]

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Two panels against the coefficient: perplexity ratio (log scale) and mean KL."""
        fig = new_figure(10.0, 4.0)
        left, right = fig.subplots(1, 2)
        left.plot(self.coefficients, self.ppl_ratio, "o-", color="tab:blue")
        left.axhline(1.0, color="grey", lw=0.8, ls=":")
        left.set_yscale("log")
        left.set_xlabel("steering coefficient")
        left.set_ylabel("perplexity / unsteered perplexity")
        left.set_title(f"perplexity ratio (unsteered ppl {self.base_perplexity:.3g})")
        right.plot(self.coefficients, self.kl, "o-", color="tab:red")
        right.set_xlabel("steering coefficient")
        right.set_ylabel("mean KL(unsteered || steered) [nats/token]")
        right.set_title("next-token KL divergence")
        for ax in (left, right):
            ax.axvline(0.0, color="grey", lw=0.8, ls=":")
            ax.grid(alpha=0.3)
        fig.suptitle(self.title or f"off-target cost on {self.n_texts} texts ({self.n_tokens} tokens)")
        return save_figure(fig, path)


def cost_curve(coefficients: Sequence[float], stats: Sequence[TextStats]) -> dict[str, Any]:
    """The :class:`CostReport` fields of :func:`run_stats` results, one per coefficient.

    Example:
        >>> stats, _ = run_stats(lm, texts, [Steering(vec, c) for c in (0.0, 4.0)])  # doctest: +SKIP
        >>> CostReport(**cost_curve([0.0, 4.0], stats)).kl  # doctest: +SKIP
        [0.0, 0.31]
    """
    return {
        "coefficients": [float(c) for c in coefficients],
        "perplexity": [s.perplexity for s in stats],
        "ppl_ratio": [s.ppl_ratio for s in stats],
        "kl": [float(s.kl or 0.0) for s in stats],
        "base_perplexity": stats[0].base_perplexity,
        "n_texts": stats[0].n_texts,
        "n_tokens": stats[0].n_tokens,
        "skipped": stats[0].skipped,
    }


def cost_settings(
    lm: LM, vector: SteeringVector, *, layers: list[int], positions: Any, operator: str, batch_size: int
) -> dict[str, Any]:
    """The settings a :class:`CostReport` records: model, vector method and how it was steered."""
    return {
        "model_id": lm.model_id,
        "method": vector.method,
        "layers": layers,
        "positions": positions,
        "operator": operator,
        "batch_size": batch_size,
    }


def offtarget_cost(
    lm: LM,
    vector: SteeringVector | None,
    texts: Sequence[str],
    coefficients: Sequence[float] = DEFAULT_COEFFICIENTS,
    *,
    layers: Sequence[int] | None = None,
    positions: str | tuple[int, int | None] = "all",
    operator: str = "add",
    batch_size: int = 16,
    progress: bool | None = None,
    prompt: PromptLike | None = None,
) -> CostReport:
    """Off-target cost of ``vector`` at each coefficient, measured on neutral ``texts``.

    The unsteered model runs once per batch and is shared by every coefficient; the baseline of
    the perplexity ratio is the unsteered model (the same as coefficient 0 for ``"add"``).

    With a (prefix) ``prompt`` every text is read after the prompt — coefficient 0 is the prompt
    alone, ``vector=None`` allowed — and compared with the plain text under the unsteered,
    unprompted model (:mod:`steerlab.evaluate.prompted_cost`): the cost of prompting in the same
    units as the cost of steering.

    Example:
        >>> texts = load_texts("../shared/data/repe/facts_true_false.csv", limit=32)  # doctest: +SKIP
        >>> rep = offtarget_cost(lm, vec, texts, coefficients=(0, 2, 8))  # doctest: +SKIP
        >>> rep.rows()[0]["kl"], rep.rows()[0]["ppl_ratio"]  # coefficient 0 is the unsteered model  # doctest: +SKIP
        (0.0, 1.0)

    Raises:
        DatasetError: no texts, or none with 2 or more tokens.
    """
    coefs = [float(c) for c in coefficients]
    instruction = as_prompt(prompt)
    if vector is None or instruction is not None:
        return _prompted_cost(
            lm,
            vector,
            texts,
            coefs,
            instruction,
            layers=layers,
            positions=positions,
            operator=operator,
            batch_size=batch_size,
            progress=progress,
        )
    steerings: list[SteeringLike | None] = [
        Steering(vector, c, layers=layers, positions=positions, operator=operator) for c in coefs
    ]
    stats, _ = run_stats(lm, texts, steerings, batch_size=batch_size, progress=progress)
    used = list(Steering(vector, 0.0, layers=layers).active_layers)
    return CostReport(
        title=f"off-target cost of {vector.method} vector (layers {used})",
        settings=cost_settings(lm, vector, layers=used, positions=positions, operator=operator, batch_size=batch_size),
        **cost_curve(coefs, stats),
    )


def _prompted_cost(
    lm: LM,
    vector: SteeringVector | None,
    texts: Sequence[str],
    coefs: list[float],
    prompt: Prompt | None,
    *,
    layers: Sequence[int] | None,
    positions: Any,
    operator: str,
    batch_size: int,
    progress: bool | None,
) -> CostReport:
    """:func:`offtarget_cost` with a prompt (or without a vector: only coefficient 0)."""
    if vector is None and any(c != 0 for c in coefs):
        raise SteeringSpecError("non-zero coefficients need a vector: for a prompt alone use coefficients=[0]")
    if prompt is None:
        raise SteeringSpecError("offtarget_cost needs a vector, a prompt or both")
    steerings: list[SteeringLike | None] = [
        None if vector is None or c == 0 else Steering(vector, c, layers=layers, positions=positions, operator=operator)
        for c in coefs
    ]
    stats = prompted_stats(lm, texts, prompt, steerings, batch_size=batch_size, progress=progress)
    used = [] if vector is None else list(Steering(vector, 0.0, layers=layers).active_layers)
    return CostReport(
        title=f"off-target cost of {prompt.label}" + ("" if vector is None else f" with {vector.method} {used}"),
        settings={
            "model_id": lm.model_id,
            "method": "prompting" if vector is None else vector.method,
            "layers": used,
            "positions": positions,
            "operator": operator,
            "batch_size": batch_size,
            "prompt": prompt.describe(),
        },
        **cost_curve(coefs, stats),
    )


EVALUATION = Evaluation(
    "cost", offtarget_cost, metrics=("ppl_ratio", "kl", "perplexity"), data="neutral texts", load=load_texts
)
""":func:`offtarget_cost` as the evaluation protocol sees it (registered as ``"cost"`` by :mod:`steerlab.evaluate`)."""

# load_texts (steerlab.data.texts) is re-exported: it reads the neutral texts the cost is measured on.
__all__ = [
    "CostReport",
    "cost_curve",
    "cost_settings",
    "load_texts",
    "offtarget_cost",
    "run_stats",
    "text_stats",
]
