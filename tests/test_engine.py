"""The engine on the embedded SmolLM2 model: a real llama.cpp context, many sequences."""

from __future__ import annotations

import time

import pytest

import edgereason as er
from edgereason.result import Chunk

from .conftest import QUESTION

PROMPTS = [
    "What is 12 + 7?",
    "Name three colors.",
    "Write one sentence about the sea.",
    "What is the capital of France?",
    "Count from one to five.",
    "Say hello in Spanish.",
    "What is 3 times 4?",
    "Give me a fruit name.",
]


def msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_greedy_is_deterministic(engine: er.Engine) -> None:
    a = engine.chat(QUESTION, max_tokens=48, temperature=0.0)
    b = engine.chat(QUESTION, max_tokens=48, temperature=0.0)
    assert a.content == b.content and a.content.strip()
    # Greedy talks on past 48 tokens here ("12 + 7 = 9\n\nThis is a classic example ..."), both times.
    assert a.finish_reason == b.finish_reason == "length"
    assert a.usage.completion_tokens == b.usage.completion_tokens == 48


def test_stream_equals_non_stream(engine: er.Engine) -> None:
    res = engine.chat(QUESTION, max_tokens=48, temperature=0.0)
    stream = engine.stream(QUESTION, max_tokens=48, temperature=0.0)
    chunks = list(stream)
    assert all(isinstance(c, Chunk) for c in chunks)
    assert "".join(c.text for c in chunks if c.channel == "content") == res.content
    assert stream.result is not None and stream.result.content == res.content


def test_batch_of_8_greedy_equals_single(engine: er.Engine) -> None:
    singles = [engine.chat(msgs(p), max_tokens=32, temperature=0.0).content for p in PROMPTS]
    streams = [engine.stream(msgs(p), max_tokens=32, temperature=0.0) for p in PROMPTS]
    batched = [s.wait().content for s in streams]
    assert batched == singles


def test_n_choices_share_prompt_and_greedy_agree(engine: er.Engine) -> None:
    res = engine.chat(QUESTION, max_tokens=24, temperature=0.0, n=3)
    assert len(res.choices) == 3
    assert len({c.content for c in res.choices}) == 1
    assert res.choices[0].content == engine.chat(QUESTION, max_tokens=24, temperature=0.0).content


def test_seeded_sampling_reproducible(engine: er.Engine) -> None:
    a = engine.chat(QUESTION, max_tokens=32, temperature=0.9, seed=123)
    b = engine.chat(QUESTION, max_tokens=32, temperature=0.9, seed=123)
    assert a.content == b.content
    many = engine.chat(QUESTION, max_tokens=32, temperature=1.2, seed=5, n=4)
    again = engine.chat(QUESTION, max_tokens=32, temperature=1.2, seed=5, n=4)
    assert [c.content for c in many.choices] == [c.content for c in again.choices]
    assert len({c.content for c in many.choices}) > 1  # different seeds per choice


def test_usage_matches_tokens(engine: er.Engine) -> None:
    res = engine.chat(QUESTION, max_tokens=16, temperature=0.0, ignore_eos=True)
    prompt = engine.prepare_chat(QUESTION, er.GenerationOptions())
    assert res.usage.prompt_tokens == len(prompt.tokens)
    assert res.usage.completion_tokens == 16 and res.finish_reason == "length"
    assert res.usage.total_tokens == res.usage.prompt_tokens + 16
    # Greedy ends on its own well before the cap (49 tokens), and usage counts exactly the content's tokens.
    free = engine.chat(QUESTION, max_tokens=64, temperature=0.0)
    assert free.finish_reason == "stop" and free.usage.completion_tokens < 64
    assert free.usage.completion_tokens == len(engine.backend.tokenize(free.content))


