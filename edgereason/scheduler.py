"""One scheduler over many sequences: each step decodes every live sequence together.

Strategies (controllers) own sequences and act on their tokens through the scheduler's methods:
spawn, fork, inject, rewind, pause/resume, finish. Everything here runs on the engine thread.

Faults belong to one job: every sequence has an ``owner`` (the job it serves), every controller callback
runs under a guard, and an exception in a callback, in sampling, or in a decode call that a sequence
makes alone fails that sequence's job and frees all its sequences (``release``); the other jobs go on.
A decode call that mixes sequences and fails is retried one sequence per call, after dropping whatever
the failed call may have written, so only the sequence at fault fails (exact: every retried sequence
decodes the same tokens at the same positions). Backends that cannot drop a suffix (recurrent state)
cannot retry exactly: there every job with a sequence in the failed call fails.
"""

from __future__ import annotations

import codecs
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Protocol, cast

from .backends.base import (
    AdapterSet,
    Backend,
    BatchItem,
    ContextFullError,
    GrammarBackend,
    Sampler,
    SamplingParams,
    TopLogprobs,
)
from .errors import CapacityError, EdgeReasonError, InvalidRequestError
from .prefix_cache import SlotCache

if TYPE_CHECKING:
    from .job import Job
    from .tools.builtin import ToolRunner

log = logging.getLogger(__name__)

# Changing the adapter set makes llama.cpp re-reserve its compute graph on the next decode (a new
# ggml scheduler and three worst-case graph builds: ~4 ms for SmolLM2-135M, whatever n_ubatch). So
# with several adapter sets live, a set keeps the context for a turn of at least this long (whole
# steps) before the next one: small models decode several steps per switch, large ones switch each step.
ADAPTER_TURN_S = 0.05
# Prompt tokens decoded per step while other sequences stream (chunked prefill; measured in bench peer's
# long-prompt test: see README "Serving core").
DEFAULT_PREFILL_CHUNK = 64  # most prompt tokens one step prefills while other sequences stream
# While others stream, a prompt chunk may take at most this many times the streams' own decode call, so
# their inter-token gap stays within (1 + ratio) x its usual value (measured: see _prefill_limit).
PREFILL_STALL_RATIO = 1.5
MIN_PREFILL_CHUNK = 4
_EMA = 0.2  # weight of the newest timing in the running averages


class Status(str, Enum):
    ACTIVE = "active"
    PAUSED = "paused"
    DONE = "done"


class Controller(Protocol):
    """Receives the events of the sequences it owns."""

    def on_token(self, seq: Seq, token: int, text: str, logprobs: TopLogprobs | None) -> None:
        """A sampled token (already appended to ``seq.tokens`` and queued for decoding)."""
        ...

    def on_ready(self, seq: Seq) -> None:
        """A sequence without a sampler finished decoding its pending tokens (a prefilled prompt)."""
        ...

    def on_context_full(self, seq: Seq) -> None:
        """The memory is full and this sequence must end now (it is finished afterwards)."""
        ...


@dataclass(eq=False)
class Seq:
    slot: int
    controller: Controller
    sampler: Sampler | None
    owner: Job | None = None  # the job this sequence serves (None: driven directly, as in unit tests)
    adapters: AdapterSet = ()
    top_logprobs: int = -1  # -1: no log-probabilities; k >= 0: chosen token plus top k
    n_past: int = 0  # positions held in the backend
    pending: list[int] = field(default_factory=list)  # to decode next step
    tokens: list[int] = field(default_factory=list)  # everything after the prompt, injected included
    status: Status = Status.ACTIVE
    held: list[int] = field(default_factory=list)  # the tokens the backend holds (positions 0..n_past-1)
    cacheable: bool = True  # its KV may stay in the slot for a later prompt to reuse (see prefix_cache)
    # Called once when the pending tokens (a prompt) are decoded, before this sequence samples: it may
    # fork the sequence, and the forks it returns sample from the same logits right after it, so each
    # equals a lone run of the prompt (decoding a prompt's last token in a call of its own changes them).
    on_logits: Callable[[Seq], list[Seq]] | None = None
    _utf8: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace")
    )

    @property
    def live(self) -> bool:
        return self.status is not Status.DONE


