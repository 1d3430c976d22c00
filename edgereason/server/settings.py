"""One settings schema for the server: command-line flags, ``EDGEREASON_*`` env vars and a config file.

Precedence: flags > environment > config file (JSON or TOML) > defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from ..adapters import AdapterSpec, parse_adapter_spec, scan_adapter_dir
from ..errors import EdgeReasonError, InvalidRequestError
from ..loading import BACKENDS, EngineSpec

ENV_PREFIX = "EDGEREASON_"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


class ServerSettings(BaseSettings):
    """Everything ``edgereason serve`` can be told."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    config_file: Path | None = Field(default=None, description="JSON or TOML file with these settings")
    model: str | None = Field(
        default=None,
        description="GGUF path, 'default' (embedded SmolLM2), or a name in $EDGEREASON_MODELS_DIR",
    )
    backend: str = Field(
        default="auto",
        description=f"runtime: {' | '.join(BACKENDS)}; auto picks by artefact (.gguf, MLX folder, ONNX folder)",
    )
    alias: str | None = Field(default=None, description="model name clients use (default: the model's own)")
    host: str = Field(default=DEFAULT_HOST, description="address to bind (loopback by default)")
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535, description="port to bind")
    api_key: str | None = Field(
        default=None,
        description="require 'Authorization: Bearer KEY' on /v1 endpoints (an empty key is an error)",
    )
    cors_origin: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="web origin (scheme://host[:port], or *) allowed to call the server from a browser "
        "(repeatable); other origins get 403",
    )
    allowed_host: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host header name to answer to besides the bound one (repeatable); loopback binds answer "
        "only to localhost/127.0.0.1/[::1], other binds to any name unless this is given",
    )
    cache_type_k: Literal["f16", "q8_0", "q4_0"] = Field(default="f16", description="KV cache type of K")
    cache_type_v: Literal["f16", "q8_0", "q4_0"] = Field(
        default="f16", description="KV cache type of V (a quantised V cache turns flash attention on)"
    )
    max_body_mb: float = Field(
        default=8.0, gt=0, le=4096, description="largest request body in MB; larger bodies get 413"
    )
    n_ctx: int | None = Field(default=None, ge=16, description="context tokens per sequence")
    max_sequences: int | None = Field(
        default=None, ge=1, description="sequences decoded together (all requests)"
    )
    max_queue: int = Field(
        default=64, ge=1, description="requests allowed to wait; beyond it clients get 429"
    )
    threads: int | None = Field(default=None, ge=1, description="CPU threads (default: all cores)")
    chat_template: Path | None = Field(default=None, description="a jinja chat template file to use instead")
    reasoning_format: str | None = Field(
        default=None, description="deepseek-r1 | qwen3 | none (default: detect)"
    )
    adapter: dict[str, str] = Field(
        default_factory=dict, description="LoRA adapter NAME=PATH[:SCALE] (repeatable)"
    )
    adapter_dir: Path | None = Field(
        default=None,
        description="load every LoRA *.gguf in DIR (named by stem); enables /v1/load_lora_adapter from DIR",
    )
    max_adapters: int = Field(
        default=16, ge=0, description="most LoRA adapters loaded at once; runtime loads beyond it get 400"
    )
    max_adapter_mb: float = Field(
        default=1024.0, gt=0, description="largest LoRA adapter file in MB (runtime loads and --adapter-dir)"
    )
    wedge_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="seconds with work queued and no decode progress before the engine counts as wedged: "
        "/health answers 503 and the server exits with status 3 for a supervisor to restart it",
    )
    sse_keepalive_s: float = Field(
        default=15.0,
        ge=0,
        description="seconds of silence in a stream before a ': keep-alive' SSE comment (0: never); "
        "self-consistency and LoRID send nothing until they finish, and proxies cut idle connections",
    )
    tool: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="built-in tool the server runs for requests that ask for it (builtin_tools): python "
        "(repeatable; off unless given, since it runs model-written code in a sandbox)",
    )
    unsafe_python_tool: bool = Field(
        default=False,
        description="run the Python tool with resource limits only where the sandbox's namespaces are "
        "unavailable (no network or filesystem isolation)",
    )
    retry_after: int = Field(
        default=1, ge=0, description="seconds suggested in Retry-After when the queue is full"
    )

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        if v not in BACKENDS:
            raise ValueError(f"unknown backend {v!r}; available: {', '.join(BACKENDS)}")
        return v

    @field_validator("api_key")
    @classmethod
    def _key_not_empty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("an empty API key would turn authentication off; give a key or leave it unset")
        return v

    @field_validator("tool")
    @classmethod
    def _known_tools(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - {"python"})
        if unknown:
            raise ValueError(f"unknown tool {unknown[0]!r}; available: python")
        return v

    @field_validator("cors_origin", "allowed_host", "tool", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        if isinstance(v, str):  # an env var holds a JSON list, one name, or a comma-separated list
            if v.lstrip().startswith("["):
                return json.loads(v)
            return [x for x in (p.strip() for p in v.split(",")) if x]
        return v

    @field_validator("cors_origin")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        out = []
        for origin in v:
            origin = origin.strip().rstrip("/").lower()
            if origin != "*" and not re.match(r"^[a-z][a-z0-9+.-]*://[^/\s]+$", origin):
                raise ValueError(f"{origin!r} is not an origin: use scheme://host[:port] (or *)")
            out.append(origin)
        return out

    @field_validator("adapter", mode="before")
    @classmethod
    def _adapter_pairs(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            v = dict(_pair(x) for x in v)
        if isinstance(v, dict):
            for name, rest in v.items():
                try:
                    parse_adapter_spec(f"{name}={rest}")
                except InvalidRequestError as exc:
                    raise ValueError(str(exc)) from None
        return v

    @property
    def max_adapter_bytes(self) -> int:
        return int(self.max_adapter_mb * 2**20)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)

    def engine_spec(self) -> EngineSpec:
        """The engine these settings describe (loaded by ``edgereason.loading.load_engine``)."""
        return EngineSpec(
            model=self.model,
            backend=self.backend,
            n_ctx=self.n_ctx,
            threads=self.threads,
            max_sequences=self.max_sequences,
            cache_type_k=self.cache_type_k,
            cache_type_v=self.cache_type_v,
            chat_template_file=self.chat_template,
            reasoning_format=self.reasoning_format,
            adapters={spec.name: spec.path for spec in self.adapter_specs()},
            alias=self.alias,
            max_queue=self.max_queue,
            wedge_timeout_s=self.wedge_timeout_s,
            python_tool="python" in self.tool,
            unsafe_python_tool=self.unsafe_python_tool,
        )

    def adapter_specs(self) -> list[AdapterSpec]:
        """--adapter-dir's adapters, then --adapter ones (which win on a shared name)."""
        found = scan_adapter_dir(self.adapter_dir, self.max_adapter_bytes) if self.adapter_dir else []
        specs = {s.name: s for s in found}
        for name, rest in self.adapter.items():
            specs[name] = parse_adapter_spec(f"{name}={rest}")
        return list(specs.values())

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _ConfigFileSource(settings_cls, init_settings)


def _pair(text: Any) -> tuple[str, str]:
    if not isinstance(text, str) or "=" not in text:
        raise ValueError(f"expected NAME=PATH, got {text!r}")
    name, _, path = text.partition("=")
    return name, path


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Values from the file named by ``config_file`` (flag) or ``EDGEREASON_CONFIG_FILE``."""

    def __init__(self, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._init = init_settings

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = self._init().get("config_file") or os.environ.get(f"{ENV_PREFIX}CONFIG_FILE")
        if not path:
            return {}
        return read_config_file(Path(path))


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EdgeReasonError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = _parse_toml(text) if path.suffix == ".toml" else json.loads(text)
    except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise EdgeReasonError(
            f"config file {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise EdgeReasonError(f"config file {path} must hold an object of settings")
    return {k.replace("-", "_"): v for k, v in data.items()}


def _parse_toml(text: str) -> Any:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise EdgeReasonError("TOML config files need Python 3.11+; use a JSON file") from None
    return tomllib.loads(text)


# llama-server's and vLLM's spellings of the same settings.
FLAG_ALIASES = {
    "model": ["-m"],
    "n_ctx": ["-c", "--ctx-size"],
    "max_sequences": ["-np", "--parallel"],
    "threads": ["-t"],
    "alias": ["--served-model-name"],
}


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per settings field; unset flags stay None so env and config file apply."""
    for name, info in ServerSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if name in FLAG_ALIASES:
            kind = _scalar_type(info.annotation)
            parser.add_argument(
                flag, *FLAG_ALIASES[name], dest=name, type=kind, default=None, help=info.description
            )
            continue
        if name == "adapter":
            parser.add_argument(
                flag, action="append", default=None, metavar="NAME=PATH[:SCALE]", help=info.description
            )
            continue
        if name in ("cors_origin", "allowed_host", "tool"):
            parser.add_argument(flag, action="append", default=None, help=info.description)
            continue
        if info.annotation is bool:
            parser.add_argument(flag, action="store_true", default=None, help=info.description)
            continue
        kind = _scalar_type(info.annotation)
        parser.add_argument(flag, type=kind, default=None, help=info.description)


def _scalar_type(annotation: Any) -> Any:
    for kind in (int, float, Path):
        if annotation is kind or kind in getattr(annotation, "__args__", ()):
            return str if kind is Path else kind
    return str


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Settings from parsed flags (only the ones given), the environment and the config file."""
    given = {k: getattr(args, k) for k in ServerSettings.model_fields if getattr(args, k, None) is not None}
    try:
        return ServerSettings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        raise EdgeReasonError(f"invalid setting {loc}: {first.get('msg')}") from None
