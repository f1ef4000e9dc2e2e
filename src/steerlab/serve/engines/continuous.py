"""Continuous batching: requests join the running batch at the next decoding step and leave it
as soon as they finish, each with its own steering.

The worker runs its own decoding loop instead of ``model.generate``. Each turn of the loop:

1. **admit** — waiting requests (as many as fit under ``max_batch``) run their prompts in one
   forward call, left-padded, steered with their own rows (:func:`steerlab.steer_rows` with
   their ``prompt_length``); each one's first token is sampled from that call's logits and sent
   at once. A row's conditions (CAST) are decided in that call, on its own prompt, and handed to
   every later decoding session of the batch (``steer_rows(..., decided=...)``). Their KV cache
   is then merged into the running batch's: both are left-padded to a common length with empty
   positions (masked out by attention-mask zeros) and concatenated along the batch
   (:func:`steerlab.runtime.hf.shift_cache`, :func:`steerlab.runtime.hf.append_cache_rows`);
2. **step** — one token for every row: a one-token forward with a 2-D attention mask over the
   cache and each row's own ``position_ids`` (its count of real tokens, so left padding never
   shifts a row), under one steering session for the current rows (``steer_rows(...,
   generating=True)``: the engine's one-token fast path), rebuilt only when the row set changes;
   each row samples with its own settings (:mod:`steerlab.serve.engines.rows`) and streams its text;
3. **leave** — finished or cancelled rows are dropped from the cache
   (:func:`steerlab.runtime.hf.select_cache_rows`), and the padding no row needs any more is trimmed.

A row's tokens are those of the same request served alone (greedy): its steering sees its own
prompt length and token positions whatever the batch, padding never reaches a real token, and
its sampler is its own.

Models whose caches cannot be merged this way (sliding-window, static or other non-dynamic
caches; a forward without ``position_ids`` or a KV cache) are served batch at a time instead:
:func:`unsupported` says why.

Every forward call goes through :func:`steerlab.runtime.passes.forward`.

:class:`~steerlab.serve.engines.compiled.CompiledScheduler` extends this loop (``--compiled on``):
where prefilled rows go (:meth:`ContinuousScheduler._join`), how many rows run
(:meth:`ContinuousScheduler.running`), the step and the failure of a step
(:meth:`ContinuousScheduler._abort`) are its points of extension.

Example:
    >>> ContinuousScheduler(worker).run()  # the worker thread's loop  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch

from ...core.condition import Condition
from ...models.load import LM
from ...models.tokens import pad_token_ids, position_ids
from ...runtime import hf
from ...runtime.passes import forward
from ...runtime.session import steer_rows
from ..jobs import Job
from .rows import RowStream, Sampler, choose_tokens, row_conditions, shared_steerings
from .worker import Worker

log = logging.getLogger("steerlab.serve")


def unsupported(lm: LM) -> str | None:
    """Why continuous batching cannot serve ``lm`` (``None``: it can).

    Runs one one-token forward call (no steering) to see which cache the model fills.
    """
    model = lm.model
    if hf.cache_keyword(model) is None:
        return "its forward takes no KV cache"
    if not hf.accepts(model, "position_ids"):
        return "its forward takes no position_ids"
    ids = torch.zeros((1, 1), dtype=torch.long, device=lm.device)
    try:
        with torch.inference_mode():
            out = forward(
                lm,
                ids,
                attention_mask=torch.ones_like(ids),
                position_ids=torch.zeros_like(ids),
                cache=hf.new_cache(model),
                use_cache=True,
                logits_to_keep=1,
            )
    except Exception as exc:  # a model that cannot even run this way is served batch at a time
        return f"a cached forward call failed ({type(exc).__name__}: {exc})"
    return hf.unmergeable_cache(hf.output_cache(out))


def _held(decision: torch.Tensor | None, row: int) -> bool:
    """Whether a condition held for ``row`` (no decision: its prompt was never read, so no)."""
    return decision is not None and bool(decision[row])


def _returned_cache(output: Any, passed: Any) -> Any:
    """The cache a forward call returned (the one passed, filled in place, if it returned none)."""
    cache = hf.output_cache(output)
    return passed if cache is None else cache


@dataclass(eq=False)
class Row:
    """One request in the running batch."""

    job: Job
    stream: RowStream
    sampler: Sampler
    pad: int = 0  # cache positions before the row's first real token
    token: int = 0  # the row's last sampled token: the next step's input
    decided: tuple[bool, ...] = ()  # per part of its steering: whether its condition (CAST) held on the prompt


class ContinuousScheduler:
    """The decoding loop of one :class:`~steerlab.serve.engines.worker.Worker` (run in its thread).

    Args:
        worker: the queue (``take``), the model and its lock, eos and pad ids, the metrics.
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.lm = worker.lm
        self.model = worker.lm.model
        self.metrics = worker.metrics
        self.max_batch = worker.settings.max_batch
        self.rows: list[Row] = []
        self.cache: Any = None
        self.width = 0  # positions in the cache (padding included)
        self.session: ExitStack | None = None  # steering of the current rows

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        """Serve until the queue closes and the running rows are finished."""
        try:
            with torch.inference_mode():
                while True:
                    running = self.running()
                    jobs = self.worker.queue.take(self.max_batch - running, block=not running)
                    if jobs is None and not self.running():
                        return
                    self._turn(jobs or [])
        finally:
            self._close_session()

    def _turn(self, jobs: list[Job]) -> None:
        """Admit ``jobs``, then one decoding step of every row."""
        start = time.monotonic()
        try:
            with self.worker.model_lock:  # other users of the model (serve.cost) wait for the turn
                if jobs:
                    self._admit(jobs)
                if self.running():
                    self._step()
        except Exception as exc:  # the worker must survive anything a step does
            log.exception("decoding step failed")
            self._abort(exc)
        finally:
            self.metrics.add_busy(time.monotonic() - start)

    # ------------------------------------------------------------------ admit
    def _admit(self, jobs: list[Job]) -> None:
        """Run the prompts of ``jobs``, send their first tokens and merge them into the batch."""
        self._close_session()  # the prompt call has its own steering
        rows = [Row(j, self.worker.stream(j), self.worker.sampler(j, self.lm.device)) for j in jobs]
        try:
            cache, logits, width = self._prefill(rows)
            tokens = choose_tokens(logits, [r.sampler for r in rows])
        except Exception as exc:  # these requests fail alone; the running batch goes on
            log.exception("prompt pass failed")
            for row in rows:
                row.stream.fail(exc)
            return
        keep: list[int] = []
        for i, (row, tok) in enumerate(zip(rows, tokens)):
            if tok is None:  # NaN/inf logits: this row fails alone, its cache is not merged
                row.stream.overflow()
                continue
            row.pad, row.token = width - len(row.job.prompt_ids), tok
            if not row.stream.push(tok):
                keep.append(i)
        if not keep:
            return
        joining = [rows[i] for i in keep]
        try:
            if len(keep) < len(rows):
                hf.select_cache_rows(cache, torch.tensor(keep))
            self._join(joining, cache, width)
        except Exception as exc:  # the running batch's cache may be half merged: the caller resets it
            for row in joining:
                row.stream.fail(exc)
            raise

    def running(self) -> int:
        """Rows generating now."""
        return len(self.rows)

    def _abort(self, exc: BaseException) -> None:
        """A step failed: every running row fails with ``exc``, and the batch starts afresh."""
        for row in self.rows:
            row.stream.fail(exc)
        self._reset()

    def _join(self, rows: list[Row], cache: Any, width: int) -> None:
        """Add the prefilled ``rows`` (whose cache, ``width`` positions long, is ``cache``) to the
        running rows."""
        self._merge(rows, cache, width)

    def _prefill(self, rows: list[Row]) -> tuple[Any, torch.Tensor, int]:
        """One steered forward call over the rows' left-padded prompts: ``(cache, [B, V] logits of
        each prompt's last token, padded length)``; each row's conditions (CAST) are decided here,
        on its own prompt, and kept in ``row.decided`` for its decoding steps."""
        jobs = [row.job for row in rows]
        ids, mask = pad_token_ids([j.prompt_ids for j in jobs], self.worker.pad_id, "left")
        ids, mask = ids.to(self.lm.device), mask.to(self.lm.device)
        cache = hf.new_cache(self.model)
        steerings = shared_steerings([j.steering for j in jobs])
        with steer_rows(self.lm, steerings, prompt_length=mask.sum(-1)) as session:
            out = forward(
                self.lm,
                ids,
                attention_mask=mask,
                position_ids=position_ids(mask),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        for i, (row, steering) in enumerate(zip(rows, steerings)):
            row.decided = tuple(c is not None and _held(session.decision(c), i) for c in row_conditions(steering))
        self.metrics.add_batch(len(jobs), int(mask.sum()))
        return _returned_cache(out, cache), out.logits[:, -1, :], int(ids.shape[1])

    def _merge(self, rows: list[Row], cache: Any, width: int) -> None:
        """Add ``rows`` (whose cache, ``width`` positions long, is ``cache``) to the running batch."""
        if not self.rows:
            self.rows, self.cache, self.width = rows, cache, width
        else:
            common = max(self.width, width)
            self._pad(self.rows, self.cache, common - self.width)
            self._pad(rows, cache, common - width)
            hf.append_cache_rows(self.cache, cache)
            self.rows += rows
            self.width = common
        self._trim()

    @staticmethod
    def _pad(rows: list[Row], cache: Any, n: int) -> None:
        hf.shift_cache(cache, n)
        for row in rows:
            row.pad += n

    def _trim(self) -> None:
        """Drop the leading cache positions that are padding in every row."""
        n = min(row.pad for row in self.rows)
        if n:
            self._pad(self.rows, self.cache, -n)
            self.width -= n

    # ------------------------------------------------------------------ step
    def _step(self) -> None:
        """One token for every row; finished rows leave."""
        if self.session is None:
            self._open_session()
        device = self.lm.device
        pads = torch.tensor([row.pad for row in self.rows], device=device)
        mask = (torch.arange(self.width + 1, device=device)[None, :] >= pads[:, None]).long()
        ids = torch.tensor([[row.token] for row in self.rows], device=device)
        out = forward(
            self.lm,
            ids,
            attention_mask=mask,
            position_ids=(self.width - pads)[:, None],
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache = _returned_cache(out, self.cache)
        self.width += 1
        self.metrics.add_step(len(self.rows))
        tokens = choose_tokens(out.logits[:, -1, :], [row.sampler for row in self.rows])
        keep: list[int] = []
        for i, (row, tok) in enumerate(zip(self.rows, tokens)):
            if tok is None:  # NaN/inf logits: this row fails and leaves; the others go on
                row.stream.overflow()
                continue
            row.token = tok
            if not row.stream.push(tok):
                keep.append(i)
        if len(keep) < len(self.rows):
            self._leave(keep)

    def _leave(self, keep: list[int]) -> None:
        """Keep only the rows ``keep`` (the others finished)."""
        self._close_session()
        if not keep:
            self._reset()
            return
        hf.select_cache_rows(self.cache, torch.tensor(keep))
        self.rows = [self.rows[i] for i in keep]
        self._trim()

    # ------------------------------------------------------------------ steering
    def _open_session(self) -> None:
        stack = ExitStack()
        lengths = torch.tensor([len(row.job.prompt_ids) for row in self.rows], device=self.lm.device)
        steerings = shared_steerings([row.job.steering for row in self.rows])
        decided: dict[Condition, torch.Tensor] = {}
        for i, (row, steering) in enumerate(zip(self.rows, steerings)):
            for c, held in zip(row_conditions(steering), row.decided):
                if c is not None:
                    decided.setdefault(c, torch.zeros(len(self.rows), dtype=torch.bool))[i] = held
        stack.enter_context(steer_rows(self.lm, steerings, prompt_length=lengths, generating=True, decided=decided))
        self.session = stack

    def _close_session(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            session.close()

    def _reset(self) -> None:
        self._close_session()
        self.rows, self.cache, self.width = [], None, 0
