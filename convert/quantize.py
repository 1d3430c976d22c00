"""GGUF quantisation types, and quantising an f32 GGUF with llama.cpp's own ``llama_model_quantize``.

f32/f16/bf16/q8_0 come straight out of llama.cpp's converter; the k-quants and q4_0 are made from the f32
GGUF by the quantiser llama.cpp's ``llama-quantize`` tool runs (through llama-cpp-python's C API), so
the file is what a llama.cpp user would get. Tensors whose rows do not divide into a k-quant's 256-wide
super-blocks (e.g. hidden size 896) fall back to a legacy 32-wide type, as ``llama-quantize`` does.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

from edgereason.errors import ModelLoadError

logger = logging.getLogger(__name__)

# Written by the converter directly (no second pass).
CONVERTER_QUANTS: tuple[str, ...] = ("f32", "f16", "bf16", "q8_0")
# Made from an f32 GGUF by llama_model_quantize; value: the llama_ftype constant's name in llama_cpp.
QUANTIZER_QUANTS: dict[str, str] = {
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
}
GGUF_QUANTS: tuple[str, ...] = (*CONVERTER_QUANTS, *QUANTIZER_QUANTS)


def quantize_gguf(src: Path, dest: Path, quant: str, *, threads: int | None = None) -> Path:
    """Quantise the f32/f16 GGUF ``src`` to ``quant`` (one of ``QUANTIZER_QUANTS``) into ``dest``.

    ``dest`` is written in place; callers write to a temporary name and rename (see ``atomic_output``).
    """
    from edgereason.backends.llama_cpp import _import_llama

    if quant not in QUANTIZER_QUANTS:
        raise ValueError(f"{quant} is not made by the quantiser; one of {', '.join(QUANTIZER_QUANTS)}")
    lib = _import_llama()  # routes llama.cpp's log lines to logging
    params = lib.llama_model_quantize_default_params()
    params.ftype = getattr(lib, QUANTIZER_QUANTS[quant])
    params.nthread = threads or os.cpu_count() or 1
    logger.info("quantising %s to %s", src.name, quant)
    rc = lib.llama_model_quantize(str(src).encode(), str(dest).encode(), ctypes.byref(params))
    if rc != 0 or not dest.is_file():
        raise ModelLoadError(f"llama.cpp could not quantise {src} to {quant} (return code {rc})")
    return dest
