"""The generation calls users make (``chat``, ``stream``, ``complete``, ``stream_completion``) and the
context-manager protocol, shared by the local :class:`~edgereason.engine.Engine` and the
:class:`~edgereason.remote.RemoteEngine`: each implements the two ``_submit_*`` methods."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, TypeVar

from .job import ChatStream
from .options import GenerationOptions
from .result import ChatResult

_S = TypeVar("_S", bound="ChatSurface")


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
