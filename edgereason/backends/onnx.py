"""onnxruntime-genai model folders: one ``og.Generator`` per sequence slot.

A generator holds one sequence's KV cache; ``append_tokens`` runs the forward pass and ``get_logits``
hands back the last position's logits, which EdgeReason samples itself (the generator's own search
is never used). ``rewind_to`` forgets positions. A generator's state cannot be copied, so forks are
declared unsupported (``capabilities.fork = False``) and the scheduler re-prefills the shared tokens
into the new slot instead. LoRA: onnxruntime-genai only switches adapters on models exported with
adapter inputs (Olive's multi-LoRA export); the model builder bakes a PEFT adapter into the weights,
so ``capabilities.lora`` is False.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingExtraError, ModelLoadError, UnknownAdapterError
from .base import (
    AdapterSet,
    BatchItem,
    Capabilities,
    ContextFullError,
    ModelInfo,
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


def _import_og() -> Any:
    try:
        import onnxruntime_genai as og
    except ImportError as exc:
        raise MissingExtraError("the ONNX backend", "onnx") from exc
    return og


def is_onnx_folder(path: Path) -> bool:
    return path.is_dir() and (path / "genai_config.json").is_file()


class OnnxBackend(FolderBackendMixin):
    """Backend over an onnxruntime-genai model folder (genai_config.json + model.onnx + tokenizer.json)."""

    def __init__(
        self,
        path: str | Path,
        *,
        n_ctx: int | None = None,
        threads: int | None = None,
        max_sequences: int = DEFAULT_MAX_SEQUENCES,
        n_batch: int = DEFAULT_N_BATCH,
        adapters: dict[str, str | Path] | None = None,
    ) -> None:
        og = self._og = _import_og()
        folder = Path(path).expanduser()
        if not is_onnx_folder(folder):
            raise ModelLoadError(f"{folder} is not an onnxruntime-genai model folder (no genai_config.json)")
        if adapters:
            raise ModelLoadError(
                "the ONNX backend cannot switch LoRA adapters on models from the onnxruntime-genai builder; "
                "use a GGUF (llama.cpp) or MLX model for adapters"
            )
        genai = read_json(folder / "genai_config.json")
        model_cfg = genai.get("model") or {}
        try:
            config = og.Config(str(folder))
            if threads:
                config.overlay(
                    json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}})
                )
            self.model = og.Model(config)
        except Exception as exc:  # onnxruntime-genai raises plain RuntimeError for every load failure
            raise ModelLoadError(f"onnxruntime-genai could not load {folder}: {exc}") from exc
        self.tokenizer = FolderTokenizer(folder, eos_ids_of(model_cfg), extra="onnx")
        n_ctx_train = int(model_cfg.get("context_length") or 0)
        n_ctx = n_ctx or min(DEFAULT_N_CTX, n_ctx_train or DEFAULT_N_CTX)
        self._generators: dict[int, Any] = {}
        self._rows: list[np.ndarray] = []
        self.capabilities = Capabilities(
            max_sequences=max_sequences,
            n_ctx=n_ctx,
            n_batch=n_batch,
            fork=False,
            rewind=True,
            lora=False,
        )
        decoder = model_cfg.get("decoder") or {}
        self.info = ModelInfo(
            name=folder.name,
            path=folder,
            format="onnx",
            architecture=str(model_cfg.get("type", "unknown")),
            quantization=_precision_of(folder),
            n_params=0,  # not recorded in the folder; reading the graph would cost a second load
            size_bytes=folder_size(folder),
            n_ctx_train=n_ctx_train,
            n_vocab=int(model_cfg.get("vocab_size") or self.tokenizer.n_vocab),
            chat_template=read_chat_template(folder),
            bos_token=self.tokenizer.bos_token,
            eos_token=self.tokenizer.eos_token,
            add_bos=self.tokenizer.add_bos,
            has_think_token=self.tokenizer.is_single_token("<think>"),
        )
        log.info(
            "loaded ONNX model %s (%s, %s layers)",
            folder,
            self.info.architecture,
            decoder.get("num_hidden_layers"),
        )

    # -- decoding (tokenising and sampling come from FolderBackendMixin) ----------------------
    def decode(self, items: Sequence[BatchItem]) -> list[int]:
        n = sum(len(i.tokens) for i in items)
        if n > self.capabilities.n_batch:
            raise ValueError(f"batch of {n} tokens exceeds n_batch={self.capabilities.n_batch}")
        for item in items:  # check every item before running any, so a refused call changes nothing
            if item.pos + len(item.tokens) > self.capabilities.n_ctx:
                raise ContextFullError(f"sequence {item.slot} would pass n_ctx={self.capabilities.n_ctx}")
            held = self._held(item.slot)
            if item.pos != held:
                raise RuntimeError(
                    f"sequence {item.slot} holds {held} positions, decode asked for {item.pos}"
                )
        self._rows = []
        handles: list[int] = []
        for item in items:
            gen = self._generators.get(item.slot) or self._new_generator(item.slot)
            gen.append_tokens(np.asarray(item.tokens, dtype=np.int32))
            if item.want_logits:
                handles.append(len(self._rows))
                self._rows.append(np.asarray(gen.get_logits(), dtype=np.float32).reshape(-1))
            else:
                handles.append(-1)
        return handles

    def _new_generator(self, slot: int) -> Any:
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(max_length=self.capabilities.n_ctx, do_sample=False)
        gen = self._og.Generator(self.model, params)
        self._generators[slot] = gen
        return gen

    def _held(self, slot: int) -> int:
        gen = self._generators.get(slot)
        return int(gen.token_count()) if gen is not None else 0

    def copy_seq(self, src: int, dst: int) -> None:
        raise RuntimeError(
            "the ONNX backend cannot copy a sequence's state (capabilities.fork is False); re-prefill instead"
        )

    def remove(self, slot: int, from_pos: int = 0) -> None:
        if from_pos <= 0:
            self._generators.pop(slot, None)
            return
        gen = self._generators.get(slot)
        if gen is not None and from_pos < int(gen.token_count()):
            gen.rewind_to(from_pos)

    # -- adapters ------------------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        return []

    @property
    def adapter_files(self) -> dict[str, Path]:
        return {}

    def load_adapter(self, name: str, path: str | Path) -> None:
        raise ModelLoadError("the ONNX backend does not support LoRA adapters (capabilities.lora is False)")

    def unload_adapter(self, name: str) -> None:
        raise UnknownAdapterError(f"adapter {name!r} is not loaded")

    def set_adapters(self, adapters: AdapterSet) -> None:
        if adapters:
            raise UnknownAdapterError("the ONNX backend has no LoRA adapters loaded")

    def close(self) -> None:
        self._generators.clear()
        self._rows = []
        self.model = None


def _precision_of(folder: Path) -> str:
    """int4 when the graph uses MatMulNBits (the builder's int4 path); otherwise full-precision weights."""
    graph = folder / "model.onnx"
    if not graph.is_file() or graph.stat().st_size > 64 << 20:  # weights inline: don't read them all
        return "unknown"
    return "int4" if b"MatMulNBits" in graph.read_bytes() else "unquantized"
