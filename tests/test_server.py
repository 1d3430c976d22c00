"""The server as users run it: a real `edgereason serve` process driven by the official openai client."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

N_CTX = 512
QUESTION = [{"role": "user", "content": "What is 12 + 7? Answer briefly."}]
PROMPTS = ["What is 2 + 2?", "Name a color.", "Say hello.", "What is the capital of France?"]


@dataclass
class Server:
    base: str
    proc: subprocess.Popen[bytes]

    def client(self, api_key: str = "none", **kw: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key=api_key, max_retries=0, **kw)  # type: ignore[arg-type]

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.base}/metrics").text
        m = re.search(rf"^edgereason_{name} (\S+)$", text, re.M)
        assert m, text
        return float(m.group(1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(*flags: str) -> Iterator[Server]:
    port = _free_port()
    # One thread: on a loaded (CI) machine llama.cpp's spinning thread barriers make 2+ threads far slower.
    cmd = [
        sys.executable,
        "-m",
        "edgereason",
        "serve",
        "--port",
        str(port),
        "--n-ctx",
        str(N_CTX),
        "--threads",
        "1",
        *flags,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "server exited"
            assert time.monotonic() < deadline, "server did not become healthy"
            try:
                r = httpx.get(f"{base}/health", timeout=2)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            if r.status_code == 200:
                assert r.json() == {"status": "ok"}
                break
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
            time.sleep(0.1)
        yield Server(base, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from _start("--max-sequences", "16", "--alias", "smol")


def test_chat_and_usage(server: Server) -> None:
    res = server.client().chat.completions.create(
        model="smol", messages=QUESTION, max_tokens=24, temperature=0
    )  # type: ignore[arg-type]
    assert res.object == "chat.completion" and res.model == "smol"
    choice = res.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"  # greedy talks on past 24 tokens
    assert res.usage is not None and res.usage.prompt_tokens > 0
    assert res.usage.completion_tokens == 24
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens
    assert res.usage.completion_tokens_details is not None
    assert res.usage.completion_tokens_details.reasoning_tokens == 0
    assert (res.model_extra or {})["edgereason"]["choices"][0][
        "completion_tokens"
    ] == res.usage.completion_tokens


def test_thinking_via_extra_body(server: Server) -> None:
    client = server.client()
    res = client.chat.completions.create(
        model="smol",
        messages=QUESTION,
        max_tokens=16,
        temperature=0,
        extra_body={"thinking": True},  # type: ignore[arg-type]
    )
    msg_extra = res.choices[0].message.model_extra or {}
    assert msg_extra["reasoning_content"]
    assert res.usage and res.usage.completion_tokens_details
    assert res.usage.completion_tokens_details.reasoning_tokens > 0
    # Greedy closes its thinking itself within the 16 tokens (after 8).
    assert (res.model_extra or {})["edgereason"]["thinking_stopped_by"] == "model"
    assert res.usage.completion_tokens_details.reasoning_tokens < 16

    stream = client.chat.completions.create(
        model="smol",
        messages=QUESTION,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"thinking": True},  # type: ignore[arg-type]
    )
    reasoning, content, usage, finish = [], [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            d = (c.delta.model_extra or {}).get("reasoning_content")
            if d:
                reasoning.append(d)
            if c.delta.content:
                content.append(c.delta.content)
            finish = c.finish_reason or finish
    assert "".join(reasoning) == msg_extra["reasoning_content"]
    assert "".join(content) == (res.choices[0].message.content or "")
    assert finish == res.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == res.usage.completion_tokens


def test_n_seed_stop_logprobs(server: Server) -> None:
    client = server.client()
    res = client.chat.completions.create(
        model="smol",
        messages=QUESTION,
        max_tokens=12,
        temperature=0.9,
        seed=3,
        n=3,
        logprobs=True,
        top_logprobs=2,  # type: ignore[arg-type]
    )
    assert [c.index for c in res.choices] == [0, 1, 2]
    assert res.usage and res.usage.completion_tokens == sum(
        len(c.logprobs.content or []) for c in res.choices if c.logprobs
    )
    lp = res.choices[0].logprobs
    assert lp and lp.content and len(lp.content[0].top_logprobs) == 2
    again = client.chat.completions.create(
        model="smol",
        messages=QUESTION,
        max_tokens=12,
        temperature=0.9,
        seed=3,
        n=3,  # type: ignore[arg-type]
    )
    assert [c.message.content for c in again.choices] == [c.message.content for c in res.choices]
    full = client.chat.completions.create(
        model="smol", messages=QUESTION, max_completion_tokens=20, temperature=0
    )  # type: ignore[arg-type]
    text = full.choices[0].message.content or ""
    assert len(text) > 3
    stop = text[2:4]
    cut = client.chat.completions.create(
        model="smol", messages=QUESTION, max_tokens=20, temperature=0, stop=[stop]
    )  # type: ignore[arg-type]
    assert cut.choices[0].message.content == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_strategy_reports_and_budget_fields(server: Server) -> None:
    c = server.client()
    q = [{"role": "user", "content": "What is 3 + 4?"}]
    r = c.chat.completions.create(
        model="default",
        messages=q,
        max_tokens=12,
        seed=3,
        extra_body={"self_consistency": 2},  # type: ignore[arg-type]
    )
    sc = (r.model_extra or {})["self_consistency"]
    assert sc["samples_requested"] == sc["samples_used"] == 2 and not sc["stopped_early"]
    # Every sample that found an answer voted once, and the answer reported is the vote's winner.
    answers = [s["answer"] for s in sc["samples"] if s["answer"] is not None]
    assert answers and sum(sc["votes"].values()) == len(answers)
    assert sc["answer"] == max(sc["votes"], key=sc["votes"].get)
    assert r.usage is not None and r.usage.completion_tokens == sum(s["tokens"] for s in sc["samples"])
    r = c.chat.completions.create(
        model="default",
        messages=q,
        max_tokens=40,
        temperature=0,
        extra_body={"thinking": True, "thinking_token_budget": 8},  # vLLM's name for the cap
    )
    assert r.usage is not None and r.usage.completion_tokens_details is not None
    # Greedy thinks past 8 tokens here: the cap stops it at exactly 8.
    assert r.usage.completion_tokens_details.reasoning_tokens == 8
    assert (r.model_extra or {})["edgereason"]["thinking_stopped_by"] == "budget"


def test_completions_and_models(server: Server) -> None:
    client = server.client()
    res = client.completions.create(
        model="smol", prompt="The capital of France is", max_tokens=4, temperature=0
    )
    assert res.choices[0].text.strip() == "Paris."
    assert res.usage and res.usage.completion_tokens == 4 and res.choices[0].finish_reason == "length"
    ids = [m.id for m in client.models.list().data]
    assert ids == ["smol"]


def _error(exc_info: pytest.ExceptionInfo[openai.APIStatusError]) -> dict[str, object]:
    body = exc_info.value.response.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


def test_errors(server: Server) -> None:
    client = server.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smol", messages=[{"role": "wizard", "content": "hi"}])  # type: ignore[misc,list-item]
    assert _error(e)["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smol", messages=QUESTION, temperature=-1)  # type: ignore[arg-type]
    assert _error(e)["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smol", messages=QUESTION, extra_body={"no_such_option": 1})  # type: ignore[arg-type]
    assert _error(e)["param"] == "no_such_option"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-nope", messages=QUESTION)  # type: ignore[arg-type]
    assert _error(e)["code"] == "model_not_found"
    long = [{"role": "user", "content": "hello " * (N_CTX * 2)}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smol", messages=long)  # type: ignore[arg-type]
    err = _error(e)
    assert err["type"] == "exceed_context_size_error" and err["n_ctx"] == N_CTX
    assert int(err["n_prompt_tokens"]) > N_CTX  # type: ignore[call-overload]

    url = f"{server.base}/v1/chat/completions"
    for body in (
        b"{not json",
        b"[1, 2]",
        b'{"model": "smol"}',
        b'{"messages": "hi"}',
        b'{"messages": [], "n": "x"}',
        b'{"messages": [{"role": "user", "content": "x"}], "stream": "maybe"}',
    ):
        r = httpx.post(url, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(url, content=b"{oops")  # no content-type: refused (a web page can send that cross-site)
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"


def test_concurrent_greedy_equals_single(server: Server) -> None:
    client = server.client(timeout=120)

    def ask(prompt: str) -> str:
        res = client.chat.completions.create(
            model="smol",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=8,
            temperature=0,  # type: ignore[arg-type]
        )
        return res.choices[0].message.content or ""

    single = {p: ask(p) for p in PROMPTS}
    jobs = [PROMPTS[i % len(PROMPTS)] for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, jobs))
    assert answers == [single[p] for p in jobs]
    assert server.metric("live_sequences") == 0 and server.metric("queue_depth") == 0


def test_disconnect_frees_sequences(server: Server) -> None:
    body = {
        "model": "smol",
        "messages": QUESTION,
        "max_tokens": 400,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", f"{server.base}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data:") for line in got)
        assert server.metric("live_sequences") == 1
    deadline = time.monotonic() + 3
    while server.metric("live_sequences") != 0:
        assert time.monotonic() < deadline, "the abandoned stream still holds its sequence"
        time.sleep(0.05)
    decoded = server.metric("decoded_tokens_total")
    time.sleep(0.3)
    assert server.metric("decoded_tokens_total") == decoded  # nothing decodes for the gone client


def test_api_key_and_full_queue() -> None:
    for srv in _start("--max-sequences", "1", "--max-queue", "1", "--api-key", "s3cret"):
        with pytest.raises(openai.AuthenticationError) as e:
            srv.client(api_key="wrong").models.list()
        assert _error(e)["type"] == "invalid_request_error"
        r = httpx.post(f"{srv.base}/v1/chat/completions", content=b"{bad json")
        assert r.status_code == 401  # the key is checked before the body is read
        assert httpx.get(f"{srv.base}/health").status_code == 200
        res = srv.client(api_key="s3cret").chat.completions.create(
            model="default",
            messages=QUESTION,
            max_tokens=4,
            temperature=0,  # type: ignore[arg-type]
        )
        assert res.choices[0].message.content and res.usage and res.usage.completion_tokens == 4

        # One request decoding, one waiting: the queue (1) is full, the next gets 429 + Retry-After.
        auth = {"authorization": "Bearer s3cret"}
        body = {"messages": QUESTION, "max_tokens": 300, "temperature": 0, "ignore_eos": True, "stream": True}
        url = f"{srv.base}/v1/chat/completions"
        with httpx.Client(timeout=30, headers=auth) as h, h.stream("POST", url, json=body) as running:
            lines = running.iter_lines()
            while "content" not in next(lines):
                pass
            with h.stream("POST", url, json=body) as waiting:
                assert waiting.status_code == 200
                r = h.post(url, json={**body, "stream": False})
                assert r.status_code == 429 and r.headers["retry-after"] == "1"
                assert r.json()["error"]["type"] == "rate_limit_error"


# serve with its model load held until the test creates a file: the server answers from the start.
_GATED_SERVE = """
import pathlib, sys, time
import edgereason.server.app as server_app
from edgereason.cli.main import main
load = server_app.load_engine
def gated(settings):
    while not pathlib.Path(sys.argv[1]).exists():
        time.sleep(0.05)
    return load(settings)
