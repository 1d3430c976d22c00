"""Self-consistency: batched samples vs sequential llama-cpp-python calls, and accuracy per sample spent."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

PROMPT = "Question: Tom has 23 apples and buys 19 more. How many apples does he have?\nAnswer: Let's think step by step."
SAMPLES = 8
ADAPTIVE_MAX = 16
ACCURACY_PROMPT = "{question} Answer with the number."


def _sequential_llama(raw: Any, n: int, tokens: int) -> tuple[float, int]:
    """What a user does today: n independent sampled completions, one after another. No ``reset()``:
    llama-cpp-python keeps the prompt's KV between calls and decodes only what differs (its prefix reuse)."""
    no_end = {raw.token_eos(): -1e9}
    t0, total = time.perf_counter(), 0
    for i in range(n):
        out = raw.create_completion(
            PROMPT,
            max_tokens=tokens,
            temperature=0.6,
            top_p=0.95,
            top_k=40,
            min_p=0.05,
            seed=7 + i,
            logit_bias=no_end,
        )
        total += int(out["usage"]["completion_tokens"])  # type: ignore[index]
    return time.perf_counter() - t0, total


def bench_batched(engine: Any, raw: Any, tokens: int, repeats: int) -> dict[str, Any]:
    """SAMPLES samples batched in the engine against SAMPLES sequential llama-cpp-python completions; the
    two alternate (EdgeReason, baseline, EdgeReason, ...) so machine load drifts hit both; medians."""
    import edgereason as er

    opts = er.GenerationOptions(
        max_tokens=tokens,
        seed=7,
        ignore_eos=True,
        self_consistency=er.SelfConsistencyOptions(samples=SAMPLES),
    )

    def ours() -> tuple[float, int]:
        t0 = time.perf_counter()
        res = engine.complete(PROMPT, opts)
        return time.perf_counter() - t0, res.usage.completion_tokens

    ours(), _sequential_llama(raw, 1, 8)  # warm up both (the baseline's prompt is cached from here on)
    runs_ours: list[tuple[float, int]] = []
    runs_raw: list[tuple[float, int]] = []
    for _ in range(repeats):
        runs_ours.append(ours())
        runs_raw.append(_sequential_llama(raw, SAMPLES, tokens))
    t_ours = statistics.median(t for t, _ in runs_ours)
    t_raw = statistics.median(t for t, _ in runs_raw)
    return {
        "samples": SAMPLES,
        "tokens_per_sample": tokens,
        "repeats": repeats,
        "order": "interleaved (edgereason, llama-cpp-python) x repeats; medians",
        "baseline": "llama_cpp.Llama.create_completion x samples, prompt KV reused between calls",
        "edgereason_batched_s": round(t_ours, 3),
        "llama_cpp_sequential_s": round(t_raw, 3),
        "edgereason_runs_s": [round(t, 3) for t, _ in runs_ours],
        "llama_cpp_runs_s": [round(t, 3) for t, _ in runs_raw],
        "tokens": [runs_ours[0][1], runs_raw[0][1]],
        "wall_time_ratio": round(t_ours / t_raw, 3),
        "target": "<= 0.6",
    }


