"""The generation calls users make (``chat``, ``stream``, ``complete``, ``stream_completion``, their
asyncio forms ``achat``/``astream``/``acomplete``, and ``chat_many``) and the context-manager protocol,
shared by the local :class:`~edgereason.engine.Engine` and the :class:`~edgereason.remote.RemoteEngine`:
each implements the two ``_submit_*`` methods.

:class:`ChatEngine` is what the CLI, the app and eval type against (either engine);
:class:`ServedEngine` adds what ``edgereason serve`` reads of a local engine (tokenizer, gauges)."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from .backends.base import Capabilities, ModelInfo, Tokenizer
from .chat.reasoning import ReasoningFormat
from .errors import CapacityError
from .job import ChatStream
from .options import GenerationOptions
from .result import ChatResult, Chunk

_S = TypeVar("_S", bound="ChatSurface")
_E = TypeVar("_E", bound="ChatEngine")


class ChatSurface(ABC):
    """``fields`` override ``options`` in every call (see GenerationOptions)."""

    def chat(
        self, messages: Sequence[Any], options: GenerationOptions | None = None, **fields: Any
    ) -> ChatResult:
        """Generate a reply to ``messages``."""
        return self._submit_chat(messages, options, fields, emit_chunks=False).wait()

    def stream(
        self, messages: Sequence[Any], options: GenerationOptions | None = None, **fields: Any
    ) -> ChatStream:
        """Like ``chat`` but yields ``Chunk``s (channel "reasoning" | "content") as they are produced."""
        return self._submit_chat(messages, options, fields, emit_chunks=True)

    def complete(self, prompt: str, options: GenerationOptions | None = None, **fields: Any) -> ChatResult:
        """Continue a raw prompt (no chat template)."""
        return self._submit_completion(prompt, options, fields, emit_chunks=False).wait()

    def stream_completion(
        self, prompt: str, options: GenerationOptions | None = None, **fields: Any
    ) -> ChatStream:
        return self._submit_completion(prompt, options, fields, emit_chunks=True)

    def chat_many(
        self, conversations: Sequence[Sequence[Any]], options: GenerationOptions | None = None, **fields: Any
    ) -> list[ChatResult]:
        """Replies to many conversations, in their order; the engine decodes them together (vLLM's
        ``LLM.chat`` over a list). A full request queue only delays the rest until earlier ones finish."""
        pending: list[ChatStream] = []
        results: list[ChatResult] = []
        try:
            for messages in conversations:
                while True:
                    try:
                        pending.append(self._submit_chat(messages, options, fields, emit_chunks=False))
                        break
                    except CapacityError:
                        if len(results) == len(pending):
                            raise  # nothing of ours to wait for: the queue is full of other work
                        results.append(pending[len(results)].wait())
            results += [s.wait() for s in pending[len(results) :]]
        finally:
            for s in pending[len(results) :]:
                s.cancel()
        return results

    async def achat(
        self, messages: Sequence[Any], options: GenerationOptions | None = None, **fields: Any
    ) -> ChatResult:
        """``chat`` for asyncio: the loop runs on while the engine decodes; cancelling cancels the request."""
        stream = await asyncio.to_thread(self._submit_chat, messages, options, fields, emit_chunks=False)
        return await _await_result(stream)

    async def acomplete(
        self, prompt: str, options: GenerationOptions | None = None, **fields: Any
    ) -> ChatResult:
        stream = await asyncio.to_thread(self._submit_completion, prompt, options, fields, emit_chunks=False)
        return await _await_result(stream)

    async def astream(
        self, messages: Sequence[Any], options: GenerationOptions | None = None, **fields: Any
    ) -> AsyncIterator[Chunk]:
        """``stream`` for asyncio: ``async for chunk in engine.astream(...)``; leaving early cancels."""
        stream = await asyncio.to_thread(self._submit_chat, messages, options, fields, emit_chunks=True)
        async for chunk in aiter_chunks(stream):
            yield chunk

    @abstractmethod
    def _submit_chat(
        self,
        messages: Sequence[Any],
        options: GenerationOptions | None,
        fields: dict[str, Any],
        *,
        emit_chunks: bool,
    ) -> ChatStream: ...

    @abstractmethod
    def _submit_completion(
        self, prompt: str, options: GenerationOptions | None, fields: dict[str, Any], *, emit_chunks: bool
    ) -> ChatStream: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ChatEngine(Protocol):
    """An engine as its surfaces see it: the chat surface plus what they show and check.

    ``capabilities.max_sequences`` is the parallel capacity (sequence slots locally, requests in flight
    for a remote server); ``sequences_per_request`` how many of them one request with given options holds.
    """

    name: str
    info: ModelInfo
    chat_template: str | None
    reasoning_format: ReasoningFormat
    max_queue: int

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def adapter_names(self) -> list[str]: ...

    @property
    def adapter_files(self) -> Mapping[str, Path]:
        """Name -> the file each adapter was loaded from ({} for a remote server's)."""
        ...

    @property
    def stopped_reason(self) -> str | None:
        """None while it serves; else why not (closed, its thread died or wedged)."""
        ...

    def require_adapters(self, names: Iterable[str]) -> None: ...

    def load_adapter(self, name: str, path: str | Path) -> None: ...

    def unload_adapter(self, name: str) -> None: ...

    def sequences_per_request(self, messages: Sequence[Any], options: GenerationOptions) -> int: ...

    def chat(
        self, messages: Sequence[Any], options: GenerationOptions | None = None, **fields: Any
    ) -> ChatResult: ...

    def stream(
        self, messages: Sequence[Any], options: GenerationOptions | None = None, **fields: Any
    ) -> ChatStream: ...

    def complete(
        self, prompt: str, options: GenerationOptions | None = None, **fields: Any
    ) -> ChatResult: ...

    def stream_completion(
        self, prompt: str, options: GenerationOptions | None = None, **fields: Any
    ) -> ChatStream: ...

    def chat_many(
        self, conversations: Sequence[Sequence[Any]], options: GenerationOptions | None = None, **fields: Any
    ) -> list[ChatResult]: ...

    async def achat(
        self, messages: Sequence[Any], options: GenerationOptions | None = None, **fields: Any
    ) -> ChatResult: ...

    def astream(
        self, messages: Sequence[Any], options: GenerationOptions | None = None, **fields: Any
    ) -> AsyncIterator[Chunk]: ...

    def close(self) -> None: ...

    def __enter__(self: _E) -> _E: ...

    def __exit__(self, *exc: object) -> None: ...


class ServedEngine(ChatEngine, Protocol):
    """What ``edgereason serve`` also reads: a local engine's tokenizer and gauges (a remote engine is
    refused at ``serve``'s start: it is already a server)."""

    created: int  # when it was loaded (/v1/models)
    wedge_timeout_s: float

    @property
    def tokenizer(self) -> Tokenizer: ...

    @property
    def decoded_tokens(self) -> int: ...

    @property
    def live_sequences(self) -> int: ...

    @property
    def queue_depth(self) -> int: ...

    @property
    def running_requests(self) -> int: ...


async def aiter_chunks(stream: ChatStream) -> AsyncIterator[Chunk]:
    """Chunks of ``stream`` without blocking the event loop; leaving the iteration early cancels the
    request. ``stream.result`` is set once it ends. The engine thread hands each event straight to the
    loop (``ChatStream.deliver_to``): no thread per stream, no extra wake-up per token."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[object] = asyncio.Queue()

    def put(event: object) -> None:
        try:
            loop.call_soon_threadsafe(inbox.put_nowait, event)
        except RuntimeError:  # the loop is gone (shutdown): nobody is listening
            stream.cancel()

    stream.deliver_to(put)
    try:
        while stream.result is None:
            for chunk in stream.handle(await inbox.get()):
                yield chunk
    finally:
        if stream.result is None:
            stream.cancel()


async def _await_result(stream: ChatStream) -> ChatResult:
    async for _ in aiter_chunks(stream):
        pass
    assert stream.result is not None
    return stream.result
