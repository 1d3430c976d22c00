"""Server throughput and latency: 8 concurrent clients vs 1 on one `edgereason serve`, TTFT over the
Python API, and the same load against ``python -m llama_cpp.server`` when its extra is installed."""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from ..peer import free_port, stop_process

PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman who"
CLIENTS = 8
READY_TIMEOUT_S = 120


@contextmanager
def _process(cmd: list[str], base: str, ready_path: str) -> Iterator[str]:
    import httpx

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[2:4]} exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{base} did not become ready")
            try:
                if httpx.get(base + ready_path, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield base
    finally:
        stop_process(proc)


def _load(
    base: str, model: str, clients: int, requests: int, n_tok: int, extra: dict[str, Any]
) -> dict[str, Any]:
    """``requests`` completions spread over ``clients`` threads; aggregate completion tokens/s."""
    import openai

    client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=600)

    def one(i: int) -> int:
        res = client.completions.create(
            model=model, prompt=PROMPT, max_tokens=n_tok, temperature=0.8, seed=7 + i, extra_body=extra
        )
        return res.usage.completion_tokens if res.usage else 0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "requests": requests,
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "tok_s": round(tokens / wall, 2),
    }


def _server_ttft(base: str, model: str) -> float:
    import openai

    client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)
    t0 = time.perf_counter()
    stream = client.completions.create(model=model, prompt=PROMPT, max_tokens=4, temperature=0, stream=True)
    first = None
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].text:
            first = time.perf_counter() - t0
    assert first is not None
    return first


def _api_ttft(engine: Any) -> float:
    t0 = time.perf_counter()
    stream = engine.stream_completion(PROMPT, max_tokens=4, temperature=0)
    first = None
    for chunk in stream:
        if first is None and chunk.text:
            first = time.perf_counter() - t0
    assert first is not None
    return first


def run(args: argparse.Namespace) -> dict[str, Any]:
    import edgereason as er
    from edgereason.models import resolve_model

    path = resolve_model(args.model)
    n_ctx = args.n_ctx or 1024
    n_tok, reps = args.tokens, args.repeats
    clients = max(2, args.sequences or CLIENTS)
    threads = ["--threads", str(args.threads)] if args.threads else []
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "edgereason",
        "serve",
        "--model",
        str(path),
        "--port",
        str(port),
        "--n-ctx",
        str(n_ctx),
        "--max-sequences",
        str(max(16, clients + 1)),
        "--alias",
        "bench",
        *threads,
    ]
    no_eos = {"ignore_eos": True}
    with _process(cmd, f"http://127.0.0.1:{port}", "/health") as base:
        _load(base, "bench", 1, 1, 8, no_eos)  # warm up
        single = _load(base, "bench", 1, clients, n_tok, no_eos)
        multi = _load(base, "bench", clients, clients, n_tok, no_eos)
        server_ttft = statistics.median(_server_ttft(base, "bench") for _ in range(reps))
    with er.load(path, n_ctx=n_ctx, threads=args.threads, max_sequences=max(16, clients + 1)) as engine:
        _api_ttft(engine)
        api_ttft = statistics.median(_api_ttft(engine) for _ in range(reps))

    res: dict[str, Any] = {
        "model": str(path),
        "tokens_per_request": n_tok,
        "one_client": single,
        f"{clients}_clients": multi,
        "batching_gain": round(multi["tok_s"] / single["tok_s"], 3),
        "ttft_s": {
            "server": round(server_ttft, 4),
            "python_api": round(api_ttft, 4),
            "overhead_s": round(server_ttft - api_ttft, 4),
        },
    }
    print(
        f"edgereason serve: 1 client {single['tok_s']} tok/s, {clients} clients {multi['tok_s']} tok/s"
        f" -> x{res['batching_gain']} (continuous batching gain)"
    )
    print(
        f"time to first token: server {res['ttft_s']['server'] * 1000:.1f} ms vs Python API "
        f"{res['ttft_s']['python_api'] * 1000:.1f} ms (overhead {res['ttft_s']['overhead_s'] * 1000:.1f} ms)"
    )

    if (
        importlib.util.find_spec("llama_cpp.server") is None
        or importlib.util.find_spec("starlette_context") is None
    ):
        res["llama_cpp_server"] = "not installed (pip install 'llama-cpp-python[server]')"
        print(f"llama_cpp.server: {res['llama_cpp_server']}")
        return res
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(path),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--n_ctx",
        str(n_ctx),
        *(["--n_threads", str(args.threads)] if args.threads else []),
    ]
    with _process(cmd, f"http://127.0.0.1:{port}", "/v1/models") as base:
        _load(base, "bench", 1, 1, 8, {})
        theirs = _load(base, str(path), clients, clients, n_tok, {})
    res["llama_cpp_server"] = {
        f"{clients}_clients": theirs,
        "ratio": round(multi["tok_s"] / theirs["tok_s"], 3),
    }
    print(
        f"llama_cpp.server {clients} clients: {theirs['tok_s']} tok/s -> edgereason x{res['llama_cpp_server']['ratio']}"
    )
    return res
