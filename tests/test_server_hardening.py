"""Issue 19's server defects (5, 6, 7, 9, /health) and the request fields other servers accept (22, 25).

Most tests drive one real `edgereason serve` process (embedded model, one thread) over loopback with
httpx and the official openai client; the engine-death tests inject a fault into a real engine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import edgereason as er
from edgereason.models import STUDENT_DIR, embedded_model_path
from edgereason.server.errors import strip_paths
from edgereason.server.guard import allowed_hosts, host_name

from .test_server import N_CTX, QUESTION, Server, _free_port, _start

APP_ORIGIN = "http://app.example"
MAX_BODY_MB = 1
ADAPTER_MB = 1859776 / 2**20  # the packaged student's adapters (LoRAs of the embedded SmolLM2)


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    folder = root / "served"
    folder.mkdir()
    shutil.copy(STUDENT_DIR / "ir.gguf", folder / "a.gguf")  # loaded at startup
    shutil.copy(STUDENT_DIR / "kg.gguf", folder / "default.gguf")  # reserved name: skipped
    shutil.copy(STUDENT_DIR / "dr.gguf", root / "outside.gguf")
    os.symlink(root / "outside.gguf", folder / "link.gguf")  # points out of the folder: skipped
    shutil.copy(STUDENT_DIR / "kg.gguf", folder / "b.gguf.bin")  # runtime loads (not *.gguf)
    shutil.copy(STUDENT_DIR / "dr.gguf", folder / "c.gguf.bin")
    (folder / "big.gguf.bin").write_bytes((STUDENT_DIR / "dr.gguf").read_bytes() + b"\0" * 2**20)
    (folder / "corrupt.gguf.bin").write_bytes((STUDENT_DIR / "dr.gguf").read_bytes()[:5000])
    return folder


@pytest.fixture(scope="module")
def server(adapter_dir: Path) -> Iterator[Server]:
    yield from _start(
        "--max-sequences",
        "4",
        "--alias",
        "smol",
        "--max-body-mb",
        str(MAX_BODY_MB),
        "--cors-origin",
        APP_ORIGIN,
        "--adapter-dir",
        str(adapter_dir),
        "--max-adapters",
        "2",
        "--max-adapter-mb",
        str(ADAPTER_MB + 0.5),
    )


def _chat_url(server: Server) -> str:
    return f"{server.base}/v1/chat/completions"


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": "smol", "messages": QUESTION, "max_tokens": 8, "temperature": 0, **extra}


def _post(server: Server, body: Any, path: str = "chat/completions", **kw: Any) -> httpx.Response:
    return httpx.post(f"{server.base}/v1/{path}", json=body, timeout=60, **kw)


def _error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    return err  # type: ignore[no-any-return]


def _content(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


def _metrics(server: Server) -> dict[str, list[Any]]:
    text = httpx.get(f"{server.base}/metrics").text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


# -- defect 5: the request-body limit ----------------------------------------------------------------------
def test_body_over_the_limit_is_413_declared_or_streamed(server: Server) -> None:
    big = json.dumps(_body(junk="x" * (MAX_BODY_MB * 2**20 + 10))).encode()
    headers = {"content-type": "application/json"}
    r = httpx.post(_chat_url(server), content=big, headers=headers, timeout=30)
    err = _error(r, 413)
    assert err["code"] == "request_too_large" and "--max-body-mb" in err["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    r = httpx.post(_chat_url(server), content=chunks(), headers=headers, timeout=30)
    assert "content-length" not in r.request.headers
    assert _error(r, 413)["code"] == "request_too_large"
    # Just under the limit is read and parsed (an unknown option: 400 naming it, not 413).
    r = httpx.post(_chat_url(server), json=_body(junk="x" * (MAX_BODY_MB * 2**20 - 1000)), timeout=30)
    assert _error(r, 400)["param"] == "junk"
    assert httpx.get(f"{server.base}/health").status_code == 200


# -- defect 6: /metrics -------------------------------------------------------------------------------
def test_metrics_labels_are_route_templates(server: Server) -> None:
    forged = "/v1/x%0Aedgereason_model_loaded%7Bforged%3D%22y%22%7D%20999%0A"
    assert httpx.get(server.base + forged).status_code == 404
    for i in range(20):
        httpx.get(f"{server.base}/v1/random-{i}")
    text = httpx.get(f"{server.base}/metrics").text
    assert "forged" not in text and "random-" not in text
    families = {f.name: f.samples for f in text_string_to_metric_families(text)}
    loaded = families["edgereason_model_loaded"]
    assert [(s.labels, s.value) for s in loaded] == [({}, 1.0)]
    endpoints = {s.labels["endpoint"] for s in families["edgereason_requests"] if s.name.endswith("_total")}
    assert "other" in endpoints and endpoints <= {
        "other",
        "/health",
        "/metrics",
        "/v1/models",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/load_lora_adapter",
        "/v1/unload_lora_adapter",
    }
    other_404 = [
        s.value
        for s in families["edgereason_requests"]
        if s.name.endswith("_total") and s.labels == {"endpoint": "other", "status": "404"}
    ]
    assert other_404 and other_404[0] >= 21


def test_vllm_style_metrics(server: Server) -> None:
    before = _metrics(server)

    def total(families: dict[str, list[Any]], name: str, suffix: str = "_total") -> float:
        return sum(s.value for s in families.get(name, []) if s.name.endswith(suffix))

    stream = server.client().chat.completions.create(
        model="smol",
        messages=QUESTION,
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )  # type: ignore[call-overload]
    usage = [c.usage for c in stream if c.usage][0]
    after = _metrics(server)
    assert (
        total(after, "edgereason:prompt_tokens") - total(before, "edgereason:prompt_tokens")
        == usage.prompt_tokens
    )
    assert (
        total(after, "edgereason:generation_tokens") - total(before, "edgereason:generation_tokens")
        == usage.completion_tokens
    )
    for hist in ("time_to_first_token_seconds", "e2e_request_latency_seconds"):
        name = f"edgereason:{hist}"
        assert total(after, name, "_count") == total(before, name, "_count") + 1
    itl = "edgereason:inter_token_latency_seconds"
    assert total(after, itl, "_count") >= total(before, itl, "_count") + usage.completion_tokens - 2
    at_rest = {
        name: [(s.labels, s.value) for s in after[f"edgereason:{name}"]]
        for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc")
    }
    assert at_rest == {k: [({"model_name": "smol"}, 0.0)] for k in at_rest}
    assert [s.value for s in after["edgereason_engine_up"]] == [1.0]
    assert server.metric("live_sequences") == 0  # the names the older tests read are kept


# -- defect 7: cross-site requests --------------------------------------------------------------------
def test_post_needs_json_content_type(server: Server) -> None:
    raw = json.dumps(_body()).encode()
    for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"content-type": ctype} if ctype else {}
        r = httpx.post(_chat_url(server), content=raw, headers=headers, timeout=30)
        assert _error(r, 415)["code"] == "unsupported_media_type", ctype
    r = httpx.post(
        _chat_url(server),
        content=raw,
        headers={"content-type": "application/json; charset=utf-8"},
        timeout=60,
    )
    assert r.status_code == 200, r.text


def test_foreign_origins_and_hosts_are_refused(server: Server) -> None:
    # The case: a web page posting text/plain to unload an adapter. Refused, adapter stays.
    r = httpx.post(
        f"{server.base}/v1/unload_lora_adapter",
        content=b'{"lora_name": "a"}',
        headers={"content-type": "text/plain", "origin": "http://evil.example"},
    )
    assert _error(r, 403)["code"] == "origin_not_allowed"
    assert "a" in {m.id for m in server.client().models.list().data}
    r = httpx.get(f"{server.base}/v1/models", headers={"origin": "http://evil.example"})
    assert _error(r, 403)["type"] == "permission_error"
    assert "access-control-allow-origin" not in r.headers
    r = httpx.options(
        _chat_url(server),
        headers={"origin": "http://evil.example", "access-control-request-method": "POST"},
    )
    assert r.status_code == 403

    # DNS rebinding: the page's own name in Host, on a loopback bind.
    port = server.base.rsplit(":", 1)[1]
    r = httpx.get(f"{server.base}/v1/models", headers={"host": f"evil.example:{port}"})
    assert _error(r, 403)["code"] == "host_not_allowed"
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost"):
        assert httpx.get(f"{server.base}/v1/models", headers={"host": host}).status_code == 200, host
    # Same origin (the server's own /docs page) needs no --cors-origin.
    same = httpx.get(f"{server.base}/v1/models", headers={"origin": server.base})
    assert same.status_code == 200


def test_cors_origin_allows_a_web_app(server: Server) -> None:
    pre = httpx.options(
        _chat_url(server),
        headers={
            "origin": APP_ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    r = httpx.post(_chat_url(server), json=_body(), headers={"origin": APP_ORIGIN}, timeout=60)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP_ORIGIN


def _serve_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgereason", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_empty_api_key_and_bad_origin_are_setting_errors() -> None:
    for args, env in (
        (("--api-key", ""), None),
        ((), {"EDGEREASON_API_KEY": ""}),
        (("--api-key", "  "), None),
    ):
        out = _serve_cli(*args, "--port", "1", env=env)
        assert out.returncode == 2 and "api_key" in out.stderr and "empty API key" in out.stderr, out.stderr
    out = _serve_cli("--cors-origin", "evil.example", "--port", "1")
    assert out.returncode == 2 and "cors_origin" in out.stderr, out.stderr


def test_list_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgereason.server.settings import ServerSettings

    monkeypatch.setenv("EDGEREASON_CORS_ORIGIN", "http://a.example, HTTP://B.example/")
    monkeypatch.setenv("EDGEREASON_ALLOWED_HOST", '["box.lan", "proxy.lan"]')
    settings = ServerSettings()
    assert settings.cors_origin == ["http://a.example", "http://b.example"]
    assert settings.allowed_host == ["box.lan", "proxy.lan"]


def test_allowed_hosts_by_bind_address() -> None:
    assert host_name("[::1]:8000") == "::1" and host_name("LocalHost.:80") == "localhost"
    assert host_name("example.com") == "example.com"
    loop = allowed_hosts("127.0.0.1", [])
    assert loop is not None and {"localhost", "127.0.0.1", "::1"} <= loop and "evil.example" not in loop
    assert allowed_hosts("0.0.0.0", []) is None  # any Host, unless --allowed-host names them
    named = allowed_hosts("0.0.0.0", ["Box.lan:8000"])
    assert named is not None and "box.lan" in named and "evil.example" not in named
    extra = allowed_hosts("::1", ["proxy.local"])
    assert extra is not None and "proxy.local" in extra and "::1" in extra


def test_exposed_bind_without_key_warns(caplog: pytest.LogCaptureFixture) -> None:
    from edgereason.server.app import warn_if_exposed
    from edgereason.server.settings import ServerSettings

    with caplog.at_level(logging.WARNING, logger="edgereason.server.app"):
        warn_if_exposed(ServerSettings(host="127.0.0.1"))
        warn_if_exposed(ServerSettings(host="0.0.0.0", api_key="k"))
        assert not caplog.records
        warn_if_exposed(ServerSettings(host="0.0.0.0"))
    assert len(caplog.records) == 1 and "without an API key" in caplog.records[0].getMessage()


# -- defect 9: adapters, surrogates, paths, repeat_last_n ---------------------------------------------
def test_adapter_dir_scan_refuses_symlinks_out_and_reserved_names(server: Server) -> None:
    ids = {m.id for m in server.client().models.list().data}
    assert ids == {"smol", "a"}  # not link.gguf (points outside), not default.gguf (reserved)


def test_runtime_adapter_limits(server: Server, adapter_dir: Path) -> None:
    def load(name: str, path: str) -> httpx.Response:
        return _post(server, {"lora_name": name, "lora_path": path}, "load_lora_adapter")

    for name in ("default", "smol"):  # the reserved base name, the model's alias
        err = _error(load(name, "b.gguf.bin"), 400)
        assert err["param"] == "lora_name" and "reserved" in err["message"], name
    err = _error(load("big", "big.gguf.bin"), 400)
    assert "--max-adapter-mb" in err["message"] and "big.gguf.bin" in err["message"]
    for bad in (str(adapter_dir.parent / "outside.gguf"), "link.gguf", "corrupt.gguf.bin", "../outside.gguf"):
        err = _error(load("evil", bad), 400)
        assert str(adapter_dir.parent) not in err["message"] and "/tmp" not in err["message"], err
    r = load("b", "b.gguf.bin")
    assert r.status_code == 200 and r.json()["lora_path"] == "b.gguf.bin", r.text
    err = _error(load("b", "c.gguf.bin"), 400)
    assert "already loaded" in err["message"]
    err = _error(load("c", "c.gguf.bin"), 400)  # a and b loaded: --max-adapters 2
    assert "--max-adapters" in err["message"]
    assert _post(server, {"lora_name": "b"}, "unload_lora_adapter").status_code == 200
    r = load("c", "c.gguf.bin")
    assert r.status_code == 200, r.text
    assert _post(server, {"lora_name": "c"}, "unload_lora_adapter").status_code == 200


def test_strip_paths() -> None:
    assert strip_paths("cannot load /home/u/models/x.gguf: bad") == "cannot load x.gguf: bad"
    assert strip_paths("see http://h/a/b and 3/4/5 and /v1/load_lora_adapter") == (
        "see http://h/a/b and 3/4/5 and /v1/load_lora_adapter"
    )


def test_lone_surrogates_are_400(server: Server) -> None:
    headers = {"content-type": "application/json"}
    for raw in (
        b'{"model": "smol", "messages": [{"role": "user", "content": "hi \\ud800"}], "max_tokens": 2}',
        b'{"model": "smol", "messages": [{"role": "user", "content": "x"}], "stop": ["\\uDC00"]}',
        b'{"model": "\\ud800", "messages": [{"role": "user", "content": "x"}]}',
    ):
        r = httpx.post(_chat_url(server), content=raw, headers=headers, timeout=30)
        assert "surrogate" in _error(r, 400)["message"], raw
    r = httpx.post(
        f"{server.base}/v1/load_lora_adapter",
        content=b'{"lora_name": "x", "lora_path": "\\ud800.gguf"}',
        headers=headers,
    )
    assert _error(r, 400)["type"] == "invalid_request_error"
    # A proper pair (an emoji) and an escaped backslash before "ud800" are fine.
    for raw in (
        b'{"messages": [{"role": "user", "content": "hi \\ud83d\\ude00"}], "max_tokens": 2}',
        b'{"messages": [{"role": "user", "content": "hi \\\\ud800"}], "max_tokens": 2}',
    ):
        assert httpx.post(_chat_url(server), content=raw, headers=headers, timeout=60).status_code == 200


def test_repeat_last_n_is_capped_at_n_ctx(server: Server) -> None:
    err = _error(_post(server, _body(repeat_last_n=2**31 - 1)), 400)
    assert err["param"] == "repeat_last_n" and str(N_CTX) in err["message"]
    assert _post(server, _body(repeat_last_n=N_CTX, repeat_penalty=1.1)).status_code == 200


# -- /health tells the truth ------------------------------------------------------------------------
class _InjectedFault(BaseException):
    """Not an Exception: escapes every per-request handler, as a crash inside the engine loop would."""


def _kill_engine_on_next_step(engine: er.Engine) -> None:
    def step() -> bool:
        raise _InjectedFault("injected fault")

    engine.scheduler.step = step  # type: ignore[method-assign]


def test_dead_engine_makes_health_503_and_watchdog_fire() -> None:
    from fastapi.testclient import TestClient

    from edgereason.server.app import create_app, watch_engine

    with er.load(embedded_model_path(), n_ctx=256, max_sequences=2, threads=1) as eng:
        app = create_app(eng)
        client = TestClient(app, base_url="http://localhost")
        assert client.get("/health").json() == {"status": "ok"}
        _kill_engine_on_next_step(eng)
        r = client.post("/v1/chat/completions", json=_body(model=None))
        assert _error(r, 503)["code"] == "engine_stopped"
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["error"]["message"].startswith("engine stopped: engine thread died")
        r = client.post("/v1/chat/completions", json=_body(model=None))  # refused at once
        assert _error(r, 503)["code"] == "engine_stopped"
        assert "edgereason_engine_up 0.0" in client.get("/metrics").text
        fired: list[str] = []
        done = threading.Event()
        watch_engine(app, fired.append, done, interval=0.01)
        assert fired and "engine thread died" in fired[0]


def test_serve_exits_3_when_the_engine_dies() -> None:
    port = _free_port()
    script = f"""
