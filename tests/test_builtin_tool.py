"""The built-in Python tool (issue 23, items 1 and 3): the engine runs the model's code blocks itself.

The state machine runs on a byte-scripted backend (its "model" writes a script; the code runs in the
real sandbox); the loop on the real embedded GGUF runs both with the model's own code (SmolLM2 writes a
```python block unprompted) and with forced text: ``Forced`` wraps the real llama.cpp backend and makes
the sampler of a chosen seed emit a script's tokens first (code that sleeps, several samples' own code),
after which the real model samples; every token, forced or not, is decoded by llama.cpp.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

import edgereason as er
from edgereason import sandbox
from edgereason.backends.base import SamplingParams
from edgereason.errors import InvalidRequestError
from edgereason.job import ChatStream
from edgereason.options import GenerationOptions
from edgereason.tools import builtin
from edgereason.tools.builtin import CodeWatcher

from .scripted import ByteScriptBackend, ScriptedSampler, script_sampler
from .test_engine_reliability import outcome, settle, submit
from .test_server import Server, _start

CODE_PROMPT = [{"role": "user", "content": "Write a Python code block that prints 12 + 7."}]
SLEEP_CODE = "```python\nimport time\ntime.sleep({s})\nprint(6 * 7)\n```"


# -- the watcher: code blocks found in streamed text, however it is split ---------------------------------
TEXTS = [
    ("a\n```python\nx = 6\nx * 7\n```\nb", "x = 6\nx * 7", "\nb"),
    ("```py\nprint(1)\n```", "print(1)", ""),
    ("so <code>print(2)</code> then", "print(2)", " then"),
    ("see ``` and <cod then\n```python3\nif 1:\n    print(3)\n```", "if 1:\n    print(3)", ""),
]


@pytest.mark.parametrize(("text", "code", "after"), TEXTS)
def test_watcher_finds_a_block_at_every_split(text: str, code: str, after: str) -> None:
    for cut in range(len(text) + 1):
        for pieces in ([text[:cut], text[cut:]], list(text)):
            w = CodeWatcher()
            found = [b for b in map(w.feed, pieces) if b is not None]
            assert len(found) == 1 and found[0].code == code
            if len(pieces) == 2 and cut == len(text):
                assert found[0].after == after


def test_watcher_ignores_what_is_not_a_closed_block() -> None:
    w = CodeWatcher()
    for piece in ("```json\n{}\n```", "```python\n```", "no code", "<code>unclosed"):
        assert w.feed(piece) is None
    assert w.in_code
    w2 = CodeWatcher()
    assert w2.feed("```python\n" + "x" * (builtin.MAX_CODE_CHARS + 1)) is None and not w2.in_code


def test_options_name_the_bad_tool() -> None:
    assert GenerationOptions.build(None, {"builtin_tools": "python"}).builtin_tools == ("python",)
    with pytest.raises(InvalidRequestError) as err:
        GenerationOptions.build(None, {"builtin_tools": ["python", "bash"]})
    assert err.value.param == "builtin_tools" and "'bash'" in str(err.value)


# -- the state machine on a scripted "model" ----------------------------------------------------------------
class Scripts(ByteScriptBackend):
    def __init__(self, scripts: dict[int, str], *, max_sequences: int = 4) -> None:
        super().__init__(max_sequences=max_sequences)
        self.scripts = scripts

    def make_sampler(self, params: SamplingParams) -> ScriptedSampler:
        return script_sampler(params.seed, self.scripts.get(params.seed, "ok"))

    def decode(self, items: Any) -> list[int]:
        time.sleep(0.002)
        return super().decode(items)


def test_scripted_loop_injects_output_and_counts_it_apart() -> None:
    script = "Let me compute.\n<code>print(6 * 7)</code> so 42. <code>1/0</code>\n```python\nx = 5\nx + 1\n```\nDone."
    with er.Engine(Scripts({1: script})) as engine:  # type: ignore[arg-type]
        _, stream = submit(engine, "Q", seed=1, max_tokens=500, builtin_tools=["python"])
        res = outcome(stream)
        assert isinstance(res, er.ChatResult), res
        out1 = "\n<output>\n42\n</output>\n"
        out2 = "\n<output>\nZeroDivisionError: division by zero\n</output>\n"
        out3 = "\n<output>\n6\n</output>\n"  # the block closes at its last backtick: "\n" was not written yet
        assert res.content == (
            f"Let me compute.\n<code>print(6 * 7)</code>{out1} so 42. <code>1/0</code>{out2}\n"
            f"```python\nx = 5\nx + 1\n```{out3}\nDone."
        )
        tool = res.choices[0].extra["python_tool"]
        assert tool["calls"] == 3 and tool["errors"] == 1 and tool["tokens"] == len(out1 + out2 + out3)
        assert res.choices[0].completion_tokens == len(script)  # the model's tokens only
        u = res.usage
        assert u.tool_calls == 3 and u.tool_tokens == tool["tokens"] and 0 < u.tool_wall_s < 10
        assert u.completion_tokens == len(script) + u.tool_tokens
        assert u.to_dict()["completion_tokens_details"]["tool_tokens"] == u.tool_tokens
        assert settle(engine) == 0


def test_scripted_max_tool_calls_then_blocks_stay_text() -> None:
    script = "<code>print(1)</code><code>print(2)</code><code>print(3)</code>end"
    with er.Engine(Scripts({1: script})) as engine:  # type: ignore[arg-type]
        res = outcome(
            submit(engine, "Q", seed=1, max_tokens=500, builtin_tools=["python"], max_tool_calls=2)[1]
        )
        assert isinstance(res, er.ChatResult)
        assert "<output>\n1\n</output>" in res.content and "<output>\n2\n</output>" in res.content
        assert res.content.endswith("<code>print(3)</code>end") and res.usage.tool_calls == 2
        plain = outcome(submit(engine, "Q", seed=1, max_tokens=500)[1])
        assert (
            isinstance(plain, er.ChatResult)
            and plain.content == script
            and "python_tool" not in plain.choices[0].extra
        )


def test_waiting_on_a_tool_is_not_a_stall_nor_a_wedge() -> None:
    code = "<code>import time; time.sleep(1.2); print('up')</code>!"
    with er.Engine(Scripts({1: code}), wedge_timeout_s=0.3) as engine:  # type: ignore[arg-type]
        _, stream = submit(engine, "Q", seed=1, max_tokens=100, builtin_tools=["python"])
        seen: list[str | None] = []
        while not stream._job.done:
            seen.append(engine.stopped_reason)
            time.sleep(0.05)
        res = outcome(stream)
        assert isinstance(res, er.ChatResult) and res.content.endswith("<output>\nup\n</output>\n!")
        assert len(seen) > 10 and set(seen) == {None}


def test_a_tool_that_never_returns_is_a_stall(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def hang(code: str, **kw: Any) -> sandbox.ToolResult:
        release.wait(30)
        return sandbox.ToolResult("late", True, None, False, 30.0, True)

    monkeypatch.setattr(sandbox, "run_python", hang)
    monkeypatch.setattr(builtin, "TOOL_GRACE_S", 0.5)
    try:
        with er.Engine(Scripts({1: "<code>1</code>"}), python_tool_timeout_s=0.1) as engine:  # type: ignore[arg-type]
            t0 = time.monotonic()
            err = outcome(submit(engine, "Q", seed=1, max_tokens=50, builtin_tools=["python"])[1])
            assert isinstance(err, RuntimeError) and "did not return" in str(err)
            assert time.monotonic() - t0 < 5 and settle(engine) == 0 and engine.stopped_reason is None
            assert engine.complete("P", seed=1, temperature=0.0, max_tokens=5).content
    finally:
        release.set()


def test_sandbox_failures_are_the_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "sandbox_unavailable_reason", lambda: "user namespaces are disabled (test)")
    with er.Engine(Scripts({1: "<code>1</code>x"})) as engine:  # type: ignore[arg-type]
        with pytest.raises(InvalidRequestError) as err:
            submit(engine, "Q", seed=1, builtin_tools=["python"])
        msg = str(err.value)
        assert err.value.param == "builtin_tools" and "user namespaces are disabled (test)" in msg
        assert "--unsafe-python-tool" in msg
        assert engine.complete("Q", seed=1, temperature=0.0, max_tokens=5).content == "<code"  # no tool: text

        def refuse(code: str, **kw: Any) -> sandbox.ToolResult:
            raise sandbox.SandboxUnavailableError("the sandbox went away (test)")

        engine.tools.unsafe = True  # the operator opted out: the request is taken; the run then fails
        monkeypatch.setattr(sandbox, "run_python", refuse)
        failed = outcome(submit(engine, "Q", seed=1, max_tokens=50, builtin_tools=["python"])[1])
        assert isinstance(failed, sandbox.SandboxUnavailableError)
        assert settle(engine) == 0 and engine.stopped_reason is None


# -- the real embedded model ----------------------------------------------------------------------------
@dataclass
class _ForcedSampler:
    inner: Any
    forced: list[int] = field(default_factory=list)

    def close(self) -> None:
        self.inner.close()


class Forced:
    """The real backend; a sampler whose seed has a script emits its tokens first (then EOS if it ends
    with ``<eos>``), and the model samples after that."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.scripts: dict[int, str] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def make_sampler(self, params: SamplingParams) -> _ForcedSampler:
        script = self.scripts.get(params.seed, "")
        end = script.endswith("<eos>")
        tokens = self.inner.tokenize(script.removesuffix("<eos>")) if script else []
        if end:
            tokens += self.inner.tokenize(self.inner.info.eos_token)
        return _ForcedSampler(self.inner.make_sampler(params), tokens)

    def sample(self, sampler: _ForcedSampler, logits: int) -> int:
        if sampler.forced:
            return sampler.forced.pop(0)
        return int(self.inner.sample(sampler.inner, logits))


