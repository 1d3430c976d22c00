"""Per-token thinking controls on any OpenAI-compatible server with ``/v1/completions``.

``thinking_budget="auto"`` (DEER), ``min_thinking`` and the loop guard steer every token. Locally the
``ThinkingController`` does it through the scheduler; here the same decisions (``ThinkingPolicy``) are
applied to a streamed continuation of the locally rendered prompt:

- the main completion streams token by token; each reasoning token is shown to the policy before it is
  taken, as the local controller sees each sampled token;
- a token that starts a transition marker stops the stream (the connection is closed) and a trial answer
  is probed with a separate short greedy ``/v1/completions`` request on the prompt so far plus the trial
  prefix (the server's prefix cache makes it cheap). Confident: thinking is closed and the answer goes on;
  not: the marker token is taken and the main completion continues in a new request;
- a close tag (or the end of generation) before ``min_thinking`` is replaced by "Wait" and continued;
- the loop guard, fed every reasoning token, closes thinking (with the wrap-up) once it fires;
- the cap (``auto_budget_cap`` or an integer budget) limits each request's ``max_tokens``.

Tokens a server decodes after a stream is closed are not received and not counted; a marker token the
server wrote is re-sent as text, so the server re-tokenizes it (the same text, rarely other tokens).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..chat.reasoning import CLOSE_TAG, ChannelSplitter, PromptPlan, State
from ..options import GenerationOptions
from ..result import Chunk, FinishReason, TokenLogprob
from ..strategies.budget import CLOSE_TEXT, WAIT_TEXT, ThinkingPolicy
from ..strategies.generate import StopMatcher
from .http import RemoteOutput, completion_logprobs, finish_reason

if TYPE_CHECKING:
    from .engine import RemoteEngine

MAX_STEERED_REQUESTS = 64  # main-completion requests per choice (each probe, wait or close starts one)


@dataclass
class _Piece:
    text: str
    logprob: TokenLogprob | None  # the token's log-prob entry, when the server sent one


@dataclass
class _Stop:
    """Why the main stream was left before its end: the token that triggered it (not taken yet)."""

    why: str  # probe | wait | loop
    piece: _Piece | None = None


class SteeredChoice:
    """One choice: the prompt so far, the output, the policy; ``run`` drives requests until it ends."""

    def __init__(
        self,
        eng: RemoteEngine,
        plan: PromptPlan,
        opts: GenerationOptions,
        model: str,
        *,
        index: int,
        emit: Callable[[Chunk], None] | None,
        sampling: dict[str, Any],
        top_logprobs: int,
    ) -> None:
        self.eng, self.opts, self.model, self.index, self.emit = eng, opts, model, index, emit
        self.sampling, self.top_logprobs = sampling, top_logprobs
        self.policy = ThinkingPolicy(opts, plan.reasoning_format)
        self.out = RemoteOutput()
        self.splitter = ChannelSplitter(starts_in_reasoning=plan.starts_in_reasoning, may_open=plan.may_open)
        self.stops = StopMatcher(opts.stop)
        self.prompt = self.plan_text = plan.text
        self.first_request = True
        self.wrap_len = self._count(self.policy.wrap_text) if self.policy.wrap_text else 0
        self.wait_len = self._count(WAIT_TEXT)
        self.finished = False
        self.probe_wall_s = 0.0  # time spent in probe requests (the server's prefix cache keeps it short)
        self.probe_prefill: int | None = (
            None  # prompt tokens the server decoded for them (llama-server's timings)
        )

    def _count(self, text: str) -> int:
        return self.eng.client.count_tokens(self.eng.model, text)

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> RemoteOutput:
        for _ in range(MAX_STEERED_REQUESTS):
            if self.finished:
                break
            left = None if self.opts.max_tokens is None else self.opts.max_tokens - self.out.completion_tokens
            if left is not None and left <= 0:
                self.out.finish_reason = "length"
                break
            thinking = self.splitter.state is not State.CONTENT
            if self.splitter.in_reasoning and self.policy.over_cap(self.out.reasoning_tokens, self.wrap_len):
                self._close("budget", wrap=True)
                continue
            limit = left
            if thinking and self.policy.budget is not None:
                cap = self.policy.budget - self.policy.reserve(self.wrap_len) - self.out.reasoning_tokens
                limit = cap if limit is None else min(limit, cap)
            stop, finish = self._stream(limit)
            if self.first_request and not self.out.prompt_tokens:  # left before the usage event
                self.out.prompt_tokens = self.eng.client.prompt_count(self.eng.model, self.plan_text)
            self.first_request = False
            if stop is not None:
                self._act(stop)
                continue
            ended_thinking = finish == "stop" and self.splitter.in_reasoning and not self.finished
            if ended_thinking and self.policy.wants_wait(self.out.reasoning_tokens, self.wait_len):
                self._wait("")  # the end of generation inside the think block, before min_thinking
                continue
            if finish == "length" and self.splitter.in_reasoning and limit != left:
                continue  # the cap's request ended: the next round closes thinking
            self.out.finish_reason = finish
            break
        self.out.add(self.splitter.feed(self.stops.flush()) + self.splitter.flush(), self.emit, self.index)
        if self.splitter.in_reasoning and self.out.thinking_stopped_by is None:
            self.out.thinking_stopped_by = "model" if self.out.finish_reason == "stop" else "length"
        # probe_tokens in the report: usage adds them to the choice's own tokens (as local)
        self.out.extra.update(self.policy.report())
        if self.policy.probes:
            self.out.extra["early_exit_probe_wall_s"] = round(self.probe_wall_s, 4)
            if self.probe_prefill is not None:
                self.out.extra["early_exit_probe_prefill_tokens"] = self.probe_prefill
        return self.out

    def _stream(self, limit: int | None) -> tuple[_Stop | None, FinishReason]:
        """One streamed request of the main completion; a _Stop when the policy left it early."""
        body = self.eng.body(self.opts, self.model, **self.sampling)
        body.pop("max_tokens", None)
        if limit is not None:
            body["max_tokens"] = limit
        body.update(
            prompt=self.prompt,
            stream=True,
            stream_options={"include_usage": True},
            logprobs=self.eng.top_logprobs(self.top_logprobs),
        )
        cancelled = threading.Event()
        events = self.eng.client.stream("/completions", body, cancelled)
        finish: FinishReason = "length"
        try:
            for event in events:
                if self.first_request and isinstance(event.get("usage"), dict):
                    self.out.prompt_tokens = int(event["usage"].get("prompt_tokens") or 0)
                for ch in event.get("choices") or ():
                    for piece in _pieces(ch):
                        stop = self._take(piece)
                        if stop is not None:
                            return stop, finish
                        if self.finished:
                            return None, "stop"
                    if ch.get("finish_reason"):
                        finish = finish_reason(ch["finish_reason"])
        finally:
            cancelled.set()
            events.close()  # leaving early closes the connection: the server stops decoding
        return None, finish

    def _take(self, piece: _Piece) -> _Stop | None:
        """The policy sees a token before it is taken (as the local controller sees each sampled token)."""
        if self.splitter.in_reasoning:
            if self.splitter.closes_with(piece.text):
                if self.policy.wants_wait(self.out.reasoning_tokens, self.wait_len):
                    return _Stop("wait", piece)
            elif self.policy.over_cap(self.out.reasoning_tokens, self.wrap_len):
                return _Stop("cap", piece)
            elif self.policy.wants_probe(self.out.reasoning_tokens, piece.text, self.wrap_len):
                self.policy.saw(piece.text)
                return _Stop("probe", piece)
            self.policy.saw(piece.text)
        self._route(piece)
        if self.splitter.in_reasoning and self.policy.loops(_token_key(piece.text), piece.text):
            return _Stop("loop")
        return None

    def _route(self, piece: _Piece) -> None:
        """Take a token the model sampled: text, counts and its log-prob (DeepConf confidence, logprobs)."""
        was, text = self.splitter.in_reasoning, piece.text
        safe, stopped = self.stops.feed(text)
        self.out.add(self.splitter.feed(safe), self.emit, self.index)
        if piece.logprob is not None:
            self.out.add_logprobs([piece.logprob])
        self.out.completion_tokens += 1
        if was and self.splitter.in_reasoning:
            self.out.reasoning_tokens += 1
        if was and not self.splitter.in_reasoning and self.out.thinking_stopped_by is None:
            self.out.thinking_stopped_by = "model"
        self.prompt += text
        if stopped:
            self.out.finish_reason = "stop"
            self.finished = True

    # -- actions -------------------------------------------------------------------------------------
    def _act(self, stop: _Stop) -> None:
        if stop.why == "cap":
            self._close("budget", wrap=True)
        elif stop.why == "loop":
            self._close("loop_guard", wrap=True)
        elif stop.why == "wait":
            assert stop.piece is not None
            held = self.splitter.drop_held()
            if held:  # the tokens of a partial close tag were taken: take them back (text and counts)
                self.prompt = self.prompt[: len(self.prompt) - len(held)]
                n = self._count(held)
                self.out.completion_tokens -= n
                self.out.reasoning_tokens -= n
            whole = held + stop.piece.text
            self._wait(whole[: whole.find(CLOSE_TAG)])
        else:
            assert stop.piece is not None
            self._probe(stop.piece)

    def _wait(self, keep: str) -> None:
        """s1: the model's end of thinking is dropped and "Wait" continues it (counted as reasoning)."""
        self.policy.waits += 1
        text = keep + WAIT_TEXT
        self._inject(text, self._count(text))

    def _inject(self, text: str, n_tokens: int) -> None:
        """Forced text, counted as generated (as the local decoder's injected tokens)."""
        was = self.splitter.in_reasoning
        self.out.add(self.splitter.feed(text), self.emit, self.index)
        self.out.completion_tokens += n_tokens
        if was:
            self.out.reasoning_tokens += n_tokens
        self.prompt += text

    def _close(self, reason: str, *, wrap: bool) -> None:
        wrap_len = self.wrap_len if wrap else 0
        self.prompt += close_thinking(
            self.eng, self.out, self.splitter, self.policy, wrap_len, self.emit, self.index, reason
        )

    def _probe(self, marker: _Piece) -> None:
        """A trial answer on the prompt so far (the marker withheld): greedy, short, its own request."""
        policy = self.policy
        assert policy.prefix is not None
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": self.prompt + policy.prefix,
            "max_tokens": self.opts.early_exit_probe_tokens,
            "temperature": 0.0,
            "logprobs": self.eng.top_logprobs(1),
            "stop": ["}"] if policy.probe_stops_at_brace else ["\n"],
        }
        t0 = time.perf_counter()
        resp = self.eng.client.post("/completions", body)
        self.probe_wall_s += time.perf_counter() - t0
        timings = resp.get("timings")
        if isinstance(timings, dict) and isinstance(timings.get("prompt_n"), int):
            self.probe_prefill = (self.probe_prefill or 0) + timings["prompt_n"]
        ch = (resp.get("choices") or [{}])[0]
        entries = completion_logprobs(ch.get("logprobs"), finish_reason(ch.get("finish_reason")))
        text = ch.get("text") or "".join(e.token for e in entries)
        sampled = int((resp.get("usage") or {}).get("completion_tokens") or len(entries))
        policy.probe_tokens += self._count(policy.prefix) + sampled
        failed = not entries and not text
        if policy.probed(self.out.reasoning_tokens, [e.logprob for e in entries], text, failed=failed):
            self._close("early_exit", wrap=False)
            if self.opts.early_exit_answer == "trial":
                answer = policy.trial_answer_text(text.strip())
                n = self._count(answer)
                if self.opts.max_tokens is None or self.out.completion_tokens + n <= self.opts.max_tokens:
                    self._inject(answer, n)
                    self.out.finish_reason = "stop"
                    self.finished = True
            return
        self._route(marker)  # exactly the text the model sampled; the main completion goes on


