"""One scheduler over many sequences: each step decodes every live sequence together.

Strategies (controllers) own sequences and act on their tokens through the scheduler's methods:
spawn, fork, inject, rewind, pause/resume, finish. Everything here runs on the engine thread.
"""

from __future__ import annotations

import codecs
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from .backends.base import (
    AdapterSet,
    Backend,
    BatchItem,
    ContextFullError,
    Sampler,
    SamplingParams,
    TopLogprobs,
)
from .errors import CapacityError

log = logging.getLogger(__name__)

# Changing the adapter set makes llama.cpp re-reserve its compute graph on the next decode (a new
# ggml scheduler and three worst-case graph builds: ~4 ms for SmolLM2-135M, whatever n_ubatch). So
# with several adapter sets live, a set keeps the context for a turn of at least this long (whole
# steps) before the next one: small models decode several steps per switch, large ones switch each step.
ADAPTER_TURN_S = 0.05


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
    adapters: AdapterSet = ()
    top_logprobs: int = -1  # -1: no log-probabilities; k >= 0: chosen token plus top k
    n_past: int = 0  # positions held in the backend
    pending: list[int] = field(default_factory=list)  # to decode next step
    tokens: list[int] = field(default_factory=list)  # everything after the prompt, injected included
    status: Status = Status.ACTIVE
    tag: object = None  # free for the controller
    held: list[int] | None = None  # tokens the backend holds, kept only when it cannot fork
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
        self._free = list(range(self.caps.max_sequences - 1, -1, -1))
        self.seqs: list[Seq] = []
        self.steps = 0
        self.decoded_tokens = 0
        self.adapter_switches = 0
        self.adapter_turn_s = ADAPTER_TURN_S
        self._adapters: AdapterSet | None = None  # the set last given to the backend (None: unknown)
        self._turn_start = 0.0  # when ``_adapters`` got the context (perf_counter)
        self._served: dict[AdapterSet, int] = {}  # adapter set -> last step it decoded

    # -- slots ---------------------------------------------------------------------------------
    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def live_count(self) -> int:
        return len(self.seqs)

    def _alloc(self) -> int:
        if not self._free:
            raise CapacityError(f"all {self.caps.max_sequences} sequence slots are busy")
        return self._free.pop()

    # -- what controllers call -----------------------------------------------------------------
    def spawn(
        self,
        controller: Controller,
        tokens: list[int],
        sampling: SamplingParams | None,
        *,
        adapters: AdapterSet = (),
        top_logprobs: int = -1,
    ) -> Seq:
        """A new sequence that decodes ``tokens`` (a prompt); without sampling it only prefills."""
        seq = Seq(
            slot=self._alloc(),
            controller=controller,
            sampler=self.backend.make_sampler(sampling) if sampling is not None else None,
            adapters=adapters,
            top_logprobs=top_logprobs,
            pending=list(tokens),
            held=None if self.caps.fork and self.caps.rewind else [],
        )
        self.seqs.append(seq)
        return seq

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
        """A new sequence sharing everything ``src`` has decoded; it continues with ``pending``."""
        if src.pending:
            raise RuntimeError("fork of a sequence with undecoded tokens")
        slot = self._alloc()
        n_past, pending = src.n_past, list(pending or [])
        if self.caps.fork:
            self.backend.copy_seq(src.slot, slot)
        else:  # the backend cannot copy state: the new slot decodes what ``src`` holds again
            assert src.held is not None
            n_past, pending = 0, [*src.held, *pending]
        seq = Seq(
            slot=slot,
            controller=controller,
            sampler=self.backend.make_sampler(sampling) if sampling is not None else None,
            adapters=src.adapters if adapters is None else adapters,
            top_logprobs=top_logprobs,
            n_past=n_past,
            pending=pending,
            held=[] if not self.caps.fork else None if src.held is None else list(src.held),
            tokens=list(src.tokens),
        )
        self.seqs.append(seq)
        return seq

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
            if seq.held is not None:
                del seq.held[seq.n_past :]
            if self.caps.rewind:
                self.backend.remove(seq.slot, seq.n_past)
            else:  # recurrent state cannot drop a suffix: clear the slot, decode the kept tokens again
                assert seq.held is not None
                self.backend.remove(seq.slot, 0)
                seq.pending[:0], seq.held, seq.n_past = seq.held, [], 0

    def pause(self, seq: Seq) -> None:
        if seq.status is Status.ACTIVE:
            seq.status = Status.PAUSED

    def resume(self, seq: Seq) -> None:
        if seq.status is Status.PAUSED:
            seq.status = Status.ACTIVE

    def finish(self, seq: Seq) -> None:
        """Free a sequence's slot and sampler at once."""
        if seq.status is Status.DONE:
            return
        seq.status = Status.DONE
        seq.pending.clear()
        self.backend.remove(seq.slot, 0)
        if seq.sampler is not None:
            seq.sampler.close()
        self._free.append(seq.slot)
        self.seqs.remove(seq)

    def text_of(self, seq: Seq, token: int) -> str:
        """Incrementally decoded text of a token (UTF-8 split across tokens is held back)."""
        return seq._utf8.decode(self.backend.token_bytes(token))

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
        self.backend.set_adapters(adapters)  # a no-op when already set (an unload may have reset it)
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
        # many sequences share calls of at most ``mixed_batch_tokens`` (see Capabilities).
        for seq in [s for s in group if len(s.pending) > 1]:
            while seq.live and seq.status is Status.ACTIVE and len(seq.pending) > 1:
                take = seq.pending[: self.caps.n_batch]
                self._run([seq], [take])
        singles = [s for s in group if s.live and s.status is Status.ACTIVE and len(s.pending) == 1]
        cap = max(1, self.caps.mixed_batch_tokens)
        for i in range(0, len(singles), cap):
            chunk = [s for s in singles[i : i + cap] if s.live]
            self._run(chunk, [s.pending[:1] for s in chunk])

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
            victim.controller.on_context_full(victim)
            self.finish(victim)
            rest = [(s, t) for s, t in zip(seqs, takes) if s.live]
            if rest:
                self._run([s for s, _ in rest], [t for _, t in rest])
            return
        for item, seq, handle in zip(items, seqs, handles):
            n = len(item.tokens)
            seq.n_past += n
            del seq.pending[:n]
            self.decoded_tokens += n
            if seq.held is not None:
                seq.held.extend(item.tokens)
            if not seq.live or seq.pending:
                continue
            if handle >= 0 and seq.sampler is not None:
                self._sample(seq, handle)
            elif seq.sampler is None:
                seq.controller.on_ready(seq)

    def _sample(self, seq: Seq, handle: int) -> None:
        assert seq.sampler is not None
        token = self.backend.sample(seq.sampler, handle)
        lp = self.backend.top_logprobs(handle, token, seq.top_logprobs) if seq.top_logprobs >= 0 else None
        seq.tokens.append(token)
        seq.pending.append(token)
        seq.controller.on_token(seq, token, self.text_of(seq, token), lp)

    def cancel_all(self, owner_pred: Callable[[Seq], bool]) -> int:
        """Finish every sequence matching ``owner_pred``; returns how many."""
        victims = [s for s in self.seqs if owner_pred(s)]
        for s in victims:
            self.finish(s)
        return len(victims)
