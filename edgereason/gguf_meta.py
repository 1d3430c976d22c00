"""Read a GGUF file's header and metadata without loading the model.

Used to validate a path before llama.cpp sees it (a clear error instead of a crash) and to list
models cheaply. Tensor data is never read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .errors import ModelLoadError

GGUF_MAGIC = b"GGUF"
_SCALARS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
# Arrays this long (token lists, merges) are summarised by length: listing models needs no vocabulary.
_MAX_KEPT_ARRAY = 64

# llama.cpp's ggml_ftype names for general.file_type.
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    28: "IQ4_XS",
    32: "BF16",
}


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    version: int
    n_tensors: int
    metadata: dict[str, Any] = field(repr=False)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    @property
    def name(self) -> str:
        return str(self.metadata.get("general.name", self.path.stem))

    @property
    def file_type(self) -> str:
        ft = self.metadata.get("general.file_type")
        return FILE_TYPES.get(int(ft), f"type{ft}") if ft is not None else "unknown"

    @property
    def chat_template(self) -> str | None:
        tpl = self.metadata.get("tokenizer.chat_template")
        return str(tpl) if tpl else None

    @property
    def is_adapter(self) -> bool:
        return self.metadata.get("general.type") == "adapter"

    @property
    def context_length(self) -> int | None:
        v = self.metadata.get(f"{self.architecture}.context_length")
        return int(v) if v is not None else None


class _Reader:
    def __init__(self, fh: BinaryIO, path: Path) -> None:
        self.fh, self.path = fh, path

    def take(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise ModelLoadError(
                f"{self.path}: truncated GGUF file (header ends early); re-download or re-convert it"
            )
        return data

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        if n > 1 << 30:
            raise ModelLoadError(f"{self.path}: corrupt GGUF metadata (string of {n} bytes)")
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.scalar("<I"), self.scalar("<Q")
            if count > 1 << 32:
                raise ModelLoadError(f"{self.path}: corrupt GGUF metadata (array of {count} items)")
            if etype in _SCALARS and count > _MAX_KEPT_ARRAY:
                self.take(struct.calcsize(_SCALARS[etype]) * count)
                return _Elided(count)
            items = [self.value(etype) for _ in range(count)]
            return _Elided(count) if count > _MAX_KEPT_ARRAY else items
        raise ModelLoadError(f"{self.path}: corrupt GGUF metadata (unknown value type {vtype})")


class _Elided(int):
    """The length of a long metadata array whose items were skipped."""


def read_gguf_info(path: str | Path) -> GGUFInfo:
    """Validate that ``path`` is a complete GGUF file and return its metadata."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"model file not found: {p}")
    if p.is_dir():
        raise ModelLoadError(f"{p} is a directory, not a GGUF file (MLX/ONNX folders need their backend)")
    size = p.stat().st_size
    with p.open("rb") as fh:
        r = _Reader(fh, p)
        if fh.read(4) != GGUF_MAGIC:
            raise ModelLoadError(f"{p} is not a GGUF file (bad magic); convert it with 'edgereason convert'")
        version = r.scalar("<I")
        if version not in (2, 3):
            raise ModelLoadError(f"{p}: unsupported GGUF version {version}")
        n_tensors, n_kv = r.scalar("<Q"), r.scalar("<Q")
        if n_kv > 1 << 20 or n_tensors > 1 << 24:
            raise ModelLoadError(f"{p}: corrupt GGUF header")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string()
            meta[key] = r.value(r.scalar("<I"))
        # Tensor infos: name, n_dims, dims, type, offset. The largest offset+size must fit in the file.
        max_end = 0
        for _ in range(n_tensors):
            r.string()
            n_dims = r.scalar("<I")
            if n_dims > 8:
                raise ModelLoadError(f"{p}: corrupt GGUF tensor info")
            for _ in range(n_dims):
                r.scalar("<Q")
            r.scalar("<I")
            max_end = max(max_end, r.scalar("<Q"))
        align = int(meta.get("general.alignment", 32))
        data_start = -(-fh.tell() // align) * align
        if data_start + max_end > size:
            raise ModelLoadError(
                f"{p}: truncated GGUF file ({size} bytes, tensor data needs more than {data_start + max_end}); "
                "re-download or re-convert it"
            )
    return GGUFInfo(path=p, version=version, n_tensors=n_tensors, metadata=meta)
