"""``edgereason bench convert``: conversion wall time, peak memory and output size per target and quantisation.

Two sources: the embedded SmolLM2-135M GGUF (dequantised through transformers on the way to MLX/ONNX, and
re-quantised for GGUF) and a random checkpoint of Qwen2.5-0.5B's shape (hidden 896, 14 heads, 2 KV heads,
MLP 4864, Qwen's 151k vocabulary) built locally. ``EDGEREASON_BENCH_CONVERT_LAYERS`` sets its layer
count (default 24, the real model's); fewer layers keep the run short on small machines, and the JSON
records the count used. Every conversion runs ``edgereason convert`` in a child process; peak memory is
that child's (and its children's) ``ru_maxrss`` from ``wait4``.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError

log = logging.getLogger(__name__)

QWEN05_SHAPE = {"hidden": 896, "heads": 14, "kv_heads": 2, "intermediate": 4864}
DEFAULT_LAYERS = 24
LAYERS_ENV = "EDGEREASON_BENCH_CONVERT_LAYERS"
JOBS: tuple[tuple[str, str], ...] = (
    ("gguf", "f32"),
    ("gguf", "f16"),
    ("gguf", "bf16"),
    ("gguf", "q8_0"),
    ("gguf", "q6_k"),
    ("gguf", "q5_k_m"),
    ("gguf", "q4_k_m"),
    ("gguf", "q4_0"),
    ("mlx", "f16"),
    ("mlx", "8"),
    ("mlx", "4"),
    ("onnx", "fp32"),
    ("onnx", "int8"),
    ("onnx", "int4"),
)


def _size_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _run_child(command: list[str]) -> tuple[int, float, float, str]:
    """(exit status, wall seconds, peak RSS MiB of the child tree, stderr tail) of ``command``."""
    started = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        err.seek(0)
        tail = err.read()[-600:]
    # Linux reports ru_maxrss in KiB, covering the child and the descendants it waited for.
    return proc.returncode, seconds, usage.ru_maxrss / 1024, tail


def _convert_job(src: Path, out: Path, target: str, quant: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "edgereason.cli", "convert", str(src), "-o", str(out), "--to", target]
    command += ["--quant", quant, "--force"]
    rc, seconds, peak_mib, tail = _run_child(command)
    row: dict[str, Any] = {"target": target, "quant": quant, "seconds": round(seconds, 1)}
    row["peak_rss_mib"] = round(peak_mib)
    if rc != 0:
        row["error"] = tail.strip().splitlines()[-1] if tail.strip() else f"exit {rc}"
        log.warning("convert %s -> %s %s failed: %s", src.name, target, quant, row["error"])
        return row
    row["size_mib"] = round(_size_bytes(out) / 2**20, 2)
    _remove(out)
    log.info(
        "%s -> %s %s: %.1fs, peak %d MiB, %.1f MiB",
        src.name,
        target,
        quant,
        seconds,
        peak_mib,
        row["size_mib"],
    )
    return row


def _remove(out: Path) -> None:
    import shutil

    if out.is_dir():
        shutil.rmtree(out)
    else:
        out.unlink(missing_ok=True)
        out.with_name(f"{out.stem}.edgereason.json").unlink(missing_ok=True)


def _bench_source(name: str, src: Path, work: Path) -> dict[str, Any]:
    rows = []
    for target, quant in JOBS:
        out = work / f"{name}-{target}-{quant}" if target != "gguf" else work / f"{name}-{quant}.gguf"
        rows.append(_convert_job(src, out, target, quant))
        print(f"{name:>10} -> {target:<4} {quant:<7} {_format_row(rows[-1])}", flush=True)
    return {"source": str(src), "conversions": rows}


def _format_row(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"FAILED: {row['error']}"
    return f"{row['seconds']:>7.1f} s  peak {row['peak_rss_mib']:>6} MiB  {row['size_mib']:>9.1f} MiB"


def _make_qwen05(out: Path, layers: int) -> Path:
    # In a child process: the children measured later would otherwise report this process's memory high
    # water mark (exec records the parent's peak when the child is spawned with vfork).
    code = (
        "import sys; from pathlib import Path; from edgereason.convert.tiny import make_tiny_checkpoint; "
        f"make_tiny_checkpoint('qwen2', Path(sys.argv[1]), layers={layers}, **{QWEN05_SHAPE!r})"
    )
    rc, _, _, tail = _run_child([sys.executable, "-c", code, str(out)])
    if rc != 0:
        raise ModelLoadError(f"building the 0.5B-shaped checkpoint failed: {tail}")
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..convert.tiny import embedded_gguf_path

    layers = int(os.environ.get(LAYERS_ENV, DEFAULT_LAYERS))
    results: dict[str, Any] = {"cpu_count": os.cpu_count(), "qwen05_layers": layers}
    with tempfile.TemporaryDirectory(prefix="edgereason-bench-convert-") as tmp:
        work = Path(tmp)
        results["embedded"] = _bench_source("smollm2", embedded_gguf_path(), work)
        started = time.perf_counter()
        src = _make_qwen05(work / "qwen05-hf", layers)
        results["qwen05_build_seconds"] = round(time.perf_counter() - started, 1)
        results["qwen05_hf_mib"] = round(_size_bytes(src) / 2**20, 1)
        results["qwen05"] = _bench_source("qwen05", src, work)
    return results
