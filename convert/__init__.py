"""Conversion toolkit: checkpoints to GGUF, MLX and ONNX (``convert``), parity checks, tiny test checkpoints.

The only part of EdgeReason that needs the training stack (``pip install 'edgereason[convert]'``).
Names are resolved lazily so importing this package stays cheap until a function is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .gguf_export import hf_to_gguf
    from .m1 import m1_to_bamba, make_tiny_m1
    from .manifest import manifest_path_for, read_manifest
    from .parity import logits_parity
    from .pipeline import ConvertResult, convert
    from .tiny import embedded_gguf_path, make_tiny_checkpoint, qwen_tokenizer_dir

__all__ = [
    "ConvertResult",
    "convert",
    "embedded_gguf_path",
    "hf_to_gguf",
    "logits_parity",
    "m1_to_bamba",
    "make_tiny_checkpoint",
    "make_tiny_m1",
    "manifest_path_for",
    "qwen_tokenizer_dir",
    "read_manifest",
]

_HOMES = {
    "convert": "pipeline",
    "ConvertResult": "pipeline",
    "manifest_path_for": "manifest",
    "read_manifest": "manifest",
    "hf_to_gguf": "gguf_export",
    "logits_parity": "parity",
    "make_tiny_checkpoint": "tiny",
    "make_tiny_m1": "m1",  # M1/MambaInLlama hybrids (convert/m1.py)
    "m1_to_bamba": "m1",
    "qwen_tokenizer_dir": "tiny",
    "embedded_gguf_path": "tiny",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
