"""Thinking budgets on arithmetic word problems: accuracy and reasoning tokens per budget, side by side.

The accuracy loop is the eval harness's (``edgereason.eval``): the same requests, records and summary
as ``edgereason eval --strategy budget:N``, with uncapped greedy as the reference.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

BUDGETS: tuple[int | str | None, ...] = (0, 32, 64, 128, 256, "auto", None)  # None: uncapped
PROMPT = "{question} Answer with the number."


def _label(budget: int | str | None) -> str:
    return "uncapped" if budget is None else str(budget)


def _strategy(budget: int | str | None) -> str:
    return "greedy" if budget is None else f"budget:{budget}"


def run_budgets(engine: Any, items: list[Any], answer_tokens: int, max_think: int) -> list[dict[str, Any]]:
    """One row per budget (the engine batches each budget's problems)."""
    from ..eval import EvalSettings, parse_strategy, run_eval, summarize

    settings = EvalSettings(max_think=max_think, answer_tokens=answer_tokens, thinking=True, prompt=PROMPT)
    runs = run_eval(engine, items, [parse_strategy(_strategy(b)) for b in BUDGETS], settings)
    table = summarize(runs)["strategies"]
    rows = []
    for budget, run in zip(BUDGETS, runs):
        s = table[run.spec.label]
        row = {
            "budget": _label(budget),
            "accuracy": s["accuracy"],
            "ci95": s["ci95"],
            "mean_reasoning_tokens": s["mean_reasoning_tokens"],
            "wall_s": s["wall_s"],
            "stopped_by": s["stopped_by"],
        }
        if budget == "auto":
            probes = [r.extra.get("probes", 0) for r in run.records]
            row["mean_probes"] = round(sum(probes) / len(probes), 2)
        rows.append(row)
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Accuracy against mean reasoning tokens, one labelled point per budget (None without matplotlib)."""
    from ..errors import MissingExtraError
    from ..eval.plots import plot_budgets

    table = {
        r["budget"]: {
            "kind": "greedy" if r["budget"] == "uncapped" else "budget",
            "budget": int(r["budget"]) if r["budget"].isdigit() else r["budget"],
            "accuracy": r["accuracy"],
            "ci95": r["ci95"],
            "mean_reasoning_tokens": r["mean_reasoning_tokens"],
        }
        for r in rows
    }
    try:
        return plot_budgets(table, path)
    except MissingExtraError:
        return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    import edgereason as er
    from edgereason.eval import load_items
    from edgereason.models import resolve_model

    n = getattr(args, "problems", 30) or 30
    answer_tokens = getattr(args, "answer_tokens", 48) or 48
    max_think = getattr(args, "tokens", 256) or 256
    items = load_items("arith", split="dev", limit=n)  # a comparison of settings: dev, not test
    engine = er.load(
        str(resolve_model(args.model)),
        n_ctx=args.n_ctx or max_think + answer_tokens + 256,
        threads=args.threads,
        max_sequences=16,
    )
    try:
        rows = run_budgets(engine, items, answer_tokens, max_think)
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
