"""Soak: a real `edgereason serve` process under 16 concurrent clients and a mix of good and bad requests.

Every request has a deadline (no hangs), no response is a 5xx, the engine's sequences all come back, and
the server's resident memory does not grow between the first and the second half of the run.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import httpx
import openai
import pytest

from .test_server import QUESTION, Server, _start

CLIENTS = 16
REQUESTS = 300  # two halves of 150
DEADLINE_S = 90.0  # per request: a hang fails the test instead of stalling it
MAX_RSS_GROWTH = 0.10
MAX_TOKENS = 8  # per request (disconnecting streams ask for 16 and hang up early): keeps the run near 1-2 min
PROMPTS = ["What is 2 + 2?", "Name a color.", "Say hello.", "What is 12 + 7?", "Count to three."]


def _rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status")
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Mix:
    """One request of each kind; each returns the HTTP status (or raises on a transport failure)."""

    def __init__(self, server: Server) -> None:
        self.base = server.base
        self.client = server.client(timeout=DEADLINE_S)
        self.url = f"{server.base}/v1/chat/completions"

    def kinds(self) -> dict[str, Callable[[random.Random], int]]:
        return {
            "chat": self.chat,
            "chat_stream": self.chat_stream,
            "chat_n2": self.chat_n2,
            "completion": self.completion,
            "self_consistency": self.self_consistency,
            "disconnect": self.disconnect,
            "malformed": self.malformed,
            "wrong_type": self.wrong_type,
            "bad_value": self.bad_value,
        }

    def _messages(self, rng: random.Random) -> list[dict[str, str]]:
        return [{"role": "user", "content": rng.choice(PROMPTS)}]

    def chat(self, rng: random.Random) -> int:
        res = self.client.chat.completions.create(
            model="default",
            messages=self._messages(rng),  # type: ignore[arg-type]
            max_tokens=rng.randint(1, MAX_TOKENS),
            temperature=rng.choice([0.0, 0.8]),
        )
        assert res.choices[0].message.content is not None
        return 200

    def chat_stream(self, rng: random.Random) -> int:
        stream = self.client.chat.completions.create(
            model="default",
            messages=self._messages(rng),  # type: ignore[arg-type]
            max_tokens=rng.randint(1, MAX_TOKENS),
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = [c.usage for c in stream if c.usage is not None]
        assert usage and usage[0].completion_tokens <= MAX_TOKENS
        return 200

    def chat_n2(self, rng: random.Random) -> int:
        res = self.client.chat.completions.create(
            model="default",
            messages=self._messages(rng),
            max_tokens=MAX_TOKENS,
            n=2,
            seed=rng.randint(0, 99),  # type: ignore[arg-type]
        )
        assert [c.index for c in res.choices] == [0, 1]
        return 200

    def completion(self, rng: random.Random) -> int:
        res = self.client.completions.create(
            model="default", prompt=rng.choice(PROMPTS), max_tokens=rng.randint(1, MAX_TOKENS), temperature=0
        )
        assert res.choices[0].text is not None
        return 200

    def self_consistency(self, rng: random.Random) -> int:
        r = httpx.post(
            self.url,
            json={"messages": self._messages(rng), "max_tokens": MAX_TOKENS, "self_consistency": 2},
            timeout=DEADLINE_S,
        )
        if r.status_code == 200:
            assert r.json()["self_consistency"]["samples_requested"] == 2
        return r.status_code

    def disconnect(self, rng: random.Random) -> int:
        body = {"messages": self._messages(rng), "max_tokens": 16, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", self.url, json=body, timeout=DEADLINE_S) as r:
            lines = r.iter_lines()
            for _ in range(rng.randint(1, 4)):  # then hang up mid-stream
                next(lines, None)
            return r.status_code

    def malformed(self, rng: random.Random) -> int:
        body = rng.choice([b"{not json", b"[1, 2]", b'{"messages": "hi"}', b'{"messages": [{"role": 1}]}'])
        r = httpx.post(
            self.url, content=body, headers={"content-type": "application/json"}, timeout=DEADLINE_S
        )
        assert r.status_code == 400, r.text
        return r.status_code

    def wrong_type(self, rng: random.Random) -> int:
        body = json.dumps({"messages": self._messages(rng), "max_tokens": 2}).encode()
        ctype = rng.choice(["text/plain", "application/x-www-form-urlencoded"])
        r = httpx.post(self.url, content=body, headers={"content-type": ctype}, timeout=DEADLINE_S)
        assert r.status_code == 415, r.text
        return r.status_code

    def bad_value(self, rng: random.Random) -> int:
        extra = rng.choice([{"temperature": -1}, {"max_tokens": 0}, {"n": 100}, {"logit_bias": {"x": 1}}])
        r = httpx.post(self.url, json={"messages": QUESTION, **extra}, timeout=DEADLINE_S)
        assert r.status_code == 400, r.text
        return r.status_code


WEIGHTS = {
    "chat": 6,
    "chat_stream": 5,
    "chat_n2": 2,
    "completion": 3,
    "self_consistency": 1,
    "disconnect": 2,
    "malformed": 1,
    "wrong_type": 1,
    "bad_value": 1,
}


def _run_half(mix: Mix, rng: random.Random, count: int) -> list[tuple[str, int, float]]:
    kinds = mix.kinds()
    plan = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()), k=count)
    seeds = [rng.randrange(2**32) for _ in plan]

    def one(kind: str, seed: int) -> tuple[str, int, float]:
        t0 = time.monotonic()
        try:
            status = kinds[kind](random.Random(seed))
        except openai.APIStatusError as exc:  # the openai client raises for 4xx/5xx
            status = exc.status_code
        return kind, status, time.monotonic() - t0

    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(one, k, s) for k, s in zip(plan, seeds)]
        done, pending = wait(futures, timeout=DEADLINE_S * 2)
        assert not pending, f"{len(pending)} requests hung"
    return [f.result() for f in futures]


def _drained(server: Server, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (
        server.metric("live_sequences") or server.metric("running_requests") or server.metric("queue_depth")
    ):
        assert time.monotonic() < deadline, "sequences still live after every request finished"
        time.sleep(0.1)


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from _start("--max-sequences", "16", "--max-queue", "64")


def test_soak(server: Server) -> None:
    mix = Mix(server)
    rng = random.Random(19)
    t0 = time.monotonic()
    first = _run_half(mix, rng, REQUESTS // 2)
    _drained(server)
    rss_first = _rss_bytes(server.proc.pid)
    second = _run_half(mix, rng, REQUESTS - REQUESTS // 2)
    _drained(server)
    rss_second = _rss_bytes(server.proc.pid)
    wall = time.monotonic() - t0

    results = first + second
    statuses = Counter(status for _, status, _ in results)
    assert not [s for s in statuses if s >= 500], statuses
    assert len(results) == REQUESTS
    kinds = Counter(kind for kind, _, _ in results)
    assert set(kinds) >= set(WEIGHTS), kinds  # every kind ran
    served = [lat for kind, status, lat in results if status == 200 and kind != "disconnect"]
    assert server.metric("live_sequences") == 0
    growth = (rss_second - rss_first) / rss_first
    p50, p99 = _percentile(served, 50), _percentile(served, 99)
    print(
        f"\nsoak: {len(results)} requests from {CLIENTS} clients in {wall:.1f} s; statuses {dict(statuses)}; "
        f"200s p50 {p50:.2f} s p99 {p99:.2f} s; server RSS {rss_first / 2**20:.1f} MB after the first half, "
        f"{rss_second / 2**20:.1f} MB after the second ({growth:+.1%})"
    )
    assert growth <= MAX_RSS_GROWTH, (rss_first, rss_second)
