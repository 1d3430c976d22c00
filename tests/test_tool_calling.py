"""Tool calling and response_format end to end: a real `edgereason serve` process on the embedded model,
driven by the official openai client; and the Python API on the session engine.

SmolLM2-135M's template has no tool support, so these run the generic fallback (tools in the system
prompt, ``<tool_call>`` JSON). The model is too weak to call tools on its own: validity is tested on the
grammar-forced paths (tool_choice required / named, response_format), and the ``auto`` parser on replies
whose text a GBNF grammar dictates (the model writes exactly the call, or a malformed one).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest

import edgereason as er
from edgereason.tools import ToolFormat

from .test_server import Server, _start

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}
MULTIPLY = {
    "type": "function",
    "function": {
        "name": "multiply",
        "description": "Multiply two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather forecast for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 1, "maxLength": 40},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
                "hourly": {"type": "boolean"},
            },
            "required": ["city", "unit", "days"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [ADD, MULTIPLY, WEATHER]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}  # type: ignore[index]
ASK = [{"role": "user", "content": "What is 2 + 3? Use a tool."}]
WEATHER_ASK = [{"role": "user", "content": "What's the weather in Paris for the next 3 days?"}]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from _start("--max-sequences", "16", "--alias", "smol")


def _client(server: Server) -> openai.OpenAI:
    return server.client(timeout=120)


def _valid_call(name: str, arguments: str) -> dict[str, Any]:
    assert name in SCHEMAS, name
    args = json.loads(arguments)
    jsonschema.validate(args, SCHEMAS[name])
    return args  # type: ignore[no-any-return]


def _reassemble(stream: Any) -> tuple[dict[int, dict[str, Any]], str, str | None, list[Any]]:
    """OpenAI's streamed tool calls put together by index, the streamed content and the finish reason."""
    calls: dict[int, dict[str, Any]] = {}
    content, finish, deltas = "", None, []
    for chunk in stream:
        for c in chunk.choices:
            if c.delta.content:
                content += c.delta.content
            for tc in c.delta.tool_calls or []:
                deltas.append(tc)
                slot = calls.setdefault(tc.index, {"id": None, "type": None, "name": "", "arguments": ""})
                if tc.id:
                    assert slot["id"] is None  # the id comes once, first
                    slot["id"] = tc.id
                if tc.type:
                    slot["type"] = tc.type
                if tc.function and tc.function.name:
                    slot["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    slot["arguments"] += tc.function.arguments
            if c.finish_reason:
                finish = c.finish_reason
    return calls, content, finish, deltas


# -- forced calls ------------------------------------------------------------------------------------
def test_named_call_round_trip_streamed_equals_whole(server: Server) -> None:
    client = _client(server)
    named = {"type": "function", "function": {"name": "add"}}
    res = client.chat.completions.create(
        model="smol", messages=ASK, tools=TOOLS, tool_choice=named, temperature=0, max_tokens=60
    )  # type: ignore[arg-type]
    choice = res.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function" and call.id.startswith("call_") and len(call.id) > 10
    assert call.function.name == "add"
    args = _valid_call("add", call.function.arguments)

    stream = client.chat.completions.create(
        model="smol", messages=ASK, tools=TOOLS, tool_choice=named, temperature=0, max_tokens=60, stream=True
    )  # type: ignore[arg-type]
    streamed, content, finish, deltas = _reassemble(stream)
    assert finish == "tool_calls" and content == ""
    assert len(deltas) >= 2  # the call's head (id, name), then its argument fragments
    assert deltas[0].id and deltas[0].function.name == "add" and deltas[0].function.arguments == ""
    assert list(streamed) == [0]
    assert streamed[0]["type"] == "function" and streamed[0]["id"].startswith("call_")
    assert (streamed[0]["name"], streamed[0]["arguments"]) == (call.function.name, call.function.arguments)

    # The tool's result goes back; the model answers (tool_choice none: no tools offered to it).
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": str(args["a"] + args["b"])},
    ]
    final = client.chat.completions.create(
        model="smol", messages=history, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=16
    )  # type: ignore[arg-type]
    assert final.choices[0].message.tool_calls is None
    assert final.choices[0].message.content and final.choices[0].finish_reason in ("stop", "length")
    plain = client.chat.completions.create(model="smol", messages=ASK, temperature=0, max_tokens=1)  # type: ignore[arg-type]
    # The call and its result are in the prompt (about 30 tokens in the generic format).
    assert final.usage and plain.usage and final.usage.prompt_tokens > plain.usage.prompt_tokens + 20


