"""The app's event handlers over the Engine, free of Gradio so they can be driven directly in tests.

A handler turns control values into GenerationOptions fields, calls ``engine.stream`` and yields
``Reply`` snapshots; ``ui.py`` maps them onto components. Generation itself lives in the engine.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from edgereason.errors import EdgeReasonError, InvalidRequestError
from edgereason.job import ChatStream
from edgereason.options import DEFAULT_EFFORT_BUDGETS, GenerationOptions
from edgereason.result import ToolCallChunk
from edgereason.surface import ChatEngine

from . import markup, views

log = logging.getLogger(__name__)

BASE_MODEL = "(base model)"
THINKING_TITLE = "Thinking"
ERROR_PREFIX = "⚠️ "
DEFAULT_MAX_TOKENS = 512
MAX_SAMPLES = 16
# Redraw at most this often while streaming: each redraw sends the whole history to the browser.
STREAM_REFRESH_S = 0.05

THINKING_CHOICES = {"auto": "auto", "on": True, "off": False}
EFFORT_CHOICES = ("default", "none", "low", "medium", "high")
BUDGET_MODES = ("unlimited", "fixed", "auto")
ADAPTIVE_CHOICES = ("off", "beta", "esc")
TOOL_CHOICES = ("auto", "required", "none")
ANSWER_FORMATS = ("text", "json")
# Keys of a display message that only the app reads (rendered away before Gradio sees the message).
_CALLS, _JSON = "_tool_calls", "_json"


@dataclass(frozen=True)
class Controls:
    """The sidebar's values, in the order ``ui.py`` passes its components."""

    thinking: str = "auto"
    effort: str = "default"
    budget_mode: str = "unlimited"
    budget: int = 1024
    threshold: float = 0.95
    samples: int = 1
    adaptive: str = "off"
    adapter: str = BASE_MODEL
    lorid: bool = False
    temperature: float = 0.7
    max_tokens: int = DEFAULT_MAX_TOKENS
    python_tool: bool = False
    tools: str = ""  # OpenAI function tools as JSON (a list, or one tool)
    tool_choice: str = "auto"
    answer_format: str = "text"

    def fields(self) -> dict[str, Any]:
        """GenerationOptions fields (and chat's tool fields) for these controls; the engine validates
        them. InvalidRequestError when the function tools are not JSON."""
        out: dict[str, Any] = {
            "max_tokens": int(self.max_tokens),
            "temperature": float(self.temperature),
            "thinking": THINKING_CHOICES.get(self.thinking, "auto"),
        }
        if self.effort in EFFORT_CHOICES[1:]:
            out["reasoning_effort"] = self.effort
        if self.budget_mode == "fixed":
            out["thinking_budget"] = int(self.budget)
        elif self.budget_mode == "auto":
            out["thinking_budget"] = "auto"
            out["early_exit_threshold"] = float(self.threshold)
        if int(self.samples) > 1:
            sc: dict[str, Any] = {
                "samples": int(self.samples),
                "adaptive": self.adaptive if self.adaptive in ADAPTIVE_CHOICES[1:] else False,
            }
            if self.temperature > 0:  # greedy samples would all be the same path
                sc["temperature"] = float(self.temperature)
            out["self_consistency"] = sc
        known = GenerationOptions.model_fields
        if self.adapter and self.adapter != BASE_MODEL and "adapter" in known:
            out["adapter"] = self.adapter
        if self.lorid and "strategy" in known:
            out["strategy"] = "lorid"
        if self.python_tool:
            out["builtin_tools"] = ["python"]
        if self.answer_format == "json":
            out["response_format"] = {"type": "json_object"}
        tools = parse_tools(self.tools)
        if tools:
            out["tools"] = tools
            out["tool_choice"] = self.tool_choice if self.tool_choice in TOOL_CHOICES else "auto"
        return out


def parse_tools(text: str) -> list[dict[str, Any]]:
    """The function tools box: a JSON list of OpenAI tools, one tool, or bare ``{"name", "parameters"}``
    functions (wrapped as OpenAI's ``{"type": "function", "function": …}``)."""
    if not (text or "").strip():
        return []
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidRequestError(f"the function tools are not JSON: {exc}", param="tools") from None
    items = value if isinstance(value, list) else [value]
    return [
        {"type": "function", "function": t} if isinstance(t, dict) and "function" not in t else t
        for t in items
    ]


