"""The app's event handlers over the Engine, free of Gradio so they can be driven directly in tests.

A handler turns control values into GenerationOptions fields, calls ``engine.stream`` and yields
``Reply`` snapshots; ``ui.py`` maps them onto components. Generation itself lives in the engine.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from edgereason.errors import EdgeReasonError
from edgereason.job import ChatStream
from edgereason.options import DEFAULT_EFFORT_BUDGETS, GenerationOptions
from edgereason.surface import ChatEngine

from . import views

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

    def fields(self) -> dict[str, Any]:
        """GenerationOptions fields for these controls (the engine validates them)."""
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
        return out


@dataclass
class ChatSession:
    """One browser session: what the chat shows, what the model is told, the request in flight."""

    display: list[dict[str, Any]] = field(default_factory=list)
    transcript: list[dict[str, str]] = field(default_factory=list)
    stream: ChatStream | None = None
    stop_requested: bool = False

    def __deepcopy__(self, memo: dict[int, Any]) -> ChatSession:
        # Gradio copies a State's initial value per browser session; a live stream is never shared.
        return ChatSession(copy.deepcopy(self.display, memo), copy.deepcopy(self.transcript, memo))


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
        """Stream the reply to ``message``: reasoning into a Thinking panel, then the answer, then stats."""
        message = (message or "").strip()
        if not message:
            yield Reply(copy.deepcopy(session.display))
            return
        session.stop_requested = False
        session.display.append({"role": "user", "content": message})
        started = time.monotonic()
        try:
            fields = controls.fields()
            stream = self.engine.stream([*session.transcript, {"role": "user", "content": message}], **fields)
        except EdgeReasonError as exc:
            yield self._error(session, str(exc))
            return
        session.stream = stream
        sampling = "self_consistency" in fields
        thinking: dict[str, Any] | None = None
        answer: dict[str, Any] | None = None
        if sampling or fields.get("strategy") == "lorid":
            what = f"sampling {fields['self_consistency']['samples']} paths" if sampling else "running LoRID"
            thinking = _message(
                f"({what}; the chosen path appears when the vote is done)", THINKING_TITLE, "pending"
            )
            session.display.append(thinking)
        placeholder = thinking is not None
        yield Reply(copy.deepcopy(session.display))
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
                        answer = _message("")
                        session.display.append(answer)
                    answer["content"] += chunk.text
                now = time.monotonic()
                if now - last >= STREAM_REFRESH_S:
                    last = now
                    yield Reply(copy.deepcopy(session.display))
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
        yield self._finish(session, message, stream, thinking, answer, time.monotonic() - started)

    def _finish(
        self,
        session: ChatSession,
        message: str,
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
            answer = _message(f"*({note})*")
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
        if result.content:
            session.transcript += [
                {"role": "user", "content": message},
                {"role": "assistant", "content": result.content},
            ]
        reply = Reply(copy.deepcopy(session.display))
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
        session.display.append(_message(f"{prefix}{text}"))
        return Reply(copy.deepcopy(session.display), error=text)

    def stop(self, session: ChatSession) -> None:
        """Cancel the request in flight; the engine frees its sequences and ``respond`` ends normally."""
        session.stop_requested = True
        if session.stream is not None:
            session.stream.cancel()

    def clear(self, session: ChatSession) -> Reply:
        self.stop(session)
        session.display.clear()
        session.transcript.clear()
        return Reply([])

    @staticmethod
    def effort_preset(effort: str) -> tuple[str, int | None]:
        """A reasoning_effort preset moves the budget controls to match: (budget_mode, budget)."""
        budget = DEFAULT_EFFORT_BUDGETS.get(effort)
        if budget is None:
            return "unlimited", None
        return "fixed", budget
