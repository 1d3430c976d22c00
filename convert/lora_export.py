"""Convert a PEFT LoRA adapter to a llama.cpp LoRA GGUF, and build random adapters for tests.

llama.cpp applies a LoRA to a weight ``W`` (GGUF shape ``[in, out]``) as ``W x + s * B (A x)`` with
``s = scale * alpha / r``; ``lora_a`` is stored with GGUF shape ``[in, r]`` and ``lora_b`` with ``[r, out]``,
which is exactly PEFT's ``lora_A.weight`` ``(r, in)`` and ``lora_B.weight`` ``(out, r)`` in row-major
order, so no transposition is needed. What does need care is the base converter's reordering of rows:
for llama it permutes the rows of ``q_proj``/``k_proj`` (rotary layout), so the adapter's ``lora_B`` rows
for those modules get the same permutation (``A`` acts on inputs and is untouched).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edgereason.errors import EdgeReasonError, MissingExtraError, ModelLoadError

from .gguf_export import (
    SUPPORTED_ARCHITECTURES,
    atomic_output,
    check_output_path,
    read_hf_config,
)
from .llama_converter import import_gguf

if TYPE_CHECKING:
    from numpy.typing import NDArray

logger = logging.getLogger(__name__)

AdapterOutType = Literal["f32", "f16"]
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_PEFT_PREFIX = "base_model.model."
ADAPTER_CACHE_VERSION = 1  # bump when the conversion's output changes


@dataclass(frozen=True)
class BaseModel:
    """What adapter conversion needs to know about the base model, read from its HF folder or its GGUF."""

    source: Path
    arch: str  # llama.cpp architecture name
    n_layers: int
    n_head: int
    n_kv_head: int
    shapes: dict[str, tuple[int, int]]  # 2-D weights by GGUF tensor name, in HF order (out, in)

    def fingerprint(self) -> str:
        """A digest of everything a converted adapter depends on (not the weights' values)."""
        data = json.dumps(
            [self.arch, self.n_layers, self.n_head, self.n_kv_head, sorted(self.shapes.items())]
        )
        return hashlib.sha256(data.encode()).hexdigest()


def read_base_model(base: Path) -> BaseModel:
    """The base model from a Hugging Face folder or a GGUF file (``.gguf``)."""
    base = Path(base)
    return _gguf_base(base) if base.is_file() else _hf_base(base)


def peft_to_gguf(
    peft_dir: Path,
    base: Path,
    out: Path,
    outtype: AdapterOutType = "f32",
    *,
    force: bool = False,
) -> Path:
    """Convert the PEFT LoRA folder ``peft_dir`` to the GGUF file ``out``.

    ``base`` is the model the adapter was made for: its Hugging Face folder, or its GGUF file (llama,
    qwen2, qwen3). Raises ModelLoadError for a folder that is not a PEFT LoRA, a LoRA kind llama.cpp
    cannot run (DoRA, per-module ranks, embedding adapters, modules_to_save) or an adapter whose shapes
    do not fit the base.
    """
    peft_dir, out = Path(peft_dir), Path(out)
    check_output_path(out, force)
    gguf = import_gguf()
    model = read_base_model(base)
    acfg = read_adapter_config(peft_dir)
    tensors = _read_adapter_tensors(peft_dir)
    r = int(acfg["r"])
    alpha = float(acfg.get("lora_alpha") or r)
    if acfg.get("use_rslora"):
        alpha *= math.sqrt(r)  # rsLoRA scales by alpha/sqrt(r); llama.cpp always divides by r

    name_map = _name_map(model.arch, model.n_layers)
    np_type = np.float32 if outtype == "f32" else np.float16

    pairs: list[tuple[str, NDArray[Any], NDArray[Any]]] = []
    for module in sorted({k.rsplit(".lora_", 1)[0] for k in tensors}):
        a, b = tensors.get(f"{module}.lora_A.weight"), tensors.get(f"{module}.lora_B.weight")
        if a is None or b is None:
            raise ModelLoadError(f"{peft_dir}: {module} lacks lora_A or lora_B; is it a plain LoRA adapter?")
        hf_name = f"{module}.weight"
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight",))
        if gguf_name is None:
            raise ModelLoadError(
                f"{peft_dir}: no llama.cpp tensor for {hf_name} in architecture {model.arch}"
            )
        want = model.shapes.get(gguf_name)
        if want is None:
            raise ModelLoadError(f"{peft_dir}: {hf_name} is not a weight of the base model in {model.source}")
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or (b.shape[0], a.shape[1]) != want:
            raise ModelLoadError(
                f"{peft_dir}: {module} has lora_A {a.shape} and lora_B {b.shape} but the base weight is {want}; "
                "the adapter was made for another base model"
            )
        if model.arch == "llama" and module.endswith(("q_proj", "k_proj")):
            b = _permute_rows(b, model.n_head, model.n_head if module.endswith("q_proj") else model.n_kv_head)
        pairs.append((gguf_name, a.astype(np_type), b.astype(np_type)))
    if not pairs:
        raise ModelLoadError(f"{peft_dir} holds no LoRA tensors")

    with atomic_output(out) as tmp:
        writer = gguf.GGUFWriter(tmp, model.arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(peft_dir.name)
        writer.add_file_type(
            gguf.LlamaFileType.ALL_F32 if outtype == "f32" else gguf.LlamaFileType.MOSTLY_F16
        )
        for name, a, b in pairs:
            writer.add_tensor(f"{name}.lora_a", np.ascontiguousarray(a))
            writer.add_tensor(f"{name}.lora_b", np.ascontiguousarray(b))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    logger.info(
        "converted adapter %s (%d modules, r=%d, alpha=%g) to %s", peft_dir, len(pairs), r, alpha, out
    )
    return out


def cached_peft_gguf(peft_dir: Path, base_gguf: Path, cache_dir: Path | None = None) -> Path:
    """``peft_dir`` as a LoRA GGUF for the GGUF model ``base_gguf``, converted once into a cache.

    The cached file is keyed by a hash of the adapter's files and the base's architecture and weight
    shapes, so an edited adapter or another base converts again. Default cache:
    ``~/.cache/edgereason/adapters`` (``$XDG_CACHE_HOME`` respected).
    """
    peft_dir = Path(peft_dir).expanduser()
    read_adapter_config(peft_dir)  # clear errors before hashing anything
    model = read_base_model(base_gguf)
    digest = hashlib.sha256(f"{ADAPTER_CACHE_VERSION}|{model.fingerprint()}".encode())
    for name in (ADAPTER_CONFIG, *ADAPTER_WEIGHTS):
        path = peft_dir / name
        if path.is_file():
            digest.update(name.encode())
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    root = Path(cache_dir) if cache_dir is not None else default_adapter_cache()
    out = root / f"{_safe_stem(peft_dir.name)}-{digest.hexdigest()[:20]}.gguf"
    if out.is_file():
        logger.info("adapter %s: using the converted copy %s", peft_dir, out)
        return out
    return peft_to_gguf(peft_dir, base_gguf, out, force=True)


def default_adapter_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgereason" / "adapters"


def _safe_stem(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:64] or "adapter"


def _name_map(arch: str, n_layers: int) -> Any:
    gguf = import_gguf()

    model_arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    return gguf.get_tensor_name_map(model_arch, n_layers)


def _hf_base(base_hf_dir: Path) -> BaseModel:
    config = read_hf_config(base_hf_dir)
    arch = SUPPORTED_ARCHITECTURES[config["architectures"][0]]
    n_layers = int(config["num_hidden_layers"])
    n_head = int(config["num_attention_heads"])
    name_map = _name_map(arch, n_layers)
    shapes: dict[str, tuple[int, int]] = {}
    for hf_name, shape in _base_shapes(base_hf_dir).items():
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight",))
        if gguf_name is not None:
            shapes[gguf_name] = shape
    return BaseModel(
        source=base_hf_dir,
        arch=arch,
        n_layers=n_layers,
        n_head=n_head,
        n_kv_head=int(config.get("num_key_value_heads") or n_head),
        shapes=shapes,
    )


def _gguf_base(base_gguf: Path) -> BaseModel:
    gguf = import_gguf()

    try:
        reader = gguf.GGUFReader(base_gguf)
    except Exception as exc:  # noqa: BLE001 - the reader raises plain ValueError/OSError variants
        raise ModelLoadError(f"{base_gguf} is not a readable GGUF file: {exc}") from exc

    def field(key: str) -> Any:
        f = reader.get_field(key)
        if f is None:
            raise ModelLoadError(f"{base_gguf} has no {key}; is it a model GGUF?")
        return f.contents()

    arch = str(field("general.architecture"))
    if arch not in SUPPORTED_ARCHITECTURES.values():
        supported = ", ".join(SUPPORTED_ARCHITECTURES.values())
        raise ModelLoadError(f"{base_gguf}: adapters convert for {supported} models, not {arch}")
    n_head = int(field(f"{arch}.attention.head_count"))
    kv = reader.get_field(f"{arch}.attention.head_count_kv")
    shapes = {
        t.name: (int(t.shape[1]), int(t.shape[0]))  # GGUF lists dims innermost first: [in, out]
        for t in reader.tensors
        if len(t.shape) == 2
    }
    return BaseModel(
        source=base_gguf,
        arch=arch,
        n_layers=int(field(f"{arch}.block_count")),
        n_head=n_head,
        n_kv_head=int(kv.contents()) if kv is not None else n_head,
        shapes=shapes,
    )


def read_adapter_config(peft_dir: Path) -> dict[str, Any]:
    """``adapter_config.json`` of a PEFT LoRA folder, rejecting variants llama.cpp cannot apply."""
    path = Path(peft_dir) / ADAPTER_CONFIG
    if not path.is_file():
        raise ModelLoadError(f"{peft_dir} has no {ADAPTER_CONFIG}; is it a PEFT adapter folder?")
    try:
        cfg: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ModelLoadError(f"{peft_dir} is a {cfg.get('peft_type')} adapter; only LoRA converts to GGUF")
    unsupported = {
        "use_dora": "DoRA",
        "rank_pattern": "per-module ranks",
        "alpha_pattern": "per-module alphas",
        "modules_to_save": "fully trained modules (modules_to_save)",
        "lora_bias": "LoRA biases",
    }
    for key, what in unsupported.items():
        if cfg.get(key):
            raise ModelLoadError(f"{peft_dir} uses {what}, which llama.cpp LoRA adapters cannot express")
    if not isinstance(cfg.get("r"), int) or cfg["r"] <= 0:
        raise ModelLoadError(f"{path} has no positive integer rank 'r'")
    return cfg


def _read_adapter_tensors(peft_dir: Path) -> dict[str, NDArray[Any]]:
    """LoRA tensors keyed by the base module name (``model.layers.0.self_attn.q_proj.lora_A.weight``)."""
    import torch

    st = Path(peft_dir) / ADAPTER_WEIGHTS[0]
    if st.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(st), framework="pt") as f:
                raw = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise ModelLoadError(f"{st} is not a readable safetensors file: {exc}") from exc
    elif (Path(peft_dir) / ADAPTER_WEIGHTS[1]).is_file():
        raw = torch.load(Path(peft_dir) / ADAPTER_WEIGHTS[1], map_location="cpu", weights_only=True)
    else:
        raise ModelLoadError(f"{peft_dir} has no {' or '.join(ADAPTER_WEIGHTS)}")
    out: dict[str, NDArray[Any]] = {}
    for key, value in raw.items():
        if "lora_embedding" in key or "lora_magnitude" in key:
            raise ModelLoadError(
                f"{peft_dir}: {key} (embedding/DoRA LoRA) is not supported by llama.cpp adapters"
            )
        name = key.removeprefix(_PEFT_PREFIX).replace(".default.", ".")
        out[name] = value.detach().to(torch.float32).numpy()
    return out


def _base_shapes(base_hf_dir: Path) -> dict[str, tuple[int, int]]:
    from safetensors import safe_open

    shapes: dict[str, tuple[int, int]] = {}
    for path in sorted(Path(base_hf_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="np") as f:
            for key in f.keys():  # noqa: SIM118 - not a dict
                shape = f.get_slice(key).get_shape()
                if len(shape) == 2:
                    shapes[key] = (int(shape[0]), int(shape[1]))
    if not shapes:
        raise ModelLoadError(f"{base_hf_dir} has no safetensors weights to check the adapter against")
    return shapes


def _permute_rows(w: NDArray[Any], n_head: int, n_head_kv: int) -> NDArray[Any]:
    """The row order llama.cpp's llama converter gives q/k projections (its ``LlamaModel.permute``)."""
    n = n_head_kv if n_head_kv != n_head else n_head
    return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def make_random_peft_adapter(
    base_hf_dir: Path,
    out_dir: Path,
    *,
    r: int = 8,
    alpha: float = 16.0,
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES,
    std: float = 0.05,
    seed: int = 0,
) -> Path:
    """Save a PEFT LoRA for ``base_hf_dir`` with random, non-zero ``lora_A`` and ``lora_B`` to ``out_dir``.

    PEFT initialises ``lora_B`` to zero (the adapter starts as a no-op); tests need an adapter that changes
    the outputs, so both matrices are drawn from N(0, std). Returns ``out_dir``.
    """
    try:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM
    except ImportError as exc:
        raise MissingExtraError("building PEFT adapters", "convert") from exc
    model = AutoModelForCausalLM.from_pretrained(base_hf_dir, dtype=torch.float32)
    cfg = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=0.0, bias="none"
    )
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    peft_model.save_pretrained(out_dir)
    return Path(out_dir)


def hf_copy_of_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """A Hugging Face checkpoint (float32) of a GGUF model, dequantised by transformers; returns ``out_dir``.

    Lets PEFT build adapters for a model that only ships as GGUF (the embedded SmolLM2).
    """
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise MissingExtraError("reading GGUF models into transformers", "convert") from exc
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    kwargs: dict[str, Any] = {"gguf_file": gguf_path.name}
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    # transformers refuses to save a model it loaded from GGUF; the weights are plain float32 by now, so
    # move them into an ordinary model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert a PEFT LoRA adapter folder to a llama.cpp LoRA GGUF."
    )
    parser.add_argument(
        "adapter", type=Path, help="PEFT folder (adapter_config.json, adapter_model.safetensors)"
    )
    parser.add_argument(
        "--base", type=Path, required=True, help="the base model: its Hugging Face folder or its GGUF file"
    )
    parser.add_argument("-o", "--out", type=Path, required=True, help="GGUF file to write")
    parser.add_argument("--outtype", choices=("f32", "f16"), default="f32")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        peft_to_gguf(args.adapter, args.base, args.out, args.outtype, force=args.force)
    except EdgeReasonError as exc:
        logger.error("error: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
