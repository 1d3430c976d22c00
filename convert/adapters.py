"""PEFT LoRA adapters for conversion: base-model checks, merging, and mlx-lm's adapter format.

GGUF adapters are ``lora_export.peft_to_gguf``'s job; here is what the other targets need. mlx-lm's
``LoRALinear`` computes ``y + scale * (x @ lora_a) @ lora_b`` with ``lora_a`` of shape ``(in, r)`` and
``lora_b`` of shape ``(r, out)``: PEFT's ``lora_A.weight`` ``(r, in)`` and ``lora_B.weight`` ``(out, r)``
transposed, with ``scale = alpha / r`` (``alpha / sqrt(r)`` for rsLoRA).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgereason.errors import MissingExtraError, ModelLoadError

from .lora_export import ADAPTER_CONFIG, ADAPTER_WEIGHTS, read_adapter_config

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

logger = logging.getLogger(__name__)

_PEFT_PREFIX = "base_model.model."
_LAYER_PREFIX = "model.layers."
MLX_ADAPTER_DIR = "adapters"
MLX_ADAPTER_WEIGHTS = "adapters.safetensors"
_TOKENIZER_AND_GENERATION_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "generation_config.json",
)


def _adapter_file(peft_dir: Path) -> Path:
    for name in ADAPTER_WEIGHTS:
        if (peft_dir / name).is_file():
            return peft_dir / name
    raise ModelLoadError(f"{peft_dir} has no {' or '.join(ADAPTER_WEIGHTS)}; is it a PEFT adapter folder?")


def read_adapter_tensors(peft_dir: Path) -> dict[str, NDArray[np.float32]]:
    """Adapter tensors as float32 arrays keyed like ``model.layers.0.self_attn.q_proj.lora_A.weight``."""
    import torch

    path = _adapter_file(peft_dir)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise ModelLoadError(f"{path} is not a readable safetensors file: {exc}") from exc
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    return {
        key.removeprefix(_PEFT_PREFIX).replace(".default.", "."): value.detach().float().numpy()
        for key, value in raw.items()
    }


def _base_weight_shapes(hf_dir: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(hf_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - not a dict
                shapes[key] = tuple(int(d) for d in f.get_slice(key).get_shape())
    return shapes


def check_adapter_base(peft_dir: Path, hf_dir: Path) -> dict[str, Any]:
    """Fail unless every LoRA pair in ``peft_dir`` fits a weight of the base in ``hf_dir``; return its config.

    A PEFT folder names its base only as a free-form ``base_model_name_or_path``; the shapes are what
    decide whether the adapter can apply.
    """
    peft_dir, hf_dir = Path(peft_dir), Path(hf_dir)
    config_path = peft_dir / ADAPTER_CONFIG
    if not config_path.is_file():
        raise ModelLoadError(f"{peft_dir} has no {ADAPTER_CONFIG}; is it a PEFT adapter folder?")
    config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
    tensors = read_adapter_tensors(peft_dir)
    shapes = _base_weight_shapes(hf_dir)
    named_base = config.get("base_model_name_or_path") or "an unnamed base"
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removesuffix(".lora_A.weight")
        b = tensors.get(f"{module}.lora_B.weight")
        want = shapes.get(f"{module}.weight")
        if b is None:
            raise ModelLoadError(f"{peft_dir}: {module} has lora_A but no lora_B")
        if want is None or (b.shape[0], a.shape[1]) != tuple(want):
            found = "no such weight" if want is None else f"weight {tuple(want)}"
            raise ModelLoadError(
                f"the adapter {peft_dir} (made for {named_base}) does not match the base model {hf_dir}: "
                f"{module} needs a ({b.shape[0]}, {a.shape[1]}) weight, the base has {found}"
            )
    return config


def copy_tokenizer_files(src: Path, dest: Path) -> None:
    """Copy the tokenizer, chat template and generation config files of a checkpoint folder."""
    for name in _TOKENIZER_AND_GENERATION_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)


def merge_adapter(hf_dir: Path, peft_dir: Path, dest: Path) -> Path:
    """Merge the PEFT LoRA ``peft_dir`` into ``hf_dir``'s weights (peft's merge_and_unload); write ``dest``."""
    try:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
    except ImportError as exc:
        raise MissingExtraError("merging adapters", "convert") from exc
    check_adapter_base(peft_dir, hf_dir)
    base = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    try:
        merged = PeftModel.from_pretrained(base, str(peft_dir)).merge_and_unload()
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"peft could not apply {peft_dir} to {hf_dir}: {exc}") from exc
    dest.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(dest, safe_serialization=True)
    copy_tokenizer_files(hf_dir, dest)
    logger.info("merged adapter %s into %s", peft_dir, hf_dir)
    return dest


def peft_to_mlx_adapter(peft_dir: Path, hf_dir: Path, dest: Path) -> Path:
    """Write the PEFT LoRA ``peft_dir`` as an mlx-lm adapter folder ``dest`` (``mlx_lm.load(adapter_path=)``)."""
    import numpy as np
    from safetensors.numpy import save_file

    peft_dir = Path(peft_dir)
    config = read_adapter_config(peft_dir)  # rejects DoRA, per-module ranks, modules_to_save, ...
    check_adapter_base(peft_dir, hf_dir)
    tensors = read_adapter_tensors(peft_dir)
    r = int(config["r"])
    alpha = float(config.get("lora_alpha") or r)
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    weights: dict[str, NDArray[Any]] = {}
    keys: set[str] = set()
    for key in sorted(tensors):
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removesuffix(".lora_A.weight")
        if not module.startswith(_LAYER_PREFIX):
            raise ModelLoadError(
                f"{peft_dir}: {module} is outside the decoder layers; mlx-lm adapters cover only layer modules"
            )
        keys.add(module.removeprefix(_LAYER_PREFIX).split(".", 1)[1])
        weights[f"{module}.lora_a"] = np.ascontiguousarray(tensors[key].T)
        weights[f"{module}.lora_b"] = np.ascontiguousarray(tensors[f"{module}.lora_B.weight"].T)
    if not weights:
        raise ModelLoadError(f"{peft_dir} holds no LoRA tensors")
    n_layers = int(json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))["num_hidden_layers"])
    mlx_config = {
        "fine_tune_type": "lora",
        "num_layers": n_layers,
        "lora_parameters": {"rank": r, "scale": scale, "dropout": 0.0, "keys": sorted(keys)},
    }
    dest.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(dest / MLX_ADAPTER_WEIGHTS))
    (dest / "adapter_config.json").write_text(json.dumps(mlx_config, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote mlx-lm adapter (%d modules, r=%d, scale=%g) to %s", len(weights) // 2, r, scale, dest)
    return dest
