"""What generation returns: streamed chunks, per-choice results, usage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .chat.reasoning import Channel

FinishReason = Literal["stop", "length", "cancelled", "error", "tool_calls"]


@dataclass(frozen=True)
class Chunk:
    """A piece of streamed output. ``index`` is the choice it belongs to (``n`` > 1). ``logprobs``: the
    tokens recorded since the previous chunk of this choice (when the request asked for logprobs); text a
    stop string or the channel splitter held back arrives later, with the tokens that released it."""

    channel: Channel
    text: str
    index: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class ToolCall:
    """A function call the model made (OpenAI's ``tool_calls[]``): ``arguments`` is a JSON object text."""

    id: str
    name: str
    arguments: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True)
class ToolCallChunk(Chunk):
    """A streamed tool call, sent once complete; ``position`` is its index among the choice's calls."""

    call: ToolCall | None = None
    position: int = 0


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass
class Usage:
    """Token counts of one request. ``completion_tokens`` counts every token generated for it: the
    choices' own (``reasoning_tokens`` among them) and the early-exit probes' (``probe_tokens``: each
    forked trial prefix and trial answer, decoded beside the choice but never part of its text) and the
    built-in tool's output (``tool_tokens``: decoded into the choice's text but not written by the model,
    so not in a choice's own ``completion_tokens``; the tool ran ``tool_calls`` times, ``tool_wall_s``
    seconds in all)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV was reused from an earlier request (not decoded)
    probe_tokens: int = 0
    tool_tokens: int = 0
    tool_calls: int = 0
    tool_wall_s: float = 0.0

    @classmethod
    def of_choices(cls, prompt_tokens: int, choices: Sequence[Choice], cached_tokens: int = 0) -> Usage:
        """The usage of a request whose generated tokens are those of ``choices`` and their probes."""
        probes = sum(choice_probe_tokens(c) for c in choices)
        tools = [c.extra["python_tool"] for c in choices if "python_tool" in c.extra]
        tool_tokens = sum(t["tokens"] for t in tools)
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=sum(c.completion_tokens for c in choices) + probes + tool_tokens,
            reasoning_tokens=sum(c.reasoning_tokens for c in choices),
            cached_tokens=cached_tokens,
            probe_tokens=probes,
            tool_tokens=tool_tokens,
            tool_calls=sum(t["calls"] for t in tools),
            tool_wall_s=round(sum(t["wall_s"] for t in tools), 4),
        )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning_tokens,
                "probe_tokens": self.probe_tokens,
                **({"tool_tokens": self.tool_tokens} if self.tool_calls else {}),
            },
        }


@dataclass
class Choice:
    index: int
    content: str
    reasoning: str
    finish_reason: FinishReason
    completion_tokens: int
    reasoning_tokens: int
    answer: str | None = None
    thinking_stopped_by: str | None = None
    logprobs: list[TokenLogprob] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    tool_calls: list[ToolCall] = field(default_factory=list)


def choice_probe_tokens(choice: Choice) -> int:
    """Tokens the choice's early-exit probes decoded (0 without probes); not in ``completion_tokens``."""
    return int(choice.extra.get("probe_tokens", 0))


@dataclass
class ChatResult:
    """The result of one request. The top-level fields mirror ``choices[0]``."""

    choices: list[Choice]
    usage: Usage
    model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # strategy reports (self_consistency, lorid, ...)

    @property
    def content(self) -> str:
        return self.choices[0].content

    @property
    def reasoning(self) -> str:
        return self.choices[0].reasoning

    @property
    def answer(self) -> str | None:
        return self.choices[0].answer

    @property
    def finish_reason(self) -> FinishReason:
        return self.choices[0].finish_reason

    @property
    def thinking_stopped_by(self) -> str | None:
        return self.choices[0].thinking_stopped_by

    @property
    def tool_calls(self) -> list[ToolCall]:
        return self.choices[0].tool_calls

    def to_dict(self) -> dict[str, Any]:
        c = self.choices[0]
        return {
            "content": c.content,
            "reasoning": c.reasoning,
            "answer": c.answer,
            "finish_reason": c.finish_reason,
            "thinking_stopped_by": c.thinking_stopped_by,
            "answer_confidence": c.extra.get("answer_confidence"),
            "think_answer_mismatch": c.extra.get("think_answer_mismatch"),
            "usage": self.usage.to_dict(),
            **({"tool_calls": [t.to_dict() for t in c.tool_calls]} if c.tool_calls else {}),
            **({"choices": [_choice_dict(x) for x in self.choices]} if len(self.choices) > 1 else {}),
            **self.extra,
        }


def _choice_dict(c: Choice) -> dict[str, Any]:
    return {
        "index": c.index,
        "content": c.content,
        "reasoning": c.reasoning,
        "answer": c.answer,
        "finish_reason": c.finish_reason,
        "answer_confidence": c.extra.get("answer_confidence"),
        "think_answer_mismatch": c.extra.get("think_answer_mismatch"),
        **({"tool_calls": [t.to_dict() for t in c.tool_calls]} if c.tool_calls else {}),
    }
