"""The remote engine: EdgeReason's strategies over any OpenAI-compatible server (``openai://HOST:PORT/MODEL``).

vLLM, SGLang, llama-server or ``edgereason serve`` decode; this engine keeps the Engine surface (chat,
stream, complete, results with channels, answers and strategy reports) and drives the strategies over HTTP:

- plain generation: ``/v1/chat/completions`` (reasoning from ``reasoning_content``/``reasoning``, else split
  from ``<think>`` by the local channel parser);
- thinking budgets: ``/v1/completions`` on the prompt rendered locally with the model's chat template,
  continued from the server's per-token texts (``logprobs``): at the cap the wrap-up line and ``</think>``
  are appended to the raw prompt and the model answers. Without a template the budget is passed on to the
  server (``thinking_token_budget``) and the result says so;
- self-consistency: ``n`` samples per request (one request per sample when the server refuses n > 1), in
  rounds so the adaptive stopping rules apply between rounds;
- LoRID: role requests with ``model=<adapter>``.

The strategies' remote executor lives in ``executor.py``, HTTP and response parsing in ``http.py``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import PurePath
from typing import Any

from ..backends.base import Capabilities, ModelInfo
from ..chat.reasoning import (
    Channel,
    ChannelSplitter,
    PromptPlan,
    ReasoningFormat,
    Thinking,
    detect_format,
    plan_prompt,
    think_is_open,
)
from ..chat.template import render_chat, validate_messages
from ..errors import ChatTemplateError, EdgeReasonError, InvalidRequestError, UnknownAdapterError
from ..job import ChatStream, Job
from ..options import GenerationOptions
from ..result import ChatResult, Choice, Chunk, Usage
from ..surface import ChatSurface
from . import executor as strategies
from .http import (
    DEFAULT_BACKOFF_S,
    DEFAULT_MAX_RETRY_WAIT_S,
    DEFAULT_RETRIES,
    RemoteClient,
    RemoteError,
    RemoteOutput,
    RemoteTarget,
    RemoteUnavailableError,
    RetryPolicy,
    apply_report,
    chat_logprobs,
    finish_reason,
    llama_server_tokens,
    make_target,
    parse_remote_url,
)
from .steer import steered

__all__ = ["RemoteEngine", "RemoteError", "RemoteUnavailableError", "load_remote", "parse_remote_url"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0  # one generation request; long thinking on a busy server takes minutes
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_PARALLEL = 8  # concurrent requests when a server takes one sample per request
DEFAULT_MAX_QUEUE = 64
# Thinking controls an EdgeReason server applies itself (passed through when the caller set them).
SERVER_THINKING_FIELDS = frozenset(
    {
        "min_thinking",
        "max_waits",
        "wrap_up",
        "early_exit_threshold",
        "early_exit_max_probes",
        "early_exit_probe_tokens",
        "early_exit_confidence",
        "early_exit_agree",
        "early_exit_answer",
        "early_exit_prefix",
        "transition_markers",
        "auto_budget_cap",
        "loop_guard",
    }
)


class RemoteJob(Job):
    """A request served by a worker thread over HTTP; the caller reads it through a ChatStream."""


# -- the engine ----------------------------------------------------------------------------------------------
class RemoteEngine(ChatSurface):
    """The Engine surface over an OpenAI-compatible server. Thread-safe; each request runs in its own thread."""

    max_queue = DEFAULT_MAX_QUEUE  # requests callers (the app, eval) keep in flight; each is a thread here

    def __init__(
        self,
        target: RemoteTarget,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        chat_template: str | None = None,
        reasoning_format: str | None = None,
        name: str | None = None,
        parallel: int = DEFAULT_PARALLEL,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.target = target
        self.model = target.model
        self.name = name or target.model
        self.parallel = parallel
        self.client = RemoteClient(target.api_base, api_key, timeout, connect_timeout, retry)
        self._closed = False
        self.n_ok = True  # the server takes n > 1; cleared at its first refusal
        try:
            base, adapters = _served_models(self.client.get("/models"), self.model)
        except BaseException:
            self.client.close()
            raise
        meta: dict[str, Any] = base["meta"] if isinstance(base.get("meta"), dict) else {}
        owner = base.get("owned_by")
        self.flavor = (
            "edgereason" if owner == "edgereason" else "llamacpp" if owner == "llamacpp" else "openai"
        )
        # llama-server loads adapters with --lora and picks them per request ("lora": [{id, scale}]), named
        # here by file stem; vLLM and EdgeReason serve each adapter as a model (model=<adapter>).
        self._lora_ids: dict[str, int] = (
            _lora_adapters(self.client.get_root_json("/lora-adapters")) if self.flavor == "llamacpp" else {}
        )
        self._adapters = frozenset(self._lora_ids) or adapters
        no_template = chat_template is None and not meta.get("chat_template")
        props = self.client.get_root("/props") if no_template else {}
        self.chat_template: str | None = (
            chat_template or meta.get("chat_template") or props.get("chat_template")
        )
        fmt = reasoning_format or meta.get("reasoning_format")
        try:
            self.reasoning_format = ReasoningFormat(fmt) if fmt else detect_format(self.chat_template, False)
        except ValueError:
            self.client.close()
            raise InvalidRequestError(f"unknown reasoning format {fmt!r}", param="reasoning_format") from None
        self.info = ModelInfo(
            name=self.name,
            path=None,
            format="remote",
            architecture=str(meta.get("architecture", "unknown")),
            quantization="unknown",
            n_params=0,
            size_bytes=0,
            n_ctx_train=int(meta.get("n_ctx") or 0),
            n_vocab=0,
            chat_template=self.chat_template,
            bos_token=str(props.get("bos_token") or meta.get("bos_token") or ""),
            eos_token=str(props.get("eos_token") or meta.get("eos_token") or ""),
            add_bos=False,
            has_think_token=False,
        )

    # -- public API (the Engine's) -------------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        return sorted(self._adapters or ())

    @property
    def capabilities(self) -> Capabilities:
        """``max_sequences``: requests sent at once; ``n_ctx``: the server's (0 when it does not say)."""
        return Capabilities(
            max_sequences=self.parallel,
            n_ctx=self.info.n_ctx_train,
            n_batch=0,
            fork=False,
            rewind=False,
            lora=bool(self._adapters),
        )

    @property
    def stopped_reason(self) -> str | None:
        return "engine closed" if self._closed else None

    @property
    def adapter_files(self) -> dict[str, Any]:
        return {}  # the server's own files

    def load_adapter(self, name: str, path: str | os.PathLike[str]) -> None:
        raise InvalidRequestError(
            f"a remote server loads its own adapters (cannot load {name!r} here); name a served one with adapter=",
            param="adapters",
        )

    def unload_adapter(self, name: str) -> None:
        raise InvalidRequestError("a remote server manages its own adapters", param="adapters")

    def sequences_per_request(self, messages: Sequence[Any], options: GenerationOptions) -> int:
        """One request in flight per call (its samples run on the server); checks the options first."""
        self._check_supported(options)
        return 1

    def render(self, messages: Sequence[Any], thinking: Thinking = "auto") -> PromptPlan:
        """The prompt text for ``messages`` under the model's template, rendered here (as Engine.render)."""
        msgs = validate_messages(messages)
        if not self.chat_template:
            raise ChatTemplateError(
                f"the server does not publish the chat template of {self.name!r}; pass chat_template= to load_remote"
            )
        qwen3 = self.reasoning_format is ReasoningFormat.QWEN3
        enable = None if thinking == "auto" or not qwen3 else bool(thinking)
        rendered = render_chat(
            self.chat_template,
            msgs,
            bos_token=self.info.bos_token,
            eos_token=self.info.eos_token,
            enable_thinking=enable,
        )
        return plan_prompt(rendered, self.reasoning_format, thinking)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.client.close()

    # -- dispatch ----------------------------------------------------------------------------------------------
    def _submit_chat(
        self,
        messages: Sequence[Any],
        options: GenerationOptions | None,
        fields: dict[str, Any],
        *,
        emit_chunks: bool,
    ) -> ChatStream:
        opts = GenerationOptions.build(options, fields)
        msgs = validate_messages(messages)
        self._check_supported(opts)
        if opts.uses_lorid:
            question = next(
                (m["content"] for m in reversed(msgs) if m["role"] == "user"), msgs[-1]["content"]
            )
            return self._run(lambda job: strategies.lorid(self, job, question, opts), emit_chunks)
        model = self._model_for(opts)
        plan = self.render(msgs, opts.effective_thinking) if self.raw_budget(opts) else None
        if opts.self_consistency is not None:
            return self._run(
                lambda job: strategies.self_consistency(self, job, msgs, plan, opts, model), emit_chunks
            )
        if plan is not None:
            return self._run(lambda job: strategies.raw_choices(self, job, plan, opts, model), emit_chunks)
        return self._run(lambda job: self._chat(job, msgs, opts, model), emit_chunks)

    def _submit_completion(
        self, prompt: str, options: GenerationOptions | None, fields: dict[str, Any], *, emit_chunks: bool
    ) -> ChatStream:
        opts = GenerationOptions.build(options, fields)
        if not isinstance(prompt, str) or not prompt:
            raise InvalidRequestError("prompt must be a non-empty string", param="prompt")
        self._check_supported(opts)
        if opts.uses_lorid:
            raise InvalidRequestError("LoRID needs chat messages; use chat()", param="strategy")
        plan = PromptPlan(
            prompt, starts_in_reasoning=think_is_open(prompt), may_open=False, thinking_disabled=False
        )
        model = self._model_for(opts)
        if opts.self_consistency is not None:
            return self._run(
                lambda job: strategies.self_consistency(self, job, None, plan, opts, model), emit_chunks
            )
        return self._run(lambda job: strategies.raw_choices(self, job, plan, opts, model), emit_chunks)

    def _run(self, work: Callable[[RemoteJob], ChatResult], emit_chunks: bool) -> ChatStream:
        if self._closed:
            raise EdgeReasonError("the engine is closed")
        job = RemoteJob()
        job.emit_chunks = emit_chunks

        def target() -> None:
            try:
                job.complete(work(job))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through the stream
                job.fail(exc)

        threading.Thread(target=target, name="edgereason-remote", daemon=True).start()
        return ChatStream(job)

    def _check_supported(self, opts: GenerationOptions) -> None:
        if opts.builtin_tools:
            raise InvalidRequestError(
                "the remote engine does not run the built-in Python tool; send the request straight to an "
                "EdgeReason server started with --tool python",
                param="builtin_tools",
            )
        if steered(opts) and self.flavor != "edgereason" and self.chat_template is None:
            raise InvalidRequestError(
                "thinking_budget='auto', min_thinking and loop_guard steer every token of a continuation of "
                f"the prompt rendered here, and {self.name}'s chat template is unknown (the server does not "
                "report it): pass chat_template= (--chat-template) or use an integer thinking_budget",
                param="thinking_budget",
            )

    def raw_budget(self, opts: GenerationOptions) -> bool:
        """Thinking controls applied here on a raw-prompt continuation (when the chat template is known):
        an integer budget, and the per-token controls on a server that is not EdgeReason (which applies
        them itself)."""
        if steered(opts):
            return self.flavor != "edgereason" and self.chat_template is not None
        if not isinstance(opts.effective_thinking_budget, int):
            return False
        if self.chat_template is None:
            log.warning("no chat template for %s: the thinking budget is left to the server", self.name)
        return self.chat_template is not None

    def _model_for(self, opts: GenerationOptions) -> str:
        """``model=<adapter>`` selects one adapter (vLLM); adapter sets with scales cannot be expressed."""
        wanted = opts.adapter_set
        if not wanted:
            return self.model
        if len(wanted) > 1 or wanted[0][1] != 1.0:
            raise InvalidRequestError(
                "a remote server selects one adapter at its own scale (model=<adapter>); pass adapter=NAME",
                param="adapters",
            )
        self.require_adapters([wanted[0][0]])
        if opts.self_consistency is not None:
            raise InvalidRequestError(
                "adapters cannot be combined with self_consistency yet; drop one of them", param="adapters"
            )
        return wanted[0][0]

    def require_adapters(self, names: Iterable[str]) -> None:
        """Adapters the server lists; unchecked (the server answers 404) when it lists none."""
        for name in names:
            if self._adapters is not None and name not in self._adapters:
                raise UnknownAdapterError(
                    f"adapter {name!r} is not served by {self.target.api_base} "
                    f"(served: {', '.join(sorted(self._adapters))})"
                )

    # -- request bodies ------------------------------------------------------------------------------------------
    def body(
        self,
        opts: GenerationOptions,
        model: str,
        *,
        seed_offset: int = 0,
        temperature: float | None = None,
        top_p: float | None = None,
    ) -> dict[str, Any]:
        """Sampling fields as the caller set them: a field left unset takes the server's own default
        (llama-server's top_k=40 and min_p=0.05 are not ours to send to vLLM, nor our temperature to a model
        whose generation config recommends another). A strategy's own sampling is passed in explicitly."""
        caller = opts.model_fields_set
        body: dict[str, Any] = {"model": model}
        if temperature is not None or "temperature" in caller:
            body["temperature"] = opts.temperature if temperature is None else temperature
        if top_p is not None or "top_p" in caller:
            body["top_p"] = opts.top_p if top_p is None else top_p
        if opts.max_tokens is not None:
            body["max_tokens"] = opts.max_tokens
        if opts.seed is not None:
            body["seed"] = (opts.seed + seed_offset) & 0xFFFFFFFF
        if opts.stop:
            body["stop"] = list(opts.stop)
        llama = self.flavor in ("edgereason", "llamacpp")  # repeat_penalty/repeat_last_n in llama.cpp's names
        renamed = {"repeat_penalty": "repeat_penalty" if llama else "repetition_penalty"}
        fields = ["top_k", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty"]
        fields += ["repeat_last_n", "cache_prompt"] if llama else []
        for name in fields:
            if name in caller:
                body[renamed.get(name, name)] = getattr(opts, name)
        if self._lora_ids:  # every adapter's scale, so none stays applied from the server's start
            body["model"] = self.model
            body["lora"] = [
                {"id": i, "scale": 1.0 if name == model else 0.0} for name, i in self._lora_ids.items()
            ]
        if opts.logit_bias:
            body["logit_bias"] = {str(token): bias for token, bias in opts.logit_bias}
        if opts.ignore_eos:  # vLLM, llama-server and EdgeReason all take it
            body["ignore_eos"] = True
        return body

    def _counted(self, body: dict[str, Any]) -> dict[str, Any]:
        """llama-server's usage counts the end-of-generation token: its log-probs give text-token counts
        (a choice's log-probs are returned only when the caller asked for them)."""
        if self.flavor == "llamacpp" and not body.get("logprobs"):
            return {**body, "logprobs": True, "top_logprobs": 1}
        return body

    def top_logprobs(self, wanted: int) -> int:
        """llama-server sends no log-probs at all for top_logprobs=0; extra alternatives are trimmed later."""
        return max(1, wanted) if self.flavor == "llamacpp" else wanted

    def thinking_fields(self, opts: GenerationOptions) -> dict[str, Any]:
        """Thinking on/off in the server's terms, and an integer budget left to the server (no template)."""
        out: dict[str, Any] = {}
        thinking = opts.effective_thinking
        if thinking != "auto" and self.flavor == "edgereason":
            out["thinking"] = thinking
        elif thinking != "auto":
            out["chat_template_kwargs"] = {"enable_thinking": bool(thinking)}
        if isinstance(opts.effective_thinking_budget, int):
            out["thinking_token_budget"] = opts.effective_thinking_budget  # vLLM's name; EdgeReason's alias
        if self.flavor == "edgereason":  # the rest of its thinking controls, as the caller set them
            budget = opts.thinking_budget if opts.thinking_budget == "auto" else None
            out.update(opts.model_dump(mode="json", include=opts.model_fields_set & SERVER_THINKING_FIELDS))
            out.update({"thinking_budget": budget} if budget else {})
        return out

    # -- plain chat ----------------------------------------------------------------------------------------------
    def _chat(
        self, job: RemoteJob, msgs: list[dict[str, Any]], opts: GenerationOptions, model: str
    ) -> ChatResult:
        body = {**self.body(opts, model), "messages": msgs, "n": opts.n, **self.thinking_fields(opts)}
        if opts.logprobs or opts.top_logprobs:
            body.update(logprobs=True, top_logprobs=self.top_logprobs(opts.top_logprobs))
        budget = opts.effective_thinking_budget
        plan = (
            self.render(msgs, opts.effective_thinking)
            if self.chat_template and self.flavor != "edgereason"
            else None
        )
        outs, prompt_tokens = (
            self._chat_stream(job, body, opts, plan)
            if job.emit_chunks
            else self.chat_choices(body, opts.n, plan)
        )
        if budget is not None:
            for o in outs:
                o.extra["thinking_budget_enforced_by"] = "server"
                if isinstance(budget, int) and o.reasoning_tokens > budget:
                    log.warning(
                        "the server ignored thinking_budget=%d (%d reasoning tokens)",
                        budget,
                        o.reasoning_tokens,
                    )
        return self.result([o.to_choice(i, opts) for i, o in enumerate(outs)], prompt_tokens)

    def _splitter(self, plan: PromptPlan | None) -> ChannelSplitter:
        """For a server that does not split reasoning: the prompt (else the format) says where output starts."""
        if plan is not None:
            return ChannelSplitter(starts_in_reasoning=plan.starts_in_reasoning, may_open=plan.may_open)
        return ChannelSplitter(
            starts_in_reasoning=False, may_open=self.reasoning_format is not ReasoningFormat.NONE
        )

    def chat_choices(
        self, body: dict[str, Any], n: int, plan: PromptPlan | None = None
    ) -> tuple[list[RemoteOutput], int]:
        """``n`` choices of one chat request, checked: a server that ignores ``n`` (fewer choices came back)
        gets one request per missing choice, with the seeds the local engine would give them (seed + index);
        from then on this engine asks it one choice per request."""
        if n > 1 and not self.n_ok:
            return self.chat_one_by_one(body, range(n), plan)
        outs, prompt_tokens = self.chat_once({**body, "n": n}, n, plan)
        missing = [i for i, o in enumerate(outs) if not o.received]
        if missing:
            log.warning(
                "%s returned %d of %d choices (it ignores n); asking for the rest one per request",
                self.target.api_base,
                n - len(missing),
                n,
            )
            self.n_ok = False
            filled, _ = self.chat_one_by_one(body, missing, plan)
            for i, out in zip(missing, filled):
                outs[i] = out
        return outs, prompt_tokens

    def chat_one_by_one(
        self, body: dict[str, Any], indices: Sequence[int], plan: PromptPlan | None = None
    ) -> tuple[list[RemoteOutput], int]:
        def one(i: int) -> RemoteOutput:
            single = {**body, "n": 1}
            if body.get("seed") is not None:
                single["seed"] = (body["seed"] + i) & 0xFFFFFFFF
            outs, prompt_tokens = self.chat_once(single, 1, plan)
            outs[0].prompt_tokens = prompt_tokens
            return outs[0]

        outs = strategies.map_outputs(self, one, indices)
        return outs, outs[0].prompt_tokens

    def chat_once(
        self, body: dict[str, Any], n: int, plan: PromptPlan | None = None
    ) -> tuple[list[RemoteOutput], int]:
        """One request, parsed as it came back (see ``chat_choices`` for the check of ``n``)."""
        resp = self.client.post("/chat/completions", self._counted(body))
        outs = [RemoteOutput() for _ in range(n)]
        for ch in resp.get("choices") or ():
            out = outs[_choice_index(ch, n)]
            out.received = True
            msg = ch.get("message") or {}
            reasoning = msg.get("reasoning_content") or msg.get("reasoning")
            content = msg.get("content") or ""
            if reasoning is not None or self.flavor == "edgereason":
                out.reasoning.append(reasoning or "")
                out.content.append(content)
            else:
                sp = self._splitter(plan)
                out.add(sp.feed(content) + sp.flush(), None, 0)
            out.finish_reason = finish_reason(ch.get("finish_reason"))
            out.add_logprobs(chat_logprobs(ch.get("logprobs")))
            out.drop_end_of_generation()
        if not any(o.received for o in outs):
            raise RemoteError(f"{self.target.api_base} answered with no choices: {str(resp)[:200]}")
        return self._counts(outs, resp.get("usage"), resp.get("edgereason"), bool(body.get("stop")))

    def _chat_stream(
        self, job: RemoteJob, body: dict[str, Any], opts: GenerationOptions, plan: PromptPlan | None
    ) -> tuple[list[RemoteOutput], int]:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        outs = [RemoteOutput() for _ in range(opts.n)]
        splitters = [self._splitter(plan) for _ in range(opts.n)]
        split_by_server = [self.flavor == "edgereason"] * opts.n
        usage: Any = None
        report: Any = None
        for event in self.client.stream("/chat/completions", self._counted(body), job.cancel_requested):
            usage = event.get("usage") or usage
            report = event.get("edgereason") or report
            for ch in event.get("choices") or ():
                i = _choice_index(ch, opts.n)
                outs[i].received = True
                delta = ch.get("delta") or {}
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                if reasoning:
                    split_by_server[i] = True
                    outs[i].add([("reasoning", reasoning)], job.emit, i)
                if delta.get("content"):
                    text = delta["content"]
                    parts = [("content", text)] if split_by_server[i] else splitters[i].feed(text)
                    outs[i].add(parts, job.emit, i)  # type: ignore[arg-type]
                outs[i].add_logprobs(chat_logprobs(ch.get("logprobs")))
                if ch.get("finish_reason"):
                    outs[i].finish_reason = finish_reason(ch["finish_reason"])
        for i, out in enumerate(outs):
            out.drop_end_of_generation()
            if not split_by_server[i]:
                out.add(splitters[i].flush(), job.emit, i)
            if job.cancel_requested.is_set() and report is None:
                out.finish_reason = "cancelled"
        outs, prompt_tokens = self._counts(outs, usage, report, bool(body.get("stop")))
        missing = [i for i, o in enumerate(outs) if not o.received]
        if missing and not job.cancel_requested.is_set():
            if len(missing) == opts.n:
                raise RemoteError(f"{self.target.api_base} streamed no choices")
            log.warning(
                "%s streamed %d of %d choices (it ignores n)",
                self.target.api_base,
                opts.n - len(missing),
                opts.n,
            )
            self.n_ok = False
            plain = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
            filled, _ = self.chat_one_by_one(plain, missing, plan)
            for i, out in zip(missing, filled):
                outs[i] = out
                texts: list[tuple[Channel, str]] = [("reasoning", "".join(out.reasoning))]
                for channel, text in [*texts, ("content", "".join(out.content))]:
                    if text:
                        job.emit(Chunk(channel, text, i))
        return outs, prompt_tokens

    def _counts(
        self, outs: list[RemoteOutput], usage: Any, report: Any, stops: bool = True
    ) -> tuple[list[RemoteOutput], int]:
        """Token counts: the EdgeReason report's per choice, else log-probs, else usage (one choice; on
        llama-server, usage first: ``stops`` says whether the request had stop strings)."""
        usage = usage if isinstance(usage, dict) else {}
        details = usage.get("completion_tokens_details") or {}
        alone = sum(o.received for o in outs) == 1  # usage is this choice's
        for i, out in enumerate(outs):
            if not out.received:
                continue
            out.completion_tokens = len(out.logprobs) or (
                int(usage.get("completion_tokens") or 0) if alone else 0
            )
            exact = (
                llama_server_tokens(usage, out.finish_reason, stops) if self.flavor == "llamacpp" else None
            )
            if alone and exact is not None:
                out.completion_tokens = max(exact, len(out.logprobs))
            if alone:
                out.reasoning_tokens = int(details.get("reasoning_tokens") or 0)
            elif not out.completion_tokens and report is None:  # n > 1 without log-probs: count the text
                text = "".join(out.reasoning) + "".join(out.content)
                out.completion_tokens = self.client.count_tokens(self.model, text) if text else 0
            entries = report.get("choices") if isinstance(report, dict) else None
            if entries and i < len(entries) and isinstance(entries[i], dict):
                apply_report(out, entries[i])
            elif "".join(out.reasoning):  # no report: thinking ended where the text says
                out.thinking_stopped_by = "model" if out.content or out.finish_reason == "stop" else "length"
        return outs, int(usage.get("prompt_tokens") or 0)

    def result(
        self, choices: list[Choice], prompt_tokens: int, extra: dict[str, Any] | None = None
    ) -> ChatResult:
        usage = Usage.of_choices(prompt_tokens, choices)  # with steered choices' probe tokens
        return ChatResult(choices=choices, usage=usage, model=self.name, extra=extra or {})


def _lora_adapters(listing: Any) -> dict[str, int]:
    """llama-server's ``GET /lora-adapters``: adapter name (the file's stem) -> id."""
    entries = [e for e in listing if isinstance(e, dict)] if isinstance(listing, list) else []
    return {PurePath(str(e.get("path", ""))).stem: int(e["id"]) for e in entries if "id" in e}


def _choice_index(choice: dict[str, Any], n: int) -> int:
    index = choice.get("index", 0)
    if not isinstance(index, int) or not 0 <= index < n:
        raise RemoteError(f"the server returned choice index {index!r} for n={n}")
    return index


def _served_models(listing: Any, model: str) -> tuple[dict[str, Any], frozenset[str] | None]:
    """From ``GET /v1/models``: the entry of ``model`` (else the first) and the adapters listed with a parent.

    Adapters are None (unchecked; the server answers 404 for an unknown one) when none is listed.
    """
    data = listing.get("data") if isinstance(listing, dict) else None
    entries = [e for e in data or () if isinstance(e, dict)]
    base = next((e for e in entries if e.get("id") == model), entries[0] if entries else {})
    listed = frozenset(str(e["id"]) for e in entries if e.get("parent") and "id" in e)
    return base, listed or None


def load_remote(
    url: str | None = None,
    *,
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    retries: int = DEFAULT_RETRIES,
    retry_backoff: float = DEFAULT_BACKOFF_S,
    retry_max_wait: float = DEFAULT_MAX_RETRY_WAIT_S,
    chat_template: str | None = None,
    reasoning_format: str | None = None,
    name: str | None = None,
    parallel: int | None = None,
) -> RemoteEngine:
    """An engine over an OpenAI-compatible server: ``base_url=`` (the API base, as the ``openai`` client takes
    it: ``http://HOST:PORT/v1``, ``https://host/openai/v1``) and ``model=``, or the shorthand
    ``url="openai://HOST:PORT/MODEL"``.

    ``api_key``: sent as a bearer token (default $EDGEREASON_REMOTE_API_KEY; $OPENAI_API_KEY is never
    sent to a server it was not meant for). ``timeout``: seconds one request may take (connecting:
    ``connect_timeout``). ``retries``: further attempts of a request refused by the connection or with
    429/503, ``retry_backoff`` seconds apart (doubling) or as the server's ``Retry-After`` says, at most
    ``retry_max_wait`` seconds each. ``chat_template``: the model's template, for exact thinking budgets
    when the server does not publish it (llama-server's ``GET /props`` does). ``parallel``: concurrent
    requests when samples go one per request. Raises RemoteUnavailableError when the server cannot be reached.
    """
    if (url is None) == (base_url is None):
        raise InvalidRequestError(
            "give either url='openai://HOST:PORT/MODEL' or base_url= and model=", param="base_url"
        )
    if url is not None and model is not None:
        raise InvalidRequestError("the openai:// URL names the model; drop model=", param="model")
    target = parse_remote_url(url) if url is not None else make_target(str(base_url), model or "")
    key = api_key or os.environ.get("EDGEREASON_REMOTE_API_KEY")
    return RemoteEngine(
        target,
        api_key=key,
        timeout=timeout,
        connect_timeout=connect_timeout,
        chat_template=chat_template,
        reasoning_format=reasoning_format,
        name=name,
        parallel=parallel or DEFAULT_PARALLEL,
        retry=RetryPolicy(retries, retry_backoff, retry_max_wait),
    )
