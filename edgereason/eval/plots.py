"""PNG plots of a run's summary (matplotlib, imported only here and only when plotting)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import MissingExtraError

BUDGETS_PNG = "budgets.png"
SELF_CONSISTENCY_PNG = "self_consistency.png"
STRATEGIES_PNG = "strategies.png"


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingExtraError("plotting eval results (matplotlib)", "eval") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _yerr(rows: list[dict[str, Any]]) -> list[list[float]]:
    """Asymmetric error bars (percent) from each row's 95% interval."""
    return [
        [100 * (r["accuracy"] - r["ci95"][0]) for r in rows],
        [100 * (r["ci95"][1] - r["accuracy"]) for r in rows],
    ]


def _save(plt: Any, fig: Any, ax: Any, path: Path) -> Path:
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_budgets(strategies: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """Accuracy vs mean reasoning tokens for each budget and for uncapped greedy; None without budgets."""
    rows = {k: v for k, v in strategies.items() if v.get("kind") in ("budget", "greedy")}
    if not any(v.get("kind") == "budget" for v in rows.values()):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    labels = sorted(rows, key=lambda k: rows[k]["mean_reasoning_tokens"])
    pts = [rows[k] for k in labels]
    fixed = [(lab, r) for lab, r in zip(labels, pts) if isinstance(r.get("budget"), int)]
    if len(fixed) > 1:
        ax.plot(
            [r["mean_reasoning_tokens"] for _, r in fixed],
            [100 * r["accuracy"] for _, r in fixed],
            "-",
            color="tab:blue",
            alpha=0.5,
        )
    ax.errorbar(
        [r["mean_reasoning_tokens"] for r in pts],
        [100 * r["accuracy"] for r in pts],
        yerr=_yerr(pts),
        fmt="o",
        capsize=3,
        color="tab:blue",
    )
    for lab, r in zip(labels, pts):
        text = "uncapped" if r.get("kind") == "greedy" else lab
        ax.annotate(
            text,
            (r["mean_reasoning_tokens"], 100 * r["accuracy"]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    ax.set_xlabel("mean reasoning tokens per question")
    ax.set_ylabel("accuracy (%), 95% CI")
    ax.set_title("Thinking budgets: accuracy vs reasoning tokens")
    return _save(plt, fig, ax, path)


def plot_self_consistency(strategies: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """Accuracy vs mean samples: fixed SC@N as a line, adaptive as stars, greedy as the 1-sample base."""
    sc = {k: v for k, v in strategies.items() if v.get("kind") == "sc"}
    if not sc:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    fixed = sorted((v for v in sc.values() if not v.get("adaptive")), key=lambda v: v["mean_samples"])
    adaptive = [(k, v) for k, v in sc.items() if v.get("adaptive")]
    greedy = strategies.get("greedy")
    series = [
        ("fixed (SC@N)", fixed, "o-", "tab:blue"),
        ("adaptive (Beta rule)", [v for _, v in adaptive], "*", "tab:red"),
    ]
    if greedy is not None:
        series.append(("greedy", [greedy], "s", "black"))
    for name, rows, fmt, color in series:
        if rows:
            ax.errorbar(
                [r["mean_samples"] for r in rows],
                [100 * r["accuracy"] for r in rows],
                yerr=_yerr(rows),
                fmt=fmt,
                capsize=3,
                color=color,
                label=name,
                markersize=10 if fmt == "*" else 6,
            )
    for k, v in [*((f"SC@{v['samples']}", v) for v in fixed), *adaptive]:
        ax.annotate(
            k, (v["mean_samples"], 100 * v["accuracy"]), textcoords="offset points", xytext=(5, 5), fontsize=8
        )
    ax.set_xlabel("mean samples per question")
    ax.set_ylabel("accuracy (%), 95% CI")
    ax.set_title("Self-consistency: accuracy vs samples")
    ax.legend()
    return _save(plt, fig, ax, path)


def plot_strategies(strategies: dict[str, dict[str, Any]], path: Path) -> Path:
    """One bar per strategy: accuracy with its 95% interval, mean tokens written above."""
    plt = _pyplot()
    labels = list(strategies)
    rows = [strategies[k] for k in labels]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.0 + 0.9 * len(labels)), 4.2))
    xs = list(range(len(labels)))
    ax.bar(xs, [100 * r["accuracy"] for r in rows], yerr=_yerr(rows), capsize=3, color="tab:blue", alpha=0.8)
    for x, r in zip(xs, rows):
        ax.annotate(
            f"{r['mean_tokens']:.0f} tok",
            (x, 100 * r["ci95"][1]),
            textcoords="offset points",
            xytext=(0, 3),
            ha="center",
            fontsize=7,
        )
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%), 95% CI")
    ax.set_ylim(0, 105)
    ax.set_title("Accuracy per strategy")
    return _save(plt, fig, ax, path)


def write_plots(summary: dict[str, Any], out: Path) -> list[Path]:
    """Every plot the run's strategies allow; MissingExtraError when matplotlib is not installed."""
    strategies = summary["strategies"]
    made = [
        plot_budgets(strategies, out / BUDGETS_PNG),
        plot_self_consistency(strategies, out / SELF_CONSISTENCY_PNG),
        plot_strategies(strategies, out / STRATEGIES_PNG),
    ]
    return [p for p in made if p is not None]
