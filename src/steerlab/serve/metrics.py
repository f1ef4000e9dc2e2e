"""The server's counters, as JSON (``GET /metrics?format=json``) or in Prometheus' text format
(``GET /metrics``).

:class:`Metrics` is thread-safe: the worker thread records tokens, steps, batches and times to
first token; request handlers count outcomes. :meth:`Metrics.prometheus` renders everything with
``prometheus_client`` (one registry per server, nothing global), the queue depth and batch size
read from the engine at scrape time.

Example:
    >>> m = Metrics()
    >>> m.add_tokens(3); m.first_token(0.25); m.count_vectors(("happy",))
    >>> m.snapshot()["completion_tokens_total"]
    3
    >>> b"steerlab_time_to_first_token_seconds_count 1.0" in m.prometheus({"queue_length": 0, "running": 0})
    True
"""

from __future__ import annotations

import collections
import statistics
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Bucket bounds (seconds) of the time-to-first-token histogram."""


class Metrics:
    """Counters of one server (thread-safe), reported by ``GET /metrics``."""

    WINDOW_S = 60.0
    RECENT_TTFT = 1024  # times to first token kept for the JSON percentiles

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.counters: dict[str, int] = collections.defaultdict(int)
        self.vectors: dict[str, int] = collections.defaultdict(int)
        self.completion_tokens = 0
        self.prompt_tokens = 0
        self.busy_s = 0.0
        self.batches = 0
        self.batched_rows = 0
        self.steps = 0
        self.step_rows = 0
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._ttft: collections.deque[float] = collections.deque(maxlen=self.RECENT_TTFT)
        self.registry = CollectorRegistry(auto_describe=True)
        self.ttft = Histogram(
            "steerlab_time_to_first_token_seconds",
            "Seconds from a request's arrival to its first generated token.",
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self._live: Mapping[str, Any] = {}
        self._render = threading.Lock()  # one scrape at a time: each sees its own live values
        self.registry.register(_Collector(self))

    # ------------------------------------------------------------------ recording
    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name``."""
        with self._lock:
            self.counters[name] += n

    def count_vectors(self, names: Iterable[str]) -> None:
        """One more request steered by each of the store vectors ``names``."""
        with self._lock:
            for name in set(names):
                self.vectors[name] += 1

    def add_tokens(self, n: int) -> None:
        """Record ``n`` generated tokens (now)."""
        if n:
            now = time.monotonic()
            with self._lock:
                self.completion_tokens += n
                self._recent.append((now, n))

    def first_token(self, seconds: float) -> None:
        """Record one request's time to first token."""
        self.ttft.observe(seconds)
        with self._lock:
            self._ttft.append(seconds)

    def add_batch(self, rows: int, prompt_tokens: int, seconds: float = 0.0) -> None:
        """Record one prompt pass of ``rows`` requests (a batch, or requests joining a running
        batch), and ``seconds`` of busy time if the caller does not record it with :meth:`add_busy`."""
        with self._lock:
            self.batches += 1
            self.batched_rows += rows
            self.prompt_tokens += prompt_tokens
            self.busy_s += seconds

    def add_step(self, rows: int) -> None:
        """Record one decoding step of ``rows`` rows."""
        with self._lock:
            self.steps += 1
            self.step_rows += rows

    def add_busy(self, seconds: float) -> None:
        """Record time the worker spent running the model."""
        with self._lock:
            self.busy_s += seconds

    # ------------------------------------------------------------------ reading
    def snapshot(self) -> dict[str, Any]:
        """Everything, JSON-ready."""
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - self.WINDOW_S:
                self._recent.popleft()
            recent = sum(n for _, n in self._recent)
            uptime = now - self.started
            ttft = sorted(self._ttft)
            return {
                "uptime_s": round(uptime, 3),
                "requests": dict(self.counters),
                "vector_requests": dict(sorted(self.vectors.items())),
                "completion_tokens_total": self.completion_tokens,
                "prompt_tokens_total": self.prompt_tokens,
                "tokens_per_second": round(recent / max(1e-9, min(self.WINDOW_S, uptime)), 3),
                "tokens_per_second_busy": round(self.completion_tokens / self.busy_s, 3) if self.busy_s else 0.0,
                "batches_total": self.batches,
                "steps_total": self.steps,
                "step_rows_total": self.step_rows,
                "mean_batch_size": self._mean_batch_size(),
                "busy_s": round(self.busy_s, 3),
                "time_to_first_token_s": _summary(ttft),
            }

    def _mean_batch_size(self) -> float:
        """Rows per decoding step (per prompt pass for engines that count no steps)."""
        if self.steps:
            return round(self.step_rows / self.steps, 3)
        return round(self.batched_rows / self.batches, 3) if self.batches else 0.0

    def prometheus(self, live: Mapping[str, Any]) -> bytes:
        """Everything in Prometheus' text format; ``live`` adds the engine's current state
        (``queue_length``, ``running``, ``max_batch``, ``scheduler``, ``model``, ``vectors``)."""
        with self._render:
            self._live = dict(live)
            return bytes(generate_latest(self.registry))


