"""Prometheus text for ``/metrics``: request and token counters plus live engine gauges."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..engine import Engine
    from ..result import Usage

PREFIX = "edgereason"
RATE_WINDOW_S = 10.0


class Metrics:
    """Counters the handlers bump; gauges read from the engine at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.reasoning_tokens = 0
        self._decoded: deque[tuple[float, int]] = deque()

    def count_request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def count_usage(self, usage: Usage) -> None:
        with self._lock:
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens
            self.reasoning_tokens += usage.reasoning_tokens

    def decode_rate(self, decoded_total: int) -> float:
        """Decoded tokens per second over the last ``RATE_WINDOW_S`` (sampled at each scrape)."""
        now = time.monotonic()
        with self._lock:
            self._decoded.append((now, decoded_total))
            while len(self._decoded) > 2 and now - self._decoded[1][0] >= RATE_WINDOW_S:
                self._decoded.popleft()
            t0, n0 = self._decoded[0]
        return (decoded_total - n0) / (now - t0) if now > t0 else 0.0

    def render(self, engine: Engine | None) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {PREFIX}_{name} {help_}")
            lines.append(f"# TYPE {PREFIX}_{name} {kind}")
            lines.extend(f"{PREFIX}_{name}{labels} {value:g}" for labels, value in samples)

        with self._lock:
            reqs = sorted(self.requests.items())
            prompt, completion, reasoning = self.prompt_tokens, self.completion_tokens, self.reasoning_tokens
        metric(
            "requests_total",
            "counter",
            "HTTP requests by endpoint and status",
            [(f'{{endpoint="{e}",status="{s}"}}', n) for (e, s), n in reqs] or [("", 0)],
        )
        metric("prompt_tokens_total", "counter", "prompt tokens of finished requests", [("", prompt)])
        metric(
            "completion_tokens_total", "counter", "generated tokens (reasoning + answer)", [("", completion)]
        )
        metric("reasoning_tokens_total", "counter", "generated tokens inside thinking", [("", reasoning)])
        if engine is not None:
            decoded = engine.scheduler.decoded_tokens
            metric("decoded_tokens_total", "counter", "tokens decoded by the engine", [("", decoded)])
            metric(
                "decode_tokens_per_second",
                "gauge",
                "decode rate over the last 10 s",
                [("", self.decode_rate(decoded))],
            )
            metric("queue_depth", "gauge", "requests waiting for sequence slots", [("", engine.queue_depth)])
            metric("running_requests", "gauge", "requests being decoded", [("", engine.running_requests)])
            metric("live_sequences", "gauge", "sequences holding KV slots", [("", engine.live_sequences)])
        metric("model_loaded", "gauge", "1 once the model is loaded", [("", 1 if engine is not None else 0)])
        return "\n".join(lines) + "\n"
