"""``edgereason eval``: strategies (greedy, thinking budgets, self-consistency, LoRID) measured on a
data set, with per-item records, summaries with confidence intervals, plots and run comparison.

    items = load_items("arith", split="test", limit=100)
    runs = run_eval(engine, items, [parse_strategy("greedy"), parse_strategy("sc:8")], EvalSettings())
    summary = summarize(runs)
"""

from __future__ import annotations

from .data import EvalItem, load_items
from .runner import ItemRecord, StrategyRun, run_eval, run_strategy
from .specs import EvalSettings, StrategySpec, parse_strategy, request_fields
from .summary import compare_table, load_records, load_summary, summarize, wilson_interval, write_run

__all__ = [
    "EvalItem",
    "EvalSettings",
    "ItemRecord",
    "StrategyRun",
    "StrategySpec",
    "compare_table",
    "load_items",
    "load_records",
    "load_summary",
    "parse_strategy",
    "request_fields",
    "run_eval",
    "run_strategy",
    "summarize",
    "wilson_interval",
    "write_run",
]
