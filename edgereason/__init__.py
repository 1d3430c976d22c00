"""EdgeReason: an on-device runtime for distilled reasoning models.

import edgereason as er
engine = er.load()                       # the embedded default model
res = engine.chat([{"role": "user", "content": "What is 12 + 7?"}], max_tokens=256)
"""

from __future__ import annotations

import os
from pathlib import Path

from .engine import Engine
from .errors import (
    ChatTemplateError,
    ContextOverflowError,
    EdgeReasonError,
    InvalidRequestError,
    ModelLoadError,
    UnknownAdapterError,
)
from .options import GenerationOptions, SelfConsistencyOptions
from .result import ChatResult, Choice, Chunk, Usage

__version__ = "0.1.0"

__all__ = [
    "ChatResult",
    "ChatTemplateError",
    "Choice",
    "Chunk",
    "ContextOverflowError",
    "EdgeReasonError",
    "Engine",
    "GenerationOptions",
    "InvalidRequestError",
    "ModelLoadError",
    "SelfConsistencyOptions",
    "UnknownAdapterError",
    "Usage",
    "load",
]


def load(
    model: str | os.PathLike[str] | None = None,
    *,
    n_ctx: int | None = None,
    threads: int | None = None,
    max_sequences: int | None = None,
    adapters: dict[str, str | os.PathLike[str]] | None = None,
    chat_template: str | None = None,
    reasoning_format: str | None = None,
    backend: str = "auto",
) -> Engine:
    """Load a model and start an engine for it.

    ``model``: None or "default" for the embedded SmolLM2-135M-Instruct, a GGUF path, or a name in
    ``$EDGEREASON_MODELS_DIR``. ``adapters``: LoRA adapter GGUFs by name.
    """
    from .backends.llama_cpp import DEFAULT_MAX_SEQUENCES, LlamaCppBackend
    from .models import resolve_model

    if backend not in ("auto", "llama.cpp"):
        raise InvalidRequestError(f"unknown backend {backend!r}; available: auto, llama.cpp", param="backend")
    path = resolve_model(model)
    be = LlamaCppBackend(
        path,
        n_ctx=n_ctx,
        threads=threads,
        max_sequences=max_sequences or DEFAULT_MAX_SEQUENCES,
        adapters={k: Path(v) for k, v in (adapters or {}).items()},
    )
    try:
        return Engine(be, chat_template=chat_template, reasoning_format=reasoning_format)
    except BaseException:
        be.close()
        raise