import sys
from edgereason.server import app as server_app
from edgereason.server.settings import ServerSettings

class InjectedFault(BaseException):
    pass

load = server_app.load_engine

def faulty(settings):
    engine = load(settings)
    def step():
        raise InjectedFault("injected fault")
    engine.scheduler.step = step
    return engine

server_app.load_engine = faulty
sys.exit(server_app.serve(ServerSettings(port={port}, n_ctx=256, max_sequences=2, threads=1)))
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        r = httpx.post(f"{base}/v1/chat/completions", json=_body(model=None), timeout=30)
        assert _error(r, 503)["code"] == "engine_stopped"
        assert proc.wait(timeout=30) == 3
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert "engine stopped: engine thread died: InjectedFault: injected fault" in err
        assert "exit status 3" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- request fields other servers accept (issues 22 and 25) ---------------------------------------------
def test_no_op_tool_and_format_values_are_accepted(server: Server) -> None:
    plain = _content(_post(server, _body()))
    same = _post(
        server,
        _body(tools=[], tool_choice="none", response_format={"type": "text"}, parallel_tool_calls=False),
    )
    assert _content(same) == plain
    client = server.client()
    res = client.chat.completions.create(
        model="smol",
        messages=QUESTION,
        max_tokens=8,
        temperature=0,
        tools=[],
        tool_choice="none",
        response_format={"type": "text"},
    )  # type: ignore[call-overload]
    assert res.choices[0].message.content == plain
    # Tool calling and response_format are supported (issue 22; tests/test_tool_calling.py): a tool the
    # model does not call leaves the reply as it was.
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    for extra in ({"tools": tools}, {"tools": tools, "tool_choice": "auto"}, {"tool_choice": "auto"}):
        r = _post(server, _body(**extra))
        assert r.status_code == 200, (extra, r.text)
        assert "tool_calls" not in r.json()["choices"][0]["message"]


