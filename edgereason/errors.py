"""Errors a user should see. Each says what went wrong and how to fix it.

Surfaces map these *types* to their own form: the CLI prints one line and exits 2,
the server maps them to OpenAI-shaped JSON (see ``server`` for the table).
"""

from __future__ import annotations


class EdgeReasonError(Exception):
    """Base of every error EdgeReason raises on purpose."""


class ModelLoadError(EdgeReasonError):
    """A model path is missing, not a model, truncated, or otherwise unloadable."""


class InvalidRequestError(EdgeReasonError):
    """A request or option value is invalid. ``param`` names the offending field when known."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ContextOverflowError(InvalidRequestError):
    """The prompt does not fit in the model's context window."""

    def __init__(self, n_prompt_tokens: int, n_ctx: int, *, at_least: bool = False) -> None:
        super().__init__(
            f"the prompt has {'at least ' if at_least else ''}{n_prompt_tokens} tokens but the context "
            f"holds {n_ctx}; "
            "shorten the prompt or load the model with a larger n_ctx",
            param="messages",
        )
        self.n_prompt_tokens = n_prompt_tokens
        self.n_ctx = n_ctx


class ChatTemplateError(EdgeReasonError):
    """The model has no usable chat template, or rendering it failed."""


class UnknownAdapterError(EdgeReasonError):
    """A request named a LoRA adapter that is not loaded."""


class CapacityError(EdgeReasonError):
    """The engine's queue is full; retry later."""


class EngineStoppedError(EdgeReasonError):
    """The engine thread died or is wedged: it takes no more work (restart the process or reload)."""


class MissingExtraError(EdgeReasonError):
    """An optional dependency is not installed."""

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(f"{what} needs the '{extra}' extra: pip install 'edgereason[{extra}]'")
        self.extra = extra
