"""The HTTP surface: OpenAI-compatible routes that translate requests into Engine calls."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Match
from starlette.types import Scope

from .. import __version__
from ..adapters import check_adapter_name, inside_dir, parse_adapter_spec
from ..errors import EdgeReasonError, InvalidRequestError, ModelLoadError
from ..options import GenerationOptions
from ..result import ChatResult, Chunk, ToolCallChunk
from ..surface import aiter_chunks
from ..tools import TOOL_FIELDS
from . import schemas
from .errors import (
    AdapterManagementDisabledError,
    EngineStoppedError,
    ModelNotFoundError,
    NotReadyError,
    error_body,
    install_error_handlers,
    strip_paths,
)
from .guard import Gate, allowed_hosts, is_loopback
from .metrics import CONTENT_TYPE, Metrics, RequestTimer
from .routes_extra import add_extra_routes, model_card
from .settings import ServerSettings

if TYPE_CHECKING:
    from ..job import ChatStream
    from ..surface import ServedEngine

log = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.25
DEFAULT_MODEL_ALIASES = ("default",)
WATCHDOG_INTERVAL_S = 1.0
KEEP_ALIVE_COMMENT = ": keep-alive\n\n"
EXIT_ENGINE_STOPPED = 3  # serve()'s exit status when the engine died: a supervisor restarts the process


def create_app(engine: ServedEngine | None, settings: ServerSettings | None = None) -> FastAPI:
    """Build the app over ``engine``; with None, /health answers 503 until ``app.state.engine`` is set."""
    settings = settings or ServerSettings()
    app = FastAPI(title="EdgeReason", version=__version__, summary="OpenAI-compatible reasoning-model server")
    app.state.settings = settings
    app.state.engine = engine
    app.state.load_error = None
    metrics = app.state.metrics = Metrics(lambda: app.state.engine)
    install_error_handlers(app)

    def count(scope: Scope, status: int) -> None:
        metrics.count_request(_route_label(app, scope), status)

    app.add_middleware(
        Gate,
        api_key=settings.api_key,
        hosts=allowed_hosts(settings.host, settings.allowed_host),
        cors_origins=frozenset(settings.cors_origin),
        max_body_bytes=settings.max_body_bytes,
        count=count,
    )

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 only while the engine serves: 503 while loading, after a failed load, once it stopped."""
        try:
            _engine(app)
        except EdgeReasonError as exc:
            status, body = error_body(exc)
            return JSONResponse(body, status_code=status)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics_text() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        eng = _engine(app)
        base = model_card(eng, eng.name)
        meta = {
            "n_ctx": eng.capabilities.n_ctx,
            "max_sequences": eng.capabilities.max_sequences,
            "reasoning_format": eng.reasoning_format.value,
            # Lets a client render raw prompts itself (the remote backend's exact thinking budgets).
            "chat_template": eng.chat_template,
            "bos_token": eng.info.bos_token,
            "eos_token": eng.info.eos_token,
        }
        adapters = [model_card(eng, name, parent=eng.name) for name in eng.adapter_names]
        return {"object": "list", "data": [{**base, "meta": meta}, *adapters]}

    add_extra_routes(app, lambda: _engine(app), lambda eng: _served_names(eng, settings))

    @app.post("/v1/chat/completions")
    async def chat_completions(req: schemas.ChatCompletionRequest, request: Request) -> Response:
        eng = _engine(app)
        model, fields = _check_model(eng, settings, req.model, req.option_fields())
        # tools, tool_choice, parallel_tool_calls: the engine's chat call takes them (they are no options)
        tool_fields = {k: fields.pop(k) for k in TOOL_FIELDS if k in fields}
        opts = _options(eng, fields)
        timer = metrics.timer(model)
        messages = req.message_dicts()
        stream = await anyio.to_thread.run_sync(lambda: eng.stream(messages, opts, **tool_fields))
        id_, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            events = _sse_chat(stream, opts.n, id_, created, model, include_usage, timer)
            return _sse_response(_keep_alive(events, settings.sse_keepalive_s))
        return await _json_response(request, stream, schemas.chat_completion, id_, created, model, timer)

    @app.post("/v1/completions")
    async def completions(req: schemas.CompletionRequest, request: Request) -> Response:
        eng = _engine(app)
        model, fields = _check_model(eng, settings, req.model, req.option_fields())
        opts = _options(eng, fields)
        timer = metrics.timer(model)
        prompt = req.prompt_text()
        stream = await anyio.to_thread.run_sync(lambda: eng.stream_completion(prompt, opts))
        id_, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            events = _sse_text(stream, id_, created, model, include_usage, timer)
            return _sse_response(_keep_alive(events, settings.sse_keepalive_s))
        return await _json_response(request, stream, schemas.text_completion, id_, created, model, timer)

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(req: schemas.LoadLoraAdapterRequest) -> JSONResponse:
        eng = _engine(app)
        if settings.adapter_dir is None:
            raise AdapterManagementDisabledError(
                "loading adapters at runtime is disabled; start the server with --adapter-dir DIR"
            )
        name = check_adapter_name(req.lora_name, param="lora_name", reserved=_served_names(eng, settings))
        if name in eng.adapter_names:
            raise InvalidRequestError(
                f"adapter {name!r} is already loaded; unload it first to replace it", param="lora_name"
            )
        if len(eng.adapter_names) >= settings.max_adapters:
            raise InvalidRequestError(
                f"{len(eng.adapter_names)} adapters are loaded, the most this server holds "
                f"(--max-adapters {settings.max_adapters}); unload one first",
                param="lora_name",
            )
        path = inside_dir(settings.adapter_dir, req.lora_path, settings.max_adapter_bytes)
        try:
            await anyio.to_thread.run_sync(lambda: eng.load_adapter(name, path))
        except ModelLoadError as exc:  # a bad file is the request's fault; the server goes on serving
            raise InvalidRequestError(str(exc), param="lora_path") from None
        log.info("loaded LoRA adapter %s from %s", name, path)
        return JSONResponse({"status": "ok", "lora_name": name, "lora_path": req.lora_path})

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(req: schemas.UnloadLoraAdapterRequest) -> JSONResponse:
        eng = _engine(app)
        if settings.adapter_dir is None:
            raise AdapterManagementDisabledError(
                "unloading adapters at runtime is disabled; start the server with --adapter-dir DIR"
            )
        await anyio.to_thread.run_sync(lambda: eng.unload_adapter(req.lora_name))
        log.info("unloaded LoRA adapter %s", req.lora_name)
        return JSONResponse({"status": "ok", "lora_name": req.lora_name})

    return app


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _engine(app: FastAPI) -> ServedEngine:
    eng: ServedEngine | None = app.state.engine
    if eng is None:
        failed = app.state.load_error
        raise NotReadyError(
            f"the model failed to load: {failed}" if failed else "the model is still loading; retry shortly"
        )
    stopped = _stopped_reason(eng)
    if stopped is not None:
        raise EngineStoppedError(f"engine stopped: {stopped}")
    return eng


