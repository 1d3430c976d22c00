"""What the app shows about a result: plain formatting, no Gradio, so it is testable on its own."""

from __future__ import annotations

import html
from typing import Any

from edgereason.result import ChatResult
from edgereason.surface import ChatEngine

STOP_REASONS = {
    "model": "the model closed its thinking",
    "budget": "the thinking budget ran out",
    "early_exit": "early exit: the trial answer was confident",
    "loop_guard": "the loop guard saw repetition",
    "length": "max tokens ran out while thinking",
    "disabled": "thinking was off",
}


def model_info_markdown(engine: ChatEngine) -> str:
    """Name, format, quantisation and what the engine can do, as a short Markdown block."""
    info = engine.info
    caps = engine.capabilities
    adapters = ", ".join(engine.adapter_names) or "none"
    return (
        f"**{info.name}**  \n"
        f"{info.format} · {info.quantization or 'unquantised'} · {info.architecture}  \n"
        f"reasoning format: {engine.reasoning_format.value} · context {caps.n_ctx or 'unknown'} · "
        f"{caps.max_sequences} parallel sequences  \n"
        f"LoRA adapters: {adapters}"
    )


def stats_title(result: ChatResult, elapsed_s: float, *, stopped: bool = False) -> str:
    """One line per message: reasoning tokens, answer tokens, tokens/s, why thinking stopped."""
    usage = result.usage
    answer_tokens = max(usage.completion_tokens - usage.reasoning_tokens, 0)
    rate = usage.completion_tokens / elapsed_s if elapsed_s > 0 else 0.0
    parts = [
        f"{usage.reasoning_tokens} reasoning tok",
        f"{answer_tokens} answer tok",
        f"{rate:.1f} tok/s",
    ]
    if usage.tool_calls:
        parts.append(f"{usage.tool_calls} Python run{'s' if usage.tool_calls != 1 else ''}")
    if result.tool_calls:
        parts.append(f"{len(result.tool_calls)} tool call{'s' if len(result.tool_calls) != 1 else ''}")
    why = result.thinking_stopped_by
    if why:
        parts.append(f"thinking stopped: {why}")
    if stopped:
        parts.append("stopped by you")
    return " · ".join(parts)


def stats_details(result: ChatResult, elapsed_s: float) -> str:
    """The body under the stats line: timings, finish reason, confidence signals."""
    c = result.choices[0]
    lines = [
        f"- prompt tokens: {result.usage.prompt_tokens}",
        f"- completion tokens: {result.usage.completion_tokens} in {elapsed_s:.2f} s",
        f"- finish reason: {c.finish_reason}",
    ]
    if c.thinking_stopped_by:
        lines.append(
            f"- thinking stopped by: {STOP_REASONS.get(c.thinking_stopped_by, c.thinking_stopped_by)}"
        )
    if c.answer is not None:
        lines.append(f"- extracted answer: `{c.answer}`")
    conf = c.extra.get("answer_confidence")
    if conf is not None:
        lines.append(f"- answer confidence: {conf:.2f}")
    for p in c.extra.get("early_exit_probes") or ():
        lines.append(
            f"- probe at {p['at']} reasoning tokens: `{p['answer']}` (confidence {p['confidence']:.2f})"
        )
    tool = c.extra.get("python_tool")
    if tool:
        lines.append(
            f"- Python tool: {tool['calls']} run(s), {tool['errors']} error(s), "
            f"{tool['tokens']} output tokens, {tool['wall_s']:.2f} s"
        )
    if c.extra.get("think_answer_mismatch"):
        lines.append("- the answer disagrees with the reasoning")
    return "\n".join(lines)


def vote_rows(report: dict[str, Any]) -> list[tuple[str, float]]:
    """(answer, votes) pairs, most votes first, for the bar chart."""
    return sorted(((str(a), float(v)) for a, v in report["votes"].items()), key=lambda kv: -kv[1])


def vote_summary_markdown(report: dict[str, Any]) -> str:
    answer = report.get("answer")
    used, asked = report["samples_used"], report["samples_requested"]
    lines = [
        f"**Voted answer:** `{answer}`" if answer is not None else "**No answer won the vote**",
        f"confidence {report['confidence']:.0%} · {used}/{asked} samples used",
    ]
    abstained = sum(1 for s in report["samples"] if s["answer"] is None)
    if abstained:
        lines[-1] += f" · {abstained} abstained (no answer found)"
    if report.get("stopped_early"):
        lines.append(f"stopped early ({report['stop_rule']}), {report.get('samples_cancelled', 0)} cancelled")
    return "  \n".join(lines)


def samples_html(report: dict[str, Any]) -> str:
    """Each sample as a collapsed <details>: its answer in the summary, its reasoning inside."""
    winner = report.get("answer")
    parts = []
    for s in sorted(report["samples"], key=lambda s: s["index"]):
        answer = s["answer"] if s["answer"] is not None else "(abstained)"
        mark = " ✓" if s["answer"] is not None and s["answer"] == winner else ""
        summary = (
            f"Sample {s['index'] + 1}: {html.escape(str(answer))}{mark} "
            f"· {s['tokens']} tok · {html.escape(str(s['finish_reason']))}"
        )
        body = html.escape(s.get("reasoning") or "(no reasoning recorded)")
        parts.append(
            f'<details class="er-sample"><summary>{summary}</summary>'
            f'<pre style="white-space:pre-wrap">{body}</pre></details>'
        )
    return "\n".join(parts)


def lorid_markdown(report: dict[str, Any]) -> str:
    """LoRID: the IR and DR answers of each iteration and whether they agreed."""
    ir = report.get("ir_answers") or []
    dr = report.get("dr_answers") or []
    rows = ["| iteration | IR answer | DR answer | agree |", "|---|---|---|---|"]
    for i in range(max(len(ir), len(dr))):
        a = ir[i] if i < len(ir) else None
        b = dr[i] if i < len(dr) else None
        agree = "yes" if a is not None and a == b else "no"
        rows.append(f"| {i + 1} | {a if a is not None else '—'} | {b if b is not None else '—'} | {agree} |")
    verdict = "agreed" if report.get("agreed") else "did not agree"
    rows.append("")
    rows.append(f"IR and DR {verdict}; answer: `{report.get('answer')}`")
    return "\n".join(rows)