@pytest.fixture(scope="module")
def forced(model_path: Path) -> Iterator[tuple[er.Engine, Forced]]:
    from edgereason.backends.llama_cpp import LlamaCppBackend

    backend = Forced(LlamaCppBackend(model_path, n_ctx=1024, threads=1, max_sequences=6))
    with er.Engine(backend) as engine:  # type: ignore[arg-type]
        yield engine, backend


def test_real_model_runs_its_own_code(forced: tuple[er.Engine, Forced]) -> None:
    engine, _ = forced  # no script for seed 0: the model writes everything itself
    res = engine.chat(CODE_PROMPT, seed=0, temperature=0.0, max_tokens=30, builtin_tools=["python"])
    assert res.content.startswith("```python\nprint(12 + 7)\n```\n<output>\n19\n</output>\n")
    u, tool = res.usage, res.choices[0].extra["python_tool"]
    assert tool["calls"] == 1 == u.tool_calls and tool["errors"] == 0 and 5 <= u.tool_tokens <= 15
    assert u.completion_tokens == res.choices[0].completion_tokens + u.tool_tokens
    assert len(res.content) > len("```python\nprint(12 + 7)\n```\n<output>\n19\n</output>\n")  # it went on
    # Without the tool the same block stays text.
    plain = engine.chat(CODE_PROMPT, seed=0, temperature=0.0, max_tokens=30)
    assert plain.content.startswith("```python\nprint(12 + 7)\n```") and "<output>" not in plain.content


