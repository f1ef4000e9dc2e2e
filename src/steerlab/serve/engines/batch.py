"""Batch at a time (``--scheduler batch``): the worker takes up to ``max_batch`` waiting requests,
pads their prompts on the left and runs ONE ``generate`` call with one steering per row
(:func:`steerlab.steer_rows`, :func:`steerlab.runtime.passes.hf_generate`). A request that
arrives meanwhile waits for the whole batch to end.

A batch that is not full waits until no request has arrived for ``batch_wait_ms`` (at most ten
times that in all: :meth:`~steerlab.serve.engines.queue.JobQueue.take`), so that a burst of
concurrent requests lands in one batch. Inside ``generate`` each row streams its text
(:class:`_Tracker`, a streamer and stopping criterion) and samples with its own settings
(:class:`_RowSampler`, a logits processor).

Example:
    >>> BatchScheduler(worker).run()  # the worker thread's loop  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ...models.tokens import pad_token_ids
from ...runtime.finite import finite, peaks
from ...runtime.passes import hf_generate
from ...runtime.session import steer_rows
from ..jobs import Job
from ..metrics import Metrics
from .rows import RowStream, Sampler, mask_eos, shared_steerings
from .worker import Worker

log = logging.getLogger("steerlab.serve")


class _Tracker(BaseStreamer, StoppingCriteria):
    """Per-row streamer and stopping criterion of one ``generate`` batch."""

    def __init__(self, rows: Sequence[RowStream], metrics: Metrics) -> None:
        self.rows = list(rows)
        self.metrics = metrics
        self.done = torch.zeros(len(rows), dtype=torch.bool)
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        """Receive the prompt (first call, ignored) or the ``[B]`` tokens of one step."""
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        self.metrics.add_step(len(self.rows))  # every row of a generate call runs every step
        for i, tok in enumerate(value.reshape(-1).tolist()):
            if not self.rows[i].done and self.rows[i].push(tok):
                self.done[i] = True

    def end(self) -> None:
        """Called by ``generate`` when it stops: rows still open ran to the batch's length."""
        for row in self.rows:
            row.finish("cancelled" if row.job.cancelled.is_set() else "length")

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.Tensor:
        """Per-row "is done" flags for ``generate``'s stopping logic."""
        return self.done.to(input_ids.device)


class _RowSampler(LogitsProcessor):
    """The rows' :class:`~steerlab.serve.engines.rows.Sampler` inside ``generate``: ``ignore_eos``
    rows lose their eos scores, and a sampled row's scores become ``-inf`` except at its drawn
    token, so ``generate``'s greedy argmax picks exactly that token; greedy rows are left alone.

    A row whose scores are NaN or infinite (one reduction per step, :mod:`steerlab.runtime.finite`) fails
    alone: its request gets the error, the tracker stops it, and its scores are replaced so that
    nothing is sampled from them; the other rows go on."""

    def __init__(self, samplers: Sequence[Sampler], tracker: _Tracker) -> None:
        self.samplers = list(samplers)
        self.tracker = tracker

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = mask_eos(scores, self.samplers)
        ok = finite(peaks(scores)[0])
        bad = set() if bool(ok.all()) else set((~ok).nonzero().flatten().tolist())
        for i in bad:
            self.tracker.rows[i].overflow()
            self.tracker.done[i] = True
        drawn = [(i, s.draw(scores[i])) for i, s in enumerate(self.samplers) if not s.greedy and i not in bad]
        if drawn or bad:
            scores = scores.clone()
            for i, tok in [*drawn, *((i, 0) for i in bad)]:
                scores[i] = float("-inf")
                scores[i, tok] = 0.0
        return scores


class BatchScheduler:
    """The batch-at-a-time loop of one :class:`~steerlab.serve.engines.worker.Worker` (run in its thread).

    Args:
        worker: the queue, the model and its lock, eos and pad ids, the metrics.
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.lm = worker.lm
        self.metrics = worker.metrics

    def run(self) -> None:
        """Serve batch after batch until the queue closes."""
        queue = self.worker.queue
        while True:
            batch = queue.take(self.worker.settings.max_batch, block=True)
            if batch is None:
                return
            if not batch:
                continue
            start = time.monotonic()
            try:
                with self.worker.model_lock:
                    self._run(batch)
            except BaseException:  # the worker must survive anything a batch does
                log.exception("batch failed")
            finally:
                self.metrics.add_busy(time.monotonic() - start)
                queue.release_all()

    def _run(self, batch: list[Job]) -> None:
        """One batched, per-row steered ``generate`` call (same defaults as :func:`steerlab.generate`)."""
        worker = self.worker
        rows = [worker.stream(j) for j in batch]
        tracker = _Tracker(rows, self.metrics)
        try:
            ids, mask = pad_token_ids([j.prompt_ids for j in batch], worker.pad_id, "left")
            ids, mask = ids.to(self.lm.device), mask.to(self.lm.device)
            self.metrics.add_batch(len(batch), sum(len(j.prompt_ids) for j in batch))
            samplers = [worker.sampler(j, ids.device) for j in batch]
            kwargs: dict[str, Any] = {
                "do_sample": False,
                "temperature": None,
                "top_p": None,
                "top_k": None,
                "pad_token_id": worker.pad_id,
                "max_new_tokens": max(j.params.max_tokens for j in batch),
                "streamer": tracker,
                "stopping_criteria": StoppingCriteriaList([tracker]),
                "logits_processor": LogitsProcessorList([_RowSampler(samplers, tracker)]),
            }
            steerings = shared_steerings([j.steering for j in batch])
            with steer_rows(self.lm, steerings, prompt_length=mask.sum(-1)), torch.inference_mode():
                hf_generate(self.lm, ids, mask, **kwargs)
        except Exception as exc:
            log.exception("generation failed")
            for row in rows:
                row.fail(exc)
            return
        tracker.end()
