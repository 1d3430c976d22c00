"""Per-strategy summaries (accuracy with a 95% Wilson interval, tokens, samples, wall time), each
strategy against a baseline on the same items (paired accuracy difference with Newcombe's interval), the
run's files (``results.jsonl``, ``summary.json``) and side-by-side comparison of two runs."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidRequestError
from .protocol import describe_code
from .runner import ItemRecord, StrategyRun

Z95 = 1.959963984540054
RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for ``k`` successes in ``n`` trials (0, 1 when n is 0)."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_interval(both: int, first: int, second: int, neither: int, z: float = Z95) -> tuple[float, float]:
    """95% interval for ``p_second - p_first`` from paired outcomes (Newcombe 1998, method 10: Wilson
    intervals of both proportions joined through the (continuity-corrected) phi correlation of the pairs).

    ``both``: pairs right under both; ``first``/``second``: right only under that one; ``neither``.
    """
    n = both + first + second + neither
    if n <= 0:
        return -1.0, 1.0
    p1, p2 = (both + first) / n, (both + second) / n
    l1, u1 = wilson_interval(both + first, n, z)
    l2, u2 = wilson_interval(both + second, n, z)
    margins = (both + first) * (second + neither) * (both + second) * (first + neither)
    # phi with Newcombe's continuity correction: 0 for a small positive association, shrunk otherwise.
    cross: float = both * neither - first * second
    cross = cross - n / 2 if cross > n / 2 else min(cross, 0.0)
    phi = cross / math.sqrt(margins) if margins else 0.0
    delta = p2 - p1
    lower = math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    upper = math.sqrt(max(0.0, (u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2))
    return max(-1.0, delta - lower), min(1.0, delta + upper)


def _change(new: float, old: float) -> float | None:
    return round(new / old - 1, 4) if old else None


def paired_difference(
    base: Sequence[ItemRecord], other: Sequence[ItemRecord], base_label: str
) -> dict[str, Any] | None:
    """``other`` against ``base`` on the items both ran (None when they share none): accuracy difference
    with its paired 95% interval, and the relative change of mean reasoning tokens (early-exit probe
    tokens included: they are the cost of stopping early) and of all tokens (over the shared items both
    answered without an error)."""
    by_id = {r.id: r for r in base}
    pairs = [(by_id[r.id], r) for r in other if r.id in by_id]
    if not pairs:
        return None
    counts = Counter((b.correct, o.correct) for b, o in pairs)
    both, first, second = counts[True, True], counts[True, False], counts[False, True]
    neither = counts[False, False]
    lo, hi = paired_interval(both, first, second, neither)
    clean = [(b, o) for b, o in pairs if b.error is None and o.error is None]
    olds, news = [b for b, _ in clean], [o for _, o in clean]

    def reasoning(rs: list[ItemRecord]) -> int:  # probes are the price of stopping early: counted here
        return sum(r.reasoning_tokens + r.probe_tokens for r in rs)

    def total(rs: list[ItemRecord]) -> int:
        return sum(r.tokens for r in rs)

    n = len(pairs)
    return {
        "vs": base_label,
        "n": n,
        "accuracy": round((both + second) / n, 4),
        "baseline_accuracy": round((both + first) / n, 4),
        "delta": round((second - first) / n, 4),
        "ci95": [round(lo, 4), round(hi, 4)],
        "only_baseline_right": first,
        "only_this_right": second,
        "reasoning_tokens_change": _change(reasoning(news), reasoning(olds)),
        "tokens_change": _change(total(news), total(olds)),
    }


def default_baseline(labels: Sequence[str]) -> str | None:
    """What the other strategies are held against: greedy when it ran, else the first strategy."""
    if "greedy" in labels:
        return "greedy"
    return labels[0] if labels else None


def _mean(values: Sequence[float]) -> float:
    return round(sum(values) / len(values), 3) if values else 0.0


def summarize_records(records: Sequence[ItemRecord], wall_s: float | None = None) -> dict[str, Any]:
    """One strategy's numbers; errors count as wrong answers but not in the token/sample means."""
    n = len(records)
    k = sum(r.correct for r in records)
    ok = [r for r in records if r.error is None]
    lo, hi = wilson_interval(k, n)
    calls = sum(r.tool_calls for r in ok)
    tool_s = sum(r.tool_wall_s for r in ok)
    item_s = sum(r.wall_s for r in ok)
    by_difficulty: dict[str, dict[str, Any]] = {}
    for level in sorted({r.difficulty for r in records if r.difficulty is not None}):
        group = [r for r in records if r.difficulty == level]
        hits = sum(r.correct for r in group)
        by_difficulty[level] = {"n": len(group), "accuracy": round(hits / len(group), 4)}
    return {
        "n": n,
        "correct": k,
        "accuracy": round(k / n, 4) if n else 0.0,
        "ci95": [round(lo, 4), round(hi, 4)],
        "mean_reasoning_tokens": _mean([r.reasoning_tokens for r in ok]),
        "mean_answer_tokens": _mean([r.answer_tokens for r in ok]),
        "mean_probe_tokens": _mean([r.probe_tokens for r in ok]),
        "mean_tokens": _mean([r.tokens for r in ok]),
        "mean_samples": _mean([r.samples for r in ok]),
        "wall_s": round(wall_s if wall_s is not None else sum(r.wall_s for r in records), 2),
        "mean_item_wall_s": _mean([r.wall_s for r in records]),
        "errors": n - len(ok),
        "abstained": sum(r.answer is None and r.error is None for r in records),
        "stopped_by": dict(Counter(str(r.thinking_stopped_by) for r in ok)),
        "by_difficulty": by_difficulty,
        # The built-in tool's cost: runs per item, mean wall time per run, and its share of the items'
        # own request time (tool runs happen inside the request; concurrent items overlap in wall_s).
        "tool_calls_per_item": _mean([r.tool_calls for r in ok]),
        "tool_s_per_call": round(tool_s / calls, 4) if calls else 0.0,
        "tool_share_of_item_time": round(tool_s / item_s, 4) if calls and item_s > 0 else 0.0,
    }


