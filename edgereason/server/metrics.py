"""``/metrics`` through prometheus_client: request and token counters, latency histograms, engine gauges.

Each app has its own registry (no global state). Requests are labelled by route template, never by the
raw path, so a client cannot forge lines or grow the series. Besides EdgeReason's own names, the
``edgereason:*`` metrics mirror vLLM's (``vllm:num_requests_running`` ...) for existing dashboards.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ..result import Usage
    from ..surface import ServedEngine

PREFIX = "edgereason"
VLLM_PREFIX = "edgereason:"  # vLLM's names with our prefix
RATE_WINDOW_S = 10.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_GAP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Counters and histograms the handlers update; gauges read from ``engine()`` at scrape time."""

    def __init__(self, engine: Callable[[], ServedEngine | None]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "HTTP requests by route template and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            f"{PREFIX}_prompt_tokens", "prompt tokens of finished requests", registry=r
        )
        self.completion_tokens = Counter(
            f"{PREFIX}_completion_tokens", "generated tokens (reasoning + answer)", registry=r
        )
        self.reasoning_tokens = Counter(
            f"{PREFIX}_reasoning_tokens", "generated tokens inside thinking", registry=r
        )
        self.v_prompt_tokens = Counter(
            f"{VLLM_PREFIX}prompt_tokens", "prefill tokens processed", ["model_name"], registry=r
        )
        self.v_generation_tokens = Counter(
            f"{VLLM_PREFIX}generation_tokens", "generation tokens processed", ["model_name"], registry=r
        )
        self.ttft = Histogram(
            f"{VLLM_PREFIX}time_to_first_token_seconds",
            "request arrival to its first generated text",
            ["model_name"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.itl = Histogram(
            f"{VLLM_PREFIX}inter_token_latency_seconds",
            "time between successive pieces of generated text of a request",
            ["model_name"],
            buckets=TOKEN_GAP_BUCKETS_S,
            registry=r,
        )
        self.e2e = Histogram(
            f"{VLLM_PREFIX}e2e_request_latency_seconds",
            "request arrival to its last token, finished requests",
            ["model_name"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self._engine = _EngineCollector(engine)
        r.register(self._engine)

    def count_request(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()

    def count_usage(self, usage: Usage, model: str) -> None:
        self.prompt_tokens.inc(usage.prompt_tokens)
        self.completion_tokens.inc(usage.completion_tokens)
        self.reasoning_tokens.inc(usage.reasoning_tokens)
        self.v_prompt_tokens.labels(model_name=model).inc(usage.prompt_tokens)
        self.v_generation_tokens.labels(model_name=model).inc(usage.completion_tokens)

    def timer(self, model: str) -> RequestTimer:
        return RequestTimer(self, model)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """Latencies of one request: started at arrival, ``chunk()`` per piece of text, ``finish()`` at the end."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.metrics = metrics
        self.model = model
        self.start = time.monotonic()
        self._last: float | None = None
        # the labelled children once per request, not a registry lookup per token
        self._ttft = metrics.ttft.labels(model_name=model)
        self._itl = metrics.itl.labels(model_name=model)

    def chunk(self) -> None:
        now = time.monotonic()
        if self._last is None:
            self._ttft.observe(now - self.start)
        else:
            self._itl.observe(now - self._last)
        self._last = now

    def finish(self, usage: Usage) -> None:
        self.metrics.e2e.labels(model_name=self.model).observe(time.monotonic() - self.start)
        self.metrics.count_usage(usage, self.model)


class _EngineCollector(Collector):
    """Gauges read from the engine at scrape time (nothing to keep in sync)."""

    def __init__(self, engine: Callable[[], ServedEngine | None]) -> None:
        self._get = engine
        self._lock = threading.Lock()
        self._decoded: deque[tuple[float, int]] = deque()

    def decode_rate(self, decoded_total: int) -> float:
        """Decoded tokens per second over the last ``RATE_WINDOW_S`` (sampled at each scrape)."""
        now = time.monotonic()
        with self._lock:
            self._decoded.append((now, decoded_total))
            while len(self._decoded) > 2 and now - self._decoded[1][0] >= RATE_WINDOW_S:
                self._decoded.popleft()
            t0, n0 = self._decoded[0]
        return (decoded_total - n0) / (now - t0) if now > t0 else 0.0

    def collect(self) -> Iterator[Metric]:
        engine = self._get()
        yield GaugeMetricFamily(
            f"{PREFIX}_model_loaded", "1 once the model is loaded", value=1 if engine is not None else 0
        )
        if engine is None:
            return
        stopped = engine.stopped_reason
        yield GaugeMetricFamily(
            f"{PREFIX}_engine_up",
            "1 while the engine thread serves, 0 once it stopped",
            value=0 if stopped else 1,
        )
        decoded = engine.decoded_tokens
        yield CounterMetricFamily(f"{PREFIX}_decoded_tokens", "tokens decoded by the engine", value=decoded)
        yield GaugeMetricFamily(
            f"{PREFIX}_decode_tokens_per_second",
            "decode rate over the last 10 s",
            value=self.decode_rate(decoded),
        )
        waiting, running, live = engine.queue_depth, engine.running_requests, engine.live_sequences
        yield GaugeMetricFamily(f"{PREFIX}_queue_depth", "requests waiting for sequence slots", value=waiting)
        yield GaugeMetricFamily(f"{PREFIX}_running_requests", "requests being decoded", value=running)
        yield GaugeMetricFamily(f"{PREFIX}_live_sequences", "sequences holding KV slots", value=live)
        slots = engine.capabilities.max_sequences

        def by_model(name: str, help_: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(f"{VLLM_PREFIX}{name}", help_, labels=["model_name"])
            family.add_metric([engine.name], value)
            return family

        yield by_model("num_requests_running", "requests being decoded", running)
        yield by_model("num_requests_waiting", "requests waiting for sequence slots", waiting)
        yield by_model(
            "kv_cache_usage_perc", "KV-cache usage: live sequences / sequence slots (1 = full)", live / slots
        )
