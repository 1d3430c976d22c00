"""Loading a model: the backend registry, ``load()`` (the Python API) and ``load_engine()`` (what the
CLI commands and ``edgereason serve`` load from their flags and settings).

A local backend is one registry entry: the artefact format it runs (``models.artefact_format`` tells
a path's format) and how to open it. Everything that lists backends (``--backend`` choices, serve's
settings, ``bench backends``) reads ``BACKENDS`` from here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import EdgeReasonError, InvalidRequestError, ModelLoadError

if TYPE_CHECKING:
    from .backends.base import Backend
    from .surface import ChatEngine

REMOTE_BACKEND = "remote"
REMOTE_SCHEME = "openai://"
REMOTE_SCHEMES = (REMOTE_SCHEME, "openai+http://", "openai+https://")


@dataclass(frozen=True)
class BackendOptions:
    """What a local backend is opened with (None: the backend's default)."""

    n_ctx: int | None = None
    threads: int | None = None
    max_sequences: int | None = None
    adapters: Mapping[str, str | Path] = field(default_factory=dict)
    cache_types: tuple[str, str] = ("f16", "f16")


@dataclass(frozen=True)
class BackendEntry:
    """One local backend: ``format`` is the artefact it runs (``ModelInfo.format``), ``open`` makes it."""

    name: str
    format: str
    open: Callable[[Path, BackendOptions], Backend]
    kv_cache_types: bool = False  # takes cache_type_k/cache_type_v


def _open_llama_cpp(path: Path, o: BackendOptions) -> Backend:
    from .backends.llama_cpp import DEFAULT_MAX_SEQUENCES, LlamaCppBackend

    if path.is_dir():
        raise ModelLoadError(
            f"{path} is a folder; the llama.cpp backend loads .gguf files (try backend='auto')"
        )
    return LlamaCppBackend(
        path,
        n_ctx=o.n_ctx,
        threads=o.threads,
        adapters=o.adapters,
        max_sequences=o.max_sequences or DEFAULT_MAX_SEQUENCES,
        cache_type_k=o.cache_types[0],
        cache_type_v=o.cache_types[1],
    )


def _open_mlx(path: Path, o: BackendOptions) -> Backend:
    from .backends.mlx import DEFAULT_MAX_SEQUENCES, MlxBackend

    if path.suffix == ".gguf":
        raise ModelLoadError(
            f"{path} is a GGUF file; the MLX backend loads MLX folders (backend='llama.cpp')"
        )
    return MlxBackend(
        path, n_ctx=o.n_ctx, adapters=dict(o.adapters), max_sequences=o.max_sequences or DEFAULT_MAX_SEQUENCES
    )


def _open_onnx(path: Path, o: BackendOptions) -> Backend:
    from .backends.onnx import DEFAULT_MAX_SEQUENCES, OnnxBackend

    if path.suffix == ".gguf":
        raise ModelLoadError(
            f"{path} is a GGUF file; the ONNX backend loads genai folders (backend='llama.cpp')"
        )
    return OnnxBackend(
        path,
        n_ctx=o.n_ctx,
        threads=o.threads,
        adapters=dict(o.adapters),
        max_sequences=o.max_sequences or DEFAULT_MAX_SEQUENCES,
    )


LOCAL_BACKENDS: dict[str, BackendEntry] = {
    e.name: e
    for e in (
        BackendEntry("llama.cpp", "gguf", _open_llama_cpp, kv_cache_types=True),
        BackendEntry("mlx", "mlx", _open_mlx),
        BackendEntry("onnx", "onnx", _open_onnx),
    )
}
BACKENDS = ("auto", *LOCAL_BACKENDS, REMOTE_BACKEND)


def is_remote(model: str | os.PathLike[str] | None) -> bool:
    return model is not None and str(model).startswith(REMOTE_SCHEMES)


def pick_backend(model: str | os.PathLike[str] | None, backend: str = "auto") -> str:
    """The backend for ``model``: ``backend`` itself, or with "auto" the one its artefact needs.

    ``.gguf`` -> llama.cpp; a folder with ``genai_config.json`` -> onnx; a folder with ``config.json``
    and ``*.safetensors`` -> mlx; ``openai://HOST:PORT/MODEL`` -> remote.
    """
    if backend not in BACKENDS:
        raise InvalidRequestError(
            f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}", param="backend"
        )
    if is_remote(model) or backend == REMOTE_BACKEND:
        if not is_remote(model):
            raise InvalidRequestError(
                f"the remote backend needs a model URL like {REMOTE_SCHEME}HOST:PORT/MODEL", param="model"
            )
        if backend not in ("auto", REMOTE_BACKEND):
            raise InvalidRequestError(
                f"{model} is a remote model; use backend='remote' or 'auto'", param="backend"
            )
        return REMOTE_BACKEND
    if backend != "auto":
        return backend
    from .models import artefact_format, resolve_model

    path = resolve_model(model)
    fmt = artefact_format(path)
    entry = next((e for e in LOCAL_BACKENDS.values() if e.format == fmt), None)
    if entry is None:  # a folder of no known format (read_gguf_info explains what is wrong with a file)
        raise ModelLoadError(
            f"{path} is a folder but no model format EdgeReason runs: expected genai_config.json (ONNX) "
            "or config.json with *.safetensors (MLX); for GGUF give the .gguf file"
        )
    return entry.name


