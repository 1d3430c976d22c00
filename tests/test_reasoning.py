"""The reasoning-channel state machine and prompt planning (pure logic)."""

from __future__ import annotations

import pytest

from edgereason.chat.reasoning import ChannelSplitter, ReasoningFormat, detect_format, plan_prompt


def split(pieces: list[str], *, starts_in_reasoning: bool = False, may_open: bool = True) -> tuple[str, str]:
    sp = ChannelSplitter(starts_in_reasoning=starts_in_reasoning, may_open=may_open)
    out = []
    for p in pieces:
        out += sp.feed(p)
    out += sp.flush()
    reasoning = "".join(t for c, t in out if c == "reasoning")
    content = "".join(t for c, t in out if c == "content")
    return reasoning, content


CASES = [
    # (pieces, starts_in_reasoning, may_open, reasoning, content)
    (["<think>", "a b", "</think>", "answer"], False, True, "a b", "answer"),
    (["<th", "ink>", "x", "</th", "ink>", "y"], False, True, "x", "y"),
    (
        ["<", "t", "h", "i", "n", "k", ">", "r", "<", "/", "t", "h", "i", "n", "k", ">", "c"],
        False,
        True,
        "r",
        "c",
    ),
    (
        ["<think>\n", "step 1\n", "step 2\n", "</think>\n\n", "The answer is 4."],
        False,
        True,
        "step 1\nstep 2",
        "The answer is 4.",
    ),
    (["  <think>x</think>  y"], False, True, "x", "y"),
    (["no tags here"], False, True, "", "no tags here"),
    (["<thinking is fun"], False, True, "", "<thinking is fun"),
    (["<", "b>bold"], False, True, "", "<b>bold"),
    (["plain"], False, False, "", "plain"),
    (["<think>x</think>y"], False, False, "", "<think>x</think>y"),
    # forced open / template opened <think>
    (["reason", "ing", "</think>", "done"], True, False, "reasoning", "done"),
    (["\n", "a", "\n\n", "b", "\n", "</think>", "\n\n", "c"], True, False, "a\n\nb", "c"),
    (["a </", "thin", "k>c"], True, False, "a", "c"),
    (["a </b> c"], True, False, "a </b> c", ""),
    (["never closed"], True, False, "never closed", ""),
    (["partial </thi"], True, False, "partial </thi", ""),
    (["x</think>y</think>z"], True, False, "x", "y</think>z"),
    (["</think>", "only content"], True, False, "", "only content"),
    (["<think>", "</think>", "empty think"], False, True, "", "empty think"),
    (["<think>a</think>b<think>c</think>"], False, True, "a", "b<think>c</think>"),
    (["日本", "語</think>テスト"], True, False, "日本語", "テスト"),
]


@pytest.mark.parametrize("pieces,sir,may_open,reasoning,content", CASES)
def test_splitter_table(pieces: list[str], sir: bool, may_open: bool, reasoning: str, content: str) -> None:
    assert split(pieces, starts_in_reasoning=sir, may_open=may_open) == (reasoning, content)


@pytest.mark.parametrize(
    "text", ["<think>\nfirst\nsecond\n</think>\n\nThe answer is 42.\n", "<think>a</think>b", "plain text"]
)
def test_splitter_char_by_char_equals_whole(text: str) -> None:
    assert split(list(text)) == split([text])


def test_detect_format() -> None:
    assert detect_format("{% if enable_thinking %}<think>{% endif %}") is ReasoningFormat.QWEN3
    assert detect_format("{{ '<think>\\n' }}") is ReasoningFormat.DEEPSEEK_R1
    assert detect_format("plain {{ messages }}") is ReasoningFormat.NONE
    assert detect_format(None, vocab_has_think_token=True) is ReasoningFormat.DEEPSEEK_R1


def test_plan_prompt_forced_open_on_plain_model() -> None:
    plan = plan_prompt("<|im_start|>assistant\n", ReasoningFormat.NONE, True)
    assert plan.text.endswith("<think>\n") and plan.starts_in_reasoning and not plan.may_open


def test_plan_prompt_disabled_closes_open_think() -> None:
    plan = plan_prompt("<|Assistant|><think>\n", ReasoningFormat.DEEPSEEK_R1, False)
    assert plan.text.endswith("</think>\n\n") and not plan.starts_in_reasoning and plan.thinking_disabled


def test_plan_prompt_disabled_adds_empty_block_for_r1() -> None:
    plan = plan_prompt("<|Assistant|>", ReasoningFormat.DEEPSEEK_R1, False)
    assert plan.text.endswith("<think>\n\n</think>\n\n")


def test_plan_prompt_qwen3_template_already_closed() -> None:
    rendered = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    plan = plan_prompt(rendered, ReasoningFormat.QWEN3, False)
    assert plan.text == rendered and plan.thinking_disabled


def test_plan_prompt_auto_keeps_template_opened_think() -> None:
    plan = plan_prompt("<|Assistant|><think>\n", ReasoningFormat.DEEPSEEK_R1, "auto")
    assert plan.starts_in_reasoning
    plan = plan_prompt("<|im_start|>assistant\n", ReasoningFormat.QWEN3, "auto")
    assert plan.may_open and not plan.starts_in_reasoning
