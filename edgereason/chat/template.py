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
        out.append(msg)
    return out


def render_chat(
    template: str,
    messages: Sequence[dict[str, Any]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    enable_thinking: bool | None = None,
) -> str:
    """Render ``messages`` with a jinja chat template, passing what transformers passes."""
    variables: dict[str, Any] = {
        "messages": list(messages),
        "add_generation_prompt": add_generation_prompt,
        "bos_token": bos_token,
        "eos_token": eos_token,
        "tools": None,
        "documents": None,
    }
    if enable_thinking is not None:
        variables["enable_thinking"] = enable_thinking
    try:
        return _compile(template).render(**variables)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"rendering the chat template failed: {exc}") from exc
