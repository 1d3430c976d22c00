"""``convert()``: one entry point from a checkpoint (HF folder, HF + PEFT adapter, or GGUF) to GGUF/MLX/ONNX.

Everything is built in a work folder beside the output and moved into place only when complete, so an
interrupted or failed conversion leaves no partial artefact; the work folder is removed either way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from edgereason.errors import InvalidRequestError, ModelLoadError

from .gguf_export import SUPPORTED_ARCHITECTURES, check_output_path, hf_to_gguf, read_hf_config
from .manifest import build_manifest, manifest_path_for, write_manifest
from .mlx_export import MLX_QUANTS
from .onnx_export import ONNX_QUANTS
from .quantize import CONVERTER_QUANTS, GGUF_QUANTS, quantize_gguf

logger = logging.getLogger(__name__)

Target = Literal["gguf", "mlx", "onnx"]
TARGETS: tuple[str, ...] = get_args(Target)
QUANTS: dict[str, tuple[str, ...]] = {"gguf": GGUF_QUANTS, "mlx": MLX_QUANTS, "onnx": ONNX_QUANTS}
DEFAULT_QUANTS = {"gguf": "f16", "mlx": "f16", "onnx": "fp32"}
# Spellings accepted for the same precision across targets.
_ALIASES = {
    "mlx": {"float32": "f32", "fp32": "f32", "float16": "f16", "fp16": "f16", "bfloat16": "bf16",
            "8bit": "8", "4bit": "4", "q8": "8", "q4": "4", "int8": "8", "int4": "4"},
    "onnx": {"f32": "fp32", "float32": "fp32", "f16": "fp16", "float16": "fp16", "q8": "int8",
             "8": "int8", "4": "int4", "q4": "int4"},
    "gguf": {"fp32": "f32", "float32": "f32", "fp16": "f16", "float16": "f16", "bfloat16": "bf16"},
}  # fmt: skip
LORA_GGUF_SUFFIX = ".lora.gguf"
MLX_ADAPTER_DIR = "adapters"


@dataclass(frozen=True)
class ConvertResult:
    """What ``convert`` wrote: the artefact (GGUF file or model folder), its manifest, its adapter if any."""

    target: str
    quant: str
    path: Path
    manifest_path: Path
    manifest: dict[str, Any] = field(repr=False)
    adapter_path: Path | None = None
    seconds: float = 0.0

    @property
    def parity(self) -> dict[str, Any] | None:
        parity: dict[str, Any] | None = self.manifest.get("parity")
        return parity

    @property
    def verified(self) -> bool | None:
        """True/False after ``verify=True`` (all applicable checks passed), None without it."""
        return None if self.parity is None else bool(self.parity["passed"])


@dataclass(frozen=True)
class _Source:
    hf_dir: Path  # the checkpoint to convert (after dequantising a GGUF and merging an adapter)
    architecture: str
    description: dict[str, Any]
    gguf: Path | None  # the GGUF file the source came from, if it was one


def resolve_quant(target: str, quant: str | None) -> str:
    """The canonical quantisation name for ``target``; raise InvalidRequestError naming the valid ones."""
    if target not in TARGETS:
        raise InvalidRequestError(
            f"unknown target '{target}'; choose one of {', '.join(TARGETS)}", param="to"
        )
    if quant is None:
        return DEFAULT_QUANTS[target]
    name = str(quant).lower()
    name = _ALIASES[target].get(name, name)
    if name not in QUANTS[target]:
        raise InvalidRequestError(
            f"quantisation '{quant}' is not available for {target}; choose one of {', '.join(QUANTS[target])}",
            param="quant",
        )
    return name


def convert(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    to: str = "gguf",
    quant: str | None = None,
    adapter: str | os.PathLike[str] | None = None,
    merge: bool = False,
    verify: bool = False,
    force: bool = False,
) -> ConvertResult:
    """Convert ``src`` (HF folder or ``.gguf`` file) to ``out`` in format ``to`` and return what was written.

    ``out`` is a ``.gguf`` file for GGUF and a folder for MLX/ONNX; an existing one is replaced only with
    ``force``. ``quant``: GGUF f32|f16|bf16|q8_0|q6_k|q5_k_m|q4_k_m|q4_0, MLX f32|f16|bf16|8|4, ONNX
    fp32|int8|int4. ``adapter`` is a PEFT LoRA folder for the source: merged into the weights with
    ``merge``, otherwise written beside the model in the target's adapter format (GGUF LoRA file, mlx-lm
    adapter folder; ONNX has no separate-adapter export: pass ``merge``). ``verify`` compares the artefact
    with transformers and stores the numbers in the manifest (``ConvertResult.parity``).
    """
    started = time.perf_counter()
    src_path, out_path = Path(src).expanduser(), Path(out).expanduser()
    quant_name = resolve_quant(to, quant)
    peft_dir = Path(adapter).expanduser() if adapter is not None else None
    _check_request(src_path, out_path, to, peft_dir, merge, force)
    with _work_dir(out_path) as work, _Stages(verify) as stages:
        stages.next("reading the source")
        source = _prepare_source(src_path, peft_dir if merge else None, work)
        separate_adapter = peft_dir if peft_dir is not None and not merge else None
        if separate_adapter is not None:
            from .adapters import check_adapter_base

            check_adapter_base(separate_adapter, source.hf_dir)
        stages.next(f"exporting {to} {quant_name}")
        staged, adapter_rel = _export(to, source, quant_name, separate_adapter, work)
        parity = None
        if verify:
            from .verify import verify_artifact

            stages.next("verifying against transformers")
            parity = verify_artifact(
                to,
                staged,
                source.hf_dir,
                quant_name,
                peft_dir=separate_adapter,
                target_adapter=_staged_adapter(to, staged, adapter_rel, work),
                source_gguf=source.gguf,
            )
        stages.next("writing")
        model_rel = out_path.name if to == "gguf" else "."
        manifest = build_manifest(
            source={**source.description, "adapter": str(peft_dir) if peft_dir else None, "merged": merge},
            target=to,
            quant=quant_name,
            architecture=source.architecture,
            hf_dir=source.hf_dir,
            files={"model": model_rel, **({"adapter": adapter_rel} if adapter_rel else {})},
            parity=parity,
        )
        result = _publish(to, staged, out_path, adapter_rel, manifest, work)
        stages.next("done")
    seconds = time.perf_counter() - started
    logger.info("wrote %s (%s %s) in %.1fs", result.path, to, quant_name, seconds)
    return ConvertResult(
        target=result.target,
        quant=quant_name,
        path=result.path,
        manifest_path=result.manifest_path,
        manifest=manifest,
        adapter_path=result.adapter_path,
        seconds=seconds,
    )


class _Stages:
    """A step progress bar over the conversion's stages (on a terminal only)."""

    def __init__(self, verify: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=4 if verify else 3, desc="convert", unit="step", disable=None, leave=False)
        self.started = False

    def next(self, what: str) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_description(what)
        logger.info("%s", what)

    def __enter__(self) -> _Stages:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def _check_request(src: Path, out: Path, to: str, peft_dir: Path | None, merge: bool, force: bool) -> None:
    if not src.exists():
        raise ModelLoadError(f"{src} does not exist; pass a Hugging Face checkpoint folder or a .gguf file")
    if src.is_file() and src.suffix != ".gguf":
        raise ModelLoadError(f"{src} is a file but not a .gguf; pass a checkpoint folder or a GGUF file")
    if src.is_dir():
        read_hf_config(src)  # config, weights, tokenizer, supported architecture: before anything is written
    # -- M1/MambaInLlama (convert/m1.py): only the GGUF path (llama.cpp's granitehybrid) is parity-tested
    if src.is_dir() and to != "gguf" and (src / "mamba_config.json").is_file():
        raise InvalidRequestError(
            f"{src} is an M1/MambaInLlama checkpoint; it converts to GGUF only (--to gguf), which llama.cpp "
            "runs as an exact Bamba rewrite",
            param="to",
        )
    # -- end M1
    if merge and peft_dir is None:
        raise InvalidRequestError("--merge needs --adapter PEFT_DIR", param="merge")
    if peft_dir is not None and not peft_dir.is_dir():
        raise ModelLoadError(f"adapter folder {peft_dir} does not exist")
    if peft_dir is not None and not merge and to == "onnx":
        raise InvalidRequestError(
            "onnxruntime-genai's builder has no separate-adapter export (it bakes a PEFT LoRA into the "
            "graph); pass --merge to merge the adapter into the ONNX model",
            param="adapter",
        )
    if to == "gguf":
        if out.suffix != ".gguf":
            raise InvalidRequestError(f"{out}: a GGUF output is a file path ending in .gguf", param="out")
        check_output_path(out, force)
        if peft_dir is not None and not merge:
            check_output_path(out.with_name(out.stem + LORA_GGUF_SUFFIX), force)
        return
    if out.suffix == ".gguf":
        raise InvalidRequestError(f"{out}: an {to.upper()} output is a folder, not a .gguf file", param="out")
    if out.exists() and not force:
        raise InvalidRequestError(
            f"{out} already exists; remove it or pass force=True (--force)", param="out"
        )
    if out.exists() and not out.is_dir():
        raise InvalidRequestError(f"{out} exists and is not a folder", param="out")


