"""Chat templates rendered the way transformers renders them (sandboxed jinja2)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import ChatTemplateError, InvalidRequestError

VALID_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"the chat template does not parse: {exc}") from exc


def validate_messages(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """Check the OpenAI message shape and return plain dicts (content always a string)."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise InvalidRequestError(
            "messages must be a non-empty list of {role, content} objects", param="messages"
        )
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidRequestError(
                f"messages[{i}] must be an object with role and content", param="messages"
            )
        role = m.get("role")
        if role not in VALID_ROLES:
            raise InvalidRequestError(
                f"messages[{i}].role must be one of {sorted(VALID_ROLES)}, got {role!r}", param="messages"
            )
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text parts
            texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if len(texts) != len(content):
                raise InvalidRequestError(
                    f"messages[{i}].content: only text parts are supported", param="messages"
                )
            content = "".join(texts)
        if content is None and role == "assistant":
            content = ""
        if not isinstance(content, str):
            raise InvalidRequestError(f"messages[{i}].content must be a string", param="messages")
        msg = {"role": "system" if role == "developer" else role, "content": content}
        if role == "assistant" and isinstance(m.get("reasoning_content"), str):
            msg["reasoning_content"] = m["reasoning_content"]
        if role == "assistant" and m.get("tool_calls"):
            msg["tool_calls"] = _tool_calls(m["tool_calls"], i)
        if role == "tool":
            for key in ("tool_call_id", "name"):
                if isinstance(m.get(key), str):
                    msg[key] = m[key]
        out.append(msg)
    return out


def _tool_calls(calls: Any, i: int) -> list[dict[str, Any]]:
    """An assistant message's OpenAI ``tool_calls``, arguments decoded to objects (as templates expect)."""
    where = f"messages[{i}].tool_calls"
    if not isinstance(calls, list):
        raise InvalidRequestError(f"{where} must be a list", param="messages")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidRequestError(
                f"{where}[{j}] must be {{id, type, function: {{name, arguments}}}}", param="messages"
            )
        args = fn.get("arguments", {})  # type: ignore[union-attr]
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                raise InvalidRequestError(
                    f"{where}[{j}].function.arguments is not valid JSON", param="messages"
                ) from None
        if not isinstance(args, dict):
            raise InvalidRequestError(
                f"{where}[{j}].function.arguments must be a JSON object", param="messages"
            )
        entry: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": args}}
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        out.append(entry)
    return out


def render_chat(
    template: str,
    messages: Sequence[dict[str, Any]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    enable_thinking: bool | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """Render ``messages`` with a jinja chat template, passing what transformers passes (``tools``: OpenAI
    tool objects, for templates that read them)."""
    variables: dict[str, Any] = {
        "messages": list(messages),
        "add_generation_prompt": add_generation_prompt,
        "bos_token": bos_token,
        "eos_token": eos_token,
        "tools": tools or None,
        "documents": None,
    }
    if enable_thinking is not None:
        variables["enable_thinking"] = enable_thinking
    try:
        return _compile(template).render(**variables)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"rendering the chat template failed: {exc}") from exc