def test_chat_template_kwargs_enable_thinking(server: Server) -> None:
    def ask(**extra: Any) -> dict[str, Any]:
        r = _post(server, _body(max_tokens=12, **extra))
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    off = ask(chat_template_kwargs={"enable_thinking": False})
    assert off["choices"][0]["message"] == ask(thinking=False)["choices"][0]["message"]
    assert off["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    on = ask(chat_template_kwargs={"enable_thinking": True})
    assert on["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    assert on["choices"][0]["message"] == ask(thinking=True)["choices"][0]["message"]
    err = _error(_post(server, _body(chat_template_kwargs={"enable_thinking": False, "foo": 1})), 400)
    assert err["param"] == "chat_template_kwargs" and "'foo'" in err["message"]
    err = _error(_post(server, _body(chat_template_kwargs={"enable_thinking": "no"})), 400)
    assert err["param"] == "chat_template_kwargs.enable_thinking"
    err = _error(_post(server, _body(thinking=True, chat_template_kwargs={"enable_thinking": False})), 400)
    assert "disagree" in err["message"]


def test_reasoning_effort_minimal_skips_thinking(server: Server) -> None:
    forced = _post(server, _body(max_tokens=12, thinking=True)).json()
    assert forced["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    minimal = _post(server, _body(max_tokens=12, reasoning_effort="minimal"))
    none = _post(server, _body(max_tokens=12, reasoning_effort="none"))
    assert minimal.json()["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    assert _content(minimal) == _content(none)
    assert _error(_post(server, _body(reasoning_effort="extreme")), 400)["param"] == "reasoning_effort"


LONG = [{"role": "user", "content": "Write the word 'cat' many times, separated by spaces."}]


def test_repetition_penalty_is_repeat_penalty(server: Server) -> None:
    def ask(**extra: Any) -> str:
        return _content(_post(server, _body(messages=LONG, max_tokens=40, ignore_eos=True, **extra)))

    plain = ask()
    vllm = ask(repetition_penalty=1.8)
    assert vllm == ask(repeat_penalty=1.8) != plain
    err = _error(_post(server, _body(repetition_penalty=1.1, repeat_penalty=1.2)), 400)
    assert err["param"] == "repetition_penalty"


def test_token_count_and_seed_limits(server: Server) -> None:
    for field in ("max_tokens", "max_completion_tokens"):
        assert _error(_post(server, _body(**{field: 0})), 400)["param"] == field
    assert _error(_post(server, _body(seed=2**63)), 400)["param"] == "seed"
    assert _error(_post(server, _body(logprobs=True, top_logprobs=21)), 400)["param"] == "top_logprobs"
    for seed in (2**40, -7, -(2**63)):
        a = _content(_post(server, _body(temperature=1.0, seed=seed, max_tokens=10)))
        assert a == _content(_post(server, _body(temperature=1.0, seed=seed, max_tokens=10)))
    r = _post(server, _body(logprobs=True, top_logprobs=20, max_tokens=2))
    assert len(r.json()["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 20
    comp = {"model": "smol", "prompt": "The capital of France is", "max_tokens": 2, "temperature": 0}
    assert _error(_post(server, {**comp, "logprobs": 21}, "completions"), 400)["param"] == "logprobs"
    r = _post(server, {**comp, "logprobs": 20}, "completions")
    assert r.status_code == 200 and len(r.json()["choices"][0]["logprobs"]["top_logprobs"][0]) == 20
    assert _error(_post(server, {**comp, "max_tokens": 0}, "completions"), 400)["param"] == "max_tokens"


def test_logit_bias(server: Server, engine: er.Engine) -> None:
    plain = _content(_post(server, _body(max_tokens=4)))
    first = engine.backend.tokenize(plain)[0]
    banned = _content(_post(server, _body(max_tokens=4, logit_bias={str(first): -100})))
    assert engine.backend.tokenize(banned)[0] != first
    forced_id = engine.backend.tokenize(" banana")[-1]
    forced = _content(_post(server, _body(max_tokens=3, logit_bias={str(forced_id): 100})))
    assert forced.split() == ["banana"] * 3, forced
    for bad in ({"abc": 1}, {"1": 101}, {"-1": 1}, {str(engine.info.n_vocab): 1}):
        assert _error(_post(server, _body(logit_bias=bad)), 400)["param"] == "logit_bias", bad


def test_numeric_fields_at_their_limits_never_5xx(server: Server) -> None:
    cases: list[dict[str, Any]] = [
        {"temperature": 0.0},
        {"temperature": 5.0},
        {"temperature": 5.01},
        {"top_p": 1e-9},
        {"top_p": 0},
        {"top_k": 2**31},
        {"top_k": -1},
        {"min_p": 1.0},
        {"repeat_penalty": 5.0},
        {"repeat_penalty": 0},
        {"repeat_last_n": 0},
        {"repeat_last_n": -1},
        {"presence_penalty": 2.0, "frequency_penalty": -2.0},
        {"presence_penalty": 2.5},
        {"n": 64},
        {"n": 65},
        {"seed": 2**63 - 1},
        {"logprobs": True, "top_logprobs": 0},
        {"logit_bias": {"0": -100, "1": 100}},
        {"logit_bias": {"0": float("inf")}},
        {"max_tokens": 2**31},
        {"stop": ["a"] * 9},
    ]
    for extra in cases:
        body = {**_body(max_tokens=2), **extra}
        r = httpx.post(
            _chat_url(server),
            content=json.dumps(body).replace("Infinity", "1e999").encode(),
            headers={"content-type": "application/json"},
            timeout=120,
        )
        assert r.status_code in (200, 400), (extra, r.status_code, r.text)
    assert httpx.get(f"{server.base}/health").status_code == 200
