"""Grammars that force a schema-valid tool call (``tool_choice: "required"`` or a named function).

The call's JSON (``{"name": ..., "arguments": {...}}``, Llama 3's ``"parameters"``) is a JSON Schema
turned into GBNF by ``structured.grammar_for_json_schema``; a rule around it writes the model's own
call format. Like every answer grammar it applies after the thinking channel closes.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidRequestError
from ..structured import grammar_for_json_schema
from .parse import HERMES_CLOSE, HERMES_OPEN, MISTRAL_TAG, ToolFormat
from .spec import ToolRequest

TOOL_CALLS_ROOT = "edgereason-tool-calls"


def call_schema(tools: ToolRequest, fmt: ToolFormat) -> dict[str, Any]:
    """The JSON Schema of one call to any tool ``tools`` allows."""
    key = "parameters" if fmt is ToolFormat.LLAMA3_JSON else "arguments"
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, key: dict(t.parameters)},
            "required": ["name", key],
            "additionalProperties": False,
        }
        for t in tools.callable_tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def tool_call_grammar(tools: ToolRequest, fmt: ToolFormat) -> tuple[str, str]:
    """(GBNF, root rule) for one call (up to ``tools.forced_calls``) in the model's format."""
    try:
        gbnf = grammar_for_json_schema(call_schema(tools, fmt), param="tools")
    except InvalidRequestError as exc:  # name the field the client sent
        raise InvalidRequestError(
            f"tools: a function's parameters schema cannot be turned into a grammar ({exc})", param="tools"
        ) from None
    more = tools.forced_calls - 1
    if fmt is ToolFormat.LLAMA3_JSON:  # one JSON call is the whole reply
        rule = "root"
    elif fmt is ToolFormat.MISTRAL:
        rule = f'"{MISTRAL_TAG}[" root' + (f' ("," " "? root){{0,{more}}}' if more else "") + ' "]"'
    else:  # hermes and the generic fallback prompt
        call = f'"{HERMES_OPEN}\\n" root "\\n{HERMES_CLOSE}"'
        rule = call + (f' ("\\n" {call}){{0,{more}}}' if more else "")
    return f"{gbnf.rstrip()}\n{TOOL_CALLS_ROOT} ::= {rule}\n", TOOL_CALLS_ROOT