@pytest.mark.parametrize(
    "tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_forced_calls_are_schema_valid(server: Server, tool_choice: Any) -> None:
    client = _client(server)
    names = []
    for seed in (1, 2):  # 2 x 10 samples at temperature 1.0
        res = client.chat.completions.create(
            model="smol",
            messages=WEATHER_ASK,
            tools=TOOLS,
            tool_choice=tool_choice,
            temperature=1.0,
            max_tokens=120,
            n=10,
            seed=seed,
            parallel_tool_calls=False,
        )  # type: ignore[arg-type]
        assert len(res.choices) == 10
        for choice in res.choices:
            assert choice.finish_reason == "tool_calls", choice
            assert choice.message.tool_calls and len(choice.message.tool_calls) == 1
            fn = choice.message.tool_calls[0].function
            _valid_call(fn.name, fn.arguments)
            names.append(fn.name)
    assert len(names) == 20
    if tool_choice != "required":
        assert set(names) == {"get_weather"}


def test_response_format_json_schema_is_valid(server: Server) -> None:
    schema = {
        "type": "object",
        "properties": {
            "answer": {"type": "integer"},
            "unit": {"type": "string", "enum": ["apples", "pears"]},
            "steps": {"type": "array", "items": {"type": "string", "maxLength": 24}, "maxItems": 3},
        },
        "required": ["answer", "unit", "steps"],
        "additionalProperties": False,
    }
    client = _client(server)
    seen = []
    for seed in (3, 4):
        res = client.chat.completions.create(
            model="smol",
            messages=[
                {"role": "user", "content": "Tom has 3 apples and buys 4. How many now? Answer in JSON."}
            ],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "count", "schema": schema, "strict": True},
            },
            temperature=1.0,
            max_tokens=200,
            n=10,
            seed=seed,
        )  # type: ignore[call-overload]
        for choice in res.choices:
            assert choice.finish_reason == "stop", choice.message.content
            value = json.loads(choice.message.content or "")
            jsonschema.validate(value, schema)
            seen.append(value)
    assert len(seen) == 20


# -- the auto path: parsing what the model writes ----------------------------------------------------
def _literal(text: str) -> str:
    return "root ::= " + json.dumps(text)


