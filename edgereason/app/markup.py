"""What a message's text becomes in the chat: tool cards, formatted JSON and math, as Markdown for
Gradio's Chatbot (no Gradio here, so every rule is testable on strings).

- A tool call (the model's function call, or a code block the built-in Python tool ran with its
  ``<output>``) becomes a collapsible ``<details class="er-tool">`` card written on one line, so
  Markdown's HTML-block rule (a blank line ends the block) cannot cut it, with ``$`` and ``\\`` as
  entities so the LaTeX pass leaves it alone.
- An answer that parses as a JSON object or array (or any answer when a JSON ``response_format`` was
  asked for) becomes a fenced ``json`` block, pretty-printed when it parses.
- Math: ``$…$`` (pandoc's rule: no space inside either ``$``, the closing one not followed by a digit, so
  "$5 and $10" stays text) becomes ``\\(…\\)``, and a ``\\boxed{…}`` outside math is wrapped in ``\\(…\\)``;
  Gradio renders ``\\(…\\)``, ``\\[…\\]`` and ``$$…$$`` with KaTeX (``MATH_DELIMITERS``). Code is left as is.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

# Gradio's latex_delimiters. Single dollars are not among them: they are rewritten to \(…\) by pandoc's
# rule here, because KaTeX would read "$5 and $10" as math.
MATH_DELIMITERS: list[dict[str, str | bool]] = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "\\[", "right": "\\]", "display": True},
    {"left": "\\(", "right": "\\)", "display": False},
]

TOOL_CARD_CLASS = "er-tool"
# A code block the built-in Python tool ran, then the output it injected (tools/builtin.py's formats).
_RAN_BLOCK = re.compile(
    r"(?:```(?:python3?|py)[ \t]*\n(?P<fence>.*?)\n```|<code>(?P<tag>.*?)</code>)"
    r"[ \t]*\n?<output>\n?(?P<output>.*?)\n?</output>\n?",
    re.DOTALL,
)
# What Markdown must not touch: fenced code (closed or still streaming), inline code, our cards.
_PROTECTED = re.compile(
    r"```.*?(?:```|\Z)|`[^`\n]+`|<details class=\"" + TOOL_CARD_CLASS + r"[^\n]*?</details>",
    re.DOTALL,
)
_MATH = re.compile(r"\$\$.*?\$\$|\\\[.*?\\\]|\\\(.*?\\\)", re.DOTALL)
_SUMMARY_OUTPUT_CHARS = 60


def _card_text(text: str) -> str:
    """Text safe inside a one-line HTML card: escaped, newlines as entities, no math delimiters."""
    escaped = html.escape(text, quote=False).replace("$", "&#36;").replace("\\", "&#92;")
    return escaped.replace("\n", "&#10;")


def pretty_arguments(arguments: str) -> str:
    """A call's JSON arguments, indented; the text as it came when it is not JSON."""
    try:
        return json.dumps(json.loads(arguments), indent=2, ensure_ascii=False)
    except (TypeError, ValueError):
        return arguments


def tool_call_card(name: str, arguments: str, result: str | None = None) -> str:
    """A function call as a collapsed card: its name, its arguments pretty-printed, its result if known."""
    state = "" if result is None else " ✓"
    parts = [
        f'<details class="{TOOL_CARD_CLASS}"><summary>🛠 Tool call: <code>{_card_text(name)}</code>{state}'
        "</summary>",
        f'<pre><code class="language-json">{_card_text(pretty_arguments(arguments))}</code></pre>',
    ]
    if result is not None:
        parts.append(f"<b>Result</b><pre>{_card_text(result)}</pre>")
    return "".join(parts) + "</details>"


def python_card(code: str, output: str) -> str:
    """A code block the built-in Python tool ran, and what it printed, as a collapsed card."""
    first = next((line for line in output.splitlines() if line.strip()), "")
    if len(first) > _SUMMARY_OUTPUT_CHARS:
        first = first[: _SUMMARY_OUTPUT_CHARS - 1] + "…"
    said = f" → <code>{_card_text(first)}</code>" if first else " (no output)"
    return (
        f'<details class="{TOOL_CARD_CLASS} er-python"><summary>🐍 Python tool{said}</summary>'
        f'<pre><code class="language-python">{_card_text(code)}</code></pre>'
        f"<b>Output</b><pre>{_card_text(output)}</pre></details>"
    )


