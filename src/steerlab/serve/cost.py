"""What a steering costs, for the playground: the perplexity ratio of a steered continuation, and
where each vector's coefficient breaks the model.

* :meth:`CostService.perplexity_ratio` — the perplexity of the steered continuation under the
  *unsteered* model given the prompt, over that of the unsteered continuation
  (:func:`steerlab.evaluate.likelihood.continuation_nll`): how much less likely the plain model
  finds what the steered one wrote (1: as likely; 3: three times as perplexing).
* :meth:`CostService.breakdown` — the breakdown curve of a stored vector
  (:func:`steerlab.analysis.breakdown_curve` on the neutral texts shipped with steerlab,
  :data:`steerlab.data.demo.NEUTRAL`) and the smallest ``|coefficient|`` per sign at which its
  perplexity passes 2× the unsteered one. Computed once per vector, lazily, in a thread of its
  own (never on the event loop), and cached until the vector is replaced or deleted.

Both run the served model outside the worker thread, so they hold the worker's
:attr:`~steerlab.serve.engines.base.Engine.model_lock` (generation waits for them, and they for a
decoding step). A vLLM engine has no weights here (and no model lock): both are refused.

Example:
    >>> service = CostService(lm, store, engine.model_lock)  # doctest: +SKIP
    >>> service.perplexity_ratio("Once upon a time", " there was joy joy joy", " there was a girl")  # doctest: +SKIP
    {'ratio': 2.7, 'perplexity_steered': 41.2, 'perplexity_unsteered': 15.3, ...}
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from ..errors import SteeringError
from ..limits import Limits
from ..models.load import LM
from .store import StoredVector, VectorStore


def _number(x: float | None) -> float | None:
    """``x`` for JSON (``None`` for NaN or infinity)."""
    return None if x is None or not math.isfinite(x) else float(x)


class CostService:
    """Perplexity ratios and cached breakdown curves on the served model.

    Args:
        lm: the served model.
        store: the vector store (breakdowns are per stored vector).
        lock: held while the model runs here (the engine's ``model_lock``); ``None``: no lock.
        limits: the bounds on scored texts (default: the model's own).
        tok_lock: held around every tokenizer call (``None``: no lock).
    """

    def __init__(
        self,
        lm: LM,
        store: VectorStore,
        lock: threading.Lock | None = None,
        limits: Limits | None = None,
        tok_lock: threading.Lock | None = None,
    ) -> None:
        self.lm = lm
        self.store = store
        self.lock: AbstractContextManager[object] = lock if lock is not None else nullcontext()
        self.tok_lock: AbstractContextManager[object] = tok_lock if tok_lock is not None else nullcontext()
        self.limits = limits if limits is not None else Limits.for_model(lm)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="steerlab-cost")
        self._cache: dict[str, tuple[StoredVector, concurrent.futures.Future[dict[str, Any]]]] = {}
        self._cache_lock = threading.Lock()

    @property
    def available(self) -> bool:
        """Whether the model's weights are here (not with a vLLM engine)."""
        return self.lm.device.type != "meta"

    # ------------------------------------------------------------------ perplexity ratio
    def perplexity_ratio(self, prompt: str, steered: str, unsteered: str) -> dict[str, Any]:
        """Perplexity of ``steered`` over that of ``unsteered``, both under the unsteered model
        given ``prompt`` (the model text, chat template applied); blocking.

        Bounded before any forward pass: each text within ``max_text_chars`` (before it is
        tokenised), each scored sequence (prompt + continuation) within ``max_score_tokens``.

        Raises:
            LimitError: a text over those limits (the message names the limit).
        """
        from ..evaluate.likelihood import continuation_ids, continuation_nll_ids, perplexities

        lim = self.limits
        texts = {"prompt": prompt, "steered": steered, "unsteered": unsteered}
        for name, text in texts.items():
            lim.check_text(text, name)
        with self.tok_lock:  # the worker decodes with the same tokenizer
            seqs = [continuation_ids(self.lm, prompt, c) for c in (steered, unsteered)]
        for name, (ids, _) in zip(("steered", "unsteered"), seqs):
            lim.check_tokens(len(ids), f"prompt + {name}", "max_score_tokens")
        with self.lock:
            nlls = continuation_nll_ids(self.lm, seqs, progress=False)
        ppl_s, ppl_u = perplexities(nlls)
        ratio = ppl_s / ppl_u if math.isfinite(ppl_s) and math.isfinite(ppl_u) and ppl_u > 0 else float("nan")
        return {
            "object": "perplexity_ratio",
            "ratio": _number(ratio),
            "perplexity_steered": _number(ppl_s),
            "perplexity_unsteered": _number(ppl_u),
            "tokens_steered": nlls[0][1],
            "tokens_unsteered": nlls[1][1],
        }

    # ------------------------------------------------------------------ breakdown
    def breakdown_future(self, name: str) -> concurrent.futures.Future[dict[str, Any]]:
        """The breakdown of the stored vector ``name``: cached, or started now in the cost thread.

        Raises:
            StoreError: no such vector (``NotFound``) or a bad name.
        """
        stored = self.store.get(name)
        with self._cache_lock:
            hit = self._cache.get(name)
            if hit is not None and hit[0] is stored and not (hit[1].done() and hit[1].exception()):
                return hit[1]
            future = self._pool.submit(self._breakdown, stored)
            self._cache[name] = (stored, future)
            return future

    def _breakdown(self, stored: StoredVector) -> dict[str, Any]:
        from ..analysis.breakdown import breakdown_curve
        from ..data.demo import NEUTRAL

        out: dict[str, Any] = {"object": "steering_breakdown", "vector": stored.name, "texts": len(NEUTRAL)}
        try:
            # the model lock, then the tokenizer's (the worker's order): breakdown_curve tokenises
            with self.lock, self.tok_lock:
                rep = breakdown_curve(self.lm, stored.vector, NEUTRAL, progress=False)
        except SteeringError as exc:  # e.g. a token-wise vector: no curve, no marks
            return {**out, "available": False, "reason": str(exc), "breaks_at": {"positive": None, "negative": None}}
        neg = rep.breaking_point_negative
        return {
            **out,
            "available": True,
            "threshold": rep.threshold,
            "base_perplexity": _number(rep.base_perplexity),
            "breaks_at": {"positive": rep.breaking_point_positive, "negative": None if neg is None else -neg},
            "curve": [
                {"coefficient": c, "ppl_ratio": _number(r), "norm_ratio": _number(n)}
                for c, r, n in zip(rep.coefficients, rep.ppl_ratio, rep.norm_ratio)
            ],
        }

    def close(self) -> None:
        """Stop the cost thread (a running breakdown finishes first)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
