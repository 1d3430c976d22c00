"""HTTP for the remote engine: the target URL, one pooled client with errors mapped once, and what a
generated choice looks like once it is back (channels, token texts, log-probs)."""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import json
import logging
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..chat.reasoning import Channel
from ..errors import (
    CapacityError,
    EdgeReasonError,
    InvalidRequestError,
    MissingExtraError,
    UnknownAdapterError,
)
from ..options import GenerationOptions
from ..result import Choice, Chunk, FinishReason, TokenLogprob
from ..signals import answer_confidence, final_answer, think_answer_mismatch

# Per-choice report keys that Choice carries as fields (or recomputes): the rest go to Choice.extra.
REPORTED_ELSEWHERE = frozenset(
    {"index", "thinking_stopped_by", "answer", "reasoning_tokens", "completion_tokens", "finish_reason"}
    | {"answer_confidence", "think_answer_mismatch"}
)
log = logging.getLogger(__name__)

SCHEMES = {"openai": "http", "openai+http": "http", "openai+https": "https"}
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 0.25  # then 0.5, 1: a restarting server or a refused burst, not an outage
DEFAULT_MAX_RETRY_WAIT_S = 30.0
RETRIED_STATUSES = frozenset({429, 503})


class RemoteError(EdgeReasonError):
    """The remote server failed a request or answered with something that is not the OpenAI API."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RemoteUnavailableError(RemoteError):
    """The server cannot be reached (refused, unknown host, not ready) or did not answer in time."""


@dataclass(frozen=True)
class RemoteTarget:
    api_base: str  # http://HOST:PORT/v1, or any base path (https://host/openai/v1)
    model: str


def parse_remote_url(url: str) -> RemoteTarget:
    """``openai://HOST:PORT/MODEL`` (``openai+https://`` for TLS); MODEL may contain slashes (HF ids).

    A base path ending in a ``v1`` segment comes before the model: ``openai://HOST/openai/v1/Qwen/Qwen3-8B``
    is ``https?://HOST/openai/v1`` serving ``Qwen/Qwen3-8B``. Any other base path: ``make_target(base_url, model)``.
    """
    scheme, sep, rest = url.partition("://")
    host, _, path = rest.partition("/")
    parts = [p for p in path.split("/") if p]
    cut = parts.index("v1") + 1 if "v1" in parts else 0
    base, model = "/".join(parts[:cut]) or "v1", "/".join(parts[cut:])
    if not sep or scheme not in SCHEMES or not host or not model:
        raise InvalidRequestError(
            f"not a remote model URL: {url!r}; use openai://HOST:PORT/MODEL (openai+https:// for TLS), "
            "or base_url= and model= for a server under another base path",
            param="model",
        )
    return RemoteTarget(f"{SCHEMES[scheme]}://{host}/{base}", model)


def make_target(base_url: str, model: str) -> RemoteTarget:
    """The OpenAI client's spelling: the API base as given (``http://host:8080/api/v1``) and the model id."""
    scheme, sep, rest = base_url.partition("://")
    if scheme not in ("http", "https") or not sep or not rest.strip("/"):
        raise InvalidRequestError(
            f"base_url must be an http(s) URL such as http://HOST:PORT/v1, not {base_url!r}", param="base_url"
        )
    if not model or not model.strip():
        raise InvalidRequestError("model= names the served model (as in GET /v1/models)", param="model")
    return RemoteTarget(base_url.rstrip("/"), model)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of a request the server did not start: refused or dropped connections, 429 and 503.

    Waits ``backoff`` seconds, doubling per attempt, or the server's ``Retry-After`` when it sends one,
    never longer than ``max_wait`` (a server asking for more fails the request with its message).
    A timed-out generation is not retried: it ran, and a retry would take as long again.
    """

    retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF_S
    max_wait: float = DEFAULT_MAX_RETRY_WAIT_S

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff < 0 or self.max_wait < 0:
            raise InvalidRequestError(
                "retries, retry_backoff and retry_max_wait must be >= 0", param="retries"
            )

    def wait(self, attempt: int, retry_after: str | None) -> float | None:
        """Seconds before attempt ``attempt + 1``, or None when there is none to make."""
        if attempt >= self.retries:
            return None
        asked = _retry_after_seconds(retry_after)
        if asked is not None:
            return asked if asked <= self.max_wait else None
        return min(self.backoff * 2**attempt, self.max_wait)


def _retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())


class _Retry(Exception):
    """A failure worth another attempt, with the server's Retry-After and the error to raise when out of them."""

    def __init__(self, error: EdgeReasonError, retry_after: str | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


# -- HTTP ------------------------------------------------------------------------------------------------
class RemoteClient:
    """JSON and SSE over one pooled httpx client (thread-safe); transport and HTTP errors mapped once."""

    def __init__(
        self,
        api_base: str,
        api_key: str | None,
        timeout: float,
        connect_timeout: float,
        retry: RetryPolicy | None = None,
    ) -> None:
        try:
            import httpx
        except ImportError:
            raise MissingExtraError("the remote backend (openai://)", "remote") from None
        self.httpx = httpx
        self.api_base = api_base
        self.retry = retry or RetryPolicy()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(
            base_url=api_base, headers=headers, timeout=httpx.Timeout(timeout, connect=connect_timeout)
        )
        self.root = api_base.removesuffix("/v1")  # llama-server and vLLM serve /props and /tokenize here
        self._token_counts: dict[str, int] = {}
        self._bos_count: int | None = None
        self._has_tokenize: bool | None = None
        self._lock = threading.Lock()

    def get(self, path: str) -> Any:
        return self._call(lambda: self.http.get(path))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._call(lambda: self.http.post(path, json=body))

    def stream(
        self, path: str, body: dict[str, Any], cancelled: threading.Event
    ) -> Generator[dict[str, Any], None, None]:
        """Events of an SSE completion; leaving early (or ``cancelled``) closes the connection.

        Retried (as ``post``) until the first event; a stream cut later fails: its tokens were delivered.
        """
        attempt = 0
        while True:
            started = False
            try:
                with self.http.stream("POST", path, json=body) as r:
                    if r.status_code >= 400:
                        r.read()
                        error = _http_error(r.status_code, _json_or_none(r.text), body.get("model"))
                        if r.status_code in RETRIED_STATUSES:
                            raise _Retry(error, r.headers.get("retry-after"))
                        raise error
                    for line in r.iter_lines():
                        if cancelled.is_set():
                            return
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            return
                        event = _json_or_none(data)
                        if not isinstance(event, dict):
                            raise RemoteError(
                                f"the server sent a stream event that is not JSON: {data[:200]!r}"
                            )
                        if "error" in event:
                            raise _http_error(500, event, body.get("model"))
                        started = True
                        yield event
                return
            except _Retry as retry:
                error, retry_after = retry.error, retry.retry_after
            except self.httpx.TimeoutException as exc:
                if started or not isinstance(exc, self.httpx.ConnectTimeout):
                    raise self._timeout(exc) from None
                error, retry_after = self._unreachable(exc), None
            except self.httpx.TransportError as exc:
                if started:
                    raise self._unreachable(exc) from None
                error, retry_after = self._unreachable(exc), None
            wait = self.retry.wait(attempt, retry_after)
            if wait is None:
                raise error
            log.warning("%s; retry %d of %d in %.2f s", error, attempt + 1, self.retry.retries, wait)
            if cancelled.wait(wait):
                return
            attempt += 1

    def _call(self, send: Callable[[], Any]) -> Any:
        attempt = 0
        while True:
            try:
                return self._call_once(send)
            except _Retry as retry:
                wait = self.retry.wait(attempt, retry.retry_after)
                if wait is None:
                    raise retry.error from None
                log.warning(
                    "%s; retry %d of %d in %.2f s", retry.error, attempt + 1, self.retry.retries, wait
                )
                time.sleep(wait)
                attempt += 1

    def _call_once(self, send: Callable[[], Any]) -> Any:
        try:
            r = send()
        except self.httpx.ConnectTimeout as exc:
            raise _Retry(self._unreachable(exc)) from None
        except self.httpx.TimeoutException as exc:
            raise self._timeout(exc) from None
        except self.httpx.TransportError as exc:  # refused, reset or closed before an answer
            raise _Retry(self._unreachable(exc)) from None
        body = _json_or_none(r.text)
        if r.status_code in RETRIED_STATUSES:
            raise _Retry(_http_error(r.status_code, body, None), r.headers.get("retry-after"))
        if r.status_code >= 400:
            raise _http_error(r.status_code, body, None)
        if body is None:
            raise RemoteError(f"{self.api_base}: the answer is not JSON: {r.text[:200]!r}", r.status_code)
        return body

    def _timeout(self, exc: Exception) -> RemoteUnavailableError:
        return RemoteUnavailableError(
            f"{self.api_base} did not answer in time ({type(exc).__name__}); "
            "raise timeout= in load_remote or check the server's load"
        )

    def _unreachable(self, exc: Exception) -> RemoteUnavailableError:
        return RemoteUnavailableError(f"cannot reach {self.api_base}: {exc}; is the server running there?")

    def get_root(self, path: str) -> dict[str, Any]:
        """A JSON object from outside /v1 (``/props``), or {} where the server has none."""
        body = self.get_root_json(path)
        return body if isinstance(body, dict) else {}

    def get_root_json(self, path: str) -> Any:
        """JSON from outside /v1 (``/props``, ``/lora-adapters``), or None where the server has none."""
        try:
            r = self.http.get(self.root + path)
            return r.json() if r.status_code == 200 else None
        except (self.httpx.HTTPError, ValueError):
            return None

    def count_tokens(self, model: str, text: str) -> int:
        """Tokens of ``text`` alone: the server's /tokenize (llama-server, vLLM), else usage.prompt_tokens."""
        with self._lock:
            if text in self._token_counts:
                return self._token_counts[text]
        n = self._tokenize_count(model, text) if self._has_tokenize is not False else None
        if n is None:
            if self._bos_count is None:  # what the server adds to every prompt ("a" is one token)
                self._bos_count = max(0, self._prompt_tokens(model, "a") - 1)
            n = self._prompt_tokens(model, text) - self._bos_count
        with self._lock:
            self._token_counts[text] = n
        return n

    def prompt_count(self, model: str, text: str) -> int:
        """Tokens the server counts for ``text`` sent as a whole prompt (``count_tokens`` plus what it adds
        to every prompt, e.g. BOS)."""
        if self._bos_count is None:
            self._bos_count = max(0, self._prompt_tokens(model, "a") - 1)
        return self.count_tokens(model, text) + self._bos_count

    def _tokenize_count(self, model: str, text: str) -> int | None:
        # llama-server reads content/add_special, vLLM prompt/add_special_tokens; each ignores the others.
        body = {
            "model": model,
            "content": text,
            "prompt": text,
            "add_special": False,
            "add_special_tokens": False,
        }
        try:
            r = self.http.post(self.root + "/tokenize", json=body)
            tokens = r.json().get("tokens") if r.status_code == 200 else None
        except (self.httpx.HTTPError, ValueError, AttributeError):
            tokens = None
        self._has_tokenize = isinstance(tokens, list)
        return len(tokens) if isinstance(tokens, list) else None

    def _prompt_tokens(self, model: str, text: str) -> int:
        resp = self.post("/completions", {"model": model, "prompt": text, "max_tokens": 1, "temperature": 0})
        return int((resp.get("usage") or {}).get("prompt_tokens") or 0)

    def close(self) -> None:
        self.http.close()


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _http_error(status: int, body: Any, model: str | None) -> EdgeReasonError:
    """An OpenAI-shaped error answer as the EdgeReason error of the same meaning."""
    err = body.get("error") if isinstance(body, dict) else None
    err = err if isinstance(err, dict) else {"message": str(err or body)[:300]}
    msg, param, code = str(err.get("message", "")), err.get("param"), str(err.get("code") or "")
    if status in (400, 413, 422):
        return InvalidRequestError(f"the server refused the request: {msg}", param=param)
    if status == 404 and (code == "model_not_found" or model is not None):
        return UnknownAdapterError(f"the server does not serve that model or adapter: {msg}")
    if status in (401, 403):
        return RemoteError(f"the server refused the API key ({msg}); pass api_key= to load_remote", status)
    if status == 429:
        return CapacityError(f"the server is busy: {msg}; retry shortly")
    if status == 503:
        return RemoteUnavailableError(f"the server is not ready: {msg}", status)
    return RemoteError(f"the server failed the request (HTTP {status}): {msg}", status)


# -- one generated choice ----------------------------------------------------------------------------------
@dataclass
class RemoteOutput:
    """One choice as it came back, in EdgeReason's channels, with its token texts and log-probs."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    finish_reason: FinishReason = "stop"
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    prompt_tokens: int = 0
    thinking_stopped_by: str | None = None
    texts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    received: bool = False  # the server sent this choice (a server that ignores n sends fewer)

    def add(self, parts: list[tuple[Channel, str]], emit: Callable[[Chunk], None] | None, index: int) -> None:
        for channel, text in parts:
            (self.reasoning if channel == "reasoning" else self.content).append(text)
            if emit is not None:
                emit(Chunk(channel, text, index))

    def add_logprobs(self, entries: Sequence[TokenLogprob]) -> None:
        self.logprobs.extend(entries)
        self.texts.extend(e.token for e in entries)

    def drop_end_of_generation(self) -> None:
        """llama-server lists the end-of-generation token (text "") in the log-probs of a stopped choice;
        EdgeReason counts and shows generated text tokens only."""
        if self.finish_reason == "stop" and self.logprobs and self.logprobs[-1].token == "":
            self.logprobs.pop()
            self.texts.pop()

    def to_choice(self, index: int, opts: GenerationOptions, fmt: str = "auto") -> Choice:
        content, reasoning = "".join(self.content), "".join(self.reasoning)
        found = final_answer(content, reasoning, fmt)
        values = [e.logprob for e in self.logprobs]
        signals = {
            "answer_confidence": answer_confidence(self.texts, values, found),
            "think_answer_mismatch": think_answer_mismatch(content, reasoning, fmt),
        }
        wanted = opts.logprobs or opts.top_logprobs > 0
        return Choice(
            index=index,
            content=content,
            reasoning=reasoning,
            finish_reason=self.finish_reason,
            completion_tokens=self.completion_tokens,
            reasoning_tokens=self.reasoning_tokens,
            answer=found.normalized if found else None,
            thinking_stopped_by=self.thinking_stopped_by,
            logprobs=[dataclasses.replace(e, top=e.top[: opts.top_logprobs]) for e in self.logprobs]
            if wanted
            else None,
            extra={**signals, **self.extra},
        )


def llama_server_tokens(usage: Any, finish: str, stop_strings: bool) -> int | None:
    """The text tokens of one llama-server choice from its usage, which also counts the end-of-generation
    token; None where that cannot be told (a stop string or the end-of-generation token may have ended it).

    Its log-probs are no count: a character split over several tokens is held back until complete and
    listed as one entry."""
    n = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if not isinstance(n, int) or n <= 0:
        return None
    if finish == "length":
        return n
    return n - 1 if finish == "stop" and not stop_strings else None


def finish_reason(value: Any) -> FinishReason:
    return value if value in ("stop", "length", "cancelled", "error") else "stop"


def chat_logprobs(lp: Any) -> list[TokenLogprob]:
    items = lp.get("content") if isinstance(lp, dict) else None
    return [
        TokenLogprob(
            str(e.get("token", "")),
            float(e.get("logprob", 0.0)),
            tuple(
                (str(t.get("token", "")), float(t.get("logprob", 0.0))) for t in e.get("top_logprobs") or ()
            ),
        )
        for e in items or ()
    ]


def completion_logprobs(lp: Any, finish: str | None = None) -> list[TokenLogprob]:
    """``/v1/completions`` log-probs: the legacy OpenAI shape (``tokens``/``token_logprobs``, vLLM, EdgeReason)
    or the chat shape under ``content`` (llama-server answers completions with it)."""
    if isinstance(lp, dict) and isinstance(lp.get("content"), list):
        entries = chat_logprobs(lp)
        stopped = finish == "stop" and entries and entries[-1].token == ""
        return entries[:-1] if stopped else entries  # llama-server's end-of-generation token
    if not isinstance(lp, dict) or not lp.get("tokens"):
        return []
    tops = lp.get("top_logprobs") or [None] * len(lp["tokens"])
    return [
        TokenLogprob(str(t), float(v if v is not None else 0.0), tuple((top or {}).items()))
        for t, v, top in zip(lp["tokens"], lp.get("token_logprobs") or (), tops)
    ]


def apply_report(out: RemoteOutput, entry: dict[str, Any]) -> None:
    """What an EdgeReason server reports per choice (exact token counts, why thinking stopped)."""
    for key in ("completion_tokens", "reasoning_tokens"):
        if isinstance(entry.get(key), int):
            setattr(out, key, entry[key])
    out.thinking_stopped_by = entry.get("thinking_stopped_by", out.thinking_stopped_by)
    if entry.get("finish_reason") in ("cancelled", "error"):
        out.finish_reason = entry["finish_reason"]
    out.extra.update({k: v for k, v in entry.items() if k not in REPORTED_ELSEWHERE})
