"""OpenAI function tools from the command line: `run --tools FILE` prints each call as one JSON line,
`chat --tools FILE` asks you for each call's result and lets the model go on (real processes, real model)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from .test_tool_calling import ADD

QUESTION = "What is 2 + 3? Use a tool."
FLAGS = ("--max-tokens", "48", "--temp", "0", "-t", "1", "-c", "1024", "-np", "1")


def edgereason(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgereason", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def tools_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tools") / "tools.json"
    path.write_text(json.dumps([ADD]))
    return path


def _calls(stdout: str) -> list[dict[str, object]]:
    """The JSON call lines (in chat, after the "> " or "result of ...> " prompt on the same line)."""
    return [json.loads(m) for m in re.findall(r'\{"id": "call_.*\}\}$', stdout, flags=re.M)]


def test_run_prints_a_forced_call_as_json(tools_file: Path) -> None:
    r = edgereason("run", QUESTION, "--tools", str(tools_file), "--tool-choice", "add", *FLAGS)
    assert r.returncode == 0, r.stderr
    calls = _calls(r.stdout)
    assert len(calls) == 1 and calls[0]["type"] == "function"
    function = calls[0]["function"]
    assert isinstance(function, dict) and function["name"] == "add"
    jsonschema.validate(json.loads(function["arguments"]), ADD["function"]["parameters"])  # type: ignore[index]


def test_chat_asks_for_each_result_and_goes_on(tools_file: Path) -> None:
    # Forced to call add on every turn: the first call gets "5" typed back, the model calls again, and
    # end of input at the next result prompt ends the chat.
    r = edgereason(
        "chat", "--tools", str(tools_file), "--tool-choice", "add", *FLAGS, stdin=f"{QUESTION}\n5\n"
    )
    assert r.returncode == 0, r.stderr
    assert len(_calls(r.stdout)) == 2  # the second came after the tool message with the first's result
    assert r.stdout.count("result of add(") == 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--tool-choice", "required"), "--tool-choice needs --tools FILE"),
        (("--tools", "/nonexistent/tools.json"), "cannot read --tools /nonexistent/tools.json"),
    ],
)
def test_bad_tool_flags_are_one_line(args: tuple[str, ...], needle: str) -> None:
    r = edgereason("run", QUESTION, *args, "--max-tokens", "4")
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr


def test_tools_that_are_not_tools_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "tools.json"
    bad.write_text('[{"type": "function"}]')
    r = edgereason("run", QUESTION, "--tools", str(bad), "--max-tokens", "4")
    assert r.returncode == 2 and "tools" in r.stderr and "Traceback" not in r.stderr
