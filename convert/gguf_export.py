"""Convert a Hugging Face checkpoint directory to a GGUF file with llama.cpp's converter.

The conversion itself is llama.cpp's ``convert_hf_to_gguf`` (its model classes, the ``conversion``
package, and ``gguf-py``) from the llama.cpp our llama-cpp-python vendors, unpacked into a private folder
by ``convert/llama_converter.py``; this module validates the input, drives those classes in-process and
makes the write atomic.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args

from edgereason.errors import EdgeReasonError, InvalidRequestError, MissingExtraError, ModelLoadError

logger = logging.getLogger(__name__)

OutType = Literal["f32", "f16", "bf16", "q8_0"]
OUT_TYPES: tuple[str, ...] = get_args(OutType)
# HF architecture class -> llama.cpp architecture name. Others may convert, but are not tested here.
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    # Mamba2 and hybrids: parity-tested in tests/test_hybrid.py (layouts: convert/hybrid.py)
    "Mamba2ForCausalLM": "mamba2",
    "BambaForCausalLM": "granitehybrid",
    "GraniteMoeHybridForCausalLM": "granitehybrid",
    "FalconH1ForCausalLM": "falcon-h1",
}
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_converter_install() -> None:
    """Fail clearly unless llama.cpp's own converter is unpacked and matches its manifest."""
    from .llama_converter import converter_dir, verify

    verify(converter_dir())