def summarize(
    runs: Sequence[StrategyRun], meta: dict[str, Any] | None = None, baseline: str | None = None
) -> dict[str, Any]:
    """The ``summary.json`` object: ``meta`` and one entry per strategy, in run order; while the
    ``baseline`` (default: :func:`default_baseline`) has records, every other strategy has ``vs_baseline``
    (:func:`paired_difference`)."""
    baseline = baseline or default_baseline([run.spec.label for run in runs])
    base = next((run.records for run in runs if run.spec.label == baseline), None)
    strategies = {}
    for run in runs:
        row = {
            **run.spec.describe(),
            **summarize_records(run.records, run.wall_s),
            "concurrency": run.concurrency,
        }
        if base is not None and baseline is not None and run.spec.label != baseline:
            row["vs_baseline"] = paired_difference(base, run.records, baseline)
        strategies[run.spec.label] = row
    return {"meta": meta or {}, "strategies": strategies}


def write_run(out: Path, runs: Sequence[StrategyRun], summary: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``results.jsonl`` (one record per line, strategies in order) and ``summary.json``."""
    out.mkdir(parents=True, exist_ok=True)
    results, summary_path = out / RESULTS_FILE, out / SUMMARY_FILE
    with results.open("w", encoding="utf-8") as fh:
        for run in runs:
            for r in run.records:
                fh.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
    summary_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return results, summary_path


def load_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / SUMMARY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidRequestError(f"{path} not found: is {run_dir} an 'edgereason eval' output?") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"{path} is not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("strategies"), dict):
        raise InvalidRequestError(f"{path} has no 'strategies' table")
    return data


def load_records(run_dir: Path) -> list[ItemRecord]:
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise InvalidRequestError(f"{path} not found: is {run_dir} an 'edgereason eval' output?")
    with path.open(encoding="utf-8") as fh:
        return [ItemRecord.from_dict(json.loads(line)) for line in fh if line.strip()]


def _cell(row: dict[str, Any] | None) -> list[str]:
    if row is None:
        return ["-", "-", "-"]
    lo, hi = row["ci95"]
    return [
        f"{100 * row['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]",
        f"{row['mean_tokens']:.1f}",
        f"{row['mean_samples']:.2f}",
    ]


def compare_table(
    a: dict[str, Any],
    b: dict[str, Any],
    name_a: str = "A",
    name_b: str = "B",
    paired: Mapping[str, dict[str, Any] | None] | None = None,
) -> str:
    """Two summaries side by side: accuracy % [95% CI], mean tokens, mean samples, accuracy delta. With
    ``paired`` (a strategy's ``paired_difference`` of B against A on the items both ran, as
    ``paired_runs`` gives), the delta is the paired one with its 95% interval and item count."""
    sa, sb = a["strategies"], b["strategies"]
    labels = [*sa, *(s for s in sb if s not in sa)]
    header = [
        "strategy",
        f"{name_a} acc% [95% CI]",
        f"{name_a} tokens",
        f"{name_a} samples",
        f"{name_b} acc% [95% CI]",
        f"{name_b} tokens",
        f"{name_b} samples",
        "delta acc",
    ]
    rows = [header]
    for label in labels:
        ra, rb = sa.get(label), sb.get(label)
        delta = f"{100 * (rb['accuracy'] - ra['accuracy']):+.1f}" if ra and rb else "-"
        vs = (paired or {}).get(label)
        if vs is not None:
            lo, hi = vs["ci95"]
            delta = f"{100 * vs['delta']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] (n {vs['n']})"
        rows.append([label, *_cell(ra), *_cell(rb), delta])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def paired_runs(
    a: Sequence[ItemRecord], b: Sequence[ItemRecord], name_a: str
) -> dict[str, dict[str, Any] | None]:
    """Per strategy both runs have: B's records against A's on the items both ran (e.g. two models)."""
    labels = dict.fromkeys(r.strategy for r in a)
    return {
        label: paired_difference(
            [r for r in a if r.strategy == label], [r for r in b if r.strategy == label], name_a
        )
        for label in labels
        if any(r.strategy == label for r in b)
    }


TABLE_FILE = "table.md"


def _paired_cells(vs: dict[str, Any] | None) -> list[str]:
    if not vs:
        return ["-", "-"]
    lo, hi = vs["ci95"]
    shared = f" (n {vs['n']})"
    change = vs.get("reasoning_tokens_change")
    return [
        f"{100 * vs['delta']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]{shared}",
        "-" if change is None else f"{100 * change:+.0f}%",
    ]


def markdown_table(summary: dict[str, Any]) -> str:
    """The run as a Markdown table (the README's form): one row per strategy, with its accuracy and
    reasoning tokens against the baseline on the same items. A strategy still running shows ``n`` as
    ``k of N``."""
    meta = summary.get("meta", {})
    rows = summary["strategies"]
    total = meta.get("items")
    baseline = next((r["vs_baseline"]["vs"] for r in rows.values() if r.get("vs_baseline")), None)
    versus = f"vs {baseline}, same items: Δ accuracy [95% CI]" if baseline else "Δ accuracy"
    lines = [
        f"| strategy | accuracy % [95% CI] | n | mean tokens | reasoning tokens | probe tokens | samples "
        f"| wall s | {versus} | Δ reasoning + probe tokens |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, row in rows.items():
        lo, hi = row["ci95"]
        errors = f" ({row['errors']} errors)" if row.get("errors") else ""
        n = f"{row['n']} of {total}" if total and row["n"] < total else str(row["n"])
        lines.append(
            f"| {label} | {100 * row['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]{errors} | {n} | "
            f"{row['mean_tokens']:.1f} | {row['mean_reasoning_tokens']:.1f} | "
            f"{row.get('mean_probe_tokens', 0.0):.1f} | {row['mean_samples']:.2f} | "
            f"{row['wall_s']:.0f} | " + " | ".join(_paired_cells(row.get("vs_baseline"))) + " |"
        )
    tooled = {label: row for label, row in rows.items() if row.get("tool_calls_per_item")}
    if tooled:
        lines.append("")
        lines.append(
            "Built-in tool: "
            + "; ".join(
                f"{label} {row['tool_calls_per_item']:.2f} runs per problem, {1000 * row['tool_s_per_call']:.0f} ms "
                f"per run, {100 * row['tool_share_of_item_time']:.1f}% of request time"
                for label, row in tooled.items()
            )
            + "."
        )
    if meta:
        where = f"{meta.get('data')}" + (f" ({meta['split']} split)" if meta.get("split") else "")
        lines.append("")
        lines.append(
            f"Model {meta.get('model')}, {meta.get('items')} items of {where}, settings {meta.get('settings')}."
        )
        if meta.get("code"):
            mixed = " (resumed across code versions)" if meta.get("earlier_code") else ""
            frozen = ", configuration frozen (test split)" if meta.get("frozen") else ""
            lines.append(f"Code {describe_code(meta['code'])}{mixed}{frozen}; wall s is active time.")
    return "\n".join(lines) + "\n"


TABLE_START, TABLE_END = "<!-- edgereason eval table -->", "<!-- /edgereason eval table -->"


def write_table_into(path: Path, table: str) -> None:
    """Replace the block between the table markers in ``path`` (a README) with ``table``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidRequestError(f"cannot read {path}: {exc.strerror}", param="into") from None
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        raise InvalidRequestError(
            f"{path} has no '{TABLE_START}' ... '{TABLE_END}' block to replace", param="into"
        )
    new = text[: start + len(TABLE_START)] + "\n" + table + text[end:]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(path)