def _drain(stream: ChatStream, log: list[tuple[float, str, str]]) -> threading.Thread:
    def run() -> None:
        for c in stream:
            log.append((time.monotonic(), c.channel, c.text))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_other_requests_decode_while_a_tool_sleeps(forced: tuple[er.Engine, Forced]) -> None:
    engine, backend = forced
    backend.scripts = {101: SLEEP_CODE.format(s=1.5)}
    a_log: list[tuple[float, str, str]] = []
    b_log: list[tuple[float, str, str]] = []
    a = engine.stream_completion(
        "Compute 6 * 7.\n", seed=101, temperature=0.0, max_tokens=30, builtin_tools=["python"]
    )
    b = engine.stream_completion("Once upon a time", seed=7, temperature=0.0, max_tokens=400, ignore_eos=True)
    threads = [_drain(a, a_log), _drain(b, b_log)]
    for t in threads:
        t.join(120)
    i = next(k for k, (_, _, text) in enumerate(a_log) if "<output>" in text)
    paused, resumed = a_log[i - 1][0], a_log[i][0]
    assert "<output>\n42\n</output>" in a_log[i][2] and resumed - paused >= 1.4
    during = [t for t, _, _ in b_log if paused < t < resumed]
    # B kept streaming at its usual rate while A's code slept (measured: ~20-40 tokens per second here).
    rate = len(b_log) / (b_log[-1][0] - b_log[0][0])
    assert len(during) >= 0.5 * rate * (resumed - paused), (len(during), rate)
    assert a.result is not None and a.result.usage.tool_calls == 1


