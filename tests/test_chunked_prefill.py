"""Chunked prefill: a long prompt advances a chunk per step while others stream, and stays exact."""

from __future__ import annotations

import pytest

import edgereason as er
from edgereason.scheduler import _chunk

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
