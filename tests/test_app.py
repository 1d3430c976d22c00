"""The Gradio app: its handlers over the embedded model, and the whole UI in a real headless browser."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

import edgereason as er
from edgereason.options import GenerationOptions

pytest.importorskip("gradio", reason="the app needs gradio: pip install 'edgereason[app]'")

from edgereason.app.handlers import (  # noqa: E402
    ERROR_PREFIX,
    THINKING_TITLE,
    ChatHandlers,
    ChatSession,
    Controls,
)

QUESTION = "What is 12 + 7? Answer briefly."
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
    assert list(handlers.respond(session, "   ", Controls()))[-1].history == session.display


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
        "er-model-info",
    }  # fmt: skip
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
        assert main(["app", "--model", url, "--adapter", "math=/tmp/a.gguf"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "remote server loads its own adapters" in err, err