def load(
    model: str | os.PathLike[str] | None = None,
    *,
    n_ctx: int | None = None,
    threads: int | None = None,
    max_sequences: int | None = None,
    adapters: Mapping[str, str | os.PathLike[str]] | None = None,
    chat_template: str | None = None,
    reasoning_format: str | None = None,
    backend: str = "auto",
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    name: str | None = None,
    max_queue: int | None = None,
    wedge_timeout_s: float | None = None,
    python_tool: bool = True,
    unsafe_python_tool: bool = False,
) -> ChatEngine:
    """Load a model and start an engine for it.

    ``model``: None or "default" for the embedded SmolLM2-135M-Instruct, a GGUF path, an MLX or
    onnxruntime-genai folder, ``openai://HOST:PORT/MODEL`` for a remote OpenAI-compatible server, or a
    name in ``$EDGEREASON_MODELS_DIR`` (for ``openai://`` the engine is a ``RemoteEngine``, which serves
    the same request API). ``backend``: one of ``BACKENDS`` ("auto" picks by artefact).
    ``adapters``: LoRA adapters by name (GGUF files for llama.cpp, mlx-lm adapter folders for MLX).
    ``cache_type_k``/``cache_type_v``: the llama.cpp KV cache types (f16, q8_0, q4_0; llama-server's
    ``--cache-type-k/-v``); a quantised V cache turns flash attention on. ``name``: the model name
    results report (serve's alias). ``max_queue``/``wedge_timeout_s``/``python_tool``/
    ``unsafe_python_tool``: see ``Engine`` (a remote engine runs no built-in tool).
    """
    kind = pick_backend(model, backend)
    if kind == REMOTE_BACKEND:
        from .remote import DEFAULT_PARALLEL, load_remote

        if adapters:
            raise InvalidRequestError(
                "a remote server loads its own adapters; name one per request with adapter=", param="adapters"
            )
        return load_remote(
            str(model),
            chat_template=chat_template,
            reasoning_format=reasoning_format,
            name=name,
            parallel=max_sequences or DEFAULT_PARALLEL,
        )
    from .engine import Engine
    from .models import preset_for, resolve_model

    entry = LOCAL_BACKENDS[kind]
    wanted: dict[str, str | Path] = {k: Path(v) for k, v in (adapters or {}).items()}
    preset = preset_for(model)
    default_adapters: tuple[tuple[str, float], ...] = ()
    if preset is not None:
        if entry.format != "gguf":
            raise InvalidRequestError(
                f"{preset.name!r} is a GGUF model; use backend='llama.cpp'", param="backend"
            )
        wanted = {**preset.adapters, **wanted}
        default_adapters = ((preset.default_adapter, 1.0),)
        reasoning_format = reasoning_format or preset.reasoning_format
    if not entry.kv_cache_types and (cache_type_k, cache_type_v) != ("f16", "f16"):
        raise InvalidRequestError(
            f"KV cache types apply to the llama.cpp backend, not {kind}", param="cache_type_k"
        )
    opts = BackendOptions(n_ctx, threads, max_sequences, wanted, (cache_type_k, cache_type_v))
    be = entry.open(resolve_model(model), opts)
    tuning: dict[str, Any] = {}
    if max_queue is not None:
        tuning["max_queue"] = max_queue
    if wedge_timeout_s is not None:
        tuning["wedge_timeout_s"] = wedge_timeout_s
    try:
        return Engine(
            be,
            chat_template=chat_template,
            reasoning_format=reasoning_format,
            name=name or (preset.name if preset is not None else None),
            default_adapters=default_adapters,
            python_tool=python_tool,
            unsafe_python_tool=unsafe_python_tool,
            **tuning,
        )
    except BaseException:
        be.close()
        raise


@dataclass(frozen=True)
class EngineSpec:
    """An engine as the CLI's model flags and serve's settings describe it (None: the default)."""

    model: str | None = None
    backend: str = "auto"
    n_ctx: int | None = None
    threads: int | None = None
    max_sequences: int | None = None
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    chat_template_file: str | Path | None = None
    reasoning_format: str | None = None
    adapters: Mapping[str, str | Path] = field(default_factory=dict)
    alias: str | None = None
    max_queue: int | None = None
    wedge_timeout_s: float | None = None
    python_tool: bool = True
    unsafe_python_tool: bool = False


def load_engine(spec: EngineSpec) -> ChatEngine:
    """The engine ``spec`` describes (the chat template read from its file, errors one clear line)."""
    template = None
    if spec.chat_template_file is not None:
        try:
            template = Path(spec.chat_template_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise EdgeReasonError(
                f"cannot read chat template {spec.chat_template_file}: {exc.strerror}"
            ) from None
    return load(
        spec.model,
        n_ctx=spec.n_ctx,
        threads=spec.threads,
        max_sequences=spec.max_sequences,
        cache_type_k=spec.cache_type_k,
        cache_type_v=spec.cache_type_v,
        backend=spec.backend,
        adapters=dict(spec.adapters) or None,
        chat_template=template,
        reasoning_format=spec.reasoning_format,
        name=spec.alias,
        max_queue=spec.max_queue,
        wedge_timeout_s=spec.wedge_timeout_s,
        python_tool=spec.python_tool,
        unsafe_python_tool=spec.unsafe_python_tool,
    )