def read_hf_config(src: Path) -> dict[str, Any]:
    """Validate that ``src`` is a convertible checkpoint directory and return its config.json."""
    if not src.is_dir():
        raise ModelLoadError(f"{src} is not a directory; pass a Hugging Face checkpoint folder")
    config_path = src / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{src} has no config.json; is it a Hugging Face checkpoint folder?")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{config_path} is not valid JSON: {exc}") from exc
    if not any(next(src.glob(pattern), None) for pattern in _WEIGHT_PATTERNS):
        raise ModelLoadError(f"{src} has no weights (*.safetensors or pytorch_model*.bin); download them too")
    if not any((src / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelLoadError(
            f"{src} has no tokenizer ({', '.join(_TOKENIZER_FILES)}); save the tokenizer into the folder"
        )
    # -- hybrids (convert/m1.py, convert/hybrid.py): M1/MambaInLlama folders are Llama configs plus a
    # mamba_config.json; they convert through an exact Bamba rewrite. Unsupported layouts fail here.
    from .m1 import check_m1_checkpoint, is_m1_checkpoint

    if is_m1_checkpoint(src):
        check_m1_checkpoint(src)
        return config
    # -- end hybrids
    architectures = config.get("architectures") or []
    arch = architectures[0] if architectures else config.get("model_type", "unknown")
    if arch not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(f"{name} ({cls})" for cls, name in SUPPORTED_ARCHITECTURES.items())
        raise ModelLoadError(
            f"{src}: architecture {arch} is not supported; supported: {supported}, and M1/MambaInLlama "
            "folders (mamba_config.json)"
        )
    from .hybrid import check_hybrid_layout

    check_hybrid_layout(config)
    return config


def check_output_path(out: Path, force: bool) -> None:
    """An output file must not be a folder, and replaces an existing file only with ``force``."""
    if out.is_dir():
        raise InvalidRequestError(f"{out} is a directory; pass the .gguf file path to write", param="out")
    if out.exists() and not force:
        raise InvalidRequestError(
            f"{out} already exists; remove it or pass force=True (--force)", param="out"
        )


@contextlib.contextmanager
def atomic_output(out: Path) -> Iterator[Path]:
    """A temporary path beside ``out``, renamed to ``out`` when the block succeeds, removed otherwise.

    ``out`` is never a truncated artefact. Not mkstemp: the writer creates the file, so it gets the
    usual umask permissions rather than 0600; the converter str.format()s the output name, so the
    temporary name holds no braces.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".edgereason-convert-{secrets.token_hex(8)}.gguf.part"
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def hf_to_gguf(src: Path, out: Path, outtype: OutType = "f32", *, force: bool = False) -> Path:
    """Convert the checkpoint folder ``src`` to the GGUF file ``out`` and return ``out``.

    The file is written under a temporary name in ``out``'s folder and renamed when complete, so ``out``
    is never a truncated artefact. An existing ``out`` is replaced only with ``force=True``. An M1/MambaInLlama
    folder (``mamba_config.json``) is converted through its exact Bamba rewrite (``convert.m1.m1_to_bamba``).
    """
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if outtype not in OUT_TYPES:
        raise InvalidRequestError(
            f"outtype '{outtype}' is not one of {', '.join(OUT_TYPES)}", param="outtype"
        )
    check_output_path(out, force)
    config = read_hf_config(src)
    with atomic_output(out) as tmp:
        # -- M1/MambaInLlama: rewritten as Bamba beside the output (convert/m1.py), then converted
        if (src / "mamba_config.json").is_file():
            from .m1 import m1_to_bamba

            with tempfile.TemporaryDirectory(dir=out.parent, prefix=".edgereason-m1-") as bamba:
                _convert(m1_to_bamba(src, Path(bamba)), tmp, outtype)
        else:
            _convert(src, tmp, outtype)
    logger.info("converted %s (%s) to %s as %s", src, (config.get("architectures") or ["?"])[0], out, outtype)
    return out


def _convert(src: Path, dest: Path, outtype: OutType) -> None:
    """Run llama.cpp's converter in a child interpreter.

    The converter's classes import ``gguf`` by that name, and this process may already hold the PyPI
    ``gguf`` distribution (transformers' GGUF loader imports it); a fresh interpreter puts llama.cpp's own
    copy first on ``sys.path`` without touching this one.
    """
    check_converter_install()
    cmd = [
        sys.executable,
        "-m",
        "edgereason.convert.gguf_export",
        "--child",
        str(src),
        str(dest),
        "--outtype",
        outtype,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == 0:
        return
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    marked = [ln[len(_CHILD_ERROR) :] for ln in lines if ln.startswith(_CHILD_ERROR)]
    if marked and marked[-1].startswith("missing-extra "):
        raise MissingExtraError("converting to GGUF", "convert")
    detail = marked[-1] if marked else "\n".join(lines[-20:])
    raise ModelLoadError(detail or f"llama.cpp's converter exited with {proc.returncode} on {src}")


_CHILD_ERROR = "edgereason-convert-error: "


def _convert_here(src: Path, dest: Path, outtype: OutType) -> None:
    """The conversion itself (in the child): llama.cpp's converter classes, private ``gguf`` first."""
    from .llama_converter import activate

    activate()
    try:
        import gguf
        import torch
        from conversion import ModelBase, ModelType, get_model_architecture, get_model_class
    except ImportError as exc:  # torch/transformers: the convert extra
        raise MissingExtraError("converting to GGUF", "convert") from exc
    file_types = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    from .hybrid import hub_layer_types  # -- hybrids: Granite layer kinds, llama3-RoPE Bamba/M1
    from .m1 import allow_hybrid_rope_freqs

    allow_hybrid_rope_freqs()
    try:
        with torch.inference_mode():
            hparams = hub_layer_types(ModelBase.load_hparams(src, False))  # -- hybrids (convert/hybrid.py)
            model_class = get_model_class(get_model_architecture(hparams, ModelType.TEXT), mmproj=False)
            model = model_class(src, file_types[outtype], dest, hparams=hparams)
            model.write()
    except (NotImplementedError, AssertionError, KeyError, ValueError, OSError) as exc:
        # e.g. an unrecognised BPE pre-tokenizer (NotImplementedError) or a vocab larger than vocab_size.
        raise ModelLoadError(f"llama.cpp's converter failed on {src}: {type(exc).__name__}: {exc}") from exc
    if Path(model.fname_out) != dest:
        raise ModelLoadError(f"the converter wrote {model.fname_out} instead of {dest}; report this as a bug")


def _child(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("src", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--outtype", choices=OUT_TYPES, default="f32")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        _convert_here(args.src, args.out, args.outtype)
    except MissingExtraError:
        print(f"{_CHILD_ERROR}missing-extra convert", file=sys.stderr)
        return 2
    except EdgeReasonError as exc:
        print(f"{_CHILD_ERROR}{exc}".replace("\n", " "), file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child(argv[1:])
    parser = argparse.ArgumentParser(description="Convert a Hugging Face checkpoint folder to GGUF.")
    parser.add_argument("src", type=Path, help="checkpoint folder (config.json, weights, tokenizer)")
    parser.add_argument("out", type=Path, help="GGUF file to write")
    parser.add_argument("--outtype", choices=OUT_TYPES, default="f32")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        hf_to_gguf(args.src, args.out, args.outtype, force=args.force)
    except EdgeReasonError as exc:
        logger.error("error: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
