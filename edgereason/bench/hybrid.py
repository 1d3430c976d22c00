"""Hybrid (Mamba2 + attention) vs transformer: memory per sample and per generated token, long decode speed.

M1's claim is that a mostly-recurrent student keeps per-sample memory small and decode speed flat as the
generated length grows, so self-consistency can afford more samples. Three tiny random models of equal
width and depth are converted for real and measured side by side: a Llama transformer, a Bamba hybrid
(one attention layer) and a pure Mamba2. Memory is what llama.cpp serialises for one sequence
(``llama_state_seq_get_size``: its KV cells plus its recurrent state), i.e. what one more sample costs.
Needs the ``convert`` extra (torch, transformers) to build the checkpoints.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from ..backends.base import BatchItem, SamplingParams
from ..backends.llama_cpp import LlamaCppBackend

HIDDEN, LAYERS, HEADS, KV_HEADS = 256, 4, 4, 2
LENGTHS = (512, 1024, 2048, 4096)
WINDOW = 128  # decode speed at length L: the median token time of tokens L-WINDOW+1 .. L
PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman who"


def build_models(tmp: Path) -> dict[str, Path]:
    """Convert the three tiny checkpoints (f32) and return their GGUF paths by label."""
    from edgereason.convert.gguf_export import hf_to_gguf
    from edgereason.convert.hybrid import make_tiny_hybrid
    from edgereason.convert.tiny import make_tiny_checkpoint

    width = {"layers": LAYERS, "hidden": HIDDEN}
    attn = {"heads": HEADS, "kv_heads": KV_HEADS, "intermediate": 2 * HIDDEN}
    dirs = {
        "transformer": make_tiny_checkpoint("llama", tmp / "llama", **width, **attn),
        "hybrid": make_tiny_hybrid(
            "bamba", tmp / "bamba", **width, **attn, attn_layers=(1,), mamba_head_dim=32
        ),
        "mamba2": make_tiny_hybrid("mamba2", tmp / "mamba2", **width, mamba_head_dim=32),
    }
    return {label: hf_to_gguf(d, tmp / f"{label}.gguf") for label, d in dirs.items()}


def greedy_start(backend: LlamaCppBackend, sampler: Any, text: str) -> tuple[int, int]:
    """Decode ``text`` into slot 0 in one call: the first sampled token and the next position."""
    prompt = backend.tokenize(text, add_bos=backend.info.add_bos)
    handle = backend.decode([BatchItem(0, 0, prompt, want_logits=True)])[0]
    return backend.sample(sampler, handle), len(prompt)


def decode_one(backend: LlamaCppBackend, sampler: Any, slot: int, pos: int, token: int) -> int:
    """One single-token decode call and one sample: the bare per-token loop the benches time."""
    handle = backend.decode([BatchItem(slot, pos, [token], want_logits=True)])[0]
    return backend.sample(sampler, handle)


def seq_state_bytes(backend: LlamaCppBackend, slot: int) -> int:
    return int(backend._lib.llama_state_seq_get_size(backend.ctx, slot))


def measure(path: Path, threads: int, max_len: int) -> dict[str, Any]:
    """Per-sequence memory after the prompt and after ``max_len`` tokens; decode tok/s at each length."""
    backend = LlamaCppBackend(path, n_ctx=max_len + 128, threads=threads, max_sequences=1)
    try:
        sampler = backend.make_sampler(SamplingParams())  # greedy, EOS ignored: fixed length
        token, pos = greedy_start(backend, sampler, PROMPT)
        after_prompt = seq_state_bytes(backend, 0)
        memory_at: dict[int, int] = {}
        tok_s: dict[int, float] = {}
        window: deque[float] = deque(maxlen=WINDOW)  # the last WINDOW token times
        for n in range(1, max_len + 1):
            t0 = time.perf_counter()
            token = decode_one(backend, sampler, 0, pos, token)
            window.append(time.perf_counter() - t0)
            pos += 1
            if n in LENGTHS:
                # The median token of the window: a token slowed by another process does not move it.
                tok_s[n] = 1.0 / statistics.median(window)
                memory_at[n] = seq_state_bytes(backend, 0)  # outside any timed token
        sampler.close()
    finally:
        backend.close()
    first, last = min(memory_at), max(memory_at)
    per_1k = (memory_at[last] - memory_at[first]) / (last - first) * 1000
    return {
        "architecture": backend.info.architecture,
        "params": backend.info.n_params,
        "sample_state_after_prompt_kib": round(after_prompt / 1024, 1),
        "sample_state_kib": {n: round(b / 1024, 1) for n, b in memory_at.items()},
        "per_1000_tokens_kib": round(per_1k / 1024, 1),
        "decode_tok_s": {n: round(v, 1) for n, v in tok_s.items()},
        "decode_slowdown": round(tok_s[min(tok_s)] / tok_s[max(tok_s)], 3),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    threads = args.threads or 2
    max_len = max(LENGTHS)
    results: dict[str, Any] = {"hidden": HIDDEN, "layers": LAYERS, "threads": threads, "lengths": LENGTHS}
    with tempfile.TemporaryDirectory() as tmp:
        for label, path in build_models(Path(tmp)).items():
            results[label] = measure(path, threads, max_len)
    for label in ("transformer", "hybrid", "mamba2"):
        r = results[label]
        print(
            f"{label:11s} ({r['architecture']}): one more sample {r['sample_state_kib'][max_len]} KiB at "
            f"{max_len} tokens, +{r['per_1000_tokens_kib']} KiB per 1,000 tokens; decode tok/s "
            + ", ".join(f"{n}: {v}" for n, v in r["decode_tok_s"].items())
            + f" (slowdown {r['decode_slowdown']}x)"
        )
    t, h = results["transformer"], results["hybrid"]
    results["hybrid_vs_transformer"] = {
        "memory_per_sample_ratio": round(h["sample_state_kib"][max_len] / t["sample_state_kib"][max_len], 3),
        "memory_per_1000_tokens_ratio": round(h["per_1000_tokens_kib"] / t["per_1000_tokens_kib"], 3),
        "decode_at_max_len_ratio": round(h["decode_tok_s"][max_len] / t["decode_tok_s"][max_len], 3),
    }
    print(f"hybrid / transformer: {results['hybrid_vs_transformer']}")
    return results