@contextlib.contextmanager
def _work_dir(out: Path) -> Iterator[Path]:
    # Beside the output, so the final move is a rename on the same file system.
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".edgereason-convert-{secrets.token_hex(6)}.work"
    work.mkdir()
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _prepare_source(src: Path, merge_adapter_dir: Path | None, work: Path) -> _Source:
    gguf_src: Path | None = None
    if src.is_file():
        from .lora_export import hf_copy_of_gguf

        logger.info("dequantising %s through transformers' GGUF loader", src.name)
        gguf_src = src
        try:
            hf_dir = hf_copy_of_gguf(src, work / "from-gguf")
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            raise ModelLoadError(f"transformers could not read {src} as a model: {exc}") from exc
        description: dict[str, Any] = {"kind": "gguf", "path": str(src.resolve())}
    else:
        hf_dir = src
        description = {"kind": "hf", "path": str(src.resolve())}
    # -- M1/MambaInLlama (convert/m1.py): the exact Bamba rewrite is what gets exported and verified
    from .m1 import is_m1_checkpoint, m1_to_bamba

    if is_m1_checkpoint(hf_dir):
        description["layout"] = "m1"
        hf_dir = m1_to_bamba(hf_dir, work / "m1-as-bamba")
    # -- end M1
    config = read_hf_config(hf_dir)
    if merge_adapter_dir is not None:
        from .adapters import merge_adapter

        hf_dir = merge_adapter(hf_dir, merge_adapter_dir, work / "merged")
    return _Source(
        hf_dir=hf_dir,
        architecture=SUPPORTED_ARCHITECTURES[config["architectures"][0]],
        description=description,
        gguf=gguf_src,
    )


