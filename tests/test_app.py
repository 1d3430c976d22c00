"""The Gradio app: its handlers over the embedded model, and the whole UI in a real headless browser."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

import edgereason as er
from edgereason.options import GenerationOptions

pytest.importorskip("gradio", reason="the app needs gradio: pip install 'edgereason[app]'")

from edgereason.app import markup  # noqa: E402
from edgereason.app.handlers import (  # noqa: E402
    ERROR_PREFIX,
    THINKING_TITLE,
    ChatHandlers,
    ChatSession,
    Controls,
    parse_tools,
)

QUESTION = "What is 12 + 7? Answer briefly."
ADD_TOOL = json.dumps(
    [
        {
            "name": "add",
            "description": "Add two numbers",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"],
            },
        }
    ]
)
CODE_QUESTION = "Write a Python code block that prints 12 + 7."
JSON_QUESTION = "Give the numbers 12 and 7 as JSON."
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def app_engine() -> Iterator[er.Engine]:
    # One thread: on a shared 2-core machine llama.cpp's spinning workers slow each other ~30x.
    eng = er.load(n_ctx=1024, max_sequences=8, threads=1)
    yield eng
    eng.close()


@pytest.fixture()
def handlers(app_engine: er.Engine) -> ChatHandlers:
    return ChatHandlers(app_engine)


def _thinking(history: list[dict]) -> list[dict]:
    return [m for m in history if (m.get("metadata") or {}).get("title") == THINKING_TITLE]


def _stats(history: list[dict]) -> list[dict]:
    return [m for m in history if "answer tok" in (m.get("metadata") or {}).get("title", "")]


def test_controls_map_onto_generation_options() -> None:
    plain = Controls(thinking="off", temperature=0.0, max_tokens=64).fields()
    assert plain == {"max_tokens": 64, "temperature": 0.0, "thinking": False}
    rich = Controls(
        thinking="on", effort="low", budget_mode="auto", threshold=0.9, samples=4, adaptive="beta"
    ).fields()
    opts = GenerationOptions.build(None, rich)
    assert opts.thinking is True and opts.reasoning_effort == "low"
    assert opts.thinking_budget == "auto" and opts.early_exit_threshold == 0.9
    assert opts.self_consistency is not None
    assert opts.self_consistency.samples == 4 and opts.self_consistency.adaptive == "beta"
    assert Controls(budget_mode="fixed", budget=128).fields()["thinking_budget"] == 128
    assert ChatHandlers.effort_preset("medium") == ("fixed", 1024)
    assert ChatHandlers.effort_preset("none") == ("unlimited", None)


def test_reply_streams_thinking_then_answer_and_keeps_history(handlers: ChatHandlers) -> None:
    session = ChatSession()
    controls = Controls(thinking="on", temperature=0.0, max_tokens=40)
    replies = list(handlers.respond(session, QUESTION, controls))
    assert len(replies) >= 2
    assert any(t["metadata"]["status"] == "pending" for r in replies[:-1] for t in _thinking(r.history))
    final = replies[-1].history
    assert final[0] == {"role": "user", "content": QUESTION}
    (thinking,) = _thinking(final)
    assert thinking["metadata"]["status"] == "done" and thinking["content"]
    (stats,) = _stats(final)
    assert "reasoning tok" in stats["metadata"]["title"] and "tok/s" in stats["metadata"]["title"]
    assert "thinking stopped" in stats["metadata"]["title"]
    assert replies[-1].votes is None and replies[-1].error is None
    # Greedy closes its thinking after 8 tokens without writing an answer: the chat says so, and a turn
    # without an answer is not part of what the model is told next.
    assert "no answer after thinking" in final[-2]["content"]
    assert session.transcript == []
    # An answered turn is kept, and the next turn is sent after it.
    off = Controls(thinking="off", temperature=0.0, max_tokens=8)
    second = list(handlers.respond(session, "And plus 1?", off))[-1].history
    answer = [m for m in second if m["role"] == "assistant" and not m.get("metadata")][-1]["content"]
    assert answer.strip()
    assert session.transcript == [
        {"role": "user", "content": "And plus 1?"},
        {"role": "assistant", "content": answer},
    ]
    list(handlers.respond(session, "Thanks.", off))
    assert len(session.transcript) == 4 and session.transcript[:2] == [
        {"role": "user", "content": "And plus 1?"},
        {"role": "assistant", "content": answer},
    ]
    assert session.transcript[2] == {"role": "user", "content": "Thanks."}
    assert [m["content"] for m in session.display if m["role"] == "user"] == [
        QUESTION,
        "And plus 1?",
        "Thanks.",
    ]


def test_vote_reports_chart_rows_confidence_and_samples(handlers: ChatHandlers) -> None:
    session = ChatSession()
    controls = Controls(thinking="on", samples=4, temperature=0.8, max_tokens=24)
    final = list(handlers.respond(session, QUESTION, controls))[-1]
    assert final.error is None and final.votes  # sampled answers differ from run to run
    # Not adaptive: all four samples run; each one either votes once or abstains.
    assert "4/4 samples used" in final.vote_summary
    assert final.samples_html.count("<details") == 4
    abstained = final.samples_html.count("(abstained)")
    assert sum(count for _, count in final.votes) == 4 - abstained
    top = final.votes[0][1]
    winners = {answer for answer, count in final.votes if count == top}
    voted = re.search(r"\*\*Voted answer:\*\* `([^`]*)`", final.vote_summary)
    assert voted is not None and voted.group(1) in winners
    assert _thinking(final.history)[0]["metadata"]["status"] == "done"


def test_bad_options_and_unknown_adapter_are_chat_messages(handlers: ChatHandlers) -> None:
    session = ChatSession()
    bad = Controls(effort="none", budget_mode="fixed", budget=64)
    (reply,) = handlers.respond(session, QUESTION, bad)
    assert reply.error and "thinking" in reply.error
    assert reply.history[-1]["content"].startswith(ERROR_PREFIX)
    (reply,) = handlers.respond(session, QUESTION, Controls(adapter="nope"))
    assert "nope" in (reply.error or "")
    assert session.transcript == []
    assert list(handlers.respond(session, "   ", Controls()))[-1].history == session.view()
    (reply,) = handlers.respond(session, QUESTION, Controls(tools="[{not json"))
    assert reply.error and "function tools are not JSON" in reply.error


def test_stop_cancels_generation_in_the_engine(handlers: ChatHandlers, app_engine: er.Engine) -> None:
    session = ChatSession()
    replies = handlers.respond(
        session, "Write a long story about a cat.", Controls(thinking="off", max_tokens=2000)
    )
    next(replies)
    time.sleep(0.5)
    handlers.stop(session)
    started = time.monotonic()
    final = list(replies)[-1]
    assert time.monotonic() - started < 30
    assert "stopped by you" in _stats(final.history)[0]["metadata"]["title"]
    deadline = time.monotonic() + 10
    while app_engine.live_sequences and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app_engine.live_sequences == 0


def test_build_app_and_cli_flags(app_engine: er.Engine) -> None:
    import gradio as gr

    from edgereason.app.ui import build_app
    from edgereason.cli.main import build_parser

    demo = build_app(app_engine)
    assert isinstance(demo, gr.Blocks)
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert set(by_id) == {
        "er-chat", "er-input", "er-send", "er-stop", "er-clear", "er-thinking", "er-max-tokens",
        "er-samples", "er-samples-slider", "er-vote-panel", "er-votes", "er-vote-summary", "er-lorid",
        "er-model-info", "er-adapter", "er-python-tool", "er-tools", "er-tool-choice", "er-answer-format",
        "er-temperature",
    }  # fmt: skip
    assert by_id["er-python-tool"].value is False  # the Python tool is off until asked for
    assert by_id["er-chat"].latex_delimiters == markup.MATH_DELIMITERS
    assert app_engine.name in by_id["er-model-info"].value
    # Enter and Send both run the reply; Stop calls the handler that cancels the engine's request.
    events = {(t[0], t[1]) for fn in demo.fns.values() for t in fn.targets}
    for elem_id, event in (
        ("er-input", "submit"),
        ("er-send", "click"),
        ("er-stop", "click"),
        ("er-clear", "click"),
    ):
        assert (by_id[elem_id]._id, event) in events
    (stop,) = [fn for fn in demo.fns.values() if (by_id["er-stop"]._id, "click") in fn.targets]
    assert stop.fn.__name__ == "stop"
    args = build_parser().parse_args(["app", "--adapter", "math=/tmp/a.gguf", "--port", "7999"])
    assert args.adapter == [("math", "/tmp/a.gguf")]
    assert (args.host, args.port, args.share) == ("127.0.0.1", 7999, False)


# -- what messages become: cards, JSON, math (markup.py) ---------------------------------------------


def test_boxed_and_dollar_math_become_katex_delimiters_outside_code() -> None:
    m = markup.math_markdown
    assert m(r"So the answer is \boxed{12}.") == r"So the answer is \(\boxed{12}\)."
    assert m(r"\boxed{\frac{1}{2}} and \boxed{x_{1}}") == r"\(\boxed{\frac{1}{2}}\) and \(\boxed{x_{1}}\)"
    # Already math: left alone (KaTeX renders \boxed inside it).
    for already in (r"\(\boxed{4}\)", r"\[\boxed{4}\]", r"$$\boxed{4}$$"):
        assert m(already) == already
    # pandoc's rule for single dollars: math, or prices.
    assert m(r"$x^2$ and $\boxed{3}$") == r"\(x^2\) and \(\boxed{3}\)"
    assert m("It costs $5 and $10.") == "It costs $5 and $10."
    assert m("$5 for 2$3") == "$5 for 2$3"
    # Code is code; a \boxed{ still streaming stays text until it closes.
    assert m("`\\boxed{9}` and\n```\n\\boxed{9}\n```") == "`\\boxed{9}` and\n```\n\\boxed{9}\n```"
    assert m("```latex\n\\boxed{9}") == "```latex\n\\boxed{9}"
    assert m(r"partial \boxed{1") == r"partial \boxed{1"
    assert markup.MATH_DELIMITERS[0] == {"left": "$$", "right": "$$", "display": True}
    assert {d["left"] for d in markup.MATH_DELIMITERS} == {"$$", "\\[", "\\("}


def test_json_answers_become_formatted_code_blocks() -> None:
    assert markup.answer_markdown('{"b": [1, 2], "a": "x"}') == (
        '```json\n{\n  "b": [\n    1,\n    2\n  ],\n  "a": "x"\n}\n```'
    )
    assert markup.answer_markdown("[1,2]") == "```json\n[\n  1,\n  2\n]\n```"
    # A bare number or a sentence is not a JSON answer; with a JSON response_format, unparsed text (a
    # stream in progress, a reply cut by max tokens) is shown as a JSON block anyway.
    assert markup.answer_markdown("12") == "12"
    assert markup.answer_markdown("The answer is 12.") == "The answer is 12."
    assert markup.answer_markdown('{"a": 1', json_expected=True) == '```json\n{"a": 1\n```'
    assert markup.json_block("  ") is None


def test_tool_cards_show_name_arguments_and_result_on_one_line() -> None:
    card = markup.tool_call_card("add", '{"a":12,"b":7}')
    assert card.startswith('<details class="er-tool"><summary>') and card.endswith("</details>")
    assert "<code>add</code>" in card and "Result" not in card
    assert "{&#10;  &quot;a&quot;: 12" in card or '{&#10;  "a": 12,&#10;  "b": 7&#10;}' in card
    assert "\n" not in card  # one line: a blank line would end Markdown's HTML block
    done = markup.tool_call_card("add", '{"a": 1}', result="3\n\nok <b>$x$</b>")
    assert "Result</b><pre>3&#10;&#10;ok &lt;b&gt;&#36;x&#36;&lt;/b&gt;</pre>" in done and "✓" in done
    assert "\n" not in done
    assert markup.pretty_arguments("not json") == "not json"
    text = markup.answer_markdown("Calling.", [{"name": "add", "arguments": "{}", "result": "3"}])
    assert text.startswith("Calling.\n\n<details") and "Result" in text


def test_python_tool_runs_become_cards_in_answer_and_reasoning() -> None:
    ran = "Let me compute.\n```python\nx = 12\nprint(x + 7)\n```\n<output>\n19\n</output>\nSo \\boxed{19}."
    out = markup.answer_markdown(ran)
    assert out.count('<details class="er-tool er-python">') == 1
    assert "<summary>🐍 Python tool → <code>19</code></summary>" in out
    assert "x = 12&#10;print(x + 7)" in out and "<b>Output</b><pre>19</pre>" in out
    assert "<output>" not in out and out.endswith("So \\(\\boxed{19}\\).")
    tags = markup.reasoning_markdown(
        "<code>1/0</code>\n<output>\nZeroDivisionError: division by zero\n</output>"
    )
    assert "er-python" in tags and "ZeroDivisionError" in tags
    # A block without output (the tool off, or still running) stays a code block.
    assert markup.answer_markdown("```python\nprint(1)\n```") == "```python\nprint(1)\n```"
    assert "(no output)" in markup.python_card("x = 1", "")


def test_tools_box_and_toggles_map_onto_request_fields() -> None:
    fields = Controls(python_tool=True, answer_format="json", tools=ADD_TOOL, tool_choice="required").fields()
    assert fields["builtin_tools"] == ["python"]
    assert fields["response_format"] == {"type": "json_object"}
    assert fields["tool_choice"] == "required"
    assert fields["tools"][0]["type"] == "function" and fields["tools"][0]["function"]["name"] == "add"
    plain = Controls().fields()
    assert not {"builtin_tools", "response_format", "tools", "tool_choice"} & set(plain)
    wrapped = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert parse_tools(json.dumps(wrapped)) == wrapped == parse_tools(json.dumps(wrapped[0]))
    assert parse_tools("  ") == []


# -- tools, JSON and math through the handlers, on the embedded model ------------------------------


def test_tool_call_card_then_the_users_result_then_the_answer(handlers: ChatHandlers) -> None:
    session = ChatSession()
    forced = Controls(thinking="off", temperature=0.0, max_tokens=48, tools=ADD_TOOL, tool_choice="required")
    final = list(handlers.respond(session, "What is 12 + 7?", forced))[-1]
    assert final.error is None
    (card,) = [m["content"] for m in final.history if "er-tool" in m["content"]]
    assert "<code>add</code>" in card and "Result" not in card
    (call,) = session.pending_calls
    assert json.loads(call["arguments"]).keys() == {"a", "b"}
    assert "1 tool call" in _stats(final.history)[0]["metadata"]["title"]
    assert session.transcript[-1]["tool_calls"][0]["id"] == call["id"]
    # The next message is the call's result: the card shows it and the model answers after it.
    after = list(
        handlers.respond(
            session, "19", Controls(thinking="off", temperature=0.0, max_tokens=16, tools=ADD_TOOL)
        )
    )
    history = after[-1].history
    assert after[-1].error is None and session.pending_calls == []
    card = next(m["content"] for m in history if "er-tool" in m["content"])
    assert "Result</b><pre>19</pre>" in card
    assert session.transcript[2] == {"role": "tool", "tool_call_id": call["id"], "content": "19"}
    assert session.transcript[3]["role"] == "assistant" and len(session.transcript) == 4


def test_python_tool_toggle_runs_code_and_shows_a_card(handlers: ChatHandlers) -> None:
    session = ChatSession()
    on = Controls(thinking="off", temperature=0.0, max_tokens=48, python_tool=True)
    final = list(handlers.respond(session, CODE_QUESTION, on))[-1]
    assert final.error is None
    answer = next(m["content"] for m in final.history if "er-python" in m["content"])
    assert "<summary>🐍 Python tool → <code>19</code></summary>" in answer and "<output>" not in answer
    assert "1 Python run" in _stats(final.history)[0]["metadata"]["title"]
    assert "Python tool: 1 run(s), 0 error(s)" in _stats(final.history)[0]["content"]
    # Off (the default): the same request runs nothing; the model's block stays a code block.
    off = list(
        handlers.respond(
            ChatSession(), CODE_QUESTION, Controls(thinking="off", temperature=0.0, max_tokens=24)
        )
    )
    assert not any("er-python" in m["content"] for m in off[-1].history)


def test_python_tool_refused_by_the_engine_is_a_chat_message(
    handlers: ChatHandlers, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgereason import sandbox

    # Fault injection: a machine where the sandbox cannot isolate code.
    monkeypatch.setattr(sandbox, "sandbox_unavailable_reason", lambda: "user namespaces are disabled")
    session = ChatSession()
    (reply,) = handlers.respond(session, CODE_QUESTION, Controls(python_tool=True))
    assert reply.error and "Python tool is unavailable" in reply.error and "user namespaces" in reply.error
    assert reply.history[-1]["content"].startswith(ERROR_PREFIX)
    assert session.transcript == [] and session.stream is None


def test_json_answer_format_renders_a_json_block(handlers: ChatHandlers) -> None:
    session = ChatSession()
    controls = Controls(thinking="off", temperature=0.0, max_tokens=24, answer_format="json")
    final = list(handlers.respond(session, JSON_QUESTION, controls))[-1]
    assert final.error is None
    answer = final.history[1]["content"]
    assert answer.startswith("```json\n") and answer.endswith("\n```")
    assert json.loads(session.transcript[-1]["content"]) == json.loads(
        answer[len("```json\n") : -len("\n```")]
    )


# -- end to end in a real browser ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_browser_chat_thinking_panel_and_vote_chart(app_engine: er.Engine, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"!!! {CHROMIUM} is not installed: the app's browser test did NOT run "
            "(apt-get install -y chromium, or `make setup` as root)"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev extra)")
    from edgereason.app.ui import launch

    port = _free_port()
    demo = launch(app_engine, port=port, block=False)
    external: list[str] = []

    def only_loopback(route: object) -> None:
        url = route.request.url  # type: ignore[attr-defined]
        if urlparse(url).hostname in ("127.0.0.1", "localhost") or url.startswith(("data:", "blob:")):
            route.continue_()  # type: ignore[attr-defined]
        else:
            external.append(url)
            route.abort()  # type: ignore[attr-defined]

    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.route("**/*", only_loopback)
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            page.locator("#er-thinking").get_by_text("on", exact=True).click()
            _set_number(page, "#er-max-tokens", 48)
            page.locator("#er-input textarea").fill(QUESTION)
            page.locator("#er-input textarea").press("Enter")
            chat = page.locator("#er-chat")
            chat.get_by_text("answer tok").first.wait_for(timeout=180_000)
            page.screenshot(path=str(tmp_path / "1-answer.png"), full_page=True)
            assert QUESTION in chat.inner_text()

            # The thinking panel collapsed when the answer started; open it and see the reasoning.
            chat.get_by_text(THINKING_TITLE).first.click()
            page.wait_for_timeout(500)
            page.screenshot(path=str(tmp_path / "2-thinking-open.png"), full_page=True)

            # Stop: the engine cancels the request and the message says so.
            page.locator("#er-thinking").get_by_text("off", exact=True).click()
            _set_number(page, "#er-max-tokens", 1000)
            page.locator("#er-input textarea").fill("Write a long story about a cat.")
            page.locator("#er-input textarea").press("Enter")
            page.wait_for_timeout(1500)
            page.locator("#er-stop").click()
            chat.get_by_text("stopped by you").first.wait_for(timeout=30_000)
            assert app_engine.live_sequences == 0

            page.locator("#er-thinking").get_by_text("on", exact=True).click()
            _set_number(page, "#er-samples-slider", 4)
            _set_number(page, "#er-max-tokens", 24)
            page.locator("#er-input textarea").fill("What is 3 + 4?")
            page.locator("#er-input textarea").press("Enter")
            page.locator("#er-vote-summary").get_by_text("samples used").wait_for(timeout=240_000)
            page.locator("#er-votes canvas, #er-votes svg").first.wait_for(timeout=30_000)
            page.locator("#er-samples").get_by_text("Samples").first.click()
            page.locator("details.er-sample summary").first.click()
            page.locator("#er-votes").scroll_into_view_if_needed()
            page.screenshot(path=str(tmp_path / "3-vote.png"), full_page=True)
            assert (
                "Voted answer" in page.locator("#er-vote-summary").inner_text()
                or "No answer" in page.locator("#er-vote-summary").inner_text()
            )
            browser.close()
    finally:
        demo.close()
    assert external == [], f"the app fetched from the internet: {external}"


@pytest.mark.slow
def test_browser_renders_tool_cards_json_and_math(app_engine: er.Engine, tmp_path: Path) -> None:
    """What the user sees, read from the rendered DOM: a <details> card per tool call (the user's next
    message fills in its result), a card for the Python tool's run, a JSON answer as a code block, and a
    \boxed{} answer as KaTeX. Short greedy generations, the tool call forced by tool_choice."""
    from edgereason.models import STUDENT_DIR

    if not Path(CHROMIUM).exists():
        pytest.skip(f"!!! {CHROMIUM} is not installed: the app's rendering test did NOT run")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev extra)")
    student = STUDENT_DIR / "student.gguf"
    if not student.is_file():
        pytest.skip(f"the demo student adapter is missing ({student}): it writes the \\boxed{{}} answer")
    from edgereason.app.ui import launch

    # The student writes "\boxed{19}" in its reasoning in ~40 tokens; the base model never writes \boxed.
    app_engine.load_adapter("student", student)
    port = _free_port()
    demo = launch(app_engine, port=port, block=False)
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            try:
                _render_steps(page, port, tmp_path)
            except Exception as exc:
                # CI keeps no screenshot: the chat's text goes with the failure.
                with contextlib.suppress(Exception):
                    page.screenshot(path=str(tmp_path / "failed.png"), full_page=True)
                    exc.add_note(f"the chat at the failure:\n{page.locator('#er-chat').inner_text()[-3000:]}")
                raise
            browser.close()
    finally:
        demo.close()
        app_engine.unload_adapter("student")


def _render_steps(page: Any, port: int, tmp_path: Path) -> None:
    page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
    chat = page.locator("#er-chat")

    def send(text: str) -> None:
        page.locator("#er-input textarea").fill(text)
        page.locator("#er-input textarea").press("Enter")

    def clear() -> None:
        page.locator("#er-clear").click()
        page.wait_for_function("() => !document.querySelector('#er-chat .message')")

    # A forced function call: a collapsed card with the name and the arguments pretty-printed.
    _set_number(page, "#er-temperature", 0)
    page.locator("#er-thinking").get_by_text("off", exact=True).click()
    _set_number(page, "#er-max-tokens", 64)  # the call takes 36 tokens greedy
    page.get_by_text("Tools and answer format").click()
    page.locator("#er-tools textarea").fill(ADD_TOOL)
    page.locator("#er-tool-choice").get_by_text("required", exact=True).click()
    page.wait_for_function(
        "() => document.querySelector('#er-tool-choice input:checked')?.value === 'required'", timeout=10_000
    )
    assert page.locator("#er-temperature input[type=number]").input_value() == "0"
    send("What is 12 + 7?")
    # The stats line ends every answer; then the answer must be the call (the chat's text says what came).
    chat.get_by_text("answer tok").first.wait_for(timeout=120_000)
    assert "1 tool call" in chat.inner_text(), chat.inner_text()
    card = chat.locator("details.er-tool").first
    assert "add" in card.locator("summary").inner_text()
    assert card.get_attribute("open") is None  # collapsed until clicked
    card.locator("summary").click()
    args = card.locator("pre code").first.inner_text()
    assert json.loads(args).keys() == {"a", "b"} and "\n" in args, args
    # The next message is the call's result: the card shows it, then the model answers.
    page.locator("#er-tool-choice").get_by_text("auto", exact=True).click()
    send("19")
    chat.locator("details.er-tool", has_text="Result").first.wait_for(state="attached", timeout=120_000)
    page.wait_for_function(
        "() => document.querySelectorAll('#er-chat .message').length >= 6", timeout=120_000
    )
    page.screenshot(path=str(tmp_path / "1-tool-card.png"), full_page=True)

    # The built-in Python tool: the code and its output as a card.
    clear()
    page.locator("#er-tools textarea").fill("")
    page.locator("#er-python-tool input").check()
    send(CODE_QUESTION)
    chat.get_by_text("Python run").first.wait_for(timeout=120_000)
    run = chat.locator("details.er-python").first
    assert "19" in run.locator("summary").inner_text(), (run.inner_html(), chat.inner_text())
    run.locator("summary").click()
    assert "print" in run.locator("pre code").first.inner_text()
    page.screenshot(path=str(tmp_path / "2-python-card.png"), full_page=True)

    # A JSON answer: a code block outside any card.
    clear()
    page.locator("#er-python-tool input").uncheck()
    page.locator("#er-answer-format").get_by_text("json", exact=True).click()
    _set_number(page, "#er-max-tokens", 24)
    send(JSON_QUESTION)
    chat.get_by_text("answer tok").first.wait_for(timeout=120_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#er-chat pre code')]"
        ".some(c => !c.closest('details') && c.textContent.trim().startsWith('{'))",
        timeout=30_000,
    )
    page.screenshot(path=str(tmp_path / "3-json.png"), full_page=True)

    # \boxed{} as math: KaTeX nodes whose TeX source is the boxed answer.
    clear()
    page.locator("#er-answer-format").get_by_text("text", exact=True).click()
    page.locator("#er-thinking").get_by_text("on", exact=True).click()
    _set_number(page, "#er-max-tokens", 48)
    page.get_by_text("Adapters", exact=True).click()
    page.locator("#er-adapter input").click()
    page.get_by_role("option", name="student").click()
    send("What is 12 + 7?")
    chat.get_by_text("answer tok").first.wait_for(timeout=120_000)
    chat.get_by_text(THINKING_TITLE).first.click()
    chat.locator(".katex").first.wait_for(timeout=30_000)
    tex = chat.locator(".katex annotation").all_text_contents()
    assert any(t.startswith("\\boxed{") for t in tex), tex
    assert chat.locator(".katex .boxpad, .katex .fbox").count() >= 1
    page.screenshot(path=str(tmp_path / "4-boxed.png"), full_page=True)


def _set_number(page: object, elem_id: str, value: int) -> None:
    box = page.locator(f"{elem_id} input[type=number]")  # type: ignore[attr-defined]
    box.fill(str(value))
    box.press("Enter")


# -- over a remote engine (openai://) -------------------------------------------------------------------


def test_app_over_a_remote_engine(capsys: pytest.CaptureFixture[str]) -> None:
    """`edgereason app --model openai://...` builds its UI over the remote engine and answers through it; an
    --adapter the remote server would have to load fails at start, as one line (exit 2)."""
    from edgereason.app.ui import build_app
    from edgereason.cli.main import main

    from .test_server import _start

    for server in _start():
        url = f"openai://{server.base.removeprefix('http://')}/default"
        with er.load(url) as remote:
            by_id = {b.elem_id: b for b in build_app(remote).blocks.values() if getattr(b, "elem_id", None)}
            info = by_id["er-model-info"].value
            assert "remote" in info and "8 parallel sequences" in info, info
            h = ChatHandlers(remote)
            assert h.max_samples == 8
            session = ChatSession()
            replies = list(h.respond(session, "What is 2 + 2?", Controls(max_tokens=8, thinking="off")))
            assert replies and session.transcript[-1]["role"] == "assistant"
            assert session.transcript[-1]["content"].strip()
            # The remote engine does not send builtin_tools: the app says so rather than answer without it.
            (refused,) = h.respond(session, "Run print(1).", Controls(max_tokens=8, python_tool=True))
            assert refused.error and "remote server" in refused.error and "Python tool" in refused.error
        assert main(["app", "--model", url, "--adapter", "math=/tmp/a.gguf"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "remote server loads its own adapters" in err, err
