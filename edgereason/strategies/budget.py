"""Thinking budgets: exact caps (s1 budget forcing), min_thinking "Wait", DEER early exit, loop guard.

``ThinkingController`` is the per-choice policy a ``ChoiceDecoder`` consults on every token it samples
while the output is inside the think block. It never changes what the model would have written except
through the scheduler's own verbs: rewind a sampled token, inject forced text, fork a probe.

- Cap (s1, arXiv 2501.19393): ``reasoning_tokens`` — all text returned as reasoning, injected wrap-up
  included — never exceeds the budget. The token that would cross the cap is dropped and the wrap-up
  (when it fits: it takes at most half the budget) plus the end-of-thinking tag is injected instead.
- ``min_thinking``: a close tag or end-of-generation before the minimum is rewound and "Wait" injected.
- ``"auto"`` (DEER, arXiv 2504.15895): at a transition marker the main sequence is paused with the
  marker token withheld, a greedy probe is forked after a trial-answer prefix, and thinking ends when the
  probe's confidence reaches the threshold; otherwise the marker is re-added exactly and decoding goes on.
  ``early_exit_agree=K`` (K > 1) also wants the last K trial answers to be the same, each confident: a
  model whose trial answer is confident on every intermediate value of a step-by-step computation exits
  only once the value stops changing. ``early_exit_answer="trial"`` ends the choice with the confident
  trial answer as its content (prefix text + answer) instead of letting the model answer after the close.
- Loop guard (MiP overthinking, arXiv 2504.06514): repeated n-grams or sentences, or a dense run of
  self-doubt markers, end thinking with ``stopped_by="loop_guard"``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..answers import answers_equal
from ..backends.base import SamplingParams, TopLogprobs
from ..chat.reasoning import CLOSE_TAG
from ..options import GenerationOptions

if TYPE_CHECKING:
    from ..chat.reasoning import PromptPlan
    from ..scheduler import Scheduler, Seq
    from .generate import ChoiceDecoder

CLOSE_TEXT = "\n" + CLOSE_TAG + "\n\n"
WAIT_TEXT = "\nWait"
# Trial-answer prefixes (DEER appends "**Final Answer**\n\boxed" inside the thinking of R1-style models;
# a model without a thinking format answers more naturally after the closed block).
DEFAULT_PROBE_PREFIXES = {
    "deepseek-r1": "\n**Final Answer**\n\\boxed{",
    "qwen3": "\n**Final Answer**\n\\boxed{",
    "none": CLOSE_TEXT + "The answer is",
}
DEFAULT_LOOP_NGRAM = 12  # tokens
DEFAULT_LOOP_REPEATS = 3  # occurrences of the same n-gram or sentence
DEFAULT_MIN_SENTENCE_CHARS = 12
DEFAULT_DOUBT_MARKERS = (
    "wait",
    "alternatively",
    "hmm",
    "actually",
    "but wait",
    "let me re-check",
    "let me check",
)
DEFAULT_DOUBT_RUN = 6  # doubt markers ...
DEFAULT_DOUBT_WINDOW = 120  # ... within this many reasoning tokens
EARLY_EXIT_MARGIN = 8  # no probe when fewer reasoning tokens than this are left under the cap

Aggregate = Literal["mean", "geometric", "min"]


def probe_confidence(logprobs: Sequence[float], how: Aggregate = "mean") -> float:
    """Confidence of a trial answer from its tokens' log-probabilities.

    As in DEER the first token is left out (it mostly says *that* an answer starts, not which one),
    unless it is the only one. Empty input has confidence 0.
    """
    vals = list(logprobs[1:]) if len(logprobs) > 1 else list(logprobs)
    if not vals:
        return 0.0
    if how == "geometric":
        return math.exp(sum(vals) / len(vals))
    if how == "min":
        return math.exp(min(vals))
    return sum(math.exp(v) for v in vals) / len(vals)


def is_transition(text: str, before: str, markers: Sequence[str]) -> bool:
    """Does a token with ``text``, following raw text ``before``, start a transition marker?

    Word markers match at a word start on the token's stripped text: the token starts with the
    marker, or is a prefix of it at least 4 characters long (markers split over several tokens).
    Whitespace markers ("\\n\\n") match when they complete inside this token.
    """
    for m in markers:
        if not m.strip():
            if m in text or ((before + text).endswith(m) and m not in before[-len(m) :]):
                return True
            continue
        word = text.lstrip()
        if not word:
            continue
        at_word_start = text[:1].isspace() or not before or before[-1:].isspace() or before[-1:] in ".,;:!?)"
        mk = m.strip()
        if at_word_start and (word.startswith(mk) or (len(word) >= 4 and mk.startswith(word))):
            return True
    return False


class LoopGuard:
    """Detects degenerate thinking from the reasoning tokens and text fed to it."""

    def __init__(
        self,
        *,
        ngram: int = DEFAULT_LOOP_NGRAM,
        repeats: int = DEFAULT_LOOP_REPEATS,
        min_sentence_chars: int = DEFAULT_MIN_SENTENCE_CHARS,
        doubt_markers: Sequence[str] = DEFAULT_DOUBT_MARKERS,
        doubt_run: int = DEFAULT_DOUBT_RUN,
        doubt_window: int = DEFAULT_DOUBT_WINDOW,
    ) -> None:
        self.ngram, self.repeats, self.min_sentence_chars = ngram, repeats, min_sentence_chars
        self.doubt_run, self.doubt_window = doubt_run, doubt_window
        self._doubt_re = re.compile(
            r"(?:^|[\s.,;:!?])(" + "|".join(re.escape(m) for m in doubt_markers) + r")\b", re.I
        )
        self._tokens: list[int] = []
        self._ngrams: Counter[tuple[int, ...]] = Counter()
        self._sentences: Counter[str] = Counter()
        self._sentence = ""
        self._doubts: list[int] = []  # token index of each doubt marker
        self._recent = ""
        self.reason: str | None = None

    def feed(self, token: int, text: str) -> bool:
        """Feed one reasoning token; True once thinking looks degenerate (``reason`` says why)."""
        self._tokens.append(token)
        if len(self._tokens) >= self.ngram:
            key = tuple(self._tokens[-self.ngram :])
            self._ngrams[key] += 1
            if self._ngrams[key] >= self.repeats:
                self.reason = "repeated n-gram"
                return True
        before = self._recent
        window = before + text
        self._recent = window[-64:]
        # count markers that end inside the new text, so each is seen once
        new = sum(1 for m in self._doubt_re.finditer(window) if m.end(1) > len(before))
        if new:
            self._doubts = [i for i in self._doubts if i > len(self._tokens) - self.doubt_window]
            self._doubts.extend([len(self._tokens)] * new)
            if len(self._doubts) >= self.doubt_run:
                self.reason = "self-doubt run"
                return True
        self._sentence += text
        while (m := re.search(r"[.!?\n]", self._sentence)) is not None:
            done = " ".join(self._sentence[: m.end()].lower().split())
            self._sentence = self._sentence[m.end() :]
            if len(done) >= self.min_sentence_chars:
                self._sentences[done] += 1
                if self._sentences[done] >= self.repeats:
                    self.reason = "repeated sentence"
                    return True
        return False


@dataclass
class ProbeRecord:
    at_reasoning_tokens: int
    confidence: float
    answer: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at_reasoning_tokens,
            "confidence": round(self.confidence, 6),
            "answer": self.answer,
        }


@dataclass
class _Withheld:
    """The main sequence's marker token, held back while a probe runs."""

    token: int
    text: str
    logprobs: TopLogprobs | None


