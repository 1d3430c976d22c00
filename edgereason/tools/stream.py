"""Tool calls out of a running request: a ``ChatStream`` whose content passes through the call parser."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterator

from ..job import ChatStream
from ..result import ChatResult, Choice, Chunk, ToolCall, ToolCallChunk
from .parse import Event, ParsedCall, ToolCallParser, ToolFormat

log = logging.getLogger(__name__)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class _ChoiceCalls:
    """The parser of one choice and what it has produced so far."""

    def __init__(self, index: int, fmt: ToolFormat, names: frozenset[str], parallel: bool) -> None:
        self.index = index
        self.parser = ToolCallParser(fmt, names)
        self.parallel = parallel
        self.content: list[str] = []
        self.calls: list[ToolCall] = []

    def take(self, events: list[Event]) -> Iterator[Chunk]:
        for e in events:
            if isinstance(e, ParsedCall):
                if self.calls and not self.parallel:
                    log.debug("parallel_tool_calls is false: dropping the extra call to %s", e.name)
                    continue
                call = ToolCall(new_call_id(), e.name, e.arguments)
                self.calls.append(call)
                yield ToolCallChunk("content", "", self.index, call=call, position=len(self.calls) - 1)
            else:
                self.content.append(e)
                yield Chunk("content", e, self.index)

    def finish(self, choice: Choice) -> Choice:
        if not self.calls:
            return dataclasses.replace(choice, content="".join(self.content))
        reason = "tool_calls" if choice.finish_reason == "stop" else choice.finish_reason
        return dataclasses.replace(
            choice, content="".join(self.content), tool_calls=list(self.calls), finish_reason=reason
        )


class ToolCallStream(ChatStream):
    """Yields reasoning chunks as they come, content chunks with the tool calls lifted out of them
    (``ToolCallChunk``s, each once complete), and a result whose choices carry ``tool_calls`` and
    ``finish_reason`` "tool_calls". The reasoning channel is never parsed."""

    def __init__(self, stream: ChatStream, fmt: ToolFormat, names: frozenset[str], parallel: bool) -> None:
        super().__init__(stream._job, stream._wake)
        self.fmt, self.names, self.parallel = fmt, names, parallel
        self._parsers: dict[int, _ChoiceCalls] = {}

    def _of(self, index: int) -> _ChoiceCalls:
        if index not in self._parsers:
            self._parsers[index] = _ChoiceCalls(index, self.fmt, self.names, self.parallel)
        return self._parsers[index]

    def _on_chunk(self, chunk: Chunk) -> list[Chunk]:
        if chunk.channel != "content":
            return [chunk]
        st = self._of(chunk.index)
        return list(st.take(st.parser.feed(chunk.text)))

    def _on_result(self, result: ChatResult) -> tuple[list[Chunk], ChatResult]:
        tail: list[Chunk] = []
        choices = []
        for choice in result.choices:
            st = self._of(choice.index)
            if not self._job.emit_chunks:  # no chunks came: parse the whole content
                tail += st.take(st.parser.feed(choice.content))
            tail += st.take(st.parser.flush())
            choices.append(st.finish(choice))
        return tail, dataclasses.replace(result, choices=choices)
