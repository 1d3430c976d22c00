"""Artefacts and checks shared by the per-backend tests (test_backends_mlx.py, test_backends_onnx.py).

Every backend runs the same engine code (scheduler, strategies); these checks hold a backend to what the
llama.cpp tests hold llama.cpp to, on the embedded SmolLM2 converted for real with ``edgereason.convert``.
"""

from __future__ import annotations

from pathlib import Path

import edgereason as er

QUESTION = [{"role": "user", "content": "What is 12 + 7? Answer briefly."}]
PROMPTS = ["What is 12 times 3?", "Tom has 5 apples and buys 3 more. How many apples does he have?"]


def msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def convert_embedded(out: Path, to: str, quant: str | None = None) -> Path:
    """The embedded SmolLM2 GGUF converted to ``to`` (dequantised to float through transformers)."""
    from edgereason.convert import convert, embedded_gguf_path

    return convert(embedded_gguf_path(), out, to=to, quant=quant).path


def check_generates(engine: er.Engine) -> None:
    res = engine.chat(QUESTION, max_tokens=12, temperature=0.0)
    c = res.choices[0]
    assert c.content.strip(), c
    assert c.finish_reason in ("stop", "length")
    assert res.usage.completion_tokens == c.completion_tokens > 0
    assert res.usage.prompt_tokens > 10
    assert engine.live_sequences == 0


def check_greedy_deterministic(engine: er.Engine) -> None:
    a = engine.chat(msgs(PROMPTS[0]), max_tokens=10, temperature=0.0, logprobs=True, top_logprobs=2)
    b = engine.chat(msgs(PROMPTS[0]), max_tokens=10, temperature=0.0, logprobs=True, top_logprobs=2)
    assert a.content == b.content
    la, lb = a.choices[0].logprobs, b.choices[0].logprobs
    assert la and la == lb
    assert all(lp.logprob <= 0.0 and len(lp.top) == 2 for lp in la)
    # greedy: the chosen token is the most likely one
    assert all(lp.top[0][1] == lp.logprob for lp in la)


def check_stream_equals_chat(engine: er.Engine) -> None:
    kw = dict(max_tokens=10, temperature=0.7, seed=3)
    res = engine.chat(msgs(PROMPTS[1]), **kw)
    stream = engine.stream(msgs(PROMPTS[1]), **kw)
    text = "".join(ch.text for ch in stream if ch.channel == "content")
    assert text == res.content
    assert (
        stream.result is not None
        and stream.result.choices[0].completion_tokens == res.choices[0].completion_tokens
    )


def check_budget_caps_exactly(engine: er.Engine) -> None:
    forced = 0
    for budget in (0, 1, 6):
        c = engine.chat(
            msgs(PROMPTS[0]), thinking=True, thinking_budget=budget, max_tokens=budget + 3, temperature=0.0
        ).choices[0]
        assert c.reasoning_tokens <= budget, (budget, c.reasoning_tokens, c.reasoning)
        if c.thinking_stopped_by == "budget":
            forced += 1
            assert c.reasoning_tokens == budget
        if budget == 0:
            assert c.reasoning == "" and c.thinking_stopped_by == "budget"
    assert forced >= 2


def check_self_consistency(engine: er.Engine) -> None:
    a = engine.chat(QUESTION, max_tokens=8, seed=11, self_consistency=4)
    b = engine.chat(QUESTION, max_tokens=8, seed=11, self_consistency=4)
    ra, rb = a.extra["self_consistency"], b.extra["self_consistency"]
    assert ra == rb and a.content == b.content, (a.content, b.content, ra, rb)
    assert ra["samples_used"] == 4
    assert {s["index"] for s in ra["samples"]} == {0, 1, 2, 3}
    assert all(s["tokens"] > 0 for s in ra["samples"])
    assert engine.live_sequences == 0


def check_n_choices_share_the_prompt(engine: er.Engine) -> None:
    """n > 1 forks the prompt (or re-prefills it where the backend cannot fork): greedy choices agree."""
    one = engine.chat(msgs(PROMPTS[1]), max_tokens=8, temperature=0.0)
    many = engine.chat(msgs(PROMPTS[1]), max_tokens=8, temperature=0.0, n=3)
    assert [c.content for c in many.choices] == [one.content] * 3
    assert engine.live_sequences == 0