def python_cards(text: str) -> str:
    """Each code block followed by its ``<output>`` replaced by a card (a paragraph of its own)."""

    def card(m: re.Match[str]) -> str:
        code = m.group("fence") if m.group("fence") is not None else m.group("tag")
        return f"\n\n{python_card(code.strip(chr(10)), m.group('output'))}\n\n"

    return _RAN_BLOCK.sub(card, text)


def json_block(text: str, *, expected: bool = False) -> str | None:
    """A fenced, pretty-printed ``json`` block when ``text`` is a JSON object or array; with ``expected``
    (a JSON response_format) also when it does not parse yet (streaming, cut by max tokens). Else None."""
    body = text.strip()
    if not body:
        return None
    try:
        value = json.loads(body)
    except ValueError:
        value = None
    if isinstance(value, (dict, list)):
        body = json.dumps(value, indent=2, ensure_ascii=False)
    elif not expected:
        return None
    fence = "````" if "```" in body else "```"
    return f"{fence}json\n{body}\n{fence}"


def _dollar_math(text: str) -> str:
    """``$…$`` to ``\\(…\\)`` by pandoc's rule; other single dollars (prices) stay text."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i : i + 2])
            i += 2
            continue
        if c == "$" and text.startswith("$$", i):
            end = text.find("$$", i + 2)
            stop = len(text) if end < 0 else end + 2
            out.append(text[i:stop])
            i = stop
            continue
        if c == "$" and i + 1 < len(text) and not text[i + 1].isspace():
            close = _closing_dollar(text, i + 1)
            if close is not None:
                out.append(f"\\({text[i + 1 : close]}\\)")
                i = close + 1
                continue
        out.append(c)
        i += 1
    return "".join(out)


def _closing_dollar(text: str, start: int) -> int | None:
    j = start
    while j < len(text):
        if text[j] == "\\":
            j += 2
            continue
        if text[j] == "\n" and text.startswith("\n", j + 1):  # math does not span paragraphs
            return None
        if text[j] == "$":
            if text.startswith("$$", j):
                return None
            if not text[j - 1].isspace() and not (j + 1 < len(text) and text[j + 1].isdigit()):
                return j
            return None
        j += 1
    return None


def _boxed_end(text: str, start: int) -> int | None:
    """The index after the brace that closes the ``\\boxed{`` opened at ``start`` (None while open)."""
    depth = 0
    j = start + len("\\boxed")
    while j < len(text):
        if text[j] == "\\":
            j += 2
            continue
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return None


def _wrap_boxed(text: str) -> str:
    """``\\boxed{…}`` outside math regions, wrapped in ``\\(…\\)`` (KaTeX renders ``\\boxed``)."""
    out: list[str] = []
    pos = 0
    for m in _MATH.finditer(text):
        out.append(_wrap_boxed_plain(text[pos : m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(_wrap_boxed_plain(text[pos:]))
    return "".join(out)


def _wrap_boxed_plain(text: str) -> str:
    out: list[str] = []
    pos = 0
    while (at := text.find("\\boxed{", pos)) >= 0:
        end = _boxed_end(text, at)
        if end is None:  # still streaming: left as text until it closes
            break
        out.append(text[pos:at])
        out.append(f"\\({text[at:end]}\\)")
        pos = end
    out.append(text[pos:])
    return "".join(out)


def math_markdown(text: str) -> str:
    """Single-dollar math and bare ``\\boxed{}`` made renderable; code and cards untouched."""
    out: list[str] = []
    pos = 0
    for m in _PROTECTED.finditer(text):
        out.append(_wrap_boxed(_dollar_math(text[pos : m.start()])))
        out.append(m.group(0))
        pos = m.end()
    out.append(_wrap_boxed(_dollar_math(text[pos:])))
    return "".join(out)


def answer_markdown(
    text: str, calls: Iterable[Mapping[str, Any]] = (), *, json_expected: bool = False
) -> str:
    """An answer as the chat shows it: JSON as a code block, else tool cards and math; then a card per
    function call (``{"name", "arguments", "result"?}``)."""
    block = json_block(text, expected=json_expected)
    body = block if block is not None else math_markdown(python_cards(text))
    cards = [tool_call_card(c["name"], c["arguments"], c.get("result")) for c in calls]
    return "\n\n".join(part for part in (body.strip("\n"), *cards) if part)


def reasoning_markdown(text: str) -> str:
    """Reasoning as the Thinking panel shows it: the Python tool's runs as cards, math rendered."""
    return math_markdown(python_cards(text)).strip("\n")
