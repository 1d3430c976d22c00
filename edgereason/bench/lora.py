"""LoRA adapters: per-request switching against rebuilding the llama.cpp backend with another adapter (the
cost a runtime without per-request adapters pays: a fresh model load), mlx-lm's own adapter switch
(``mlx_lm.load(path, adapter_path=...)``, given ``--mlx-model``, an mlx-lm folder of the same model), and
resident memory.

Adapters are random rank-``r`` LoRA GGUFs written for the model being measured (shapes read from its
GGUF), so the bench needs no training stack, only the ``gguf`` package.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import re
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..scheduler import ADAPTER_TURN_S

log = logging.getLogger(__name__)

DEFAULT_RANK = 16
TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
SWITCH_STEPS = 30
REQUESTS = 6
CONCURRENT_TOKENS = 32


def make_random_lora_gguf(base: Path, out: Path, *, rank: int = DEFAULT_RANK, seed: int = 0) -> Path:
    """A random LoRA adapter GGUF for the model ``base`` (every attention and MLP projection)."""
    from edgereason.convert.llama_converter import import_gguf  # llama.cpp's own gguf-py

    gguf = import_gguf()
    reader = gguf.GGUFReader(base)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(out, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(rank))
    for t in reader.tensors:
        parts = t.name.split(".")
        if len(parts) != 4 or parts[0] != "blk" or parts[2] not in TARGETS:
            continue
        n_in, n_out = int(t.shape[0]), int(t.shape[1])  # ggml order
        writer.add_tensor(f"{t.name}.lora_a", (rng.standard_normal((rank, n_in)) * 0.02).astype(np.float32))
        writer.add_tensor(f"{t.name}.lora_b", (rng.standard_normal((n_out, rank)) * 0.02).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def rss_mib() -> float:
    """Resident memory of this process (VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _ReserveTimes(logging.Handler):
    """Collects llama.cpp's own "reserve took X ms" lines (it re-reserves its graph after each switch)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.ms: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r"reserve took ([0-9.]+) ms", record.getMessage())
        if found:
            self.ms.append(float(found.group(1)))


def _switch_cost_ms(backend: Any, names: list[str], steps: int) -> dict[str, float]:
    """One-token decodes with the adapter fixed vs switched before every decode (one sequence)."""
    from ..backends.base import BatchItem

    def loop(switch: bool) -> float:
        backend.remove(0, 0)
        backend.set_adapters(((names[0], 1.0),))
        t0 = time.perf_counter()
        for i in range(steps):
            if switch:
                backend.set_adapters(((names[i % len(names)], 1.0),))
            backend.decode([BatchItem(0, i, [1 + i % 100], True)])
        return (time.perf_counter() - t0) * 1000 / steps

    loop(True)  # warm both paths
    reserves = _ReserveTimes()
    llama_log = logging.getLogger("edgereason.backends.llama_cpp")
    level, propagate = llama_log.level, llama_log.propagate
    llama_log.addHandler(reserves)
    llama_log.setLevel(logging.INFO)
    llama_log.propagate = False  # collected here, not printed
    try:
        fixed, switched = [], []
        for _ in range(3):  # interleaved, so load from elsewhere hits both alike
            fixed.append(loop(False))
            switched.append(loop(True))
    finally:
        llama_log.removeHandler(reserves)
        llama_log.setLevel(level)
        llama_log.propagate = propagate
    t0 = time.perf_counter()
    for i in range(steps):
        backend.set_adapters(((names[i % len(names)], 1.0),))
    call = (time.perf_counter() - t0) * 1000 / steps
    fixed_ms, switched_ms = statistics.median(fixed), statistics.median(switched)
    return {
        "decode_ms_fixed_adapter": round(fixed_ms, 3),
        "decode_ms_switch_every_step": round(switched_ms, 3),
        "switch_overhead_ms": round(switched_ms - fixed_ms, 3),
        "llama_reserve_ms": round(statistics.median(reserves.ms), 3) if reserves.ms else float("nan"),
        "set_adapters_call_ms": round(call, 4),
    }


def _concurrent_ms(eng: Any, prompt: list[dict[str, str]], fields: dict[str, Any], names: list[str]) -> float:
    """Wall time of len(names) requests decoded together, request i under adapter names[i]."""
    t0 = time.perf_counter()
    streams = [eng.stream(prompt, adapter=name, **fields) for name in names]
    for s in streams:
        s.wait()
    return (time.perf_counter() - t0) * 1000


def run(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    from ..backends.llama_cpp import LlamaCppBackend
    from ..engine import Engine
    from ..models import resolve_model

    model = resolve_model(args.model)
    threads = args.threads
    results: dict[str, Any] = {"model": str(model), "rank": DEFAULT_RANK}
    with tempfile.TemporaryDirectory() as tmp:
        paths = [make_random_lora_gguf(model, Path(tmp) / f"lora{i}.gguf", seed=i) for i in range(3)]
        results["adapter_file_mib"] = round(paths[0].stat().st_size / 2**20, 2)

        # Resident memory with 0, 1, 3 adapters loaded (llama.cpp copies adapter tensors into memory).
        gc.collect()
        rss0 = rss_mib()
        backend = LlamaCppBackend(model, threads=threads, max_sequences=4, n_ctx=512)
        memory = {"process_before_load_mib": round(rss0, 1), "adapters_0_mib": round(rss_mib(), 1)}
        for i, p in enumerate(paths):
            backend.load_adapter(f"a{i}", p)
            if i in (0, 2):
                memory[f"adapters_{i + 1}_mib"] = round(rss_mib(), 1)
        memory["per_adapter_mib"] = round((memory["adapters_3_mib"] - memory["adapters_0_mib"]) / 3, 2)
        results["memory"] = memory

        # Switching inside one loaded model vs building EdgeReason's llama.cpp backend afresh with another
        # adapter (a model reload; this is our own construction, not mlx-lm's code path).
        results["switch"] = _switch_cost_ms(backend, ["a0", "a1", "a2"], SWITCH_STEPS)
        backend.close()
        reloads = []
        for i in range(3):
            t0 = time.perf_counter()
            b = LlamaCppBackend(model, threads=threads, max_sequences=4, n_ctx=512, adapters={"x": paths[i]})
            reloads.append((time.perf_counter() - t0) * 1000)
            b.close()
        results["reload_llama_cpp_backend_ms"] = round(statistics.median(reloads), 1)
        results["reload_baseline"] = "EdgeReason's LlamaCppBackend built afresh with the adapter (not mlx-lm)"
        results["reload_over_switch"] = round(
            results["reload_llama_cpp_backend_ms"] / max(results["switch"]["switch_overhead_ms"], 1e-3), 1
        )
        if (mlx_dir := getattr(args, "mlx_model", None)) is not None:
            results["mlx_lm"] = mlx_lm_adapter_load_ms(Path(mlx_dir), Path(tmp) / "mlx", max(1, args.repeats))

        # Whole requests through the engine: the same adapter every time vs a different one each request.
        prompt = [{"role": "user", "content": "What is 12 + 7?"}]
        fields: dict[str, Any] = {"temperature": 0.0, "max_tokens": 16, "ignore_eos": True}
        adapters = {f"a{i}": p for i, p in enumerate(paths)}
        with Engine(
            LlamaCppBackend(model, threads=threads, max_sequences=4, n_ctx=512, adapters=adapters)
        ) as eng:

            def requests(rotate: bool) -> float:
                t0 = time.perf_counter()
                for i in range(REQUESTS):
                    eng.chat(prompt, adapter=f"a{i % 3 if rotate else 0}", **fields)
                return (time.perf_counter() - t0) * 1000 / REQUESTS

            requests(True)
            same, rotating = [], []
            for _ in range(args.repeats):
                same.append(requests(False))
                rotating.append(requests(True))

            # Two requests at once under two adapters: switching every step vs in turns (the default).
            long = {**fields, "max_tokens": CONCURRENT_TOKENS}
            sched = eng.scheduler
            concurrent: dict[str, list[float]] = {"same": [], "every_step": [], "turns": [], "one_switch": []}
            switches: dict[str, int] = {}
            _concurrent_ms(eng, prompt, long, ["a0", "a1"])  # warm-up
            for _ in range(args.repeats):
                for key, turn_s, names in (
                    ("same", ADAPTER_TURN_S, ["a0", "a0"]),
                    ("every_step", 0.0, ["a0", "a1"]),
                    ("turns", ADAPTER_TURN_S, ["a0", "a1"]),
                    ("one_switch", math.inf, ["a0", "a1"]),  # the floor: one request after the other
                ):
                    sched.adapter_turn_s = turn_s
                    before = sched.adapter_switches
                    concurrent[key].append(_concurrent_ms(eng, prompt, long, names))
                    switches[key] = sched.adapter_switches - before
            sched.adapter_turn_s = ADAPTER_TURN_S
        # Fastest of the repeats: other load on the machine only ever adds time.
        best = {k: min(v) for k, v in concurrent.items()}
        results["requests"] = {
            "request_ms_same_adapter": round(min(same), 2),
            "request_ms_rotating_adapters": round(min(rotating), 2),
            "per_request_switch_overhead_ms": round(min(rotating) - min(same), 3),
        }
        results["concurrent_two_adapters"] = {
            "tokens_per_request": CONCURRENT_TOKENS,
            "ms_same_adapter": round(best["same"], 1),
            "ms_switch_every_step": round(best["every_step"], 1),
            "ms_in_turns": round(best["turns"], 1),
            "ms_one_switch": round(best["one_switch"], 1),
            "turn_ms": ADAPTER_TURN_S * 1000,
            "switches_every_step": switches["every_step"],
            "switches_turns": switches["turns"],
            "overhead_every_step_pct": round(100 * (best["every_step"] / best["same"] - 1), 1),
            "overhead_turns_pct": round(100 * (best["turns"] / best["same"] - 1), 1),
        }
    sw, mem, cc = results["switch"], results["memory"], results["concurrent_two_adapters"]
    print(
        f"switch overhead {sw['switch_overhead_ms']:.3f} ms/decode (llama.cpp graph re-reserve "
        f"{sw['llama_reserve_ms']:.2f} ms; set call {sw['set_adapters_call_ms']:.4f} ms) "
        f"vs rebuilding the llama.cpp backend {results['reload_llama_cpp_backend_ms']:.0f} ms "
        f"({results['reload_over_switch']}x); "
        f"per request {results['requests']['per_request_switch_overhead_ms']:.3f} ms"
    )
    print(
        f"two concurrent requests on two adapters: +{cc['overhead_every_step_pct']}% switching every step "
        f"({cc['switches_every_step']} switches), +{cc['overhead_turns_pct']}% in turns of "
        f"{cc['turn_ms']:.0f} ms ({cc['switches_turns']} switches)"
    )
    print(
        f"RSS: 0 adapters {mem['adapters_0_mib']} MiB, 1: {mem['adapters_1_mib']} MiB, 3: {mem['adapters_3_mib']} MiB "
        f"(~{mem['per_adapter_mib']} MiB each; file {results['adapter_file_mib']} MiB)"
    )
    if "mlx_lm" in results:
        print(f"mlx-lm: load(adapter_path=...) {results['mlx_lm']['load_with_adapter_ms']:.0f} ms (median)")
    return results


def mlx_lm_adapter_load_ms(mlx_dir: Path, work: Path, repeats: int) -> dict[str, Any]:
    """mlx-lm's adapter switch as its users make it: ``mlx_lm.load(mlx_dir, adapter_path=...)`` with a random
    rank-``DEFAULT_RANK`` adapter in mlx-lm's own format (written by mlx-lm's LoRA layers), weights
    materialised; the median of ``repeats``."""
    from ..errors import MissingExtraError

    try:
        import mlx.core as mx
        import mlx_lm
        from mlx.utils import tree_flatten
        from mlx_lm.tuner.utils import linear_to_lora_layers
    except ImportError as exc:
        raise MissingExtraError("bench lora --mlx-model", "mlx") from exc
    model = mlx_lm.load(str(mlx_dir))[0]
    model.freeze()
    keys = [f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    keys += [f"mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")]
    config = {"rank": DEFAULT_RANK, "scale": 2.0, "dropout": 0.0, "keys": keys}
    linear_to_lora_layers(model, len(model.layers), config)
    work.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(work / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    meta = {"fine_tune_type": "lora", "num_layers": len(model.layers), "lora_parameters": config}
    (work / "adapter_config.json").write_text(json.dumps(meta), encoding="utf-8")
    del model
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loaded = mlx_lm.load(str(mlx_dir), adapter_path=str(work))[0]
        mx.eval(loaded.parameters())
        times.append((time.perf_counter() - t0) * 1000)
        del loaded
    return {
        "model": str(mlx_dir),
        "load_with_adapter_ms": round(statistics.median(times), 1),
        "repeats": repeats,
    }
