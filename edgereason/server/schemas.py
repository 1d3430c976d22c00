"""Request and response shapes of the OpenAI-compatible endpoints.

Requests name the OpenAI fields with their types (for validation and the OpenAPI schema) and
allow extra fields: those are EdgeReason's options (``thinking``, ``thinking_budget``,
``builtin_tools``, ...), passed to ``GenerationOptions`` by name so new options need no server change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from ..errors import InvalidRequestError
from ..result import ChatResult, Choice, TokenLogprob, ToolCallChunk

# OpenAI fields a client may send that do not change generation here.
IGNORED_FIELDS = frozenset({"user", "store", "metadata", "service_tier", "modalities"})
INT64 = 2**63
# chat_template_kwargs keys a request may set (others would need the template to see them: 400).
TEMPLATE_KWARGS = ("enable_thinking",)


def fold_seed(seed: int) -> int:
    """OpenAI's int64 seed as the 32-bit seed llama.cpp takes (seeds below 2**32 unchanged)."""
    if 0 <= seed < 2**32:
        return seed
    s = seed & (2**64 - 1)
    return (s ^ (s >> 32)) & 0xFFFFFFFF


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None
    reasoning_content: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class _SamplingRequest(BaseModel):
    """Fields chat and text completions share."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-INT64, lt=INT64, description="any int64")
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = Field(
        default=None, description="token id (as a string) -> bias in [-100, 100]"
    )
    repetition_penalty: float | None = Field(default=None, description="vLLM's name for repeat_penalty")
    n_probs: int | None = Field(
        default=None, ge=0, le=20, description="llama-server's name: logprobs with this many alternatives"
    )

    def option_fields(self) -> dict[str, Any]:
        """The fields for ``GenerationOptions``: OpenAI ones renamed, extras passed through by name."""
        out: dict[str, Any] = {}
        for name in (
            "max_tokens",
            "temperature",
            "top_p",
            "n",
            "stop",
            "presence_penalty",
            "frequency_penalty",
            "logit_bias",
        ):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        for name, value in (self.model_extra or {}).items():
            if name not in IGNORED_FIELDS:
                out[name] = value
        if self.seed is not None:
            out["seed"] = fold_seed(self.seed)
        if self.repetition_penalty is not None:
            if "repeat_penalty" in out:
                raise InvalidRequestError(
                    "give repetition_penalty or repeat_penalty, not both", param="repetition_penalty"
                )
            out["repeat_penalty"] = self.repetition_penalty
        return out

    def _with_n_probs(self, out: dict[str, Any]) -> dict[str, Any]:
        """llama-server's n_probs (0: off) as logprobs + top_logprobs; a different top_logprobs is a 400."""
        if not self.n_probs:
            return out
        if out.get("top_logprobs", self.n_probs) != self.n_probs:
            raise InvalidRequestError(
                "n_probs and top_logprobs (logprobs) disagree; give one of them", param="n_probs"
            )
        return {**out, "logprobs": True, "top_logprobs": self.n_probs}


class LoadLoraAdapterRequest(BaseModel):
    """vLLM's ``POST /v1/load_lora_adapter`` body; the path is resolved inside --adapter-dir."""

    model_config = ConfigDict(extra="forbid")

    lora_name: str = Field(min_length=1, max_length=128)
    lora_path: str = Field(min_length=1, max_length=4096)


class UnloadLoraAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lora_name: str = Field(min_length=1, max_length=128)
    lora_int_id: int | None = None  # vLLM clients may send it; unused


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    reasoning_effort: str | None = Field(
        default=None, description="none | minimal (= none: no thinking) | low | medium | high"
    )
    tools: list[dict[str, Any]] | None = Field(default=None, description="function tools (OpenAI's shape)")
    tool_choice: str | dict[str, Any] | None = Field(
        default=None, description='none | auto | required | {"type": "function", "function": {"name": ...}}'
    )
    parallel_tool_calls: StrictBool | None = Field(
        default=None, description="false: one call per reply (forced calls: one unless this is true)"
    )
    response_format: dict[str, Any] | None = Field(
        default=None, description="text | json_object | json_schema: the answer (after thinking) follows it"
    )
    chat_template_kwargs: dict[str, Any] | None = Field(
        default=None, description="only enable_thinking (Qwen3/vLLM): false renders without thinking"
    )

    def option_fields(self) -> dict[str, Any]:
        out = super().option_fields()
        # Tool fields go to the engine's chat call (engine.py), response_format to GenerationOptions.
        for name in ("tools", "tool_choice", "parallel_tool_calls", "response_format"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.max_completion_tokens is not None:
            out["max_tokens"] = self.max_completion_tokens
        if self.logprobs:
            out["logprobs"] = True
        if self.top_logprobs is not None:
            if not self.logprobs and self.top_logprobs:
                raise InvalidRequestError("top_logprobs needs logprobs: true", param="top_logprobs")
            out["top_logprobs"] = self.top_logprobs
        if self.reasoning_effort is not None:
            # OpenAI's "minimal" (fastest first token): small on-device models have no useful budget
            # below "low", so it skips thinking like "none".
            out["reasoning_effort"] = "none" if self.reasoning_effort == "minimal" else self.reasoning_effort
        if self.chat_template_kwargs:
            unknown = sorted(set(self.chat_template_kwargs) - set(TEMPLATE_KWARGS))
            if unknown:
                raise InvalidRequestError(
                    f"chat_template_kwargs: unsupported key(s) {', '.join(map(repr, unknown))}; "
                    f"supported: {', '.join(TEMPLATE_KWARGS)}",
                    param="chat_template_kwargs",
                )
            enable = self.chat_template_kwargs.get("enable_thinking")
            if enable is not None:
                if not isinstance(enable, bool):
                    raise InvalidRequestError(
                        "chat_template_kwargs.enable_thinking must be true or false",
                        param="chat_template_kwargs.enable_thinking",
                    )
                if isinstance(out.get("thinking"), bool) and out["thinking"] != enable:
                    raise InvalidRequestError(
                        "thinking and chat_template_kwargs.enable_thinking disagree", param="thinking"
                    )
                out["thinking"] = enable
        return self._with_n_probs(out)

    def message_dicts(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in self.messages]


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str]
    # OpenAI allows 5; vLLM 20, which DeepConf's top-20 confidence (and our remote client) needs.
    logprobs: int | None = Field(default=None, ge=0, le=20, description="top alternatives per token (0-20)")
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def prompt_text(self) -> str:
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise InvalidRequestError("prompt: give one prompt per request", param="prompt")
            return self.prompt[0]
        return self.prompt

    def option_fields(self) -> dict[str, Any]:
        if self.echo:
            raise InvalidRequestError("echo is not supported", param="echo")
        if self.suffix:
            raise InvalidRequestError("suffix is not supported", param="suffix")
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise InvalidRequestError("best_of is not supported; use n", param="best_of")
        out = super().option_fields()
        if self.logprobs is not None:
            out["logprobs"] = True
            out["top_logprobs"] = self.logprobs
        return self._with_n_probs(out)


