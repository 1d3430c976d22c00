"""A request in flight: the engine thread drives it, the caller reads its events."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

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

    # engine thread -------------------------------------------------------------------------------
    def start(self, sched: Scheduler) -> None:
        raise NotImplementedError

    def abort(self, sched: Scheduler) -> None:
        """Cancel: free every sequence this job owns and finish with what it has."""
        raise NotImplementedError

    def emit(self, chunk: Chunk) -> None:
        if self.emit_chunks:
            self.events.put(chunk)

    def complete(self, result: ChatResult) -> None:
        self.done = True
        self.events.put(_Done(result))

    def fail(self, exc: BaseException) -> None:
        self.done = True
        self.events.put(exc)

    # caller thread -------------------------------------------------------------------------------
    def cancel(self) -> None:
        self.cancel_requested.set()


class ChatStream:
    """Iterate to receive chunks; ``result`` holds the full result once iteration ends.

    Leaving the iteration early (break, exception, garbage collection) cancels the request in the
    engine, which frees its sequences within one step.
    """

    def __init__(self, job: Job, wake: threading.Event | None = None) -> None:
        self._job = job
        self._wake = wake
        self.result: ChatResult | None = None

    def __iter__(self) -> Iterator[Chunk]:
        try:
            while True:
                item = self._job.events.get()
                if isinstance(item, _Done):
                    self.result = item.result
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if self.result is None:
                self.cancel()

    def cancel(self) -> None:
        self._job.cancel()
        if self._wake is not None:
            self._wake.set()

    def wait(self) -> ChatResult:
        """Drain the stream and return the result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result