def _stopped_reason(eng: ServedEngine | None) -> str | None:
    return eng.stopped_reason if eng is not None else None


def _route_label(app: FastAPI, scope: Scope) -> str:
    """The route template a request matched ("other" for none): a bounded, unforgeable label."""
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return str(getattr(route, "path", "other"))
    return "other"


def _served_names(eng: ServedEngine, settings: ServerSettings) -> set[str]:
    """Names that select the base model (so no adapter may take them)."""
    names = {eng.name, eng.info.name, *DEFAULT_MODEL_ALIASES}
    if settings.alias:
        names.add(settings.alias)
    return names


def _options(eng: ServedEngine, fields: dict[str, Any]) -> GenerationOptions:
    """Validated options, with the checks that need the loaded model (context size, vocabulary)."""
    opts = GenerationOptions.build(None, fields)
    n_ctx = eng.capabilities.n_ctx
    if opts.repeat_last_n > n_ctx:
        raise InvalidRequestError(
            f"repeat_last_n: {opts.repeat_last_n} is larger than the context ({n_ctx} tokens)",
            param="repeat_last_n",
        )
    n_vocab = eng.info.n_vocab
    for token, _ in opts.logit_bias:
        if token >= n_vocab:
            raise InvalidRequestError(
                f"logit_bias: token id {token} is outside the vocabulary (0-{n_vocab - 1})",
                param="logit_bias",
            )
    return opts


