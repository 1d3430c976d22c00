"""Plain generation: one or ``n`` choices from one prompt, decoded as parallel sequences.

``ChoiceDecoder`` is the per-sequence controller every strategy reuses: it turns tokens into
channel text (reasoning | content), applies stop strings, EOS and ``max_tokens``, and counts usage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..answers import AnswerFormat, Extracted
from ..backends.base import AdapterSet, SamplingParams, TopLogprobs
from ..chat.reasoning import CLOSE_TAG, Channel, ChannelSplitter, State
from ..errors import EdgeReasonError
from ..job import Job, PreparedPrompt
from ..options import GenerationOptions
from ..result import ChatResult, Choice, Chunk, FinishReason, TokenLogprob, Usage
from ..signals import answer_confidence, final_answer, think_answer_mismatch
from ..structured import think_or_answer
from ..tools.builtin import CodeBlock, CodeWatcher, ToolOutcome, output_text
from .budget import ThinkingController, make_thinking_controller

if TYPE_CHECKING:
    from ..scheduler import Scheduler, Seq


def sampling_for(
    opts: GenerationOptions,
    seed_offset: int = 0,
    *,
    temperature: float | None = None,
    top_p: float | None = None,
) -> SamplingParams:
    """The sampler settings of one sequence; choice ``i`` gets seed ``seed + i``."""
    seed = opts.seed if opts.seed is not None else int.from_bytes(os.urandom(4), "little")
    return SamplingParams(
        temperature=opts.temperature if temperature is None else temperature,
        top_p=opts.top_p if top_p is None else top_p,
        top_k=opts.top_k,
        min_p=opts.min_p,
        repeat_penalty=opts.repeat_penalty,
        repeat_last_n=opts.repeat_last_n,
        presence_penalty=opts.presence_penalty,
        frequency_penalty=opts.frequency_penalty,
        seed=(seed + seed_offset) & 0xFFFFFFFF,
        logit_bias=opts.logit_bias,
    )


class StopMatcher:
    """Finds stop strings across token boundaries, holding back text that may start one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, stopped)."""
        if not self.stops:
            return text, False
        buf = self._held + text
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            return buf[:cut], True
        keep = max((_overlap(buf, s) for s in self.stops), default=0)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


def _overlap(text: str, stop: str) -> int:
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


@dataclass
class ChoiceDecoder:
    """Controller of one generated sequence (one choice, one vote sample, one probe's parent)."""

    job: Job
    sched: Scheduler
    prompt: PreparedPrompt
    opts: GenerationOptions
    index: int = 0
    stream: bool = True  # emit chunks to the job as they come
    splitter: ChannelSplitter = field(init=False)
    stops: StopMatcher = field(init=False)
    reasoning: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    finish_reason: FinishReason | None = None
    thinking_stopped_by: str | None = None
    token_logprobs: list[TokenLogprob] | None = None
    logprob_values: list[float] = field(default_factory=list)  # every sampled token's logprob, when recorded
    logprob_texts: list[str] = field(default_factory=list)  # the text of each token in logprob_values
    logprobs_streamed: int = 0  # token_logprobs already sent with a chunk
    seq: Seq | None = None
    thinking: ThinkingController | None = field(init=False, default=None)  # budgets, early exit, loop guard
    # The answer's grammar (GBNF, root) and what the sampler is constrained by now: "free" while thinking,
    # "open" before the model has chosen between opening <think> and answering, "answer" after.
    grammar: tuple[str, str] | None = field(init=False, default=None)
    grammar_mode: str = field(init=False, default="free")
    # The built-in Python tool: the watcher finds closed code blocks in what the model writes; runs and
    # the tokens of their injected output are counted apart from the model's own (see tools/builtin.py).
    code_watch: CodeWatcher | None = field(init=False, default=None)
    tool_calls: int = field(init=False, default=0)
    tool_errors: int = field(init=False, default=0)
    tool_tokens: int = field(init=False, default=0)
    tool_wall_s: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        plan = self.prompt.plan
        self.thinking = make_thinking_controller(self.opts, plan)
        self.splitter = ChannelSplitter(starts_in_reasoning=plan.starts_in_reasoning, may_open=plan.may_open)
        self.stops = StopMatcher(self.opts.stop)
        self.grammar = self.opts.answer_grammar
        if "python" in self.opts.builtin_tools:
            self.code_watch = CodeWatcher()
        if plan.thinking_disabled:
            self.thinking_stopped_by = "disabled"
        if self.opts.logprobs or self.opts.top_logprobs:
            self.token_logprobs = []
        room = self.sched.caps.n_ctx - len(self.prompt.tokens)
        self.max_tokens = min(self.opts.max_tokens, room) if self.opts.max_tokens is not None else room

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def in_reasoning(self) -> bool:
        return self.splitter.in_reasoning

    # -- Controller --------------------------------------------------------------------------------
    def attach(self, seq: Seq, *, forked: bool = False) -> None:
        """Own ``seq`` (spawned or forked for this choice, before it samples). ``forked``: ``seq`` is a
        fork of another choice's prompt, which already holds what the thinking policy puts there."""
        self.seq = seq
        if self.thinking is not None:
            self.thinking.start(self, seq, forked=forked)
        self.constrain_answer(seq)

    def constrain_answer(self, seq: Seq) -> None:
        """Keep the sampler's grammar in step with the channel: none while thinking, the answer's grammar
        from the first token after the think block closes (or at once without thinking). Before the model
        has chosen whether to open <think> itself, the grammar allows either the tag or the answer."""
        if self.grammar is None or seq.sampler is None or not seq.live:
            return
        state = self.splitter.state
        want = "free" if state is State.REASONING else "open" if state is State.START else "answer"
        if want == "answer" and self.grammar_mode == "open":
            self.grammar_mode = "answer"  # the model took the answer branch: the same grammar goes on
        if want == self.grammar_mode:
            return
        gbnf, root = self.grammar
        if want == "open":
            gbnf, root = think_or_answer(gbnf, root)
        self.sched.constrain(seq, None if want == "free" else gbnf, root)
        self.grammar_mode = want

    def on_token(self, seq: Seq, token: int, text: str, logprobs: TopLogprobs | None) -> None:
        policy = self.thinking
        if policy is not None and self.in_reasoning and policy.before_token(self, seq, token, text, logprobs):
            return  # the thinking policy took this token over (cap, "Wait", an early-exit probe)
        if self.sched.backend.is_eog(token) and (not self.opts.ignore_eos or self.grammar_mode == "answer"):
            seq.pending.clear()  # under a grammar, end-of-generation means the grammar is complete
            self.end(seq, "stop")
            return
        if self.grammar is not None and self._close_then_answer(seq, text):
            return
        self.completion_tokens += 1
        if logprobs is not None:
            self.logprob_values.append(logprobs.logprob)
            self.logprob_texts.append(text)
            if self.token_logprobs is not None:
                self._record_logprob(token, logprobs)
        self.take_text(seq, text, tokens=1)
        if self.thinking is not None and not self.finished:
            self.thinking.after_token(self, seq, token, text)
        if not self.finished:
            self.job.on_choice_token(self)
        if not self.finished and self.completion_tokens >= self.max_tokens:
            self.end(seq, "length")
        elif not self.finished and self.code_watch is not None:
            block = self.code_watch.feed(text)
            if block is not None and self.tool_calls < self.opts.max_tool_calls:
                self._run_tool(seq, block)

    # -- the built-in Python tool --------------------------------------------------------------------
    def _run_tool(self, seq: Seq, block: CodeBlock) -> None:
        """Pause ``seq`` (its last token stays undecoded) while a worker runs the block."""
        runner = self.sched.tool_runner
        if runner is None:
            raise EdgeReasonError(
                "the built-in Python tool needs an engine (this scheduler has no tool runner)"
            )
        job = self.job
        self.tool_calls += 1
        self.sched.pause(seq)
        runner.submit(job, block.code, lambda out: self.sched.guarded(job, self._tool_done, seq, block, out))

    def _tool_done(self, seq: Seq, block: CodeBlock, outcome: ToolOutcome) -> None:
        """On the engine thread: inject the output and resume (a cancelled choice drops it)."""
        if self.finished or not seq.live:
            return
        if isinstance(outcome, BaseException):
            raise outcome  # the sandbox could not run at all: the request fails, never the engine
        self.tool_wall_s += outcome.wall_s
        self.tool_errors += not outcome.ok
        text = output_text(outcome, block.after)
        tokens = self.sched.backend.tokenize(text)
        self.sched.inject(seq, tokens)
        self.tool_tokens += len(tokens)
        # Not the model's text: no stop strings, no reasoning tokens (budgets count the model's only).
        self._route(self.splitter.feed(self.stops.flush() + text))
        if self.grammar is not None:
            self.constrain_answer(seq)
        self.sched.resume(seq)

    def tool_report(self) -> dict[str, float | int]:
        return {
            "calls": self.tool_calls,
            "errors": self.tool_errors,
            "tokens": self.tool_tokens,
            "wall_s": round(self.tool_wall_s, 4),
        }

    def on_ready(self, seq: Seq) -> None:  # pragma: no cover - decoders always sample
        pass

    def _close_then_answer(self, seq: Seq, text: str) -> bool:
        """A token that closes the think block and starts the answer (``</think>{``): the grammar never saw
        that start, so only the close is kept (forced) and the grammar samples the answer. True: handled."""
        if not self.splitter.closes_with(text):
            return False
        whole = self.splitter.held + text
        after = whole[whole.find(CLOSE_TAG) + len(CLOSE_TAG) :]
        if not after.strip():
            return False
        self.sched.rewind(seq, 1)
        self.inject_text(seq, text[: len(text) - len(after)])
        if not self.finished and self.completion_tokens >= self.max_tokens:
            self.end(seq, "length")
        return True

    def on_context_full(self, seq: Seq) -> None:
        self._finalize(seq, "length")
        self.job.on_choice_context_full(self)

    # -- used by strategies layered on top -----------------------------------------------------
    def take_text(self, seq: Seq, text: str, tokens: int) -> None:
        """Route text of ``tokens`` tokens (sampled or injected) through stop strings and channels."""
        was_reasoning = self.splitter.in_reasoning
        safe, stopped = self.stops.feed(text)
        self._route(self.splitter.feed(safe))
        if was_reasoning and self.splitter.in_reasoning:
            self.reasoning_tokens += tokens
        if was_reasoning and not self.splitter.in_reasoning and self.thinking_stopped_by is None:
            self.thinking_stopped_by = "model"
        if stopped:
            seq.pending.clear()
            self.end(seq, "stop")
        elif self.grammar is not None:
            self.constrain_answer(seq)

    def inject_text(self, seq: Seq, text: str) -> int:
        """Force ``text`` into the sequence as if generated; returns its token count."""
        tokens = self.sched.backend.tokenize(text)
        self.sched.inject(seq, tokens)
        self.completion_tokens += len(tokens)
        self.take_text(seq, text, tokens=len(tokens))
        return len(tokens)

    def end(self, seq: Seq, reason: FinishReason) -> None:
        self._finalize(seq, reason)
        self.sched.finish(seq)
        self.job.on_choice_done(self)

    def cancel(self) -> None:
        """The job is cancelled: finish as "cancelled" and free the sequence (the job is not told)."""
        if self.seq is not None and self.seq.live:
            self._finalize(self.seq, "cancelled")
            self.sched.finish(self.seq)

    # -- verbs of the thinking policy (strategies/budget.py) ----------------------------------------
    def closes_thinking(self, text: str) -> bool:
        """Would taking ``text`` end the think block?"""
        return self.splitter.closes_with(text)

    @property
    def held_tag(self) -> str:
        """What the model wrote of a close tag so far (held back, not shown)."""
        return self.splitter.held

    def drop_held_tag(self) -> str:
        """Forget the held partial close tag (its tokens are being taken back) and return it."""
        return self.splitter.drop_held()

    def note_prompt_text(self, text: str) -> None:
        """Text the policy placed in the prompt (a closed think block): routed, not generated, not counted."""
        self._route(self.splitter.feed(text))

    def take_back(self, seq: Seq, k: int) -> None:
        """Rewind the last ``k`` decoded reasoning tokens and uncount them (their text is not shown)."""
        self.sched.rewind(seq, k)
        self.completion_tokens -= k
        self.reasoning_tokens -= k

    def put_back(self, seq: Seq, tokens: list[int]) -> None:
        """Re-decode reasoning tokens whose text is already shown; counted as generated again."""
        self.sched.inject(seq, tokens)
        self.completion_tokens += len(tokens)
        self.reasoning_tokens += len(tokens)

    def end_thinking(self, seq: Seq, reason: str, closing: str) -> None:
        """Close the think block now with ``closing`` (forced, counted), saying why it closed."""
        self.thinking_stopped_by = reason
        self.inject_text(seq, closing)

    def _finalize(self, seq: Seq, reason: FinishReason) -> None:
        if self.finished:
            return
        if self.thinking is not None:
            self.thinking.close_probe()
        self.finish_reason = reason
        self._route(self.splitter.feed(self.stops.flush()) + self.splitter.flush())
        if self.splitter.in_reasoning and self.thinking_stopped_by is None:
            self.thinking_stopped_by = "model" if reason == "stop" else "length"

    def _route(self, parts: list[tuple[Channel, str]]) -> None:
        for channel, text in parts:
            (self.reasoning if channel == "reasoning" else self.content).append(text)
            if self.stream:
                chunk = Chunk(channel, text, self.index, self._unstreamed_logprobs())  # type: ignore[arg-type]
                self.job.emit(chunk)

    def _unstreamed_logprobs(self) -> tuple[TokenLogprob, ...]:
        if not self.token_logprobs:
            return ()
        new = tuple(self.token_logprobs[self.logprobs_streamed :])
        self.logprobs_streamed = len(self.token_logprobs)
        return new

    def _record_logprob(self, token: int, lp: TopLogprobs) -> None:
        assert self.token_logprobs is not None
        detok = self.sched.backend.detokenize
        top = tuple((detok([t]), v) for t, v in lp.top[: self.opts.top_logprobs])
        self.token_logprobs.append(TokenLogprob(detok([token]), lp.logprob, top))

    def final_answer(self, fmt: AnswerFormat = "auto") -> Extracted | None:
        """The extracted final answer of the finished output (from the reasoning if there is no content)."""
        return final_answer("".join(self.content), "".join(self.reasoning), fmt)

    def to_choice(self, fmt: AnswerFormat = "auto", found: Extracted | None = None) -> Choice:
        """The finished output as a Choice; pass ``found`` when the caller already extracted it."""
        content, reasoning = "".join(self.content), "".join(self.reasoning)
        if found is None:
            found = final_answer(content, reasoning, fmt)
        signals = {
            "answer_confidence": answer_confidence(self.logprob_texts, self.logprob_values, found),
            "think_answer_mismatch": think_answer_mismatch(content, reasoning, fmt),
        }
        return Choice(
            index=self.index,
            content=content,
            reasoning=reasoning,
            finish_reason=self.finish_reason or "cancelled",
            completion_tokens=self.completion_tokens,
            reasoning_tokens=self.reasoning_tokens,
            answer=found.normalized if found else None,
            thinking_stopped_by=self.thinking_stopped_by,
            logprobs=self.token_logprobs,
            extra={
                **signals,
                **(self.thinking.report() if self.thinking is not None else {}),
                **({"python_tool": self.tool_report()} if self.code_watch is not None else {}),
            },
        )


class GenerateJob(Job):
    """``n`` independent choices in ``n`` slots: the prompt is decoded once, as choice 0's sequence;
    choices 1.. are forked from it when its logits are ready and sample from those same logits, so each
    choice is exactly what a lone request with its seed would give."""

    def __init__(
        self,
        prompt: PreparedPrompt,
        opts: GenerationOptions,
        model: str = "",
        adapters: AdapterSet = (),
        max_sequences: int | None = None,
    ) -> None:
        super().__init__()
        self.prompt, self.opts, self.model = prompt, opts, model
        self.adapters = adapters  # resolved by the engine; forks inherit them
        self.adapters_used = frozenset(name for name, _ in adapters)
        self.slots_needed = opts.n
        if opts.effective_thinking_budget == "auto":
            # One early-exit probe per choice at a time, when the slots allow: a probe is only forked
            # within this reservation (a choice without room simply does not probe).
            wanted = 2 * opts.n
            self.slots_needed = wanted if max_sequences is None else max(opts.n, min(wanted, max_sequences))
        self.decoders: list[ChoiceDecoder] = []
        self.cached_tokens = 0

    def _want_logprobs(self) -> int:
        return self.opts.top_logprobs if (self.opts.logprobs or self.opts.top_logprobs) else -1

    def start(self, sched: Scheduler) -> None:
        self.sched = sched
        if self.opts.answer_grammar is not None:  # a bad grammar or a backend without grammars: fail now
            sched.check_grammar(*self.opts.answer_grammar)
        self.decoders = [
            ChoiceDecoder(self, sched, self.prompt, self.opts, index=i) for i in range(self.opts.n)
        ]
        if self.opts.max_tokens == 0:
            for d in self.decoders:
                d.finish_reason = "length"
            self._complete()
            return
        d = self.decoders[0]
        seq = sched.spawn(
            d,
            self.prompt.tokens,
            sampling_for(self.opts),
            adapters=self.adapters,
            top_logprobs=self._want_logprobs(),
            owner=self,
            reuse=self.opts.cache_prompt,
        )
        self.cached_tokens = seq.n_past  # prompt tokens reused from an earlier request's KV
        if self.opts.n > 1:
            seq.on_logits = self._fork_choices
        d.attach(seq)

    def _fork_choices(self, seq: Seq) -> list[Seq]:
        """The prompt is decoded: choices 1.. fork it (they sample from its logits after choice 0)."""
        lp = self._want_logprobs()
        forks = []
        for i, d in enumerate(self.decoders[1:], start=1):
            fork = self.sched.fork(seq, d, sampling_for(self.opts, i), top_logprobs=lp)
            d.attach(fork, forked=True)
            forks.append(fork)
        return forks

    def on_choice_context_full(self, decoder: ChoiceDecoder) -> None:
        if not any(d.seq is not None for d in self.decoders[1:]):  # the prompt did not fit: no choice starts
            for d in self.decoders:
                d.finish_reason = d.finish_reason or "length"
        self.on_choice_done(decoder)

    def on_choice_done(self, decoder: ChoiceDecoder) -> None:
        if all(d.finished for d in self.decoders):
            self._complete()

    def abort(self, sched: Scheduler) -> None:
        for d in self.decoders:
            d.cancel()
        self._complete()

    def _complete(self) -> None:
        if self.done:
            return
        choices = [d.to_choice() for d in self.decoders]
        usage = Usage.of_choices(len(self.prompt.tokens), choices, self.cached_tokens)
        self.complete(ChatResult(choices=choices, usage=usage, model=self.model))
