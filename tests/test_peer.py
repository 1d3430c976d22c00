"""llama.cpp's llama-server as a peer: flag mapping, the cache, starting/stopping the real binary, and the
``bench peer --quick`` plumbing. The real-binary tests need ``python -m edgereason.peer build`` once."""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
import warnings
from pathlib import Path

import pytest

from edgereason import peer
from edgereason.bench import peer as bench_peer
from edgereason.peer import PeerError, ServerLayout


@pytest.fixture(scope="module")
def llama_server() -> Path:
    binary = peer.find_llama_server()
    if binary is None:
        message = (
            "\n" + "!" * 78 + "\nSKIPPING llama-server peer tests: " + peer.how_to_build() + "\n" + "!" * 78
        )
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    return binary


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_flags_map_per_sequence_context_to_total_and_slots() -> None:
    argv = peer.llama_server_args("/m.gguf", ServerLayout(threads=2, ctx_per_slot=3072, slots=8), port=8123)
    # EdgeReason's n_ctx is per sequence; llama-server's -c is the total it splits over -np slots.
    assert _flag(argv, "--ctx-size") == str(3072 * 8)
    assert _flag(argv, "--parallel") == "8"
    assert "--no-kv-unified" in argv and "--kv-unified" not in argv
    assert _flag(argv, "--threads") == _flag(argv, "--threads-batch") == "2"
    assert _flag(argv, "--batch-size") == _flag(argv, "--ubatch-size") == "512"
    assert _flag(argv, "--flash-attn") == "off"
    assert _flag(argv, "--host") == "127.0.0.1" and _flag(argv, "--port") == "8123"
    assert _flag(argv, "--model") == "/m.gguf"


def test_flags_follow_the_layout_and_append_extra_args() -> None:
    layout = ServerLayout(threads=1, ctx_per_slot=512, slots=3, n_batch=128, flash_attn=True)
    argv = peer.llama_server_args(Path("x.gguf"), layout, port=1, extra_args=["--alias", "bench"])
    assert _flag(argv, "--ctx-size") == "1536" and _flag(argv, "--parallel") == "3"
    assert _flag(argv, "--ubatch-size") == "128" and _flag(argv, "--flash-attn") == "on"
    assert argv[-2:] == ["--alias", "bench"]


@pytest.mark.parametrize(
    "layout", [ServerLayout(0, 512, 1), ServerLayout(1, 8, 1), ServerLayout(1, 512, 0)], ids=str
)
def test_flags_refuse_an_invalid_layout(layout: ServerLayout) -> None:
    with pytest.raises(PeerError, match="invalid layout"):
        peer.llama_server_args("m.gguf", layout, port=1)


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_find_prefers_the_env_var_then_the_versioned_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(peer.BINARY_ENV, raising=False)
    assert peer.find_llama_server("9.9.9") is None
    cached = _executable(tmp_path / "cache" / "edgereason" / "llama-server-9.9.9" / "bin" / "llama-server")
    assert peer.find_llama_server("9.9.9") == cached
    assert peer.find_llama_server("9.9.8") is None  # another llama-cpp-python version: another build
    mine = _executable(tmp_path / "elsewhere" / "llama-server")
    monkeypatch.setenv(peer.BINARY_ENV, str(mine))
    assert peer.find_llama_server("9.9.9") == mine
    monkeypatch.setenv(peer.BINARY_ENV, str(tmp_path / "missing"))
    assert peer.find_llama_server("9.9.9") == cached


def test_build_returns_a_cached_binary_without_building(tmp_path: Path) -> None:
    cached = _executable(tmp_path / "llama-server-9.9.9" / "bin" / "llama-server")
    # No sdist, no pip, no cmake run: the lock is taken, the binary found, and nothing else happens.
    assert peer.build_llama_server("9.9.9", cache=tmp_path) == cached
    assert (tmp_path / "llama-server-9.9.9.lock").exists()


def test_a_second_build_waits_for_the_first_and_takes_its_binary(tmp_path: Path) -> None:
    binary = tmp_path / "llama-server-9.9.9" / "bin" / "llama-server"
    holding = threading.Event()

    def first_build() -> None:
        with peer._build_lock(tmp_path / "llama-server-9.9.9.lock"):
            holding.set()
            time.sleep(1.0)
            _executable(binary)  # finished while the second caller waited

    first = threading.Thread(target=first_build)
    first.start()
    assert holding.wait(10)
    t0 = time.monotonic()
    # Without the lock this would find no binary and start downloading the sdist.
    assert peer.build_llama_server("9.9.9", cache=tmp_path) == binary
    assert time.monotonic() - t0 > 0.5
    first.join()