def _summary(values: list[float]) -> dict[str, float | int]:
    """Count, mean, p50 and p95 (seconds) of sorted ``values``."""
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "mean": round(statistics.fmean(values), 4),
        "p50": round(values[len(values) // 2], 4),
        "p95": round(values[min(len(values) - 1, int(0.95 * len(values)))], 4),
    }


class _Collector(Collector):
    """The counters and gauges of one :class:`Metrics`, read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        snap = m.snapshot()
        live = m._live
        info = GaugeMetricFamily("steerlab_info", "The served model and scheduler.", labels=["model", "scheduler"])
        info.add_metric([str(live.get("model", "")), str(live.get("scheduler", ""))], 1)
        yield info
        for name, doc, key in (
            ("steerlab_queue_depth", "Requests waiting to start generating.", "queue_length"),
            ("steerlab_batch_size", "Rows generating now.", "running"),
            ("steerlab_max_batch", "The most rows generated together.", "max_batch"),
            ("steerlab_vectors", "Vectors in the store.", "vectors"),
        ):
            if key in live:
                yield GaugeMetricFamily(name, doc, value=float(live[key]))
        yield GaugeMetricFamily(
            "steerlab_tokens_per_second",
            f"Generated tokens per second over the last {m.WINDOW_S:g} s.",
            value=snap["tokens_per_second"],
        )
        yield GaugeMetricFamily(
            "steerlab_mean_batch_size",
            "Mean rows per decoding step since start (per batch for engines that count no steps).",
            value=snap["mean_batch_size"],
        )
        requests = CounterMetricFamily(
            "steerlab_requests",
            "Requests by event (accepted, rejected, cancelled, timed_out, completions, http_<status>, ...).",
            labels=["event"],
        )
        for event, n in sorted(snap["requests"].items()):
            requests.add_metric([event], n)
        yield requests
        vectors = CounterMetricFamily(
            "steerlab_vector_requests", "Requests steered by each store vector.", labels=["vector"]
        )
        for name, n in snap["vector_requests"].items():
            vectors.add_metric([name], n)
        yield vectors
        for name, doc, key in (
            ("steerlab_completion_tokens", "Generated tokens.", "completion_tokens_total"),
            ("steerlab_prompt_tokens", "Prompt tokens run through the model.", "prompt_tokens_total"),
            (
                "steerlab_batches",
                "Prompt passes (batches started, or requests joining a running batch).",
                "batches_total",
            ),
            ("steerlab_decode_steps", "Decoding steps.", "steps_total"),
            ("steerlab_busy_seconds", "Seconds the worker spent running the model.", "busy_s"),
        ):
            yield CounterMetricFamily(name, doc, value=snap[key])
