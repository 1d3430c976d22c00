"""Structured output: OpenAI ``response_format`` and JSON Schemas as GBNF grammars, and JSON for votes.

A grammar constrains only the answer: a sequence thinks freely and the grammar is engaged once its
think block has closed (see ``strategies/generate.py``); without thinking it applies from the first
token. The GBNF text made here is what ``GenerationOptions.grammar`` takes; llama.cpp's grammar sampler
enforces it (``backends/llama_cpp.py``).

JSON Schemas are converted with llama-cpp-python's port of llama.cpp's converter, with two fixes: JSON
strings may not hold raw control characters (the port allows them, and ``json.loads`` rejects them), and
keywords a grammar cannot enforce (numeric bounds, ``uniqueItems``...) are refused under
``"strict": true`` instead of being silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from .errors import InvalidRequestError

DEFAULT_GRAMMAR_ROOT = "root"
MAX_SCHEMA_CHARS = 100_000
MAX_GRAMMAR_CHARS = 200_000
# The string character rule of llama.cpp's own json.gbnf: no raw control characters, as JSON says.
JSON_CHAR_RULE = r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
# Keywords the converter ignores: a grammar over characters cannot count values or compare numbers.
UNENFORCED_KEYWORDS = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "not",
    "if",
    "then",
    "else",
    "dependentRequired",
    "dependentSchemas",
    "patternProperties",
    "propertyNames",
    "contains",
)
# Root of the grammar a sequence starts with when the model may open its think block itself
# (``think_or_answer``): either the opening tag, or the answer.
THINK_OR_ANSWER_ROOT = "edgereason-think-or-answer"


def grammar_for_json_schema(schema: Any, *, strict: bool = False, param: str = "json_schema") -> str:
    """GBNF for the JSON values ``schema`` (a JSON Schema object) allows.

    ``strict`` refuses keywords the grammar cannot enforce (see ``UNENFORCED_KEYWORDS``); otherwise
    they are left to the model. Raises InvalidRequestError naming ``param`` for a schema that is not an
    object or that the converter cannot handle (unknown types, unresolvable ``$ref``).
    """
    if schema is True:
        schema = {}
    if not isinstance(schema, Mapping):
        raise InvalidRequestError(f"{param}: a JSON Schema must be an object", param=param)
    try:
        text = json.dumps(schema)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"{param}: not JSON-serialisable ({exc})", param=param) from None
    if len(text) > MAX_SCHEMA_CHARS:
        raise InvalidRequestError(
            f"{param}: the schema is longer than {MAX_SCHEMA_CHARS} characters", param=param
        )
    if strict:
        found = sorted(set(_unenforced(schema)))
        if found:
            raise InvalidRequestError(
                f"{param}: strict schemas cannot use {', '.join(found)} (a grammar cannot enforce them); "
                "drop them or set strict to false",
                param=param,
            )
    from llama_cpp.llama_grammar import json_schema_to_gbnf  # loads llama.cpp: only when asked

    try:
        gbnf = json_schema_to_gbnf(text)
    except RecursionError:
        raise InvalidRequestError(f"{param}: the schema nests too deeply", param=param) from None
    except Exception as exc:  # noqa: BLE001 - the converter asserts on what it does not support
        raise InvalidRequestError(
            f"{param}: cannot turn this schema into a grammar: {exc}", param=param
        ) from None
    return _fix_char_rule(gbnf)


def _fix_char_rule(gbnf: str) -> str:
    lines = [JSON_CHAR_RULE if ln.startswith("char ::= ") else ln for ln in gbnf.splitlines()]
    return "\n".join(lines) + "\n"


def _unenforced(node: Any) -> Iterator[str]:
    """Unenforceable keywords anywhere in a schema (property names themselves are not keywords)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key in UNENFORCED_KEYWORDS:
                yield key
            if key in ("properties", "$defs", "definitions") and isinstance(value, Mapping):
                for sub in value.values():
                    yield from _unenforced(sub)
            elif key not in ("enum", "const", "default", "examples", "description", "title"):
                yield from _unenforced(value)
    elif isinstance(node, list):
        for item in node:
            yield from _unenforced(item)


