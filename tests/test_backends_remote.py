"""The remote backend against a real `edgereason serve` process on loopback (a real HTTP hop).

The same model runs in this process (the local engine) and in the server (the remote), so greedy
results must match exactly, and the strategies driven over HTTP must report what the local ones do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import edgereason as er
from edgereason.errors import InvalidRequestError, UnknownAdapterError
from edgereason.remote import (
    RemoteEngine,
    RemoteError,
    RemoteUnavailableError,
    load_remote,
    parse_remote_url,
)

from .conftest import tiny_base_with_role_adapters
from .scripted_server import Scripted, scripted_server
from .test_server import N_CTX, Server, _start

QUESTIONS = [
    [{"role": "user", "content": "What is 12 + 7? Answer briefly."}],
    [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have?"}],
]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from _start("--max-sequences", "16")


@pytest.fixture(scope="module")
def local(model_path: Path) -> Iterator[er.Engine]:
    eng = er.load(model_path, n_ctx=N_CTX, max_sequences=16, threads=1)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def remote(server: Server, local: er.Engine) -> Iterator[RemoteEngine]:
    # edgereason serve publishes its chat template in /v1/models: exact client-side budgets need no argument.
    eng = load_remote(f"openai://{server.base.removeprefix('http://')}/default")
    assert eng.chat_template == local.chat_template
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def bare(server: Server) -> Iterator[RemoteEngine]:
    """As against a server that publishes no chat template (vLLM, SGLang): budgets are left to it."""
    eng = load_remote(f"openai://{server.base.removeprefix('http://')}/default")
    eng.chat_template = None
    yield eng
    eng.close()


def _same(a: er.ChatResult, b: er.ChatResult) -> None:
    assert len(a.choices) == len(b.choices)
    for x, y in zip(a.choices, b.choices):
        assert (x.content, x.reasoning, x.finish_reason, x.answer) == (
            y.content,
            y.reasoning,
            y.finish_reason,
            y.answer,
        )
        assert (x.completion_tokens, x.reasoning_tokens, x.thinking_stopped_by) == (
            y.completion_tokens,
            y.reasoning_tokens,
            y.thinking_stopped_by,
        )
    # cached_tokens reflects each engine's own prefix-cache history (the remote server's differs from ours).
    assert dataclasses.replace(a.usage, cached_tokens=0) == dataclasses.replace(b.usage, cached_tokens=0)


def test_url_parsing() -> None:
    t = parse_remote_url("openai://127.0.0.1:8000/default")
    assert (t.api_base, t.model) == ("http://127.0.0.1:8000/v1", "default")
    t = parse_remote_url("openai+https://gpu.example:443/v1/Qwen/Qwen3-8B")
    assert (t.api_base, t.model) == ("https://gpu.example:443/v1", "Qwen/Qwen3-8B")
    for bad in ("http://x:1/m", "openai://x:1/", "openai:///m", "x"):
        with pytest.raises(InvalidRequestError, match="openai://HOST:PORT/MODEL"):
            parse_remote_url(bad)


def test_dead_port_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: refused
        t0 = time.monotonic()
        with pytest.raises(RemoteUnavailableError, match=f"cannot reach http://127.0.0.1:{port}/v1"):
            load_remote(f"openai://127.0.0.1:{port}/default")
        assert time.monotonic() - t0 < 5
    assert issubclass(RemoteUnavailableError, RemoteError) and issubclass(RemoteError, er.EdgeReasonError)


def test_greedy_chat_equals_local(remote: RemoteEngine, local: er.Engine) -> None:
    assert remote.info.format == "remote" and remote.flavor == "edgereason"
    for q in QUESTIONS:
        for thinking in (False, True):
            kw = {"max_tokens": 32, "temperature": 0.0, "thinking": thinking}
            _same(remote.chat(q, **kw), local.chat(q, **kw))


def test_stream_equals_chat(remote: RemoteEngine) -> None:
    kw = {"max_tokens": 32, "temperature": 0.0, "thinking": True}
    full = remote.chat(QUESTIONS[0], **kw)
    stream = remote.stream(QUESTIONS[0], **kw)
    chunks = list(stream)
    assert stream.result is not None
    assert "".join(c.text for c in chunks if c.channel == "reasoning") == full.reasoning
    assert "".join(c.text for c in chunks if c.channel == "content") == full.content
    assert len(chunks) > 3  # token by token, not one piece
    _same(stream.result, full)


def test_n_choices_and_logprobs(remote: RemoteEngine, local: er.Engine) -> None:
    kw = {"max_tokens": 12, "temperature": 0.8, "seed": 5, "n": 3, "logprobs": True, "top_logprobs": 2}
    r, lo = remote.chat(QUESTIONS[1], **kw), local.chat(QUESTIONS[1], **kw)
    _same(r, lo)
    for x, y in zip(r.choices, lo.choices):
        assert x.logprobs is not None and y.logprobs is not None
        assert [t.token for t in x.logprobs] == [t.token for t in y.logprobs]
        assert [t.logprob for t in x.logprobs] == pytest.approx([t.logprob for t in y.logprobs], abs=1e-5)
        assert x.extra["answer_confidence"] == pytest.approx(y.extra["answer_confidence"], abs=1e-5)


def test_raw_completion_equals_local(remote: RemoteEngine, local: er.Engine) -> None:
    kw = {"max_tokens": 20, "temperature": 0.0}
    prompt = "Once upon a time, in a small village by the sea,"
    r, lo = remote.complete(prompt, **kw), local.complete(prompt, **kw)
    assert (r.content, r.finish_reason, r.choices[0].completion_tokens) == (lo.content, lo.finish_reason, 20)
    streamed = "".join(c.text for c in remote.stream_completion(prompt, **kw))
    assert streamed == r.content


@pytest.mark.parametrize("budget", [0, 8, 24])
def test_thinking_budget_caps_reasoning(remote: RemoteEngine, local: er.Engine, budget: int) -> None:
    kw = {"max_tokens": 64, "temperature": 0.0, "thinking": True, "thinking_budget": budget}
    r, lo = remote.chat(QUESTIONS[1], **kw), local.chat(QUESTIONS[1], **kw)
    assert r.choices[0].reasoning_tokens <= budget
    assert r.thinking_stopped_by == lo.thinking_stopped_by == "budget"
    assert r.choices[0].reasoning_tokens == lo.choices[0].reasoning_tokens
    assert r.content  # the model answered after the forced close
    if budget >= 8:  # the wrap-up line (half the budget at most) and then the model's answer
        assert r.reasoning.endswith(er.GenerationOptions().wrap_up) == lo.reasoning.endswith(
            er.GenerationOptions().wrap_up
        )


def test_budget_without_template_is_left_to_the_server(bare: RemoteEngine) -> None:
    assert bare.chat_template is None
    res = bare.chat(QUESTIONS[1], max_tokens=64, temperature=0.0, thinking=True, thinking_budget=10)
    assert res.choices[0].reasoning_tokens <= 10 and res.thinking_stopped_by == "budget"
    assert res.choices[0].extra["thinking_budget_enforced_by"] == "server"


def test_self_consistency_four_samples_vote(remote: RemoteEngine, local: er.Engine) -> None:
    kw = {"max_tokens": 40, "seed": 11, "self_consistency": 4}
    r = remote.chat(QUESTIONS[1], **kw)
    rep = r.extra["self_consistency"]
    assert rep["samples_used"] == rep["samples_requested"] == 4 and len(rep["samples"]) == 4
    assert sum(rep["votes"].values()) == sum(1 for s in rep["samples"] if s["answer"] is not None)
    assert r.answer == rep["answer"]
    # One request with n=4 forks the samples with seeds seed+i, as the local engine does.
    lrep = local.chat(QUESTIONS[1], **kw).extra["self_consistency"]
    by_index = {s["index"]: (s["answer"], s["tokens"]) for s in rep["samples"]}
    assert by_index == {
        s["index"]: (s["answer"], s["tokens"]) for s in lrep["samples"]
    }  # local: finish order
    assert rep["votes"] == lrep["votes"] and rep["answer"] == lrep["answer"]


def test_self_consistency_falls_back_to_one_request_per_sample(server: Server, local: er.Engine) -> None:
    # 17 samples in one request need 17 sequences: the server (16) refuses n=17, so each goes alone.
    url = f"openai://{server.base.removeprefix('http://')}/default"
    with load_remote(url) as eng:
        r = eng.chat(QUESTIONS[0], max_tokens=6, seed=2, self_consistency=17)
        assert not eng.n_ok
    assert r.extra["self_consistency"]["samples_used"] == 17


def test_adaptive_stopping_in_rounds(remote: RemoteEngine) -> None:
    sc = {"samples": 12, "adaptive": "esc", "window": 2, "temperature": 0.0}
    r = remote.chat(QUESTIONS[0], max_tokens=16, seed=1, self_consistency=sc)
    rep = r.extra["self_consistency"]
    # Greedy samples agree, so the first window of 2 is unanimous and sampling stops there.
    assert rep["samples_used"] == 2 and rep["stopped_early"] and rep["stop_rule"] == "esc"


def test_self_consistency_with_budget(remote: RemoteEngine) -> None:
    kw = {"max_tokens": 48, "seed": 4, "thinking": True, "thinking_budget": 12, "self_consistency": 3}
    rep = remote.chat(QUESTIONS[1], **kw).extra["self_consistency"]
    assert rep["samples_used"] == 3
    assert all(s["confidence"] > 0 for s in rep["samples"])  # DeepConf from the top-20 log-probs


def test_request_errors(remote: RemoteEngine) -> None:
    with pytest.raises(InvalidRequestError, match="parallel sequences"):
        remote.chat(QUESTIONS[0], n=20, max_tokens=4)  # the server's 400, mapped
    with pytest.raises(UnknownAdapterError):
        remote.chat(QUESTIONS[0], adapter="nope", max_tokens=4)
    with pytest.raises(InvalidRequestError, match="temperature"):
        remote.chat(QUESTIONS[0], temperature=-1)  # validated here, before any request


def test_timeouts_are_a_clear_error(server: Server) -> None:
    url = f"openai://{server.base.removeprefix('http://')}/default"
    with (
        pytest.raises(RemoteUnavailableError, match="did not answer in time"),
        load_remote(url, timeout=0.05) as eng,
    ):
        eng.chat(QUESTIONS[0], max_tokens=200, ignore_eos=True, temperature=0.0)


def test_per_token_thinking_controls_run_on_an_edgereason_server(
    remote: RemoteEngine, local: er.Engine
) -> None:
    # DEER probes and the loop guard need per-token control: an EdgeReason server applies them itself.
    kw = {
        "max_tokens": 48,
        "temperature": 0.0,
        "thinking": True,
        "thinking_budget": "auto",
        "auto_budget_cap": 24,
    }
    r, lo = remote.chat(QUESTIONS[1], **kw), local.chat(QUESTIONS[1], **kw)
    _same(r, lo)
    assert r.choices[0].extra["early_exit_probes"] == lo.choices[0].extra["early_exit_probes"]
    assert r.choices[0].extra["thinking_budget_enforced_by"] == "server"


def test_per_token_thinking_controls_elsewhere_need_the_template(server: Server) -> None:
    """On a server that is not EdgeReason the controls run here, on the locally rendered prompt."""
    with load_remote(f"openai://{server.base.removeprefix('http://')}/default") as eng:
        eng.flavor, eng.chat_template = "openai", None  # as a server that reports no template is seen
        for kw in ({"thinking_budget": "auto"}, {"min_thinking": 4}, {"loop_guard": True}):
            with pytest.raises(InvalidRequestError, match="chat_template="):
                eng.chat(QUESTIONS[0], **kw)


def test_leaving_a_stream_early(remote: RemoteEngine) -> None:
    stream = remote.stream(QUESTIONS[1], max_tokens=200, temperature=0.0)
    for _ in stream:
        break
    res = remote.chat(QUESTIONS[0], max_tokens=8, temperature=0.0)  # the engine goes on serving
    assert res.choices[0].completion_tokens > 0


def test_load_dispatches_openai_urls(server: Server) -> None:
    with er.load(f"openai://{server.base.removeprefix('http://')}/default") as eng:  # type: ignore[attr-defined]
        assert eng.info.format == "remote"
        assert eng.chat(QUESTIONS[0], max_tokens=4, temperature=0.0).choices[0].completion_tokens > 0


@pytest.mark.convert
def test_lorid_over_adapter_models(tmp_path: Path) -> None:
    """LoRID with each role a request to model=<adapter>: the same loop and report as the local engine."""

    base, lora = tiny_base_with_role_adapters(tmp_path)
    roles = ("ir", "kg", "dr")
    flags = ("--model", str(base), *(f for r in roles for f in ("--adapter", f"{r}={lora[r]}")))
    kw = {"seed": 1, "max_tokens": 16, "lorid": {"max_iterations": 2}}
    question = [{"role": "user", "content": "What is 3 + 4?"}]
    with er.load(base, adapters=lora, n_ctx=N_CTX, max_sequences=4, threads=1) as local:
        want = local.chat(question, **kw)
        template = local.chat_template
    with (
        contextlib.contextmanager(_start)(*flags) as server,
        load_remote(f"openai://{server.base.removeprefix('http://')}/default", chat_template=template) as eng,
    ):
        assert eng.adapter_names == sorted(roles)
        got = eng.chat(question, **kw)
        with pytest.raises(UnknownAdapterError, match="'nope'"):
            eng.chat(question, lorid={"roles": {"ir": "nope"}})
    assert got.extra["lorid"] == want.extra["lorid"]
    assert (got.content, got.answer, got.usage.completion_tokens) == (
        want.content,
        want.answer,
        want.usage.completion_tokens,
    )


# -- fault injection: a scripted OpenAI-shaped server (tests/scripted_server.py) for what a real one rarely does
def _posts(script: Scripted) -> list[dict[str, Any]]:
    return [b for p, b in script.calls if p.endswith("/chat/completions")]


def test_url_with_a_base_path() -> None:
    t = parse_remote_url("openai+https://gw.example/openai/v1/Qwen/Qwen3-8B")
    assert (t.api_base, t.model) == ("https://gw.example/openai/v1", "Qwen/Qwen3-8B")
    t = parse_remote_url("openai://127.0.0.1:9000/api/v1/m")
    assert (t.api_base, t.model) == ("http://127.0.0.1:9000/api/v1", "m")
    with pytest.raises(InvalidRequestError, match="either url="):
        load_remote("openai://x:1/m", base_url="http://x:1/v1")
    with pytest.raises(InvalidRequestError, match="base_url must be an http"):
        load_remote(base_url="ftp://x/v1", model="m")
    with pytest.raises(InvalidRequestError, match="model= names"):
        load_remote(base_url="http://x:1/v1")


def test_base_url_and_model_reach_a_server_under_a_base_path() -> None:
    with scripted_server(Scripted(base="/api/v1")) as s:
        with load_remote(base_url=f"http://127.0.0.1:{s.port}/api/v1/", model="m", retries=0) as eng:
            r = eng.chat(QUESTIONS[0], max_tokens=4, seed=3)
        assert r.content == "The answer is 3." and r.answer == "3"
        # /props (llama-server's chat template) sits beside the API base, as on llama-server.
        assert [p for p, _ in s.calls] == ["/api/v1/models", "/api/props", "/api/v1/chat/completions"]


def test_only_caller_set_fields_are_sent() -> None:
    with scripted_server(Scripted()) as s, load_remote(f"openai://127.0.0.1:{s.port}/m") as eng:
        eng.chat(QUESTIONS[0], er.GenerationOptions(max_tokens=4), seed=1)
        eng.chat(QUESTIONS[0], er.GenerationOptions(top_k=5, temperature=0.0), max_tokens=4)
    first, second = _posts(s)
    # Defaults (top_k=40, min_p=0.05, temperature 0.7, top_p 0.95) are the server's to choose.
    assert set(first) == {"model", "messages", "n", "max_tokens", "seed"}
    assert (second["top_k"], second["temperature"]) == (5, 0.0)
    assert not {"min_p", "top_p", "repeat_penalty", "repetition_penalty"} & set(second)


def test_retry_after_on_429_and_503() -> None:
    busy = (429, {"Retry-After": "1"}, {"error": {"message": "slots busy"}})
    loading = (503, {}, {"error": {"message": "loading"}})
    with scripted_server(Scripted(replies=[busy, loading])) as s:
        with load_remote(f"openai://127.0.0.1:{s.port}/m", retry_backoff=0.2) as eng:
            t0 = time.monotonic()
            r = eng.chat(QUESTIONS[0], max_tokens=4, seed=0)
            waited = time.monotonic() - t0
        assert r.answer == "0" and len(_posts(s)) == 3
        assert 1.2 <= waited < 3  # Retry-After's 1 s, then the first backoff of 0.2 s


def test_retries_are_bounded() -> None:
    busy = (429, {}, {"error": {"message": "slots busy"}})
    too_long = (503, {"Retry-After": "3600"}, {"error": {"message": "maintenance"}})
    with scripted_server(Scripted(replies=[busy] * 3)) as s:
        with (
            load_remote(f"openai://127.0.0.1:{s.port}/m", retries=2, retry_backoff=0.01) as eng,
            pytest.raises(er.errors.CapacityError, match="slots busy"),
        ):
            eng.chat(QUESTIONS[0], max_tokens=4)
        assert len(_posts(s)) == 3  # one try and two retries
    with scripted_server(Scripted(replies=[too_long])) as s:
        with load_remote(f"openai://127.0.0.1:{s.port}/m") as eng:
            t0 = time.monotonic()
            with pytest.raises(RemoteUnavailableError, match="maintenance"):
                eng.chat(QUESTIONS[0], max_tokens=4)
            assert time.monotonic() - t0 < 1  # an hour is past retry_max_wait: fail now, not later
        assert len(_posts(s)) == 1


def test_connection_refused_is_retried_until_the_server_is_up() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = Scripted()
    started = threading.Event()

    def start_late() -> None:
        time.sleep(0.4)
        with scripted_server(script, port):
            started.set()
            time.sleep(5)

    threading.Thread(target=start_late, daemon=True).start()
    with load_remote(f"openai://127.0.0.1:{port}/m", retries=4, retry_backoff=0.2) as eng:
        assert started.is_set()
        assert eng.chat(QUESTIONS[0], max_tokens=4, seed=2).answer == "2"


def test_a_server_that_ignores_n_is_asked_once_per_missing_choice() -> None:
    with scripted_server(Scripted(ignore_n=True)) as s, load_remote(f"openai://127.0.0.1:{s.port}/m") as eng:
        r = eng.chat(QUESTIONS[0], n=3, seed=10, max_tokens=4)
        assert [c.answer for c in r.choices] == ["10", "11", "12"]  # seeds seed + index, as local
        assert not eng.n_ok
        sc = eng.chat(QUESTIONS[0], seed=20, max_tokens=4, self_consistency=4).extra["self_consistency"]
    # No sample is an empty abstention: each has its own answer.
    assert [x["answer"] for x in sc["samples"]] == ["20", "21", "22", "23"]
    assert [b["n"] for b in _posts(s)] == [3, 1, 1, 1, 1, 1, 1]


def test_a_stream_from_a_server_that_ignores_n_gets_every_choice() -> None:
    with scripted_server(Scripted(ignore_n=True)) as s, load_remote(f"openai://127.0.0.1:{s.port}/m") as eng:
        stream = eng.stream(QUESTIONS[0], n=3, seed=1, max_tokens=4)
        texts: dict[int, str] = {}
        for chunk in stream:
            texts[chunk.index] = texts.get(chunk.index, "") + chunk.text
    assert texts == {i: f"The answer is {1 + i}." for i in range(3)}
    assert stream.result is not None and [c.answer for c in stream.result.choices] == ["1", "2", "3"]
    assert [(b.get("stream", False), b["n"]) for b in _posts(s)] == [(True, 3), (False, 1), (False, 1)]


def test_a_stream_without_choices_is_an_error() -> None:
    no_events = (200, {}, {"choices": []})
    with (
        scripted_server(Scripted(replies=[no_events])) as s,
        load_remote(f"openai://127.0.0.1:{s.port}/m") as eng,
        pytest.raises(RemoteError, match="streamed no choices"),
    ):
        list(eng.stream(QUESTIONS[0], max_tokens=4))


def test_no_choices_is_an_error_not_an_empty_answer() -> None:
    empty = (200, {}, {"choices": [], "usage": {}})
    with (
        scripted_server(Scripted(replies=[empty])) as s,
        load_remote(f"openai://127.0.0.1:{s.port}/m") as eng,
        pytest.raises(RemoteError, match="no choices"),
    ):
        eng.chat(QUESTIONS[0], max_tokens=4)
