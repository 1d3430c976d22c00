"""Grammar-constrained decoding's cost per token: the same greedy request free, as ``json_object`` and
as a ``json_schema``, on one engine, runs interleaved; decode time only (first streamed token to the
end), so prompt length and early stops do not skew the per-token figure."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

PROMPT = (
    "List five famous scientists as JSON: an object with a key 'people', a list of objects with their "
    "name, birth year and field."
)
SCHEMA = {
    "type": "object",
    "properties": {
        "people": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "born": {"type": "integer"},
                    "field": {"type": "string"},
                },
                "required": ["name", "born", "field"],
            },
        }
    },
    "required": ["people"],
}
FORMATS: dict[str, dict[str, Any] | None] = {
    "free": None,
    "json_object": {"type": "json_object"},
    "json_schema": {"type": "json_schema", "json_schema": {"name": "people", "schema": SCHEMA}},
}


def _decode_ms_per_token(engine: Any, fmt: dict[str, Any] | None, tokens: int) -> tuple[float, int]:
    messages = [{"role": "user", "content": PROMPT}]
    fields: dict[str, Any] = {"max_tokens": tokens, "temperature": 0.0}
    if fmt is None:
        fields["ignore_eos"] = True  # the free run decodes as long as the constrained ones may
    else:
        fields["response_format"] = fmt
    first = None
    stream = engine.stream(messages, **fields)
    for _ in stream:
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    assert stream.result is not None
    n = stream.result.usage.completion_tokens
    if first is None or n < 2:
        return float("nan"), n
    return (end - first) * 1000 / (n - 1), n


def run(args: argparse.Namespace) -> dict[str, Any]:
    import edgereason as er
    from edgereason.models import resolve_model

    path = resolve_model(args.model)
    threads = args.threads or os.cpu_count() or 1
    engine = er.load(str(path), n_ctx=args.n_ctx or 1024, threads=threads, max_sequences=2)
    try:
        for fmt in FORMATS.values():  # warm up every path once
            _decode_ms_per_token(engine, fmt, 8)
        times: dict[str, list[float]] = {name: [] for name in FORMATS}
        counts: dict[str, list[int]] = {name: [] for name in FORMATS}
        for _ in range(args.repeats):
            for name, fmt in FORMATS.items():
                ms, n = _decode_ms_per_token(engine, fmt, args.tokens)
                times[name].append(ms)
                counts[name].append(n)
    finally:
        engine.close()
    free = statistics.median(times["free"])
    rows = []
    for name in FORMATS:
        ms = statistics.median(times[name])
        rows.append(
            {
                "format": name,
                "ms_per_token": round(ms, 2),
                "tok_s": round(1000 / ms, 1),
                "completion_tokens": counts[name],
                "vs_free": round(ms / free, 3),
            }
        )
    return {
        "model": str(path),
        "threads": threads,
        "repeats": args.repeats,
        "rows": rows,
        "note": "decode ms per token (first streamed token to the end), medians; vs_free: ms ratio to free",
    }
