"""Self-consistency in the engine: sample reasoning paths in one batch and vote on their answers.

The prompt is prefilled once. When every sample fits at once (N samples in N slots) it is prefilled as
sample 0's sequence, and samples 1.. fork it when its logits are ready and sample from those logits: each
sample equals a lone run with its seed. Otherwise (``parallel`` below the sample count, or more samples
than slots) a holder keeps all but the prompt's last token for the job's life, and samples fork from it
up to ``width`` at a time, a new fork whenever one finishes, each decoding the last prompt token itself.
Answers are extracted as samples finish and the stopping rule is applied in finish order; when it
fires (or the time budget runs out) the samples still decoding are cancelled and freed at once.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..answers import Extracted, answer_key
from ..backends.base import AdapterSet, SamplingParams, TopLogprobs
from ..errors import InvalidRequestError
from ..job import Job, PreparedPrompt
from ..options import GenerationOptions, SelfConsistencyOptions
from ..result import ChatResult, Choice, Chunk, FinishReason, Usage
from ..structured import canonical_json
from .generate import ChoiceDecoder, sampling_for
from .voting import Vote, make_stopping_rule, tally, token_confidence, trace_confidence

if TYPE_CHECKING:
    from ..scheduler import Scheduler, Seq

DEFAULT_CONFIDENCE_TOP_K = 20  # DeepConf's k
DEFAULT_CONFIDENCE_WINDOW = 64  # DeepConf uses 2048 tokens; our students write short traces
MISMATCH_WEIGHT = 0.5  # a sample whose reasoning disagrees with its answer, under mismatch="downweight"


class SampleDecoder(ChoiceDecoder):
    """A vote sample: a ChoiceDecoder that also records DeepConf token confidences."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.token_confs: list[float] = []

    def on_token(self, seq: Seq, token: int, text: str, logprobs: TopLogprobs | None) -> None:
        if logprobs is not None and logprobs.top:
            self.token_confs.append(token_confidence([lp for _, lp in logprobs.top]))
        super().on_token(seq, token, text, logprobs)


@dataclass
class SampleReport:
    """What the vote keeps of one finished sample."""

    index: int
    answer: str | None  # the vote key; None = abstention
    tokens: int
    confidence: float
    finish_reason: str
    answer_confidence: float | None
    think_answer_mismatch: bool | None
    choice: Choice

    @classmethod
    def of(
        cls,
        index: int,
        choice: Choice,
        found: Extracted | None,
        token_confs: list[float],
        sc: SelfConsistencyOptions,
    ) -> SampleReport:
        """A finished sample's vote entry, whichever executor decoded it: ``found`` is its extracted answer
        (the vote key unless ``mismatch="drop"`` drops it), ``token_confs`` its DeepConf token confidences."""
        mismatch = choice.extra["think_answer_mismatch"]
        key = answer_key(found) if found is not None else None
        if mismatch is True and sc.mismatch == "drop":
            key = None
        return cls(
            index=index,
            answer=key,
            tokens=choice.completion_tokens,
            confidence=trace_confidence(token_confs, DEFAULT_CONFIDENCE_WINDOW),
            finish_reason=choice.finish_reason,
            answer_confidence=choice.extra["answer_confidence"],
            think_answer_mismatch=mismatch,
            choice=choice,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "answer": self.answer,
            "tokens": self.tokens,
            "confidence": round(self.confidence, 4),
            "finish_reason": self.finish_reason,
            "answer_confidence": self.answer_confidence,
            "think_answer_mismatch": self.think_answer_mismatch,
            "reasoning": self.choice.reasoning,
            # Each sample runs its own code blocks (the built-in tool): its calls, errors, tokens, time.
            **(
                {"python_tool": self.choice.extra["python_tool"]}
                if "python_tool" in self.choice.extra
                else {}
            ),
        }


def _structured_answer(d: ChoiceDecoder) -> Extracted | None:
    """A grammar-constrained sample's vote: its answer as canonical JSON (key order and spacing do not split
    votes), else the whole answer text of a finished sample; a cut-off answer abstains."""
    content = "".join(d.content).strip()
    key = canonical_json(content)
    if key is None and (d.finish_reason != "stop" or not content):
        return None
    return Extracted(raw=content, normalized=key or content, value=None, source="json" if key else "grammar")