def _tarball(path: Path, names: list[str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name in names:
            data = b"cmake_minimum_required(VERSION 3.14)\n"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_extract_takes_only_the_vendored_llama_cpp(tmp_path: Path) -> None:
    sdist = _tarball(
        tmp_path / "llama_cpp_python-9.9.9.tar.gz",
        [
            "llama_cpp_python-9.9.9/CMakeLists.txt",
            "llama_cpp_python-9.9.9/llama_cpp/llama.py",
            "llama_cpp_python-9.9.9/vendor/llama.cpp/CMakeLists.txt",
            "llama_cpp_python-9.9.9/vendor/llama.cpp/tools/server/server.cpp",
        ],
    )
    root = peer.extract_llama_cpp(sdist, tmp_path / "src")
    assert root == tmp_path / "src" / "llama_cpp_python-9.9.9" / "vendor" / "llama.cpp"
    assert (root / "tools" / "server" / "server.cpp").is_file()
    assert not (tmp_path / "src" / "llama_cpp_python-9.9.9" / "llama_cpp").exists()


def test_extract_refuses_an_sdist_without_llama_cpp(tmp_path: Path) -> None:
    sdist = _tarball(tmp_path / "other-1.0.tar.gz", ["other-1.0/setup.py"])
    with pytest.raises(PeerError, match="no vendor/llama.cpp"):
        peer.extract_llama_cpp(sdist, tmp_path / "src")


def test_build_checks_a_given_sdist_against_the_known_hash(tmp_path: Path) -> None:
    sdist = _tarball(tmp_path / "llama_cpp_python-0.3.36.tar.gz", ["x/vendor/llama.cpp/CMakeLists.txt"])
    with pytest.raises(PeerError, match="expected 832db069"):
        peer.build_llama_server("0.3.36", cache=tmp_path / "cache", sdist=sdist)
    assert not (tmp_path / "cache" / "llama-server-0.3.36").exists()


def _vmrss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_process_tree_rss_counts_children() -> None:
    code = "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); time.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        children: list[str] = []
        while not children and time.monotonic() < deadline:
            time.sleep(0.1)
            children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
        assert children, "the child process did not start"
        child_alone = peer.process_tree_rss_mib(int(children[0]))
        parent_alone = _vmrss_mib(parent.pid)
        assert child_alone > 1
        assert peer.process_tree_rss_mib(parent.pid) == pytest.approx(parent_alone + child_alone, rel=0.05)
    finally:
        parent.kill()
        parent.wait()
    assert peer.process_tree_rss_mib(parent.pid) == 0


def test_summary_takes_medians_and_ratios_ours_over_theirs() -> None:
    plan = bench_peer.Plan(tokens=32, slots=8, rounds=3, long_prompt=False)

    def rnd(tok_s: float, ttft: float) -> dict[str, object]:
        return {
            "one_client": {"tok_s": tok_s},
            "multi_turn": {"last_turn_ttft_ms": ttft},
            "rss_mib": 500.0,
            "decode_per_token_ms": tok_s / 5,
        }

    results = {
        "edgereason": [rnd(60, 900), rnd(70, 1000), rnd(65, 5000)],
        "llama-server": [rnd(80, 500), rnd(75, 400), rnd(90, 450)],
    }
    rows = {r["workload"]: r for r in bench_peer.summarise(results, plan)}
    one = rows["1 client, 3 x 32 tokens, tok/s"]
    assert (one["edgereason"], one["llama_server"], one["ratio"]) == (65, 80, 0.81)
    ttft = rows["6-turn chat, 6th-turn TTFT, ms"]
    assert (ttft["edgereason"], ttft["llama_server"], ttft["ratio"]) == (1000, 450, 2.22)
    probe = rows["bare decode loop, ms per token (ours: backend alone; llama-server: its own timing)"]
    assert (probe["edgereason"], probe["llama_server"], probe["ratio"]) == (13, 16, 0.81)
    assert not any("ITL" in name or "gap" in name for name in rows)  # not measured: no row
    table = bench_peer.format_table(list(rows.values()))
    assert "| 1 client, 3 x 32 tokens, tok/s | 65.0 | 80.0 | 0.81 |" in table


def test_bare_decode_probe_times_the_backend_alone(model_path: Path) -> None:
    layout = ServerLayout(threads=1, ctx_per_slot=512, slots=2)
    assert 0 < bench_peer.bare_decode_ms(model_path, layout, 8) < 1000


def test_stream_result_reads_cached_tokens_from_either_server() -> None:
    ours = bench_peer.StreamResult(
        started=0.0, usages=[{"prompt_tokens": 700, "prompt_tokens_details": {"cached_tokens": 650}}]
    )
    theirs = bench_peer.StreamResult(started=0.0, timings={"prompt_n": 50, "cache_n": 650})
    assert (ours.prompt_tokens, ours.cached_tokens) == (700, 650)
    assert theirs.cached_tokens == 650
    assert bench_peer.StreamResult(started=0.0).cached_tokens is None


def test_stream_result_sums_llama_servers_per_choice_usage() -> None:
    # llama-server streams n > 1 as one usage chunk per choice; EdgeReason sends one for all.
    theirs = bench_peer.StreamResult(started=0.0, usages=[{"completion_tokens": 32}] * 2)
    ours = bench_peer.StreamResult(started=0.0, usages=[{"completion_tokens": 64}])
    assert theirs.completion_tokens == ours.completion_tokens == 64
    counted = bench_peer.StreamResult(started=0.0, token_times={0: [1.0, 2.0], 1: [1.5]})
    assert counted.completion_tokens == 3  # no usage reported: content chunks


def _refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_llama_server_starts_answers_greedy_chat_and_stops(llama_server: Path, model_path: Path) -> None:
    import httpx
    import openai

    # One thread: OpenMP's spinning threads crawl when the 2 cores are shared with other tests.
    with peer.start_llama_server(
        model_path, threads=1, ctx_per_slot=512, slots=2, extra_args=["--no-warmup"]
    ) as server:
        props = httpx.get(server.base_url + "/props", timeout=10).json()
        assert props["total_slots"] == 2
        assert props["default_generation_settings"]["n_ctx"] == 512  # per slot, like our n_ctx
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="none", max_retries=0)
        msgs = [{"role": "user", "content": "What is the capital of France?"}]
        a, b = (
            client.chat.completions.create(model="x", messages=msgs, max_tokens=12, temperature=0)  # type: ignore[arg-type]
            for _ in range(2)
        )
        text = a.choices[0].message.content or ""
        assert text.strip() and text == b.choices[0].message.content  # greedy: the same text twice
        # the bench's decode probe reads llama-server's own per-token timing (8 tokens: > 0 ms each)
        assert 0 < (bench_peer.llama_server_decode_ms(server.base_url, 8) or 0) < 1000
        proc = server.process
    assert proc.poll() is not None
    assert _refused(server.port)


def test_llama_server_start_reports_a_failing_binary(tmp_path: Path, model_path: Path) -> None:
    bad = tmp_path / "llama-server"
    bad.write_text("#!/bin/sh\necho 'no such model' >&2\nexit 3\n")
    bad.chmod(0o755)
    with (
        pytest.raises(PeerError, match=r"exited with 3:\nno such model"),
        peer.start_llama_server(model_path, threads=1, ctx_per_slot=256, slots=1, binary=bad),
    ):
        pass


def test_bench_peer_quick_runs_both_servers(llama_server: Path, tmp_path: Path) -> None:
    from edgereason.bench import run_bench

    args = argparse.Namespace(
        which="peer",
        model=None,
        n_ctx=None,
        threads=1,
        tokens=128,
        slots=2,
        rounds=2,
        quick=True,
        big=False,
        out=tmp_path,
    )
    assert run_bench(args) == 0
    res = json.loads((tmp_path / "peer.json").read_text())
    assert res["plan"] == {"tokens": 32, "slots": 2, "rounds": 1, "long_prompt": False, "decode_probe": False}
    emb = res["embedded"]
    for name in ("edgereason", "llama-server"):
        (r,) = emb["rounds"][name]
        assert r["one_client"]["tokens"] == 3 * 32  # ignore_eos: both decode every token asked for
        assert r["concurrent"]["tokens"] == 2 * 32
        assert r["n_samples"]["tokens"] == 2 * 32
        assert [t["ttft_ms"] > 0 for t in r["multi_turn"]["turns"]] == [True] * 6
        assert r["rss_mib"] > 50
    argv = emb["rounds"]["llama-server"][0]["argv"]
    assert _flag(argv, "--ctx-size") == str(2 * bench_peer.QUICK_N_CTX)
    # llama-server reuses the previous turn's KV: most of the 6th turn's prompt is cached.
    last = emb["rounds"]["llama-server"][0]["multi_turn"]
    assert last["last_turn_cached_tokens"] > last["last_turn_prompt_tokens"] / 2
    workloads = [row["workload"] for row in emb["table"]]
    assert workloads[:3] == [
        "1 client, 3 x 32 tokens, tok/s",
        "2 concurrent clients x 32 tokens, tok/s",
        "n=2 in one request, tok/s",
    ]
    assert all(row["ratio"] > 0 for row in emb["table"][:4])
    assert not any(row["workload"].startswith("bare decode") for row in emb["table"])  # --quick: no probe


def test_peer_cli_where_says_how_to_build(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    env.pop(peer.BINARY_ENV, None)
    proc = subprocess.run(
        [sys.executable, "-m", "edgereason.peer", "where"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 1
    assert "python -m edgereason.peer build" in proc.stderr
