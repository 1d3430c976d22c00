"""The remote backend's overhead: the same model in-process (local) and behind `edgereason serve` on
loopback (remote, one HTTP hop), single-stream decode tokens/s, time to first token and round-trip latency."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from ..peer import free_port
from .serve import _process

QUESTION = [{"role": "user", "content": "Tell me a short story about a fisherman and the sea."}]


def _stream_once(engine: Any, n_tok: int) -> tuple[float, float, int]:
    """(time to first chunk, total time, completion tokens) of one greedy streamed chat."""
    t0 = time.perf_counter()
    first = 0.0
    stream = engine.stream(QUESTION, max_tokens=n_tok, temperature=0.0, ignore_eos=True)
    for _ in stream:
        if not first:
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    assert stream.result is not None
    return first, total, stream.result.usage.completion_tokens


def _median_runs(fns: list[Callable[[], Any]], repeats: int) -> list[list[Any]]:
    """Each function ``repeats`` times, interleaved so load changes hit every side alike."""
    outs: list[list[Any]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            outs[i].append(fn())
    return outs


def _summary(runs: list[tuple[float, float, int]]) -> dict[str, float]:
    ttft = statistics.median(r[0] for r in runs)
    total = statistics.median(r[1] for r in runs)
    tokens = statistics.median(r[2] for r in runs)
    decode = statistics.median((r[2] - 1) / (r[1] - r[0]) for r in runs if r[1] > r[0] and r[2] > 1)
    return {
        "tok_s": round(tokens / total, 2),
        "decode_tok_s": round(decode, 2),
        "ttft_ms": round(ttft * 1000, 1),
        "tokens": tokens,
    }


def remote_overhead(args: argparse.Namespace) -> dict[str, Any]:
    """Local vs remote (loopback) on one model: single-stream tok/s, TTFT and 1-token round-trip latency.

    Uses ``args.model``, ``args.n_ctx``, ``args.threads``, ``args.tokens`` and ``args.repeats``; the two
    sides run one after the other with the same thread count, so only the HTTP hop differs.
    """
    import edgereason as er
    from edgereason.models import resolve_model
    from edgereason.remote import load_remote

    path = resolve_model(args.model)
    n_ctx = args.n_ctx or 1024
    threads = args.threads or 1
    n_tok, reps = args.tokens, max(1, args.repeats)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "edgereason", "serve", "--model", str(path), "--port", str(port)]
    cmd += ["--n-ctx", str(n_ctx), "--threads", str(threads), "--max-sequences", "4"]
    with (
        _process(cmd, base, "/health"),
        er.load(str(path), n_ctx=n_ctx, threads=threads, max_sequences=4) as local,
        load_remote(f"openai://127.0.0.1:{port}/default") as remote,
    ):

        def latency(engine: Any) -> Callable[[], float]:
            def once() -> float:
                t0 = time.perf_counter()
                engine.chat(QUESTION, max_tokens=1, temperature=0.0)
                return time.perf_counter() - t0

            return once

        _stream_once(local, 8), _stream_once(remote, 8)  # warm up both
        local_runs, remote_runs = _median_runs(
            [lambda: _stream_once(local, n_tok), lambda: _stream_once(remote, n_tok)], reps
        )
        lat_local, lat_remote = _median_runs([latency(local), latency(remote)], max(5, reps))
    loc, rem = _summary(local_runs), _summary(remote_runs)
    rt_local, rt_remote = statistics.median(lat_local) * 1000, statistics.median(lat_remote) * 1000
    res = {
        "model": str(path),
        "threads": threads,
        "tokens": n_tok,
        "local": {**loc, "round_trip_ms": round(rt_local, 1)},
        "remote": {**rem, "round_trip_ms": round(rt_remote, 1)},
        "tok_s_ratio": round(rem["tok_s"] / loc["tok_s"], 3),
        "decode_tok_s_ratio": round(rem["decode_tok_s"] / loc["decode_tok_s"], 3),
        "added_latency_ms": round(rt_remote - rt_local, 1),
    }
    print(
        f"single stream ({n_tok} tokens): local {loc['tok_s']} tok/s, remote over loopback {rem['tok_s']} tok/s"
        f" -> ratio {res['tok_s_ratio']}; TTFT {loc['ttft_ms']} ms vs {rem['ttft_ms']} ms"
    )
    print(
        f"1-token round trip: local {res['local']['round_trip_ms']} ms, remote {res['remote']['round_trip_ms']} ms"
        f" (+{res['added_latency_ms']} ms per request)"
    )
    return res


def run(args: argparse.Namespace) -> dict[str, Any]:
    return remote_overhead(args)