def test_forced_thinking_routes_to_reasoning(engine: er.Engine) -> None:
    res = engine.chat(QUESTION, max_tokens=40, temperature=0.0, thinking=True)
    assert res.reasoning.strip()
    assert res.usage.reasoning_tokens > 0
    assert res.usage.reasoning_tokens <= res.usage.completion_tokens
    plain = engine.chat(QUESTION, max_tokens=40, temperature=0.0, thinking=False)
    assert plain.reasoning == "" and plain.thinking_stopped_by == "disabled"


def test_stream_reasoning_matches(engine: er.Engine) -> None:
    res = engine.chat(QUESTION, max_tokens=40, temperature=0.0, thinking=True)
    chunks = list(engine.stream(QUESTION, max_tokens=40, temperature=0.0, thinking=True))
    assert "".join(c.text for c in chunks if c.channel == "reasoning") == res.reasoning
    assert "".join(c.text for c in chunks if c.channel == "content") == res.content


def test_stop_strings(engine: er.Engine) -> None:
    full = engine.chat(msgs("Count from one to ten, comma separated."), max_tokens=40, temperature=0.0)
    words = full.content.split()
    assert len(words) > 3
    stop = words[2]
    res = engine.chat(
        msgs("Count from one to ten, comma separated."), max_tokens=40, temperature=0.0, stop=[stop]
    )
    assert stop not in res.content and res.finish_reason == "stop"
    assert full.content.startswith(res.content.rstrip())


def test_logprobs(engine: er.Engine) -> None:
    res = engine.chat(QUESTION, max_tokens=8, temperature=0.0, logprobs=True, top_logprobs=3)
    lps = res.choices[0].logprobs
    assert lps is not None and len(lps) == res.usage.completion_tokens
    for lp in lps:
        assert lp.logprob <= 0.0 and len(lp.top) == 3
        assert lp.top[0][1] == pytest.approx(lp.logprob, abs=1e-5)  # greedy picks the most likely


def test_cancel_frees_sequences(engine: er.Engine) -> None:
    stream = engine.stream(QUESTION, max_tokens=2000, temperature=0.8, seed=1, n=4, ignore_eos=True)
    it = iter(stream)
    next(it)
    assert engine.live_sequences >= 4
    stream.cancel()
    for _ in it:
        pass
    deadline = time.time() + 5
    while engine.live_sequences and time.time() < deadline:
        time.sleep(0.01)
    assert engine.live_sequences == 0
    assert stream.result is not None and stream.result.finish_reason == "cancelled"


def test_answer_extracted(engine: er.Engine) -> None:
    res = engine.chat(msgs("What is 2 + 2? Reply with just the number."), max_tokens=16, temperature=0.0)
    assert res.answer == "4"


def test_prompt_over_context(engine: er.Engine) -> None:
    with pytest.raises(er.ContextOverflowError) as info:
        engine.chat(msgs("word " * 3000), max_tokens=4)
    assert info.value.n_ctx == 2048 and info.value.n_prompt_tokens > 2048


@pytest.mark.parametrize(
    "fields,param",
    [
        ({"temperature": -1}, "temperature"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"bogus": 1}, "bogus"),
        ({"thinking": "maybe"}, "thinking"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_bad_options(engine: er.Engine, fields: dict[str, object], param: str) -> None:
    with pytest.raises(er.InvalidRequestError) as info:
        engine.chat(QUESTION, **fields)
    assert info.value.param is not None and info.value.param.startswith(param)


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "wizard", "content": "hi"}],
        [{"content": "hi"}],
        [{"role": "user", "content": 5}],
        "hello",
    ],
)
def test_bad_messages(engine: er.Engine, messages: object) -> None:
    with pytest.raises(er.InvalidRequestError):
        engine.chat(messages, max_tokens=4)  # type: ignore[arg-type]


def test_engine_survives_bad_requests(engine: er.Engine) -> None:
    with pytest.raises(er.InvalidRequestError):
        engine.chat(QUESTION, temperature=-1)
    assert engine.chat(QUESTION, max_tokens=4, temperature=0.0).usage.completion_tokens > 0
