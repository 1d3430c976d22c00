"""The edgereason command as a user runs it: real processes, real model, real bad files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import edgereason as er
from edgereason.cli.flags import apply_env
from edgereason.cli.main import build_parser


def run(*args: str, timeout: int = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgereason", *args], capture_output=True, text=True, timeout=timeout
    )


def test_version() -> None:
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("edgereason ")


@pytest.mark.parametrize("cmd", [[], ["run"], ["chat"], ["models"], ["bench"]])
def test_help_on_every_command(cmd: list[str]) -> None:
    r = run(*cmd, "--help")
    assert r.returncode == 0 and "usage:" in r.stdout


def test_run_json() -> None:
    r = run("run", "What is 12 + 7?", "--max-tokens", "24", "--temperature", "0", "--json")
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    assert set(obj) >= {"content", "reasoning", "answer", "finish_reason", "usage"}
    assert obj["usage"]["completion_tokens"] > 0


def test_run_streams_reasoning_to_stderr_answer_to_stdout() -> None:
    r = run("run", "What is 12 + 7?", "--max-tokens", "40", "--temperature", "0", "--thinking", "on")
    assert r.returncode == 0, r.stderr
    ref = json.loads(
        run(
            "run", "What is 12 + 7?", "--max-tokens", "40", "--temperature", "0", "--thinking", "on", "--json"
        ).stdout
    )
    assert ref["reasoning"] and ref["reasoning"].strip() in r.stderr
    assert r.stdout.strip() == ref["content"].strip()


def test_models_lists_default() -> None:
    r = run("models", "--json")
    assert r.returncode == 0, r.stderr
    entries = json.loads(r.stdout)
    default = next(e for e in entries if e["name"] == "default")
    assert default["format"] == "gguf" and default["architecture"] == "llama"
    assert default["quantization"] == "Q4_1" and default["chat_template"] is True


def _one_line_error(r: subprocess.CompletedProcess[str], needle: str) -> None:
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert needle in lines[0]


def test_missing_model_path(tmp_path: Path) -> None:
    _one_line_error(run("run", "hi", "--model", str(tmp_path / "nope.gguf")), "not found")


def test_not_a_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_text("this is not a model")
    _one_line_error(run("run", "hi", "--model", str(bad)), "not a GGUF")


def test_truncated_gguf(tmp_path: Path, model_path: Path) -> None:
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(model_path.read_bytes()[:5_000_000])
    _one_line_error(run("run", "hi", "--model", str(bad)), "truncated")


def test_truncated_header(tmp_path: Path, model_path: Path) -> None:
    bad = tmp_path / "cut.gguf"
    with model_path.open("rb") as fh:
        bad.write_bytes(fh.read(1000))
    _one_line_error(run("run", "hi", "--model", str(bad)), "truncated")


@pytest.mark.parametrize(
    "args,needle",
    [
        (["run", "hi", "--thinking", "maybe"], "--thinking"),
        (["run", "hi", "--temperature", "hot"], "--temperature"),
        (["run", "hi", "--temperature", "-3"], "temperature"),
        (["run", "hi", "--reasoning-format", "bogus"], "--reasoning-format"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_option_values(args: list[str], needle: str) -> None:
    _one_line_error(run(*args), needle)


def test_chat_keeps_history() -> None:
    first, second = "My name is Ada.", "What is my name?"
    proc = subprocess.run(
        [sys.executable, "-m", "edgereason", "chat", "--max-tokens", "12", "--temperature", "0"],
        input=f"{first}\n{second}\n/reset\n{second}\n/exit\n",
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    # stdout: "> " before each input line, each reply ending in a newline; /reset prints nothing.
    turns = proc.stdout.split("> ")
    assert turns[0] == "" and turns[-1] == "" and turns[3] == ""
    replies = [turns[1], turns[2], turns[4]]
    assert all(r.endswith("\n") and r.strip() for r in replies), proc.stdout
    a1, a2, a3 = (r.strip() for r in replies)
    # The replies are the library's greedy replies to the same messages, asked in the same order on a
    # fresh engine (the second turn reuses the first turn's cached tokens in both, which matters:
    # llama.cpp's logits differ in the last bits between cached and re-read prompts).
    chat = dict(max_tokens=12, temperature=0.0)
    user1, user2 = {"role": "user", "content": first}, {"role": "user", "content": second}
    with er.load() as fresh:
        assert fresh.chat([user1], **chat).content.strip() == a1
        history = [user1, {"role": "assistant", "content": a1}, user2]
        assert fresh.chat(history, **chat).content.strip() == a2
        assert fresh.chat([user2], **chat).content.strip() == a3
    assert a2 != a3  # the first exchange changed the reply to the same question


def test_models_dir(tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tiny.gguf").symlink_to(model_path)
    monkeypatch.setenv("EDGEREASON_MODELS_DIR", str(tmp_path))
    r = run("models", "--json")
    assert any(e["path"].endswith("tiny.gguf") for e in json.loads(r.stdout))
    r = run("run", "hi", "--model", "tiny", "--max-tokens", "4", "--json")
    assert r.returncode == 0, r.stderr


# EDGEREASON_* settings: every command with model or generation flags reads them (serve through its
# settings schema, tests/test_server_settings.py); a flag wins over the variable.


def run_env(*args: str, env: dict[str, str], timeout: int = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgereason", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )


def test_run_reads_generation_settings_from_env_and_flags_win() -> None:
    env = {"EDGEREASON_MAX_TOKENS": "3", "EDGEREASON_TEMP": "", "EDGEREASON_TEMPERATURE": "0"}
    prompt = "Count from one to twenty in words."
    by_env = run_env("run", prompt, "--json", "-c", "256", "-np", "1", env=env)
    assert by_env.returncode == 0, by_env.stderr
    first = json.loads(by_env.stdout)
    assert (first["usage"]["completion_tokens"], first["finish_reason"]) == (3, "length")
    by_flag = run_env("run", prompt, "--json", "-c", "256", "-np", "1", "--max-tokens", "5", env=env)
    second = json.loads(by_flag.stdout)
    assert (second["usage"]["completion_tokens"], second["finish_reason"]) == (5, "length")
    # Greedy from the variable: the 5-token answer starts with the 3-token one.
    assert second["content"].startswith(first["content"])


def test_run_reads_the_model_from_env(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.gguf")
    _one_line_error(run_env("run", "hi", env={"EDGEREASON_MODEL": missing}), "not found")
    r = run_env(
        "run", "hi", "-m", "default", "--max-tokens", "2", "--json", env={"EDGEREASON_MODEL": missing}
    )
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "name,value,needle",
    [
        ("EDGEREASON_N_CTX", "lots", "EDGEREASON_N_CTX='lots': not a valid int"),
        ("EDGEREASON_BACKEND", "cuda", "EDGEREASON_BACKEND='cuda': use one of auto"),
        ("EDGEREASON_THINKING", "maybe", "EDGEREASON_THINKING='maybe'"),
        ("EDGEREASON_CACHE_TYPE_K", "q2", "EDGEREASON_CACHE_TYPE_K='q2'"),
    ],
)
def test_bad_env_values_are_one_line_errors(name: str, value: str, needle: str) -> None:
    _one_line_error(run_env("run", "hi", env={name: value}), needle)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "hi"],
        ["chat"],
        ["eval", "--model", "x"],
        ["bench", "decode"],
        ["app"],
    ],
)
def test_every_model_command_reads_env(argv: list[str]) -> None:
    env = {"EDGEREASON_N_CTX": "512", "EDGEREASON_THREADS": "3", "EDGEREASON_CACHE_TYPE_V": "q8_0"}
    args = build_parser().parse_args(argv)
    apply_env(args, env)
    assert (args.n_ctx, args.threads, args.cache_type_v, args.cache_type_k) == (512, 3, "q8_0", "f16")
    assert args.backend == "auto"
    given = build_parser().parse_args([*argv, "-c", "1024", "--threads", "1"])
    apply_env(given, env)
    assert (given.n_ctx, given.threads) == (1024, 1)
    bare = build_parser().parse_args(argv)
    apply_env(bare, {})
    assert (bare.n_ctx, bare.threads, bare.cache_type_v) == (None, None, "f16")


def test_generation_env_parses_as_the_flags_do() -> None:
    env = {"EDGEREASON_THINKING": "off", "EDGEREASON_THINKING_BUDGET": "auto", "EDGEREASON_SEED": "7"}
    args = build_parser().parse_args(["run", "hi"])
    apply_env(args, env)
    assert (args.thinking, args.thinking_budget, args.seed, args.temperature) == (False, "auto", 7, None)


def test_threads_is_t_and_temperature_is_temp() -> None:
    # -t was temperature before; as in llama.cpp it is now threads and takes an integer.
    _one_line_error(run("run", "hi", "-t", "0.5"), "-t")
    args = build_parser().parse_args(["chat", "-t", "2", "--temp", "0.7"])
    assert (args.threads, args.temperature) == (2, 0.7)


def test_serve_takes_the_model_once() -> None:
    _one_line_error(run("serve", "a.gguf", "--model", "b.gguf"), "give the model once")