@dataclass(eq=False)
class Probe:
    """Controller of one trial-answer fork: greedy, at most ``max_tokens``, confidence from log-probs."""

    owner: ThinkingController
    sched: Scheduler
    max_tokens: int
    stop_at_brace: bool
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    seq: Seq | None = None

    def on_token(self, seq: Seq, token: int, text: str, logprobs: TopLogprobs | None) -> None:
        self.owner.probe_tokens += 1  # sampled for the probe: counted in usage like any generated token
        if self.sched.backend.is_eog(token):
            return self._done(seq)
        stop = "}" in text if self.stop_at_brace else ("\n" in text and self.text.strip() != "")
        if stop:  # the closing brace / line end itself is not part of the answer
            self.text += text.split("}" if self.stop_at_brace else "\n", 1)[0]
            return self._done(seq)
        self.text += text
        if logprobs is not None:
            self.logprobs.append(logprobs.logprob)
        if len(self.logprobs) >= self.max_tokens:
            self._done(seq)

    def on_ready(self, seq: Seq) -> None:  # pragma: no cover - probes always sample
        pass

    def on_context_full(self, seq: Seq) -> None:
        self.owner.probe_done(self, seq, failed=True)

    def _done(self, seq: Seq) -> None:
        self.sched.finish(seq)
        self.owner.probe_done(self, seq, failed=False)


