"""EdgeReason: an on-device runtime for distilled reasoning models.

import edgereason as er
engine = er.load()                       # the embedded default model
res = engine.chat([{"role": "user", "content": "What is 12 + 7?"}], max_tokens=256)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, cast

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

if TYPE_CHECKING:
    from .backends.base import Backend

__version__ = "0.1.0"

__all__ = [
    "ChatResult",
    "ChatTemplateError",
    "Choice",
    "Chunk",
    "ContextOverflowError",
    "EdgeReasonError",
    "Engine",
    "BACKENDS",
    "GenerationOptions",
    "InvalidRequestError",
    "ModelLoadError",
    "SelfConsistencyOptions",
    "UnknownAdapterError",
    "Usage",
    "load",
    "pick_backend",
]


BACKENDS = ("auto", "llama.cpp", "mlx", "onnx", "remote")
REMOTE_SCHEME = "openai://"
REMOTE_SCHEMES = (REMOTE_SCHEME, "openai+http://", "openai+https://")


def pick_backend(model: str | os.PathLike[str] | None, backend: str = "auto") -> str:
    """The backend for ``model``: ``backend`` itself, or with "auto" the one its artefact needs.

    ``.gguf`` -> llama.cpp; a folder with ``genai_config.json`` -> onnx; a folder with ``config.json``
    and ``*.safetensors`` -> mlx; ``openai://HOST:PORT/MODEL`` -> remote.
    """
    if backend not in BACKENDS:
        raise InvalidRequestError(
            f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}", param="backend"
        )
    is_url = model is not None and str(model).startswith(REMOTE_SCHEMES)
    if is_url or backend == "remote":
        if not is_url:
            raise InvalidRequestError(
                f"the remote backend needs a model URL like {REMOTE_SCHEME}HOST:PORT/MODEL", param="model"
            )
        if backend not in ("auto", "remote"):
            raise InvalidRequestError(
                f"{model} is a remote model; use backend='remote' or 'auto'", param="backend"
            )
        return "remote"
    if backend != "auto":
        return backend
    from .models import resolve_model

    path = resolve_model(model)
    if not path.is_dir():
        return "llama.cpp"  # read_gguf_info explains what is wrong with any other file
    if (path / "genai_config.json").is_file():
        return "onnx"
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return "mlx"
    raise ModelLoadError(
        f"{path} is a folder but no model format EdgeReason runs: expected genai_config.json (ONNX) "
        "or config.json with *.safetensors (MLX); for GGUF give the .gguf file"
    )


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
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
) -> Engine:
    """Load a model and start an engine for it.

    ``model``: None or "default" for the embedded SmolLM2-135M-Instruct, a GGUF path, an MLX or
    onnxruntime-genai folder, ``openai://HOST:PORT/MODEL`` for a remote OpenAI-compatible server, or a
    name in ``$EDGEREASON_MODELS_DIR`` (for ``openai://`` the engine is a ``RemoteEngine``, which serves
    the same request API). ``backend``: one of ``BACKENDS`` ("auto" picks by artefact).
    ``adapters``: LoRA adapters by name (GGUF files for llama.cpp, mlx-lm adapter folders for MLX).
    ``cache_type_k``/``cache_type_v``: the llama.cpp KV cache types (f16, q8_0, q4_0; llama-server's
    ``--cache-type-k/-v``); a quantised V cache turns flash attention on.
    """
    kind = pick_backend(model, backend)
    if kind == "remote":
        from .remote import DEFAULT_PARALLEL as DEFAULT_REMOTE_PARALLEL
        from .remote import load_remote

        if adapters:
            raise InvalidRequestError(
                "a remote server loads its own adapters; name one per request with adapter=", param="adapters"
            )
        remote = load_remote(
            str(model),
            chat_template=chat_template,
            reasoning_format=reasoning_format,
            parallel=max_sequences or DEFAULT_REMOTE_PARALLEL,
        )
        # RemoteEngine has Engine's request API (chat, stream, complete, stream_completion, render, close).
        return cast(Engine, remote)
    from .models import preset_for

    wanted: dict[str, str | Path] = {k: Path(v) for k, v in (adapters or {}).items()}
    preset = preset_for(model)
    default_adapters: tuple[tuple[str, float], ...] = ()
    if preset is not None:
        if kind != "llama.cpp":
            raise InvalidRequestError(
                f"{preset.name!r} is a GGUF model; use backend='llama.cpp'", param="backend"
            )
        wanted = {**preset.adapters, **wanted}
        default_adapters = ((preset.default_adapter, 1.0),)
        reasoning_format = reasoning_format or preset.reasoning_format
    if kind != "llama.cpp" and (cache_type_k, cache_type_v) != ("f16", "f16"):
        raise InvalidRequestError(
            f"KV cache types apply to the llama.cpp backend, not {kind}", param="cache_type_k"
        )
    be = _load_backend(kind, model, n_ctx, threads, max_sequences, wanted, (cache_type_k, cache_type_v))
    try:
        return Engine(
            be,
            chat_template=chat_template,
            reasoning_format=reasoning_format,
            name=preset.name if preset is not None else None,
            default_adapters=default_adapters,
        )
    except BaseException:
        be.close()
        raise


def _load_backend(
    kind: str,
    model: str | os.PathLike[str] | None,
    n_ctx: int | None,
    threads: int | None,
    max_sequences: int | None,
    adapters: dict[str, str | Path],
    cache_types: tuple[str, str] = ("f16", "f16"),
) -> Backend:
    from .models import resolve_model

    path = resolve_model(model)
    if kind == "mlx":
        from .backends.mlx import DEFAULT_MAX_SEQUENCES as MLX_SEQUENCES
        from .backends.mlx import MlxBackend

        if path.suffix == ".gguf":
            raise ModelLoadError(
                f"{path} is a GGUF file; the MLX backend loads MLX folders (backend='llama.cpp')"
            )
        return MlxBackend(path, n_ctx=n_ctx, adapters=adapters, max_sequences=max_sequences or MLX_SEQUENCES)
    if kind == "onnx":
        from .backends.onnx import DEFAULT_MAX_SEQUENCES as ONNX_SEQUENCES
        from .backends.onnx import OnnxBackend

        if path.suffix == ".gguf":
            raise ModelLoadError(
                f"{path} is a GGUF file; the ONNX backend loads genai folders (backend='llama.cpp')"
            )
        return OnnxBackend(
            path,
            n_ctx=n_ctx,
            threads=threads,
            adapters=adapters,
            max_sequences=max_sequences or ONNX_SEQUENCES,
        )
    from .backends.llama_cpp import DEFAULT_MAX_SEQUENCES as GGUF_SEQUENCES
    from .backends.llama_cpp import LlamaCppBackend

    if path.is_dir():
        raise ModelLoadError(
            f"{path} is a folder; the llama.cpp backend loads .gguf files (try backend='auto')"
        )
    return LlamaCppBackend(
        path,
        n_ctx=n_ctx,
        threads=threads,
        adapters=adapters,
        max_sequences=max_sequences or GGUF_SEQUENCES,
        cache_type_k=cache_types[0],
        cache_type_v=cache_types[1],
    )
