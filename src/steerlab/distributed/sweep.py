"""Sweep settings on Ray actors: each layer set is one call on a model-holding actor.

A setting runs exactly what the single-process sweep runs for it
(:func:`steerlab.evaluate.sweep.evaluate_setting`: the evaluation with the vector cut to the
layer set, at every coefficient), and the rows come back in the sweep's order, so the grids are
the single-process grids. A layer set is the unit because evaluations run all coefficients of a
setting in one batch with per-row steering and relate some metrics to coefficient 0.

Example:
    >>> grids = sweep_grids(get_evaluation("sentiment"), lm, vec, openings, [[8], [12]], [-1, 0, 1],
    ...                     workers=2)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core.vector import SteeringVector
from ..models.load import LM
from ..progress import track
from .cluster import actor_pool, check_workers, died, ray_errors, require_ray


def sweep_grids(
    evaluation: Any,
    lm: LM,
    vector: SteeringVector,
    data: Sequence[Any],
    sets: Sequence[Sequence[int]],
    coefficients: Sequence[float],
    *,
    workers: int | None,
    ray_address: str | None = None,
    progress: bool | None = None,
    **options: Any,
) -> dict[str, list[list[float]]]:
    """``{metric: [[value per coefficient] per layer set]}`` with the layer sets run on ``workers``
    Ray actors (results in the order of ``sets``)."""
    n = check_workers(workers, ray_address)
    pool = actor_pool(lm, n, ray_address)
    ray = require_ray()
    vector_ref, data_ref = ray.put(vector), ray.put(list(data))
    coefs = [float(c) for c in coefficients]

    def submit(actor: Any, layers: list[int]) -> Any:
        return actor.evaluate.remote(evaluation, vector_ref, layers, data_ref, coefs, options)

    grids: dict[str, list[list[float]]] = {}
    rows = pool.map(submit, [list(s) for s in sets])
    try:
        for row in track(
            rows, f"{evaluation.name}: {len(sets)} layer sets on {n} workers", total=len(sets), enabled=progress
        ):
            for name, values in row.items():
                grids.setdefault(name, []).append(values)
    except ray_errors() as exc:
        raise died(exc) from exc
    return grids
