"""Decode throughput: EdgeReason vs raw llama-cpp-python, and batched vs sequential sequences."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman who"


def _median_times(fns: list[Any], repeats: int) -> list[tuple[float, Any]]:
    """Median wall time of each function, runs interleaved so load changes hit all sides alike."""
    times: list[list[float]] = [[] for _ in fns]
    outs: list[Any] = [None for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            outs[i] = fn()
            times[i].append(time.perf_counter() - t0)
    return [(statistics.median(t), o) for t, o in zip(times, outs)]


def make_raw_llama(path: Path, **kwargs: Any) -> Any:
    """``llama_cpp.Llama`` as a user would make it, with the same CPU buffer types as EdgeReason.

    Where AMX is advertised but traps (see ``extra_buffers_usable``), the stock class would crash
    on its first batched decode; both sides then run without extra buffer types.
    """
    import llama_cpp
    import llama_cpp.llama_cpp as bindings

    from edgereason.backends.llama_cpp import extra_buffers_usable

    usable = extra_buffers_usable(path)
    original = bindings.llama_model_default_params

    def params() -> Any:
        p = original()
        p.use_extra_bufts = usable
        return p

    bindings.llama_model_default_params = params
    try:
        return llama_cpp.Llama(model_path=str(path), verbose=False, **kwargs)
    finally:
        bindings.llama_model_default_params = original


def run(args: argparse.Namespace) -> dict[str, Any]:
    import edgereason as er
    from edgereason.models import resolve_model

    path = resolve_model(args.model)
    n_ctx = args.n_ctx or 1024
    threads = args.threads or os.cpu_count() or 1  # the same on both sides
    n_tok, n_seq, reps = args.tokens, args.sequences, args.repeats

    engine = er.load(str(path), n_ctx=n_ctx, threads=threads, max_sequences=max(16, n_seq + 1))
    raw = make_raw_llama(path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=512)
    opts = er.GenerationOptions(max_tokens=n_tok, temperature=0.0, ignore_eos=True)

    def ours_single() -> int:
        return engine.complete(PROMPT, opts).usage.completion_tokens

    def raw_single() -> int:
        raw.reset()
        out = raw.create_completion(PROMPT, max_tokens=n_tok, temperature=0.0, top_k=1)
        return int(out["usage"]["completion_tokens"])  # type: ignore[index]

    ours_single(), raw_single()  # warm up both
    (t_ours, n_ours), (t_raw, n_raw) = _median_times([ours_single, raw_single], reps)
    tps_ours, tps_raw = n_ours / t_ours, n_raw / t_raw

    sampled = er.GenerationOptions(max_tokens=n_tok, temperature=0.8, seed=7, ignore_eos=True)

    def batched() -> int:
        streams = [
            engine.stream_completion(PROMPT, sampled.model_copy(update={"seed": 7 + i})) for i in range(n_seq)
        ]
        return sum(s.wait().usage.completion_tokens for s in streams)

    def sequential() -> int:
        return sum(
            engine.complete(PROMPT, sampled.model_copy(update={"seed": 7 + i})).usage.completion_tokens
            for i in range(n_seq)
        )

    (t_batch, n_batch_tok), (t_seq, n_seq_tok) = _median_times([batched, sequential], reps)
    engine.close()
    raw.close()

    res = {
        "model": str(path),
        "tokens_per_sequence": n_tok,
        "single_stream": {
            "edgereason_tok_s": round(tps_ours, 2),
            "llama_cpp_python_tok_s": round(tps_raw, 2),
            "ratio": round(tps_ours / tps_raw, 3),
            "target": ">= 0.95",
        },
        "batched": {
            "sequences": n_seq,
            "batched_s": round(t_batch, 3),
            "sequential_s": round(t_seq, 3),
            "tokens": [n_batch_tok, n_seq_tok],
            "wall_time_ratio": round(t_batch / t_seq, 3),
            "target": "<= 0.6",
        },
    }
    s, b = res["single_stream"], res["batched"]
    print(
        f"single stream: edgereason {s['edgereason_tok_s']} tok/s vs llama-cpp-python {s['llama_cpp_python_tok_s']} tok/s"
        f" -> ratio {s['ratio']} (target >= 0.95)"
    )
    print(
        f"{n_seq} sequences: batched {b['batched_s']} s vs sequential {b['sequential_s']} s"
        f" -> wall-time ratio {b['wall_time_ratio']} (target <= 0.6)"
    )
    return res
