"""Structured output: response_format / JSON Schema / GBNF grammars, engaged only after thinking."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

import jsonschema
import pytest

import edgereason as er
from edgereason.backends.base import Capabilities, SamplingParams
from edgereason.structured import (
    JSON_CHAR_RULE,
    canonical_json,
    check_grammar,
    grammar_for_json_schema,
    grammar_for_response_format,
    think_or_answer,
)
from tests.scripted import EOS, ByteScriptBackend, ScriptedSampler

Q = [{"role": "user", "content": "Give me a person as JSON."}]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer"},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        "admin": {"type": "boolean"},
    },
    "required": ["name", "age", "color", "tags", "admin"],
    "additionalProperties": False,
}
PERSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
OK_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


# -- structured.py ------------------------------------------------------------------------------------
def test_response_format_kinds() -> None:
    assert grammar_for_response_format({"type": "text"}) is None
    obj = grammar_for_response_format({"type": "json_object"})
    assert obj is not None and obj.startswith("array ::=") and "root ::= object" in obj
    check_grammar(obj)  # llama.cpp parses it
    schema = grammar_for_response_format(PERSON_FORMAT)
    assert schema is not None and '"\\"color\\""' in schema
    check_grammar(schema)
    # OpenAI allows a json_schema without a schema: any JSON object
    assert grammar_for_response_format({"type": "json_schema", "json_schema": {"name": "x"}}) == obj


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        ("json", "response_format"),
        ({"type": "xml"}, "response_format.type"),
        ({"type": "json_object", "schema": {}}, "response_format.schema"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"schema": 3}}, "response_format.json_schema.schema"),
        (
            {"type": "json_schema", "json_schema": {"schema": {}, "strict": "yes"}},
            "response_format.json_schema.strict",
        ),
        (
            {"type": "json_schema", "json_schema": {"schema": {"type": "frob"}}},
            "response_format.json_schema.schema",
        ),
        (
            {"type": "json_schema", "json_schema": {"schema": {"$ref": "#/$defs/missing"}}},
            "response_format.json_schema.schema",
        ),
    ],
)
def test_bad_response_format_names_the_field(response_format: Any, param: str) -> None:
    with pytest.raises(er.InvalidRequestError) as err:
        grammar_for_response_format(response_format)
    assert err.value.param == param


def test_strict_refuses_keywords_a_grammar_cannot_enforce() -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 1}, "minimum": {"type": "string"}},
    }
    with pytest.raises(er.InvalidRequestError, match="strict schemas cannot use minimum"):
        grammar_for_json_schema(schema, strict=True)
    grammar_for_json_schema(schema)  # not strict: the bound is left to the model
    # a property merely named like a keyword is no keyword
    grammar_for_json_schema({"type": "object", "properties": {"minimum": {"type": "string"}}}, strict=True)


def test_json_strings_exclude_raw_control_characters() -> None:
    # llama-cpp-python's converter allows them ([^"\\]); json.loads rejects them
    gbnf = grammar_for_json_schema({"type": "string"})
    assert JSON_CHAR_RULE in gbnf.splitlines() and 'char ::= [^"\\\\] |' not in gbnf


def test_canonical_json() -> None:
    assert canonical_json(' {"b": 1, "a": [1, 2]} ') == '{"a":[1,2],"b":1}'
    assert canonical_json('{"a":[1,2],"b":1}') == canonical_json('{ "b":1,\n "a": [1,2]}')
    assert canonical_json('"é"') == '"é"'
    assert canonical_json('{"a": 1') is None and canonical_json("yes") is None and canonical_json("") is None


def test_options_validate_grammars_at_the_boundary() -> None:
    with pytest.raises(er.InvalidRequestError) as err:
        er.GenerationOptions.build(None, {"grammar": 'root ::= "a" undefined-rule'})
    assert err.value.param == "grammar"
    with pytest.raises(er.InvalidRequestError, match="no rule named 'root'"):
        er.GenerationOptions.build(None, {"grammar": 'answer ::= "a"'})
    opts = er.GenerationOptions.build(None, {"grammar": 'answer ::= "a"', "grammar_root": "answer"})
    assert opts.answer_grammar == ('answer ::= "a"', "answer")
    with pytest.raises(er.InvalidRequestError, match="not both"):
        er.GenerationOptions.build(
            None, {"grammar": 'root ::= "a"', "response_format": {"type": "json_object"}}
        )
    with pytest.raises(er.InvalidRequestError) as err:
        er.GenerationOptions.build(
            None, {"response_format": {"type": "json_object"}, "early_exit_answer": "trial"}
        )
    assert err.value.param == "early_exit_answer"
    assert er.GenerationOptions.build(None, {"response_format": {"type": "text"}}).answer_grammar is None


# -- through the engine on the embedded model --------------------------------------------------------
def test_json_schema_answers_always_validate(engine: er.Engine) -> None:
    answers = []
    for seed in (0, 1000):  # 20 samples: two requests of 10 choices, choice i seeded seed + i
        res = engine.chat(
            Q, max_tokens=128, temperature=1.0, top_k=0, min_p=0.0, seed=seed, n=10,
            response_format=PERSON_FORMAT,
        )  # fmt: skip
        for choice in res.choices:
            assert choice.finish_reason == "stop", choice.content  # the grammar completed, EOS followed
            value = json.loads(choice.content)
            jsonschema.validate(value, PERSON)
            answers.append(canonical_json(choice.content))
    assert len(answers) == 20 and len(set(answers)) > 5  # sampled at temperature 1, not one answer


def test_json_object_and_gbnf_grammar(engine: er.Engine) -> None:
    res = engine.chat(Q, max_tokens=24, temperature=1.0, seed=3, response_format={"type": "json_object"})
    if res.finish_reason == "stop":
        assert isinstance(json.loads(res.content), dict)
    else:  # cut at max_tokens: still the start of an object
        assert res.content.startswith("{")
    grammar = 'root ::= [0-9]{3} "-" [a-z]{2} ("!" | "?")'
    for seed in range(6):
        res = engine.chat(Q, max_tokens=32, temperature=1.0, seed=seed, grammar=grammar)
        assert re.fullmatch(r"[0-9]{3}-[a-z]{2}[!?]", res.content) and res.finish_reason == "stop"
    # ignore_eos cannot run past a complete grammar: end-of-generation is all it allows
    res = engine.chat(Q, max_tokens=32, temperature=0.0, grammar='root ::= "yes" | "no"', ignore_eos=True)
    assert res.content in ("yes", "no") and res.finish_reason == "stop"


def test_bad_grammar_is_a_clear_error_and_the_engine_goes_on(engine: er.Engine) -> None:
    with pytest.raises(er.InvalidRequestError) as err:
        engine.chat(Q, max_tokens=8, grammar='root ::= "a" (')
    assert err.value.param == "grammar" and "cannot use this GBNF grammar" in str(err.value)
    # a token reference is checked against the model's vocabulary when the request starts: no decode
    with pytest.raises(er.InvalidRequestError) as err:
        engine.chat(Q, max_tokens=8, grammar="root ::= <no-such-token>")
    assert err.value.param == "grammar"
    res = engine.chat(Q, max_tokens=8, temperature=0.0, grammar='root ::= "ok"')
    assert res.content == "ok" and res.finish_reason == "stop"
    assert engine.stopped_reason is None and engine.live_sequences == 0


def test_thinking_is_free_and_the_answer_constrained(engine: er.Engine) -> None:
    # The grammar allows only {"ok": true|false}: had it applied while thinking, the reasoning could not
    # hold a single letter. The budget closes thinking (the close is injected), then the grammar applies.
    fmt = {"type": "json_schema", "json_schema": {"name": "ok", "schema": OK_SCHEMA}}
    res = engine.chat(
        Q, max_tokens=64, temperature=0.0, thinking=True, thinking_budget=24, response_format=fmt
    )
    assert res.thinking_stopped_by == "budget" and res.usage.reasoning_tokens > 0
    assert re.search(r"[A-Za-z]{3}", res.reasoning) and canonical_json(res.reasoning) is None
    jsonschema.validate(json.loads(res.content), OK_SCHEMA)
    assert res.finish_reason == "stop"


def test_model_closed_thinking_then_constrained_answer(engine: er.Engine) -> None:
    # A bias towards "</think>"'s tokens makes the model close its own think block (sampled, not injected).
    bias = {str(t): 6.0 for t in engine.backend.tokenize("</think>")}
    closed = []
    for seed in range(4):
        res = engine.chat(
            Q, max_tokens=80, temperature=0.7, seed=seed, thinking=True, logit_bias=bias,
            response_format={"type": "json_schema", "json_schema": {"schema": OK_SCHEMA}},
        )  # fmt: skip
        if res.thinking_stopped_by == "model" and res.reasoning:
            closed.append(res)
            jsonschema.validate(json.loads(res.content), OK_SCHEMA)
    assert closed and all("</think>" not in r.reasoning for r in closed)


def test_model_may_open_thinking_itself() -> None:
    # deepseek-r1 format on a template that does not open <think>: the first tokens may open it or answer.
    from edgereason.models import embedded_model_path

    eng = er.load(
        embedded_model_path(), n_ctx=512, max_sequences=2, threads=2, reasoning_format="deepseek-r1"
    )
    try:
        fmt = {"type": "json_schema", "json_schema": {"schema": OK_SCHEMA}}
        answered = eng.chat(Q, max_tokens=32, temperature=0.0, response_format=fmt)
        assert answered.reasoning == "" and json.loads(answered.content) in ({"ok": True}, {"ok": False})
        # Pushed towards "<", the model opens <think> (the start grammar allows the tag or the answer);
        # the reasoning is then free ("<" everywhere, which the answer's grammar forbids) until the budget.
        lt = eng.backend.tokenize("<")
        opened = eng.chat(
            Q,
            max_tokens=48,
            temperature=0.0,
            response_format=fmt,
            thinking_budget=8,
            logit_bias={str(lt[0]): 30.0},
        )
        assert opened.reasoning.startswith("<<") and opened.thinking_stopped_by == "budget"
        assert json.loads(opened.content) in ({"ok": True}, {"ok": False})
    finally:
        eng.close()


def test_constrained_and_free_sequences_share_a_batch(engine: er.Engine) -> None:
    free = {"max_tokens": 24, "temperature": 0.0, "cache_prompt": False}
    constrained = {**free, "response_format": PERSON_FORMAT, "max_tokens": 64}
    alone = [engine.chat(Q, **free), engine.chat(Q, **constrained)]
    streams = [engine.stream(Q, **free), engine.stream(Q, **constrained), engine.stream(Q, **free)]
    together = [s.wait() for s in streams]
    assert together[0].content == together[2].content == alone[0].content
    assert together[1].content == alone[1].content
    jsonschema.validate(json.loads(together[1].content), PERSON)
    assert canonical_json(alone[0].content) is None  # the free sequence was not constrained


def test_self_consistency_votes_over_canonical_json(engine: er.Engine) -> None:
    schema = {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}},
        "required": ["color"],
    }
    res = engine.chat(
        Q, max_tokens=32, seed=5, self_consistency={"samples": 6, "temperature": 1.0},
        response_format={"type": "json_schema", "json_schema": {"schema": schema}},
    )  # fmt: skip
    report = res.extra["self_consistency"]
    assert sum(report["votes"].values()) == report["samples_used"] == 6
    for key in report["votes"]:  # keys are canonical: no spaces, even though answers are written with them
        assert (
            key == canonical_json(key)
            and " " not in key
            and json.loads(key)["color"] in ("red", "green", "blue")
        )
    assert res.answer == report["answer"] == canonical_json(res.content)
    assert all(s["answer"] in report["votes"] for s in report["samples"])


# -- the state machine, on a scripted backend ---------------------------------------------------------
MERGED = 300  # one token holding the close tag and the answer's start: b"</think>{"


class GrammarScriptBackend(ByteScriptBackend):
    """Byte tokens plus one merged token; records every grammar switch (the grammar itself is llama.cpp's)."""

    def __init__(self, script: Sequence[int]) -> None:
        super().__init__(max_sequences=2)
        self.capabilities = dataclasses.replace(self.capabilities, grammar=True)
        self.script = list(script)
        self.switches: list[str | None] = []

    def token_bytes(self, token: int) -> bytes:
        return b"</think>{" if token == MERGED else super().token_bytes(token)

    def make_sampler(self, params: SamplingParams) -> ScriptedSampler:
        return ScriptedSampler(params.seed, list(self.script))

    def check_grammar(self, grammar: str, root: str) -> None:
        check_grammar(grammar, root)

    def set_grammar(self, sampler: Any, grammar: str | None, root: str = "root") -> None:
        self.switches.append(None if grammar is None else root)


def _bytes(text: str) -> list[int]:
    return list(text.encode())


def test_a_token_that_closes_thinking_and_starts_the_answer_is_cut_at_the_close() -> None:
    # thinking "hmm", then one token "</think>{", then (under the grammar) the answer {"a":1} and EOS
    backend = GrammarScriptBackend([*_bytes("hmm"), MERGED, *_bytes('{"a":1}'), EOS])
    with er.Engine(backend) as eng:
        res = eng.complete("Q: <think>\n", max_tokens=40, temperature=0.0, grammar='root ::= "{\\"a\\":1}"')
    assert res.reasoning == "hmm" and res.content == '{"a":1}'  # not '{{"a":1}': the merged "{" was dropped
    assert backend.switches == ["root"]  # engaged once, when the block closed, never before


def test_grammar_switches_follow_the_channel() -> None:
    backend = GrammarScriptBackend([*_bytes("<think>x</think>"), *_bytes("yes"), EOS])
    with er.Engine(
        backend, reasoning_format="deepseek-r1", chat_template="{{ messages[0]['content'] }}"
    ) as eng:
        res = eng.chat([{"role": "user", "content": "Q"}], max_tokens=40, grammar='root ::= "yes"')
    assert res.reasoning == "x" and res.content == "yes"
    opened_root = think_or_answer('root ::= "yes"')[1]
    assert backend.switches == [opened_root, None, "root"]  # tag-or-answer, free while thinking, the answer


def test_backends_without_grammars_refuse_by_name() -> None:
    backend = ByteScriptBackend()
    backend.info = dataclasses.replace(backend.info, format="mlx")
    backend.make_sampler = lambda p: ScriptedSampler(p.seed, [EOS])  # type: ignore[attr-defined]
    assert Capabilities(1, 1, 1).grammar is False
    with er.Engine(backend) as eng:
        with pytest.raises(er.InvalidRequestError, match="the mlx backend cannot constrain output") as err:
            eng.complete("Q", max_tokens=4, response_format={"type": "json_object"})
        assert err.value.param == "grammar"
        assert eng.complete("Q", max_tokens=4).finish_reason == "stop"  # and it goes on serving


@pytest.fixture(autouse=True)
def _no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "engine" in request.fixturenames:
        assert request.getfixturevalue("engine").live_sequences == 0
