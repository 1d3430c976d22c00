"""Tool definitions, assistant tool calls and tool results in the prompt.

A chat template that reads ``tools`` gets them as transformers passes them (OpenAI tool objects), and
the messages as they are (assistant ``tool_calls`` with their arguments decoded to objects, ``tool``
messages with ``tool_call_id``). A template without tool support gets the generic fallback instead:
the tools described in the system prompt with the ``<tool_call>`` JSON format, earlier calls written
into the assistant's text that way, and tool results as user turns in ``<tool_response>`` tags.
"""

from __future__ import annotations

import json
from typing import Any

from .spec import ToolRequest

FALLBACK_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query. "
    "The functions are described in JSON within <tools></tools> tags:\n<tools>"
)
FALLBACK_FOOTER = (
    "\n</tools>\n\nTo call a function, reply with a JSON object holding its name and arguments within "
    '<tool_call></tool_call> tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>"
)


def fallback_system_prompt(tools: ToolRequest) -> str:
    """The generic description of ``tools`` for templates that cannot render them."""
    lines = [json.dumps(t.to_dict(), ensure_ascii=False) for t in tools.tools]
    return FALLBACK_HEADER + "".join("\n" + line for line in lines) + FALLBACK_FOOTER


def call_text(name: str, arguments: Any) -> str:
    """One call in the generic ``<tool_call>`` format."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def fallback_messages(messages: list[dict[str, Any]], tools: ToolRequest | None) -> list[dict[str, Any]]:
    """Messages a template without tool support can render: plain roles and text only."""
    out: list[dict[str, Any]] = []
    for m in messages:
        calls = m.get("tool_calls")
        if m["role"] == "assistant" and calls:
            text = "\n".join(call_text(c["function"]["name"], c["function"]["arguments"]) for c in calls)
            content = m["content"] + ("\n" if m["content"] else "") + text
            out.append({k: v for k, v in m.items() if k != "tool_calls"} | {"content": content})
        elif m["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"})
        else:
            out.append(m)
    if tools is not None and tools.active:
        prompt = fallback_system_prompt(tools)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + prompt}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out
