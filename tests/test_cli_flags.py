"""llama.cpp-style flags, penalties, KV cache types and stdin prompts on the real CLI (issues 19, 20, 25)."""

from __future__ import annotations

import json
import subprocess
import sys

from edgereason.cli.main import build_parser


def run(*args: str, stdin: str | None = None, timeout: int = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgereason", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
    )


def test_llama_cpp_spellings_parse() -> None:
    p = build_parser()
    a = p.parse_args(["run", "hi", "-t", "2", "--temp", "0.5", "-c", "512", "-np", "3", "-m", "student"])
    assert (a.threads, a.temperature, a.n_ctx, a.max_sequences, a.model) == (2, 0.5, 512, 3, "student")
    s = p.parse_args(["serve", "my.gguf", "-c", "512", "-np", "3", "-t", "1", "--served-model-name", "foo"])
    assert (s.model_positional, s.n_ctx, s.max_sequences, s.threads, s.alias) == ("my.gguf", 512, 3, 1, "foo")
    e = p.parse_args(["eval", "--model", "x", "--max-sequences", "4", "--cache-type-k", "q8_0"])
    assert (e.max_sequences, e.cache_type_k) == (4, "q8_0")


def test_run_with_penalties_and_quantised_kv() -> None:
    # Before the fix any penalty printed a TypeError traceback from llama_sampler_init_penalties.
    r = run(
        "run", "Say cat dog cat dog.", "--max-tokens", "8", "--temp", "0", "--json", "-c", "512", "-np", "1",
        "-t", "1", "--repeat-penalty", "1.1", "--presence-penalty", "0.5", "--frequency-penalty", "0.5",
        "--cache-type-k", "q8_0", "--cache-type-v", "q8_0",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert json.loads(r.stdout)["usage"]["completion_tokens"] >= 1


def test_run_reads_the_prompt_from_stdin() -> None:
    r = run(
        "run", "--max-tokens", "4", "--temp", "0", "--json", "-c", "256", "-np", "1", stdin="What is 2 + 2?\n"
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["usage"]["prompt_tokens"] > 5
    empty = run("run", "--max-tokens", "4", stdin="  \n")
    assert empty.returncode == 2 and "standard input is empty" in empty.stderr
