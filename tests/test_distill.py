"""The distillation recipe's training loop, run for real: `distill --smoke` trains, converts and measures."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers", reason="needs the convert extra")
gguf = pytest.importorskip("gguf")

pytestmark = pytest.mark.convert


def test_smoke_run_trains_converts_and_measures_an_adapter(tmp_path: Path) -> None:
    out = tmp_path / "student"
    cmd = [sys.executable, "-m", "edgereason.convert.distill", "--out", str(out), "--smoke"]
    # 2 steps of 2 examples for the student only, measured on 2 dev problems.
    cmd += ["--roles", "student", "--eval-problems", "2", "--threads", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    printed = json.loads(proc.stdout)
    assert printed["accuracy"]["dev_student_greedy"]["n"] == 2

    # The LoRA GGUF: rank 8 on the 4 attention projections of all 30 layers, trained away from zero
    # (peft starts lora_b at zero, so a non-zero lora_b means the optimiser stepped).
    path = out / "student.gguf"
    reader = gguf.GGUFReader(path)
    assert reader.get_field("general.type").contents() == "adapter"
    assert reader.get_field("adapter.type").contents() == "lora"
    assert reader.get_field("adapter.lora.alpha").contents() == pytest.approx(16.0)
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 30 * 4 * 2
    assert tuple(int(x) for x in tensors["blk.0.attn_q.weight.lora_b"].shape) == (8, 576)
    assert any(np.any(t.data != 0) for name, t in tensors.items() if name.endswith("lora_b"))

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"] == "edgereason.convert.distill"
    assert (manifest["settings"]["steps"], manifest["settings"]["batch_size"]) == (2, 2)
    assert manifest["data"]["problems_per_role"] == 4
    report = manifest["adapters"]["student"]
    assert report["examples"] == 4 and report["steps"] == 2 and len(report["losses"]) == 2
    assert all(math.isfinite(x) and x > 0 for x in report["losses"])
    assert report["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert report["bytes"] == path.stat().st_size
    assert set(manifest["adapters"]) == {"student"} and not (out / "ir.gguf").exists()