class ThinkingPolicy:
    """The decisions of a choice's thinking controls, without an engine: when the cap ends thinking, when a
    close before ``min_thinking`` becomes "Wait", where a trial answer is probed and when its confidence
    ends thinking, when the loop guard fires; and the report. The local ``ThinkingController`` acts on them
    token by token through the scheduler; the remote executor (remote/steer.py) over a streamed completion."""

    def __init__(self, opts: GenerationOptions, reasoning_format: str | None) -> None:
        self.opts = opts
        budget = opts.effective_thinking_budget
        self.auto = budget == "auto"
        self.budget: int | None = opts.auto_budget_cap if budget == "auto" else budget
        self.min_thinking = opts.min_thinking or 0
        self.waits = 0
        self.markers = opts.transition_markers
        self.prefix = opts.early_exit_prefix
        if self.prefix is None:
            self.prefix = DEFAULT_PROBE_PREFIXES.get(
                reasoning_format or "none", DEFAULT_PROBE_PREFIXES["none"]
            )
        use_guard = opts.loop_guard if opts.loop_guard is not None else self.auto
        self.guard = LoopGuard() if use_guard else None
        self.probes: list[ProbeRecord] = []
        self.probe_tokens = 0  # tokens the probes decoded (trial prefixes) and sampled (trial answers)
        self.loop_reason: str | None = None
        self._raw_tail = ""  # recent raw text of the main sequence, for transition detection

    @property
    def wrap_text(self) -> str:
        return "\n" + self.opts.wrap_up if self.opts.wrap_up else ""

    @staticmethod
    def zero_budget_text(plan: PromptPlan) -> str:
        """What a zero budget puts at the end of the prompt: the think block, closed (nothing counted)."""
        if plan.starts_in_reasoning:
            return CLOSE_TEXT
        return "<think>" + CLOSE_TEXT if plan.may_open else ""

    @property
    def probe_stops_at_brace(self) -> bool:
        return self.prefix is not None and self.prefix.rstrip().endswith("{")

    def reserve(self, wrap_len: int) -> int:
        """Room kept for the wrap-up (``wrap_len`` tokens): used only when it takes at most half the budget."""
        return wrap_len if self.budget is not None and 0 < wrap_len <= self.budget // 2 else 0

    def wrap_fits(self, reasoning_tokens: int, wrap_len: int) -> bool:
        if wrap_len == 0:
            return False
        if self.budget is None:
            return True
        return self.reserve(wrap_len) > 0 and reasoning_tokens + wrap_len <= self.budget

    def over_cap(self, reasoning_tokens: int, wrap_len: int) -> bool:
        """One more reasoning token would cross the cap (less the wrap-up's room)."""
        return self.budget is not None and reasoning_tokens + 1 > self.budget - self.reserve(wrap_len)

    def wants_wait(self, reasoning_tokens: int, wait_len: int) -> bool:
        """The model ends thinking at ``reasoning_tokens``: extend it with "Wait" (``wait_len`` tokens)?"""
        if reasoning_tokens >= self.min_thinking or self.waits >= self.opts.max_waits:
            return False
        return self.budget is None or reasoning_tokens + wait_len <= self.budget

    def wants_probe(self, reasoning_tokens: int, text: str, wrap_len: int) -> bool:
        """Probe a trial answer before this token (it starts a transition marker)? The executor also
        needs room for the probe."""
        if not self.auto or len(self.probes) >= self.opts.early_exit_max_probes or reasoning_tokens == 0:
            return False
        if self.budget is not None and reasoning_tokens + EARLY_EXIT_MARGIN > self.budget - self.reserve(
            wrap_len
        ):
            return False  # near the cap: the cap ends thinking anyway
        return is_transition(text, self._raw_tail, self.markers)

    def saw(self, text: str) -> None:
        """A token of the main sequence's raw text (for transition detection)."""
        self._raw_tail = (self._raw_tail + text)[-16:]

    def probed(self, reasoning_tokens: int, logprobs: Sequence[float], answer: str, *, failed: bool) -> bool:
        """A probe's trial answer came back: record it; True when thinking should end here."""
        conf = 0.0 if failed else probe_confidence(logprobs, self.opts.early_exit_confidence)
        self.probes.append(ProbeRecord(reasoning_tokens, conf, answer.strip()))
        return self.settled()

    def settled(self) -> bool:
        """The last ``early_exit_agree`` trial answers are confident and (when more than one) the same."""
        k = self.opts.early_exit_agree
        last = self.probes[-k:]
        if len(last) < k or any(p.confidence < self.opts.early_exit_threshold for p in last):
            return False
        return k == 1 or all(p.answer and answers_equal(p.answer, last[0].answer) for p in last)

    def loops(self, token: int, text: str) -> bool:
        """Feed a reasoning token to the loop guard; True once thinking looks degenerate."""
        if self.guard is None or not self.guard.feed(token, text):
            return False
        self.loop_reason = self.guard.reason
        return True

    def trial_answer_text(self, answer: str) -> str:
        """The text that answers with a confident trial answer (``early_exit_answer="trial"``)."""
        assert self.prefix is not None
        lead = self.prefix.split(CLOSE_TAG, 1)[-1].lstrip("\n")  # a prefix that closed thinking itself
        return lead + answer + ("}" if self.probe_stops_at_brace else "")

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.auto:
            out["early_exit_probe_count"] = len(self.probes)
            out["early_exit_probes"] = [p.to_dict() for p in self.probes]
            out["probe_tokens"] = self.probe_tokens
        if self.waits:
            out["thinking_waits"] = self.waits
        if self.loop_reason:
            out["loop_guard_reason"] = self.loop_reason
        return out


