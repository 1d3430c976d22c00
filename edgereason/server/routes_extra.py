"""The routes clients probe beside the OpenAI ones: one model by id, llama-server's /tokenize,
/detokenize and /props, and /version. Field names follow llama-server's answers (checked against
the llama-server built from the same llama.cpp)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from ..errors import InvalidRequestError
from ..options import GenerationOptions
from .errors import ModelNotFoundError

if TYPE_CHECKING:
    from ..surface import ServedEngine

OWNED_BY = "edgereason"
MAX_TOKENIZE_CHARS = 1 << 22  # the body limit caps it too; this keeps one tokenize call bounded
LLAMA_DEFAULT_SEED = 2**32 - 1  # llama-server's "random seed" value in /props


class TokenizeRequest(BaseModel):
    """llama-server's ``POST /tokenize`` body."""

    model_config = ConfigDict(extra="forbid")

    content: str = Field(default="", max_length=MAX_TOKENIZE_CHARS)
    add_special: bool = Field(default=False, description="add BOS (when the model adds one)")
    parse_special: bool = Field(default=True, description="control-token text becomes control tokens")
    with_pieces: bool = Field(default=False, description="answer [{id, piece}] instead of [id]")


class DetokenizeRequest(BaseModel):
    """llama-server's ``POST /detokenize`` body."""

    model_config = ConfigDict(extra="forbid")

    tokens: list[int] = Field(default_factory=list)


def model_card(eng: ServedEngine, model_id: str, **extra: Any) -> dict[str, Any]:
    """One ``/v1/models`` entry (OpenAI's shape); ``created`` is when the engine was loaded."""
    return {"id": model_id, "object": "model", "created": eng.created, "owned_by": OWNED_BY, **extra}


def add_extra_routes(
    app: FastAPI,
    engine: Callable[[], ServedEngine],
    served_names: Callable[[ServedEngine], set[str]],
) -> None:
    """Register the routes on ``app``; ``engine()`` returns the serving engine or raises (503)."""

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> dict[str, Any]:
        eng = engine()
        if model_id in served_names(eng):
            return model_card(eng, model_id)
        if model_id in eng.adapter_names:
            return model_card(eng, model_id, parent=eng.name)
        raise ModelNotFoundError(f"the model {model_id!r} does not exist; this server serves {eng.name!r}")

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest) -> dict[str, Any]:
        eng = engine()
        tokenizer = eng.tokenizer
        add_bos = req.add_special and eng.info.add_bos
        tokens = await anyio.to_thread.run_sync(
            lambda: tokenizer.tokenize(req.content, add_bos=add_bos, special=req.parse_special)
        )
        if not req.with_pieces:
            return {"tokens": tokens}
        piece = _piece_bytes(eng)
        return {"tokens": [{"id": t, "piece": _piece(piece(t))} for t in tokens]}

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest) -> dict[str, Any]:
        eng = engine()
        n_vocab = eng.info.n_vocab
        bad = next((t for t in req.tokens if not 0 <= t < n_vocab), None)
        if bad is not None:
            raise InvalidRequestError(
                f"tokens: {bad} is outside the vocabulary (0-{n_vocab - 1})", param="tokens"
            )
        piece = _piece_bytes(eng)
        return {"content": b"".join(piece(t) for t in req.tokens).decode("utf-8", errors="replace")}

    @app.get("/props")
    async def props() -> dict[str, Any]:
        eng = engine()
        n_ctx = eng.capabilities.n_ctx
        return {
            "default_generation_settings": {"params": default_params(eng), "n_ctx": n_ctx},
            "total_slots": eng.capabilities.max_sequences,
            "model_alias": eng.name,
            # The file's name only: clients show it; the server's layout stays private.
            "model_path": Path(eng.info.path).name if eng.info.path is not None else eng.name,
            "model_ftype": eng.info.quantization,
            "chat_template": eng.chat_template or "",
            "bos_token": eng.info.bos_token,
            "eos_token": eng.info.eos_token,
            "modalities": {"vision": False, "audio": False},
            "build_info": f"edgereason-{__version__}",
            "edgereason": {
                "reasoning_format": eng.reasoning_format.value,
                "backend": eng.info.format,
                "adapters": eng.adapter_names,
            },
        }

    @app.get("/version")
    async def version() -> dict[str, Any]:
        """Answers while the model loads too (no engine needed)."""
        return {"version": __version__, "llama_cpp_python": _dist_version("llama-cpp-python")}


def default_params(eng: ServedEngine) -> dict[str, Any]:
    """A request's sampling defaults, under llama-server's /props names."""
    d = GenerationOptions()
    return {
        "seed": LLAMA_DEFAULT_SEED if d.seed is None else d.seed,
        "temperature": d.temperature,
        "top_k": d.top_k,
        "top_p": d.top_p,
        "min_p": d.min_p,
        "repeat_last_n": d.repeat_last_n,
        "repeat_penalty": d.repeat_penalty,
        "presence_penalty": d.presence_penalty,
        "frequency_penalty": d.frequency_penalty,
        "max_tokens": -1 if d.max_tokens is None else d.max_tokens,
        "n_predict": -1 if d.max_tokens is None else d.max_tokens,
        "ignore_eos": d.ignore_eos,
        "stream": False,
        "n_probs": d.top_logprobs,
        "reasoning_format": eng.reasoning_format.value,
    }


def _piece_bytes(eng: ServedEngine) -> Callable[[int], bytes]:
    """A token's bytes, control tokens written out (llama-server's pieces)."""
    return eng.tokenizer.special_piece


def _piece(raw: bytes) -> str | list[int]:
    """llama-server's piece: the text when the bytes are valid UTF-8, else the byte values."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