@dataclass
class ChatSession:
    """One browser session: what the chat shows, what the model is told, the request in flight."""

    display: list[dict[str, Any]] = field(default_factory=list)
    transcript: list[dict[str, Any]] = field(default_factory=list)
    stream: ChatStream | None = None
    stop_requested: bool = False
    # The last reply's function calls still waiting for a result (the user's next messages supply them).
    pending_calls: list[dict[str, Any]] = field(default_factory=list)

    def __deepcopy__(self, memo: dict[int, Any]) -> ChatSession:
        # Gradio copies a State's initial value per browser session; a live stream is never shared.
        return ChatSession(copy.deepcopy(self.display, memo), copy.deepcopy(self.transcript, memo))

    def view(self) -> list[dict[str, Any]]:
        """The messages as Gradio shows them: answers and reasoning through ``markup``."""
        return [render_message(m) for m in self.display]


def render_message(msg: dict[str, Any]) -> dict[str, Any]:
    """One display message for Gradio: the app's own keys dropped, the model's text rendered."""
    out = {k: v for k, v in msg.items() if not k.startswith("_")}
    if msg["role"] != "assistant" or msg.get("_plain"):
        return out
    title = (msg.get("metadata") or {}).get("title")
    if title is None:
        out["content"] = markup.answer_markdown(
            msg["content"], msg.get(_CALLS, ()), json_expected=bool(msg.get(_JSON))
        )
    elif title == THINKING_TITLE:
        out["content"] = markup.reasoning_markdown(msg["content"])
    return copy.deepcopy(out)


@dataclass
class Reply:
    """A snapshot of what the app shows after one step of a handler."""

    history: list[dict[str, Any]]
    votes: list[tuple[str, float]] | None = None
    vote_summary: str = ""
    samples_html: str = ""
    lorid: str = ""
    error: str | None = None


def _message(
    content: str, title: str | None = None, status: str | None = None, **meta: Any
) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": content}
    if title is not None:
        msg["metadata"] = {"title": title, **({"status": status} if status else {}), **meta}
    return msg


