"""mlx-lm model folders through MLX: one KV cache per sequence slot.

Each slot owns an mlx-lm prompt cache (``make_prompt_cache``); a decode call runs every item's forward
pass and evaluates them together (one lazy graph, one ``mx.eval``). Sequences are not padded into one
batch tensor: per-slot passes give each sequence exactly the logits it gets alone. Forks deep-copy the
cache; rewinds trim it. LoRA adapters (mlx-lm's ``adapters.safetensors`` + ``adapter_config.json``)
are loaded once into wrapper layers around the base linears; selecting a set swaps which low-rank
pairs those layers add, without touching or reloading the base weights.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..errors import MissingExtraError, ModelLoadError, UnknownAdapterError
from .base import (
    AdapterSet,
    BatchItem,
    Capabilities,
    ContextFullError,
    ModelInfo,
    require_loaded,
)
from .hf_folder import (
    FolderBackendMixin,
    FolderTokenizer,
    eos_ids_of,
    folder_size,
    read_chat_template,
    read_json,
)

log = logging.getLogger(__name__)

DEFAULT_N_CTX = 4096  # per sequence
DEFAULT_MAX_SEQUENCES = 8
DEFAULT_N_BATCH = 512


def _import_mlx() -> tuple[Any, Any]:
    try:
        import mlx.core as mx
        import mlx.nn as nn
    except ImportError as exc:
        raise MissingExtraError("the MLX backend", "mlx") from exc
    return mx, nn


def is_mlx_folder(path: Path) -> bool:
    """An mlx-lm (or Hugging Face safetensors) model folder."""
    return path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))


class _LoraPair:
    """One adapter's low-rank pair on one layer: ``y += scale * (x @ a) @ b``."""

    def __init__(self, a: Any, b: Any, scale: float) -> None:
        self.a, self.b, self.scale = a, b, scale


class _Selected:
    """The pairs a wrapper adds now; a plain object, so MLX does not treat it as parameters."""

    def __init__(self) -> None:
        self.pairs: list[tuple[_LoraPair, float]] = []


def _make_multi_lora(nn: Any) -> type:
    class MultiLoRALinear(nn.Module):  # type: ignore[misc,name-defined]
        """A base linear plus the low-rank pairs of whichever adapters are selected."""

        def __init__(self, base: Any) -> None:
            super().__init__()
            self.base = base
            self.selected = _Selected()

        def __call__(self, x: Any) -> Any:
            y = self.base(x)
            for pair, scale in self.selected.pairs:
                y = y + (scale * pair.scale * ((x @ pair.a) @ pair.b)).astype(x.dtype)
            return y

    return MultiLoRALinear


