"""Thinking budgets on arithmetic word problems: accuracy and reasoning tokens per budget, side by side."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

BUDGETS: tuple[int | str | None, ...] = (0, 32, 64, 128, 256, "auto", None)  # None: uncapped


def _label(budget: int | str | None) -> str:
    return "uncapped" if budget is None else str(budget)


def run_budget(
    engine: Any, problems: list[Any], budget: int | str | None, answer_tokens: int, max_think: int
) -> dict[str, Any]:
    """All problems at one budget, submitted together (the engine batches them)."""
    from ..answers import answers_equal

    think_room = max_think if budget in (None, "auto") else int(budget)  # type: ignore[arg-type]
    fields: dict[str, Any] = {"thinking": True, "temperature": 0.0, "max_tokens": think_room + answer_tokens}
    if budget is not None:
        fields["thinking_budget"] = budget
    if budget == "auto":
        fields["auto_budget_cap"] = max_think
    t0 = time.perf_counter()
    streams = [
        engine.stream([{"role": "user", "content": p.question + " Answer with the number."}], **fields)
        for p in problems
    ]
    results = [s.wait().choices[0] for s in streams]
    wall = time.perf_counter() - t0
    hits = sum(c.answer is not None and answers_equal(c.answer, p.answer) for c, p in zip(results, problems))
    stopped: dict[str, int] = {}
    for c in results:
        stopped[str(c.thinking_stopped_by)] = stopped.get(str(c.thinking_stopped_by), 0) + 1
    out = {
        "budget": _label(budget),
        "accuracy": round(hits / len(problems), 4),
        "mean_reasoning_tokens": round(sum(c.reasoning_tokens for c in results) / len(results), 2),
        "wall_s": round(wall, 2),
        "stopped_by": stopped,
    }
    if budget == "auto":
        probes = [c.extra.get("early_exit_probe_count", 0) for c in results]
        out["mean_probes"] = round(sum(probes) / len(probes), 2)
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Accuracy against mean reasoning tokens, one labelled point per budget."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["mean_reasoning_tokens"] for r in rows]
    ys = [r["accuracy"] for r in rows]
    ax.plot(xs, ys, "o")
    for r, x, y in zip(rows, xs, ys):
        ax.annotate(r["budget"], (x, y), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("mean reasoning tokens")
    ax.set_ylabel("accuracy")
    ax.set_title("thinking budgets: accuracy vs reasoning tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(args: argparse.Namespace) -> dict[str, Any]:
    import edgereason as er
    from edgereason.evaldata import arith_problems
    from edgereason.models import resolve_model

    n = getattr(args, "problems", 30) or 30
    answer_tokens = getattr(args, "answer_tokens", 48) or 48
    max_think = getattr(args, "tokens", 256) or 256
    problems = arith_problems(n, seed=0, split="test")
    engine = er.load(
        str(resolve_model(args.model)),
        n_ctx=args.n_ctx or max_think + answer_tokens + 256,
        threads=args.threads,
        max_sequences=16,
    )
    try:
        rows = [run_budget(engine, problems, b, answer_tokens, max_think) for b in BUDGETS]
    finally:
        engine.close()
    for r in rows:
        print(
            f"budget {r['budget']:>9}: accuracy {r['accuracy']:.3f}  mean reasoning tokens {r['mean_reasoning_tokens']:7.1f}"
            f"  wall {r['wall_s']:6.1f} s  stopped_by {r['stopped_by']}"
        )
    by = {r["budget"]: r for r in rows}
    auto, full = by["auto"], by["uncapped"]
    saving = (
        1 - auto["mean_reasoning_tokens"] / full["mean_reasoning_tokens"]
        if full["mean_reasoning_tokens"]
        else 0.0
    )
    summary = {
        "auto_vs_uncapped_token_saving": round(saving, 4),
        "auto_accuracy": auto["accuracy"],
        "uncapped_accuracy": full["accuracy"],
        "equal_accuracy": auto["accuracy"] >= full["accuracy"],
    }
    print(
        f"auto vs uncapped: {saving:.1%} fewer reasoning tokens, accuracy {auto['accuracy']:.3f} vs {full['accuracy']:.3f}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    png = plot(rows, args.out / "budgets.png")
    if png is not None:
        print(f"plot written to {png}")
    return {
        "model": str(args.model or "default"),
        "problems": n,
        "max_think": max_think,
        "rows": rows,
        "summary": summary,
        "plot": str(png) if png else None,
    }
