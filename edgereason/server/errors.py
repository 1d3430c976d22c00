"""Exceptions to OpenAI-shaped JSON, by type, in one table."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    CapacityError,
    ChatTemplateError,
    ContextOverflowError,
    EdgeReasonError,
    EngineStoppedError,
    InvalidRequestError,
    ModelLoadError,
    UnknownAdapterError,
)

log = logging.getLogger(__name__)


class AuthenticationError(EdgeReasonError):
    """The request's API key is missing or wrong."""


class ModelNotFoundError(EdgeReasonError):
    """The request named a model this server does not serve."""

    def __init__(self, message: str, param: str | None = "model") -> None:
        super().__init__(message)
        self.param = param


class AdapterManagementDisabledError(EdgeReasonError):
    """Runtime adapter loading was asked for but the server has no --adapter-dir."""


class NotReadyError(EdgeReasonError):
    """The model is still loading (or failed to load)."""


class ForbiddenError(EdgeReasonError):
    """A foreign web Origin or an unknown Host header (cross-site requests, DNS rebinding)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class PayloadTooLargeError(EdgeReasonError):
    """The request body is over --max-body-mb."""


class UnsupportedMediaTypeError(EdgeReasonError):
    """A POST body that is not declared as JSON."""


@dataclass(frozen=True)
class ErrorKind:
    status: int
    type: str
    code: str | None


# First match wins, so subclasses come before their bases.
ERROR_TABLE: tuple[tuple[type[BaseException], ErrorKind], ...] = (
    (ContextOverflowError, ErrorKind(400, "exceed_context_size_error", "context_length_exceeded")),
    (InvalidRequestError, ErrorKind(400, "invalid_request_error", None)),
    (ChatTemplateError, ErrorKind(400, "invalid_request_error", "chat_template_error")),
    # OpenAI answers a wrong key with type invalid_request_error, code invalid_api_key.
    (AuthenticationError, ErrorKind(401, "invalid_request_error", "invalid_api_key")),
    (ModelNotFoundError, ErrorKind(404, "invalid_request_error", "model_not_found")),
    (UnknownAdapterError, ErrorKind(404, "invalid_request_error", "model_not_found")),
    (AdapterManagementDisabledError, ErrorKind(404, "not_found_error", "lora_runtime_disabled")),
    (ForbiddenError, ErrorKind(403, "permission_error", None)),
    (PayloadTooLargeError, ErrorKind(413, "invalid_request_error", "request_too_large")),
    (UnsupportedMediaTypeError, ErrorKind(415, "invalid_request_error", "unsupported_media_type")),
    (CapacityError, ErrorKind(429, "rate_limit_error", "rate_limit_exceeded")),
    (NotReadyError, ErrorKind(503, "unavailable_error", "model_loading")),
    (EngineStoppedError, ErrorKind(503, "unavailable_error", "engine_stopped")),
    (ModelLoadError, ErrorKind(503, "unavailable_error", "model_load_failed")),
)
SERVER_ERROR = ErrorKind(500, "server_error", None)


def error_kind(exc: BaseException) -> ErrorKind:
    for cls, kind in ERROR_TABLE:
        if isinstance(exc, cls):
            return kind
    return SERVER_ERROR


# An absolute POSIX path of two or more parts (not a URL's path, not "a/b" inside a word, not a route).
_ABS_PATH = re.compile(r"(?<![\w:/.~-])/(?!v1/)(?:[^\s'\"/]+/)+([^\s'\"/]*)")


def strip_paths(message: str) -> str:
    """``message`` with absolute server paths cut to their last part: clients never learn the layout."""
    return _ABS_PATH.sub(lambda m: m.group(1) or "<dir>", message)


def error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The status and ``{"error": {...}}`` body for ``exc``."""
    kind = error_kind(exc)
    message = strip_paths(str(exc)) if isinstance(exc, EdgeReasonError) else "internal server error"
    err: dict[str, Any] = {
        "message": message,
        "type": kind.type,
        "param": getattr(exc, "param", None),
        "code": exc.code if isinstance(exc, ForbiddenError) else kind.code,
    }
    if isinstance(exc, ContextOverflowError):
        err["n_prompt_tokens"], err["n_ctx"] = exc.n_prompt_tokens, exc.n_ctx
    return kind.status, {"error": err}


def error_response(exc: BaseException, retry_after: int = 1) -> JSONResponse:
    status, body = error_body(exc)
    if status >= 500 and status != 503:
        log.error("request failed", exc_info=exc)
    headers = {"Retry-After": str(retry_after)} if status in (429, 503) else None
    return JSONResponse(body, status_code=status, headers=headers)


def validation_message(exc: RequestValidationError) -> InvalidRequestError:
    """FastAPI's 422 report as one 400 line naming the first bad field (body prefix dropped)."""
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return InvalidRequestError(
            f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".rstrip(": ")
        )
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid request")
    if first.get("type") == "model_attributes_type" and not loc:
        msg = "the request body must be a JSON object"
    return InvalidRequestError(f"{param}: {msg}" if param else msg, param=param)


def install_error_handlers(app: FastAPI) -> None:
    retry_after = app.state.settings.retry_after

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_message(exc))

    async def on_edgereason(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, retry_after)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(
            exc.status_code, "invalid_request_error"
        )
        body = {"error": {"message": str(exc.detail), "type": kind, "param": None, "code": None}}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, retry_after)

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(EdgeReasonError, on_edgereason)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
