"""The gate every HTTP request passes before a route sees it.

In order: the ``Host`` header against the names the server answers to (DNS rebinding), the ``Origin``
against ``--cors-origin`` (a web page the user visits must not drive the server), the API key on /v1,
``Content-Type: application/json`` on POST, and the body read in full under ``--max-body-mb`` (no
Content-Length trusted) and checked for lone UTF-16 surrogates before any JSON parsing by the route.
Each refusal is an OpenAI-shaped error; every request is counted under its route template.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import InvalidRequestError
from .errors import (
    AuthenticationError,
    ForbiddenError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    error_body,
)

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
CORS_ALLOW_HEADERS = "Authorization, Content-Type, OpenAI-Organization, OpenAI-Project, X-Stainless-Lang"
CORS_MAX_AGE_S = 600
KEYED_PREFIXES = ("/v1", "/tokenize", "/detokenize", "/props")
DRAIN_MAX_BYTES = 64 * 2**20  # a refused body is read and dropped up to this much, then the connection closes
# A \uD800-\uDFFF escape in the raw body: only then is it worth parsing to look for a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host part of a Host header (``[::1]:8000`` -> ``::1``), lower case, without a trailing dot."""
    header = header.strip().lower()
    if header.startswith("["):
        name = header[1 : header.find("]")] if "]" in header else header[1:]
    else:
        name = header.rsplit(":", 1)[0] if header.count(":") == 1 else header
    return name.rstrip(".")


def allowed_hosts(bind: str, extra: Iterable[str]) -> frozenset[str] | None:
    """Host names accepted for a server bound to ``bind``; None accepts any Host.

    Loopback binds answer only to loopback names (a DNS-rebinding page cannot reach them); other binds
    accept any Host unless ``--allowed-host`` names them.
    """
    names = {host_name(h) for h in extra}
    if is_loopback(bind):
        return frozenset(LOOPBACK_NAMES | {host_name(bind)} | names)
    if not names:
        return None
    return frozenset(LOOPBACK_NAMES | {host_name(bind)} | names)


def _lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= ch <= "\udfff" for ch in value)
    if isinstance(value, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_lone_surrogate(v) for v in value)
    return False


class Gate:
    """ASGI middleware; see the module docstring for what it checks, in order."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None,
        hosts: frozenset[str] | None,
        cors_origins: frozenset[str],
        max_body_bytes: int,
        count: Callable[[Scope, int], None],
    ) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.hosts = hosts
        self.cors_any = "*" in cors_origins
        self.cors_origins = cors_origins - {"*"}
        self.max_body = max_body_bytes
        self.count = count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        cors: dict[str, str] = {}

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if cors:
                    message["headers"] = [
                        *message.get("headers", []),
                        *((k.lower().encode(), v.encode()) for k, v in cors.items()),
                    ]
            await send(message)

        try:
            headers = _headers(scope)
            refusal = self._check_host(headers)
            if refusal is None:
                refusal, cors = self._check_origin(headers)
            if refusal is not None:
                await _refuse(refusal, scope, receive, tracking_send)
                return
            if scope["method"] == "OPTIONS" and "origin" in headers:  # a CORS preflight we allow
                await Response(status_code=204, headers=_preflight_headers())(scope, receive, tracking_send)
                return
            if self.key is not None and _needs_key(scope["path"]) and not self._authorized(headers):
                refusal = AuthenticationError(
                    "invalid or missing API key; send 'Authorization: Bearer <key>'"
                )
                await _refuse(refusal, scope, receive, tracking_send, {"WWW-Authenticate": "Bearer"})
                return
            if scope["method"] == "POST":
                body, refusal = await self._read_body(headers, receive)
                if refusal is not None:
                    await _refuse(refusal, scope, receive, tracking_send, {"Connection": "close"})
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, tracking_send)
        finally:
            self.count(scope, status)

    def _check_host(self, headers: dict[str, str]) -> Exception | None:
        if self.hosts is None or "host" not in headers:  # HTTP/1.0 clients may omit it; browsers never do
            return None
        if host_name(headers["host"]) in self.hosts:
            return None
        return ForbiddenError(
            f"Host {headers['host'][:100]!r} is not allowed; start the server with --allowed-host NAME "
            "to answer to that name",
            code="host_not_allowed",
        )

    def _check_origin(self, headers: dict[str, str]) -> tuple[Exception | None, dict[str, str]]:
        origin = headers.get("origin")
        if origin is None:
            return None, {}
        origin = origin.strip().rstrip("/").lower()
        if self.cors_any or origin in self.cors_origins:
            return None, {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        # Same origin (a page this server served, e.g. /docs): the Host already passed its check.
        if "host" in headers and origin.split("://", 1)[-1] == headers["host"].strip().lower():
            return None, {}
        return ForbiddenError(
            f"requests from web origin {origin[:100]!r} are not allowed; start the server with "
            "--cors-origin ORIGIN to allow a web app",
            code="origin_not_allowed",
        ), {}

    def _authorized(self, headers: dict[str, str]) -> bool:
        assert self.key is not None
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.key)

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> tuple[bytes, Exception | None]:
        media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            await _discard(receive)
            return b"", UnsupportedMediaTypeError(
                f"send the body as JSON with 'Content-Type: application/json' (got {media or 'none'!r}); "
                "with curl use --json or -H 'Content-Type: application/json'"
            )
        too_large = PayloadTooLargeError(
            f"the request body is larger than {self.max_body / 2**20:g} MB; start the server with a "
            "larger --max-body-mb"
        )
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            await _discard(receive)
            return b"", too_large
        parts: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            size += len(chunk)
            if size > self.max_body:
                if more:
                    await _discard(receive)
                return b"", too_large
            parts.append(chunk)
        body = b"".join(parts)
        if _SURROGATE_ESCAPE.search(body):
            try:
                lone = _lone_surrogate(json.loads(body))
            except (ValueError, RecursionError):
                lone = False  # the route reports invalid (or too deeply nested) JSON
            if lone:
                return b"", InvalidRequestError(
                    "the request body contains a lone UTF-16 surrogate (\\ud800-\\udfff) in a string; "
                    "send valid Unicode"
                )
        return body, None


async def _discard(receive: Receive, budget: int = DRAIN_MAX_BYTES) -> None:
    """Read and drop the rest of a refused body (up to ``budget``) so the client can read our answer:
    most clients send the whole body before they look at the response."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        budget -= len(message.get("body", b""))


def _needs_key(path: str) -> bool:
    """/v1 and llama-server's model routes need the API key; /health, /metrics, /version do not."""
    return path.startswith(KEYED_PREFIXES)


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _preflight_headers() -> dict[str, str]:
    return {
        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
        "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
        "Access-Control-Max-Age": str(CORS_MAX_AGE_S),
    }


async def _refuse(
    exc: Exception, scope: Scope, receive: Receive, send: Send, headers: dict[str, str] | None = None
) -> None:
    status, body = error_body(exc)
    await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that yields the already-read body once, then the client's own messages (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
