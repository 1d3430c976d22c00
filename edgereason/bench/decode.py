"""Decode throughput: EdgeReason vs raw llama-cpp-python, and batched vs sequential sequences."""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman who"


def _median_time(fn: Any, repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import llama_cpp

    import edgereason as er
    from edgereason.models import resolve_model

    path = resolve_model(args.model)
    n_ctx = args.n_ctx or 4096
    threads = args.threads
    n_tok, n_seq, reps = args.tokens, args.sequences, args.repeats

    engine = er.load(str(path), n_ctx=n_ctx, threads=threads, max_sequences=max(16, n_seq + 1))
    raw = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_batch=512, verbose=False)
    opts = er.GenerationOptions(max_tokens=n_tok, temperature=0.0, ignore_eos=True)

    def ours_single() -> int:
        return engine.complete(PROMPT, opts).usage.completion_tokens

    def raw_single() -> int:
        raw.reset()
        out = raw.create_completion(PROMPT, max_tokens=n_tok, temperature=0.0, top_k=1)
        return int(out["usage"]["completion_tokens"])  # type: ignore[index]

    ours_single(), raw_single()  # warm up both
    t_ours, n_ours = _median_time(ours_single, reps)
    t_raw, n_raw = _median_time(raw_single, reps)
    tps_ours, tps_raw = n_ours / t_ours, n_raw / t_raw

    sampled = er.GenerationOptions(max_tokens=n_tok, temperature=0.8, seed=7, ignore_eos=True)

    def batched() -> int:
        streams = [engine.stream_completion(PROMPT, sampled.model_copy(update={"seed": 7 + i})) for i in range(n_seq)]
        return sum(s.wait().usage.completion_tokens for s in streams)

    def sequential() -> int:
        return sum(
            engine.complete(PROMPT, sampled.model_copy(update={"seed": 7 + i})).usage.completion_tokens
            for i in range(n_seq)
        )

    t_batch, n_batch_tok = _median_time(batched, reps)
    t_seq, n_seq_tok = _median_time(sequential, reps)
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
    print(f"single stream: edgereason {s['edgereason_tok_s']} tok/s vs llama-cpp-python {s['llama_cpp_python_tok_s']} tok/s"
          f" -> ratio {s['ratio']} (target >= 0.95)")
    print(f"{n_seq} sequences: batched {b['batched_s']} s vs sequential {b['sequential_s']} s"
          f" -> wall-time ratio {b['wall_time_ratio']} (target <= 0.6)")
    return res
