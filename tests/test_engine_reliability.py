"""Issue 19, engine side: a fault fails only its request, freeing never depends on job state, a dead or
wedged engine says so, and ``n`` / self-consistency fit in as many slots as they have choices."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import edgereason as er
from edgereason.backends.base import BatchItem, SamplingParams
from edgereason.errors import CapacityError, EngineStoppedError, InvalidRequestError
from edgereason.job import ChatStream, Job
from edgereason.models import STUDENT_DIR
from edgereason.options import GenerationOptions

from .scripted import (
    ByteScriptBackend,
    FaultPlan,
    FaultyBackend,
    InjectedFault,
    ScriptedSampler,
    script_sampler,
)


class Scripts(ByteScriptBackend):
    """Sampler seed -> script; every decode call sleeps ``step_s``; remembers which slots hold memory."""

    def __init__(self, scripts: dict[int, str], *, max_sequences: int = 4, step_s: float = 0.002) -> None:
        super().__init__(max_sequences=max_sequences)
        self.scripts = scripts
        self.step_s = step_s
        self.live: set[int] = set()

    def make_sampler(self, params: SamplingParams) -> ScriptedSampler:
        return script_sampler(params.seed, self.scripts.get(params.seed, "ok"))

    def decode(self, items: Sequence[BatchItem]) -> list[int]:
        time.sleep(self.step_s)
        self.live.update(it.slot for it in items)
        return super().decode(items)

    def copy_seq(self, src: int, dst: int) -> None:
        self.live.add(dst)

    def remove(self, slot: int, from_pos: int = 0) -> None:
        if from_pos == 0:
            self.live.discard(slot)


def submit(engine: er.Engine, prompt: str, **fields: Any) -> tuple[Job, ChatStream]:
    opts = GenerationOptions.build(None, {"temperature": 0.0, "seed": 0, **fields})
    job = engine.make_job(engine.prepare_completion(prompt), opts, question=prompt)
    return job, engine.submit(job)


def outcome(stream: ChatStream, timeout: float = 60.0) -> er.ChatResult | BaseException:
    """The stream's result or the exception it raised; fails the test instead of hanging."""
    box: list[er.ChatResult | BaseException] = []

    def drain() -> None:
        try:
            box.append(stream.wait())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box.append(exc)

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    t.join(timeout)
    assert box, f"the request did not finish within {timeout} s"
    return box[0]


def settle(engine: er.Engine, timeout: float = 5.0) -> int:
    """live_sequences once the engine thread has retired what finished."""
    deadline = time.monotonic() + timeout
    while engine.live_sequences and time.monotonic() < deadline:
        time.sleep(0.005)
    return engine.live_sequences


# -- defect 4: a fault fails only the request at fault --------------------------------------------------
@pytest.mark.parametrize(
    ("point", "n"),
    [("decode", 1), ("sample", 1), ("callback", 1), ("make_sampler", 2), ("copy_seq", 2), ("decode", 2)],
)
def test_a_fault_fails_only_its_request(point: str, n: int) -> None:
    inner = Scripts({1: "a" * 40, 2: "b" * 40, 3: "b" * 40}, max_sequences=6)
    backend = FaultyBackend(inner)
    with er.Engine(backend) as engine:  # type: ignore[arg-type]
        backend.attach(engine)
        _, good = submit(engine, "P", seed=1, max_tokens=100)
        bad_job, bad = submit(engine, "Q", seed=2, max_tokens=100, n=n, temperature=0.5)
        backend.plans[bad_job] = FaultPlan(point, after=0 if point in ("make_sampler", "copy_seq") else 5)
        _, other = submit(engine, "R", seed=1, max_tokens=100)
        res = outcome(good)
        err = outcome(bad)
        assert isinstance(res, er.ChatResult) and res.content == "a" * 40 and res.finish_reason == "stop"
        assert isinstance(err, InjectedFault) and backend.plans[bad_job].hit
        res2 = outcome(other)
        assert isinstance(res2, er.ChatResult) and res2.content == "a" * 40
        assert settle(engine) == 0 and not inner.live - engine.scheduler.cached_slots
        assert engine.complete("P", seed=1, temperature=0.0, max_tokens=100).content == "a" * 40


