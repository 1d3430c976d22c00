"""Hugging Face checkpoint -> MLX folder with mlx-lm's converter, and logits from mlx-lm's model.

Runs on Linux CPU through ``mlx[cpu]``. Quantisation is mlx-lm's affine 4/8-bit (group size 64); layers
whose input width does not divide by the group size stay in float, as mlx-lm decides.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgereason.errors import MissingExtraError, ModelLoadError

if TYPE_CHECKING:
    from numpy.typing import NDArray

logger = logging.getLogger(__name__)

MLX_QUANTS: tuple[str, ...] = ("f32", "f16", "bf16", "8", "4")
DEFAULT_GROUP_SIZE = 64
_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


def _import_mlx_convert() -> object:
    try:
        from mlx_lm.convert import convert
    except ImportError as exc:
        raise MissingExtraError("converting to MLX", "mlx") from exc
    return convert


def hf_to_mlx(hf_dir: Path, dest: Path, quant: str) -> Path:
    """Write the MLX folder ``dest`` (must not exist) from ``hf_dir`` as ``quant`` (``MLX_QUANTS``)."""
    mlx_convert = _import_mlx_convert()
    if quant in _DTYPES:
        kwargs: dict[str, object] = {"dtype": _DTYPES[quant]}
    else:
        kwargs = {"quantize": True, "q_bits": int(quant), "q_group_size": DEFAULT_GROUP_SIZE}
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):  # mlx-lm reports progress with print()
            mlx_convert(str(hf_dir), str(dest), **kwargs)  # type: ignore[operator]
    except (ValueError, KeyError, OSError, RuntimeError) as exc:  # RuntimeError: mlx's loaders
        raise ModelLoadError(f"mlx-lm could not convert {hf_dir}: {type(exc).__name__}: {exc}") from exc
    finally:
        for line in out.getvalue().splitlines():
            logger.info("mlx-lm: %s", line)
    _add_legacy_rope_keys(dest / "config.json")
    return dest


def _add_legacy_rope_keys(config_path: Path) -> None:
    # transformers 5 saves rope settings only as `rope_parameters`; mlx-lm's llama/qwen models read the
    # older top-level `rope_theta`/`rope_scaling` and would silently fall back to a base of 10000.
    config = json.loads(config_path.read_text(encoding="utf-8"))
    rope = config.get("rope_parameters")
    if not isinstance(rope, dict):
        return
    if "rope_theta" not in config and "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
    if rope.get("rope_type", "default") != "default" and not config.get("rope_scaling"):
        config["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    config_path.write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")


def mlx_logits_and_greedy(
    folder: Path, token_ids: list[int], n_new: int, *, adapter: Path | None = None
) -> tuple[NDArray[np.float32], list[int]]:
    """Logits of every position of ``token_ids`` and ``n_new`` argmax tokens after them, from mlx-lm."""
    try:
        import mlx.core as mx
        from mlx_lm import load
    except ImportError as exc:
        raise MissingExtraError("running MLX models", "mlx") from exc
    from mlx_lm.models.cache import make_prompt_cache

    model = load(str(folder), adapter_path=str(adapter) if adapter else None)[0]
    # mlx's CPU backend is slow on long inputs: one prompt pass, then one token per step on the KV cache.
    cache = make_prompt_cache(model)
    logits = np.array(model(mx.array([token_ids]), cache=cache)[0].astype(mx.float32))
    greedy: list[int] = []
    next_id = int(logits[-1].argmax())
    for _ in range(n_new):
        greedy.append(next_id)
        step = model(mx.array([[next_id]]), cache=cache)[0, -1].astype(mx.float32)
        next_id = int(np.array(step).argmax())
    return logits, greedy
