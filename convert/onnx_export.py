"""Hugging Face checkpoint -> ONNX folder with onnxruntime-genai's model builder, and logits from it.

The builder (``python -m onnxruntime_genai.models.builder``) runs in a child process: it imports its
own top-level modules (``builders``, ``quantization``) through ``sys.path`` and prints freely, neither of
which belongs in this process. It writes ``model.onnx`` (+ ``.data``), ``genai_config.json`` and the
tokenizer files: the folder onnxruntime-genai's ``og.Model`` loads.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgereason.errors import MissingExtraError, ModelLoadError

if TYPE_CHECKING:
    from numpy.typing import NDArray

logger = logging.getLogger(__name__)

# The builder makes fp32, int8 and int4 models for CPU (fp16/bf16 only for GPU providers).
ONNX_QUANTS: tuple[str, ...] = ("fp32", "int8", "int4")
GENAI_CONFIG = "genai_config.json"
_ERROR_TAIL_CHARS = 2000


def hf_to_onnx(hf_dir: Path, dest: Path, quant: str, *, cache_dir: Path) -> Path:
    """Build the ONNX folder ``dest`` from ``hf_dir`` at precision ``quant`` (``ONNX_QUANTS``) for CPU."""
    try:
        import onnxruntime_genai  # noqa: F401 - probe only; the builder runs in a child
    except ImportError as exc:
        raise MissingExtraError("converting to ONNX", "onnx") from exc
    command = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(hf_dir),
        "-o",
        str(dest),
        "-p",
        quant,
        "-e",
        "cpu",
        "-c",
        str(cache_dir),
    ]
    logger.info("building ONNX (%s, cpu) with onnxruntime-genai's builder", quant)
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        logger.debug("builder: %s", line)
    if proc.returncode != 0 or not (dest / GENAI_CONFIG).is_file():
        tail = (proc.stderr or proc.stdout)[-_ERROR_TAIL_CHARS:]
        if "NotImplementedError" in tail:  # the builder's answer to an architecture it has no recipe for
            arch = _architecture(hf_dir)
            raise ModelLoadError(
                f"onnxruntime-genai's builder cannot export {arch} ({hf_dir}); convert it to GGUF instead "
                f"(--to gguf). Builder said:\n{tail.strip().splitlines()[-1]}"
            )
        raise ModelLoadError(
            f"onnxruntime-genai's builder failed on {hf_dir} (exit {proc.returncode}):\n{tail}"
        )
    return dest


def _architecture(hf_dir: Path) -> str:
    try:
        return str(json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))["architectures"][0])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return "this architecture"


def _decoder_config(folder: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((folder / GENAI_CONFIG).read_text(encoding="utf-8"))
    decoder: dict[str, Any] = config["model"]["decoder"]
    return decoder


def onnx_full_logits(folder: Path, token_ids: list[int], *, threads: int = 1) -> NDArray[np.float32]:
    """Logits of every position of ``token_ids`` from the folder's ONNX graph (onnxruntime, empty cache)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingExtraError("running ONNX models", "onnx") from exc
    decoder = _decoder_config(folder)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        str(folder / decoder["filename"]), options, providers=["CPUExecutionProvider"]
    )
    n = len(token_ids)
    feeds: dict[str, NDArray[Any]] = {}
    for spec in session.get_inputs():
        if spec.name == "input_ids":
            feeds[spec.name] = np.array([token_ids], dtype=np.int64)
        elif spec.name == "attention_mask":
            feeds[spec.name] = np.ones((1, n), dtype=np.int64)
        elif spec.name == "position_ids":
            feeds[spec.name] = np.arange(n, dtype=np.int64)[None]
        elif spec.name.startswith("past_key_values"):
            dtype = np.float16 if "float16" in spec.type else np.float32
            feeds[spec.name] = np.zeros(
                (1, decoder["num_key_value_heads"], 0, decoder["head_size"]), dtype=dtype
            )
        else:
            raise ModelLoadError(f"{folder}: unexpected ONNX input {spec.name}; not a builder decoder?")
    logits = session.run(["logits"], feeds)[0][0]
    return np.asarray(logits, dtype=np.float32)


def genai_greedy(folder: Path, token_ids: list[int], n_new: int) -> list[int]:
    """``n_new`` argmax tokens after ``token_ids``, decoded by onnxruntime-genai (its KV cache, no EOS stop)."""
    try:
        import onnxruntime_genai as og
    except ImportError as exc:
        raise MissingExtraError("running ONNX models", "onnx") from exc
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(token_ids) + n_new + 1, batch_size=1)
    generator = og.Generator(model, params)
    generator.append_tokens(token_ids)
    greedy: list[int] = []
    for _ in range(n_new):
        logits = np.asarray(generator.get_logits())
        greedy.append(int(logits.reshape(-1, logits.shape[-1])[-1].argmax()))
        generator.append_tokens([greedy[-1]])
    return greedy


def onnx_logits_and_greedy(
    folder: Path, token_ids: list[int], n_new: int
) -> tuple[NDArray[np.float32], list[int]]:
    """Full-sequence logits from onnxruntime and a greedy continuation from onnxruntime-genai."""
    return onnx_full_logits(folder, token_ids), genai_greedy(folder, token_ids, n_new)