def test_a_job_start_fault_fails_only_that_request() -> None:
    inner = Scripts({1: "a" * 40})
    with er.Engine(inner) as engine:
        _, good = submit(engine, "P", seed=1, max_tokens=100)
        opts = GenerationOptions.build(None, {"temperature": 0.0, "seed": 1})
        job = engine.make_job(engine.prepare_completion("Q"), opts)

        def broken_start(sched: Any) -> None:
            raise ZeroDivisionError("bug in a strategy's start")

        job.start = broken_start  # type: ignore[method-assign]
        bad = engine.submit(job)
        assert isinstance(outcome(bad), ZeroDivisionError)
        res = outcome(good)
        assert isinstance(res, er.ChatResult) and res.content == "a" * 40
        assert engine.complete("P", seed=1, temperature=0.0, max_tokens=100).content == "a" * 40
        assert settle(engine) == 0 and engine.stopped_reason is None


def test_lorid_knowledge_is_cut_to_fit_and_other_streams_go_on(model_path: Path) -> None:
    """A deep-reasoner prompt longer than the context (KG wrote ~all of it) used to fail every request."""
    adapters = {r: STUDENT_DIR / f"{r}.gguf" for r in ("ir", "kg", "dr")}
    with er.load(model_path, n_ctx=256, max_sequences=4, threads=1, adapters=adapters) as engine:
        q = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have?"}]
        alone = engine.chat(q, max_tokens=60, temperature=0.0, ignore_eos=True)
        # KG writes until its context is full: DR's prompt (a longer instruction + that knowledge) would
        # not fit in the context
        dr = "Please reason step by step based on the given question and knowledge, and give the answer. " * 3
        lorid_opts = {"max_iterations": 1, "prompts": {"dr": dr}}
        lorid = engine.stream(q, max_tokens=160, ignore_eos=True, seed=3, lorid=lorid_opts)
        plain = engine.stream(q, max_tokens=60, temperature=0.0, ignore_eos=True)
        res = outcome(plain)
        assert isinstance(res, er.ChatResult) and res.content == alone.content
        out = outcome(lorid)
        assert isinstance(out, er.ChatResult), out
        report = out.extra["lorid"]
        assert report["knowledge_truncated"] is True and len(report["dr_answers"]) == 1  # DR ran
        assert settle(engine) == 0


def test_lorid_knowledge_cut_scripted() -> None:
    import dataclasses

    from .test_lorid import LoridBackend

    backend = LoridBackend({"ir": ["The answer is 7"], "kg": ["fact " * 80], "dr": ["So the answer is 7"]})
    backend.capabilities = dataclasses.replace(backend.capabilities, n_ctx=300)
    q = [{"role": "user", "content": "What is 3 + 4?"}]
    with er.Engine(backend) as engine:  # type: ignore[arg-type]
        alone = engine.chat(q, seed=0, max_tokens=40)
        lorid = engine.stream(q, seed=0, max_tokens=200, lorid={"max_iterations": 1})
        plain = engine.stream(q, seed=0, max_tokens=40)
        out = outcome(lorid)
        assert isinstance(out, er.ChatResult), out
        report = out.extra["lorid"]
        assert report["knowledge_truncated"] is True and report["answer"] == "7"
        assert "fact fact" in report["knowledge"] and len(report["knowledge"]) < 400
        dr_prompt = next(text for a, text in backend.prompts if a == (("dr", 1.0),))
        assert 200 < len(dr_prompt) <= 300 - 300 // 4  # DR kept a quarter of the context to answer in
        res = outcome(plain)
        assert isinstance(res, er.ChatResult) and res.content == alone.content
        assert settle(engine) == 0


