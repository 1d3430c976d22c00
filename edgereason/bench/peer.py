"""``edgereason bench peer``: ``edgereason serve`` against llama.cpp's own ``llama-server``, side by side.

Both servers run the same GGUF with the same threads, per-sequence context and slots (see
``edgereason.peer.llama_server_args`` for the flag mapping), one at a time on loopback, alternated over
rounds (each round starts each server afresh). One client drives both: streaming chat completions over
the OpenAI API with httpx, greedy, end-of-generation ignored so both decode the same number of tokens.

Workloads: (a) one client, 3 requests in a row; (b) 8 concurrent clients; (c) ``n=8`` in one request;
(d) a 6-turn chat, time to first token of the 6th turn (and the cached prompt tokens the server
reports); (e) inter-token latency of 3 streams while a 4th request sends a ~2,000-token prompt;
(f) the server's RSS (process tree) after the run. Medians over rounds; ratios are EdgeReason ÷ llama-server.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from ..peer import (
    PeerError,
    RunningServer,
    ServerLayout,
    build_info,
    find_llama_server,
    free_port,
    how_to_build,
    llama_server_args,
    process_tree_rss_mib,
    run_server,
)

log = logging.getLogger(__name__)

ALIAS = "bench"
DEFAULT_THREADS = 2
QUICK_TOKENS = 32
SEQUENTIAL_REQUESTS = 3
CONCURRENT_CLIENTS = 8
N_SAMPLES = 8
PROBE_TOKENS = 256  # bare decode loop vs llama-server's own timing
TURNS = 6
ITL_STREAMS = 3
LONG_PROMPT_TOKENS = 2000
DEFAULT_N_CTX = 3072  # per slot: the ~2,000-token prompt plus its answer fits
QUICK_N_CTX = 1024
REQUEST_TIMEOUT_S = 600.0
PROMPT = "Write a long story about an old fisherman who lives in a small village by the sea."
USER_TURNS = (
    "Tell me about the history of the bicycle.",
    "What were the first bicycles made of?",
    "Who made the safety bicycle popular?",
    "How did bicycles change daily life in cities?",
    "What are the most common bicycle repairs?",
    "Summarise our conversation in three sentences.",
)
# 17 tokens with SmolLM2's tokenizer (Qwen's is similar); the server reports the real count.
LONG_SENTENCE = "The committee reviewed the harbour records, the weather logs and the fishing quotas again. "
SERVERS = ("edgereason", "llama-server")


@dataclass
class StreamResult:
    """One streamed chat completion as the client saw it (times from ``time.perf_counter``)."""

    started: float
    token_times: dict[int, list[float]] = field(default_factory=dict)  # choice index -> content chunk times
    # One usage record per response; llama-server sends one per choice when n > 1 (summed below).
    usages: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, Any] = field(default_factory=dict)  # llama-server's own per-request timings
    texts: dict[int, list[str]] = field(default_factory=dict)
    finished: float = 0.0
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        firsts = [t[0] for t in self.token_times.values() if t]
        return min(firsts) - self.started if firsts else None

    @property
    def usage(self) -> dict[str, Any]:
        return self.usages[0] if self.usages else {}

    @property
    def completion_tokens(self) -> int:
        reported = [u["completion_tokens"] for u in self.usages if u.get("completion_tokens")]
        return int(sum(reported)) if reported else sum(len(t) for t in self.token_times.values())

    @property
    def prompt_tokens(self) -> int | None:
        value = self.usage.get("prompt_tokens", self.timings.get("prompt_n"))
        return int(value) if value is not None else None

    @property
    def cached_tokens(self) -> int | None:
        details = self.usage.get("prompt_tokens_details") or {}
        value = details.get("cached_tokens", self.timings.get("cache_n"))
        return int(value) if value is not None else None

    def text(self, index: int = 0) -> str:
        return "".join(self.texts.get(index, []))

    def gaps(self) -> list[float]:
        return [b - a for times in self.token_times.values() for a, b in zip(times, times[1:])]


def stream_chat(
    http: Any,
    base: str,
    messages: list[dict[str, str]],
    max_tokens: int,
    on_first_token: Callable[[], object] | None = None,
    **extra: Any,
) -> StreamResult:
    """POST a streaming chat completion and record when each content chunk arrived."""
    body = {
        "model": ALIAS,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }
    res = StreamResult(started=time.perf_counter())
    with http.stream("POST", base + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            res.error = f"HTTP {r.status_code}: {r.read().decode(errors='replace')[:300]}"
            return res
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            now = time.perf_counter()
            obj = json.loads(data)
            if "error" in obj:
                res.error = json.dumps(obj["error"])[:300]
                break
            for choice in obj.get("choices") or []:
                delta = choice.get("delta") or {}
                piece = delta.get("content") or delta.get("reasoning_content")
                if piece:
                    i = int(choice.get("index", 0))
                    res.token_times.setdefault(i, []).append(now)
                    res.texts.setdefault(i, []).append(piece)
                    if on_first_token is not None:
                        on_first_token()
                        on_first_token = None
            if obj.get("usage"):
                res.usages.append(obj["usage"])
            res.timings = obj.get("timings") or res.timings
    res.finished = time.perf_counter()
    return res


def _client() -> Any:
    import httpx

    return httpx.Client(timeout=REQUEST_TIMEOUT_S)


def _check(res: StreamResult, what: str) -> StreamResult:
    if res.error:
        raise PeerError(f"{what}: {res.error}")
    return res


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def _parallel(base: str, count: int, run: Callable[[Any, int], StreamResult]) -> list[StreamResult]:
    def one(i: int) -> StreamResult:
        with _client() as http:
            return run(http, i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def one_client(base: str, tokens: int) -> dict[str, Any]:
    msgs = [{"role": "user", "content": PROMPT}]
    with _client() as http:
        t0 = time.perf_counter()
        runs = [_check(stream_chat(http, base, msgs, tokens), "1 client") for _ in range(SEQUENTIAL_REQUESTS)]
        wall = time.perf_counter() - t0
    n = sum(r.completion_tokens for r in runs)
    gaps = [g for r in runs for g in r.gaps()]
    return {
        "tokens": n,
        "tok_s": round(n / wall, 2),
        "ttft_ms": round(statistics.median(r.ttft or 0.0 for r in runs) * 1000, 1),
        "itl_ms_p50": round(statistics.median(gaps) * 1000, 2) if gaps else None,
    }


def concurrent_clients(base: str, tokens: int, clients: int) -> dict[str, Any]:
    def run(http: Any, i: int) -> StreamResult:
        msgs = [{"role": "user", "content": f"{PROMPT} Story number {i + 1}."}]
        return _check(stream_chat(http, base, msgs, tokens), f"{clients} clients")

    t0 = time.perf_counter()
    runs = _parallel(base, clients, run)
    wall = time.perf_counter() - t0
    n = sum(r.completion_tokens for r in runs)
    return {"clients": clients, "tokens": n, "tok_s": round(n / wall, 2)}


def n_samples(base: str, tokens: int, n: int) -> dict[str, Any]:
    """``n`` choices in one request; if the server refuses or ignores ``n``, ``n`` parallel requests."""
    msgs = [{"role": "user", "content": PROMPT}]
    with _client() as http:
        t0 = time.perf_counter()
        res = stream_chat(http, base, msgs, tokens, n=n, temperature=0.8, seed=7)
        wall = time.perf_counter() - t0
    got = sum(1 for t in res.token_times.values() if t)
    if res.error is None and got == n:
        return {
            "mode": f"n={n}",
            "tokens": res.completion_tokens,
            "tok_s": round(res.completion_tokens / wall, 2),
        }
    why = res.error or f"returned {got} of {n} choices"

    def run(http: Any, i: int) -> StreamResult:
        return _check(stream_chat(http, base, msgs, tokens, temperature=0.8, seed=7 + i), "n fallback")

    t0 = time.perf_counter()
    runs = _parallel(base, n, run)
    wall = time.perf_counter() - t0
    total = sum(r.completion_tokens for r in runs)
    return {
        "mode": f"{n} parallel requests (n={n} not served: {why})",
        "tokens": total,
        "tok_s": round(total / wall, 2),
    }


def multi_turn(base: str, tokens: int, turns: int = TURNS) -> dict[str, Any]:
    """A chat where each turn resends the history plus the previous reply and a new user message."""
    msgs: list[dict[str, str]] = [{"role": "system", "content": "You are a helpful assistant."}]
    per_turn = []
    with _client() as http:
        for i in range(turns):
            msgs.append({"role": "user", "content": USER_TURNS[i % len(USER_TURNS)]})
            # Replies end where the model ends them: with ignore_eos a reply runs past its end-of-turn
            # token, whose text no server sends back, so the next turn's history could not match the
            # cached tokens on either server (a chat client never sees such a reply).
            res = _check(stream_chat(http, base, msgs, tokens, ignore_eos=False), f"turn {i + 1}")
            msgs.append({"role": "assistant", "content": res.text()})
            per_turn.append(
                {
                    "ttft_ms": round((res.ttft or 0.0) * 1000, 1),
                    "prompt_tokens": res.prompt_tokens,
                    "cached_tokens": res.cached_tokens,
                }
            )
    last = per_turn[-1]
    return {
        "last_turn_ttft_ms": last["ttft_ms"],
        "last_turn_prompt_tokens": last["prompt_tokens"],
        "last_turn_cached_tokens": last["cached_tokens"],
        "turns": per_turn,
    }


def long_prompt_prompt() -> str:
    return LONG_SENTENCE * (LONG_PROMPT_TOKENS // 17) + "\nSummarise the records above in one sentence."


def itl_under_long_prompt(base: str, tokens: int, streams: int = ITL_STREAMS) -> dict[str, Any]:
    """ITL of ``streams`` streaming clients while one more client sends a ~2,000-token prompt."""
    started = threading.Barrier(streams + 1)
    sent_at: list[float] = []

    def stream(http: Any, i: int) -> StreamResult:
        msgs = [{"role": "user", "content": f"{PROMPT} Story number {i + 1}."}]
        # Long enough to span the long prompt's prefill; the barrier sends the long prompt once every
        # stream is decoding.
        res = stream_chat(http, base, msgs, 2 * tokens, on_first_token=lambda: started.wait(timeout=120))
        return _check(res, "ITL stream")

    def long_one() -> StreamResult:
        started.wait(timeout=120)
        time.sleep(0.3)
        with _client() as http:
            sent_at.append(time.perf_counter())
            msgs = [{"role": "user", "content": long_prompt_prompt()}]
            return _check(stream_chat(http, base, msgs, 8), "long prompt")

    with ThreadPoolExecutor(1) as pool:
        long_future = pool.submit(long_one)
        runs = _parallel(base, streams, stream)
        long_res = long_future.result()
    # Gaps that end after the long prompt was sent: the window where its prefill can stall the streams.
    t_sent = sent_at[0]
    gaps = [
        b - a
        for r in runs
        for times in r.token_times.values()
        for a, b in zip(times, times[1:])
        if b > t_sent
    ]
    all_gaps = [g for r in runs for g in r.gaps()]
    return {
        "long_prompt_tokens": long_res.prompt_tokens,
        "long_prompt_ttft_ms": round((long_res.ttft or 0.0) * 1000, 1),
        "itl_ms_p50": round(_percentile(gaps, 50) * 1000, 2),
        "itl_ms_p99": round(_percentile(gaps, 99) * 1000, 2),
        "itl_ms_max": round(max(gaps) * 1000, 2),
        "itl_ms_p50_whole_streams": round(_percentile(all_gaps, 50) * 1000, 2),
        "gaps": len(gaps),
    }


@contextmanager
def start_server(which: str, model: Path, layout: ServerLayout, binary: Path) -> Iterator[RunningServer]:
    port = free_port()
    if which == "edgereason":
        argv = [
            sys.executable,
            "-m",
            "edgereason",
            "serve",
            "--model",
            str(model),
            "--port",
            str(port),
            "--threads",
            str(layout.threads),
            "--n-ctx",
            str(layout.ctx_per_slot),
            "--max-sequences",
            str(layout.slots),
            "--alias",
            ALIAS,
        ]
    else:
        argv = [str(binary), *llama_server_args(model, layout, port=port, extra_args=["--alias", ALIAS])]
    with run_server(argv, port, name=which) as server:
        yield server


@dataclass(frozen=True)
class Plan:
    tokens: int
    slots: int
    rounds: int
    long_prompt: bool
    decode_probe: bool = False  # time the bare decode loop of both (see ``bare_decode_ms``)


def measure_server(server: RunningServer, plan: Plan, which: str = "edgereason") -> dict[str, Any]:
    """Every workload against one running server, then its RSS."""
    base = server.base_url
    load_before = os.getloadavg()[0]
    with _client() as http:  # warm-up: first-request costs stay out of the numbers
        _check(stream_chat(http, base, [{"role": "user", "content": "Hi"}], 8), "warm-up")
    out: dict[str, Any] = {
        "one_client": one_client(base, plan.tokens),
        "concurrent": concurrent_clients(base, plan.tokens, min(CONCURRENT_CLIENTS, plan.slots)),
        "n_samples": n_samples(base, plan.tokens, min(N_SAMPLES, plan.slots)),
        "multi_turn": multi_turn(base, plan.tokens),
    }
    if plan.long_prompt:
        out["long_prompt"] = itl_under_long_prompt(base, plan.tokens)
    if plan.decode_probe and which == "llama-server":  # its own per-token timing
        out["decode_per_token_ms"] = llama_server_decode_ms(base, PROBE_TOKENS)
    out["rss_mib"] = round(process_tree_rss_mib(server.pid), 1)
    out["loadavg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return out


# (label, path into a round's results, higher is better)
ROWS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("1 client, 3 x {t} tokens, tok/s", ("one_client", "tok_s"), True),
    ("{c} concurrent clients x {t} tokens, tok/s", ("concurrent", "tok_s"), True),
    ("n={n} in one request, tok/s", ("n_samples", "tok_s"), True),
    ("1 client: TTFT, ms", ("one_client", "ttft_ms"), False),
    ("1 client: inter-token gap p50, ms", ("one_client", "itl_ms_p50"), False),
    (
        "bare decode loop, ms per token (ours: backend alone; llama-server: its own timing)",
        ("decode_per_token_ms",),
        False,
    ),
    ("6-turn chat, 6th-turn TTFT, ms", ("multi_turn", "last_turn_ttft_ms"), False),
    ("6th turn: prompt tokens", ("multi_turn", "last_turn_prompt_tokens"), False),
    ("6th turn: cached prompt tokens reported", ("multi_turn", "last_turn_cached_tokens"), False),
    ("ITL p50 during a ~2k-token prompt, ms", ("long_prompt", "itl_ms_p50"), False),
    ("ITL p99 during a ~2k-token prompt, ms", ("long_prompt", "itl_ms_p99"), False),
    ("~2k-token prompt TTFT, ms", ("long_prompt", "long_prompt_ttft_ms"), False),
    ("RSS after the run (process tree), MiB", ("rss_mib",), False),
)


def _dig(d: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _median(rounds: list[dict[str, Any]], path: tuple[str, ...]) -> float | None:
    values = [v for r in rounds if isinstance(v := _dig(r, path), (int, float))]
    return round(float(statistics.median(values)), 2) if values else None


def summarise(results: dict[str, list[dict[str, Any]]], plan: Plan) -> list[dict[str, Any]]:
    rows = []
    for label, path, _higher in ROWS:
        ours, theirs = (_median(results[s], path) for s in SERVERS)
        if ours is None and theirs is None:
            continue
        ratio = round(ours / theirs, 2) if ours is not None and theirs else None
        name = label.format(
            t=plan.tokens, c=min(CONCURRENT_CLIENTS, plan.slots), n=min(N_SAMPLES, plan.slots)
        )
        rows.append({"workload": name, "edgereason": ours, "llama_server": theirs, "ratio": ratio})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:,.1f}" if isinstance(v, float) else f"{v:,}"

    lines = [
        "| workload | EdgeReason | llama-server | EdgeReason ÷ llama-server |",
        "|---|---|---|---|",
    ]
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"| {r['workload']} | {cell(r['edgereason'])} | {cell(r['llama_server'])} | {ratio} |")
    return "\n".join(lines)


def compare(model: Path, layout: ServerLayout, plan: Plan, binary: Path) -> dict[str, Any]:
    """Each server alone, alternated: round r runs EdgeReason first when r is even."""
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in SERVERS}
    for r in range(plan.rounds):
        order = SERVERS if r % 2 == 0 else SERVERS[::-1]
        for which in order:
            log.info("round %d/%d: %s", r + 1, plan.rounds, which)
            t0 = time.perf_counter()
            with start_server(which, model, layout, binary) as server:
                round_result = measure_server(server, plan, which)
                round_result["argv"] = server.argv
            if plan.decode_probe and which == "edgereason":  # with no server running
                round_result["decode_per_token_ms"] = bare_decode_ms(model, layout, PROBE_TOKENS)
            round_result["wall_s"] = round(time.perf_counter() - t0, 1)
            results[which].append(round_result)
            print(f"  round {r + 1} {which}: done in {round_result['wall_s']} s", flush=True)
    rows = summarise(results, plan)
    notes = sorted(
        {x["n_samples"]["mode"] for s in SERVERS for x in results[s] if "parallel" in x["n_samples"]["mode"]}
    )
    return {"model": str(model), "table": rows, "rounds": results, "notes": notes}


def bare_decode_ms(model: Path, layout: ServerLayout, tokens: int) -> float:
    """Median ms per token of our llama.cpp backend's bare greedy loop, one ``llama_decode`` and one C
    sampler call per token, with no scheduler and no server, in this process: beside llama-server's own
    ``timings.predicted_per_token_ms`` it says whether a gap sits in the decode or in the serving path."""
    from ..backends.base import SamplingParams
    from ..backends.llama_cpp import LlamaCppBackend
    from .hybrid import decode_one, greedy_start

    backend = LlamaCppBackend(
        model, n_ctx=layout.ctx_per_slot, threads=layout.threads, max_sequences=layout.slots
    )
    try:
        sampler = backend.make_sampler(SamplingParams())
        try:
            token, pos = greedy_start(backend, sampler, PROMPT)
            times = []
            for _ in range(tokens):
                t0 = time.perf_counter()
                token = decode_one(backend, sampler, 0, pos, token)
                times.append(time.perf_counter() - t0)
                pos += 1
        finally:
            sampler.close()
    finally:
        backend.close()
    return round(statistics.median(times) * 1000, 2)


def llama_server_decode_ms(base: str, tokens: int) -> float | None:
    """llama-server's own ms per generated token for the same greedy continuation (``/completion``)."""
    body = {
        "prompt": PROMPT,
        "n_predict": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "cache_prompt": False,
    }
    with _client() as http:
        r = http.post(base + "/completion", json=body)
    if r.status_code != 200:
        log.warning("llama-server /completion answered %d", r.status_code)
        return None
    value = (r.json().get("timings") or {}).get("predicted_per_token_ms")
    return round(float(value), 2) if isinstance(value, (int, float)) else None


