"""A request's tools: OpenAI's ``tools``, ``tool_choice`` and ``parallel_tool_calls``, validated once."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import InvalidRequestError

# OpenAI's rule for function names.
FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_TOOLS = 128
MAX_FORCED_CALLS = 8  # most calls a forced reply may hold with parallel_tool_calls: true
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
TOOL_FIELDS = ("tools", "tool_choice", "parallel_tool_calls")

ChoiceMode = Literal["none", "auto", "required"]


@dataclass(frozen=True)
class FunctionTool:
    name: str
    description: str | None
    parameters: Mapping[str, Any]  # a JSON Schema for the arguments object

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI tool object chat templates receive (as transformers passes it)."""
        fn: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            fn["description"] = self.description
        fn["parameters"] = dict(self.parameters)
        return {"type": "function", "function": fn}


@dataclass(frozen=True)
class ToolRequest:
    """The tools one request offers and how the model must use them.

    ``mode`` "none": the model is not told about the tools and nothing is parsed; "auto": it may call
    them; "required": it must call at least one (``named``: exactly that function).
    """

    tools: tuple[FunctionTool, ...]
    mode: ChoiceMode = "auto"
    named: str | None = None
    parallel: bool | None = None  # None: not sent

    @property
    def parallel_calls(self) -> bool:
        """Whether a reply may keep several calls (OpenAI's default: yes)."""
        return self.parallel is not False

    @property
    def forced_calls(self) -> int:
        """How many calls a forced reply may hold: one unless parallel_tool_calls is sent as true (as
        llama-server: a small model forced to call otherwise repeats the call until max_tokens)."""
        return MAX_FORCED_CALLS if self.parallel is True else 1

    @property
    def active(self) -> bool:
        return bool(self.tools) and self.mode != "none"

    @property
    def forced(self) -> bool:
        return self.active and self.mode == "required"

    @property
    def names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.tools)

    @property
    def callable_tools(self) -> tuple[FunctionTool, ...]:
        """The tools a forced call may use (the named one, else all)."""
        return tuple(t for t in self.tools if self.named is None or t.name == self.named)

    def template_tools(self) -> list[dict[str, Any]] | None:
        return [t.to_dict() for t in self.tools] if self.active else None


def pop_tool_fields(fields: dict[str, Any]) -> ToolRequest | None:
    """Take ``tools``/``tool_choice``/``parallel_tool_calls`` out of request fields (None if absent)."""
    if not any(k in fields for k in TOOL_FIELDS):
        return None
    return parse_tool_request(
        fields.pop("tools", None), fields.pop("tool_choice", None), fields.pop("parallel_tool_calls", None)
    )


def parse_tool_request(tools: Any, tool_choice: Any = None, parallel_tool_calls: Any = None) -> ToolRequest:
    """Validate OpenAI's tool fields; InvalidRequestError names the offending one."""
    specs = _parse_tools(tools)
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise InvalidRequestError("parallel_tool_calls must be true or false", param="parallel_tool_calls")
    parallel = parallel_tool_calls
    names = {t.name for t in specs}
    if tool_choice is None:
        return ToolRequest(specs, "auto" if specs else "none", parallel=parallel)
    if tool_choice in ("none", "auto"):
        return ToolRequest(specs, tool_choice, parallel=parallel)
    if tool_choice == "required":
        if not specs:
            raise InvalidRequestError(
                "tool_choice 'required' needs at least one tool in tools", param="tool_choice"
            )
        return ToolRequest(specs, "required", parallel=parallel)
    if isinstance(tool_choice, Mapping):
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if tool_choice.get("type") != "function" or not isinstance(name, str):
            raise InvalidRequestError(
                'tool_choice must be "none", "auto", "required" or {"type": "function", "function": '
                '{"name": ...}}',
                param="tool_choice",
            )
        if name not in names:
            known = ", ".join(sorted(names)) or "none"
            raise InvalidRequestError(
                f"tool_choice names the function {name!r}, which is not in tools (tools: {known})",
                param="tool_choice",
            )
        return ToolRequest(specs, "required", named=name, parallel=parallel)
    raise InvalidRequestError(
        f'tool_choice must be "none", "auto", "required" or a function object, got {tool_choice!r}',
        param="tool_choice",
    )


def _parse_tools(tools: Any) -> tuple[FunctionTool, ...]:
    if tools is None:
        return ()
    if not isinstance(tools, Sequence) or isinstance(tools, (str, bytes)):
        raise InvalidRequestError("tools must be a list of function tools", param="tools")
    if len(tools) > MAX_TOOLS:
        raise InvalidRequestError(f"tools: at most {MAX_TOOLS} tools per request", param="tools")
    specs: list[FunctionTool] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping) or tool.get("type") != "function":
            raise InvalidRequestError(
                f'{where}: only {{"type": "function", "function": {{...}}}} tools are supported',
                param="tools",
            )
        fn = tool.get("function")
        if not isinstance(fn, Mapping):
            raise InvalidRequestError(f"{where}.function must be an object with a name", param="tools")
        name = fn.get("name")
        if not isinstance(name, str) or not FUNCTION_NAME.match(name):
            raise InvalidRequestError(
                f"{where}.function.name must be 1-64 letters, digits, '_' or '-', got {name!r}", param="tools"
            )
        if name in seen:
            raise InvalidRequestError(f"{where}: the function name {name!r} is listed twice", param="tools")
        seen.add(name)
        description = fn.get("description")
        if description is not None and not isinstance(description, str):
            raise InvalidRequestError(f"{where}.function.description must be a string", param="tools")
        params = fn.get("parameters")
        if params is None:
            params = EMPTY_PARAMETERS
        if not isinstance(params, Mapping):
            raise InvalidRequestError(
                f"{where}.function.parameters must be a JSON Schema object", param="tools"
            )
        if params.get("type", "object") != "object":
            raise InvalidRequestError(
                f"{where}.function.parameters must describe an object (type 'object'), "
                f"got type {params.get('type')!r}",
                param="tools",
            )
        specs.append(FunctionTool(name, description, params))
    return tuple(specs)
