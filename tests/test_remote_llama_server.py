"""The remote engine against llama.cpp's own llama-server (a real process on loopback, the same GGUF).

llama-server is built from the llama.cpp that our llama-cpp-python vendors (``edgereason.peer``), so the
same model, flags and tokens give the same logits as the local engine — with two exceptions measured here
and documented in the README ("Remote backend"): flash attention (llama-server's ``-fa auto`` turns it on;
EdgeReason keeps it off) and llama-server's prompt cache, which re-decodes only the last token of a
fully cached prompt (one query row: another kernel path on this build, see README "Determinism"). The
comparisons with the local engine therefore run with ``--flash-attn off`` (as ``llama_server_args``
builds it) and ``cache_prompt: false``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import edgereason as er
from edgereason import peer
from edgereason.errors import UnknownAdapterError
from edgereason.options import DEFAULT_WRAP_UP
from edgereason.remote import RemoteEngine, load_remote

from .conftest import tiny_base_with_role_adapters

N_CTX = 512  # per slot, and the local engine's per sequence
SLOTS = 4
QUESTIONS = [
    [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have?"}],
    [{"role": "user", "content": "Name a color."}],
    [{"role": "user", "content": "If a train goes 60 km in 1 hour, how far in 3 hours?"}],
    [{"role": "user", "content": "What is 12 + 7? Answer briefly."}],
]
COLD = {"cache_prompt": False}  # llama-server decodes the whole prompt (see the module docstring)


@pytest.fixture(scope="module")
def binary() -> Path:
    found = peer.find_llama_server()
    if found is None:
        pytest.skip(f"SKIPPED LOUDLY: no llama-server to test against. {peer.how_to_build()}")
    return found


@contextlib.contextmanager
def _llama_server(
    binary: Path, model: Path, *extra: str, flash_attn: bool = False
) -> Iterator[peer.RunningServer]:
    port = peer.free_port()
    layout = peer.ServerLayout(threads=1, ctx_per_slot=N_CTX, slots=SLOTS, flash_attn=flash_attn)
    argv = [
        str(binary),
        *peer.llama_server_args(model, layout, port=port, extra_args=["--alias", "smol", *extra]),
    ]
    with peer.run_server(argv, port, name="llama-server") as server:
        yield server


@pytest.fixture(scope="module")
def server(binary: Path, model_path: Path) -> Iterator[peer.RunningServer]:
    with _llama_server(binary, model_path) as s:
        yield s


@pytest.fixture(scope="module")
def local(model_path: Path) -> Iterator[er.Engine]:
    eng = er.load(model_path, n_ctx=N_CTX, max_sequences=SLOTS, threads=1)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def remote(server: peer.RunningServer) -> Iterator[RemoteEngine]:
    eng = load_remote(base_url=f"{server.base_url}/v1", model="smol")
    yield eng
    eng.close()


def _direct(server: peer.RunningServer, messages: list[dict[str, Any]], **body: Any) -> dict[str, Any]:
    """llama-server's own answer to the equivalent request, without our client."""
    r = httpx.post(f"{server.base_url}/v1/chat/completions", json={"messages": messages, **body}, timeout=120)
    r.raise_for_status()
    return r.json()


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
    # cached_tokens is each server's own prefix-cache history.
    assert dataclasses.replace(a.usage, cached_tokens=0) == dataclasses.replace(b.usage, cached_tokens=0)