def _check_model(
    eng: ServedEngine, settings: ServerSettings, requested: str | None, fields: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The model name to report and the option fields; unknown names are a 404 (clients spot typos by it).

    A loaded adapter's name selects that adapter over the base model (vLLM-style).
    """
    if requested is None or requested in _served_names(eng, settings):
        return eng.name, fields
    if requested in eng.adapter_names:
        if "adapter" in fields or "adapters" in fields:
            raise InvalidRequestError(
                f"model {requested!r} already selects that adapter; drop adapter/adapters", param="adapters"
            )
        scale = _adapter_scales(settings).get(requested, 1.0)
        return requested, {**fields, "adapters": [{"name": requested, "scale": scale}]}
    raise ModelNotFoundError(f"the model {requested!r} does not exist; this server serves {eng.name!r}")


def _adapter_scales(settings: ServerSettings) -> dict[str, float]:
    return {name: parse_adapter_spec(f"{name}={rest}").scale for name, rest in settings.adapter.items()}


async def _collect(stream: ChatStream, request: Request, timer: RequestTimer) -> ChatResult | None:
    """The whole result; None (and the request cancelled) if the client goes away first."""

    async def drain() -> ChatResult:
        async for _ in aiter_chunks(stream):
            timer.chunk()
        assert stream.result is not None
        return stream.result

    task = asyncio.ensure_future(drain())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                return None
    finally:
        if not task.done():
            stream.cancel()
            task.cancel()


def _sse_response(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=_SSE_HEADERS)


async def _json_response(
    request: Request,
    stream: ChatStream,
    render: Callable[..., dict[str, Any]],
    id_: str,
    created: int,
    model: str,
    timer: RequestTimer,
) -> Response:
    """Wait for the whole result (499 if the client left first) and render it as JSON."""
    result = await _collect(stream, request, timer)
    if result is None:
        return Response(status_code=499)
    timer.finish(result.usage)
    return JSONResponse(render(result, id_=id_, created=created, model=model))


async def _keep_alive(events: AsyncIterator[str], interval: float) -> AsyncIterator[str]:
    """``events``, with an SSE comment after every ``interval`` s of silence (0: none): self-consistency
    and LoRID stream nothing until they finish, and proxies cut idle connections (often after 60 s).

    One pump task drives ``events`` into a queue and one re-arming timer adds the comments: per line
    that is a queue hand-off, not a task and a timed wait per token (the streaming hot path)."""
    if not interval:
        try:
            async for line in events:
                yield line
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        return
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[tuple[str, str | Exception | None]] = asyncio.Queue()
    last = loop.time()  # when the client last got something
    timer: asyncio.TimerHandle | None = None

    async def pump() -> None:
        nonlocal last
        try:
            async for line in events:
                last = loop.time()
                lines.put_nowait(("line", line))
        except Exception as exc:  # re-raised in the response's task, as if iterated there
            lines.put_nowait(("error", exc))
        else:
            lines.put_nowait(("end", None))

    def tick() -> None:
        nonlocal last, timer
        silent = loop.time() - last
        if silent >= interval:
            lines.put_nowait(("line", KEEP_ALIVE_COMMENT))
            last, silent = loop.time(), 0.0
        timer = loop.call_later(interval - silent, tick)

    task = asyncio.ensure_future(pump())
    timer = loop.call_later(interval, tick)
    try:
        while True:
            kind, item = await lines.get()
            if kind == "end":
                return
            if kind == "error":
                assert isinstance(item, Exception)
                raise item
            assert isinstance(item, str)
            yield item
    finally:
        if timer is not None:
            timer.cancel()
        if not task.done():
            task.cancel()  # the inner generator runs its own cleanup (cancels the request)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await events.aclose()  # type: ignore[attr-defined]


def _sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def _stream_events(
    stream: ChatStream,
    timer: RequestTimer,
    head: Callable[[], list[str]],
    piece: Callable[[Chunk], str],
    tail: Callable[[ChatResult], list[str]],
) -> AsyncIterator[str]:
    """SSE lines: ``head``, one ``piece`` per chunk, ``tail``, [DONE]; cancels the request if abandoned."""
    try:
        for line in head():
            yield line
        try:
            async for chunk in aiter_chunks(stream):
                timer.chunk()
                yield piece(chunk)
        except Exception as exc:  # failed mid-stream: the status line is already sent
            yield _sse(error_body(exc)[1])
            yield "data: [DONE]\n\n"
            return
        assert stream.result is not None
        timer.finish(stream.result.usage)
        for line in tail(stream.result):
            yield line
        yield "data: [DONE]\n\n"
    finally:
        if stream.result is None:  # client gone (or server shutting down): free the sequences now
            stream.cancel()


def _chunk_maker(object_: str, id_: str, created: int, model: str, include_usage: bool) -> Callable[..., str]:
    """An SSE line builder for one streamed response (every chunk carries the same envelope)."""

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        body: dict[str, Any] = {
            "id": id_,
            "object": object_,
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": choices,
            **extra,
        }
        if include_usage:
            body.setdefault("usage", None)
        return _sse(body)

    return chunk


def _sse_chat(
    stream: ChatStream, n: int, id_: str, created: int, model: str, include_usage: bool, timer: RequestTimer
) -> AsyncIterator[str]:
    chunk = _chunk_maker("chat.completion.chunk", id_, created, model, include_usage)

    def choice(index: int, delta: dict[str, Any], **rest: Any) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": None, **rest}

    def head() -> list[str]:
        return [chunk([choice(i, {"role": "assistant", "content": ""})]) for i in range(n)]

    streamed: dict[int, int] = {}  # choice -> logprobs its chunks carried

    def piece(c: Chunk) -> str:
        if isinstance(c, ToolCallChunk) and c.call is not None:
            return "".join(chunk([choice(c.index, {"tool_calls": [d]})]) for d in schemas.tool_call_deltas(c))
        key = "reasoning_content" if c.channel == "reasoning" else "content"
        streamed[c.index] = streamed.get(c.index, 0) + len(c.logprobs)
        return chunk([choice(c.index, {key: c.text}, logprobs=schemas.chat_logprobs(c.logprobs or None))])

    def tail(result: ChatResult) -> list[str]:
        lines = [
            chunk(
                [
                    choice(
                        c.index,
                        {},
                        logprobs=schemas.chat_logprobs(
                            (c.logprobs or [])[streamed.get(c.index, 0) :] or None
                        ),
                        finish_reason=schemas.finish_reason(c),
                    )
                ],
                **({"edgereason": schemas.edgereason_report(result)} if c is result.choices[-1] else {}),
            )
            for c in result.choices
        ]
        if include_usage:
            lines.append(chunk([], usage=result.usage.to_dict()))
        return lines

    return _stream_events(stream, timer, head, piece, tail)


def _sse_text(
    stream: ChatStream, id_: str, created: int, model: str, include_usage: bool, timer: RequestTimer
) -> AsyncIterator[str]:
    chunk = _chunk_maker("text_completion", id_, created, model, include_usage)
    streamed: dict[int, tuple[int, int]] = {}  # choice -> (logprobs its chunks carried, their text length)

    def piece(c: Chunk) -> str:
        text, reasoning = (c.text, None) if c.channel == "content" else ("", c.text)
        count, offset = streamed.get(c.index, (0, 0))
        logprobs = schemas.completion_logprobs(c.logprobs or None, offset)
        streamed[c.index] = (count + len(c.logprobs), offset + sum(len(t.token) for t in c.logprobs))
        return chunk(
            [
                {
                    "index": c.index,
                    "text": text,
                    "reasoning_content": reasoning,
                    "logprobs": logprobs,
                    "finish_reason": None,
                }
            ]
        )

    def tail(result: ChatResult) -> list[str]:
        lines = [
            chunk(
                [
                    {
                        "index": c.index,
                        "text": "",
                        "logprobs": schemas.completion_logprobs(
                            (c.logprobs or [])[streamed.get(c.index, (0, 0))[0] :] or None,
                            streamed.get(c.index, (0, 0))[1],
                        ),
                        "finish_reason": schemas.finish_reason(c),
                    }
                ],
                **({"edgereason": schemas.edgereason_report(result)} if c is result.choices[-1] else {}),
            )
            for c in result.choices
        ]
        if include_usage:
            lines.append(chunk([], usage=result.usage.to_dict()))
        return lines

    return _stream_events(stream, timer, list, piece, tail)


# -- running it ------------------------------------------------------------------------------------------
def load_engine(settings: ServerSettings) -> ServedEngine:
    """The engine the settings describe: a local one (a remote model is already a server)."""
    from ..engine import Engine
    from ..loading import is_remote, load_engine

    if is_remote(settings.model):
        raise EdgeReasonError(
            f"edgereason serve runs a local model; {settings.model} is already a server: use it directly, "
            "or er.load() it from Python"
        )
    engine = load_engine(settings.engine_spec())
    assert isinstance(engine, Engine)  # every backend but remote gives the local Engine
    taken = sorted(set(engine.adapter_names) & _served_names(engine, settings))
    if taken:
        engine.close()
        raise EdgeReasonError(
            f"the adapter name {taken[0]!r} is the model's own name (or an alias); rename the adapter"
        )
    return engine


def warn_if_exposed(settings: ServerSettings) -> None:
    """A loud warning for a server other machines can reach with no API key."""
    if not is_loopback(settings.host) and settings.api_key is None:
        log.warning(
            "!!! binding %s without an API key: anyone who can reach this address can run generations "
            "and load or unload adapters. Set --api-key KEY (or EDGEREASON_API_KEY), or bind 127.0.0.1 !!!",
            settings.host,
        )


def watch_engine(
    app: FastAPI,
    on_stopped: Callable[[str], None],
    done: threading.Event,
    interval: float = WATCHDOG_INTERVAL_S,
) -> None:
    """Call ``on_stopped(reason)`` once the app's engine reports that it stopped (died or wedged)."""
    while not done.wait(interval):
        reason = _stopped_reason(app.state.engine)
        if reason is not None:
            on_stopped(reason)
            return


def serve(settings: ServerSettings) -> int:
    """Start the HTTP server at once (/health says 503) and load the model behind it.

    Returns 0 after a normal shutdown, ``EXIT_ENGINE_STOPPED`` (3) when the engine stopped (its thread
    died or wedged): /health turns 503 at once and the process exits, so a supervisor restarts it.
    """
    import uvicorn

    warn_if_exposed(settings)
    app = create_app(None, settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)

    def load() -> None:
        try:
            app.state.engine = load_engine(settings)
            log.info(
                "model %s loaded; serving on http://%s:%d",
                app.state.engine.name,
                settings.host,
                settings.port,
            )
        except Exception as exc:  # noqa: BLE001 - reported by the command after the server stops
            app.state.load_error = exc
            server.should_exit = True

    stopped: list[str] = []

    def on_stopped(reason: str) -> None:
        log.critical(
            "engine stopped: %s; shutting down with exit status %d so a supervisor can restart the server",
            strip_paths(reason),
            EXIT_ENGINE_STOPPED,
        )
        stopped.append(reason)
        server.should_exit = True

    done = threading.Event()
    loader = threading.Thread(target=load, name="edgereason-load", daemon=True)
    watchdog = threading.Thread(
        target=watch_engine, args=(app, on_stopped, done), name="edgereason-watchdog", daemon=True
    )
    loader.start()
    watchdog.start()
    try:
        server.run()
    finally:
        done.set()
        loader.join()
        # A wedged engine thread may still be inside the backend: leave it to process exit.
        if app.state.engine is not None and not stopped:
            app.state.engine.close()
    if isinstance(app.state.load_error, BaseException):
        raise app.state.load_error
    return EXIT_ENGINE_STOPPED if stopped else 0