# -- defect 3: freeing never depends on job state ---------------------------------------------------------
def test_a_failed_self_consistency_job_frees_every_sequence() -> None:
    inner = Scripts({0: "x" * 30, 1: "y" * 30, 2: "z" * 30})
    backend = FaultyBackend(inner)
    with er.Engine(backend) as engine:  # type: ignore[arg-type]
        backend.attach(engine)
        job, stream = submit(engine, "Q", max_tokens=64, self_consistency={"samples": 3, "temperature": 0.5})
        backend.plans[job] = FaultPlan("sample", after=10)
        assert isinstance(outcome(stream), InjectedFault)
        assert settle(engine) == 0 and not inner.live - engine.scheduler.cached_slots
        again = engine.complete("Q", seed=0, temperature=0.0, max_tokens=64, self_consistency=3)
        assert again.extra["self_consistency"]["samples_used"] == 3


@pytest.fixture(scope="module")
def engine4(model_path: Path) -> Iterator[er.Engine]:
    with er.load(model_path, n_ctx=512, max_sequences=4, threads=1) as eng:
        yield eng


ISSUE_PROMPT = "<think>\nLet me count the letters in the word banana. The"
ISSUE_FIELDS: dict[str, Any] = {
    "thinking_budget": "auto",
    "self_consistency": 2,
    "max_tokens": 24,
    "seed": 1,
    # markers the model writes early, so that a probe forks within the first tokens
    "transition_markers": [" the", " a", " I", " is", " b"],
}


def test_empty_early_exit_prefix_is_refused(engine4: er.Engine) -> None:
    with pytest.raises(InvalidRequestError) as info:
        engine4.complete(ISSUE_PROMPT, early_exit_prefix="", **ISSUE_FIELDS)
    assert info.value.param == "early_exit_prefix"


def test_issue_scenario_leaves_no_sequence_behind(engine4: er.Engine) -> None:
    """The issue's request (auto budget, empty probe prefix, 2 samples, a prompt opening <think>) stalled,
    leaked 3 of 4 slots, and made a later n=2 request hang. Built past validation here, as before it."""
    opts = GenerationOptions.build(None, ISSUE_FIELDS).model_copy(update={"early_exit_prefix": ""})
    job = engine4.make_job(engine4.prepare_completion(ISSUE_PROMPT), opts)
    res = outcome(engine4.submit(job))
    assert isinstance(res, er.ChatResult), res
    assert res.extra["self_consistency"]["samples_used"] == 2
    assert settle(engine4) == 0
    later = outcome(engine4.stream([{"role": "user", "content": "Hi"}], n=2, max_tokens=4, temperature=0.0))
    assert isinstance(later, er.ChatResult) and len(later.choices) == 2
    assert settle(engine4) == 0


def test_a_job_that_can_never_fit_does_not_block_the_queue() -> None:
    class LosesASlot(Scripts):
        broken = False

        def remove(self, slot: int, from_pos: int = 0) -> None:
            if from_pos == 0 and not self.broken:
                self.broken = True
                raise OSError("could not clear slot")
            super().remove(slot, from_pos)

    inner = LosesASlot({1: "a" * 5})
    with er.Engine(inner) as engine:
        assert engine.complete("P", seed=1, temperature=0.0, max_tokens=10).content == "a" * 5
        assert engine.scheduler.capacity == 3  # the slot that could not be cleared is out of service
        _, wide = submit(engine, "Q", n=4, max_tokens=10)
        _, after = submit(engine, "P", seed=1, max_tokens=10)
        assert isinstance(outcome(wide), CapacityError)
        res = outcome(after)
        assert isinstance(res, er.ChatResult) and res.content == "a" * 5


# -- defect 10: n choices in n slots ----------------------------------------------------------------------
def test_n_fills_every_slot_and_queues(engine4: er.Engine) -> None:
    q = [{"role": "user", "content": "Name a color."}]
    single = engine4.chat(q, max_tokens=6, temperature=0.0).content
    first = engine4.stream(q, n=4, max_tokens=6, temperature=0.0)
    second = engine4.stream(q, n=4, max_tokens=6, temperature=0.0)  # queued until the first is done
    for stream in (first, second):
        res = outcome(stream)
        assert isinstance(res, er.ChatResult) and [c.content for c in res.choices] == [single] * 4
    sc = engine4.chat(q, max_tokens=6, seed=4, self_consistency=4)
    assert sc.extra["self_consistency"]["samples_used"] == 4 and sc.extra["self_consistency"]["parallel"] == 4
    assert settle(engine4) == 0