def _export(
    to: str, source: _Source, quant: str, peft_dir: Path | None, work: Path
) -> tuple[Path, str | None]:
    """Build the artefact in ``work``; return it and the adapter's path relative to the manifest."""
    if to == "gguf":
        staged = work / "model.gguf"
        if quant in CONVERTER_QUANTS:
            hf_to_gguf(source.hf_dir, staged, quant)  # type: ignore[arg-type]
        else:
            f32 = hf_to_gguf(source.hf_dir, work / "f32.gguf", "f32")
            quantize_gguf(f32, staged, quant)
            f32.unlink()
        if peft_dir is None:
            return staged, None
        from .lora_export import peft_to_gguf

        peft_to_gguf(peft_dir, source.hf_dir, work / "adapter.gguf")
        return staged, "adapter.gguf"  # renamed on publishing
    staged = work / "model"
    if to == "mlx":
        from .mlx_export import hf_to_mlx

        hf_to_mlx(source.hf_dir, staged, quant)
        if peft_dir is None:
            return staged, None
        from .adapters import peft_to_mlx_adapter

        peft_to_mlx_adapter(peft_dir, source.hf_dir, staged / MLX_ADAPTER_DIR)
        return staged, MLX_ADAPTER_DIR
    from .onnx_export import hf_to_onnx

    hf_to_onnx(source.hf_dir, staged, quant, cache_dir=work / "onnx-cache")
    return staged, None


def _staged_adapter(to: str, staged: Path, adapter_rel: str | None, work: Path) -> Path | None:
    if adapter_rel is None:
        return None
    return work / adapter_rel if to == "gguf" else staged / adapter_rel


@dataclass(frozen=True)
class _Published:
    target: str
    path: Path
    manifest_path: Path
    adapter_path: Path | None


def _publish(
    to: str, staged: Path, out: Path, adapter_rel: str | None, manifest: dict[str, Any], work: Path
) -> _Published:
    """Move the finished artefact into place (renames only) and write its manifest last."""
    if to == "gguf":
        adapter_out = out.with_name(out.stem + LORA_GGUF_SUFFIX) if adapter_rel else None
        if adapter_out is not None:
            manifest["files"]["adapter"] = adapter_out.name
            os.replace(work / "adapter.gguf", adapter_out)
        os.replace(staged, out)
        manifest_path = write_manifest(manifest_path_for(out), manifest)
        return _Published(to, out, manifest_path, adapter_out)
    write_manifest(staged / "edgereason.json", manifest)
    if out.exists():
        # --force: swap the old folder out first, so `out` is always either the old or the new model.
        old = work / "replaced"
        os.replace(out, old)
    os.replace(staged, out)
    return _Published(to, out, manifest_path_for(out), out / adapter_rel if adapter_rel else None)


def describe_result(result: ConvertResult) -> str:
    """A short human summary (the CLI prints it)."""
    lines = [f"wrote {result.path} ({result.target}, {result.quant}) in {result.seconds:.1f}s"]
    if result.adapter_path is not None:
        lines.append(f"adapter: {result.adapter_path}")
    lines.append(f"manifest: {result.manifest_path}")
    parity = result.parity
    if parity is not None:
        lines.append(
            f"verify: max |logit diff| {parity['max_abs_diff']:.3g} (first 32 positions "
            f"{parity['max_abs_diff_first_32']:.3g}), top-1 agreement {parity['top1_agreement']:.4f} over "
            f"{parity['n_positions']} positions, KL {parity['kl_mean']:.3g}, greedy "
            f"{parity['greedy_common_prefix']}/{parity['greedy_tokens']} tokens agree"
        )
        if "source_gguf_greedy_common_prefix" in parity:
            lines.append(
                f"verify: greedy agrees with the source GGUF (llama.cpp) for "
                f"{parity['source_gguf_greedy_common_prefix']}/{parity['greedy_tokens']} tokens"
            )
        for check in parity["checks"]:
            lines.append(
                f"  {'ok  ' if check['ok'] else 'FAIL'} {check['name']} = {check['value']} "
                f"(needs {check['op']} {check['threshold']})"
            )
    return "\n".join(lines)


def manifest_json(result: ConvertResult) -> str:
    return json.dumps(result.manifest, indent=2, ensure_ascii=False)
