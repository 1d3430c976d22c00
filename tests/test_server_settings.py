"""Server settings from a config file (JSON or TOML) and EDGEREASON_* variables: flags > env > file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from edgereason.cli.main import build_parser
from edgereason.errors import EdgeReasonError
from edgereason.server.settings import ServerSettings, settings_from_args

FILE_SETTINGS = {
    "model": "default",
    "port": 9001,
    "alias": "from-file",
    "n-ctx": 256,  # the flag's spelling works in a file too
    "max_queue": 7,
    "cors_origin": ["http://a.example"],
    "adapter": {"math": "/adapters/math.gguf:0.5"},
}
TOML = """
model = "default"
port = 9001
alias = "from-file"
n-ctx = 256
max_queue = 7
cors_origin = ["http://a.example"]

[adapter]
math = "/adapters/math.gguf:0.5"
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("EDGEREASON_") and name != "EDGEREASON_MODELS_DIR":
            monkeypatch.delenv(name)


def _serve(*flags: str) -> ServerSettings:
    return settings_from_args(build_parser().parse_args(["serve", *flags]))


def _check_file_values(s: ServerSettings) -> None:
    assert (s.model, s.port, s.alias, s.n_ctx, s.max_queue) == ("default", 9001, "from-file", 256, 7)
    assert s.cors_origin == ["http://a.example"]
    assert s.adapter == {"math": "/adapters/math.gguf:0.5"}
    (spec,) = s.adapter_specs()
    assert (spec.name, str(spec.path), spec.scale) == ("math", "/adapters/math.gguf", 0.5)


def test_json_file_from_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "serve.json"
    path.write_text(json.dumps(FILE_SETTINGS))
    _check_file_values(_serve("--config-file", str(path)))
    _check_file_values(ServerSettings(config_file=path))


def test_toml_file_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tomllib", reason="TOML config files need Python 3.11+")
    path = tmp_path / "serve.toml"
    path.write_text(TOML)
    monkeypatch.setenv("EDGEREASON_CONFIG_FILE", str(path))
    _check_file_values(_serve())


def test_flags_beat_env_beat_file_beat_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "serve.json"
    path.write_text(json.dumps({"port": 9001, "alias": "from-file", "max_queue": 7, "threads": 3}))
    assert _serve().port == 8000  # defaults alone

    monkeypatch.setenv("EDGEREASON_PORT", "9002")
    monkeypatch.setenv("EDGEREASON_ALIAS", "from-env")
    s = _serve("--config-file", str(path))
    assert (s.port, s.alias, s.max_queue, s.threads) == (9002, "from-env", 7, 3)

    s = _serve("--config-file", str(path), "--port", "9003", "--threads", "1")
    assert (s.port, s.alias, s.max_queue, s.threads) == (9003, "from-env", 7, 1)
    # llama-server's spelling of a flag is the same flag.
    assert _serve("--config-file", str(path), "-c", "512").n_ctx == 512

    monkeypatch.delenv("EDGEREASON_PORT")
    assert _serve("--config-file", str(path)).port == 9001


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("bad.json", "{port: 1", r"config file .*bad\.json is not valid json"),
        ("bad.toml", "port = = 1", r"config file .*bad\.toml is not valid toml"),
        ("list.json", "[1, 2]", "must hold an object of settings"),
        ("typo.json", '{"prot": 9001}', r"invalid setting prot"),
        ("range.json", '{"port": 70000}', r"invalid setting port"),
        ("type.json", '{"n_ctx": "lots"}', r"invalid setting n_ctx"),
    ],
)
def test_bad_config_files_are_one_clear_error(tmp_path: Path, name: str, text: str, match: str) -> None:
    if name.endswith(".toml"):
        pytest.importorskip("tomllib", reason="TOML config files need Python 3.11+")
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(EdgeReasonError, match=match):
        _serve("--config-file", str(path))


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(EdgeReasonError, match=r"cannot read config file .*nope\.json"):
        _serve("--config-file", str(tmp_path / "nope.json"))


def test_serve_process_uses_file_and_env(tmp_path: Path) -> None:
    """A real `edgereason serve`: the file sets the model, context and key; the environment the name."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    path = tmp_path / "serve.json"
    path.write_text(json.dumps({"port": port, "n_ctx": 256, "threads": 1, "api_key": "from-file"}))
    env = {**os.environ, "EDGEREASON_ALIAS": "from-env"}
    cmd = [sys.executable, "-m", "edgereason", "serve", "--config-file", str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "serve exited"
            assert time.monotonic() < deadline, "serve never became healthy"
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert httpx.get(f"{base}/v1/models").status_code == 401
        models = httpx.get(f"{base}/v1/models", headers={"authorization": "Bearer from-file"}).json()
        assert [m["id"] for m in models["data"]] == ["from-env"]
        assert models["data"][0]["meta"]["n_ctx"] == 256
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