# -- responses --------------------------------------------------------------------------------------
FinishReason = Literal["stop", "length", "tool_calls"]


def finish_reason(choice: Choice) -> FinishReason:
    if choice.finish_reason == "length":
        return "length"
    return "tool_calls" if choice.finish_reason == "tool_calls" else "stop"


def tool_call_deltas(c: ToolCallChunk) -> list[dict[str, Any]]:
    """A streamed call as OpenAI sends it: its id, type and name first, then its arguments."""
    assert c.call is not None
    return [
        {
            "index": c.position,
            "id": c.call.id,
            "type": "function",
            "function": {"name": c.call.name, "arguments": ""},
        },
        {"index": c.position, "function": {"arguments": c.call.arguments}},
    ]


def chat_message(choice: Choice) -> dict[str, Any]:
    """The assistant message of a choice: content (null when it only calls tools), reasoning, tool calls."""
    msg: dict[str, Any] = {
        "role": "assistant",
        "content": choice.content or (None if choice.tool_calls else ""),
        "reasoning_content": choice.reasoning or None,
    }
    if choice.tool_calls:
        msg["tool_calls"] = [t.to_dict() for t in choice.tool_calls]
    return msg


def edgereason_report(result: ChatResult) -> dict[str, Any]:
    """The ``edgereason`` object: per-choice reasoning facts and any strategy reports; with the built-in
    Python tool on, ``tool_calls``: how many code blocks ran for the request and their wall time."""
    c = result.choices[0]
    usage = result.usage
    tools_on = usage.tool_calls > 0 or any("python_tool" in x.extra for x in result.choices)
    tool_calls = {"count": usage.tool_calls, "wall_s": usage.tool_wall_s, "tokens": usage.tool_tokens}
    return {
        "thinking_stopped_by": c.thinking_stopped_by,
        "answer": c.answer,
        "choices": [
            {
                "index": x.index,
                "thinking_stopped_by": x.thinking_stopped_by,
                "answer": x.answer,
                "reasoning_tokens": x.reasoning_tokens,
                "completion_tokens": x.completion_tokens,
                "finish_reason": x.finish_reason,
                **x.extra,
            }
            for x in result.choices
        ],
        **({"tool_calls": tool_calls} if tools_on else {}),
        **result.extra,
    }


def _token_entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def chat_logprobs(logprobs: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    return {
        "content": [
            {**_token_entry(t.token, t.logprob), "top_logprobs": [_token_entry(s, v) for s, v in t.top]}
            for t in logprobs
        ]
    }


def completion_logprobs(logprobs: Sequence[TokenLogprob] | None, start: int = 0) -> dict[str, Any] | None:
    """Completions' logprobs; ``start``: the text offset of the first token (a stream's later chunks)."""
    if logprobs is None:
        return None
    offsets, pos = [], start
    for t in logprobs:
        offsets.append(pos)
        pos += len(t.token)
    return {
        "tokens": [t.token for t in logprobs],
        "token_logprobs": [t.logprob for t in logprobs],
        "top_logprobs": [dict(t.top) for t in logprobs],
        "text_offset": offsets,
    }


def _completion_body(
    object_: str, result: ChatResult, choices: list[dict[str, Any]], *, id_: str, created: int, model: str
) -> dict[str, Any]:
    """The envelope both completion endpoints share."""
    return {
        "id": id_,
        "object": object_,
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": result.usage.to_dict(),
        "edgereason": edgereason_report(result),
        # Strategy reports (self_consistency, lorid) also stand at the top level, as their issues define.
        **result.extra,
    }


def chat_completion(result: ChatResult, *, id_: str, created: int, model: str) -> dict[str, Any]:
    choices = [
        {
            "index": c.index,
            "message": chat_message(c),
            "logprobs": chat_logprobs(c.logprobs),
            "finish_reason": finish_reason(c),
        }
        for c in result.choices
    ]
    return _completion_body("chat.completion", result, choices, id_=id_, created=created, model=model)


def text_completion(result: ChatResult, *, id_: str, created: int, model: str) -> dict[str, Any]:
    choices = [
        {
            "index": c.index,
            "text": c.content,
            "reasoning_content": c.reasoning or None,
            "logprobs": completion_logprobs(c.logprobs),
            "finish_reason": finish_reason(c),
        }
        for c in result.choices
    ]
    return _completion_body("text_completion", result, choices, id_=id_, created=created, model=model)