def test_auto_parses_a_written_call_and_leaves_malformed_ones(server: Server) -> None:
    client = _client(server)
    written = 'Let me add.\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    res = client.chat.completions.create(
        model="smol",
        messages=ASK,
        tools=TOOLS,
        temperature=0,
        max_tokens=60,
        extra_body={"grammar": _literal(written)},
    )  # type: ignore[arg-type]
    choice = res.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me add."
    assert choice.message.tool_calls and len(choice.message.tool_calls) == 1
    fn = choice.message.tool_calls[0].function
    assert (fn.name, json.loads(fn.arguments)) == ("add", {"a": 2, "b": 3})

    stream = client.chat.completions.create(
        model="smol",
        messages=ASK,
        tools=TOOLS,
        temperature=0,
        max_tokens=60,
        stream=True,
        extra_body={"grammar": _literal(written)},
    )  # type: ignore[arg-type]
    calls, content, finish, _ = _reassemble(stream)
    assert content == "Let me add." and finish == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [("add", {"a": 2, "b": 3})]

    two = written + '\n<tool_call>\n{"name": "multiply", "arguments": {"a": 5, "b": 4}}\n</tool_call>'
    stream = client.chat.completions.create(
        model="smol",
        messages=ASK,
        tools=TOOLS,
        temperature=0,
        max_tokens=90,
        stream=True,
        extra_body={"grammar": _literal(two)},
    )  # type: ignore[arg-type]
    calls, _, finish, _ = _reassemble(stream)
    assert sorted(calls) == [0, 1] and [c["name"] for c in calls.values()] == ["add", "multiply"]
    assert len({c["id"] for c in calls.values()}) == 2
    one = client.chat.completions.create(
        model="smol",
        messages=ASK,
        tools=TOOLS,
        temperature=0,
        max_tokens=90,
        parallel_tool_calls=False,
        extra_body={"grammar": _literal(two)},
    )  # type: ignore[arg-type]
    assert [t.function.name for t in one.choices[0].message.tool_calls or []] == ["add"]

    for bad in (
        '<tool_call>\n{"name": "subtract", "arguments": {"a": 2}}\n</tool_call>',  # not a tool offered
        '<tool_call>\n{"name": "add", "arguments": {"a": 2,}\n</tool_call>',  # bad JSON
    ):
        res = client.chat.completions.create(
            model="smol",
            messages=ASK,
            tools=TOOLS,
            temperature=0,
            max_tokens=60,
            extra_body={"grammar": _literal(bad)},
        )  # type: ignore[arg-type]
        assert res.choices[0].message.tool_calls is None and res.choices[0].finish_reason == "stop"
        assert res.choices[0].message.content == bad


