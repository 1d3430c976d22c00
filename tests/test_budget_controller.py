"""The thinking controller's state machine over a scripted backend (deterministic, no model)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from edgereason.backends.base import BatchItem, Capabilities, SamplingParams, TopLogprobs
from edgereason.chat.reasoning import PromptPlan
from edgereason.job import PreparedPrompt, _Done
from edgereason.options import GenerationOptions
from edgereason.result import ChatResult
from edgereason.scheduler import Scheduler
from edgereason.strategies.budget import LoopGuard, is_transition, probe_confidence
from edgereason.strategies.generate import GenerateJob

PREFIX = "ANSWER:"
EOS = "<eos>"


class _Sampler:
    def close(self) -> None:
        pass


class ScriptedBackend:
    """Main sequences write ``main`` token by token (then ``answer`` once thinking is closed);
    the n-th probe fork writes ``probes[n]`` as (text, probability) pairs."""

    def __init__(
        self,
        main: list[str],
        probes: Sequence[list[tuple[str, float]]] = (),
        answer: Sequence[str] = (" 42",),
    ):
        self.vocab: list[str] = [EOS]
        self.main, self.probes, self.answer = main, list(probes), list(answer)
        self.capabilities = Capabilities(max_sequences=4, n_ctx=512, n_batch=64)
        self.ctx: dict[int, list[int]] = {}
        self.probe_of: dict[int, int] = {}
        self.forks = 0
        self._probe_start: dict[int, int] = {}
        self.prompt_len = 0
        self._handles: list[int] = []
        self._last_lp = 0.0

    def _id(self, text: str) -> int:
        if text not in self.vocab:
            self.vocab.append(text)
        return self.vocab.index(text)

    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = True) -> list[int]:
        known = sorted(
            {*self.main, *self.answer, "\n", "</", "think", ">", "\n\n", PREFIX, "Wait"},
            key=len,
            reverse=True,
        )
        out, i = [], 0
        while i < len(text):
            piece = next((k for k in known if k and text.startswith(k, i)), text[i])
            out.append(self._id(piece))
            i += len(piece)
        return out

    def token_bytes(self, token: int) -> bytes:
        return b"" if token == 0 else self.vocab[token].encode()

    def detokenize(self, tokens: Sequence[int]) -> str:
        return "".join(self.token_bytes(t).decode() for t in tokens)

    def is_eog(self, token: int) -> bool:
        return token == 0

    def decode(self, items: Sequence[BatchItem]) -> list[int]:
        out = []
        for it in items:
            self.ctx[it.slot] = self.ctx.get(it.slot, [])[: it.pos] + list(it.tokens)
            out.append(len(self._handles) if it.want_logits else -1)
            self._handles.append(it.slot)
        return out

    def make_sampler(self, params: SamplingParams) -> _Sampler:
        return _Sampler()

    def sample(self, sampler: object, logits: int) -> int:
        slot = self._handles[logits]
        text = self.detokenize(self.ctx[slot])
        if slot in self.probe_of:
            script = self.probes[self.probe_of[slot]]
            k = len(self.ctx[slot]) - self._probe_start[slot]
            piece, p = script[k] if k < len(script) else (EOS, 1.0)
            self._last_lp = math.log(p)
            return self._id(piece)
        self._last_lp = 0.0
        if "</think>" in text:
            done = len(self.ctx[slot]) - self._close_at(slot)
            return self._id(self.answer[done]) if done < len(self.answer) else 0
        k = len(self.ctx[slot]) - self.prompt_len
        return self._id(self.main[k]) if k < len(self.main) else 0

    def _close_at(self, slot: int) -> int:
        toks = self.ctx[slot]
        for n in range(len(toks)):
            if "</think>" in self.detokenize(toks[: n + 1]):
                return n + 1 + (1 if n + 1 < len(toks) and self.vocab[toks[n + 1]] == "\n\n" else 0)
        return len(toks)

    def top_logprobs(self, logits: int, token: int, k: int) -> TopLogprobs:
        return TopLogprobs(token, self._last_lp, ())

    def copy_seq(self, src: int, dst: int) -> None:
        self.ctx[dst] = list(self.ctx[src])
        self.probe_of[dst] = self.forks
        self._probe_start[dst] = len(self.ctx[src]) + len(self.tokenize(PREFIX))
        self.forks += 1

    def remove(self, slot: int, from_pos: int = 0) -> None:
        self.ctx[slot] = self.ctx.get(slot, [])[:from_pos]
        if from_pos == 0:
            self.probe_of.pop(slot, None)

    def set_adapters(self, adapters: object) -> None:
        pass

    def close(self) -> None:
        pass


def run(backend: ScriptedBackend, **fields: object) -> tuple[ChatResult, Scheduler]:
    opts = GenerationOptions.build(
        None, {"temperature": 0.0, "max_tokens": 64, "early_exit_prefix": PREFIX, **fields}
    )
    prompt_text = "Q?<think>\n"
    tokens = backend.tokenize(prompt_text)
    backend.prompt_len = len(tokens)
    plan = PromptPlan(prompt_text, starts_in_reasoning=True, may_open=False, thinking_disabled=False)
    sched = Scheduler(backend)  # type: ignore[arg-type]
    job = GenerateJob(PreparedPrompt(plan, tokens), opts)
    job.start(sched)
    while sched.step():
        pass
    items = []
    while not job.events.empty():
        items.append(job.events.get())
    done = [i for i in items if isinstance(i, _Done)]
    assert done, "the job did not complete"
    return done[0].result, sched


MAIN = [
    "Step",
    " one",
    ".",
    " Wait",
    " two",
    ".",
    " Wait",
    " three",
    ".",
    " Wait",
    " four",
    ".",
    "</",
    "think",
    ">",
]


def test_probe_confidence_aggregates_skip_the_first_token() -> None:
    lps = [math.log(0.1), math.log(0.9), math.log(0.8)]
    assert probe_confidence(lps, "mean") == pytest.approx(0.85)
    assert probe_confidence(lps, "geometric") == pytest.approx(math.sqrt(0.72))
    assert probe_confidence(lps, "min") == pytest.approx(0.8)
    assert probe_confidence([math.log(0.3)]) == pytest.approx(0.3)
    assert probe_confidence([]) == 0.0


@pytest.mark.parametrize(
    ("text", "before", "hit"),
    [
        (" Wait", "so 8.", True),
        ("Wait", "8.", True),
        ("Wait", "await", False),  # inside a word
        (" Altern", "x.", True),  # a marker split over tokens
        (" Al", "x.", False),  # too short to tell
        ("\n\n", "8.", True),
        ("\n", "8.\n", True),
        ("\n", "8.", False),
        (" Hmm,", "", True),
        (" two", "one", False),
    ],
)
def test_transition_detection(text: str, before: str, hit: bool) -> None:
    assert is_transition(text, before, ("Wait", "Alternatively", "Hmm", "\n\n")) is hit


def test_loop_guard_repeated_ngram() -> None:
    g = LoopGuard(ngram=3, repeats=3)
    fired = [g.feed(t, " x") for t in [1, 2, 3, 1, 2, 3, 1, 2, 3]]
    assert fired.index(True) == 8 and g.reason == "repeated n-gram"


def test_loop_guard_repeated_sentence_and_doubt_run() -> None:
    g = LoopGuard(ngram=50)
    sentence = ["The", " answer", " is", " surely", " eight", "."]
    fired = [g.feed(i, t) for i, t in enumerate(sentence * 3)]
    assert fired[-1] and not any(fired[:-1]) and g.reason == "repeated sentence"
    d = LoopGuard(ngram=50, doubt_run=3, doubt_window=20)
    words = [" Wait", " maybe", " 7", ".", " Hmm", " no", ".", " Alternatively", " 9"]
    out = [d.feed(i, t) for i, t in enumerate(words)]
    assert out.index(True) == 7 and d.reason == "self-doubt run"


def test_loop_guard_quiet_on_progress() -> None:
    g = LoopGuard()
    assert not any(g.feed(i, f" step {i}.") for i in range(200))


def test_confidence_sequence_exits_at_first_confident_probe() -> None:
    probes = [[(" 7", 0.2), ("0", 0.3), ("\n", 1.0)], [(" 8", 0.5), (" km", 0.99), (".", 0.97), ("\n", 1.0)]]
    res, sched = run(ScriptedBackend(MAIN, probes), thinking_budget="auto", loop_guard=False)
    c = res.choices[0]
    assert c.thinking_stopped_by == "early_exit"
    assert [p["answer"] for p in c.extra["early_exit_probes"]] == ["70", "8 km."]
    assert [round(p["confidence"], 3) for p in c.extra["early_exit_probes"]] == [0.3, 0.98]
    assert c.reasoning == "Step one. Wait two."  # the second marker was withheld, then thinking closed
    assert c.content == "42" and sched.live_count == 0


@pytest.mark.parametrize(
    ("answers", "exits_at"),
    [
        (["70", "70", "8"], 2),  # two confident answers in a row agree: exit at the second
        (["70", "8", "8"], 3),  # a confident intermediate value alone does not end thinking
        (["70", "8", "9"], None),  # never settles: the model closes thinking itself
    ],
)
def test_early_exit_can_want_successive_trial_answers_to_agree(
    answers: list[str], exits_at: int | None
) -> None:
    probes = [[(" " + a, 0.99), (".", 0.99), ("\n", 1.0)] for a in answers]
    res, sched = run(
        ScriptedBackend(MAIN, probes), thinking_budget="auto", early_exit_agree=2, loop_guard=False
    )
    c = res.choices[0]
    assert [p["answer"] for p in c.extra["early_exit_probes"]] == [a + "." for a in answers[: exits_at or 3]]
    if exits_at is None:
        assert (
            c.thinking_stopped_by == "model" and c.reasoning == "Step one. Wait two. Wait three. Wait four."
        )
    else:
        assert c.thinking_stopped_by == "early_exit"
        assert c.reasoning == ["Step one. Wait two.", "Step one. Wait two. Wait three."][exits_at - 2]
    assert sched.live_count == 0
    # The same probes with DEER's rule (one confident answer) exit at the first.
    first = run(ScriptedBackend(MAIN, probes), thinking_budget="auto", loop_guard=False)[0].choices[0]
    assert first.extra["early_exit_probe_count"] == 1 and first.reasoning == "Step one."


def test_early_exit_can_answer_with_the_confident_trial_answer() -> None:
    probes = [[(" 7", 0.2), ("0", 0.3), ("\n", 1.0)], [(" 8", 0.99), (" km", 0.99), ("\n", 1.0)]]
    res, sched = run(ScriptedBackend(MAIN, probes), thinking_budget="auto", early_exit_answer="trial")
    c = res.choices[0]
    assert c.thinking_stopped_by == "early_exit" and c.finish_reason == "stop"
    assert c.reasoning == "Step one. Wait two." and c.content == PREFIX + " 8 km"  # not the model's " 42"
    assert c.completion_tokens == c.reasoning_tokens + len(
        ScriptedBackend(MAIN).tokenize("\n</think>\n\n" + c.content)
    )
    assert sched.live_count == 0
    # No room left under max_tokens for the trial answer: the model answers as usual.
    tight = run(
        ScriptedBackend(MAIN, probes), thinking_budget="auto", early_exit_answer="trial", max_tokens=14
    )[0].choices[0]
    assert tight.thinking_stopped_by == "early_exit" and PREFIX not in tight.content


def test_probe_limit_and_unconfident_probes_leave_the_main_unchanged() -> None:
    low = [(" 1", 0.1), ("2", 0.2), ("\n", 1.0)]
    plain = run(ScriptedBackend(MAIN))[0].choices[0]
    res, sched = run(
        ScriptedBackend(MAIN, [low] * 5), thinking_budget="auto", early_exit_max_probes=2, loop_guard=False
    )
    c = res.choices[0]
    assert c.extra["early_exit_probe_count"] == 2
    assert (c.reasoning, c.content, c.completion_tokens) == (
        plain.reasoning,
        plain.content,
        plain.completion_tokens,
    )
    assert c.thinking_stopped_by == "model" and sched.live_count == 0


def test_no_probe_before_any_reasoning_or_without_markers() -> None:
    res, _ = run(
        ScriptedBackend(MAIN, [[(" 1", 0.99)]] * 5), thinking_budget="auto", transition_markers=("Nope",)
    )
    assert res.choices[0].extra["early_exit_probe_count"] == 0


def test_probe_token_bound() -> None:
    long = [(str(i), 0.5) for i in range(30)]
    res, _ = run(
        ScriptedBackend(MAIN, [long]),
        thinking_budget="auto",
        early_exit_max_probes=1,
        early_exit_probe_tokens=5,
    )
    assert res.choices[0].extra["early_exit_probes"][0]["answer"] == "01234"


@pytest.mark.parametrize("budget", [0, 1, 2, 5, 9])
def test_cap_is_exact_on_the_scripted_model(budget: int) -> None:
    res, _ = run(ScriptedBackend(MAIN), thinking_budget=budget, wrap_up="")
    c = res.choices[0]
    assert c.reasoning_tokens == min(budget, 12) and c.thinking_stopped_by == "budget"
    assert c.content == "42"


def test_min_thinking_rewinds_the_close_tag_and_waits() -> None:
    short = ["Step", " one", ".", "</", "think", ">"]
    res, _ = run(ScriptedBackend(short), min_thinking=8, max_waits=1)
    c = res.choices[0]
    assert c.extra["thinking_waits"] == 1
    assert c.reasoning.startswith("Step one.\nWait")
    assert "</" not in c.reasoning


def test_loop_guard_closes_thinking_in_auto() -> None:
    loop = ["Step", " one", "."] * 12
    res, _ = run(ScriptedBackend(loop), thinking_budget="auto", transition_markers=("Nope",), wrap_up="")
    c = res.choices[0]
    assert c.thinking_stopped_by == "loop_guard" and c.extra["loop_guard_reason"]
    assert c.content == "42"