_JSON_OBJECT_GRAMMAR: str | None = None


def json_object_grammar() -> str:
    """GBNF for any JSON object (``response_format: {"type": "json_object"}``)."""
    global _JSON_OBJECT_GRAMMAR
    if _JSON_OBJECT_GRAMMAR is None:
        _JSON_OBJECT_GRAMMAR = grammar_for_json_schema({"type": "object"})
    return _JSON_OBJECT_GRAMMAR


def grammar_for_response_format(response_format: Any) -> str | None:
    """The grammar OpenAI's ``response_format`` asks for: None for ``text``, any JSON object for
    ``json_object``, the schema's values for ``json_schema`` (``{"name", "schema", "strict"}``).

    Raises InvalidRequestError naming the offending field (``response_format``, ``response_format.type``,
    ``response_format.json_schema``...).
    """
    if not isinstance(response_format, Mapping):
        raise InvalidRequestError("response_format must be an object with a type", param="response_format")
    kind = response_format.get("type")
    extra = sorted(set(response_format) - {"type", "json_schema"})
    if extra:
        raise InvalidRequestError(
            f"response_format.{extra[0]}: unknown field", param=f"response_format.{extra[0]}"
        )
    if kind == "text":
        return None
    if kind == "json_object":
        return json_object_grammar()
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        param = "response_format.json_schema"
        if not isinstance(spec, Mapping):
            raise InvalidRequestError(f"{param} must be an object with a schema", param=param)
        unknown = sorted(set(spec) - {"name", "schema", "strict", "description"})
        if unknown:
            raise InvalidRequestError(f"{param}.{unknown[0]}: unknown field", param=f"{param}.{unknown[0]}")
        strict = spec.get("strict") or False
        if not isinstance(strict, bool):
            raise InvalidRequestError(f"{param}.strict must be a boolean", param=f"{param}.strict")
        # OpenAI allows a missing schema (any JSON); llama-server too.
        return grammar_for_json_schema(spec.get("schema", {}), strict=strict, param=f"{param}.schema")
    raise InvalidRequestError(
        f"response_format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}",
        param="response_format.type",
    )


def check_grammar(grammar: str, root: str = DEFAULT_GRAMMAR_ROOT, vocab: Any = None) -> None:
    """InvalidRequestError (param ``grammar``) unless llama.cpp's parser accepts ``grammar`` with start
    rule ``root`` (defined rules, no left recursion). Without a ``vocab``, a grammar naming tokens
    (``<think>``, ``<[123]>``) cannot be checked here: the backend checks it again with its vocabulary.
    llama.cpp prints the parser's own message on stderr."""
    import llama_cpp  # loads llama.cpp: only when a grammar is given

    handle = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), root.encode("utf-8"))
    if handle:
        llama_cpp.llama_sampler_free(handle)
        return
    if vocab is None and "<" in grammar:
        return  # maybe a token reference: left to the check with the model's vocabulary
    if not any(line.split("::=", 1)[0].strip() == root for line in grammar.splitlines() if "::=" in line):
        detail = f"it has no rule named {root!r} (set grammar_root to its start rule)"
    else:
        detail = "a syntax error, an undefined rule or left recursion (see llama.cpp's grammars/README.md)"
    raise InvalidRequestError(f"grammar: llama.cpp cannot use this GBNF grammar: {detail}", param="grammar")


def think_or_answer(grammar: str, root: str = DEFAULT_GRAMMAR_ROOT) -> tuple[str, str]:
    """(GBNF, root) for the start of an output that may open a think block before the answer: the
    opening tag, or the answer itself. After ``<think>`` the sequence runs unconstrained until the
    block closes; then ``grammar`` applies from scratch."""
    return f'{grammar.rstrip()}\n{THINK_OR_ANSWER_ROOT} ::= "<think>" | {root}\n', THINK_OR_ANSWER_ROOT


def canonical_json(text: str) -> str | None:
    """``text`` as canonical JSON (sorted keys, no spaces) when it is one JSON value, else None.

    Two answers that differ only in key order or whitespace are the same vote.
    """
    try:
        value = json.loads(text.strip())
    except (ValueError, TypeError):
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