class ChatHandlers:
    """What the UI's events call; one instance per app, state lives in each ChatSession."""

    def __init__(self, engine: ChatEngine) -> None:
        self.engine = engine

    @property
    def max_samples(self) -> int:
        return max(1, min(MAX_SAMPLES, self.engine.capabilities.max_sequences))

    @property
    def adapter_choices(self) -> list[str]:
        return [BASE_MODEL, *self.engine.adapter_names]

    @property
    def supports_lorid(self) -> bool:
        return "strategy" in GenerationOptions.model_fields

    def model_info(self) -> str:
        return views.model_info_markdown(self.engine)

    def respond(self, session: ChatSession, message: str, controls: Controls) -> Iterator[Reply]:
        """Stream the reply to ``message``: reasoning into a Thinking panel, then the answer, then stats.
        While the last reply's function calls wait for results, ``message`` is the next call's result."""
        message = (message or "").strip()
        if not message:
            yield Reply(session.view())
            return
        session.stop_requested = False
        if session.pending_calls:
            call = session.pending_calls.pop(0)
            call["result"] = message
            session.display.append({"role": "user", "content": f"(result of {call['name']}) {message}"})
            session.transcript.append({"role": "tool", "tool_call_id": call["id"], "content": message})
            if session.pending_calls:  # the model answers once every call has its result
                nxt = session.pending_calls[0]["name"]
                session.display.append({**_message(f"*(now the result of {nxt})*"), "_plain": True})
                yield Reply(session.view())
                return
            turn: dict[str, Any] | None = None
        else:
            session.display.append({"role": "user", "content": message})
            turn = {"role": "user", "content": message}
        started = time.monotonic()
        try:
            fields = controls.fields()
            self._check_tools(fields)
            messages = [*session.transcript, *([turn] if turn else [])]
            stream = self.engine.stream(messages, **fields)
        except EdgeReasonError as exc:
            yield self._error(session, str(exc))
            return
        except Exception as exc:  # a refusal must reach the user as a message, not a crashed event
            log.exception("the request was not accepted")
            yield self._error(session, f"the request failed: {exc}")
            return
        session.stream = stream
        sampling = "self_consistency" in fields
        json_expected = "response_format" in fields
        thinking: dict[str, Any] | None = None
        answer: dict[str, Any] | None = None
        if sampling or fields.get("strategy") == "lorid":
            what = f"sampling {fields['self_consistency']['samples']} paths" if sampling else "running LoRID"
            thinking = _message(
                f"({what}; the chosen path appears when the vote is done)", THINKING_TITLE, "pending"
            )
            session.display.append(thinking)
        placeholder = thinking is not None
        yield Reply(session.view())
        last = 0.0
        try:
            for chunk in stream:
                if chunk.channel == "reasoning" and answer is None:
                    if thinking is None:
                        thinking = _message("", THINKING_TITLE, "pending")
                        session.display.append(thinking)
                    elif placeholder:
                        thinking["content"], placeholder = "", False
                    thinking["content"] += chunk.text
                else:
                    if answer is None:
                        if placeholder and thinking is not None:
                            thinking["content"], placeholder = "", False
                        if thinking is not None:
                            thinking["metadata"].update(
                                status="done", duration=round(time.monotonic() - started, 1)
                            )
                        answer = {**_message(""), _CALLS: [], _JSON: json_expected}
                        session.display.append(answer)
                    if isinstance(chunk, ToolCallChunk) and chunk.call is not None:
                        c = chunk.call
                        answer[_CALLS].append({"id": c.id, "name": c.name, "arguments": c.arguments})
                    answer["content"] += chunk.text
                now = time.monotonic()
                if now - last >= STREAM_REFRESH_S:
                    last = now
                    yield Reply(session.view())
        except EdgeReasonError as exc:
            if session.stop_requested:
                yield self._error(session, "stopped before the model started", prefix="")
            else:
                yield self._error(session, str(exc))
            return
        except Exception as exc:  # a model failure must reach the user as a message, not a frozen UI
            log.exception("generation failed")
            yield self._error(session, f"the model failed: {exc}")
            return
        finally:
            session.stream = None
        yield self._finish(session, turn, stream, thinking, answer, time.monotonic() - started)

    def _check_tools(self, fields: dict[str, Any]) -> None:
        """A remote engine does not send builtin_tools yet: say so instead of answering without the tool."""
        if fields.get("builtin_tools") and self.engine.info.format == "remote":
            raise InvalidRequestError(
                "the built-in Python tool runs in a local engine; this app is connected to a remote "
                "server (openai://), which does not run it: switch the Python tool off",
                param="builtin_tools",
            )

    def _finish(
        self,
        session: ChatSession,
        turn: dict[str, Any] | None,
        stream: ChatStream,
        thinking: dict[str, Any] | None,
        answer: dict[str, Any] | None,
        elapsed: float,
    ) -> Reply:
        result = stream.result
        assert result is not None
        if thinking is not None:
            thinking["metadata"]["status"] = "done"
            thinking["metadata"].setdefault("duration", round(elapsed, 1))
            if not thinking["content"]:
                thinking["content"] = "(no reasoning)"
        if answer is None:
            if session.stop_requested:
                note = "stopped"
            elif result.answer is not None:
                note = f"no answer after thinking; the answer found in the reasoning: {result.answer}"
            elif result.finish_reason == "length":
                note = "no answer: max tokens ran out"
            else:
                note = f"no answer: the model ended after thinking ({result.finish_reason})"
            answer = {**_message(f"*({note})*"), "_plain": True}
            session.display.append(answer)
        elif session.stop_requested:
            answer["content"] += " *(stopped)*"
        session.display.append(
            _message(
                views.stats_details(result, elapsed),
                views.stats_title(result, elapsed, stopped=session.stop_requested),
                "done",
            )
        )
        if result.content or result.tool_calls:
            reply_msg: dict[str, Any] = {"role": "assistant", "content": result.content}
            if result.tool_calls:
                reply_msg["tool_calls"] = [c.to_dict() for c in result.tool_calls]
                session.pending_calls = list(answer.get(_CALLS) or [])
            session.transcript += [*([turn] if turn else []), reply_msg]
        reply = Reply(session.view())
        report = result.extra.get("self_consistency")
        if report:
            reply.votes = views.vote_rows(report)
            reply.vote_summary = views.vote_summary_markdown(report)
            reply.samples_html = views.samples_html(report)
        lorid = result.extra.get("lorid")
        if lorid:
            reply.lorid = views.lorid_markdown(lorid)
        return reply

    def _error(self, session: ChatSession, text: str, prefix: str = ERROR_PREFIX) -> Reply:
        session.display.append({**_message(f"{prefix}{text}"), "_plain": True})
        return Reply(session.view(), error=text)

    def stop(self, session: ChatSession) -> None:
        """Cancel the request in flight; the engine frees its sequences and ``respond`` ends normally."""
        session.stop_requested = True
        if session.stream is not None:
            session.stream.cancel()

    def clear(self, session: ChatSession) -> Reply:
        self.stop(session)
        session.display.clear()
        session.transcript.clear()
        session.pending_calls.clear()
        return Reply([])

    @staticmethod
    def effort_preset(effort: str) -> tuple[str, int | None]:
        """A reasoning_effort preset moves the budget controls to match: (budget_mode, budget)."""
        budget = DEFAULT_EFFORT_BUDGETS.get(effort)
        if budget is None:
            return "unlimited", None
        return "fixed", budget