def bench_accuracy(engine: Any, items: list[Any], tokens: int) -> dict[str, Any]:
    """Greedy, SC@k for k = 1..16 (prefixes of the same 16 samples) and adaptive SC (beta, at most 16).

    The requests go through the eval harness (``edgereason.eval``); SC@k re-tallies the first k of
    each question's 16 samples, as ``edgereason eval --strategy sc:16`` records them.
    """
    from ..answers import answers_equal
    from ..eval import EvalSettings, parse_strategy, run_eval, summarize
    from ..strategies.voting import Vote, tally

    settings = EvalSettings(
        max_think=0, answer_tokens=tokens, thinking="auto", prompt=ACCURACY_PROMPT, seed=1
    )
    specs = [parse_strategy(s) for s in ("greedy", f"sc:{ADAPTIVE_MAX}", f"sc:adaptive:{ADAPTIVE_MAX}")]
    runs = run_eval(engine, items, specs, settings)
    table = summarize(runs)["strategies"]
    greedy, full, adaptive = (table[spec.label] for spec in specs)
    prefix_hits = [0] * ADAPTIVE_MAX
    for record in runs[1].records:
        samples = record.extra.get("sample_answers", [])
        for k in range(1, ADAPTIVE_MAX + 1):
            votes = [Vote(s["answer"], confidence=s["confidence"], index=s["index"]) for s in samples[:k]]
            winner = tally(votes).winner
            prefix_hits[k - 1] += winner is not None and answers_equal(winner, record.gold)
    n = len(items)
    curve = [round(h / n, 4) for h in prefix_hits]
    return {
        "problems": n,
        "max_tokens": tokens,
        "greedy_accuracy": greedy["accuracy"],
        "sc8_accuracy": curve[SAMPLES - 1],
        "sc16_accuracy": full["accuracy"],
        "adaptive_accuracy": adaptive["accuracy"],
        "adaptive_mean_samples": adaptive["mean_samples"],
        "adaptive_sample_saving": round(ADAPTIVE_MAX / adaptive["mean_samples"], 2)
        if adaptive["mean_samples"]
        else 0.0,
        "sc_at_k_accuracy": curve,
        "ci95": {"greedy": greedy["ci95"], "sc16": full["ci95"], "adaptive": adaptive["ci95"]},
        "seconds": round(sum(r.wall_s for r in runs), 1),
        "targets": "adaptive uses >= 3x fewer samples than SC@16 at <= 1 point lower accuracy",
    }


def plot(acc: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    ks = list(range(1, ADAPTIVE_MAX + 1))
    ax.plot(ks, [a * 100 for a in acc["sc_at_k_accuracy"]], marker="o", label="SC@k (majority of k samples)")
    ax.scatter([1], [acc["greedy_accuracy"] * 100], marker="s", color="black", label="greedy", zorder=3)
    ax.scatter(
        [acc["adaptive_mean_samples"]],
        [acc["adaptive_accuracy"] * 100],
        marker="*",
        s=160,
        color="red",
        label="adaptive (beta, max 16)",
        zorder=3,
    )
    ax.set_xlabel("samples per question (mean)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Self-consistency on {acc['problems']} arithmetic problems")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(args: argparse.Namespace) -> dict[str, Any]:
    import edgereason as er
    from edgereason.models import resolve_model

    from .decode import make_raw_llama

    path = resolve_model(args.model)
    n_ctx = args.n_ctx or 1024
    # The same threads for both (llama-cpp-python defaults to half the cores).
    threads = args.threads or max(1, os.cpu_count() or 1)
    engine = er.load(
        str(path), n_ctx=n_ctx, threads=threads, max_sequences=max(ADAPTIVE_MAX + 1, SAMPLES + 1)
    )
    raw = make_raw_llama(path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=512)
    try:
        batched = bench_batched(engine, raw, args.tokens, args.repeats)
    finally:
        raw.close()
    print(
        f"{SAMPLES} samples: batched {batched['edgereason_batched_s']} s vs sequential llama_cpp.Llama "
        f"{batched['llama_cpp_sequential_s']} s -> wall-time ratio {batched['wall_time_ratio']} (target <= 0.6)"
    )
    from edgereason.eval import load_items

    items = load_items("arith", split="dev", limit=args.problems)  # a comparison of settings: dev, not test
    acc = bench_accuracy(engine, items, tokens=args.answer_tokens)
    engine.close()
    print(
        f"{acc['problems']} problems: greedy {acc['greedy_accuracy']:.0%}, SC@8 {acc['sc8_accuracy']:.0%}, "
        f"SC@16 {acc['sc16_accuracy']:.0%}, adaptive {acc['adaptive_accuracy']:.0%} "
        f"with {acc['adaptive_mean_samples']} samples on average ({acc['adaptive_sample_saving']}x fewer than SC@16)"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    png = plot(acc, args.out / "votes.png")
    if png is not None:
        print(f"plot written to {png}")
    return {"model": str(path), "batched": batched, "accuracy": acc, "plot": str(png) if png else None}