def test_cancel_during_a_tool_frees_the_sequences(forced: tuple[er.Engine, Forced]) -> None:
    engine, backend = forced
    backend.scripts = {102: SLEEP_CODE.format(s=3)}
    stream = engine.stream_completion(
        "Compute.\n", seed=102, temperature=0.0, max_tokens=40, builtin_tools=["python"]
    )
    text = ""
    for c in stream:
        text += c.text
        if text.endswith("print(6 * 7)\n```"):  # the block is closed: the tool starts
            break
    deadline = time.monotonic() + 10
    while not engine.tools.waiting(stream._job) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.tools.waiting(stream._job)
    t0 = time.monotonic()
    stream.cancel()
    assert settle(engine, timeout=2.0) == 0 and time.monotonic() - t0 < 1.0  # freed before the code ends
    done = engine.complete("Hello", seed=1, temperature=0.0, max_tokens=4)
    assert done.finish_reason == "length"
    while engine.tools.waiting(stream._job) and time.monotonic() < deadline + 5:
        time.sleep(0.05)  # the run ends in the background; its output is dropped
    assert not engine.tools.waiting(stream._job) and engine.live_sequences == 0
    assert engine.stopped_reason is None


def test_tool_call_inside_a_thinking_budget(forced: tuple[er.Engine, Forced]) -> None:
    engine, backend = forced
    code = "```python\nprint(6 * 7)\n```"
    backend.scripts = {103: code}
    n_code = len(backend.inner.tokenize(code))
    budget = n_code + 6
    chunks: list[tuple[str, str]] = []
    stream = engine.stream(
        [{"role": "user", "content": "What is 6 * 7?"}],
        seed=103,
        temperature=0.0,
        max_tokens=60,
        thinking=True,
        thinking_budget=budget,
        builtin_tools=["python"],
    )
    chunks = [(c.channel, c.text) for c in stream]
    res = stream.result
    assert res is not None
    reasoning = "".join(t for ch, t in chunks if ch == "reasoning")
    assert reasoning == res.reasoning and "<output>\n42\n</output>" in reasoning
    assert "<output>" not in res.content
    c, u = res.choices[0], res.usage
    # The budget counts what the model wrote: the output's tokens come on top of it.
    assert c.reasoning_tokens <= budget < c.reasoning_tokens + u.tool_tokens
    assert c.thinking_stopped_by in ("budget", "model") and u.tool_calls == 1


