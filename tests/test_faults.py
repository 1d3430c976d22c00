"""Fault injection over random schedules of mixed requests (issue 19).

A FaultyBackend wraps the real llama.cpp backend of the embedded model and raises, for one request of
a schedule, at a chosen point: decode, sample, fork (copy_seq), make_sampler, a controller callback,
tokenization (on the engine thread, or on the caller's before the request is queued) or the job's start.
Every request is greedy (self-consistency and LoRID included), so each has one right result: what it
gets alone on a fault-free engine. After every schedule: no sequence is left, every request that was not
faulted got exactly its reference result (a cancelled one: a prefix of it), every faulted one got the
injected exception, and the engine still serves.

The scripted backend runs ``SCRIPTED_SCHEDULES`` schedules (fast: the state machines); the real model
runs ``REAL_SCHEDULES`` (llama.cpp's own decode, KV copies and samplers under faults).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import edgereason as er
from edgereason.backends.base import SamplingParams
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
from .test_engine_reliability import outcome, settle

SCRIPTED_SCHEDULES = 200
REAL_SCHEDULES = 30
PROMPTS = ("What is 2 + 3?", "Name a fruit.", "Say hello to Ann.")
MARKERS = [" the", " a", " I", " is", "Hello", "The"]  # frequent words: probes fork within a few tokens


@dataclass(frozen=True)
class Spec:
    """One request of a schedule (hashable: its reference result is computed once)."""

    kind: str  # plain | stream | n | sc | auto | lorid
    prompt: int
    max_tokens: int
    n: int = 1

    @property
    def streamed(self) -> bool:
        return self.kind in ("stream", "auto")

    def fields(self) -> dict[str, Any]:
        f: dict[str, Any] = {"temperature": 0.0, "max_tokens": self.max_tokens, "seed": 3}
        if self.kind == "n":
            f["n"] = self.n
        elif self.kind == "sc":
            f["self_consistency"] = {"samples": self.n, "adaptive": "esc", "window": 2, "temperature": 0.0}
        elif self.kind == "auto":
            f |= {
                "thinking": True,
                "thinking_budget": "auto",
                "transition_markers": MARKERS,
                "early_exit_probe_tokens": 2,
                "early_exit_max_probes": 2,
            }
        elif self.kind == "lorid":
            f["lorid"] = {"max_iterations": 1, "temperature": 0.0}
        return f


POINTS = {
    "plain": ("decode", "sample", "callback", "make_sampler", "start", "caller_tokenize"),
    "stream": ("decode", "sample", "callback", "make_sampler", "start", "caller_tokenize"),
    "n": ("decode", "sample", "callback", "make_sampler", "copy_seq", "start"),
    "sc": ("decode", "sample", "callback", "make_sampler", "copy_seq", "start"),
    "auto": ("decode", "sample", "callback", "copy_seq", "tokenize"),
    "lorid": ("decode", "sample", "callback", "tokenize", "start"),
}


class StartFault(RuntimeError):
    """Raised by a job's start (a bug in a strategy)."""


def key(res: er.ChatResult) -> tuple[Any, ...]:
    choices = tuple(
        (c.content, c.reasoning, c.finish_reason, c.completion_tokens, c.answer) for c in res.choices
    )
    return choices, repr(sorted(res.extra.items()))