def test_detects_llama_server_and_its_template(remote: RemoteEngine, local: er.Engine) -> None:
    assert remote.flavor == "llamacpp" and remote.info.format == "remote"
    assert remote.chat_template == local.chat_template  # from GET /props
    assert (remote.info.bos_token, remote.info.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert remote.adapter_names == []  # GET /lora-adapters: none loaded


def test_greedy_chat_equals_llama_servers_own_answer_and_local(
    server: peer.RunningServer, remote: RemoteEngine, local: er.Engine
) -> None:
    for q in QUESTIONS:
        direct = _direct(server, q, temperature=0, max_tokens=48, **COLD)
        got = remote.chat(q, temperature=0.0, max_tokens=48, **COLD)
        want = local.chat(q, temperature=0.0, max_tokens=48)
        assert got.content == direct["choices"][0]["message"]["content"] == want.content
        _same(got, want)
        # llama-server counts the end-of-generation token in usage; we count text tokens, as local does.
        eog = 1 if direct["choices"][0]["finish_reason"] == "stop" else 0
        assert direct["usage"]["completion_tokens"] == want.usage.completion_tokens + eog
        assert direct["usage"]["prompt_tokens"] == want.usage.prompt_tokens


def test_a_fully_cached_prompt_decodes_its_last_token_alone(
    server: peer.RunningServer, local: er.Engine
) -> None:
    """The cause of llama-server's greedy answers that differ from a cold run: with its prompt cache on (the
    default), a prompt it has seen is re-decoded from its last token, a lone query row, whose logits differ
    on this llama.cpp build. EdgeReason's prefix cache re-decodes at least two tokens, so a hit equals cold."""
    q = QUESTIONS[1]  # "Name a color.": the lone row's logits change the first token
    kw = {"temperature": 0, "max_tokens": 24}
    cold = _direct(server, q, **kw, **COLD)
    _direct(server, q, **kw)  # fills the slot's cache
    hit = _direct(server, q, **kw)
    prompt = hit["usage"]["prompt_tokens"]
    assert hit["usage"]["prompt_tokens_details"]["cached_tokens"] == prompt - 1
    assert hit["choices"][0]["message"]["content"] != cold["choices"][0]["message"]["content"]
    first = local.chat(q, temperature=0.0, max_tokens=24)
    again = local.chat(q, temperature=0.0, max_tokens=24)
    assert again.usage.cached_tokens >= prompt - 2
    assert again.content == first.content == cold["choices"][0]["message"]["content"]


def test_flash_attention_changes_greedy_text(binary: Path, model_path: Path, local: er.Engine) -> None:
    """llama-server's default -fa auto turns flash attention on for this CPU build; EdgeReason keeps it off.
    On the same prompts, a cold greedy run with it on differs from local within 48 tokens (measured: 7 of
    12 prompts), and with it off equals local (12 of 12)."""
    q = QUESTIONS[1]
    want = local.chat(q, temperature=0.0, max_tokens=48).content
    with _llama_server(binary, model_path, flash_attn=True) as fa:
        got = _direct(fa, q, temperature=0, max_tokens=48, **COLD)["choices"][0]["message"]["content"]
    assert got != want
    assert got[:20] == want[:20]  # the same model: it drifts after a few tokens, not from the start


def test_stream_equals_chat(remote: RemoteEngine) -> None:
    kw = {"max_tokens": 32, "temperature": 0.0, "thinking": True, **COLD}
    full = remote.chat(QUESTIONS[0], **kw)
    stream = remote.stream(QUESTIONS[0], **kw)
    chunks = list(stream)
    assert stream.result is not None and len(chunks) > 3
    assert "".join(c.text for c in chunks if c.channel == "reasoning") == full.reasoning
    assert "".join(c.text for c in chunks if c.channel == "content") == full.content
    _same(stream.result, full)


def test_n_choices_and_logprobs(remote: RemoteEngine, local: er.Engine) -> None:
    kw = {"max_tokens": 12, "temperature": 0.8, "seed": 5, "n": 3, "logprobs": True, "top_logprobs": 2}
    got, want = remote.chat(QUESTIONS[0], **kw, **COLD), local.chat(QUESTIONS[0], **kw)
    assert len(got.choices) == 3 and [c.index for c in got.choices] == [0, 1, 2]
    assert len({c.content for c in got.choices}) > 1  # seeds seed + index, as local
    _same(got, want)
    for x, y in zip(got.choices, want.choices):
        assert x.logprobs is not None and y.logprobs is not None
        assert len(x.logprobs) == x.completion_tokens == 12
        assert [t.token for t in x.logprobs] == [t.token for t in y.logprobs]
        assert all(len(t.top) == 2 for t in x.logprobs)
        assert [t.logprob for t in x.logprobs] == pytest.approx([t.logprob for t in y.logprobs], abs=1e-3)
        assert [a for t in x.logprobs for a, _ in t.top] == [a for t in y.logprobs for a, _ in t.top]


@pytest.mark.parametrize("budget", [0, 8, 24])
def test_exact_thinking_budgets(remote: RemoteEngine, local: er.Engine, budget: int) -> None:
    # The prompt is rendered here, "<think>\n" appended, and continued on /v1/completions token by token.
    kw = {"max_tokens": 64, "temperature": 0.0, "thinking": True, "thinking_budget": budget}
    got, want = remote.chat(QUESTIONS[0], **kw, **COLD), local.chat(QUESTIONS[0], **kw)
    _same(got, want)
    assert got.choices[0].reasoning_tokens == budget  # the model would think longer: the cap is exact
    assert got.thinking_stopped_by == "budget" and got.content


def test_early_exit_probes_like_local(remote: RemoteEngine, local: er.Engine) -> None:
    """thinking_budget='auto' on llama-server: the remote executor streams the continuation, probes at the
    same marker (a separate /v1/completions request) and exits where the local engine does."""
    kw: dict[str, Any] = {
        "max_tokens": 90,
        "temperature": 0.0,
        "thinking": True,
        "thinking_budget": "auto",
        "auto_budget_cap": 60,
        "transition_markers": ["\n", "Wait", "So"],
        "early_exit_threshold": 0.5,
    }
    got, want = remote.chat(QUESTIONS[0], **kw, **COLD), local.chat(QUESTIONS[0], **kw)
    g, w = got.choices[0], want.choices[0]
    assert (g.reasoning, g.content, g.thinking_stopped_by) == (w.reasoning, w.content, w.thinking_stopped_by)
    assert g.thinking_stopped_by == "early_exit" and g.extra["early_exit_probe_count"] >= 1
    assert (g.completion_tokens, g.reasoning_tokens) == (w.completion_tokens, w.reasoning_tokens)
    probes = [(p["at"], p["answer"]) for p in g.extra["early_exit_probes"]]
    assert probes == [(p["at"], p["answer"]) for p in w.extra["early_exit_probes"]]
    # The trial answer's confidence: the same tokens scored by two paths (a fork locally, a re-sent
    # prompt remotely), so close but not bit-equal.
    for p, q in zip(g.extra["early_exit_probes"], w.extra["early_exit_probes"]):
        assert abs(p["confidence"] - q["confidence"]) < 0.1
    assert got.usage.probe_tokens == want.usage.probe_tokens > 0
    assert (got.usage.completion_tokens, got.usage.prompt_tokens) == (
        want.usage.completion_tokens,
        want.usage.prompt_tokens,
    )


def test_min_thinking_waits_like_local(remote: RemoteEngine, local: er.Engine) -> None:
    """min_thinking on llama-server: an end of thinking before the minimum becomes "Wait", as local. The
    continuation re-sends the text, so after the first "Wait" the server may tokenize a junction otherwise
    and the two runs may part."""
    kw: dict[str, Any] = {"max_tokens": 100, "temperature": 0.0, "thinking": True, "min_thinking": 60}
    got, want = remote.chat(QUESTIONS[0], **kw, **COLD), local.chat(QUESTIONS[0], **kw)
    g, w = got.choices[0], want.choices[0]
    assert g.extra["thinking_waits"] == w.extra["thinking_waits"] >= 1
    first = w.reasoning.index("\nWait")
    assert g.reasoning[: first + 5] == w.reasoning[: first + 5]
    assert g.reasoning_tokens >= 60 and w.reasoning_tokens >= 60


def test_loop_guard_closes_thinking_like_local(remote: RemoteEngine, local: er.Engine) -> None:
    q = [{"role": "user", "content": "Say 'I am a robot.' five times."}]
    kw: dict[str, Any] = {"max_tokens": 150, "temperature": 0.0, "thinking": True, "loop_guard": True}
    got, want = remote.chat(q, **kw, **COLD), local.chat(q, **kw)
    g, w = got.choices[0], want.choices[0]
    assert (g.thinking_stopped_by, g.extra["loop_guard_reason"]) == ("loop_guard", "repeated sentence")
    assert (g.reasoning, g.content, g.reasoning_tokens, g.completion_tokens) == (
        w.reasoning,
        w.content,
        w.reasoning_tokens,
        w.completion_tokens,
    )
    assert w.thinking_stopped_by == "loop_guard" and g.reasoning.endswith(DEFAULT_WRAP_UP)


def test_steered_choices_keep_their_log_probs(remote: RemoteEngine) -> None:
    """A streamed (steered) continuation keeps each token's log-prob: logprobs=True and DeepConf votes work."""
    kw: dict[str, Any] = {"max_tokens": 30, "thinking": True, "loop_guard": True}
    c = remote.chat(QUESTIONS[0], temperature=0.0, logprobs=True, top_logprobs=2, **kw, **COLD).choices[0]
    assert c.logprobs is not None and len(c.logprobs) == c.completion_tokens > 0
    rep = remote.chat(QUESTIONS[0], seed=1, self_consistency=2, **kw, **COLD).extra["self_consistency"]
    assert all(s["confidence"] > 0 for s in rep["samples"])


def test_self_consistency_over_n(remote: RemoteEngine, local: er.Engine) -> None:
    kw = {"max_tokens": 40, "seed": 11, "self_consistency": 4}
    rep = remote.chat(QUESTIONS[0], **kw, **COLD).extra["self_consistency"]
    want = local.chat(QUESTIONS[0], **kw).extra["self_consistency"]
    assert rep["samples_used"] == 4 and remote.n_ok  # one request with n=4
    by_index = {s["index"]: (s["answer"], s["tokens"]) for s in rep["samples"]}
    assert by_index == {s["index"]: (s["answer"], s["tokens"]) for s in want["samples"]}
    assert (rep["votes"], rep["answer"]) == (want["votes"], want["answer"])


def test_adaptive_self_consistency_stops_in_rounds(remote: RemoteEngine, local: er.Engine) -> None:
    sc = {"samples": 12, "adaptive": "esc", "window": 2, "temperature": 0.0}
    rep = remote.chat(QUESTIONS[3], max_tokens=16, seed=1, self_consistency=sc, **COLD).extra[
        "self_consistency"
    ]
    want = local.chat(QUESTIONS[3], max_tokens=16, seed=1, self_consistency=sc).extra["self_consistency"]
    assert rep["samples_used"] == 2 and rep["stopped_early"] and rep["stop_rule"] == "esc"
    assert (rep["answer"], rep["votes"], rep["samples_used"]) == (
        want["answer"],
        want["votes"],
        want["samples_used"],
    )


# -- LoRA: llama-server's --lora and the per-request "lora" field ----------------------------------------------
@pytest.fixture(scope="module")
def lora_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    return tiny_base_with_role_adapters(tmp_path_factory.mktemp("lora"))


@pytest.mark.convert
def test_lora_per_request_and_lorid_equal_local(
    binary: Path, lora_model: tuple[Path, dict[str, Path]]
) -> None:
    base, lora = lora_model
    q = [{"role": "user", "content": "What is 3 + 4?"}]
    greedy = {"temperature": 0.0, "max_tokens": 16}
    lorid = {"seed": 1, "max_tokens": 16, "lorid": {"max_iterations": 2}}
    with er.load(base, adapters=lora, n_ctx=N_CTX, max_sequences=SLOTS, threads=1) as loc:
        want = {name: loc.chat(q, adapter=name, **greedy) for name in lora}
        want_base = loc.chat(q, **greedy)
        want_lorid = loc.chat(q, **lorid)
        template = loc.chat_template
    flags = [f for p in lora.values() for f in ("--lora", str(p))]
    with (
        _llama_server(binary, base, *flags) as srv,
        load_remote(base_url=f"{srv.base_url}/v1", model="smol") as eng,
    ):
        assert eng.adapter_names == sorted(lora)  # GET /lora-adapters, named by file stem
        assert eng.chat_template == template
        for name in lora:
            _same(eng.chat(q, adapter=name, **greedy, **COLD), want[name])
        _same(eng.chat(q, **greedy, **COLD), want_base)  # every scale sent as 0: no adapter stays applied
        assert len({want[n].content for n in lora} | {want_base.content}) > 1  # the adapters change the text
        with pytest.raises(UnknownAdapterError, match="'nope'"):
            eng.chat(q, adapter="nope")
        got = eng.chat(q, **lorid, **COLD)
    assert got.extra["lorid"] == want_lorid.extra["lorid"]
    assert (got.content, got.answer, got.usage.completion_tokens) == (
        want_lorid.content,
        want_lorid.answer,
        want_lorid.usage.completion_tokens,
    )