class ThinkingController(ThinkingPolicy):
    """The thinking policy of one choice, acted on through the scheduler: cap, minimum, early exit, loop guard."""

    def __init__(self, opts: GenerationOptions, plan: PromptPlan) -> None:
        super().__init__(opts, plan.reasoning_format)
        self.probe: Probe | None = None
        self._withheld: _Withheld | None = None
        self._main: Seq | None = None
        self._decoder: ChoiceDecoder | None = None
        self._wrap_tokens: list[int] | None = None
        self._replaying = False  # a withheld token is given back: it passes unchanged

    # -- hooks called by ChoiceDecoder -------------------------------------------------------------
    def start(self, d: ChoiceDecoder, seq: Seq, *, forked: bool = False) -> None:
        """Before the first decode: a zero budget closes thinking in the prompt (nothing is counted).
        ``forked``: ``seq`` is a fork of a choice that got the same start, its tokens are there already."""
        if self.budget != 0 or d.prompt.plan.thinking_disabled:
            return
        text = self.zero_budget_text(d.prompt.plan)
        if text:
            if not forked:
                d.sched.inject(seq, d.sched.backend.tokenize(text))
            d.note_prompt_text(text)
            d.thinking_stopped_by = "budget"

    def before_token(
        self, d: ChoiceDecoder, seq: Seq, token: int, text: str, logprobs: TopLogprobs | None
    ) -> bool:
        """A token sampled inside the think block, not yet counted or routed. True: consumed here."""
        if self._replaying:
            return False
        sched = d.sched
        closes = sched.backend.is_eog(token) and not d.opts.ignore_eos or d.closes_thinking(text)
        if closes:
            if self.min_thinking and self.wants_wait(
                d.reasoning_tokens, len(sched.backend.tokenize(WAIT_TEXT))
            ):
                self._extend(d, seq, text)
                return True
            return False
        if self.over_cap(d.reasoning_tokens, self._wrap_len(d)):
            sched.rewind(seq, 1)
            self.close(d, seq, "budget", wrap=True)
            return True
        probe = (
            self.wants_probe(d.reasoning_tokens, text, self._wrap_len(d))
            and d.sched.room_for(d.job)  # probes use only the slots the job reserved
            and self._start_probe(d, seq, token, text, logprobs)
        )
        self.saw(text)
        return probe

    def after_token(self, d: ChoiceDecoder, seq: Seq, token: int, text: str) -> None:
        """A token routed (still thinking): the loop guard looks at it."""
        if self.guard is None or not d.in_reasoning or d.finished:
            return
        if self.loops(token, text):
            self.close(d, seq, "loop_guard", wrap=True)

    def close_probe(self) -> None:
        """The choice ended (or was cancelled): free a running probe."""
        if self.probe is not None and self.probe.seq is not None and self.probe.seq.live:
            self.probe.sched.finish(self.probe.seq)
        self.probe = None
        self._withheld = None

    # -- actions -----------------------------------------------------------------------------------
    def close(self, d: ChoiceDecoder, seq: Seq, reason: str, *, wrap: bool) -> None:
        """End thinking now: wrap-up line (when it fits) and the rest of the end-of-thinking tag."""
        if wrap and self.wrap_fits(d.reasoning_tokens, self._wrap_len(d)):
            d.inject_text(seq, self.wrap_text)
        held = d.held_tag
        # a partial tag the model already wrote ("</") is completed rather than repeated
        d.end_thinking(seq, reason, CLOSE_TAG[len(held) :] + "\n\n" if held else CLOSE_TEXT)

    def _extend(self, d: ChoiceDecoder, seq: Seq, text: str) -> None:
        """s1: drop the model's end of thinking (close tag or EOS) and continue with "Wait"."""
        sched = d.sched
        sched.rewind(seq, 1)  # the closing token: sampled, not yet counted or decoded
        keep = ""
        if d.closes_thinking(text):
            held = d.drop_held_tag()
            whole = held + text
            keep = whole[: whole.find(CLOSE_TAG)]
            self._unwind_held(d, seq, held)
        self.waits += 1
        d.inject_text(seq, keep + WAIT_TEXT)

    def _unwind_held(self, d: ChoiceDecoder, seq: Seq, held: str) -> None:
        """Rewind the tokens behind text the splitter held back (counted, never shown)."""
        if not held:
            return
        backend = d.sched.backend
        acc, k = "", 0
        while len(acc) < len(held) and k < len(seq.tokens):
            k += 1
            acc = backend.token_bytes(seq.tokens[-k]).decode("utf-8", "replace") + acc
        d.take_back(seq, k)
        extra = acc[: len(acc) - len(held)]
        if extra:  # the first token straddled shown text and the held tag: put the shown part back
            d.put_back(seq, backend.tokenize(extra))

    # -- early exit --------------------------------------------------------------------------------
    def _start_probe(
        self, d: ChoiceDecoder, seq: Seq, token: int, text: str, logprobs: TopLogprobs | None
    ) -> bool:
        """Fork a trial-answer probe before the marker token; False (nothing done) if there is no prefix."""
        sched = d.sched
        assert self.prefix is not None
        prefix = sched.backend.tokenize(self.prefix)
        if not prefix:  # a fork with nothing to decode would never sample: it would stall the choice
            return False
        sched.rewind(seq, 1)  # withhold the marker: the main sequence is exactly as before it
        self._withheld = _Withheld(token, text, logprobs)
        self._main = seq
        probe = Probe(self, sched, self.opts.early_exit_probe_tokens, stop_at_brace=self.probe_stops_at_brace)
        probe.seq = sched.fork(seq, probe, SamplingParams(), pending=prefix, top_logprobs=0)
        self.probe_tokens += len(prefix)
        self.probe = probe
        self._decoder = d
        sched.pause(seq)
        return True

    def probe_done(self, probe: Probe, probe_seq: Seq, *, failed: bool) -> None:
        d, seq, held = self._decoder, self._main, self._withheld
        self.probe, self._withheld = None, None
        if d is None or seq is None or held is None or not seq.live:
            return
        settled = self.probed(d.reasoning_tokens, probe.logprobs, probe.text, failed=failed)
        d.sched.resume(seq)
        if settled:
            self.close(d, seq, "early_exit", wrap=False)
            if not d.finished and self.opts.early_exit_answer == "trial":
                self._answer_with_trial(d, seq, probe)
            if not d.finished and d.completion_tokens >= d.max_tokens:
                d.end(seq, "length")
            return
        d.sched.inject(seq, [held.token])  # exactly the token the model sampled
        self._replaying = True
        try:
            d.on_token(seq, held.token, held.text, held.logprobs)
        finally:
            self._replaying = False

    def _answer_with_trial(self, d: ChoiceDecoder, seq: Seq, probe: Probe) -> None:
        """The confident trial answer becomes the choice's answer (when it fits in ``max_tokens``)."""
        text = self.trial_answer_text(probe.text)
        if d.completion_tokens + len(d.sched.backend.tokenize(text)) > d.max_tokens:
            return  # no room: the model answers as usual
        d.inject_text(seq, text)
        if not d.finished:
            d.end(seq, "stop")

    # -- helpers -----------------------------------------------------------------------------------
    def _wrap_len(self, d: ChoiceDecoder) -> int:
        if self._wrap_tokens is None:
            text = self.wrap_text
            self._wrap_tokens = d.sched.backend.tokenize(text) if text else []
        return len(self._wrap_tokens)


def make_thinking_controller(opts: GenerationOptions, plan: PromptPlan) -> ThinkingController | None:
    """The policy for ``opts``, or None when no thinking option is set (plain generation)."""
    if plan.thinking_disabled:
        return None
    if opts.effective_thinking_budget is None and not opts.min_thinking and not opts.loop_guard:
        return None
    return ThinkingController(opts, plan)