class Harness:
    """An engine over a FaultyBackend, reference results, and one schedule at a time."""

    def __init__(
        self, engine: er.Engine, backend: FaultyBackend, lengths: tuple[int, ...] = (4, 8, 12)
    ) -> None:
        self.engine, self.backend, self.lengths = engine, backend, lengths
        self.refs: dict[Spec, er.ChatResult] = {}
        self.faults_hit: dict[str, int] = {}
        self.cancelled = 0

    def messages(self, spec: Spec) -> list[dict[str, str]]:
        return [{"role": "user", "content": PROMPTS[spec.prompt]}]

    def job(self, spec: Spec) -> Job:
        opts = GenerationOptions.build(None, spec.fields())
        job = self.engine.make_job(
            self.engine.prepare_chat(self.messages(spec), opts), opts, question=PROMPTS[spec.prompt]
        )
        job.emit_chunks = spec.streamed
        return job

    def reference(self, spec: Spec) -> er.ChatResult:
        if spec not in self.refs:
            res = outcome(self.engine.submit(self.job(spec)))
            assert isinstance(res, er.ChatResult), res
            self.refs[spec] = res
        return self.refs[spec]

    def random_spec(self, rng: random.Random) -> Spec:
        kind = rng.choice(tuple(POINTS))
        n = rng.randint(2, 3) if kind in ("n", "sc") else 1
        return Spec(kind, rng.randrange(len(PROMPTS)), rng.choice(self.lengths), n)

    def run(self, rng: random.Random) -> None:
        specs = [self.random_spec(rng) for _ in range(rng.randint(2, 4))]
        for spec in specs:
            self.reference(spec)  # fault-free, alone (cached)
        faulty = rng.randrange(len(specs)) if rng.random() < 0.7 else None
        point = rng.choice(POINTS[specs[faulty].kind]) if faulty is not None else ""
        cancel = next(
            (i for i, s in enumerate(specs) if s.streamed and i != faulty and rng.random() < 0.4), None
        )
        plans: dict[int, FaultPlan] = {}
        streams: dict[int, ChatStream] = {}
        caller_failed: set[int] = set()
        for i, spec in enumerate(specs):
            if i == faulty and point == "caller_tokenize":
                self.backend.arm_caller(True)
                try:
                    with pytest.raises(InjectedFault):
                        self.job(spec)
                finally:
                    self.backend.arm_caller(False)
                caller_failed.add(i)
                continue
            job = self.job(spec)
            if i == faulty:
                rare = point in ("copy_seq", "make_sampler", "tokenize")  # a few calls per request
                plans[i] = FaultPlan(point, after=rng.randint(0, 1 if rare else 6))
                if point == "start":
                    job.start = _raising_start  # type: ignore[method-assign]
                    plans[i].hit = True
                else:
                    self.backend.plans[job] = plans[i]
            streams[i] = self.engine.submit(job)
        if cancel is not None:
            self._cancel_after_first_chunk(streams[cancel], self.refs[specs[cancel]])
        for i, stream in streams.items():
            if i == cancel:
                continue
            got = outcome(stream)
            plan = plans.get(i)
            if plan is not None and plan.hit:
                expected = StartFault if plan.point == "start" else InjectedFault
                assert isinstance(got, expected), (specs[i], plan, got)
                self.faults_hit[plan.point] = self.faults_hit.get(plan.point, 0) + 1
            else:
                assert isinstance(got, er.ChatResult), (specs[i], plan, got)
                assert key(got) == key(self.refs[specs[i]]), (specs[i], plan)
        if caller_failed:
            self.faults_hit["caller_tokenize"] = self.faults_hit.get("caller_tokenize", 0) + len(
                caller_failed
            )
        self.backend.plans.clear()
        assert settle(self.engine) == 0
        assert self.engine.stopped_reason is None
        probe = Spec("plain", 2, 1)
        after = outcome(self.engine.submit(self.job(probe)))
        assert isinstance(after, er.ChatResult) and key(after) == key(self.reference(probe))

    def _cancel_after_first_chunk(self, stream: ChatStream, ref: er.ChatResult) -> None:
        it = iter(stream)
        try:
            next(it)
        except StopIteration:
            pass
        else:
            stream.cancel()
            for _ in it:
                pass
        res = stream.result
        assert res is not None
        if res.finish_reason == "cancelled":
            self.cancelled += 1
            assert ref.content.startswith(res.content) and ref.reasoning.startswith(res.reasoning)
        else:
            assert key(res) == key(ref)


def _raising_start(sched: Any) -> None:
    raise StartFault("a strategy's start failed")


def run_schedules(harness: Harness, count: int, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(count):
        harness.run(rng)
    print(f"faults injected by point: {harness.faults_hit}; cancelled mid-stream: {harness.cancelled}")
    # the schedules did exercise the faults (not a test that passes by never injecting)
    assert sum(harness.faults_hit.values()) >= count // 4, harness.faults_hit
    assert len(harness.faults_hit) >= 5, harness.faults_hit


# -- the scripted backend ---------------------------------------------------------------------------------
TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


class Scripted(ByteScriptBackend):
    """The script of a sequence comes from its sampler's seed; LoRID's adapters are names only."""

    def __init__(self) -> None:
        super().__init__(max_sequences=8, chat_template=TEMPLATE, lora=True)
        self.adapter_names = ["dr", "ir", "kg"]
        self.lock = threading.Lock()

    def make_sampler(self, params: SamplingParams) -> ScriptedSampler:
        words = ["The answer is", " the", " a", " 5", " Hello", " Wait", " is", " 7", "."]
        r = random.Random(params.seed * 7919 + int(params.temperature * 10))
        return script_sampler(params.seed, "".join(r.choice(words) for _ in range(6)))

    def set_adapters(self, adapters: Any) -> None:
        pass


@pytest.fixture
def scripted_harness() -> Iterator[Harness]:
    backend = FaultyBackend(Scripted())
    with er.Engine(backend) as engine:  # type: ignore[arg-type]
        backend.attach(engine)
        yield Harness(engine, backend)


def test_fault_schedules_scripted(scripted_harness: Harness) -> None:
    run_schedules(scripted_harness, SCRIPTED_SCHEDULES, seed=19)


# -- the real embedded model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_harness(model_path: Path) -> Iterator[Harness]:
    from edgereason.backends.llama_cpp import LlamaCppBackend

    adapters = {r: STUDENT_DIR / f"{r}.gguf" for r in ("ir", "kg", "dr")}
    inner = LlamaCppBackend(model_path, n_ctx=512, threads=1, max_sequences=8, adapters=adapters)
    backend = FaultyBackend(inner)
    with er.Engine(backend) as engine:  # type: ignore[arg-type]
        backend.attach(engine)
        yield Harness(engine, backend, lengths=(4, 6, 8))


def test_fault_schedules_real_model(real_harness: Harness) -> None:
    run_schedules(real_harness, REAL_SCHEDULES, seed=7)
