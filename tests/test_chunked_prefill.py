"""Chunked prefill: a long prompt advances a chunk per step while others stream, and stays exact."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

import edgereason as er
from edgereason.backends.base import BatchItem, SamplingParams
from edgereason.scheduler import _chunk

from .scripted import ByteScriptBackend, ScriptedSampler, script_sampler

LONG = " ".join(f"Item {i}: the {i}th number is {i * 7 % 13}." for i in range(40)) + " What is item 5?"


def test_chunks_never_hold_a_lone_token() -> None:
    assert _chunk(2, 64, 512) == 2
    assert _chunk(65, 64, 512) == 65  # 64 would leave one alone
    assert _chunk(513, 512, 512) == 511
    assert _chunk(3, 2, 512) == 3
    for pending in range(2, 300):
        take = _chunk(pending, 16, 512)
        assert take >= 2 and pending - take != 1


@pytest.fixture(scope="module")
def eng(model_path) -> er.Engine:
    with er.load(model_path, n_ctx=1024, max_sequences=3, threads=2) as e:
        yield e


def test_long_prompt_beside_a_stream_is_exact_and_does_not_block_it(eng: er.Engine) -> None:
    msgs = [{"role": "user", "content": LONG}]
    n_prompt = len(eng.prepare(eng.render(msgs)).tokens)
    assert n_prompt > 4 * eng.scheduler.prefill_chunk
    alone = eng.chat(msgs, max_tokens=12, temperature=0.0, cache_prompt=False)
    steps0 = eng.scheduler.steps
    stream = eng.stream([{"role": "user", "content": "Count to twenty."}], max_tokens=200, temperature=0.0,
                        ignore_eos=True, cache_prompt=False)  # fmt: skip
    it = iter(stream)
    next(it)  # the stream is decoding
    long_job = eng.stream(msgs, max_tokens=12, temperature=0.0, cache_prompt=False)
    got_during_prefill = 0
    for _ in it:
        got_during_prefill += 1
        if got_during_prefill >= 3 * (n_prompt // eng.scheduler.prefill_chunk):
            break
    res = long_job.wait()
    stream.cancel()
    assert res.content == alone.content  # chunks of >= 2 tokens give the same logits as one call
    # The prompt took one chunk per step; the stream kept receiving tokens meanwhile.
    assert eng.scheduler.steps - steps0 >= n_prompt // eng.scheduler.prefill_chunk
    assert got_during_prefill >= n_prompt // eng.scheduler.prefill_chunk


# -- chunk size follows the measured costs (a scripted backend on a fake clock) ---------------------------
class CostedBackend(ByteScriptBackend):
    """Each decode call costs 20 ms + 1 ms per token on a fake clock (the scheduler's perf_counter)."""

    def __init__(self) -> None:
        super().__init__(
            max_sequences=2, chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}"
        )
        self.now = 0.0
        self.prompt_calls: list[int] = []  # tokens per multi-token call

    def make_sampler(self, params: SamplingParams) -> ScriptedSampler:
        return script_sampler(params.seed, "x" * 400)

    def decode(self, items: Sequence[BatchItem]) -> list[int]:
        n = sum(len(it.tokens) for it in items)
        self.now += 0.020 + 0.001 * n
        if len(items) == 1 and n > 1:
            self.prompt_calls.append(n)
        return super().decode(items)


def test_prefill_chunk_is_sized_to_bound_the_streams_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    """While a stream runs, each prompt chunk costs about prefill_stall_ratio x the stream's decode call.

    On this cost model a call of n tokens takes 20 + n ms: a 1-token call 21 ms, so 1.5 x 21 = 31.5 ms
    fits a chunk of ~11 tokens (the fixed point of the running averages), not the cap of 64."""
    from edgereason import scheduler as sched_mod

    backend = CostedBackend()
    monkeypatch.setattr(sched_mod.time, "perf_counter", lambda: backend.now)
    with er.Engine(backend) as eng:  # type: ignore[arg-type]
        stream = eng.stream([{"role": "user", "content": "go"}], max_tokens=400, seed=1, ignore_eos=True)
        it = iter(stream)
        next(it)
        prompt = "p" * 900
        res = eng.chat([{"role": "user", "content": prompt}], max_tokens=2, seed=2)
        stream.cancel()
    calls = backend.prompt_calls[-20:]
    assert res.usage.prompt_tokens >= 900 and len(backend.prompt_calls) > 40
    assert backend.prompt_calls[1] <= 64  # the first chunk beside the stream: the cap, before any timing
    assert all(9 <= c <= 14 for c in calls[:-1]), calls  # converged near 11.5 (the last chunk is the rest)
    stall = [(0.020 + 0.001 * c) / 0.021 for c in calls[:-1]]
    assert max(stall) <= 1.5 * 1.1


def test_prefill_limit_bounds() -> None:
    from edgereason.scheduler import Scheduler

    sched = Scheduler(CostedBackend())  # type: ignore[arg-type]
    assert sched._prefill_limit() == sched.prefill_chunk  # nothing measured yet: the cap
    sched._measure_prefill(64, 0.1)
    assert sched._prefill_limit() == sched.prefill_chunk  # no decode call measured yet: no budget
    sched._decode_call_s = 0.02
    for _ in range(40):
        sched._measure_prefill(20, 0.02)  # 20 tokens per decode call's time: the budget (1.5x) fits 30
    assert sched._prefill_limit() == 30
    for _ in range(40):
        sched._measure_prefill(4, 1.0)  # prompt tokens far dearer than a decode call: still advances
    assert sched._prefill_limit() == 4
    for _ in range(40):
        sched._measure_prefill(64, 1e-4)
    assert sched._prefill_limit() == 64  # capped by prefill_chunk
