"""``edgereason bench``: side-by-side measurements against what a user would pick instead."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BENCHES = (
    "decode",
    "serve",
    "votes",
    "budgets",
    "lora",
    "convert",
    "backends",
    "hybrid",
    "peer",
    "structured",
)


def add_bench_parser(sub: Any, add_model_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    bench = sub.add_parser("bench", help="benchmarks: " + ", ".join(BENCHES))
    bench.add_argument("which", choices=BENCHES)
    bench.add_argument("--tokens", type=int, default=128, help="tokens generated per sequence")
    bench.add_argument("--sequences", type=int, default=8, help="parallel sequences for the batched runs")
    bench.add_argument("--repeats", type=int, default=3, help="repetitions (the median is reported)")
    bench.add_argument(
        "--problems", type=int, default=20, help="votes: arithmetic problems for the accuracy runs"
    )
    bench.add_argument(
        "--answer-tokens", type=int, default=48, help="votes: max tokens per answer in the accuracy runs"
    )
    bench.add_argument("--slots", type=int, default=8, help="peer: slots (sequences) of both servers")
    bench.add_argument("--rounds", type=int, default=2, help="peer: rounds, servers alternated")
    bench.add_argument("--quick", action="store_true", help="peer: 1 round, 32 tokens, no long prompt")
    bench.add_argument(
        "--big", action="store_true", help="peer: also a random Qwen2.5-0.5B-shaped q4_k_m (convert extra)"
    )
    bench.add_argument(
        "--mlx-model", type=Path, default=None, help="lora: an mlx-lm folder of the same model"
    )
    bench.add_argument(
        "--out", type=Path, default=Path("bench-results"), help="where to write the JSON results"
    )
    add_model_flags(bench)
    bench.set_defaults(func=lambda args: run_bench(args))


def run_bench(args: argparse.Namespace) -> int:
    from . import backends, budgets, convert, decode, hybrid, lora, peer, serve, structured, votes

    runners = {
        "decode": decode.run,
        "serve": serve.run,
        "votes": votes.run,
        "budgets": budgets.run,
        "lora": lora.run,
        "convert": convert.run,
        "hybrid": hybrid.run,
        "backends": backends.run,
        "peer": peer.run,
        "structured": structured.run,
    }
    results = runners[args.which](args)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.which}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"results written to {path}")
    return 0