class Scheduler:
    """Owns the backend's sequence slots and runs the decode loop."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.caps = backend.capabilities
        # Free slots, and the KV finished sequences left in them for later prompts (not for backends that
        # re-prefill forks: their slots are cleared; recurrent state is reused only when extended).
        self._free = SlotCache(self.caps.max_sequences, trim=self.caps.rewind, enabled=self.caps.fork)
        self._broken: set[int] = set()  # slots whose memory could not be cleared: never handed out again
        self.seqs: list[Seq] = []
        self._owned: dict[Job, int] = {}  # live sequences per owning job
        self.acting: Job | None = None  # the job whose code runs now (owner of what it spawns)
        self.tool_runner: ToolRunner | None = None  # runs the built-in tool's code off this thread (engine)
        self.steps = 0
        self.decoded_tokens = 0
        self.adapter_switches = 0
        self.adapter_turn_s = ADAPTER_TURN_S
        self.prefill_chunk = DEFAULT_PREFILL_CHUNK
        self.prefill_stall_ratio = PREFILL_STALL_RATIO
        self._decode_call_s: float | None = None  # running average: one call of single streaming tokens
        self._prefill_fit: float | None = None  # running estimate: prompt tokens per stall budget
        self.last_progress = time.monotonic()  # when a decode call last returned (the engine's watchdog)
        self._adapters: AdapterSet | None = None  # the set last given to the backend (None: unknown)
        self._turn_start = 0.0  # when ``_adapters`` got the context (perf_counter)
        self._served: dict[AdapterSet, int] = {}  # adapter set -> last step it decoded

    # -- slots ---------------------------------------------------------------------------------
    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def cached_slots(self) -> set[int]:
        """Free slots still holding a finished sequence's KV for later prompts (see prefix_cache)."""
        return self._free.warm

    @property
    def capacity(self) -> int:
        """Slots that can ever be handed out (all of them unless a slot's memory could not be cleared)."""
        return self.caps.max_sequences - len(self._broken)

    @property
    def live_count(self) -> int:
        return len(self.seqs)

    def owned(self, job: Job) -> int:
        """How many live sequences ``job`` owns."""
        return self._owned.get(job, 0)

    def room_for(self, job: Job | None) -> bool:
        """Whether ``job`` may take one more slot now: a slot is free and the job is within the slots it
        reserved (``slots_needed``), so its decisions never depend on what other jobs hold."""
        if not self._free:
            return False
        return job is None or self.owned(job) < job.slots_needed

    def _alloc(
        self, prompt: list[int] | None = None, adapters: AdapterSet = (), reuse: bool = True
    ) -> tuple[int, int]:
        """A free slot and how many tokens of ``prompt`` it already holds; the rest of its memory is cleared."""
        while self._free:
            slot, keep = self._free.take(prompt, adapters, reuse=reuse)
            if self._clear(slot, keep):
                return slot, keep
        raise CapacityError(f"all {self.caps.max_sequences} sequence slots are busy")

    def _add(self, seq: Seq) -> Seq:
        self.seqs.append(seq)
        if seq.owner is not None:
            self._owned[seq.owner] = self._owned.get(seq.owner, 0) + 1
        return seq

    # -- what controllers call -----------------------------------------------------------------
    def spawn(
        self,
        controller: Controller,
        tokens: list[int],
        sampling: SamplingParams | None,
        *,
        adapters: AdapterSet = (),
        top_logprobs: int = -1,
        owner: Job | None = None,
        reuse: bool = True,
    ) -> Seq:
        """A new sequence that decodes ``tokens`` (a prompt); without sampling it only prefills.

        ``owner`` defaults to the job whose code is running (``acting``). The prompt starts from the
        longest prefix a free slot still holds under the same adapters (``n_past`` tells how many tokens
        were reused) unless ``reuse`` is False, which also keeps its KV from being reused later.
        """
        sampler = self.backend.make_sampler(sampling) if sampling is not None else None
        try:
            slot, keep = self._alloc(tokens, adapters, reuse)
        except BaseException:
            _close(sampler)
            raise
        seq = Seq(
            slot=slot,
            controller=controller,
            sampler=sampler,
            owner=owner if owner is not None else self.acting,
            adapters=adapters,
            top_logprobs=top_logprobs,
            n_past=keep,
            pending=list(tokens[keep:]),
            held=list(tokens[:keep]),
            cacheable=reuse,
        )
        return self._add(seq)

    def fork(
        self,
        src: Seq,
        controller: Controller,
        sampling: SamplingParams | None,
        *,
        pending: list[int] | None = None,
        adapters: AdapterSet | None = None,
        top_logprobs: int = -1,
    ) -> Seq:
        """A new sequence sharing everything ``src`` has decoded; it continues with ``pending``.

        The fork belongs to ``src``'s owner. On any failure nothing is left behind (slot, sampler, copy).
        """
        if src.pending:
            raise RuntimeError("fork of a sequence with undecoded tokens")
        sampler = self.backend.make_sampler(sampling) if sampling is not None else None
        try:
            slot, _ = self._alloc()
        except BaseException:
            _close(sampler)
            raise
        n_past, pending = src.n_past, list(pending or [])
        try:
            if self.caps.fork:
                self.backend.copy_seq(src.slot, slot)
            else:  # the backend cannot copy state: the new slot decodes what ``src`` holds again
                n_past, pending = 0, [*src.held, *pending]
        except BaseException:
            _close(sampler)
            self._give_back(slot)
            raise
        seq = Seq(
            slot=slot,
            controller=controller,
            sampler=sampler,
            owner=src.owner,
            adapters=src.adapters if adapters is None else adapters,
            top_logprobs=top_logprobs,
            n_past=n_past,
            pending=pending,
            held=list(src.held) if self.caps.fork else [],
            cacheable=src.cacheable,
            tokens=list(src.tokens),
        )
        return self._add(seq)

    def inject(self, seq: Seq, tokens: list[int]) -> None:
        """Append forced tokens (budget wrap-up, "Wait", trial-answer prefixes) to a sequence."""
        seq.tokens.extend(tokens)
        seq.pending.extend(tokens)

    def rewind(self, seq: Seq, n: int) -> None:
        """Drop the last ``n`` tokens of a sequence, decoded or not."""
        if n <= 0:
            return
        n = min(n, len(seq.tokens))
        del seq.tokens[len(seq.tokens) - n :]
        undecoded = min(n, len(seq.pending))
        del seq.pending[len(seq.pending) - undecoded :]
        decoded = n - undecoded
        if decoded:
            seq.n_past -= decoded
            del seq.held[seq.n_past :]
            if self.caps.rewind:
                self.backend.remove(seq.slot, seq.n_past)
            else:  # recurrent state cannot drop a suffix: clear the slot, decode the kept tokens again
                self.backend.remove(seq.slot, 0)
                seq.pending[:0], seq.held, seq.n_past = seq.held, [], 0

    def check_grammar(self, grammar: str, root: str) -> None:
        """InvalidRequestError unless this backend can constrain sampling with ``grammar`` (a job checks
        at its start, so a bad grammar or a backend without grammars fails the request before decoding)."""
        self._grammar_backend().check_grammar(grammar, root)

    def constrain(self, seq: Seq, grammar: str | None, root: str = "root") -> None:
        """From its next sampled token on, ``seq`` samples only what a fresh ``grammar`` accepts (None:
        anything). A strategy calls it when the answer begins: after thinking, or at once without it."""
        if seq.sampler is None:
            raise RuntimeError("constrain of a sequence without a sampler")
        self._grammar_backend().set_grammar(seq.sampler, grammar, root)

    def _grammar_backend(self) -> GrammarBackend:
        if not self.caps.grammar:
            fmt = self.backend.info.format
            raise InvalidRequestError(
                f"the {fmt} backend cannot constrain output (grammar, response_format, forced tool calls); "
                "use a GGUF model (llama.cpp backend) or drop the constraint",
                param="grammar",
            )
        return cast("GrammarBackend", self.backend)

    def pause(self, seq: Seq) -> None:
        if seq.status is Status.ACTIVE:
            seq.status = Status.PAUSED

    def resume(self, seq: Seq) -> None:
        if seq.status is Status.PAUSED:
            seq.status = Status.ACTIVE

    def finish(self, seq: Seq) -> None:
        """Free a sequence's slot and sampler at once (whatever else fails)."""
        if seq.status is Status.DONE:
            return
        seq.status = Status.DONE
        seq.pending.clear()
        self.seqs.remove(seq)
        if seq.owner is not None:
            left = self._owned.get(seq.owner, 0) - 1
            if left > 0:
                self._owned[seq.owner] = left
            else:
                self._owned.pop(seq.owner, None)
        try:
            _close(seq.sampler)
        finally:
            if seq.cacheable and seq.held and len(seq.held) == seq.n_past:
                self._free.release(seq.slot, seq.held, seq.adapters)  # its KV stays for a later prompt
            else:
                self._give_back(seq.slot)

    def _give_back(self, slot: int) -> None:
        """Clear a slot's memory and return it to the free list (quarantined if clearing fails)."""
        if self._clear(slot, 0):
            self._free.release(slot, None)

    def _clear(self, slot: int, from_pos: int) -> bool:
        """Drop a slot's positions ``>= from_pos``; a slot that cannot be cleared leaves service (False)."""
        try:
            self.backend.remove(slot, from_pos)
        except Exception:
            log.exception("could not clear sequence slot %d; it is taken out of service", slot)
            self._broken.add(slot)
            return False
        return True

    def release(self, job: Job) -> int:
        """Free every sequence ``job`` owns, whatever the job's state; returns how many."""
        victims = [s for s in self.seqs if s.owner is job]
        for s in victims:
            try:
                self.finish(s)
            except Exception:  # noqa: BLE001 - the slot is accounted for by finish; go on with the rest
                log.exception("freeing a sequence failed")
        return len(victims)

    def text_of(self, seq: Seq, token: int) -> str:
        """Incrementally decoded text of a token (UTF-8 split across tokens is held back)."""
        return seq._utf8.decode(self.backend.token_bytes(token))

    # -- faults --------------------------------------------------------------------------------
    def guarded(self, owner: Job | None, fn: Callable[..., object], *args: object) -> bool:
        """Run ``fn(*args)`` as ``owner``: an exception fails that job alone. False if it raised.

        Without an owner (sequences driven directly) the exception propagates.
        """
        prev, self.acting = self.acting, owner
        try:
            fn(*args)
            return True
        except Exception as exc:
            if owner is None:
                raise
            self.fault(owner, exc)
            return False
        finally:
            self.acting = prev

    def fault(self, job: Job, exc: BaseException) -> None:
        """``job`` failed with ``exc``: it gets the error (unless it already finished) and loses its sequences."""
        if isinstance(exc, EdgeReasonError):
            log.warning("request failed: %s", exc)
        else:
            log.error("request failed: %r", exc, exc_info=exc)
        for seq in self.seqs:  # what a failed job's sequences hold may be half-written: never reuse it
            if seq.owner is job:
                seq.cacheable = False
        if not job.done:
            job.fail(exc)
        self.release(job)

    def _fault_seq(self, seq: Seq, exc: BaseException) -> None:
        if seq.owner is None:
            raise exc
        self.fault(seq.owner, exc)

    # -- the loop ------------------------------------------------------------------------------
    def step(self) -> bool:
        """Decode one step for the active sequences with pending tokens. False if idle.

        Sequences are grouped by adapter set. With several sets live, one group decodes per step, for
        steps in a row until its turn (``adapter_turn_s``) is over; then the group that waited longest.
        """
        groups: dict[AdapterSet, list[Seq]] = {}
        for s in self.seqs:
            if s.status is Status.ACTIVE and s.pending:
                groups.setdefault(s.adapters, []).append(s)
        if not groups:
            return False
        adapters = self._pick_group(groups)
        try:
            self.backend.set_adapters(adapters)  # a no-op when already set (an unload may have reset it)
        except Exception as exc:  # the group's jobs cannot decode
            self._adapters = None
            for seq in groups[adapters]:
                if seq.live:
                    self._fault_seq(seq, exc)
            self.steps += 1
            return True
        if adapters != self._adapters:
            self._adapters, self._turn_start = adapters, time.perf_counter()
            self.adapter_switches += 1
        self._decode_group(groups[adapters])
        self._served = {a: s for a, s in self._served.items() if a in groups}
        self._served[adapters] = self.steps
        self.steps += 1
        return True

    def _pick_group(self, groups: dict[AdapterSet, list[Seq]]) -> AdapterSet:
        """The adapter set to decode this step: the active one until its turn is up, else the longest waiting."""
        current = self._adapters
        in_turn = time.perf_counter() - self._turn_start < self.adapter_turn_s
        if current in groups and (len(groups) == 1 or in_turn):
            return current
        waiting = [a for a in groups if a != current]  # not empty: the current turn is over
        return min(waiting, key=lambda a: self._served.get(a, -1))

    def _decode_group(self, group: list[Seq]) -> None:
        # Multi-token work (prompts, injected text) is decoded one sequence per call; single tokens of
        # many sequences share calls of at most ``mixed_batch_tokens`` (see Capabilities). While other
        # sequences stream, a prompt advances one chunk of ``prefill_chunk`` tokens per step (chunked
        # prefill: no prompt freezes the streams); alone, it is decoded in calls of ``n_batch``.
        # Only other jobs' streams count: the chunk is sized by measured call times, and a request alone
        # (its own samples re-prefilled beside its first, on backends that cannot fork) must decode in
        # the same calls every time, so a seeded request gives the same samples in the same order.
        streams = [s.owner for s in group if s.status is Status.ACTIVE and len(s.pending) == 1]
        for seq in [s for s in group if len(s.pending) > 1]:
            streaming = any(o is None or o is not seq.owner for o in streams)
            while seq.live and seq.status is Status.ACTIVE and len(seq.pending) > 1:
                limit = self._prefill_limit() if streaming else self.caps.n_batch
                take = _chunk(len(seq.pending), limit, self.caps.n_batch)
                t0 = time.perf_counter()
                self._run([seq], [seq.pending[:take]])
                self._measure_prefill(take, time.perf_counter() - t0)
                if streaming:
                    break
        singles = [s for s in group if s.live and s.status is Status.ACTIVE and len(s.pending) == 1]
        cap = max(1, self.caps.mixed_batch_tokens)
        for i in range(0, len(singles), cap):
            chunk = [s for s in singles[i : i + cap] if s.live and s.status is Status.ACTIVE and s.pending]
            if chunk:
                t0 = time.perf_counter()
                self._run(chunk, [s.pending[:1] for s in chunk])
                self._decode_call_s = _average(self._decode_call_s, time.perf_counter() - t0)

    def _prefill_limit(self) -> int:
        """Prompt tokens one step may prefill while other sequences stream.

        Sized so that a chunk takes about ``prefill_stall_ratio`` times the streams' decode call: every
        streamed token then waits at most (1 + ratio) x its usual gap, whatever the model or machine (a
        fixed chunk of 64 tokens took ~6x a decode call on SmolLM2-135M and 2 cores). Capped by
        ``prefill_chunk``; at least MIN_PREFILL_CHUNK tokens, so a prompt always advances."""
        cap = min(self.prefill_chunk, self.caps.n_batch)
        if self._prefill_fit is None:
            return cap
        return max(MIN_PREFILL_CHUNK, min(cap, round(self._prefill_fit)))

    def _measure_prefill(self, tokens: int, seconds: float) -> None:
        """A proportional step towards the chunk that takes the stall budget: ``tokens`` took ``seconds``,
        so the budget fits about tokens x budget / seconds (exact for a cost linear in the tokens at the
        fixed point; the running average smooths timing noise)."""
        if self._decode_call_s is None or seconds <= 0:
            return
        fit = tokens * self.prefill_stall_ratio * self._decode_call_s / seconds
        fit = min(max(fit, MIN_PREFILL_CHUNK), float(self.caps.n_batch))
        self._prefill_fit = _average(self._prefill_fit, fit)

    def _run(self, seqs: list[Seq], takes: list[list[int]]) -> None:
        """One decode call; then sample every sequence whose pending tokens are all decoded."""
        items = [
            BatchItem(s.slot, s.n_past, t, want_logits=len(t) == len(s.pending) and s.sampler is not None)
            for s, t in zip(seqs, takes)
        ]
        try:
            handles = self.backend.decode(items)
        except ContextFullError:
            victim = max(seqs, key=lambda s: s.n_past + len(s.pending))
            log.warning("context full: ending sequence in slot %d (%d tokens)", victim.slot, victim.n_past)
            self.guarded(victim.owner, victim.controller.on_context_full, victim)
            if victim.live:
                self.finish(victim)
            rest = _retakes(seqs, takes)
            if rest:
                self._run([s for s, _ in rest], [t for _, t in rest])
            return
        except Exception as exc:
            self._decode_failed(seqs, takes, exc)
            return
        self.last_progress = time.monotonic()
        for item, seq, handle in zip(items, seqs, handles):
            n = len(item.tokens)
            seq.n_past += n
            del seq.pending[:n]
            self.decoded_tokens += n
            seq.held.extend(item.tokens)
            if not seq.live or seq.pending:
                continue
            if handle >= 0 and seq.sampler is not None:
                for s in self._forks_at_logits(seq):
                    if s.live:
                        self.sample_from(s, handle)
            elif seq.sampler is None:
                self.guarded(seq.owner, seq.controller.on_ready, seq)

    def _forks_at_logits(self, seq: Seq) -> list[Seq]:
        """``seq`` and the forks its ``on_logits`` hook made (none if the hook failed its job)."""
        hook, seq.on_logits = seq.on_logits, None
        if hook is None:
            return [seq]
        forks: list[Seq] = []
        if not self.guarded(seq.owner, lambda: forks.extend(hook(seq))):
            return []
        return [seq, *forks]

    def _decode_failed(self, seqs: list[Seq], takes: list[list[int]], exc: Exception) -> None:
        """A decode call raised: find the sequence at fault (see the module docstring)."""
        if len(seqs) == 1:
            self._fault_seq(seqs[0], exc)
            return
        if not self.caps.rewind:
            for seq in seqs:
                if seq.live:
                    self._fault_seq(seq, exc)
            return
        log.warning("a decode call of %d sequences failed (%r); retrying them one by one", len(seqs), exc)
        for seq, take in zip(seqs, takes):
            if not seq.live or seq.status is not Status.ACTIVE or not seq.pending:
                continue  # a callback of an earlier retry changed it: the next step decodes it
            take = seq.pending[: len(take)]
            try:  # the failed call may have written some of its cells
                self.backend.remove(seq.slot, seq.n_past)
            except Exception as err:  # noqa: BLE001 - this sequence cannot be retried exactly
                self._fault_seq(seq, err)
                continue
            self._run([seq], [take])

    def sample_from(self, seq: Seq, handle: int) -> None:
        """Sample ``seq``'s next token from decode output ``handle`` and hand it to its controller."""
        assert seq.sampler is not None
        try:
            token = self.backend.sample(seq.sampler, handle)
            lp = self.backend.top_logprobs(handle, token, seq.top_logprobs) if seq.top_logprobs >= 0 else None
            text = self.text_of(seq, token)
        except Exception as exc:  # sampling faults belong to the sequence's job
            self._fault_seq(seq, exc)
            return
        seq.tokens.append(token)
        seq.pending.append(token)
        self.guarded(seq.owner, seq.controller.on_token, seq, token, text, lp)


def _retakes(seqs: list[Seq], takes: list[list[int]]) -> list[tuple[Seq, list[int]]]:
    """What is left to decode of a failed call's items, as the sequences stand now."""
    return [
        (s, s.pending[: len(t)])
        for s, t in zip(seqs, takes)
        if s.live and s.status is Status.ACTIVE and s.pending
    ]


def _average(current: float | None, sample: float) -> float:
    return sample if current is None else (1 - _EMA) * current + _EMA * sample


def _chunk(pending: int, limit: int, n_batch: int) -> int:
    """How many of ``pending`` (> 1) tokens the next call takes: about ``limit``, and no call of a prompt
    holds a lone token (one token takes another kernel path on llama.cpp and changes the results; see
    prefix_cache), so a prompt split into chunks decodes exactly as in one call."""
    take = min(pending, max(limit, 2))
    if pending - take == 1:
        take = take + 1 if take < n_batch else take - 1
    return take


def _close(sampler: Sampler | None) -> None:
    if sampler is not None:
        sampler.close()