def build_big_model(cache: Path) -> Path:
    """A random-weight Qwen2.5-0.5B-shaped checkpoint quantised to q4_k_m (cached; needs the convert extra)."""
    from .convert import QWEN05_SHAPE

    out = cache / "bench-peer-qwen05-random-q4_k_m.gguf"
    if out.is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgereason-bench-peer-") as tmp:
        src = Path(tmp) / "qwen05-hf"
        code = (
            "import sys; from pathlib import Path; from edgereason.convert.tiny import make_tiny_checkpoint; "
            f"make_tiny_checkpoint('qwen2', Path(sys.argv[1]), layers=24, **{QWEN05_SHAPE!r})"
        )
        for cmd in (
            [sys.executable, "-c", code, str(src)],
            [sys.executable, "-m", "edgereason.cli", "convert", str(src), "-o", str(Path(tmp) / out.name)]
            + ["--to", "gguf", "--quant", "q4_k_m", "--force"],
        ):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise ModelLoadError(f"building the 0.5B-shaped model failed: {proc.stderr[-800:]}")
        os.replace(Path(tmp) / out.name, out)
    return out


def _source_state() -> str | None:
    """``git describe --dirty`` of the checkout EdgeReason runs from (None outside a git checkout)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "describe", "--always", "--dirty"], capture_output=True, text=True
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..models import resolve_model
    from ..peer import cache_root

    binary = find_llama_server()
    if binary is None:
        raise PeerError(how_to_build())
    quick = bool(getattr(args, "quick", False))
    plan = Plan(
        tokens=min(args.tokens, QUICK_TOKENS) if quick else args.tokens,
        slots=args.slots,
        rounds=1 if quick else args.rounds,
        long_prompt=not quick,
        decode_probe=not quick,
    )
    layout = ServerLayout(
        threads=args.threads or DEFAULT_THREADS,
        ctx_per_slot=args.n_ctx or (QUICK_N_CTX if quick else DEFAULT_N_CTX),
        slots=plan.slots,
    )
    models = {"embedded": Path(resolve_model(args.model))}
    if getattr(args, "big", False):
        print("building the random-weight Qwen2.5-0.5B-shaped q4_k_m model (cached) ...", flush=True)
        models["qwen05_q4_k_m"] = build_big_model(cache_root())
    out: dict[str, Any] = {
        "llama_server": str(binary),
        "llama_server_build": build_info(binary),
        "layout": vars(layout),
        "plan": vars(plan),
        "cpu_count": os.cpu_count(),
        "edgereason_source": _source_state(),
    }
    for name, model in models.items():
        print(
            f"{name}: {model} ({plan.rounds} round(s), {layout.threads} threads, {layout.slots} slots)",
            flush=True,
        )
        res = compare(model, layout, plan, binary)
        out[name] = res
        print(format_table(res["table"]))
        for note in res["notes"]:
            print(f"note: {note}")
    return out
