"""Thinking budgets on the embedded SmolLM2 model with thinking forced open (a real llama.cpp context)."""

from __future__ import annotations

import pytest

import edgereason as er
from edgereason.errors import InvalidRequestError
from edgereason.options import DEFAULT_WRAP_UP

PROMPTS = [
    "Tom has 5 apples and buys 3 more. How many apples does he have?",
    "What is 12 times 3?",
    "A train travels 60 km in one hour. How far does it go in 2 hours?",
]
BUDGETS = (0, 1, 8, 64)
SEEDS = (1, 2)


def msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_cap_is_exact_across_budgets_prompts_and_seeds(engine: er.Engine) -> None:
    runs = [
        (
            b,
            engine.stream(
                msgs(p), thinking=True, thinking_budget=b, max_tokens=b + 4, temperature=0.9, seed=s
            ),
        )
        for b in BUDGETS
        for p in PROMPTS
        for s in SEEDS
    ]
    forced = 0
    for budget, stream in runs:
        c = stream.wait().choices[0]
        assert c.reasoning_tokens <= budget, (budget, c.reasoning_tokens, c.reasoning)
        assert c.thinking_stopped_by in ("model", "budget", "length")
        if c.thinking_stopped_by == "budget":
            forced += 1
            assert c.reasoning_tokens == budget  # forced exactly at the cap, wrap-up included
        if budget == 0:
            assert c.reasoning == "" and c.thinking_stopped_by == "budget"
        if budget == 64 and c.thinking_stopped_by == "budget":
            assert c.reasoning.endswith(DEFAULT_WRAP_UP)
    assert forced >= len(PROMPTS) * len(SEEDS) * 2  # budgets 0 and 1 always force


def test_wrap_up_is_dropped_when_the_budget_is_too_small(engine: er.Engine) -> None:
    c = engine.chat(
        msgs(PROMPTS[0]), thinking=True, thinking_budget=8, max_tokens=20, temperature=0.0
    ).choices[0]
    assert c.thinking_stopped_by == "budget" and c.reasoning_tokens == 8
    assert "Considering" not in c.reasoning


def test_thinking_false_ignores_the_budget(engine: er.Engine) -> None:
    res = engine.chat(msgs(PROMPTS[1]), thinking=False, thinking_budget=8, max_tokens=16, temperature=0.0)
    c = res.choices[0]
    assert c.reasoning == "" and c.reasoning_tokens == 0 and c.thinking_stopped_by == "disabled"
    assert c.content.strip()
    off = engine.chat(msgs(PROMPTS[1]), reasoning_effort="none", max_tokens=16, temperature=0.0).choices[0]
    assert off.thinking_stopped_by == "disabled" and off.content == c.content


def test_min_thinking_inserts_wait(engine: er.Engine) -> None:
    plain = engine.chat(msgs(PROMPTS[0]), thinking=True, max_tokens=60, temperature=0.0).choices[0]
    assert plain.thinking_stopped_by == "model" and plain.reasoning_tokens < 40  # ends thinking early
    c = engine.chat(
        msgs(PROMPTS[0]), thinking=True, min_thinking=40, max_waits=1, max_tokens=60, temperature=0.0
    ).choices[0]
    assert c.extra["thinking_waits"] == 1
    assert "Wait" in c.reasoning and "Wait" not in plain.reasoning
    assert c.reasoning.startswith(plain.reasoning.rstrip(".").rstrip()[:20])
    assert c.reasoning_tokens > plain.reasoning_tokens


@pytest.mark.parametrize("budget", [8, 64])
def test_stream_equals_non_stream(engine: er.Engine, budget: int) -> None:
    kw = dict(thinking=True, thinking_budget=budget, max_tokens=budget + 10, temperature=0.0)
    res = engine.chat(msgs(PROMPTS[2]), **kw)
    stream = engine.stream(msgs(PROMPTS[2]), **kw)
    chunks = list(stream)
    assert "".join(c.text for c in chunks if c.channel == "reasoning") == res.reasoning
    assert "".join(c.text for c in chunks if c.channel == "content") == res.content
    assert (
        stream.result is not None
        and stream.result.choices[0].reasoning_tokens == res.choices[0].reasoning_tokens
    )


def test_probes_do_not_change_the_main_sequence(engine: er.Engine) -> None:
    base = dict(thinking=True, max_tokens=48, temperature=0.0)
    plain = engine.chat(msgs(PROMPTS[2]), **base).choices[0]
    probed = engine.chat(
        msgs(PROMPTS[2]),
        thinking_budget="auto",
        early_exit_threshold=1.0,  # never met: every probe is discarded
        transition_markers=("\n", "Wait", " train"),
        early_exit_probe_tokens=4,
        loop_guard=False,
        **base,
    ).choices[0]
    assert probed.extra["early_exit_probe_count"] > 0
    assert all(p["confidence"] < 1.0 for p in probed.extra["early_exit_probes"])
    assert (probed.reasoning, probed.content) == (plain.reasoning, plain.content)
    assert (probed.completion_tokens, probed.reasoning_tokens) == (
        plain.completion_tokens,
        plain.reasoning_tokens,
    )
    assert engine.live_sequences == 0  # probes were freed


def test_confident_probe_exits_thinking(engine: er.Engine) -> None:
    base = dict(thinking=True, max_tokens=48, temperature=0.0)
    plain = engine.chat(msgs(PROMPTS[2]), **base).choices[0]
    c = engine.chat(
        msgs(PROMPTS[2]),
        thinking_budget="auto",
        early_exit_threshold=0.01,  # the first probe (at " train", token 16) is confident enough
        transition_markers=("\n", " train"),
        **base,
    ).choices[0]
    assert c.thinking_stopped_by == "early_exit" and c.extra["early_exit_probe_count"] == 1
    (probe,) = c.extra["early_exit_probes"]
    assert probe["confidence"] >= 0.01 and probe["answer"]
    # Thinking ends where the probe forked: the same greedy prefix, cut short, and an answer follows.
    assert c.reasoning_tokens == probe["at"] < plain.reasoning_tokens
    assert plain.reasoning.startswith(c.reasoning) and len(c.reasoning) < len(plain.reasoning)
    assert c.content.strip()


@pytest.mark.parametrize(
    "fields",
    [
        {"thinking_budget": -1},
        {"thinking_budget": 2.5},
        {"thinking_budget": "lots"},
        {"thinking_token_budget": -3},
        {"reasoning_effort": "extreme"},
        {"thinking_budget": 4, "min_thinking": 8},
        {"early_exit_threshold": 0.0},
    ],
)
def test_bad_values_are_rejected_before_generating(engine: er.Engine, fields: dict[str, object]) -> None:
    before = engine.scheduler.decoded_tokens
    with pytest.raises(InvalidRequestError) as info:
        engine.chat(msgs(PROMPTS[0]), thinking=True, **fields)
    assert info.value.param is not None and info.value.param.split(".")[0] in {*fields, "thinking_budget"}
    assert engine.scheduler.decoded_tokens == before


def test_vllm_alias_is_accepted(engine: er.Engine) -> None:
    c = engine.chat(
        msgs(PROMPTS[1]), thinking=True, thinking_token_budget=1, max_tokens=8, temperature=0.0
    ).choices[0]
    assert c.reasoning_tokens == 1 and c.thinking_stopped_by == "budget"
