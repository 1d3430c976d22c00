"""Self-consistency in the engine: options, the sampling/stopping state machine, the real model."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import pytest

import edgereason as er
from edgereason.backends.base import BatchItem, SamplingParams
from edgereason.errors import InvalidRequestError
from edgereason.options import DEFAULT_MAX_SAMPLES, GenerationOptions
from edgereason.signals import answer_confidence, think_answer_mismatch

from .conftest import QUESTION
from .scripted import ByteScriptBackend, ScriptedSampler, script_sampler


# -- a scripted backend: sample i writes spaces, then its answer, then EOS ----------------------------
class ScriptedBackend(ByteScriptBackend):
    """Each sequence's script is chosen from its sampler seed; every decode call sleeps ``step_s``."""

    def __init__(self, scripts: Sequence[str], step_s: float = 0.0, max_sequences: int = 4) -> None:
        super().__init__(max_sequences=max_sequences)
        self.scripts = list(scripts)
        self.step_s = step_s
        self.live: set[int] = set()

    def decode(self, items: Sequence[BatchItem]) -> list[int]:
        time.sleep(self.step_s)
        for it in items:
            self.live.add(it.slot)
        return super().decode(items)

    def make_sampler(self, params: SamplingParams) -> ScriptedSampler:
        return script_sampler(params.seed, self.scripts[params.seed % len(self.scripts)])

    def copy_seq(self, src: int, dst: int) -> None:
        self.live.add(dst)

    def remove(self, slot: int, from_pos: int = 0) -> None:
        if from_pos == 0:
            self.live.discard(slot)


@pytest.fixture
def scripted() -> Iterator[ScriptedBackend]:
    yield ScriptedBackend([" " * 4 + "7", " " * 9 + "7", " " * 14 + "8"], step_s=0.01)


def sc(engine: er.Engine, prompt: str = "Q: 3 + 4?\nA:", **sc_opts: object) -> dict:
    res = engine.complete(prompt, seed=0, max_tokens=64, self_consistency=sc_opts)
    return res.extra["self_consistency"] | {"_content": res.content, "_answer": res.answer}