def test_tool_choice_none_and_no_tools_leave_calls_as_text(server: Server) -> None:
    written = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    for extra in ({"tools": TOOLS, "tool_choice": "none"}, {"tools": []}):
        r = httpx.post(
            f"{server.base}/v1/chat/completions",
            json={"messages": ASK, "temperature": 0, "max_tokens": 60, "grammar": _literal(written), **extra},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        msg = r.json()["choices"][0]
        assert msg["message"]["content"] == written and "tool_calls" not in msg["message"]
        assert msg["finish_reason"] == "stop"


# -- an agent loop -----------------------------------------------------------------------------------
def test_agent_loop_with_two_local_functions(server: Server) -> None:
    """The openai client runs the model's calls against local Python functions until it answers."""
    functions = {"add": lambda a, b: a + b, "multiply": lambda a, b: a * b}
    client = _client(server)
    messages: list[Any] = [{"role": "user", "content": "Compute (2 + 3) * 4 with the tools."}]
    executed = []
    for step in range(3):
        res = client.chat.completions.create(
            model="smol",
            messages=messages,
            tools=[ADD, MULTIPLY],
            tool_choice="required" if step < 2 else "none",
            parallel_tool_calls=False,
            temperature=0,
            max_tokens=60,
        )  # type: ignore[arg-type]
        msg = res.choices[0].message
        if not msg.tool_calls:
            break
        assert res.choices[0].finish_reason == "tool_calls"
        messages.append(msg.model_dump(exclude_none=True))
        for call in msg.tool_calls:
            args = _valid_call(call.function.name, call.function.arguments)
            result = functions[call.function.name](**args)
            executed.append((call.function.name, args, result))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    assert len(executed) == 2  # two forced steps ran local functions, then the model answered
    for name, args, result in executed:
        assert result == functions[name](args["a"], args["b"])
    assert res.choices[0].message.content and res.choices[0].message.tool_calls is None
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant", "tool"]


# -- errors --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "param", "needle"),
    [
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "divide"}}},
            "tool_choice",
            "'divide'",
        ),
        ({"tool_choice": "required"}, "tool_choice", "at least one tool"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
            "tools",
            "object",
        ),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools", "letters"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools", "function"),
        ({"tools": TOOLS, "tool_choice": "always"}, "tool_choice", "tool_choice"),
        ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls", ""),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "properties": {"x": {"type": "nope"}}},
                        },
                    }
                ],
                "tool_choice": "required",
            },
            "tools",
            "grammar",
        ),
        (
            {"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
            "tool_choice",
            "response_format",
        ),
        (
            {
                "messages": [
                    *ASK,
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c", "type": "function", "function": {"name": "add", "arguments": "{oops"}}
                        ],
                    },
                ]
            },
            "messages",
            "not valid JSON",
        ),
        ({"response_format": {"type": "xml"}}, "response_format.type", "json_schema"),
    ],
)
def test_bad_tool_requests_are_400(server: Server, fields: dict[str, Any], param: str, needle: str) -> None:
    body = {"messages": ASK, "max_tokens": 4, **fields}
    r = httpx.post(f"{server.base}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["param"] == param and needle in err["message"], err


def test_server_keeps_serving_after_bad_tool_requests(server: Server) -> None:
    bad = {"messages": ASK, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}
    for _ in range(3):
        assert httpx.post(f"{server.base}/v1/chat/completions", json=bad, timeout=60).status_code == 400
    res = _client(server).chat.completions.create(
        model="smol", messages=ASK, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=60
    )  # type: ignore[arg-type]
    assert res.choices[0].message.tool_calls


# -- the Python API ------------------------------------------------------------------------------------
def test_python_api_tools(engine: er.Engine) -> None:
    assert not engine.native_tools and engine.tool_format is ToolFormat.GENERIC
    named = {"type": "function", "function": {"name": "multiply"}}
    res = engine.chat(ASK, tools=TOOLS, tool_choice=named, temperature=0, max_tokens=60)
    assert res.finish_reason == "tool_calls" and len(res.tool_calls) == 1
    assert res.tool_calls[0].name == "multiply" and res.tool_calls[0].id.startswith("call_")
    _valid_call("multiply", res.tool_calls[0].arguments)
    assert res.to_dict()["tool_calls"][0]["function"]["name"] == "multiply"
    stream = engine.stream(ASK, tools=TOOLS, tool_choice=named, temperature=0, max_tokens=60)
    chunks = list(stream)
    got = [c.call for c in chunks if isinstance(c, er.result.ToolCallChunk)]
    assert stream.result is not None and got == stream.result.tool_calls
    assert [(c.name, c.arguments) for c in got] == [(t.name, t.arguments) for t in res.tool_calls]
    # Without tools the same request is plain text (and tool fields never reach GenerationOptions).
    plain = engine.chat(ASK, temperature=0, max_tokens=8)
    assert plain.tool_calls == [] and plain.finish_reason in ("stop", "length")
    with pytest.raises(er.InvalidRequestError, match="'divide'"):
        engine.chat(ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "divide"}})


def test_engine_renders_the_fallback_and_the_native_template(engine: er.Engine, model_path: Any) -> None:
    from edgereason.tools import parse_tool_request

    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
    ]
    req = parse_tool_request(TOOLS, "auto")
    text = engine.render(history, tools=req).text
    assert text.startswith("<|im_start|>system\n# Tools\n")
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call><|im_end|>'
        in text
    )
    assert "<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n<|im_start|>assistant\n" in text

    from .test_tools_parsing import _qwen3_template

    qwen = er.load(model_path, n_ctx=512, max_sequences=1, chat_template=_qwen3_template())
    try:
        assert qwen.native_tools and qwen.tool_format is ToolFormat.HERMES
        text = qwen.render(history, tools=req).text
        assert '<tools>\n{"type": "function", "function": {"name": "add"' in text
        assert "<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>" in text
        res = qwen.chat(
            ASK,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "add"}},
            temperature=0,
            max_tokens=60,
            thinking=False,
        )
        assert res.finish_reason == "tool_calls" and res.tool_calls[0].name == "add"
        _valid_call("add", res.tool_calls[0].arguments)
    finally:
        qwen.close()
