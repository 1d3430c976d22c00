"""The routes clients probe beside the OpenAI ones, on a real `edgereason serve` process: one model by id,
/tokenize, /detokenize, /props, /version, `created`, and the 401 shape; compared field by field with the
llama-server built from the same llama.cpp when that binary is cached."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from edgereason import peer
from edgereason.models import embedded_model_path
from edgereason.server.app import KEEP_ALIVE_COMMENT, _keep_alive
from tests.test_server import N_CTX, QUESTION, Server, _start

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}
SLOTS = 2
# Plain text, a control token's text, multi-byte characters (one emoji spans several byte tokens).
TEXTS = ["Hello world", "<|im_start|>user\nhi<|im_end|>", "héllo 🙂 naïve"]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    started = int(time.time())
    flags = ("--max-sequences", str(SLOTS), "--alias", "smol", "--api-key", KEY, "--sse-keepalive-s", "0.2")
    for srv in _start(*flags):
        srv.started = started  # type: ignore[attr-defined]
        yield srv


def _post(server: Server, path: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{server.base}{path}", json=body, headers=AUTH, timeout=30)


def test_models_created_and_retrieve(server: Server) -> None:
    client = server.client(api_key=KEY)
    listed = client.models.list().data
    assert [m.id for m in listed] == ["smol"]
    assert server.started - 60 <= listed[0].created <= time.time()  # type: ignore[attr-defined]
    got = client.models.retrieve("smol")
    assert (got.id, got.object, got.owned_by, got.created) == (
        "smol",
        "model",
        "edgereason",
        listed[0].created,
    )
    assert client.models.retrieve("default").id == "default"  # an alias the server answers to


def test_unknown_model_is_openai_404(server: Server) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        server.client(api_key=KEY).models.retrieve("org/not-here")
    assert isinstance(e.value.body, dict)
    assert e.value.body == {
        "message": "the model 'org/not-here' does not exist; this server serves 'smol'",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


def test_wrong_key_is_openai_401(server: Server) -> None:
    with pytest.raises(openai.AuthenticationError) as e:
        server.client(api_key="wrong").models.retrieve("smol")
    assert isinstance(e.value.body, dict)
    assert (e.value.body["type"], e.value.body["code"]) == ("invalid_request_error", "invalid_api_key")
    # llama-server keys its tokenizer and props routes too; health, metrics and version stay open.
    for path in ("/tokenize", "/detokenize"):
        assert httpx.post(f"{server.base}{path}", json={}).status_code == 401
    assert httpx.get(f"{server.base}/props").status_code == 401
    assert httpx.get(f"{server.base}/version").status_code == 200


def test_tokenize_round_trip(server: Server) -> None:
    r = _post(server, "/tokenize", {"content": "Hello world"})
    assert r.status_code == 200
    tokens = r.json()["tokens"]
    assert len(tokens) == 2 and all(isinstance(t, int) for t in tokens)
    with_pieces = _post(server, "/tokenize", {"content": "Hello world", "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in with_pieces] == tokens
    assert "".join(p["piece"] for p in with_pieces) == "Hello world"
    assert _post(server, "/detokenize", {"tokens": tokens}).json() == {"content": "Hello world"}
    # Control-token text is one control token unless parse_special is false.
    special = _post(server, "/tokenize", {"content": "<|im_end|>"}).json()["tokens"]
    literal = _post(server, "/tokenize", {"content": "<|im_end|>", "parse_special": False}).json()["tokens"]
    assert len(special) == 1 and len(literal) > 1
    assert _post(server, "/detokenize", {"tokens": special}).json() == {"content": "<|im_end|>"}
    assert _post(server, "/tokenize", {}).json() == {"tokens": []}


def test_tokenize_bad_input_is_400(server: Server) -> None:
    r = _post(server, "/detokenize", {"tokens": [10**8]})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "tokens" and "outside the vocabulary" in r.json()["error"]["message"]
    r = _post(server, "/tokenize", {"content": "x", "bogus": 1})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert _post(server, "/tokenize", {"content": 5}).status_code == 400


def test_props_and_version(server: Server) -> None:
    r = httpx.get(f"{server.base}/props", headers=AUTH)
    assert r.status_code == 200
    props = r.json()
    assert props["total_slots"] == SLOTS
    assert props["default_generation_settings"]["n_ctx"] == N_CTX
    assert props["default_generation_settings"]["params"]["temperature"] == 0.7
    assert props["model_alias"] == "smol"
    assert props["model_path"] == embedded_model_path().name  # the file's name, not the server's layout
    models = server.client(api_key=KEY).models.list().data[0]
    assert props["chat_template"] == (models.model_extra or {})["meta"]["chat_template"]
    assert (props["bos_token"], props["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    version = httpx.get(f"{server.base}/version").json()
    import edgereason

    assert version["version"] == edgereason.__version__
    assert version["llama_cpp_python"] == peer.llama_cpp_python_version()


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    binary = peer.find_llama_server()
    if binary is None:
        pytest.skip("llama-server is not built: " + peer.how_to_build())
    model = Path(embedded_model_path())
    with peer.start_llama_server(model, threads=1, ctx_per_slot=N_CTX, slots=SLOTS, binary=binary) as srv:
        yield srv.base_url


def test_tokenizer_routes_match_llama_server(server: Server, llama_server: str) -> None:
    for text in TEXTS:
        for body in (
            {"content": text},
            {"content": text, "with_pieces": True},
            {"content": text, "add_special": True},
            {"content": text, "parse_special": False},
        ):
            ours = _post(server, "/tokenize", body).json()
            theirs = httpx.post(f"{llama_server}/tokenize", json=body, timeout=30).json()
            assert ours == theirs, body
        tokens = _post(server, "/tokenize", {"content": text}).json()["tokens"]
        ours = _post(server, "/detokenize", {"tokens": tokens}).json()
        assert ours == httpx.post(f"{llama_server}/detokenize", json={"tokens": tokens}).json()


def test_props_match_llama_server(server: Server, llama_server: str) -> None:
    ours = httpx.get(f"{server.base}/props", headers=AUTH).json()
    theirs = httpx.get(f"{llama_server}/props").json()
    for key in ("total_slots", "chat_template", "bos_token", "eos_token", "model_ftype"):
        assert ours[key] == theirs[key], key
    assert ours["model_path"] == Path(theirs["model_path"]).name
    assert set(ours) - {"edgereason"} <= set(theirs)
    ours_gen, theirs_gen = ours["default_generation_settings"], theirs["default_generation_settings"]
    assert ours_gen["n_ctx"] == theirs_gen["n_ctx"]  # both per slot
    assert set(ours_gen["params"]) <= set(theirs_gen["params"])
    for key in ("top_k", "repeat_last_n", "repeat_penalty", "max_tokens", "n_predict", "n_probs", "seed"):
        assert ours_gen["params"][key] == theirs_gen["params"][key], key


# -- streaming: per-token logprobs, keep-alive comments ----------------------------------------------
def _sse_events(
    server: Server, path: str, body: dict[str, object]
) -> tuple[list[dict[str, object]], list[str]]:
    """The data events (parsed) and the comment lines of one streamed request."""
    events, comments = [], []
    with httpx.stream("POST", f"{server.base}{path}", json=body, headers=AUTH, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith(":"):
                comments.append(line)
            elif line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[len("data: ") :]))
    return events, comments


def test_chat_stream_carries_logprobs_per_chunk(server: Server) -> None:
    body = {"messages": QUESTION, "max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 2}
    whole = server.client(api_key=KEY).chat.completions.create(model="smol", **body)  # type: ignore[call-overload]
    events, _ = _sse_events(server, "/v1/chat/completions", {**body, "stream": True})
    text_chunks = [e["choices"][0] for e in events if e["choices"][0]["delta"].get("content")]  # type: ignore[index]
    carried = [c["logprobs"]["content"] for c in text_chunks if c["logprobs"]]
    assert len(carried) >= len(text_chunks) - 1 >= 3  # not all held for the last chunk
    last = events[-1]["choices"][0]  # type: ignore[index]
    streamed = [t for part in carried for t in part] + (last["logprobs"] or {"content": []})["content"]
    assert whole.choices[0].logprobs is not None and whole.choices[0].logprobs.content is not None
    expected = [(t.token, t.logprob, len(t.top_logprobs)) for t in whole.choices[0].logprobs.content]
    assert [(t["token"], t["logprob"], len(t["top_logprobs"])) for t in streamed] == expected
    assert len(expected) == 8
    # Each chunk's tokens spell (at least) the text it carries, in order.
    assert "".join(t["token"] for t in streamed).startswith(whole.choices[0].message.content or "")


def test_completion_stream_carries_logprobs_per_chunk(server: Server) -> None:
    body = {"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "logprobs": 1}
    events, _ = _sse_events(server, "/v1/completions", {**body, "stream": True})
    parts = [e["choices"][0]["logprobs"] for e in events if e["choices"] and e["choices"][0]["logprobs"]]  # type: ignore[index]
    assert len(parts) >= 3
    tokens = [t for p in parts for t in p["tokens"]]
    offsets = [o for p in parts for o in p["text_offset"]]
    assert len(tokens) == 6
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]  # continuous over chunks
    whole = httpx.post(f"{server.base}/v1/completions", json=body, headers=AUTH, timeout=60).json()
    assert whole["choices"][0]["logprobs"]["tokens"] == tokens


def test_silent_strategy_stream_sends_keep_alive(server: Server) -> None:
    body = {
        "messages": QUESTION,
        "max_tokens": 48,
        "temperature": 0.7,
        "seed": 1,
        "self_consistency": {"samples": 2},
        "stream": True,
    }
    events, comments = _sse_events(server, "/v1/chat/completions", body)
    assert comments and set(comments) == {KEEP_ALIVE_COMMENT.strip()}
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")  # type: ignore[index]
    # The official client reads through the comments.
    stream = server.client(api_key=KEY).chat.completions.create(
        model="smol",
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=48,
        seed=1,
        stream=True,
        extra_body={"self_consistency": {"samples": 2}},
    )
    assert [c for c in stream if c.choices and c.choices[0].finish_reason]


def test_keep_alive_wrapper() -> None:
    async def slow() -> AsyncIterator[str]:
        await asyncio.sleep(0.35)
        yield "data: 1\n\n"
        yield "data: 2\n\n"

    async def collect(interval: float) -> list[str]:
        return [line async for line in _keep_alive(slow(), interval)]

    got = asyncio.run(collect(0.1))
    assert got[-2:] == ["data: 1\n\n", "data: 2\n\n"] and 2 <= len(got) - 2 <= 4
    assert set(got[:-2]) == {KEEP_ALIVE_COMMENT}
    assert asyncio.run(collect(0)) == ["data: 1\n\n", "data: 2\n\n"]


def test_keep_alive_wrapper_passes_errors_and_cleans_up() -> None:
    """An error in the events reaches the response; a client that leaves mid-stream runs the events'
    own cleanup (that is what cancels the request), with and without keep-alive comments."""
    closed: list[str] = []

    async def failing() -> AsyncIterator[str]:
        yield "data: 1\n\n"
        raise RuntimeError("engine gone")

    async def endless(tag: str) -> AsyncIterator[str]:
        try:
            while True:
                await asyncio.sleep(0.01)
                yield f"data: {tag}\n\n"
        finally:
            closed.append(tag)

    async def first_two(interval: float) -> list[str]:
        gen = _keep_alive(endless(str(interval)), interval)
        got = [await gen.__anext__(), await gen.__anext__()]
        await gen.aclose()  # the client left
        return got

    async def until_error() -> list[str]:
        got: list[str] = []
        with pytest.raises(RuntimeError, match="engine gone"):
            async for line in _keep_alive(failing(), 5.0):
                got.append(line)
        return got

    assert asyncio.run(until_error()) == ["data: 1\n\n"]
    assert asyncio.run(first_two(5.0)) == ["data: 5.0\n\n"] * 2
    assert asyncio.run(first_two(0)) == ["data: 0\n\n"] * 2
    assert closed == ["5.0", "0"]


def test_n_probs_is_llama_servers_top_logprobs(server: Server) -> None:
    chat = {"messages": QUESTION, "max_tokens": 4, "temperature": 0}
    by_name = _post(server, "/v1/chat/completions", {**chat, "n_probs": 2}).json()["choices"][0]["logprobs"]
    openai_way = _post(server, "/v1/chat/completions", {**chat, "logprobs": True, "top_logprobs": 2}).json()
    assert by_name == openai_way["choices"][0]["logprobs"]
    assert len(by_name["content"]) == 4 and all(len(t["top_logprobs"]) == 2 for t in by_name["content"])
    assert (
        _post(server, "/v1/chat/completions", {**chat, "n_probs": 0}).json()["choices"][0]["logprobs"] is None
    )
    text = {"prompt": "The capital of France is", "max_tokens": 3, "temperature": 0}
    got = _post(server, "/v1/completions", {**text, "n_probs": 3}).json()["choices"][0]["logprobs"]
    assert got == _post(server, "/v1/completions", {**text, "logprobs": 3}).json()["choices"][0]["logprobs"]
    assert [len(t) for t in got["top_logprobs"]] == [3, 3, 3]
    for bad in ({**chat, "n_probs": 3, "logprobs": True, "top_logprobs": 2}, {**chat, "n_probs": 21}):
        r = _post(server, "/v1/chat/completions", bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == "n_probs", r.text
