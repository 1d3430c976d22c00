"""The Gradio chat app: ``build_app(engine)`` lays it out, ``launch()`` serves it on loopback."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

# Before gradio is imported: no usage reporting or version checks from a local app.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from edgereason.surface import ChatEngine  # noqa: E402

from .handlers import (  # noqa: E402
    ADAPTIVE_CHOICES,
    ANSWER_FORMATS,
    BUDGET_MODES,
    DEFAULT_MAX_TOKENS,
    EFFORT_CHOICES,
    THINKING_CHOICES,
    TOOL_CHOICES,
    ChatHandlers,
    ChatSession,
    Controls,
    Reply,
)
from .markup import MATH_DELIMITERS  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
# System fonts only: the default theme's web fonts would be fetched from the internet.
SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif")
MONO_FONTS = ("ui-monospace", "SFMono-Regular", "Consolas", "Liberation Mono", "monospace")


def make_theme() -> gr.themes.Base:
    return gr.themes.Default(font=list(SYSTEM_FONTS), font_mono=list(MONO_FONTS))


def build_app(engine: ChatEngine) -> gr.Blocks:
    """The chat UI over ``engine``; every event calls a ``ChatHandlers`` method."""
    h = ChatHandlers(engine)
    with gr.Blocks(title="EdgeReason", analytics_enabled=False) as demo:
        session = gr.State(ChatSession())
        question = gr.State("")
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(
                    label="Chat",
                    height=520,
                    elem_id="er-chat",
                    group_consecutive_messages=False,
                    latex_delimiters=MATH_DELIMITERS,
                )
                with gr.Row():
                    box = gr.Textbox(
                        placeholder="Ask something…",
                        show_label=False,
                        scale=6,
                        elem_id="er-input",
                        autofocus=True,
                    )
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="er-send")
                    stop = gr.Button("Stop", variant="stop", scale=1, elem_id="er-stop")
                    clear = gr.Button("Clear", scale=1, elem_id="er-clear")
                with gr.Column(visible=False, elem_id="er-vote-panel") as vote_panel:
                    votes_plot = gr.BarPlot(
                        pd.DataFrame({"answer": [], "votes": []}),
                        x="answer",
                        y="votes",
                        title="Self-consistency votes",
                        elem_id="er-votes",
                        sort="-y",
                        y_axis_format="~g",
                    )
                    vote_summary = gr.Markdown(elem_id="er-vote-summary")
                    with gr.Accordion("Samples", open=False, elem_id="er-samples"):
                        samples = gr.HTML()
                lorid = gr.Markdown(visible=False, elem_id="er-lorid")
            with gr.Column(scale=1, min_width=280):
                gr.Markdown(h.model_info(), elem_id="er-model-info")
                controls = _controls(h)
        inputs = [session, question, *controls]
        outputs = [chatbot, vote_panel, votes_plot, vote_summary, samples, lorid]

        def take(text: str) -> tuple[Any, str]:
            return gr.update(value=""), text

        def respond(sess: ChatSession, text: str, *values: Any) -> Iterator[list[Any]]:
            for reply in h.respond(sess, text, Controls(*values)):
                yield _render(reply)

        def clear_all(sess: ChatSession) -> list[Any]:
            return _render(h.clear(sess))

        for trigger in (box.submit, send.click):
            trigger(take, [box], [box, question], queue=False).then(
                respond, inputs, outputs, concurrency_limit=None, show_progress="hidden"
            )
        stop.click(h.stop, [session], None, queue=False)
        clear.click(clear_all, [session], outputs, queue=False)
    return demo


def _controls(h: ChatHandlers) -> list[gr.components.Component]:
    """The sidebar, returned in ``Controls`` field order."""
    d = Controls()
    c: dict[str, gr.components.Component] = {}
    with gr.Accordion("Thinking", open=True):
        c["thinking"] = gr.Radio(
            list(THINKING_CHOICES), value=d.thinking, label="Thinking", elem_id="er-thinking"
        )
        effort = gr.Radio(list(EFFORT_CHOICES), value=d.effort, label="Reasoning effort preset")
        c["effort"] = effort
        c["budget_mode"] = gr.Radio(list(BUDGET_MODES), value=d.budget_mode, label="Thinking budget")
        c["budget"] = gr.Slider(16, 4096, value=d.budget, step=16, label="Budget (reasoning tokens)")
        c["threshold"] = gr.Slider(
            0.5, 0.99, value=d.threshold, step=0.01, label="Auto budget: early-exit confidence threshold"
        )
    with gr.Accordion("Self-consistency", open=True):
        c["samples"] = gr.Slider(
            1, h.max_samples, value=d.samples, step=1, label="Samples (1 = off)", elem_id="er-samples-slider"
        )
        c["adaptive"] = gr.Radio(list(ADAPTIVE_CHOICES), value=d.adaptive, label="Adaptive stopping")
    with gr.Accordion("Adapters", open=False):
        c["adapter"] = gr.Dropdown(
            h.adapter_choices, value=d.adapter, label="LoRA adapter", elem_id="er-adapter"
        )
        c["lorid"] = gr.Checkbox(
            value=False,
            label="LoRID (IR + KG→DR adapters)",
            interactive=h.supports_lorid,
            visible=h.supports_lorid,
        )
    with gr.Accordion("Sampling", open=True):
        c["temperature"] = gr.Slider(
            0.0, 2.0, value=d.temperature, step=0.05, label="Temperature", elem_id="er-temperature"
        )
        c["max_tokens"] = gr.Slider(
            16, 8192, value=DEFAULT_MAX_TOKENS, step=16, label="Max tokens", elem_id="er-max-tokens"
        )

    with gr.Accordion("Tools and answer format", open=False):
        c["python_tool"] = gr.Checkbox(
            value=d.python_tool,
            label="Python tool (the engine runs the model's code blocks in a sandbox)",
            elem_id="er-python-tool",
        )
        c["tools"] = gr.Textbox(
            value=d.tools,
            lines=3,
            placeholder='[{"type": "function", "function": {"name": "add", "parameters": {...}}}]',
            label="Function tools (OpenAI JSON; your next message answers each call)",
            elem_id="er-tools",
        )
        c["tool_choice"] = gr.Radio(
            list(TOOL_CHOICES), value=d.tool_choice, label="Tool choice", elem_id="er-tool-choice"
        )
        c["answer_format"] = gr.Radio(
            list(ANSWER_FORMATS), value=d.answer_format, label="Answer format", elem_id="er-answer-format"
        )

    def preset(effort: str) -> tuple[Any, Any]:
        mode, budget = h.effort_preset(effort)
        return gr.update(value=mode), gr.update() if budget is None else gr.update(value=budget)

    effort.change(preset, [effort], [c["budget_mode"], c["budget"]], queue=False)
    return [c[f.name] for f in fields(Controls)]


def _render(reply: Reply) -> list[Any]:
    """A Reply as values for build_app's outputs."""
    plot: Any = gr.update()
    if reply.votes is not None:
        # An explicit y range from 0: with equal counts the automatic range has zero height.
        top = max((v for _, v in reply.votes), default=1.0)
        plot = gr.update(value=pd.DataFrame(reply.votes, columns=["answer", "votes"]), y_lim=[0, top])
    return [
        reply.history,
        gr.update(visible=reply.votes is not None),
        plot,
        reply.vote_summary,
        reply.samples_html,
        gr.update(visible=bool(reply.lorid), value=reply.lorid),
    ]


def launch(
    engine: ChatEngine,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    share: bool = False,
    *,
    block: bool = True,
) -> gr.Blocks:
    """Serve the app; ``block=False`` returns once it is listening (tests close it with ``.close()``)."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("the app is listening on %s: anyone who can reach it can use the model", host)
    demo = build_app(engine)
    demo.queue(max_size=engine.max_queue)
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        inbrowser=False,
        prevent_thread_lock=not block,
        show_error=False,
        ssr_mode=False,
        theme=make_theme(),
        quiet=True,
    )
    return demo
