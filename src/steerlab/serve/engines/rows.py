"""One generated row of the server, whatever schedules it: its text stream and its sampler.

:class:`RowStream` takes a row's tokens one at a time, decodes them incrementally and sends text
deltas to the request (holding back what could still turn into a stop string or an incomplete
multi-byte character); it ends the row on the end-of-sequence token, a stop string,
``max_tokens``, the deadline or a cancelled client. :class:`Sampler` picks a row's next token
from its logits: argmax for greedy rows, a draw from the row's own seeded generator for sampled
ones, so a request gives the same text whatever rows it shares a step with.
:func:`choose_tokens` does this for a whole ``[B, V]`` logits batch.

:func:`shared_steerings` lets rows that ask for the same steering share one steering object, so
the engine sets it up once for all of them.

Both local schedulers use them: the batch-at-a-time one (:mod:`steerlab.serve.engines.batch`)
inside ``generate`` (as a streamer and a logits processor), the continuous one
(:mod:`steerlab.serve.engines.continuous`) in its own decoding loop.

Example:
    >>> stream = RowStream(job, lm.tokenizer, threading.Lock(), {2}, metrics)  # doctest: +SKIP
    >>> token = choose_tokens(logits, [Sampler(job.params, {2}, logits.device)])[0]  # doctest: +SKIP
    >>> stream.push(token)  # True once the row is finished  # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Protocol

import torch

from ...core.condition import Condition
from ...core.steering import Composite, Steering, SteeringLike, compose
from ...runtime.finite import finite, peaks
from ...runtime.plan import as_steerings
from ..jobs import Delta, Done, Failed, GenParams, Job

if TYPE_CHECKING:
    from ..metrics import Metrics


class Decoder(Protocol):
    """What a row needs of the tokenizer: turning its token ids into text."""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str:
        """The text of ``token_ids``."""
        ...


class RowStream:
    """The text of one row (one :class:`~steerlab.serve.jobs.Job`), token by token.

    Args:
        job: the row's job (its events go to the request).
        tokenizer: the model's tokenizer (decodes the row's ids).
        tok_lock: held around every tokenizer call.
        eos: end-of-sequence token ids.
        metrics: the server's metrics (tokens, time to first token, outcomes).
        release: called once when the row finishes, before its last event.
    """

    def __init__(
        self,
        job: Job,
        tokenizer: Decoder,
        tok_lock: threading.Lock,
        eos: AbstractSet[int],
        metrics: Metrics,
        release: Callable[[], None] = lambda: None,
    ) -> None:
        self.job = job
        self.tokenizer = tokenizer
        self.tok_lock = tok_lock
        self.eos = eos
        self.metrics = metrics
        self.release = release
        self.ids: list[int] = []
        self.sent = ""
        self.done = False
        self.max_stop = max((len(s) for s in job.params.stop), default=0)

    def _decode(self) -> str:
        with self.tok_lock:
            return str(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def push(self, tok: int) -> bool:
        """Add the row's next token (send what text is ready); True when the row is now finished."""
        if self.done:
            return True
        job, params = self.job, self.job.params
        if job.cancelled.is_set():
            return self.finish("cancelled")
        if not self.ids:
            self.metrics.first_token(time.monotonic() - job.submitted)
        if tok in self.eos and not params.ignore_eos:
            return self.finish("stop")
        self.ids.append(int(tok))
        self.metrics.add_tokens(1)  # before the row's events: a client may read /metrics right after
        text = self._decode()
        if params.stop:
            hits = [p for p in (text.find(s, max(0, len(self.sent) - self.max_stop)) for s in params.stop) if p >= 0]
            if hits:
                return self.finish("stop", text[: min(hits)])
        if len(self.ids) >= params.max_tokens:
            return self.finish("length", text)
        if time.monotonic() > job.deadline:
            return self.finish("timeout", text)
        ready = len(text) - max(0, self.max_stop - 1)
        while ready > len(self.sent) and text[ready - 1] == "\ufffd":
            ready -= 1  # an incomplete multi-byte character: wait for its other bytes
        if ready > len(self.sent) and text.startswith(self.sent):
            job.send(Delta(job.index, text[len(self.sent) : ready]))
            self.sent = text[:ready]
        return False

    def finish(self, reason: str, text: str | None = None) -> bool:
        """End the row (``stop``, ``length``, ``timeout`` or ``cancelled``); returns True."""
        if self.done:
            return True
        self.done = True
        self.release()
        job = self.job
        if reason == "cancelled":
            self.metrics.count("cancelled")
            job.finished = True
            return True
        if text is None:
            text = self._decode()
        if text.startswith(self.sent) and len(text) > len(self.sent):
            job.send(Delta(job.index, text[len(self.sent) :]))
        self.sent = text
        if reason == "timeout":
            self.metrics.count("timed_out")
            job.send(Failed(job.index, 504, "the request ran past the server's request timeout", "timeout"))
            return True
        job.send(Done(job.index, text, reason, len(job.prompt_ids), len(self.ids)))
        return True

    def fail(self, exc: BaseException) -> None:
        """Report a failed generation to the row's request (nothing if it is finished)."""
        self._fail(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error")

    def overflow(self) -> None:
        """End the row because its logits are NaN or infinite: its steering overflowed the model (400),
        or, for an unsteered row, the model itself did (500). Other rows go on."""
        if self.job.steering is not None:
            self._fail(
                400,
                "the steering made the model's logits NaN or infinite for this request (it overflows "
                "the model): lower the coefficient, or check the vector, whose values may be far larger "
                "than the model's activations",
                "steering_overflow",
            )
        else:
            self._fail(500, "the model's logits are NaN or infinite for this request", "non_finite_logits")

    def _fail(self, status: int, message: str, code: str) -> None:
        if self.done:
            return
        self.done = True
        self.release()
        self.metrics.count(code)
        self.job.send(Failed(self.job.index, status, message, code))


class Sampler:
    """How one row picks its tokens: greedy, or drawn from its own seeded generator.

    Args:
        params: the row's temperature, top-p, seed and ``ignore_eos``.
        eos: end-of-sequence token ids (masked out when ``ignore_eos``).
        device: where the row's logits are.
    """

    def __init__(self, params: GenParams, eos: AbstractSet[int], device: torch.device) -> None:
        self.params = params
        self.eos = sorted(eos) if params.ignore_eos else []
        self.generator: torch.Generator | None = None
        if params.temperature > 0:
            self.generator = torch.Generator(device=device)
            seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, ()).item())
            self.generator.manual_seed(seed)

    @property
    def greedy(self) -> bool:
        """Whether the row takes the argmax of its (eos-masked) scores."""
        return self.generator is None

    def draw(self, scores: torch.Tensor) -> int:
        """A token drawn from one row's ``[V]`` float scores (eos already masked)."""
        assert self.generator is not None
        p = self.params
        probs = torch.softmax(scores.float() / p.temperature, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(-1) - sorted_probs < p.top_p
            keep[0] = True
            mask = torch.zeros_like(probs, dtype=torch.bool)
            mask[order[keep]] = True
            probs = torch.where(mask, probs, torch.zeros_like(probs))
            probs = probs / probs.sum()
        return int(torch.multinomial(probs, 1, generator=self.generator).item())


def mask_eos(scores: torch.Tensor, samplers: Sequence[Sampler]) -> torch.Tensor:
    """``scores`` (``[B, V]``) with the eos tokens of ``ignore_eos`` rows at ``-inf`` (a copy when any)."""
    if not any(s.eos for s in samplers):
        return scores
    scores = scores.clone()
    for i, s in enumerate(samplers):
        if s.eos:
            scores[i, s.eos] = float("-inf")
    return scores


def choose_tokens(logits: torch.Tensor, samplers: Sequence[Sampler]) -> list[int | None]:
    """Each row's next token from the ``[B, V]`` logits of its last position; ``None`` for a row
    whose logits are NaN or infinite (:mod:`steerlab.runtime.finite`: one reduction gives both the check
    and the greedy tokens, one transfer brings them over). Broken rows are never sampled from."""
    scores = mask_eos(logits.float(), samplers)
    values, greedy = peaks(scores)
    picked = torch.where(finite(values), greedy, -1).tolist()
    out: list[int | None] = []
    for i, (tok, s) in enumerate(zip(picked, samplers, strict=True)):
        out.append(None if tok < 0 else int(tok) if s.greedy else s.draw(scores[i]))
    return out


def condition_key(s: Steering) -> tuple[int, int, float, str] | None:
    """What makes two steerings' conditions (CAST) decide alike: direction, layer, threshold, comparator."""
    c = s.condition
    return None if c is None else (id(c.vector), c.at, c.threshold, c.comparator)


def row_conditions(steering: SteeringLike | None) -> list[Condition | None]:
    """The condition of each part of a row's steering (``None`` for unconditional parts)."""
    return [s.condition for s in as_steerings(steering)]


def shared_steerings(steerings: Sequence[SteeringLike | None]) -> list[Composite | None]:
    """The rows' steerings, with rows that ask for the same one (same vectors, coefficients,
    layers, positions, operators and conditions, in the same order) sharing one object.

    Each request builds its own steering objects; :func:`steerlab.steer_rows` sets up each object
    once for the rows that hold it, so sharing them makes a batch of many requests over a few
    vectors as cheap to steer as a batch of a few.
    """
    seen: dict[tuple[tuple[Hashable, ...], ...], Composite] = {}
    out: list[Composite | None] = []
    for item in steerings:
        parts = as_steerings(item)
        if not parts:
            out.append(None)
            continue
        key = tuple((id(s.vector), s.coefficient, s.active_layers, s.where, id(s.op), condition_key(s)) for s in parts)
        out.append(seen.setdefault(key, compose(*parts)))
    return out
