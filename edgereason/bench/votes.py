"""Self-consistency: batched samples vs sequential llama-cpp-python calls, and accuracy per sample spent."""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

PROMPT = "Question: Tom has 23 apples and buys 19 more. How many apples does he have?\nAnswer: Let's think step by step."
SAMPLES = 8
ADAPTIVE_MAX = 16


def arith_problems(n: int, seed: int) -> list[tuple[str, str]]:
    """(question, gold answer) pairs; the shared eval set when present, else small two-step sums."""
    try:
        from .. import evaldata  # type: ignore[attr-defined]

        return [_as_pair(p) for p in evaldata.arith_problems(n, seed)]
    except (ImportError, AttributeError):
        pass
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b, c = rng.randint(2, 40), rng.randint(2, 40), rng.randint(2, 9)
        out.append((f"What is {a} + {b} - {c}?", str(a + b - c)))
    return out


def _as_pair(p: Any) -> tuple[str, str]:
    if isinstance(p, tuple | list):
        return str(p[0]), str(p[1])
    question = getattr(p, "question", None) or getattr(p, "prompt", None)
    gold = getattr(p, "answer", None) if getattr(p, "answer", None) is not None else getattr(p, "gold", None)
    return str(question), str(gold)


def _sequential_llama(raw: Any, n: int, tokens: int) -> tuple[float, int]:
    """What a user does today: n independent sampled completions, one after another."""
    no_end = {raw.token_eos(): -1e9}
    t0, total = time.perf_counter(), 0
    for i in range(n):
        raw.reset()
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

    ours(), _sequential_llama(raw, 1, 8)  # warm up both
    runs_ours = [ours() for _ in range(repeats)]
    runs_raw = [_sequential_llama(raw, SAMPLES, tokens) for _ in range(repeats)]
    t_ours = statistics.median(t for t, _ in runs_ours)
    t_raw = statistics.median(t for t, _ in runs_raw)
    return {
        "samples": SAMPLES,
        "tokens_per_sample": tokens,
        "edgereason_batched_s": round(t_ours, 3),
        "llama_cpp_sequential_s": round(t_raw, 3),
        "tokens": [runs_ours[0][1], runs_raw[0][1]],
        "wall_time_ratio": round(t_ours / t_raw, 3),
        "target": "<= 0.6",
    }


def bench_accuracy(engine: Any, problems: list[tuple[str, str]], tokens: int) -> dict[str, Any]:
    """Greedy, SC@k for k = 1..16 (prefixes of the same 16 samples) and adaptive SC (beta, at most 16)."""
    from ..answers import answers_equal
    from ..strategies.voting import Vote, tally

    def ask(question: str, **fields: Any) -> Any:
        msgs = [{"role": "user", "content": question + " Answer with the number."}]
        return engine.chat(msgs, max_tokens=tokens, seed=1, **fields)

    def right(answer: str | None, gold: str) -> bool:
        return answer is not None and answers_equal(answer, gold)

    greedy = sc_hits = adaptive_hits = 0
    prefix_hits = [0] * ADAPTIVE_MAX
    adaptive_used: list[int] = []
    t0 = time.perf_counter()
    for question, gold in problems:
        greedy += right(ask(question, temperature=0.0).answer, gold)
        report = ask(question, self_consistency=ADAPTIVE_MAX).extra["self_consistency"]
        by_index = sorted(report["samples"], key=lambda s: s["index"])
        for k in range(1, ADAPTIVE_MAX + 1):
            votes = [Vote(s["answer"], confidence=s["confidence"], index=s["index"]) for s in by_index[:k]]
            prefix_hits[k - 1] += right(tally(votes).winner, gold)
        sc_hits += right(report["answer"], gold)
        adaptive = ask(question, self_consistency={"samples": ADAPTIVE_MAX, "adaptive": "beta"})
        adaptive_hits += right(adaptive.extra["self_consistency"]["answer"], gold)
        adaptive_used.append(adaptive.extra["self_consistency"]["samples_used"])
    n = len(problems)
    curve = [round(h / n, 4) for h in prefix_hits]
    return {
        "problems": n,
        "max_tokens": tokens,
        "greedy_accuracy": round(greedy / n, 4),
        "sc8_accuracy": curve[SAMPLES - 1],
        "sc16_accuracy": round(sc_hits / n, 4),
        "adaptive_accuracy": round(adaptive_hits / n, 4),
        "adaptive_mean_samples": round(statistics.mean(adaptive_used), 2),
        "adaptive_sample_saving": round(ADAPTIVE_MAX / statistics.mean(adaptive_used), 2),
        "sc_at_k_accuracy": curve,
        "seconds": round(time.perf_counter() - t0, 1),
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
    acc = bench_accuracy(engine, arith_problems(args.problems, seed=0), tokens=args.answer_tokens)
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
