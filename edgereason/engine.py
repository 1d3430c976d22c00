"""The Engine: one model, one engine thread running the scheduler, many concurrent requests."""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from .adapters import adapter_gguf, is_peft_dir
from .backends.base import AdapterSet, Backend, Capabilities, Tokenizer
from .chat.reasoning import PromptPlan, ReasoningFormat, Thinking, detect_format, plan_prompt, think_is_open
from .chat.template import render_chat, validate_messages
from .chat.tokens import has_control_text, tokenize_prompt
from .errors import (
    CapacityError,
    ChatTemplateError,
    EdgeReasonError,
    EngineStoppedError,
    InvalidRequestError,
    UnknownAdapterError,
)
from .job import ChatStream, Job, PreparedPrompt
from .options import GenerationOptions, LoridOptions
from .scheduler import Scheduler
from .strategies.generate import GenerateJob
from .surface import ChatSurface
from .tools import ToolCallStream, ToolFormat, ToolRequest, detect_tool_format, pop_tool_fields
from .tools.builtin import DEFAULT_TOOL_TIMEOUT_S, ToolRunner
from .tools.parse import template_supports_tools
from .tools.render import fallback_messages

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUE = 64
ADAPTER_CALL_TIMEOUT_S = 120.0
# No decode call returned and no loop iteration began for this long while work is queued: the engine
# is reported wedged (``stopped_reason``) and refuses new work. One decode call is at most n_batch tokens.
DEFAULT_WEDGE_TIMEOUT_S = 60.0
# While every running sequence waits on a built-in tool the loop sleeps until one returns, waking this
# often to notice a tool worker that never answers.
TOOL_WAIT_S = 1.0


