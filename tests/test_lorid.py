"""The LoRID loop's state machine over a scripted backend: agreement at iteration k, never, cancellation."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

import edgereason as er
from edgereason.backends.base import (
    AdapterSet,
    BatchItem,
    SamplingParams,
)
from edgereason.errors import InvalidRequestError, UnknownAdapterError
from edgereason.options import DEFAULT_LORID_PROMPTS, GenerationOptions
from edgereason.scheduler import Scheduler, Seq

from .scripted import EOS, ByteScriptBackend, ScriptedSampler, script_sampler

ROLES = ("ir", "kg", "dr")
TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


class LoridBackend(ByteScriptBackend):
    """Role and iteration come from the sampler seed (LoRID seeds ``seed + 3 * iteration + role``).

    ``answers[role][k]`` is what that role writes at iteration k (the last entry repeats). Every decode
    records the adapter set active for each slot, so tests can check each role ran under its adapter.
    """

    def __init__(self, answers: dict[str, list[str]], adapters: Sequence[str] = ROLES) -> None:
        super().__init__(chat_template=TEMPLATE, lora=True)
        self.answers = answers
        self.adapter_names = sorted(adapters)
        self.active: AdapterSet = ()
        self.prompts: list[tuple[AdapterSet, str]] = []  # (adapters, prompt text) of each prefill

    def decode(self, items: Sequence[BatchItem]) -> list[int]:
        for it in items:
            if len(it.tokens) > 1:
                self.prompts.append((self.active, bytes(it.tokens).decode()))
        return super().decode(items)

    def make_sampler(self, params: SamplingParams) -> ScriptedSampler:
        k, r = divmod(params.seed, 3)
        script = self.answers[ROLES[r]]
        return script_sampler(params.seed, script[min(k, len(script) - 1)])

    def set_adapters(self, adapters: AdapterSet) -> None:
        assert all(name in self.adapter_names for name, _ in adapters)
        self.active = adapters


def run(answers: dict[str, list[str]], **lorid: object) -> tuple[er.ChatResult, LoridBackend]:
    backend = LoridBackend(answers)
    with er.Engine(backend) as engine:  # type: ignore[arg-type]
        res = engine.chat([{"role": "user", "content": "What is 3 + 4?"}], seed=0, max_tokens=64, lorid=lorid)
    return res, backend


def test_agreement_at_first_iteration() -> None:
    res, backend = run({"ir": ["The answer is 7"], "kg": ["fact: 3 + 4 = 7"], "dr": ["So the answer is 7"]})
    report = res.extra["lorid"]
    assert report == {
        "iterations": 1,
        "ir_answers": ["7"],
        "dr_answers": ["7"],
        "agreed": True,
        "answer": "7",
        "knowledge": "fact: 3 + 4 = 7",
    }
    assert res.answer == "7" and res.content == "So the answer is 7"
    # Each role prefilled under its own adapter, with its own instruction; DR sees KG's knowledge.
    by_role = {a[0][0]: text for a, text in backend.prompts}
    assert set(by_role) == set(ROLES)
    assert by_role["ir"].startswith(DEFAULT_LORID_PROMPTS["ir"])
    assert by_role["kg"].startswith(DEFAULT_LORID_PROMPTS["kg"])
    assert (
        by_role["dr"].startswith(DEFAULT_LORID_PROMPTS["dr"])
        and "Knowledge: fact: 3 + 4 = 7" in by_role["dr"]
    )


def test_agreement_at_iteration_k_across_iterations() -> None:
    # IR: 5, 6, 9 ...; DR: 8, 8, 6 -> DR's 6 at iteration 3 meets IR's 6 from iteration 2.
    res, _ = run({"ir": ["5", "6", "9"], "kg": ["k"], "dr": ["8", "8", "6"]})
    report = res.extra["lorid"]
    assert report["iterations"] == 3
    assert report["ir_answers"] == ["5", "6", "9"] and report["dr_answers"] == ["8", "8", "6"]
    assert report["agreed"] is True and report["answer"] == "6" and res.answer == "6"


def test_no_agreement_returns_the_majority() -> None:
    res, _ = run({"ir": ["1", "2", "3", "4"], "kg": ["k"], "dr": ["5", "5", "6", "7"]}, max_iterations=4)
    report = res.extra["lorid"]
    assert report["iterations"] == 4 and report["agreed"] is False
    assert report["answer"] == "5" and res.answer == "5"
    assert res.usage.completion_tokens > 0


def test_custom_roles_and_prompts() -> None:
    backend = LoridBackend({"ir": ["7"], "kg": ["k"], "dr": ["7"]}, adapters=("fast", "kg", "dr"))
    with er.Engine(backend) as engine:  # type: ignore[arg-type]
        res = engine.complete(
            "3 + 4?", seed=0, lorid={"roles": {"ir": "fast"}, "prompts": {"ir": "Be quick."}}
        )
        assert res.extra["lorid"]["agreed"] is True
        assert any(a == (("fast", 1.0),) and text.startswith("Be quick.") for a, text in backend.prompts)
        with pytest.raises(UnknownAdapterError):
            engine.complete("3 + 4?", strategy="lorid")  # the default "ir" adapter is not loaded here


@pytest.mark.parametrize(
    "fields",
    [
        {"lorid": {"roles": {"judge": "x"}}},
        {"lorid": {"max_iterations": 0}},
        {"strategy": "lorid", "adapter": "ir"},
    ],
)
def test_bad_lorid_requests(fields: dict[str, object]) -> None:
    backend = LoridBackend({"ir": ["7"], "kg": ["k"], "dr": ["7"]})
    with er.Engine(backend) as engine, pytest.raises(InvalidRequestError):  # type: ignore[arg-type]
        engine.complete("3 + 4?", **fields)


def test_lorid_option_defaults() -> None:
    opts = GenerationOptions.build(None, {"strategy": "lorid"})
    assert opts.uses_lorid and opts.lorid is None
    opts = GenerationOptions.build(None, {"lorid": {}})
    assert opts.lorid is not None and opts.lorid.max_iterations == 8
    assert opts.lorid.roles == {"ir": "ir", "kg": "kg", "dr": "dr"}


def test_streaming_through_the_python_api() -> None:
    backend = LoridBackend(
        {"ir": ["The answer is 7"], "kg": ["fact: 3 + 4 = 7"], "dr": ["So the answer is 7"]}
    )
    with er.Engine(backend) as engine:  # type: ignore[arg-type]
        stream = engine.stream([{"role": "user", "content": "What is 3 + 4?"}], seed=0, lorid={})
        chunks = list(stream)
    assert stream.result is not None
    assert "".join(c.text for c in chunks if c.channel == "content") == stream.result.content
    assert stream.result.content == "So the answer is 7"
    assert stream.result.extra["lorid"]["agreed"] is True


def test_lorid_through_the_server() -> None:
    import json

    from fastapi.testclient import TestClient

    from edgereason.server.app import create_app

    backend = LoridBackend({"ir": ["5", "7"], "kg": ["k"], "dr": ["8", "7"]})
    body = {"messages": [{"role": "user", "content": "What is 3 + 4?"}], "seed": 0, "lorid": {}}
    with er.Engine(backend) as engine:  # type: ignore[arg-type]
        client = TestClient(create_app(engine), base_url="http://localhost")  # a Host loopback accepts
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["lorid"]["iterations"] == 2 and data["lorid"]["answer"] == "7"
        assert data["edgereason"]["lorid"] == data["lorid"]
        assert data["choices"][0]["message"]["content"] == "7"

        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert content == "7"
        assert chunks[-1]["edgereason"]["lorid"]["ir_answers"] == ["5", "7"]

        r = client.post("/v1/chat/completions", json={**body, "lorid": {"roles": {"ir": "missing"}}})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


class _UntilEos:
    """A minimal controller: a sequence ends at EOS."""

    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched

    def on_token(self, seq: Seq, token: int, text: str, logprobs: object) -> None:
        if token == EOS:
            self.sched.finish(seq)

    def on_ready(self, seq: Seq) -> None:
        pass

    def on_context_full(self, seq: Seq) -> None:
        pass


class _AdapterCheckingBackend(ByteScriptBackend):
    """Fails any decode that holds a sequence of another adapter set than the active one."""

    def __init__(self) -> None:
        super().__init__(lora=True)
        self.active: AdapterSet = ()
        self.slot_adapters: dict[int, AdapterSet] = {}
        self.decodes: list[AdapterSet] = []

    def set_adapters(self, adapters: AdapterSet) -> None:
        self.active = adapters

    def decode(self, items: Sequence[BatchItem]) -> list[int]:
        assert all(self.slot_adapters[it.slot] == self.active for it in items)
        self.decodes.append(self.active)
        return super().decode(items)

    def make_sampler(self, params: SamplingParams) -> ScriptedSampler:
        return script_sampler(params.seed, "x" * 20)


@pytest.mark.parametrize("turn_s", [0.0, 60.0])
def test_adapter_groups_decode_apart_and_in_turns(turn_s: float) -> None:
    backend = _AdapterCheckingBackend()
    sched = Scheduler(backend)  # type: ignore[arg-type]
    sched.adapter_turn_s = turn_s
    sets: list[AdapterSet] = [(("a", 1.0),), (("b", 1.0),), (("a", 1.0),), ()]
    for i, adapters in enumerate(sets):
        seq = sched.spawn(_UntilEos(sched), [1, 2, 3], SamplingParams(seed=i), adapters=adapters)
        backend.slot_adapters[seq.slot] = adapters
    while sched.step():
        pass
    assert not sched.seqs
    switches = sum(1 for x, y in zip(backend.decodes, backend.decodes[1:]) if x != y) + 1
    assert switches == sched.adapter_switches
    if turn_s:  # a long turn: each set decodes all its sequences to the end, then the next one
        assert sched.adapter_switches == 3
    else:  # no turn: the sets alternate step by step
        assert sched.adapter_switches > 20
