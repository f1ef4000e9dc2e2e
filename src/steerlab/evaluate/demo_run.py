"""What ``steerlab demo`` runs: its vectors, its three columns (baseline, positive, negative) and
their sentiment, shared by the CLI, ``scripts/demo_columns.py`` and the demo's slow test.

Example:
    >>> setting = load_demo_setting()  # doctest: +SKIP
    >>> cols = demo_columns(lm, DEMO_PROMPTS, demo_rows(lm, setting.directions))  # doctest: +SKIP
    >>> column_sentiment(cols)["positive"] > column_sentiment(cols)["baseline"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..core.steering import Steering
from ..core.vector import SteeringVector
from ..data.demo import OPENINGS
from ..data.demo_setting import DirectionSetting
from ..data.pairs import ContrastPair
from ..extraction.extract import extract
from ..extraction.methods.pca import reorient
from ..models.load import LM
from ..runtime.generate import generate
from .scorers import get_scorer

COLUMNS = ("baseline", "positive", "negative")
"""The demo's columns, in the order of each prompt's rows."""


def demo_vector(lm: LM, pairs: Sequence[ContrastPair], method: str, layers: list[int]) -> SteeringVector:
    """The demo's vector for ``method`` built as the frontier runs build it (scripts/results.py):
    mean_diff on the persona pairs; ActAdd on the "Love" − "Hate" pair; any other method
    (``name`` or ``name:orientation``) on the persona pairs, reoriented, rescaled per layer to the
    mean_diff norms."""
    if method == "actadd":
        return extract(lm, [ContrastPair("Love", "Hate")], method="actadd", layers=layers)
    md = extract(lm, pairs, method="mean_diff", layers=layers, progress=False)
    if method == "mean_diff":
        return md
    name, _, rule = method.partition(":")
    vec = extract(lm, pairs, method=name, layers=layers, progress=False)
    if rule:
        vec = reorient(vec, rule)
    return equal_norm(vec, md.norms())


def equal_norm(vec: SteeringVector, norms: Mapping[int, float]) -> SteeringVector:
    """``vec`` rescaled per layer to ``norms`` (the mean_diff norms: methods compared at equal added
    norm, as the frontier runs and the demo build them).

    Example:
        >>> import torch
        >>> v = SteeringVector({0: torch.tensor([3.0, 4.0])}, "m", 2, 1)
        >>> equal_norm(v, {0: 10.0}).directions[0]
        tensor([6., 8.])
    """
    return SteeringVector(
        {k: v / v.norm() * norms[k] for k, v in vec.directions.items()},
        vec.model_id,
        vec.d_model,
        vec.n_layers,
        method=vec.method,
        data_hash=vec.data_hash,
        meta={**vec.meta, "rescaled_to": "mean_diff norms"},
    )


def demo_rows(
    lm: LM, chosen: Mapping[int, DirectionSetting], positive: str = "happy", negative: str = "sad"
) -> list[Steering | None]:
    """``[None, positive steering, negative steering]``: the demo's three rows per prompt, each
    direction's vector extracted on the ``positive − negative`` persona pairs of :data:`OPENINGS`."""
    from ..data.pairs import persona_pairs

    pairs = persona_pairs(positive, negative, list(OPENINGS))
    rows: list[Steering | None] = [None]
    for d in (1, -1):
        s = chosen[d]
        vec = demo_vector(lm, pairs, s.method, list(s.layers))
        rows.append(Steering(vec, s.coefficient, operator=s.operator, kl_cap=s.kl_cap))
    return rows


def demo_columns(
    lm: LM, prompts: Sequence[str], rows: Sequence[Steering | None], max_new_tokens: int = 24
) -> dict[str, list[str]]:
    """Each column's continuations of ``prompts`` (all rows in one batched ``generate``)."""
    flat = generate(
        lm,
        [p for p in prompts for _ in rows],
        steering=[r for _ in prompts for r in rows],
        max_new_tokens=max_new_tokens,
    )
    k = len(rows)
    return {name: flat[j::k] for j, name in enumerate(COLUMNS[:k])}


def text_sentiment(columns: Mapping[str, Sequence[str]], scorer: str = "vader") -> dict[str, list[float]]:
    """Each column's compound sentiment (VADER by default) of each stripped continuation."""
    sc = get_scorer(scorer)
    return {name: [float(s.compound) for s in sc.score([t.strip() for t in texts])] for name, texts in columns.items()}


def column_sentiment(columns: Mapping[str, Sequence[str]], scorer: str = "vader") -> dict[str, float]:
    """Each column's mean compound sentiment (VADER by default) of its stripped continuations."""
    return {name: float(np.mean(v)) for name, v in text_sentiment(columns, scorer).items()}