def test_self_consistency_samples_run_their_own_code(forced: tuple[er.Engine, Forced]) -> None:
    engine, backend = forced
    codes = {200: "print(7 * 2)", 201: "print(2 * 7)", 202: "print(13)"}
    # Each sample writes its code and stops: its answer is the number its own run printed.
    backend.scripts = {s: f"```python\n{c}\n```\n<eos>" for s, c in codes.items()}
    res = engine.complete(
        "What is 7 * 2?\n", seed=200, max_tokens=60, builtin_tools=["python"], self_consistency={"samples": 3}
    )
    rep = res.extra["self_consistency"]
    assert rep["votes"] == {"14": 2, "13": 1} and rep["answer"] == "14"
    tools = {s["index"]: s["python_tool"] for s in rep["samples"]}
    assert all(tools[i]["calls"] == 1 and tools[i]["errors"] == 0 for i in range(3))
    assert res.usage.tool_calls == 3 and res.usage.tool_tokens == sum(t["tokens"] for t in tools.values())
    assert res.content.startswith("```python\nprint(7 * 2)\n```\n<output>\n14\n</output>\n")
    assert settle(engine) == 0


def test_self_consistency_prefers_samples_whose_code_ran(forced: tuple[er.Engine, Forced]) -> None:
    engine, backend = forced
    broken = "```python\nprint(7 *)\n```\nThe answer is 15.<eos>"  # a SyntaxError, then a guess
    backend.scripts = {210: "```python\nprint(7 * 2)\n```\n<eos>", 211: broken, 212: broken}
    kw: dict[str, Any] = {"seed": 210, "max_tokens": 60, "builtin_tools": ["python"]}
    res = engine.complete("What is 7 * 2?\n", **kw, self_consistency={"samples": 3})
    rep = res.extra["self_consistency"]
    # The two failed runs lose their votes (their own answers stay in the report); the run that worked wins.
    assert rep["failed_code_dropped"] == [1, 2] and rep["votes"] == {"14": 1} and rep["answer"] == "14"
    by_index = {s["index"]: (s["answer"], s["python_tool"]["errors"]) for s in rep["samples"]}
    assert by_index == {0: ("14", 0), 1: ("15", 1), 2: ("15", 1)}
    keep = engine.complete("What is 7 * 2?\n", **kw, self_consistency={"samples": 3, "failed_code": "keep"})
    rep = keep.extra["self_consistency"]
    assert rep["votes"] == {"15": 2, "14": 1} and rep["answer"] == "15" and "failed_code_dropped" not in rep
    assert settle(engine) == 0


def test_lorid_roles_run_their_own_code(model_path: Path) -> None:
    """LoRID's roles may use the tool: IR and DR each run their code; the loop votes on what it printed."""
    from edgereason.backends.llama_cpp import LlamaCppBackend
    from edgereason.models import student_preset

    roles = {r: p for r, p in student_preset().adapters.items() if r in ("ir", "kg", "dr")}
    backend = Forced(LlamaCppBackend(model_path, n_ctx=1024, threads=1, max_sequences=4, adapters=roles))
    # Role seeds are seed + 3 * iteration + (ir 0, kg 1, dr 2).
    backend.scripts = {
        300: "```python\nprint(3 + 4)\n```\n<eos>",
        301: "Three apples and four apples make seven apples.<eos>",
        302: "```python\napples = 3\nprint(apples + 4)\n```\n<eos>",
    }
    with er.Engine(backend) as engine:  # type: ignore[arg-type]
        q = [{"role": "user", "content": "Sam has 3 apples and gets 4 more. How many apples?"}]
        res = engine.chat(q, seed=300, max_tokens=60, strategy="lorid", builtin_tools=["python"])
        assert settle(engine) == 0
    rep = res.extra["lorid"]
    assert rep["agreed"] and rep["iterations"] == 1 and rep["ir_answers"] == rep["dr_answers"] == ["7"]
    assert res.usage.tool_calls == 2 and res.usage.tool_tokens > 0  # IR's and DR's runs; KG wrote none
    assert res.content.startswith("```python\napples = 3\nprint(apples + 4)\n```\n<output>\n7\n</output>")
    assert res.usage.completion_tokens == res.choices[0].completion_tokens + res.usage.tool_tokens


