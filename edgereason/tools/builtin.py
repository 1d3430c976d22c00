"""The built-in Python tool: the engine runs the code a model writes and injects what it printed.

The model writes a code block in either of the two formats tool-integrated reasoning models use:

- a Markdown fence (Qwen2.5-Math's tool-integrated reasoning, most chat models unprompted)::

      ```python            (or ```py, ```python3)
      print(12 + 7)
      ```                  (the closing fence starts a line)

- tags (Agent Distillation / smolagents-style code actions)::

      <code>print(12 + 7)</code>

When the block closes, its sequence pauses; the code runs in ``sandbox.run_python`` on a worker
thread (never the engine thread: other sequences keep decoding); what it printed (stdout, the last
expression's value, or the error's last line; truncated) comes back as forced tokens::

      <output>
      19
      </output>

and the sequence resumes, in whichever channel (reasoning or answer) it was in.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import sandbox
from ..errors import InvalidRequestError

if TYPE_CHECKING:
    from ..job import Job

log = logging.getLogger(__name__)

BUILTIN_TOOLS = ("python",)
DEFAULT_MAX_TOOL_CALLS = 8  # per choice; later code blocks are left as text, not run
DEFAULT_TOOL_OUTPUT_CHARS = 800  # injected output past this keeps its head and tail
DEFAULT_TOOL_TIMEOUT_S = 10.0
DEFAULT_TOOL_WORKERS = 4
# A tool whose worker has not answered this long after the sandbox's own deadline is a stall.
TOOL_GRACE_S = 30.0
MAX_CODE_CHARS = 20_000  # a longer "block" is not code the tool runs (the watcher gives up on it)

_OPENERS = (re.compile(r"```(?:python3?|py)[ \t]*\n"), re.compile(r"<code>"))
_CLOSERS = ("\n```", "</code>")
_HOLD = 16  # text kept between tokens while no block is open (the longest opener's prefix)

ToolOutcome = sandbox.ToolResult | BaseException


@dataclass(frozen=True)
class CodeBlock:
    code: str
    after: str  # text the model wrote after the closing tag, in the same token


class CodeWatcher:
    """Finds complete code blocks in a model's text as it streams, token by token.

    Tags split across tokens are found because the text is matched on a running buffer. Feed only
    what the model writes (not injected text such as a tool's output)."""

    def __init__(self) -> None:
        self._buf = ""
        self._closer: str | None = None  # the closing tag of the open block

    @property
    def in_code(self) -> bool:
        return self._closer is not None

    def feed(self, text: str) -> CodeBlock | None:
        """The block ``text`` completes, if any (text after it within the same call is not re-scanned)."""
        self._buf += text
        if self._closer is None:
            found = [(m.start(), m.end(), i) for i, p in enumerate(_OPENERS) if (m := p.search(self._buf))]
            if not found:
                self._buf = self._buf[-_HOLD:]
                return None
            _, end, kind = min(found)
            self._closer, self._buf = _CLOSERS[kind], self._buf[end:]
        # A fence's closer needs its newline: "```" right after the opener's newline also closes.
        buf = "\n" + self._buf if self._closer == "\n```" else self._buf
        at = buf.find(self._closer)
        if at < 0:
            if len(self._buf) > MAX_CODE_CHARS:  # not a block the tool runs: stop collecting it
                self._buf, self._closer = "", None
            return None
        code, after = buf[:at], buf[at + len(self._closer) :]
        self._buf, self._closer = "", None
        return CodeBlock(code=code.strip("\n"), after=after) if code.strip() else None


def output_text(result: sandbox.ToolResult, after: str, limit: int = DEFAULT_TOOL_OUTPUT_CHARS) -> str:
    """The text injected after a block: ``<output>`` on a line of its own, what the code printed, the
    closing tag and a newline. ``after``: what the model wrote after the block's closing tag."""
    out = result.output
    if len(out) > limit:  # the sandbox's limit is larger: keep the head and the tail (the last value)
        head, tail = out[: limit * 2 // 3], out[len(out) - limit // 3 :]
        out = f"{head}\n... [{len(out) - len(head) - len(tail)} characters cut] ...\n{tail}"
    lead = "" if after.endswith("\n") else "\n"
    return f"{lead}<output>\n{out}\n</output>\n" if out else f"{lead}<output>\n</output>\n"


def check_builtin_tools(names: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [n for n in names if n not in BUILTIN_TOOLS]
    if unknown:
        raise ValueError(f"unknown built-in tool {unknown[0]!r}; available: {', '.join(BUILTIN_TOOLS)}")
    return tuple(dict.fromkeys(names))


class ToolRunner:
    """Runs sandboxed code on worker threads and hands each outcome back to the engine thread.

    ``post(fn)`` must run ``fn`` on the engine thread soon (the engine queues it and wakes). Only the
    engine thread calls ``submit`` and ``waiting``; ``pending`` is touched only there."""

    def __init__(
        self,
        post: Callable[[Callable[[], None]], None],
        *,
        enabled: bool = True,
        unsafe: bool = False,
        workers: int = DEFAULT_TOOL_WORKERS,
        timeout_s: float = DEFAULT_TOOL_TIMEOUT_S,
    ) -> None:
        self._post = post
        self.enabled = enabled  # the operator's switch: a server runs model-written code only if told to
        self.unsafe = unsafe
        self.workers = workers
        self.timeout_s = timeout_s
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._pending: dict[Job, list[float]] = {}  # job -> submit times of its runs in flight
        self.runs = 0

    def check_available(self) -> None:
        """InvalidRequestError (naming builtin_tools) unless code can run here: switched on, and namespaces
        or unsafe."""
        if not self.enabled:
            raise InvalidRequestError(
                "the built-in Python tool is off on this server (it runs model-written code); "
                "start it with --tool python to allow it",
                param="builtin_tools",
            )
        reason = sandbox.sandbox_unavailable_reason()
        if reason is not None and not self.unsafe:
            raise InvalidRequestError(
                f"the built-in Python tool is unavailable: this machine cannot isolate its code ({reason}). "
                "Enable unprivileged user namespaces, or start the server with --unsafe-python-tool to run "
                "it with resource limits only",
                param="builtin_tools",
            )

    def submit(self, job: Job, code: str, on_done: Callable[[ToolOutcome], object]) -> None:
        """Run ``code`` for ``job``; ``on_done(result or exception)`` later runs on the engine thread."""
        started = time.monotonic()
        self._pending.setdefault(job, []).append(started)
        self.runs += 1

        def work() -> None:
            outcome: ToolOutcome
            try:
                outcome = self.run(code)
            except BaseException as exc:  # noqa: BLE001 - the request's failure, delivered to it
                outcome = exc
            self._post(lambda: self._deliver(job, started, on_done, outcome))

        try:
            self._executor().submit(work)
        except BaseException:
            self._forget(job, started)
            raise

    def run(self, code: str) -> sandbox.ToolResult:
        """One sandboxed run (on any thread). Code the sandbox refuses (NUL bytes) is an error result."""
        try:
            return sandbox.run_python(code, timeout_s=self.timeout_s, unsafe=self.unsafe)
        except sandbox.SandboxUnavailableError:
            raise
        except InvalidRequestError as exc:
            return sandbox.ToolResult(
                output=f"ValueError: {exc}",
                ok=False,
                error=str(exc),
                truncated=False,
                wall_s=0.0,
                isolated=True,
            )

    @property
    def busy(self) -> bool:
        """Whether any run is in flight."""
        return bool(self._pending)

    def waiting(self, job: Job) -> bool:
        """Whether a run of ``job``'s is in flight (its paused sequences are not a stall)."""
        return bool(self._pending.get(job))

    def overdue(self, job: Job, now: float | None = None) -> bool:
        """Whether a run of ``job``'s is past the sandbox's deadline plus a grace: its worker is stuck."""
        runs = self._pending.get(job)
        if not runs:
            return False
        return (now if now is not None else time.monotonic()) - min(runs) > self.timeout_s + TOOL_GRACE_S

    def _deliver(
        self, job: Job, started: float, on_done: Callable[[ToolOutcome], object], outcome: ToolOutcome
    ) -> None:
        self._forget(job, started)
        on_done(outcome)

    def _forget(self, job: Job, started: float) -> None:
        runs = self._pending.get(job)
        if runs is not None:
            runs.remove(started)
            if not runs:
                del self._pending[job]

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.workers, thread_name_prefix="edgereason-tool"
                )
            return self._pool

    def close(self) -> None:
        """Stop taking runs; runs in flight finish in the background (their results are dropped)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