def test_n8_on_8_slots(model_path: Path) -> None:
    with er.load(model_path, n_ctx=256, max_sequences=8, threads=1) as engine:
        q = [{"role": "user", "content": "Say hi."}]
        single = engine.chat(q, max_tokens=5, temperature=0.0).content
        res = engine.chat(q, n=8, max_tokens=5, temperature=0.0)
        assert [c.content for c in res.choices] == [single] * 8
        seeded = engine.chat(q, n=8, max_tokens=5, temperature=1.0, seed=9)
        alone = [engine.chat(q, max_tokens=5, temperature=1.0, seed=9 + i).content for i in (0, 5, 7)]
        assert [seeded.choices[i].content for i in (0, 5, 7)] == alone  # each fork as a lone run
        assert settle(engine) == 0


def test_slots_needed_is_honest() -> None:
    from edgereason.strategies.generate import GenerateJob
    from edgereason.strategies.self_consistency import SelfConsistencyJob

    inner = Scripts({})
    with er.Engine(inner) as engine:
        prompt = engine.prepare_completion("Q")

        def gen(**f: Any) -> GenerateJob:
            return GenerateJob(prompt, GenerationOptions.build(None, f), max_sequences=8)

        def sc(**f: Any) -> SelfConsistencyJob:
            return SelfConsistencyJob(prompt, GenerationOptions.build(None, f), max_sequences=8)

        assert [gen(n=k).slots_needed for k in (1, 2, 8)] == [1, 2, 8]
        assert gen(n=2, thinking_budget="auto").slots_needed == 4
        assert gen(n=8, thinking_budget="auto").slots_needed == 8  # probes only when a slot is spare
        assert sc(self_consistency=8).slots_needed == 8 and not sc(self_consistency=8).holder
        assert sc(self_consistency=16).slots_needed == 8 and sc(self_consistency=16).width == 7
        assert sc(self_consistency={"samples": 8, "parallel": 2}).slots_needed == 3
        assert sc(self_consistency=4, thinking_budget="auto").slots_needed == 8


# -- defect 2: a dead or wedged engine is visible -------------------------------------------------------
class EngineKiller(BaseException):
    """Not an Exception: nothing in the loop is meant to catch it."""


def test_a_dead_engine_thread_fails_its_requests_and_refuses_new_ones() -> None:
    class Dies(Scripts):
        def decode(self, items: Sequence[BatchItem]) -> list[int]:
            raise EngineKiller("decode crashed the thread")

    with er.Engine(Dies({})) as engine:
        assert engine.stopped_reason is None
        _, stream = submit(engine, "Q", max_tokens=10)
        err = outcome(stream)
        assert isinstance(err, EngineStoppedError) and "decode crashed the thread" in str(err)
        reason = engine.stopped_reason
        assert reason is not None and reason.startswith("engine thread died: EngineKiller")
        with pytest.raises(EngineStoppedError):
            submit(engine, "Q", max_tokens=10)


def test_a_wedged_engine_is_reported_until_it_moves_again() -> None:
    gate = threading.Event()

    class Hangs(Scripts):
        def decode(self, items: Sequence[BatchItem]) -> list[int]:
            gate.wait(30)
            return super().decode(items)

    with er.Engine(Hangs({0: "ok"}), wedge_timeout_s=0.3) as engine:
        time.sleep(0.5)
        assert engine.stopped_reason is None  # idle is not wedged
        _, stream = submit(engine, "Q", max_tokens=10)
        time.sleep(0.8)
        reason = engine.stopped_reason
        assert reason is not None and reason.startswith("engine wedged: no step progress for")
        with pytest.raises(EngineStoppedError):
            submit(engine, "Q", max_tokens=10)
        gate.set()
        res = outcome(stream)
        assert isinstance(res, er.ChatResult) and res.content == "ok"
        assert engine.stopped_reason is None
