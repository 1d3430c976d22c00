"""Tool-call formats and the streaming parser that lifts calls out of a model's answer text.

Formats (see ``ToolFormat``): Hermes / Qwen2.5 / Qwen3 ``<tool_call>{"name", "arguments"}</tool_call>``;
Llama 3.x JSON (``{"name", "parameters"}`` as the whole reply, optionally after ``<|python_tag|>``);
Mistral ``[TOOL_CALLS][{"name", "arguments"}, ...]`` (and the newer ``[TOOL_CALLS]name[ARGS]{...}``);
a generic fallback that takes ``<tool_call>`` tags or a bare JSON call as the whole reply.

The parser only ever sees the content channel: text the model writes while thinking is reasoning.
A malformed call (bad JSON, no name, an unknown function) stays content; parsing never raises.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

import jinja2
import jinja2.meta


class ToolFormat(str, Enum):
    HERMES = "hermes"
    LLAMA3_JSON = "llama3_json"
    MISTRAL = "mistral"
    GENERIC = "generic"


HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
MISTRAL_TAG, MISTRAL_ARGS, MISTRAL_CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
PYTHON_TAG = "<|python_tag|>"
FENCE = "```"


def template_supports_tools(template: str | None) -> bool:
    """Whether the chat template reads the ``tools`` variable (else tools go in a generic system prompt)."""
    if not template:
        return False
    try:
        return "tools" in jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(template))
    except jinja2.TemplateSyntaxError:
        return "tools" in template


def detect_tool_format(template: str | None) -> ToolFormat:
    """The tool-call format a chat template teaches its model (GENERIC when it names none)."""
    tpl = template or ""
    if HERMES_OPEN in tpl:
        return ToolFormat.HERMES
    if MISTRAL_TAG in tpl:
        return ToolFormat.MISTRAL
    if PYTHON_TAG in tpl or ("ipython" in tpl and '"parameters"' in tpl):
        return ToolFormat.LLAMA3_JSON
    return ToolFormat.GENERIC


@dataclass(frozen=True)
class ParsedCall:
    """A tool call as the model wrote it: the function's name and its arguments as a JSON object text."""

    name: str
    arguments: str


Event = str | ParsedCall  # content text, or a complete call


def _as_call(obj: Any, names: frozenset[str] | None) -> ParsedCall | None:
    """A call from a decoded JSON value ``{"name", "arguments" | "parameters"}``, or None if it is not one."""
    if not isinstance(obj, dict):
        return None
    fn = obj.get("function")
    if isinstance(fn, dict) and "name" not in obj:  # {"type": "function", "function": {...}}
        obj = fn
    name = obj.get("name")
    if not isinstance(name, str) or not name or (names is not None and name not in names):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ParsedCall(name, json.dumps(args, ensure_ascii=False))


def _strip_fence(text: str) -> str:
    s = text.strip()
    if s.startswith(FENCE):
        s = s[len(FENCE) :]
        s = s[s.find("\n") + 1 :] if "\n" in s else s.removeprefix("json")
        s = s.rstrip()
        s = s.removesuffix(FENCE)
    return s.strip()


_DECODER = json.JSONDecoder()
_SEPARATORS = re.compile(r"[\s;,]*")


def parse_json_calls(text: str, names: frozenset[str] | None) -> list[ParsedCall] | None:
    """Calls from JSON text holding one call, a list of calls, or calls separated by ``;``/whitespace.

    None unless the whole text is calls (a reply that merely contains JSON is content).
    """
    s = _strip_fence(text.strip().removeprefix(PYTHON_TAG))
    calls: list[ParsedCall] = []
    pos = 0
    while True:
        pos = _SEPARATORS.match(s, pos).end()  # type: ignore[union-attr]
        if pos >= len(s):
            break
        try:
            value, pos = _DECODER.raw_decode(s, pos)
        except ValueError:
            return None
        items = value if isinstance(value, list) else [value]
        for item in items:
            call = _as_call(item, names)
            if call is None:
                return None
            calls.append(call)
    return calls or None