class SelfConsistencyJob(Job):
    """``self_consistency.samples`` samples of one prompt, voted; one choice comes back."""

    def __init__(
        self,
        prompt: PreparedPrompt,
        opts: GenerationOptions,
        model: str = "",
        max_sequences: int = 2,
        adapters: AdapterSet = (),
    ) -> None:
        super().__init__()
        assert opts.self_consistency is not None
        if opts.n != 1:
            raise InvalidRequestError("self_consistency returns one voted answer; leave n at 1", param="n")
        self.prompt, self.opts, self.model = prompt, opts, model
        self.adapters = adapters  # every sample decodes under the request's adapters (forks inherit them)
        self.adapters_used = frozenset(name for name, _ in adapters)
        self.sc: SelfConsistencyOptions = opts.self_consistency
        self.rule = make_stopping_rule(self.sc.adaptive, self.sc.threshold, self.sc.window)
        # Under the "auto" thinking budget each sample may fork an early-exit probe beside it.
        per_sample = 2 if opts.effective_thinking_budget == "auto" else 1
        most = min(self.sc.samples, self.sc.parallel or self.sc.samples)
        if most == self.sc.samples and self.sc.samples * per_sample <= max_sequences:
            # all at once: sample 0 is the prompt's own sequence, nothing holds the prompt after the forks
            self.holder, self.width = False, self.sc.samples
            self.slots_needed = self.width * per_sample
        else:  # one slot holds the prompt; samples share the rest, a new one forked as each finishes
            self.holder = True
            self.width = max(1, min(most, (max_sequences - 1) // per_sample))
            self.slots_needed = min(self.width * per_sample + 1, max(2, max_sequences))
        self.running: list[SampleDecoder] = []
        self.finished: list[SampleReport] = []  # in finish order
        self.cancelled: list[SampleDecoder] = []
        self.launched = 0
        self.root: Seq | None = None
        self.cached_tokens = 0
        self.deadline: float | None = None
        self.stop_rule: str | None = None  # what ended sampling early
        self._no_more = False

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, sched: Scheduler) -> None:
        self.sched = sched
        if self.opts.answer_grammar is not None:  # a bad grammar or a backend without grammars: fail now
            sched.check_grammar(*self.opts.answer_grammar)
        if self.sc.time_budget_s is not None:
            self.deadline = time.monotonic() + self.sc.time_budget_s
        if self.opts.max_tokens == 0:
            self._complete()
            return
        if not self.holder:  # every sample at once: the prompt is sample 0's sequence
            self.running = [self._sample_decoder(i) for i in range(self.sc.samples)]
            self.launched = len(self.running)
            first = self.running[0]
            first.seq = sched.spawn(
                first,
                self.prompt.tokens,
                self._sampling(0),
                adapters=self.adapters,
                top_logprobs=DEFAULT_CONFIDENCE_TOP_K,
                owner=self,
                reuse=self.opts.cache_prompt,
            )
            self.cached_tokens = first.seq.n_past
            first.seq.on_logits = self._fork_samples
            first.constrain_answer(first.seq)
            return
        self.root = sched.spawn(
            self,
            self.prompt.tokens[:-1],
            None,
            adapters=self.adapters,
            owner=self,
            reuse=self.opts.cache_prompt,
        )
        self.cached_tokens = self.root.n_past
        if not self.root.pending:
            self.on_ready(self.root)

    def _fork_samples(self, seq: Seq) -> list[Seq]:
        """Sample 0's prompt is decoded: samples 1.. fork it (they sample from its logits after sample 0)."""
        forks = []
        for d in self.running[1:]:
            d.seq = self.sched.fork(seq, d, self._sampling(d.index), top_logprobs=DEFAULT_CONFIDENCE_TOP_K)
            d.constrain_answer(d.seq)
            forks.append(d.seq)
        return forks

    def on_ready(self, seq: Seq) -> None:
        self._launch()

    def _sample_decoder(self, i: int) -> SampleDecoder:
        return SampleDecoder(self, self.sched, self.prompt, self.opts, index=i, stream=False)

    def _sampling(self, i: int) -> SamplingParams:
        return sampling_for(self.opts, i, temperature=self.sc.temperature, top_p=self.sc.top_p)

    def on_token(
        self, seq: Seq, token: int, text: str, logprobs: TopLogprobs | None
    ) -> None:  # pragma: no cover
        pass

    def on_context_full(self, seq: Seq) -> None:  # the shared prompt no longer fits beside other requests
        self.root = None
        self._stop("context_full")

    def abort(self, sched: Scheduler) -> None:
        self._stop("cancelled")

    # -- samples -----------------------------------------------------------------------------------
    def _launch(self) -> None:
        if self.done:
            return
        root = self.root
        while (
            root is not None
            and not self._no_more
            and len(self.running) < self.width
            and self.launched < self.sc.samples
            and self.sched.room_for(self)
        ):
            i = self.launched
            d = self._sample_decoder(i)
            d.seq = self.sched.fork(
                root,
                d,
                self._sampling(i),
                pending=[self.prompt.tokens[-1]],
                top_logprobs=DEFAULT_CONFIDENCE_TOP_K,
            )
            d.constrain_answer(d.seq)
            self.running.append(d)
            self.launched += 1
        if not self.running:  # nothing left to wait for (all launched, or no slot to launch into)
            self._complete()

    def on_choice_done(self, decoder: ChoiceDecoder) -> None:
        if self.done or not isinstance(decoder, SampleDecoder) or decoder not in self.running:
            return
        self.running.remove(decoder)
        self.finished.append(self._report(decoder))
        if self.rule.should_stop([r.answer for r in self.finished], self.sc.samples):
            if len(self.finished) < self.sc.samples:
                self._stop(self.rule.name)
            else:
                self._complete()
            return
        if self._past_deadline():
            self._stop("time_budget")
            return
        self._launch()

    def on_choice_context_full(self, decoder: ChoiceDecoder) -> None:
        # Memory is short: vote with what finishes instead of forking more into a full context.
        self._no_more = True
        self.running = [d for d in self.running if d.seq is not None]  # samples never forked do not start
        self.on_choice_done(decoder)

    def on_choice_token(self, decoder: ChoiceDecoder) -> None:
        if not self.done and self._past_deadline():
            self._stop("time_budget")

    def _past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _report(self, d: SampleDecoder) -> SampleReport:
        found = d.final_answer(self.sc.answer_format) if d.grammar is None else _structured_answer(d)
        return SampleReport.of(
            d.index, d.to_choice(self.sc.answer_format, found), found, d.token_confs, self.sc
        )

    def _stop(self, why: str) -> None:
        """Cancel and free every sequence still decoding, then vote over the finished samples."""
        if self.done:
            return
        self.stop_rule = why
        for d in self.running:
            d.cancel()
            self.cancelled.append(d)
        self.running = []
        self._complete()

    # -- the vote ----------------------------------------------------------------------------------
    def _complete(self) -> None:
        if self.done:
            return
        if self.root is not None and self.root.live:
            self.sched.finish(self.root)
        self.root = None
        choice, report = vote(
            self.finished,
            self.opts,
            stop_rule=self.stop_rule,
            rule=self.rule.name,
            cancelled=len(self.cancelled),
            parallel=self.width,
        )
        decoders_tokens = [r.choice for r in self.finished] + [d.to_choice() for d in self.cancelled]
        usage = Usage.of_choices(len(self.prompt.tokens), decoders_tokens, self.cached_tokens)
        # Streaming callers get the representative sample's text as it stands at the end.
        if choice.reasoning:
            self.emit(Chunk("reasoning", choice.reasoning))
        if choice.content:
            self.emit(Chunk("content", choice.content))
        self.complete(
            ChatResult(choices=[choice], usage=usage, model=self.model, extra={"self_consistency": report})
        )


# -- the vote, shared by every executor (the local scheduler's job, the remote executor) ----------------------
def vote(
    finished: list[SampleReport],
    opts: GenerationOptions,
    *,
    stop_rule: str | None,
    rule: str,
    cancelled: int,
    parallel: int,
) -> tuple[Choice, dict[str, Any]]:
    """The voted choice and the ``self_consistency`` report over ``finished`` (in finish order).

    The choice is the winning sample with the highest trace confidence, then the earliest index; with no
    winner (every sample abstained) the same over all; with none finished an empty choice. ``stop_rule`` is
    what ended sampling early (None: every sample ran), ``rule`` the stopping rule's name, ``cancelled``
    the samples stopped unfinished, ``parallel`` how many decoded at once."""
    sc = opts.self_consistency
    assert sc is not None
    weighted = sc.strategy == "weighted" or sc.mismatch == "downweight"
    dropped = {r.index for r in finished if _code_failed(r)} if sc.failed_code == "drop" else set()
    if not any(_code_ran(r) for r in finished):
        dropped = set()  # every sample's code failed (or none wrote any): nothing better to prefer
    votes = []
    for r in finished:
        weight = r.confidence if sc.strategy == "weighted" else 1.0
        if r.think_answer_mismatch is True and sc.mismatch == "downweight":
            weight *= MISMATCH_WEIGHT
        answer = None if r.index in dropped else r.answer
        votes.append(Vote(answer=answer, weight=weight, confidence=r.confidence, index=r.index))
    result = tally(votes, "weighted" if weighted else "majority")
    pool = [r for r in finished if r.answer == result.winner] if result.winner is not None else finished
    if pool:
        choice = dataclasses.replace(min(pool, key=lambda r: (-r.confidence, r.index)).choice, index=0)
        if result.winner is not None:
            choice.answer = result.winner
    else:
        reason: FinishReason = "length" if opts.max_tokens == 0 else "cancelled"
        choice = Choice(
            index=0,
            content="",
            reasoning="",
            finish_reason=reason,
            completion_tokens=0,
            reasoning_tokens=0,
            extra={"answer_confidence": None, "think_answer_mismatch": None},
        )
    report: dict[str, Any] = {
        "answer": result.winner,
        "votes": {a: (int(v) if not weighted else round(v, 4)) for a, v in result.votes.items()},
        "samples_used": len(finished),
        "samples_requested": sc.samples,
        "samples_cancelled": cancelled,
        "parallel": parallel,
        "confidence": result.share,
        "stopped_early": stop_rule is not None,
        "stop_rule": stop_rule or rule,
        "strategy": sc.strategy,
        "samples": [r.to_dict() for r in finished],
    }
    if dropped:
        report["failed_code_dropped"] = sorted(dropped)  # their votes; their own answers stay in samples
    return choice, report


def _tool_runs(r: SampleReport) -> tuple[int, int]:
    tool = r.choice.extra.get("python_tool") or {}
    return int(tool.get("calls", 0)), int(tool.get("errors", 0))


def _code_failed(r: SampleReport) -> bool:
    calls, errors = _tool_runs(r)
    return calls > 0 and errors >= calls


def _code_ran(r: SampleReport) -> bool:
    calls, errors = _tool_runs(r)
    return calls > errors
