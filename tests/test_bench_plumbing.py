"""``edgereason bench``'s plumbing: each benchmark runs end to end through the CLI on small settings and
writes results whose counts follow from those settings. Nothing here checks a speed; it checks that the
benches still run and measure what they say (tokens decoded, rows per budget, state size per length).

``bench peer --quick`` is tested in test_peer.py (it skips, saying how to build llama-server, without one).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgereason.models import embedded_model_path


def _bench(tmp_path: Path, which: str, *flags: str) -> dict[str, Any]:
    from edgereason.cli.main import main

    out = tmp_path / "results"
    assert main(["bench", which, "--out", str(out), "--threads", "1", *flags]) == 0
    res: dict[str, Any] = json.loads((out / f"{which}.json").read_text())
    return res


def test_bench_decode(tmp_path: Path) -> None:
    res = _bench(tmp_path, "decode", "--tokens", "8", "--sequences", "2", "--repeats", "1")
    assert res["model"] == str(embedded_model_path())
    single, batched = res["single_stream"], res["batched"]
    assert single["edgereason_tok_s"] > 0 and single["llama_cpp_python_tok_s"] > 0
    assert single["ratio"] == pytest.approx(
        single["edgereason_tok_s"] / single["llama_cpp_python_tok_s"], rel=0.01
    )
    # ignore_eos: both the batched and the sequential run decode every token asked for.
    assert batched["sequences"] == 2 and batched["tokens"] == [2 * 8, 2 * 8]
    assert batched["wall_time_ratio"] == pytest.approx(
        batched["batched_s"] / batched["sequential_s"], rel=0.02
    )


def test_bench_serve(tmp_path: Path) -> None:
    res = _bench(tmp_path, "serve", "--tokens", "8", "--sequences", "2", "--repeats", "1")
    # One client sends `clients` requests in turn; two clients send one each; every token is decoded.
    assert res["one_client"] == {**res["one_client"], "clients": 1, "requests": 2, "tokens": 16}
    assert res["2_clients"] == {**res["2_clients"], "clients": 2, "requests": 2, "tokens": 16}
    assert res["ttft_s"]["server"] > 0 and res["ttft_s"]["python_api"] > 0
    if importlib.util.find_spec("starlette_context") is None:
        assert res["llama_cpp_server"].startswith("not installed")
    else:
        assert res["llama_cpp_server"]["2_clients"]["tokens"] == 16


def test_bench_structured(tmp_path: Path) -> None:
    res = _bench(tmp_path, "structured", "--tokens", "24", "--repeats", "1")
    rows = {r["format"]: r for r in res["rows"]}
    assert list(rows) == ["free", "json_object", "json_schema"]
    assert rows["free"]["completion_tokens"] == [24]  # ignore_eos: every token asked for
    for r in rows.values():
        assert 2 <= r["completion_tokens"][0] <= 24 and r["ms_per_token"] > 0
        assert r["vs_free"] == pytest.approx(r["ms_per_token"] / rows["free"]["ms_per_token"], rel=0.01)


@pytest.mark.slow  # about 80 s on a busy 2-core machine
def test_bench_votes(tmp_path: Path) -> None:
    flags = ("--tokens", "8", "--repeats", "1", "--problems", "2", "--answer-tokens", "16")
    res = _bench(tmp_path, "votes", *flags)
    batched = res["batched"]
    # 8 samples x 8 tokens on both sides (the baseline's end-of-generation token is biased away).
    assert batched["tokens"] == [64, 64]
    assert len(batched["edgereason_runs_s"]) == len(batched["llama_cpp_runs_s"]) == 1
    acc = res["accuracy"]
    assert acc["problems"] == 2 and len(acc["sc_at_k_accuracy"]) == 16
    assert set(acc["sc_at_k_accuracy"]) <= {0.0, 0.5, 1.0}
    assert acc["sc16_accuracy"] == acc["sc_at_k_accuracy"][-1]  # SC@16 re-tallied equals the run's own
    assert 1 <= acc["adaptive_mean_samples"] <= 16
    assert Path(res["plot"]).is_file()


@pytest.mark.slow  # about 50 s on a busy 2-core machine
def test_bench_budgets(tmp_path: Path) -> None:
    res = _bench(tmp_path, "budgets", "--tokens", "16", "--problems", "2", "--answer-tokens", "8")
    rows = {r["budget"]: r for r in res["rows"]}
    assert list(rows) == ["0", "32", "64", "128", "256", "auto", "uncapped"]
    assert rows["0"]["mean_reasoning_tokens"] == 0
    for budget in ("32", "64", "128", "256"):  # budget:N thinks at most N tokens, whatever --tokens says
        assert 0 < rows[budget]["mean_reasoning_tokens"] <= int(budget), rows[budget]
    assert 0 < rows["auto"]["mean_reasoning_tokens"] <= 16  # --tokens caps auto's thinking
    assert 0 < rows["uncapped"]["mean_reasoning_tokens"] <= 16 + 8  # and uncapped's whole reply
    assert "mean_probes" in rows["auto"]
    assert res["summary"]["auto_accuracy"] == rows["auto"]["accuracy"]
    assert Path(res["plot"]).is_file()


@pytest.mark.slow
def test_bench_lora(tmp_path: Path) -> None:
    # Its own process: the bench reads this process's RSS, and in a long test session earlier tests'
    # freed heap pages take the adapters' buffers without RSS growing (3235.9 MiB before and after).
    out = tmp_path / "results"
    cmd = [
        sys.executable,
        "-m",
        "edgereason",
        "bench",
        "lora",
        "--out",
        str(out),
        "--threads",
        "1",
        "--repeats",
        "1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res: dict[str, Any] = json.loads((out / "lora.json").read_text())
    mem = res["memory"]
    # Rank 16 over SmolLM2-135M's 7 projections in 30 layers, f32: 30 x 16 x 4 bytes x (q 576+576,
    # k 576+192, v 576+192, o 576+576, gate 576+1536, up 576+1536, down 1536+576) = 18.6 MiB.
    assert res["rank"] == 16 and res["adapter_file_mib"] == pytest.approx(18.63, abs=0.05)
    assert mem["adapters_3_mib"] > mem["adapters_0_mib"]  # llama.cpp copies adapter tensors in
    assert res["switch"]["decode_ms_fixed_adapter"] > 0 and res["switch"]["set_adapters_call_ms"] >= 0
    assert res["reload_llama_cpp_backend_ms"] > 0
    cc = res["concurrent_two_adapters"]
    # Two requests on two adapters with a turn of 0 s switch about once per decoded token.
    assert cc["switches_every_step"] >= cc["tokens_per_request"]
    assert cc["ms_same_adapter"] > 0 and cc["ms_one_switch"] > 0


def test_bench_remote_overhead() -> None:
    from edgereason.bench.remote import remote_overhead

    args = argparse.Namespace(model=None, n_ctx=None, threads=1, tokens=8, repeats=1)
    res = remote_overhead(args)
    for side in ("local", "remote"):
        assert res[side]["tokens"] == 8, res  # ignore_eos on both sides
        assert res[side]["tok_s"] > 0 and res[side]["ttft_ms"] > 0 and res[side]["round_trip_ms"] > 0


@pytest.mark.convert
@pytest.mark.slow
def test_bench_convert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers", reason="needs the convert extra")
    from edgereason.bench import convert as bench_convert

    # One quantisation per source and a one-layer, narrow stand-in for the 0.5B shape: the plumbing only.
    monkeypatch.setattr(bench_convert, "JOBS", (("gguf", "q8_0"),))
    monkeypatch.setattr(
        bench_convert, "QWEN05_SHAPE", {"hidden": 64, "heads": 4, "kv_heads": 2, "intermediate": 128}
    )
    monkeypatch.setenv(bench_convert.LAYERS_ENV, "1")
    res = _bench(tmp_path, "convert")
    assert res["qwen05_layers"] == 1
    for source in ("embedded", "qwen05"):
        (row,) = res[source]["conversions"]
        assert "error" not in row, row
        assert (row["target"], row["quant"]) == ("gguf", "q8_0")
        assert row["seconds"] > 0 and row["peak_rss_mib"] > 50 and row["size_mib"] > 0
    # The embedded SmolLM2-135M at 8 bits is about 140 MiB; the random stand-in is mostly its vocabulary.
    assert 100 < res["embedded"]["conversions"][0]["size_mib"] < 200


@pytest.mark.convert
@pytest.mark.slow  # about 85 s: three models built, converted and decoded
def test_bench_hybrid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers", reason="needs the convert extra")
    from edgereason.bench import hybrid

    monkeypatch.setattr(hybrid, "LENGTHS", (128, 256))
    res = _bench(tmp_path, "hybrid")
    state = {label: res[label]["sample_state_kib"] for label in ("transformer", "hybrid", "mamba2")}
    assert all(list(s) == ["128", "256"] for s in state.values())
    # Pure Mamba2 keeps a constant state; the transformer's KV grows with every token; the hybrid's one
    # attention layer grows at a quarter of the transformer's four.
    assert res["mamba2"]["per_1000_tokens_kib"] == 0 and state["mamba2"]["128"] == state["mamba2"]["256"]
    assert state["transformer"]["256"] > state["transformer"]["128"]
    ratio = res["hybrid"]["per_1000_tokens_kib"] / res["transformer"]["per_1000_tokens_kib"]
    assert ratio == pytest.approx(0.25, abs=0.02)
    for label in state:
        assert all(v > 0 for v in res[label]["decode_tok_s"].values())


@pytest.mark.convert
@pytest.mark.slow
def test_bench_backends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlx_lm", reason="needs the mlx extra")
    pytest.importorskip("onnxruntime_genai", reason="needs the onnx extra")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # converted here, not in ~/.cache
    res = _bench(tmp_path, "backends", "--tokens", "8", "--sequences", "2", "--repeats", "1")
    assert res["skipped"] == {}
    assert [r["backend"] for r in res["rows"]] == ["llama.cpp", "mlx", "onnx"]
    for row in res["rows"]:
        assert row["single_tok_s"] > 0 and row["batched_tok_s"] > 0, row
    assert [r["capabilities"]["lora"] for r in res["rows"]][0] is True
    assert res["remote"]["local"]["tokens"] == res["remote"]["remote"]["tokens"] == 8