def parse_mistral_calls(text: str, names: frozenset[str] | None) -> list[ParsedCall] | None:
    """What follows ``[TOOL_CALLS]``: a JSON list of calls, or ``name[ARGS]{...}`` segments."""
    calls: list[ParsedCall] = []
    for segment in text.split(MISTRAL_TAG):
        seg = segment.strip()
        if not seg:
            continue
        if MISTRAL_ARGS in seg and not seg.startswith(("[", "{")):
            head, _, args = seg.partition(MISTRAL_ARGS)
            name = head.partition(MISTRAL_CALL_ID)[0].strip()
            try:
                value, end = _DECODER.raw_decode(args.strip())
            except ValueError:
                return None
            call = _as_call({"name": name, "arguments": value}, names)
            if call is None or args.strip()[end:].strip():
                return None
            calls.append(call)
            continue
        found = parse_json_calls(seg, names)
        if found is None:
            return None
        calls += found
    return calls or None


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ToolCallParser:
    """Incremental: ``feed`` answer text as it is generated, ``flush`` at the end.

    Returns events in order: content strings and complete ``ParsedCall``s. Text that could start a
    call's opening tag is held back until the next piece decides it, so tags split across tokens never
    leak as content. A call is released once it is complete (its closing tag, or the end of the reply
    for formats without one). Whitespace around calls is dropped. The same events come out however the
    text is split, so a streamed reply and a whole one parse alike.
    """

    def __init__(self, fmt: ToolFormat, names: frozenset[str] | None = None) -> None:
        self.fmt = fmt
        self.names = names
        # Formats whose call may be the whole reply: decided at the first non-blank character.
        self._starters: tuple[str, ...] = ()
        if fmt is ToolFormat.LLAMA3_JSON:
            self._starters = ("{", "[", PYTHON_TAG)
        elif fmt is ToolFormat.GENERIC:
            self._starters = ("{", "[", FENCE)
        self._open = {ToolFormat.MISTRAL: MISTRAL_TAG, ToolFormat.LLAMA3_JSON: ""}.get(fmt, HERMES_OPEN)
        self._close = HERMES_CLOSE if self._open == HERMES_OPEN else ""
        self._state = "start" if self._starters else "text"
        self._buf = ""
        self._held_ws = ""  # trailing content whitespace, emitted only if more content follows
        self._content_started = False
        self._after_call = False

    def feed(self, text: str) -> list[Event]:
        self._buf += text
        out: list[Event] = []
        while True:
            before = (self._state, len(self._buf))
            getattr(self, f"_step_{self._state}")(out)
            if (self._state, len(self._buf)) == before:
                return out

    def flush(self) -> list[Event]:
        out: list[Event] = []
        buf, self._buf = self._buf, ""
        if self._state == "call":  # an unclosed call: a complete JSON body still counts
            self._finish_call(buf, out, closed=False)
        elif self._state == "whole":
            calls = parse_json_calls(buf, self.names)
            self._calls_or_text(calls, buf, out)
        elif self._state == "tail":
            calls = parse_mistral_calls(buf[len(MISTRAL_TAG) :], self.names)
            self._calls_or_text(calls, buf, out)
        elif buf:
            self._text(buf, out)
        self._state = "text"
        return out

    # -- states ------------------------------------------------------------------------------------
    def _step_start(self, out: list[Event]) -> None:
        s = self._buf.lstrip()
        if not s:
            return
        if s.startswith(self._starters):
            self._state = "whole"
        elif any(tag.startswith(s) for tag in self._starters):
            return  # a partial starter: wait
        else:
            self._state = "text"

    def _step_whole(self, out: list[Event]) -> None:
        pass  # held to the end (flush decides)

    def _step_tail(self, out: list[Event]) -> None:
        pass

    def _step_text(self, out: list[Event]) -> None:
        if not self._open:
            self._text(self._buf, out)
            self._buf = ""
            return
        idx = self._buf.find(self._open)
        if idx >= 0:
            self._text(self._buf[:idx], out)
            self._held_ws = ""
            if self._close:
                self._buf = self._buf[idx + len(self._open) :]
                self._state = "call"
            else:
                self._buf = self._buf[idx:]
                self._state = "tail"
            return
        keep = _partial_suffix(self._buf, self._open)
        self._text(self._buf[: len(self._buf) - keep], out)
        self._buf = self._buf[len(self._buf) - keep :]

    def _step_call(self, out: list[Event]) -> None:
        idx = self._buf.find(self._close)
        if idx < 0:
            return
        body, self._buf = self._buf[:idx], self._buf[idx + len(self._close) :]
        self._state = "text"
        self._finish_call(body, out, closed=True)

    # -- emitting ------------------------------------------------------------------------------------
    def _finish_call(self, body: str, out: list[Event], *, closed: bool) -> None:
        calls = parse_json_calls(body, self.names)
        self._calls_or_text(calls, self._open + body + (self._close if closed else ""), out)

    def _calls_or_text(self, calls: list[ParsedCall] | None, raw: str, out: list[Event]) -> None:
        if calls is None:
            self._text(raw, out)
        else:
            for call in calls:
                self._call(call, out)

    def _call(self, call: ParsedCall, out: list[Event]) -> None:
        self._held_ws = ""
        self._after_call = True
        out.append(call)

    def _text(self, text: str, out: list[Event]) -> None:
        if not self._content_started or self._after_call:
            text = text.lstrip()
        if not text:
            return
        body = text.rstrip()
        if body:
            out.append(self._held_ws + body)
            self._content_started = True
            self._after_call = False
            self._held_ws = text[len(body) :]
        else:
            self._held_ws += text


def parse_tool_calls(
    text: str, fmt: ToolFormat, names: frozenset[str] | None = None
) -> tuple[str, list[ParsedCall]]:
    """A whole reply's content (calls removed) and its calls."""
    parser = ToolCallParser(fmt, names)
    events = parser.feed(text) + parser.flush()
    content = "".join(e for e in events if isinstance(e, str))
    return content, [e for e in events if isinstance(e, ParsedCall)]