def _pieces(ch: dict[str, Any]) -> list[_Piece]:
    """A streamed event's tokens: one per log-prob entry when given, else its text as one piece."""
    entries = completion_logprobs(ch.get("logprobs"))
    text = ch.get("text") or ""
    if entries and "".join(e.token for e in entries) == text:
        return [_Piece(e.token, e) for e in entries if e.token]
    return [_Piece(text, None)] if text else []


def _token_key(text: str) -> int:
    """The loop guard's token identity from a token's text (the server's ids are not sent)."""
    return hash(text)


def close_thinking(
    eng: RemoteEngine,
    out: RemoteOutput,
    splitter: ChannelSplitter,
    policy: ThinkingPolicy,
    wrap_len: int,
    emit: Callable[[Chunk], None] | None,
    index: int,
    reason: str,
) -> str:
    """End thinking now: the wrap-up line (``wrap_len`` tokens, when it fits; 0: none) and the rest of the
    close tag, counted as the local controller counts them. Returns the text to append to the prompt."""
    added = ""
    if policy.wrap_fits(out.reasoning_tokens, wrap_len):
        added = policy.wrap_text
        out.add(splitter.feed(added), emit, index)
        out.completion_tokens += wrap_len
        out.reasoning_tokens += wrap_len
    held = splitter.held
    closing = CLOSE_TAG[len(held) :] + "\n\n" if held else CLOSE_TEXT
    out.add(splitter.feed(closing), emit, index)
    out.completion_tokens += eng.client.count_tokens(eng.model, closing)
    out.thinking_stopped_by = reason
    return added + closing


def steered(opts: GenerationOptions) -> bool:
    """Thinking controls that act on every token (probes, rewinds, the loop guard)."""
    return opts.effective_thinking_budget == "auto" or bool(opts.min_thinking) or bool(opts.loop_guard)
