"""Decode throughput of the embedded model on every local backend in one run: llama.cpp (GGUF), MLX, ONNX.

Each backend gets the same engine, prompt, token count and thread setting: single-stream greedy tok/s and
the aggregate tok/s of ``--sequences`` sampled sequences decoded together (one request, ``n`` choices).
The MLX and ONNX folders are converted from the embedded GGUF once (``edgereason.convert``) and cached.
The remote row (the same model behind ``edgereason serve`` on loopback) comes from ``bench.remote``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import EdgeReasonError

log = logging.getLogger(__name__)

PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman who"
# Quantisations comparable to the embedded Q4_1 GGUF: 4-bit weights on every backend (by artefact format).
DEFAULT_QUANTS = {"mlx": "4", "onnx": "int4"}


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "edgereason" / "bench-backends"


def converted_model(target: str, quant: str) -> Path:
    """The embedded model as a ``target`` folder, converted on first use and cached."""
    from edgereason.convert import convert, embedded_gguf_path

    out = cache_dir() / f"smollm2-135m-{target}-{quant}"
    if not (out / "edgereason.json").is_file():
        log.info("converting the embedded model to %s %s (once)", target, quant)
        convert(embedded_gguf_path(), out, to=target, quant=quant, force=out.exists())
    return out


def _timed(fn: Callable[[], int], repeats: int) -> float:
    """Median tokens/s of ``fn`` (which returns the tokens it generated)."""
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def measure(model: str | Path, backend: str, args: argparse.Namespace) -> dict[str, Any]:
    """Single-stream and ``args.sequences``-sequence decode tok/s of one backend."""
    import edgereason as er

    n_tok, n_seq, reps = args.tokens, args.sequences, max(1, args.repeats)
    t0 = time.perf_counter()
    engine = er.load(
        model, backend=backend, n_ctx=args.n_ctx or 1024, threads=args.threads, max_sequences=n_seq + 1
    )
    load_s = time.perf_counter() - t0
    greedy = er.GenerationOptions(max_tokens=n_tok, temperature=0.0, ignore_eos=True)
    sampled = er.GenerationOptions(max_tokens=n_tok, temperature=0.8, seed=7, ignore_eos=True, n=n_seq)
    with engine:
        engine.complete(PROMPT, greedy.model_copy(update={"max_tokens": 4}))  # warm up
        single = _timed(lambda: engine.complete(PROMPT, greedy).usage.completion_tokens, reps)
        batched = _timed(lambda: engine.complete(PROMPT, sampled).usage.completion_tokens, reps)
        caps = engine.capabilities
        info = engine.info
    return {
        "backend": backend,
        "model": str(model),
        "quantization": info.quantization,
        "load_s": round(load_s, 2),
        "single_tok_s": round(single, 2),
        "batched_tok_s": round(batched, 2),
        "batched_speedup": round(batched / single, 2),
        "capabilities": {"fork": caps.fork, "rewind": caps.rewind, "lora": caps.lora},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from edgereason.models import resolve_model

    gguf = resolve_model(args.model)
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    from edgereason.loading import LOCAL_BACKENDS

    targets: list[tuple[str, Callable[[], Path]]] = [
        (
            e.name,
            (lambda: gguf)
            if e.format == "gguf"
            else partial(converted_model, e.format, DEFAULT_QUANTS[e.format]),
        )
        for e in LOCAL_BACKENDS.values()
    ]
    for backend, artefact in targets:
        try:
            row = measure(artefact(), backend, args)
        except (EdgeReasonError, ImportError) as exc:
            log.warning("skipping %s: %s", backend, exc)
            skipped[backend] = str(exc)
            continue
        rows.append(row)
        print(
            f"{backend:10s} {row['quantization']:>12s}: single {row['single_tok_s']:7.2f} tok/s, "
            f"{args.sequences} sequences {row['batched_tok_s']:7.2f} tok/s (x{row['batched_speedup']})"
        )
    result: dict[str, Any] = {
        "tokens": args.tokens,
        "sequences": args.sequences,
        "threads": args.threads,
        "rows": rows,
        "skipped": skipped,
    }
    result["remote"] = _remote_row(args)
    return result


def _remote_row(args: argparse.Namespace) -> dict[str, Any] | None:
    """The remote backend's overhead over local llama.cpp (``bench.remote``), when that bench is present."""
    try:
        from .remote import remote_overhead
    except ImportError:
        return None
    try:
        return remote_overhead(args)
    except EdgeReasonError as exc:
        log.warning("skipping remote: %s", exc)
        return {"skipped": str(exc)}