# -- the server: the output streams in the channel the model was writing in -----------------------------
@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from _start("--tool", "python")  # a server runs model-written code only when told to


def _stream(client: openai.OpenAI, **extra: Any) -> tuple[str, str, Any]:
    content, reasoning, last = "", "", None
    for chunk in client.chat.completions.create(
        model="default",
        messages=CODE_PROMPT,  # type: ignore[arg-type]
        temperature=0.0,
        max_tokens=30,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"builtin_tools": ["python"], **extra},
    ):
        if chunk.choices:
            delta = chunk.choices[0].delta
            content += delta.content or ""
            reasoning += getattr(delta, "reasoning_content", None) or ""
            if chunk.choices[0].finish_reason is not None:
                last = chunk
        else:
            last = (last, chunk)
    return content, reasoning, last


def test_server_streams_tool_output_in_its_channel(server: Server) -> None:
    client = server.client(timeout=120)
    content, reasoning, (final, usage_chunk) = _stream(client)
    assert "```\n<output>\n19\n</output>\n" in content and reasoning == ""
    report = final.model_extra["edgereason"]["tool_calls"]
    assert report["count"] == 1 and 0 < report["wall_s"] < 10 and report["tokens"] > 0
    assert usage_chunk.usage.completion_tokens_details.model_extra["tool_tokens"] == report["tokens"]
    content, reasoning, _ = _stream(client, thinking=True)
    assert "<output>\n19\n</output>" in reasoning and "<output>" not in content
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="default",
            messages=CODE_PROMPT,
            max_tokens=5,
            extra_body={"builtin_tools": ["shell"]},  # type: ignore[arg-type]
        )
    assert err.value.body["param"] == "builtin_tools"  # type: ignore[index]


# -- who switches it on: the operator (serve --tool python), the CLI per run, never a remote engine -------
def test_an_engine_with_the_tool_off_refuses_by_name(model_path: Path) -> None:
    with er.load(model_path, n_ctx=256, threads=1, max_sequences=1, python_tool=False) as engine:
        with pytest.raises(InvalidRequestError, match="--tool python") as err:
            engine.chat(CODE_PROMPT, max_tokens=4, builtin_tools=["python"])
        assert err.value.param == "builtin_tools"
        assert engine.chat(CODE_PROMPT, max_tokens=4).usage.completion_tokens == 4  # it goes on serving


def test_serve_settings_switch_the_tool_on_only_when_told() -> None:
    import argparse

    from edgereason.server.settings import ServerSettings, add_settings_flags, settings_from_args

    parser = argparse.ArgumentParser()
    add_settings_flags(parser)
    off = settings_from_args(parser.parse_args([]))
    on = settings_from_args(parser.parse_args(["--tool", "python", "--unsafe-python-tool"]))
    assert not off.engine_spec().python_tool and not off.engine_spec().unsafe_python_tool
    assert on.engine_spec().python_tool and on.engine_spec().unsafe_python_tool
    with pytest.raises(ValueError, match="unknown tool 'shell'"):
        ServerSettings(tool=["shell"])


def test_cli_run_with_the_tool(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgereason.cli.main import main

    argv = ["run", CODE_PROMPT[0]["content"], "--model", str(model_path), "--tool", "python"]
    assert main([*argv, "--max-tokens", "30", "--temp", "0", "-t", "1", "-c", "256", "-np", "1"]) == 0
    assert "```\n<output>\n19\n</output>\n" in capsys.readouterr().out


def test_a_remote_engine_refuses_the_tool(server: Server) -> None:
    with er.load(f"openai://{server.base.removeprefix('http://')}/v1/default") as remote:
        with pytest.raises(InvalidRequestError, match="--tool python") as err:
            remote.chat(CODE_PROMPT, max_tokens=4, builtin_tools=["python"])
        assert err.value.param == "builtin_tools"