server_app.load_engine = gated
sys.exit(main(sys.argv[2:]))
"""


def test_503_while_the_model_loads(tmp_path: Path) -> None:
    gate, port = tmp_path / "load", _free_port()
    args = ["serve", "--port", str(port), "--n-ctx", str(N_CTX), "--threads", "1", "--alias", "smol"]
    proc = subprocess.Popen([sys.executable, "-c", _GATED_SERVE, str(gate), *args], stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "server exited"
            assert time.monotonic() < deadline, "the server never answered"
            try:
                health = httpx.get(f"{base}/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert health.status_code == 503 and health.json()["error"]["code"] == "model_loading"
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model="smol", messages=QUESTION, max_tokens=4)  # type: ignore[arg-type]
        assert e.value.status_code == 503 and e.value.response.headers["retry-after"]
        assert _error(e)["code"] == "model_loading" and "still loading" in str(_error(e)["message"])
        gate.touch()
        while httpx.get(f"{base}/health", timeout=2).status_code != 200:
            assert time.monotonic() < deadline + 60, "the model never loaded"
            time.sleep(0.1)
        res = client.chat.completions.create(model="smol", messages=QUESTION, max_tokens=4, temperature=0)  # type: ignore[arg-type]
        assert res.usage is not None and res.usage.completion_tokens == 4
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_schema_fuzzing_never_5xx() -> None:
    """schemathesis against the server's own OpenAPI schema: nothing a client sends gives a 5xx."""
    cli = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    if not os.path.exists(cli):
        pytest.skip("pip install schemathesis")
    for srv in _start("--max-sequences", "4"):
        out = subprocess.run(
            [
                cli,
                "run",
                f"{srv.base}/openapi.json",
                "-c",
                "not_a_server_error",
                "-n",
                "15",
                "--request-timeout",
                "60",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stdout[-4000:]
