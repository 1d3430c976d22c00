"""A request in flight: the engine thread drives it, the caller reads its events."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .chat.reasoning import PromptPlan
from .result import ChatResult, Chunk

if TYPE_CHECKING:
    from .scheduler import Scheduler


@dataclass(frozen=True)
class PreparedPrompt:
    plan: PromptPlan
    tokens: list[int]


class _Done:
    __slots__ = ("result",)

    def __init__(self, result: ChatResult) -> None:
        self.result = result


class Job:
    """Base of every strategy: sequences on the engine side, an event queue on the caller side."""

    slots_needed = 1
    adapters_used: frozenset[str] = frozenset()  # LoRA adapters its sequences decode with

    def __init__(self) -> None:
        self.emit_chunks = True  # False when the caller only wants the result (no per-token queue traffic)
        self.events: queue.Queue[Chunk | _Done | BaseException] = queue.Queue()
        self.cancel_requested = threading.Event()
        self.done = False
        # Set by ``ChatStream.deliver_to``: events go straight to the caller (e.g. its asyncio loop) instead
        # of the queue, so no thread has to wake per token just to hand a chunk on.
        self._sink: Callable[[Chunk | _Done | BaseException], None] | None = None
        self._sink_lock = threading.Lock()

    # engine thread -------------------------------------------------------------------------------
    def start(self, sched: Scheduler) -> None:
        raise NotImplementedError

    def abort(self, sched: Scheduler) -> None:
        """Cancel: free every sequence this job owns and finish with what it has."""
        raise NotImplementedError

    # what its choices' decoders tell it (engine thread; ``decoder`` is a strategies.generate.ChoiceDecoder)
    def on_choice_done(self, decoder: Any) -> None:
        """A choice finished (stop, length or cancelled)."""

    def on_choice_context_full(self, decoder: Any) -> None:
        """A choice ran out of context (it has finished as "length")."""
        self.on_choice_done(decoder)

    def on_choice_token(self, decoder: Any) -> None:
        """A choice took a token (a job with a deadline checks it here)."""

    def emit(self, chunk: Chunk) -> None:
        if self.emit_chunks:
            self._put(chunk)

    def complete(self, result: ChatResult) -> None:
        self.done = True
        self._put(_Done(result))

    def fail(self, exc: BaseException) -> None:
        self.done = True
        self._put(exc)

    def _put(self, item: Chunk | _Done | BaseException) -> None:
        with self._sink_lock:
            if self._sink is None:
                self.events.put(item)
                return
            sink = self._sink
        sink(item)  # outside the lock: a sink never blocks, but it may take the GIL's turn

    # caller thread -------------------------------------------------------------------------------
    def cancel(self) -> None:
        self.cancel_requested.set()


class ChatStream:
    """Iterate to receive chunks; ``result`` holds the full result once iteration ends.

    Leaving the iteration early (break, exception, garbage collection) cancels the request in the
    engine, which frees its sequences within one step. Subclasses reshape what the engine sends by
    overriding ``_on_chunk`` and ``_on_result`` (both run on the consumer's side).
    """

    def __init__(self, job: Job, wake: threading.Event | None = None) -> None:
        self._job = job
        self._wake = wake
        self.result: ChatResult | None = None

    def __iter__(self) -> Iterator[Chunk]:
        try:
            while self.result is None:
                yield from self.handle(self._job.events.get())
        finally:
            if self.result is None:
                self.cancel()

    def handle(self, event: object) -> list[Chunk]:
        """The chunks one engine event yields (sets ``result`` at the end; raises the request's error)."""
        if isinstance(event, _Done):
            tail, self.result = self._on_result(event.result)
            return tail
        if isinstance(event, BaseException):
            raise event
        assert isinstance(event, Chunk)
        return self._on_chunk(event)

    def _on_chunk(self, chunk: Chunk) -> list[Chunk]:
        return [chunk]

    def _on_result(self, result: ChatResult) -> tuple[list[Chunk], ChatResult]:
        return [], result

    def cancel(self) -> None:
        self._job.cancel()
        if self._wake is not None:
            self._wake.set()

    def deliver_to(self, sink: Callable[[object], None]) -> None:
        """Hand every engine event to ``sink`` (called on the engine thread; it must not block) instead of
        queueing it for iteration; the consumer passes each to ``handle``. Events already queued are
        handed over first, in order."""
        job = self._job
        with job._sink_lock:
            while True:
                try:
                    sink(job.events.get_nowait())
                except queue.Empty:
                    break
            job._sink = sink

    def wait(self) -> ChatResult:
        """Drain the stream and return the result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result
