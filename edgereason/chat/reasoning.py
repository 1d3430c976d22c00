"""Reasoning formats and the streaming state machine that splits output into channels.

A format says how a model marks its thinking: ``deepseek-r1`` (``<think>…</think>``, the template may
open ``<think>`` inside the prompt), ``qwen3`` (the same tags, plus ``enable_thinking`` in the template)
and ``none``. Any format can be run with thinking forced open: ``<think>\\n`` is appended to the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"

Channel = Literal["reasoning", "content"]
Thinking = bool | Literal["auto"]


class ReasoningFormat(str, Enum):
    DEEPSEEK_R1 = "deepseek-r1"
    QWEN3 = "qwen3"
    NONE = "none"


def detect_format(template: str | None, vocab_has_think_token: bool = False) -> ReasoningFormat:
    """Guess the reasoning format from the chat template and the vocabulary."""
    tpl = template or ""
    if "enable_thinking" in tpl:
        return ReasoningFormat.QWEN3
    if OPEN_TAG in tpl or CLOSE_TAG in tpl or vocab_has_think_token:
        return ReasoningFormat.DEEPSEEK_R1
    return ReasoningFormat.NONE


def think_is_open(prompt: str) -> bool:
    """True when the prompt ends inside an unclosed ``<think>`` block."""
    return prompt.rfind(OPEN_TAG) > prompt.rfind(CLOSE_TAG)


@dataclass(frozen=True)
class PromptPlan:
    """A rendered prompt and the channel state generation starts in."""

    text: str
    starts_in_reasoning: bool  # the prompt opened <think>: output begins as reasoning
    may_open: bool  # the model may open <think> itself at the start of its output
    thinking_disabled: bool  # the prompt carries a closed, empty think block
    reasoning_format: str | None = None  # the format's value, when rendered for one (probe prefixes)
    # Message contents holding control-token text: tokenized as ordinary text (see chat/tokens.py).
    literals: tuple[str, ...] = ()


def plan_prompt(rendered: str, fmt: ReasoningFormat, thinking: Thinking) -> PromptPlan:
    """Apply ``thinking`` to a prompt rendered with the generation prompt.

    ``rendered`` must already reflect ``enable_thinking`` for qwen3 templates; this adds what a
    template cannot: forced-open thinking and an empty think block for formats without a switch.
    """
    text = rendered
    if thinking is False:
        if think_is_open(text):
            text += "\n" + CLOSE_TAG + "\n\n"
        elif not text.rstrip().endswith(CLOSE_TAG) and fmt is not ReasoningFormat.NONE:
            text += OPEN_TAG + "\n\n" + CLOSE_TAG + "\n\n"
        return PromptPlan(
            text,
            starts_in_reasoning=False,
            may_open=False,
            thinking_disabled=True,
            reasoning_format=fmt.value,
        )
    if thinking is True and not think_is_open(text):
        text += OPEN_TAG + "\n"
    if think_is_open(text):
        return PromptPlan(
            text,
            starts_in_reasoning=True,
            may_open=False,
            thinking_disabled=False,
            reasoning_format=fmt.value,
        )
    return PromptPlan(
        text,
        starts_in_reasoning=False,
        may_open=fmt is not ReasoningFormat.NONE,
        thinking_disabled=False,
        reasoning_format=fmt.value,
    )


class State(str, Enum):
    START = "start"  # waiting to see whether the output opens <think>
    REASONING = "reasoning"
    CONTENT = "content"


class ChannelSplitter:
    """Incrementally route generated text into reasoning and content.

    Robust to tags split across tokens: text that could be the start of a tag is held back until
    the next piece decides it. Whitespace around the think block is dropped (leading and trailing
    reasoning whitespace, leading content whitespace), the same in streaming and non-streaming use.
    """

    def __init__(self, *, starts_in_reasoning: bool, may_open: bool) -> None:
        if starts_in_reasoning:
            self.state = State.REASONING
        else:
            self.state = State.START if may_open else State.CONTENT
        self._buf = ""
        self._reasoning_started = False  # reasoning text emitted yet (drop its leading whitespace)
        self._content_started = False
        self._held_ws = ""  # trailing reasoning whitespace, emitted only if more reasoning follows

    @property
    def in_reasoning(self) -> bool:
        return self.state is State.REASONING

    @property
    def held(self) -> str:
        """Reasoning text held back because it may start the close tag (what the model wrote of it)."""
        return self._buf if self.state is State.REASONING else ""

    def closes_with(self, text: str) -> bool:
        """Would feeding ``text`` end the think block?"""
        return self.state is State.REASONING and CLOSE_TAG in self._buf + text

    def drop_held(self) -> str:
        """Forget the held partial tag (its tokens were rewound) and return it."""
        held = self.held
        if held:
            self._buf = ""
        return held

    def feed(self, text: str) -> list[tuple[Channel, str]]:
        self._buf += text
        out: list[tuple[Channel, str]] = []
        while True:
            before = (self.state, len(self._buf))
            if self.state is State.START:
                self._step_start()
            elif self.state is State.REASONING:
                self._step_reasoning(out)
            else:
                self._emit_content(self._buf, out)
                self._buf = ""
            if (self.state, len(self._buf)) == before:
                return out

    def flush(self) -> list[tuple[Channel, str]]:
        """End of generation: release held text (a partial tag is just text)."""
        out: list[tuple[Channel, str]] = []
        if self.state is State.REASONING:
            tail = self._buf.rstrip()
            if tail:
                self._emit_reasoning(self._held_ws + tail if self._reasoning_started else tail, out)
        elif self._buf:
            self._emit_content(self._buf, out)
        self._buf = ""
        self._held_ws = ""
        return out

    def _step_start(self) -> None:
        stripped = self._buf.lstrip()
        if stripped.startswith(OPEN_TAG):
            self._buf = stripped[len(OPEN_TAG) :]
            self.state = State.REASONING
        elif not OPEN_TAG.startswith(stripped):
            self.state = State.CONTENT
        # else: an empty or partial tag, wait for more text

    def _step_reasoning(self, out: list[tuple[Channel, str]]) -> None:
        idx = self._buf.find(CLOSE_TAG)
        if idx >= 0:
            body = self._buf[:idx].rstrip()
            if body:
                self._emit_reasoning(self._held_ws + body if self._reasoning_started else body, out)
            self._held_ws = ""
            self._buf = self._buf[idx + len(CLOSE_TAG) :]
            self.state = State.CONTENT
            return
        keep = _partial_suffix(self._buf, CLOSE_TAG)
        body, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep :]
        trimmed = body.rstrip()
        if trimmed:
            self._emit_reasoning(self._held_ws + trimmed if self._reasoning_started else trimmed, out)
            self._held_ws = body[len(trimmed) :]
        elif self._reasoning_started:
            self._held_ws += body

    def _emit_reasoning(self, text: str, out: list[tuple[Channel, str]]) -> None:
        if not self._reasoning_started:
            text = text.lstrip()
        if text:
            self._reasoning_started = True
            out.append(("reasoning", text))

    def _emit_content(self, text: str, out: list[tuple[Channel, str]]) -> None:
        if not self._content_started:
            text = text.lstrip()
        if text:
            self._content_started = True
            out.append(("content", text))


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
