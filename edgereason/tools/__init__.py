"""OpenAI tool calling: the request's tools, their place in the prompt, the model's call formats, and
grammars that force a schema-valid call."""

from __future__ import annotations

from .parse import (
    ParsedCall,
    ToolCallParser,
    ToolFormat,
    detect_tool_format,
    parse_tool_calls,
    template_supports_tools,
)
from .spec import TOOL_FIELDS, FunctionTool, ToolRequest, parse_tool_request, pop_tool_fields
from .stream import ToolCallStream

__all__ = [
    "TOOL_FIELDS",
    "FunctionTool",
    "ParsedCall",
    "ToolCallParser",
    "ToolCallStream",
    "ToolFormat",
    "ToolRequest",
    "detect_tool_format",
    "parse_tool_calls",
    "parse_tool_request",
    "pop_tool_fields",
    "template_supports_tools",
]