class _Control:
    """A call the engine thread runs between decode steps (adapter load/unload)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.future: Future[Any] = Future()


class Engine(ChatSurface):
    """Serves chat and completion requests over one backend.

    Thread-safe: any thread may call ``chat``/``stream``; one engine thread owns the backend and
    decodes the sequences of every request together, step by step (continuous batching).

    A fault fails only the request at fault (see ``scheduler``). If the engine thread dies or makes no
    progress for ``wedge_timeout_s`` while work is queued, ``stopped_reason`` says so and ``submit``
    raises EngineStoppedError; a dead thread also fails every request it held.

    ``python_tool``: requests may ask for the built-in Python tool (``builtin_tools``); a server turns it
    off unless its operator passes ``--tool python``. ``unsafe_python_tool``: run it with resource limits
    only where the sandbox's namespaces are unavailable.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        reasoning_format: str | ReasoningFormat | None = None,
        chat_template: str | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        name: str | None = None,
        default_adapters: AdapterSet = (),
        wedge_timeout_s: float = DEFAULT_WEDGE_TIMEOUT_S,
        python_tool: bool = True,
        unsafe_python_tool: bool = False,
        python_tool_timeout_s: float = DEFAULT_TOOL_TIMEOUT_S,
    ) -> None:
        self.backend = backend
        # Adapters a request gets when it names none (a packaged student = base + its LoRA adapter).
        self.default_adapters = default_adapters
        self.info = backend.info
        self.name = name or self.info.name
        self.chat_template = chat_template or self.info.chat_template
        if reasoning_format is not None:
            try:
                self.reasoning_format = ReasoningFormat(reasoning_format)
            except ValueError:
                raise InvalidRequestError(
                    f"unknown reasoning format {reasoning_format!r}; use one of {[f.value for f in ReasoningFormat]}",
                    param="reasoning_format",
                ) from None
        else:
            self.reasoning_format = detect_format(self.chat_template, self.info.has_think_token)
        # Tool calling: a template that reads `tools` renders them and names its call format; any other
        # gets the generic system prompt (tools/render.py) and the generic parser.
        self.native_tools = template_supports_tools(self.chat_template)
        self.tool_format = detect_tool_format(self.chat_template) if self.native_tools else ToolFormat.GENERIC
        self.max_queue = max_queue
        self.created = int(time.time())  # when it was loaded: /v1/models reports it as "created"
        self.scheduler = Scheduler(backend)
        self._inbox: queue.Queue[Job | _Control | None] = queue.Queue()
        # The built-in Python tool's workers post their results back through the inbox.
        self.tools = ToolRunner(
            self._post, enabled=python_tool, unsafe=unsafe_python_tool, timeout_s=python_tool_timeout_s
        )
        self.scheduler.tool_runner = self.tools
        self._parked = False  # the last step found nothing to decode: every running job waits on a tool
        # Read by caller threads; replaced (never mutated) by the engine thread.
        self._adapter_names: frozenset[str] = frozenset(backend.adapter_names)
        self._wake = threading.Event()
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []
        self._lock = threading.Lock()
        self._closed = False
        self.wedge_timeout_s = wedge_timeout_s
        self._beat: float | None = None  # when the loop last began an iteration; None while idle
        self._died: str | None = None  # why the engine thread stopped, once it has
        self._thread = threading.Thread(target=self._loop, name="edgereason-engine", daemon=True)
        self._thread.start()

    # -- preparing prompts (caller thread) ---------------------------------------------------------
    def render(
        self, messages: Sequence[Any], thinking: Thinking = "auto", tools: ToolRequest | None = None
    ) -> PromptPlan:
        """The prompt text for ``messages`` (and the request's ``tools``) under the model's template and
        reasoning format."""
        msgs = validate_messages(messages)
        if not self.native_tools:
            msgs = fallback_messages(msgs, tools)
        if not self.chat_template:
            raise ChatTemplateError(
                f"model {self.name!r} has no chat template; pass chat_template= to load() (or --chat-template)"
            )
        enable = (
            None
            if thinking == "auto" or self.reasoning_format is not ReasoningFormat.QWEN3
            else bool(thinking)
        )
        rendered = render_chat(
            self.chat_template,
            msgs,
            bos_token=self.info.bos_token,
            eos_token=self.info.eos_token,
            enable_thinking=enable,
            tools=tools.template_tools() if tools is not None and self.native_tools else None,
        )
        plan = plan_prompt(rendered, self.reasoning_format, thinking)
        literals = tuple(
            m["content"] for m in msgs if m["content"] and has_control_text(self.backend, m["content"])
        )
        return dataclasses.replace(plan, literals=literals) if literals else plan

    def prepare(self, plan: PromptPlan) -> PreparedPrompt:
        add_bos = self.info.add_bos and not (
            self.info.bos_token and plan.text.startswith(self.info.bos_token)
        )
        tokens = tokenize_prompt(
            self.backend,
            plan.text,
            n_ctx=self.backend.capabilities.n_ctx,
            add_bos=add_bos,
            literals=plan.literals,
        )
        if not tokens:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        return PreparedPrompt(plan=plan, tokens=tokens)

    def prepare_chat(
        self, messages: Sequence[Any], opts: GenerationOptions, tools: ToolRequest | None = None
    ) -> PreparedPrompt:
        return self.prepare(self.render(messages, opts.effective_thinking, tools))

    def prepare_completion(self, prompt: str) -> PreparedPrompt:
        """A raw prompt (no template): thinking continues if the prompt leaves <think> open."""
        if not isinstance(prompt, str) or not prompt:
            raise InvalidRequestError("prompt must be a non-empty string", param="prompt")
        open_ = think_is_open(prompt)
        return self.prepare(
            PromptPlan(prompt, starts_in_reasoning=open_, may_open=False, thinking_disabled=False)
        )

    # -- public API --------------------------------------------------------------------------------
    def _submit_chat(
        self,
        messages: Sequence[Any],
        options: GenerationOptions | None,
        fields: dict[str, Any],
        *,
        emit_chunks: bool,
    ) -> ChatStream:
        fields = dict(fields)
        tools = pop_tool_fields(fields)
        if tools is not None and tools.forced:
            fields.update(self._tool_grammar(tools, options, fields))
        opts = GenerationOptions.build(options, fields)
        if tools is not None and tools.active and opts.uses_lorid:
            raise InvalidRequestError("LoRID does not take tools; drop tools or strategy", param="tools")
        prompt = self.prepare_chat(messages, opts, tools)
        job = self.make_job(prompt, opts, question=_last_user_text(messages))
        job.emit_chunks = emit_chunks
        stream = self.submit(job)
        if tools is None or not tools.active:
            return stream
        return ToolCallStream(stream, self.tool_format, tools.names, tools.parallel_calls)

    def _tool_grammar(
        self, tools: ToolRequest, options: GenerationOptions | None, fields: dict[str, Any]
    ) -> dict[str, Any]:
        """The grammar fields that force a call (tool_choice required or named); refused beside another."""
        from .tools.grammar import tool_call_grammar

        base = options.model_dump() if options is not None else {}
        merged = {**base, **fields}
        fmt = merged.get("response_format") or {}
        if merged.get("grammar") is not None or (isinstance(fmt, dict) and fmt.get("type", "text") != "text"):
            raise InvalidRequestError(
                "tool_choice 'required' (or a named function) constrains the reply to a tool call; "
                "drop grammar/response_format or use tool_choice 'auto'",
                param="tool_choice",
            )
        gbnf, root = tool_call_grammar(tools, self.tool_format)
        return {"grammar": gbnf, "grammar_root": root}

    def _submit_completion(
        self, prompt: str, options: GenerationOptions | None, fields: dict[str, Any], *, emit_chunks: bool
    ) -> ChatStream:
        opts = GenerationOptions.build(options, fields)
        job = self.make_job(self.prepare_completion(prompt), opts, question=prompt)
        job.emit_chunks = emit_chunks
        return self.submit(job)

    def make_job(
        self, prompt: PreparedPrompt, opts: GenerationOptions, *, question: str | None = None
    ) -> Job:
        """The strategy that serves ``opts``; ``question`` is the user's text (LoRID re-prompts each role)."""
        if opts.builtin_tools:
            self.tools.check_available()
        if opts.uses_lorid:
            from .strategies.lorid import LoridJob

            lorid = opts.lorid or LoridOptions()
            self.require_adapters(lorid.roles.values())
            if opts.adapter_set:
                raise InvalidRequestError(
                    "LoRID picks adapters by role; drop adapter/adapters", param="adapters"
                )

            def make_prompt(role: str, text: str) -> PreparedPrompt:
                return self.prepare_chat([{"role": "user", "content": text}], opts)

            return LoridJob(question or prompt.plan.text, make_prompt, opts, lorid, model=self.name)
        adapters = self.resolve_adapters(opts)
        if opts.self_consistency is not None:
            from .strategies.self_consistency import SelfConsistencyJob

            return SelfConsistencyJob(
                prompt,
                opts,
                model=self.name,
                max_sequences=self.backend.capabilities.max_sequences,
                adapters=adapters,
            )
        return GenerateJob(
            prompt,
            opts,
            model=self.name,
            adapters=adapters,
            max_sequences=self.backend.capabilities.max_sequences,
        )

    def submit(self, job: Job) -> ChatStream:
        if self._closed:
            raise EdgeReasonError("the engine is closed")
        stopped = self.stopped_reason
        if stopped is not None:
            raise EngineStoppedError(f"engine stopped: {stopped}")
        if job.slots_needed > self.backend.capabilities.max_sequences:
            raise InvalidRequestError(
                f"this request needs {job.slots_needed} parallel sequences but the engine has "
                f"{self.backend.capabilities.max_sequences}; load with a larger max_sequences",
                param="n",
            )
        with self._lock:
            if self._died is not None:
                raise EngineStoppedError(f"engine stopped: {self._died}")
            if len(self._waiting) + self._inbox.qsize() >= self.max_queue:
                raise CapacityError(f"the request queue is full ({self.max_queue} waiting); retry shortly")
            self._inbox.put(job)
        self._wake.set()
        return ChatStream(job, self._wake)

    # -- LoRA adapters -----------------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        """Names of the loaded LoRA adapters."""
        return sorted(self._adapter_names)

    @property
    def adapter_files(self) -> Mapping[str, Path]:
        """Name -> the file each loaded adapter came from (run records hash them)."""
        return self.backend.adapter_files

    def resolve_adapters(self, opts: GenerationOptions) -> tuple[tuple[str, float], ...]:
        """The adapter set ``opts`` asks for (else the engine's default set); UnknownAdapterError names
        any adapter that is not loaded."""
        wanted = opts.adapter_set or self.default_adapters
        self.require_adapters(name for name, _ in wanted)
        return wanted

    def require_adapters(self, names: Iterable[str]) -> None:
        known = self._adapter_names
        for name in names:
            if name not in known:
                raise UnknownAdapterError(
                    f"adapter {name!r} is not loaded (loaded: {', '.join(sorted(known)) or 'none'}); "
                    "load it with adapters={name: path} or --adapter NAME=PATH"
                )

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a LoRA adapter GGUF under ``name``, on the engine thread between decode steps.

        For a GGUF model a PEFT folder is converted first (once, cached), on the calling thread.
        Replacing a loaded name is refused: unload it first. Raises ModelLoadError for a bad file.
        """
        if not self.backend.capabilities.lora:
            raise InvalidRequestError(f"the {self.info.format} backend does not support LoRA adapters")
        if not name or "/" in name:
            raise InvalidRequestError(f"invalid adapter name {name!r}", param="lora_name")
        if self.info.format == "gguf" and self.info.path is not None and is_peft_dir(path):
            # Converting takes seconds: do it here, not on the engine thread, so decoding goes on.
            path = adapter_gguf(path, Path(self.info.path))

        def run() -> None:
            if name in self._adapter_names:
                raise InvalidRequestError(
                    f"adapter {name!r} is already loaded; unload it first", param="lora_name"
                )
            self.backend.load_adapter(name, path)
            self._adapter_names = self._adapter_names | {name}

        self._control(run)

    def unload_adapter(self, name: str) -> None:
        """Unload an adapter; refused (InvalidRequestError) while a request still uses it."""

        def run() -> None:
            if name not in self._adapter_names:
                raise UnknownAdapterError(f"adapter {name!r} is not loaded")
            if name in dict(self.default_adapters):
                raise InvalidRequestError(
                    f"adapter {name!r} is part of the model {self.name!r} and cannot be unloaded",
                    param="lora_name",
                )
            users = [j for j in [*self._running, *self._waiting] if name in j.adapters_used]
            if users or any(name in dict(s.adapters) for s in self.scheduler.seqs if s.live):
                raise InvalidRequestError(
                    f"adapter {name!r} is in use by {len(users) or 'running'} request(s); retry when they finish",
                    param="lora_name",
                )
            self.backend.unload_adapter(name)
            self._adapter_names = self._adapter_names - {name}

        self._control(run)

    def _control(self, fn: Callable[[], Any]) -> Any:
        if self._closed:
            raise EdgeReasonError("the engine is closed")
        if threading.current_thread() is self._thread:
            return fn()
        msg = _Control(fn)
        with self._lock:
            if self._died is not None:
                raise EngineStoppedError(f"engine stopped: {self._died}")
            self._inbox.put(msg)
        self._wake.set()
        return msg.future.result(timeout=ADAPTER_CALL_TIMEOUT_S)

    def _post(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the engine thread at its next turn (a tool worker's result); dropped once stopped."""
        with self._lock:
            if self._died is not None or self._closed:
                return
            self._inbox.put(_Control(fn))
        self._wake.set()

    # -- introspection -----------------------------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:
        return self.backend.capabilities

    @property
    def tokenizer(self) -> Tokenizer:
        return self.backend

    @property
    def decoded_tokens(self) -> int:
        return self.scheduler.decoded_tokens

    def sequences_per_request(self, messages: Sequence[Any], options: GenerationOptions) -> int:
        """Sequence slots one chat request with ``options`` holds (building its job checks the options)."""
        job = self.make_job(self.prepare_chat(messages, options), options, question=_last_user_text(messages))
        return job.slots_needed

    @property
    def live_sequences(self) -> int:
        return self.scheduler.live_count

    @property
    def queue_depth(self) -> int:
        return len(self._waiting) + self._inbox.qsize()

    @property
    def running_requests(self) -> int:
        return len(self._running)

    @property
    def stopped_reason(self) -> str | None:
        """None while the engine serves; else why it does not: its thread died, it is wedged (no loop
        iteration and no decode call returned for ``wedge_timeout_s`` while work is queued), or closed."""
        if self._died is not None:
            return self._died
        if self._closed:
            return "engine closed"
        if not self._thread.is_alive():
            return "engine thread died"
        beat = self._beat
        if beat is None:  # idle: waiting for work
            return None
        busy = bool(self._running or self._waiting or not self._inbox.empty())
        age = time.monotonic() - max(beat, self.scheduler.last_progress)
        if busy and age > self.wedge_timeout_s:
            return f"engine wedged: no step progress for {age:.0f} s while work is queued"
        return None

    # -- lifecycle ---------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.put(None)
        self._wake.set()
        self.tools.close()
        self._thread.join(timeout=30)
        if self._thread.is_alive():  # wedged inside the backend: freeing it under a running call would crash
            log.error("the engine thread did not stop; the backend is left open")
            return
        self.backend.close()

    # -- the engine thread -------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                if not self._running and not self._waiting and self._inbox.empty():
                    self._beat = None
                    self._wake.wait()
                elif self._parked:  # waiting on tools only: not a wedge; a result or new work wakes us
                    self._beat = None
                    self._wake.wait(TOOL_WAIT_S)
                self._beat = time.monotonic()
                self._wake.clear()
                try:
                    if self._iterate():
                        break
                except Exception as exc:  # a fault no job owns (a bug here): fail what runs, keep serving
                    log.exception("engine step failed")
                    self._fail_running(exc)
        except BaseException as exc:  # noqa: BLE001 - the thread ends here; everything held gets the reason
            log.critical("the engine thread died", exc_info=exc)
            self._stop(f"engine thread died: {type(exc).__name__}: {exc}")
            return
        self._stop("the engine was closed", closed=True)

    def _iterate(self) -> bool:
        """One turn of the loop: take new work, reap cancels, admit, decode one step. True: closing."""
        if self._drain_inbox():
            return True
        self._reap_cancelled()
        self._admit()
        self._parked = False
        if not self._running:
            return False
        if self.tools.busy:  # a tool worker that never answers stalls its request, busy engine or not
            now = time.monotonic()
            for job in [j for j in self._running if self.tools.overdue(j, now)]:
                self.scheduler.fault(job, RuntimeError("request stalled: the Python tool did not return"))
            self._retire()
        progressed = self.scheduler.step()
        self._retire()
        if not progressed and self._running:
            # Jobs waiting on nothing the scheduler can advance would spin forever; a job whose sequences
            # wait on a built-in tool run is not stalled: the loop sleeps until a worker posts its result.
            for job in [j for j in self._running if not self.tools.waiting(j)]:
                self.scheduler.fault(job, RuntimeError("request stalled: no sequence can make progress"))
            self._retire()
            self._parked = bool(self._running)
        if (self._running or self._waiting) and not self._parked:
            self._wake.set()
        return False

    def _stop(self, reason: str, *, closed: bool = False) -> None:
        """The thread is ending: refuse new work, fail every job and control call still held."""
        with self._lock:
            if not closed:
                self._died = reason
        err: EdgeReasonError = (
            EdgeReasonError(reason) if closed else EngineStoppedError(f"engine stopped: {reason}")
        )
        for job in [*self._running, *self._waiting]:
            self._abandon(job, err)
        self._running, self._waiting = [], deque()
        while not self._inbox.empty():
            item = self._inbox.get_nowait()
            if isinstance(item, _Control):
                item.future.set_exception(err)
            elif item is not None:
                item.fail(err)

    def _abandon(self, job: Job, err: BaseException) -> None:
        if not job.done:
            job.fail(err)
        try:
            self.scheduler.release(job)
        except Exception:  # noqa: BLE001 - the others must still be failed
            log.exception("freeing a request's sequences failed")

    def _drain_inbox(self) -> bool:
        while True:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                return False
            if job is None:
                return True
            if isinstance(job, _Control):
                try:
                    job.future.set_result(job.fn())
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    job.future.set_exception(exc)
                continue
            self._waiting.append(job)

    def _retire(self) -> None:
        """Drop finished jobs from the running list, freeing anything they still hold."""
        for job in [j for j in self._running if j.done]:
            if self.scheduler.release(job):
                log.debug("freed sequences a finished request left behind")
        self._running = [j for j in self._running if not j.done]

    def _reap_cancelled(self) -> None:
        for job in [j for j in self._running if j.cancel_requested.is_set()]:
            self.scheduler.guarded(job, job.abort, self.scheduler)  # finishes with what it has
            if not job.done:
                job.fail(EdgeReasonError("cancelled"))
            self.scheduler.release(job)
            self._running.remove(job)
        for job in [j for j in self._waiting if j.cancel_requested.is_set()]:
            self._waiting.remove(job)
            job.fail(EdgeReasonError("cancelled"))

    def _admit(self) -> None:
        """Start waiting jobs in order while their slots fit beside what running jobs reserved."""
        sched = self.scheduler
        while self._waiting:
            job = self._waiting[0]
            if job.slots_needed > sched.capacity:  # can never fit: refuse it rather than block the queue
                self._waiting.popleft()
                job.fail(
                    CapacityError(
                        f"this request needs {job.slots_needed} parallel sequences but only "
                        f"{sched.capacity} slots are in service"
                    )
                )
                continue
            reserved = sum(j.slots_needed for j in self._running)
            if job.slots_needed > min(sched.capacity - reserved, sched.free_slots):
                return
            self._waiting.popleft()
            missing = sorted(job.adapters_used - self._adapter_names)
            if missing:  # unloaded while the request waited
                job.fail(
                    UnknownAdapterError(f"adapter {missing[0]!r} was unloaded before this request started")
                )
                continue
            sched.guarded(job, job.start, sched)
            if job.done:
                sched.release(job)
            else:
                self._running.append(job)

    def _fail_running(self, exc: BaseException) -> None:
        for job in self._running:
            self._abandon(job, exc)
        self._running = []


def _last_user_text(messages: Sequence[Any]) -> str | None:
    for m in reversed(list(messages)):
        role = m.get("role") if isinstance(m, dict) else getattr(m, "role", None)
        content = m.get("content") if isinstance(m, dict) else getattr(m, "content", None)
        if role == "user" and isinstance(content, str):
            return content
    return None