class MlxBackend(FolderBackendMixin):
    """Backend over an mlx-lm model folder (config.json + *.safetensors + tokenizer.json)."""

    def __init__(
        self,
        path: str | Path,
        *,
        n_ctx: int | None = None,
        max_sequences: int = DEFAULT_MAX_SEQUENCES,
        n_batch: int = DEFAULT_N_BATCH,
        adapters: dict[str, str | Path] | None = None,
    ) -> None:
        mx, nn = _import_mlx()
        try:
            from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache
            from mlx_lm.utils import load_model
        except ImportError as exc:
            raise MissingExtraError("the MLX backend", "mlx") from exc
        folder = Path(path).expanduser()
        if not is_mlx_folder(folder):
            raise ModelLoadError(f"{folder} is not an MLX model folder (config.json + *.safetensors)")
        self._mx = mx
        self._make_cache = make_prompt_cache
        try:
            self.model, config = load_model(folder, model_config=_legacy_rope_keys(folder))
        except (ValueError, FileNotFoundError, KeyError) as exc:
            raise ModelLoadError(f"mlx-lm could not load {folder}: {exc}") from exc
        self._multi_lora = _make_multi_lora(nn)
        gen_cfg = read_json(folder / "generation_config.json")
        self.tokenizer = FolderTokenizer(folder, eos_ids_of(config, gen_cfg), extra="mlx")
        n_ctx_train = int(config.get("max_position_embeddings") or 0)
        n_ctx = n_ctx or min(DEFAULT_N_CTX, n_ctx_train or DEFAULT_N_CTX)
        self._caches: dict[int, list[Any]] = {}
        self._rows: list[np.ndarray] = []
        self._adapters: dict[str, list[tuple[Any, _LoraPair]]] = {}
        self._active_adapters: AdapterSet = ()
        self.adapter_files: dict[str, Path] = {}  # name -> the mlx-lm adapter folder loaded under it
        self.capabilities = Capabilities(
            max_sequences=max_sequences,
            n_ctx=n_ctx,
            n_batch=n_batch,
            fork=True,
            rewind=bool(can_trim_prompt_cache(make_prompt_cache(self.model))),
            lora=True,
        )
        self.info = ModelInfo(
            name=folder.name,
            path=folder,
            format="mlx",
            architecture=str(config.get("model_type", "unknown")),
            quantization=_quantization_of(config),
            n_params=_count_params(self.model),
            size_bytes=folder_size(folder),
            n_ctx_train=n_ctx_train,
            n_vocab=int(config.get("vocab_size") or self.tokenizer.n_vocab),
            chat_template=read_chat_template(folder),
            bos_token=self.tokenizer.bos_token,
            eos_token=self.tokenizer.eos_token,
            add_bos=self.tokenizer.add_bos,
            has_think_token=self.tokenizer.is_single_token("<think>"),
        )
        for name, adapter_path in (adapters or {}).items():
            self.load_adapter(name, adapter_path)

    # -- decoding (tokenising and sampling come from FolderBackendMixin) ----------------------
    def decode(self, items: Sequence[BatchItem]) -> list[int]:
        mx = self._mx
        n = sum(len(i.tokens) for i in items)
        if n > self.capabilities.n_batch:
            raise ValueError(f"batch of {n} tokens exceeds n_batch={self.capabilities.n_batch}")
        for item in items:  # check every item before running any, so a refused call changes nothing
            if item.pos + len(item.tokens) > self.capabilities.n_ctx:
                raise ContextFullError(f"sequence {item.slot} would pass n_ctx={self.capabilities.n_ctx}")
            held = self._offset(item.slot)
            if item.pos != held:
                raise RuntimeError(
                    f"sequence {item.slot} holds {held} positions, decode asked for {item.pos}"
                )
        outputs: list[Any] = []
        states: list[Any] = []
        for item in items:
            cache = self._caches.get(item.slot)
            if cache is None:
                cache = self._caches[item.slot] = self._make_cache(self.model)
            logits = self.model(mx.array(list(item.tokens), dtype=mx.int32)[None], cache=cache)
            outputs.append(logits[0, -1].astype(mx.float32) if item.want_logits else None)
            states += [c.state for c in cache]
        mx.eval([o for o in outputs if o is not None], states)
        self._rows = []
        handles: list[int] = []
        for out in outputs:
            if out is None:
                handles.append(-1)
            else:
                handles.append(len(self._rows))
                self._rows.append(np.asarray(out))
        return handles

    def _offset(self, slot: int) -> int:
        cache = self._caches.get(slot)
        return int(cache[0].offset) if cache else 0

    def logits(self, handle: int) -> np.ndarray:
        return self._rows[handle]

    def copy_seq(self, src: int, dst: int) -> None:
        cache = self._caches.get(src)
        if cache is None:
            self._caches.pop(dst, None)
        else:
            self._caches[dst] = copy.deepcopy(cache)

    def remove(self, slot: int, from_pos: int = 0) -> None:
        if from_pos <= 0:
            self._caches.pop(slot, None)
            return
        cache = self._caches.get(slot)
        held = self._offset(slot)
        if cache is None or from_pos >= held:
            return
        if not self.capabilities.rewind:
            raise RuntimeError(f"this model's cache cannot be trimmed (sequence {slot})")
        for c in cache:
            c.trim(held - from_pos)

    # -- adapters ------------------------------------------------------------------------------
    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load an mlx-lm LoRA adapter folder once; its layers wrap the base linears they target."""
        mx = self._mx
        folder = Path(path).expanduser()
        cfg_path, weights_path = folder / "adapter_config.json", folder / "adapters.safetensors"
        if not cfg_path.is_file() or not weights_path.is_file():
            raise ModelLoadError(
                f"{folder} is not an mlx-lm adapter folder (adapter_config.json + adapters.safetensors)"
            )
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("fine_tune_type", "lora") != "lora":
            raise ModelLoadError(
                f"adapter {name!r}: only LoRA adapters are supported, not {cfg['fine_tune_type']}"
            )
        scale = float((cfg.get("lora_parameters") or {}).get("scale", 1.0))
        weights = mx.load(str(weights_path))
        targets = sorted({k.rsplit(".", 1)[0] for k in weights if k.endswith((".lora_a", ".lora_b"))})
        if not targets or len(targets) * 2 != len(weights):
            raise ModelLoadError(f"adapter {name!r} at {folder} holds tensors other than lora_a/lora_b pairs")
        modules = dict(self.model.named_modules())
        placed: list[tuple[Any, _LoraPair]] = []
        for target in targets:
            layer = self._wrap(target, modules)
            if layer is None:
                raise ModelLoadError(f"adapter {name!r} targets {target}, which this model does not have")
            a, b = weights[f"{target}.lora_a"], weights[f"{target}.lora_b"]
            out_dims = _out_dims(layer.base)
            if a.shape[1] != b.shape[0] or b.shape[1] != out_dims:
                raise ModelLoadError(f"adapter {name!r} does not fit {target} of this model (shape mismatch)")
            placed.append((layer, _LoraPair(a, b, scale)))
        mx.eval([p.a for _, p in placed], [p.b for _, p in placed])
        self._adapters[name] = placed
        self.adapter_files[name] = folder
        log.info("loaded MLX adapter %s (%d layers) from %s", name, len(placed), folder)

    def _wrap(self, target: str, modules: dict[str, Any]) -> Any:
        """The wrapper at ``target``, installing it over the base linear the first time."""
        layer = modules.get(target)
        if layer is None:
            return None
        if isinstance(layer, self._multi_lora):
            return layer
        parent_name, _, attr = target.rpartition(".")
        parent = modules[parent_name] if parent_name else self.model
        wrapper = self._multi_lora(layer)
        setattr(parent, attr, wrapper)
        modules[target] = wrapper
        return wrapper

    def unload_adapter(self, name: str) -> None:
        if name not in self._adapters:
            raise UnknownAdapterError(f"adapter {name!r} is not loaded")
        if any(n == name for n, _ in self._active_adapters):
            self.set_adapters(())
        del self._adapters[name]
        self.adapter_files.pop(name, None)

    @property
    def adapter_names(self) -> list[str]:
        return sorted(self._adapters)

    def set_adapters(self, adapters: AdapterSet) -> None:
        if adapters == self._active_adapters:
            return
        require_loaded(adapters, self._adapters)
        for placed in self._adapters.values():
            for layer, _ in placed:
                layer.selected.pairs = []
        for name, scale in adapters:
            for layer, pair in self._adapters[name]:
                layer.selected.pairs.append((pair, scale))
        self._active_adapters = adapters

    def close(self) -> None:
        self._caches.clear()
        self._rows = []
        self._adapters.clear()


def _legacy_rope_keys(folder: Path) -> dict[str, Any]:
    """transformers 5 writes rope settings only as ``rope_parameters``; mlx-lm's llama/qwen models read
    ``rope_theta``/``rope_scaling`` and would silently use a base of 10000 (folders from plain mlx_lm.convert)."""
    config = read_json(folder / "config.json")
    rope = config.get("rope_parameters")
    extra: dict[str, Any] = {}
    if not isinstance(rope, dict):
        return extra
    if "rope_theta" not in config and "rope_theta" in rope:
        extra["rope_theta"] = rope["rope_theta"]
    if rope.get("rope_type", "default") != "default" and not config.get("rope_scaling"):
        extra["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    return extra


def _out_dims(linear: Any) -> int:
    w = linear.weight
    return int(w.shape[0])


def _count_params(model: Any) -> int:
    from mlx.utils import tree_flatten

    leaves = cast(list[tuple[str, Any]], tree_flatten(model.parameters()))
    return int(sum(v.size for _, v in leaves))


def _quantization_of(config: dict[str, Any]) -> str:
    q = config.get("quantization") or config.get("quantization_config")
    if isinstance(q, dict) and q.get("bits"):
        return f"q{q['bits']}" + (f"g{q['group_size']}" if q.get("group_size") else "")
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "unknown")
    return {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}.get(dtype, dtype)