# -- options ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "param"),
    [
        (0, "self_consistency.samples"),
        (DEFAULT_MAX_SAMPLES + 1, "self_consistency.samples"),
        ({"adaptive": "sprt"}, "self_consistency.adaptive"),
        ({"strategy": "best"}, "self_consistency.strategy"),
        ({"threshold": 0.5}, "self_consistency.threshold"),
        ({"threshold": 1.0}, "self_consistency.threshold"),
        ({"mismatch": "ignore"}, "self_consistency.mismatch"),
        ({"bogus": 1}, "self_consistency.bogus"),
        ({"time_budget_s": 0}, "self_consistency.time_budget_s"),
        ({"parallel": 0}, "self_consistency.parallel"),
    ],
)
def test_bad_self_consistency_options(value: object, param: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        GenerationOptions.build(None, {"self_consistency": value})
    assert err.value.param == param


def test_int_means_samples_and_true_means_beta() -> None:
    opts = GenerationOptions.build(None, {"self_consistency": 5})
    assert opts.self_consistency is not None and opts.self_consistency.samples == 5
    assert opts.self_consistency.temperature == 0.6 and opts.self_consistency.top_p == 0.95
    opts = GenerationOptions.build(opts, {"self_consistency": {"samples": 9, "adaptive": True}})
    assert opts.self_consistency is not None and opts.self_consistency.adaptive == "beta"


def test_self_consistency_with_n_is_rejected(engine: er.Engine) -> None:
    with pytest.raises(InvalidRequestError) as err:
        engine.chat(QUESTION, n=2, self_consistency=3)
    assert err.value.param == "n"


# -- answer signals -------------------------------------------------------------------------------------
def test_answer_signals() -> None:
    from edgereason.answers import extract_answer

    pieces, lps = (
        ["The", " answer", " is", " 4", "2", "."],
        [-1.0, -1.0, -1.0, 0.0, -0.6931471805599453, -1.0],
    )
    conf = answer_confidence(pieces, lps, extract_answer("The answer is 42."))
    assert conf == pytest.approx(0.75)
    assert answer_confidence(pieces, [], extract_answer("42")) is None
    assert think_answer_mismatch("The answer is 42.", "so 6 * 7 = 42") is False
    assert think_answer_mismatch("The answer is 41.", "so 6 * 7 = 42") is True
    assert think_answer_mismatch("The answer is 41.", "") is None


# -- the state machine on a scripted backend --------------------------------------------------------------
def test_fixed_samples_vote_and_free(scripted: ScriptedBackend) -> None:
    with er.Engine(scripted) as engine:
        rep = sc(engine, samples=6)
        assert rep["samples_used"] == 6 and rep["stop_rule"] == "none" and not rep["stopped_early"]
        assert rep["votes"] == {"7": 4, "8": 2} and rep["answer"] == "7" and rep["_answer"] == "7"
        assert rep["confidence"] == pytest.approx(4 / 6)
        # reported in finish order; three run at once (4 slots, one holds the prompt)
        assert [s["index"] for s in rep["samples"]][:3] == [0, 1, 3]
        assert engine.live_sequences == 0 and not scripted.live - engine.scheduler.cached_slots


def test_beta_stops_early_and_cancels(scripted: ScriptedBackend) -> None:
    scripted.scripts = [" " * 4 + "7", " " * 30 + "7"]
    with er.Engine(scripted) as engine:
        rep = sc(engine, samples=16, adaptive="beta")
        # 1 - 0.5^(a+1) >= 0.95 first holds at a = 4 unanimous votes
        assert rep["samples_used"] == 4 and rep["stopped_early"] and rep["stop_rule"] == "beta"
        assert rep["samples_cancelled"] >= 1 and rep["answer"] == "7"
        assert engine.live_sequences == 0 and not scripted.live - engine.scheduler.cached_slots


def test_fewer_parallel_samples_waste_no_compute_on_an_early_stop(scripted: ScriptedBackend) -> None:
    scripted.scripts = [" " * 4 + "7", " " * 30 + "7"]
    with er.Engine(scripted) as engine:
        rep = sc(engine, samples=16, adaptive="beta", parallel=1)  # one at a time, as Adaptive-Consistency
        assert rep["samples_used"] == 4 and rep["samples_cancelled"] == 0 and rep["parallel"] == 1
        assert [s["index"] for s in rep["samples"]] == [0, 1, 2, 3]
        wide = sc(engine, samples=16, adaptive="beta")  # as many as the slots hold: 3
        assert wide["parallel"] == 3 and wide["samples_used"] == 4 and wide["samples_cancelled"] >= 1
        assert engine.live_sequences == 0 and not scripted.live - engine.scheduler.cached_slots


def test_esc_stops_on_unanimous_window(scripted: ScriptedBackend) -> None:
    scripted.scripts = [" 7"]
    with er.Engine(scripted) as engine:
        rep = sc(engine, samples=20, adaptive="esc", window=3)
        assert rep["samples_used"] == 3 and rep["stop_rule"] == "esc" and rep["stopped_early"]


def test_weighted_and_mismatch_drop(scripted: ScriptedBackend) -> None:
    scripted.scripts = ["so it is 9</think> 8", "so 7</think> 7", "so 7</think> 7"]
    with er.Engine(scripted, reasoning_format="deepseek-r1") as engine:
        rep = sc(engine, "Q: 3 + 4?\n<think>", samples=3, mismatch="drop", strategy="weighted")
        assert rep["answer"] == "7" and set(rep["votes"]) == {"7"}
        assert sum(s["think_answer_mismatch"] is True for s in rep["samples"]) == 1


def test_time_budget_honoured(scripted: ScriptedBackend) -> None:
    with er.Engine(scripted) as engine:
        t0 = time.monotonic()
        rep = sc(engine, samples=64, time_budget_s=0.6)
        elapsed = time.monotonic() - t0
        assert rep["stop_rule"] == "time_budget" and rep["stopped_early"]
        assert 3 <= rep["samples_used"] < 64 and rep["answer"] in ("7", "8")
        assert elapsed < 0.6 + 0.3
        assert engine.live_sequences == 0 and not scripted.live - engine.scheduler.cached_slots


# -- the real embedded model ------------------------------------------------------------------------------
def test_real_model_n4_reproducible_and_frees(engine: er.Engine) -> None:
    a = engine.chat(QUESTION, max_tokens=16, seed=11, self_consistency=4)
    b = engine.chat(QUESTION, max_tokens=16, seed=11, self_consistency=4)  # a prefix-cache hit: still equal
    assert b.usage.cached_tokens > 0
    ra, rb = a.extra["self_consistency"], b.extra["self_consistency"]
    assert ra == rb and a.content == b.content
    assert ra["samples_used"] == 4 and sum(ra["votes"].values()) <= 4
    assert {s["index"] for s in ra["samples"]} == {0, 1, 2, 3}
    assert all(s["tokens"] > 0 and s["confidence"] > 0 for s in ra["samples"])
    assert engine.live_sequences == 0
    assert "self_consistency" in a.to_dict() and "answer_confidence" in a.to_dict()


def test_real_model_cancel_frees_sequences(engine: er.Engine) -> None:
    stream = engine.stream(QUESTION, max_tokens=400, seed=1, ignore_eos=True, self_consistency=6)
    time.sleep(0.5)
    stream.cancel()
    res = stream.wait()
    assert res.extra["self_consistency"]["stop_rule"] == "cancelled"
    deadline = time.monotonic() + 5
    while engine.live_sequences and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.live_sequences == 0
