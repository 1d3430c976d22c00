"""EdgeReason: an on-device runtime for distilled reasoning models.

import edgereason as er
engine = er.load()                       # the embedded default model
res = engine.chat([{"role": "user", "content": "What is 12 + 7?"}], max_tokens=256)
"""

from __future__ import annotations

from .engine import Engine
from .errors import (
    ChatTemplateError,
    ContextOverflowError,
    EdgeReasonError,
    InvalidRequestError,
    ModelLoadError,
    UnknownAdapterError,
)
from .loading import BACKENDS, REMOTE_SCHEME, REMOTE_SCHEMES, EngineSpec, load, load_engine, pick_backend
from .options import GenerationOptions, SelfConsistencyOptions
from .result import ChatResult, Choice, Chunk, Usage
from .surface import ChatEngine

__version__ = "0.1.0"

__all__ = [
    "REMOTE_SCHEME",
    "REMOTE_SCHEMES",
    "ChatResult",
    "ChatTemplateError",
    "Choice",
    "ChatEngine",
    "Chunk",
    "ContextOverflowError",
    "EdgeReasonError",
    "Engine",
    "EngineSpec",
    "BACKENDS",
    "GenerationOptions",
    "InvalidRequestError",
    "ModelLoadError",
    "SelfConsistencyOptions",
    "UnknownAdapterError",
    "Usage",
    "load",
    "load_engine",
    "pick_backend",
]
