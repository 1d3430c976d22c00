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

from .scripted import ByteScriptBackend, ScriptedSampler, script_sampler

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
