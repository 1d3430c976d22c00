"""GGUF models through llama.cpp's low-level API: one context, many sequences.

The context is created with ``n_seq_max`` slots, each with its own KV stream (``kv_unified=False``:
a unified cache gives batched sequences different logits in this llama.cpp build, see README
"Determinism"), so a fork (``llama_memory_seq_cp``) copies the source's stream and the context holds
``n_ctx x n_seq_max`` cells. Each decode call takes tokens of many sequences; each sequence samples
with its own C sampler chain.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from ..adapters import adapter_gguf
from ..errors import InvalidRequestError, ModelLoadError, UnknownAdapterError
from ..gguf_meta import read_gguf_info
from ..structured import check_grammar
from .base import (
    AdapterSet,
    BatchItem,
    Capabilities,
    ContextFullError,
    ModelInfo,
    SamplingParams,
    TopLogprobs,
    require_loaded,
)

log = logging.getLogger(__name__)

DEFAULT_N_CTX = 4096  # per sequence
DEFAULT_MAX_SEQUENCES = 8
DEFAULT_N_BATCH = 512
# llama.cpp computes wrong attention for some sequences when one ubatch holds >= 32 query tokens of
# several sequences (ggml-org/llama.cpp#24962; reproduced here with SmolLM2, logits off by up to 0.66).
# Calls that mix sequences stay below that; a prompt is prefilled in calls of its own.
MIXED_BATCH_TOKENS = 30
# KV cache element types (llama-server's --cache-type-k/-v names) and their bytes per element.
CACHE_TYPES = {
    "f16": ("GGML_TYPE_F16", 2.0),
    "q8_0": ("GGML_TYPE_Q8_0", 34 / 32),
    "q4_0": ("GGML_TYPE_Q4_0", 18 / 32),
}

_backend_ready = False
_log_callback: Any = None  # kept alive: llama.cpp holds the pointer


def _import_llama() -> Any:
    import llama_cpp

    global _backend_ready, _log_callback
    if not _backend_ready:
        _levels = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}

        @llama_cpp.llama_log_callback
        def _route(level: int, text: bytes, _user: Any) -> None:
            lvl = _levels.get(level, logging.DEBUG)
            if log.isEnabledFor(lvl):
                log.log(lvl, "llama.cpp: %s", text.decode("utf-8", errors="replace").rstrip())

        _log_callback = _route
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _backend_ready = True
    return llama_cpp


def extra_buffers_usable(model_path: str | Path) -> bool:
    """Whether llama.cpp's extra CPU buffer types (AMX, repacked weights) run on this CPU.

    Some virtual machines advertise AMX but trap its instructions (SIGILL inside llama_decode). On
    such CPUs a child process tries one batched decode once; the verdict is cached per CPU model.
    ``EDGEREASON_EXTRA_BUFFERS=0|1`` overrides the probe.
    """
    forced = os.environ.get("EDGEREASON_EXTRA_BUFFERS")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    if "amx_tile" not in cpuinfo:
        return True
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "cpu"
    )
    # Probe with a quantised model: f32 weights never reach the AMX kernels, so they prove nothing.
    try:
        from ..models import embedded_model_path

        probe_path = embedded_model_path()
    except Exception:  # noqa: BLE001 - fall back to the model being loaded
        probe_path = Path(model_path)
    key = f"{cpu}|{read_gguf_info(probe_path).file_type}"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgereason" / "cpu-probe.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return bool(known[key])
    code = "import sys; from edgereason.backends.llama_cpp import _probe_decode; _probe_decode(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, str(probe_path)], capture_output=True, timeout=300)
    ok = proc.returncode == 0
    log.info("extra CPU buffer types %s on %s", "work" if ok else "crash (disabled)", key)
    known[key] = ok
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known))
    except OSError:
        pass
    return ok


def _probe_decode(model_path: str) -> None:
    """Child-process half of ``extra_buffers_usable``: one 64-token decode with extra buffers on."""
    lib = _import_llama()
    model = lib.llama_model_load_from_file(model_path.encode(), lib.llama_model_default_params())
    cparams = lib.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = 256, 64, 64
    ctx = lib.llama_init_from_model(model, cparams)
    batch = lib.llama_batch_init(64, 0, 1)
    for i in range(64):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = 1 + i, i, 1, i == 63
        batch.seq_id[i][0] = 0
    batch.n_tokens = 64
    sys.exit(lib.llama_decode(ctx, batch))


def is_recurrent(lib: Any, model: Any) -> bool:
    """Whether the model keeps recurrent state (Mamba, RWKV) alone or beside a KV cache (hybrids)."""
    return bool(lib.llama_model_is_recurrent(model) or lib.llama_model_is_hybrid(model))


class LlamaSampler:
    """A llama.cpp sampler chain owned by one sequence."""

    def __init__(self, lib: Any, vocab: Any, p: SamplingParams) -> None:
        self._lib = lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        add = lambda s: lib.llama_sampler_chain_add(chain, s)  # noqa: E731
        n_vocab = int(lib.llama_vocab_n_tokens(vocab))
        if p.logit_bias:
            biases = (lib.llama_logit_bias * len(p.logit_bias))()
            for i, (token, bias) in enumerate(p.logit_bias):
                biases[i].token, biases[i].bias = token, bias
            add(lib.llama_sampler_init_logit_bias(n_vocab, len(p.logit_bias), biases))
        if p.repeat_penalty != 1.0 or p.presence_penalty or p.frequency_penalty:
            # Over the generated tokens (each sampled token is accepted into the chain), as OpenAI's
            # penalties; this llama.cpp build's signature takes n_vocab first.
            add(
                lib.llama_sampler_init_penalties(
                    n_vocab, p.repeat_last_n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty
                )
            )
        if p.temperature <= 0.0:
            add(lib.llama_sampler_init_greedy())
        else:
            if p.top_k > 0:
                add(lib.llama_sampler_init_top_k(p.top_k))
            if p.top_p < 1.0:
                add(lib.llama_sampler_init_top_p(p.top_p, 1))
            if p.min_p > 0.0:
                add(lib.llama_sampler_init_min_p(p.min_p, 1))
            add(lib.llama_sampler_init_temp(p.temperature))
            add(lib.llama_sampler_init_dist(p.seed & 0xFFFFFFFF))
        self.handle = chain
        self._vocab = vocab
        self._grammar: Any = None  # the grammar sampler, first in the chain while engaged

    def set_grammar(self, grammar: str | None, root: str = "root") -> None:
        """Put a fresh grammar sampler first in the chain (None: remove it).

        First, so it masks the whole vocabulary before top-k/top-p/min-p pick among what is left: the
        sampled token is always one the grammar accepts (accepting any other aborts llama.cpp). The other
        samplers keep their state (penalty history, random generator) across the switch.
        """
        lib, chain = self._lib, self.handle
        new = None
        if grammar is not None:
            new = lib.llama_sampler_init_grammar(self._vocab, grammar.encode("utf-8"), root.encode("utf-8"))
            if not new:
                raise InvalidRequestError("grammar: llama.cpp cannot use this GBNF grammar", param="grammar")
        if self._grammar is not None:
            lib.llama_sampler_free(lib.llama_sampler_chain_remove(chain, 0))
            self._grammar = None
        if new is None:
            return
        rest = [lib.llama_sampler_chain_remove(chain, 0) for _ in range(lib.llama_sampler_chain_n(chain))]
        for s in (new, *rest):
            lib.llama_sampler_chain_add(chain, s)
        self._grammar = new

    def close(self) -> None:
        if self.handle is not None:
            self._lib.llama_sampler_free(self.handle)
            self.handle = None


class LlamaCppBackend:
    """Backend over a llama.cpp model and one multi-sequence context."""

    def __init__(
        self,
        path: str | Path,
        *,
        n_ctx: int | None = None,
        threads: int | None = None,
        max_sequences: int = DEFAULT_MAX_SEQUENCES,
        n_batch: int = DEFAULT_N_BATCH,
        adapters: Mapping[str, str | Path] | None = None,
        flash_attn: bool = False,
        cache_type_k: str = "f16",
        cache_type_v: str = "f16",
    ) -> None:
        for param, kind in (("cache_type_k", cache_type_k), ("cache_type_v", cache_type_v)):
            if kind not in CACHE_TYPES:
                raise InvalidRequestError(
                    f"{param} must be one of {sorted(CACHE_TYPES)}, got {kind!r}", param=param
                )
        gguf = read_gguf_info(path)  # clear errors for missing, non-GGUF and truncated files
        if gguf.is_adapter:
            raise ModelLoadError(
                f"{gguf.path} is a LoRA adapter, not a model; pass it with --adapter NAME=PATH"
            )
        lib = self._lib = _import_llama()
        self._stack = ExitStack()
        mparams = lib.llama_model_default_params()
        mparams.use_extra_bufts = extra_buffers_usable(gguf.path)
        model = lib.llama_model_load_from_file(str(gguf.path).encode(), mparams)
        if not model:
            raise ModelLoadError(
                f"llama.cpp could not load {gguf.path} (architecture {gguf.architecture!r}); is it supported?"
            )
        self._stack.callback(lib.llama_model_free, model)
        self.model = model
        self._model_path = gguf.path
        self.vocab = lib.llama_model_get_vocab(model)
        n_ctx_train = int(lib.llama_model_n_ctx_train(model))
        n_ctx = n_ctx or min(DEFAULT_N_CTX, n_ctx_train or DEFAULT_N_CTX)
        threads = threads or max(1, os.cpu_count() or 1)
        cparams = lib.llama_context_default_params()
        # One KV stream per sequence (kv_unified=False): with a unified cache, this llama.cpp build gives
        # some sequences different logits when several share a decode call (measured up to 0.57 in
        # logit space; see README "Determinism"). Separate streams are exact; forks copy the stream.
        cparams.n_ctx = n_ctx * max_sequences
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = max_sequences
        cparams.kv_unified = False
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.no_perf = True
        # llama.cpp stores a quantised V cache only with flash attention.
        cparams.flash_attn_type = 1 if flash_attn or cache_type_v != "f16" else 0
        cparams.type_k = getattr(lib, CACHE_TYPES[cache_type_k][0])
        cparams.type_v = getattr(lib, CACHE_TYPES[cache_type_v][0])
        ctx = lib.llama_init_from_model(model, cparams)
        if not ctx:
            self._stack.close()
            raise ModelLoadError(
                f"llama.cpp could not create a context (n_ctx={n_ctx}, sequences={max_sequences})"
            )
        self._stack.callback(lib.llama_free, ctx)
        self.ctx = ctx
        self.mem = lib.llama_get_memory(ctx)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        self._batch = lib.llama_batch_init(n_batch, 0, 1)
        self._stack.callback(lib.llama_batch_free, self._batch)
        self._piece_cache: dict[int, bytes] = {}
        self._adapters: dict[str, Any] = {}
        self.adapter_files: dict[str, Path] = {}  # name -> the LoRA GGUF loaded under it
        self._active_adapters: AdapterSet = ()
        for name, adapter_path in (adapters or {}).items():
            self.load_adapter(name, adapter_path)
        self.capabilities = Capabilities(
            max_sequences=max_sequences,
            n_ctx=int(lib.llama_n_ctx_seq(ctx)),
            n_batch=n_batch,
            mixed_batch_tokens=MIXED_BATCH_TOKENS,
            fork=True,
            # Recurrent state (Mamba, hybrids) holds one position per sequence: seq_rm cannot drop a
            # suffix, so the scheduler replays the kept tokens instead (copy_seq still forks the state).
            rewind=not is_recurrent(lib, model),
            lora=True,
            grammar=True,
        )
        self.cache_types = (cache_type_k, cache_type_v)
        self.kv_bytes_per_slot = self._kv_bytes(gguf.architecture, self.capabilities.n_ctx)
        tpl = lib.llama_model_chat_template(model, None)
        think_ids = self.tokenize("<think>")
        self.info = ModelInfo(
            name=gguf.name,
            path=gguf.path,
            format="gguf",
            architecture=gguf.architecture,
            quantization=gguf.file_type,
            n_params=int(lib.llama_model_n_params(model)),
            size_bytes=gguf.path.stat().st_size,
            n_ctx_train=n_ctx_train,
            n_vocab=self.n_vocab,
            chat_template=tpl.decode("utf-8") if tpl else None,
            bos_token=self._special_text(lib.llama_vocab_bos(self.vocab)),
            eos_token=self._special_text(lib.llama_vocab_eos(self.vocab)),
            add_bos=bool(lib.llama_vocab_get_add_bos(self.vocab)),
            has_think_token=len(think_ids) == 1,
        )

    def _kv_bytes(self, arch: str, n_ctx: int) -> int:
        """KV cache bytes one sequence slot reserves (n_ctx cells, every attention layer, K and V)."""
        lib = self._lib

        def meta(key: str) -> int | None:
            buf = ctypes.create_string_buffer(64)
            n = lib.llama_model_meta_val_str(self.model, f"{arch}.{key}".encode(), buf, 64)
            return int(buf.value) if n > 0 and buf.value.isdigit() else None

        n_head = int(lib.llama_model_n_head(self.model)) or 1
        n_head_kv = int(lib.llama_model_n_head_kv(self.model)) or n_head
        head = int(lib.llama_model_n_embd(self.model)) // n_head
        k_len, v_len = meta("attention.key_length") or head, meta("attention.value_length") or head
        per_cell = n_head_kv * (
            k_len * CACHE_TYPES[self.cache_types[0]][1] + v_len * CACHE_TYPES[self.cache_types[1]][1]
        )
        return int(per_cell * n_ctx * int(lib.llama_model_n_layer(self.model)))

    # -- text ----------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (ctypes.c_int32 * cap)()
        n = self._lib.llama_tokenize(self.vocab, data, len(data), buf, cap, add_bos, special)
        if n < 0:
            cap = -n
            buf = (ctypes.c_int32 * cap)()
            n = self._lib.llama_tokenize(self.vocab, data, len(data), buf, cap, add_bos, special)
        return list(buf[:n])

    def token_bytes(self, token: int) -> bytes:
        piece = self._piece_cache.get(token)
        if piece is None:
            piece = self._piece(token, special=False)
            self._piece_cache[token] = piece
        return piece

    def special_piece(self, token: int) -> bytes:
        """The token's bytes with control tokens written out (``<|im_end|>``), as llama-server shows them."""
        return self._piece(token, special=True)

    def _piece(self, token: int, *, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._lib.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def _special_text(self, token: int) -> str:
        return self._piece(token, special=True).decode("utf-8", errors="replace") if token >= 0 else ""

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self.vocab, token))

    # -- decoding ------------------------------------------------------------------------------
    def decode(self, items: Sequence[BatchItem]) -> list[int]:
        b = self._batch
        n = 0
        handles: list[int] = []
        for item in items:
            for j, tok in enumerate(item.tokens):
                b.token[n] = tok
                b.pos[n] = item.pos + j
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = item.slot
                b.logits[n] = item.want_logits and j == len(item.tokens) - 1
                n += 1
            handles.append(n - 1 if item.want_logits else -1)
        if n > self.capabilities.n_batch:
            raise ValueError(f"batch of {n} tokens exceeds n_batch={self.capabilities.n_batch}")
        b.n_tokens = n
        rc = self._lib.llama_decode(self.ctx, b)
        if rc == 1:
            raise ContextFullError("no room in the KV cache for this batch")
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}")
        return handles

    def make_sampler(self, params: SamplingParams) -> LlamaSampler:
        return LlamaSampler(self._lib, self.vocab, params)

    def check_grammar(self, grammar: str, root: str = "root") -> None:
        check_grammar(grammar, root, self.vocab)  # with the vocabulary: token references resolve

    def set_grammar(self, sampler: Any, grammar: str | None, root: str = "root") -> None:
        sampler.set_grammar(grammar, root)

    def sample(self, sampler: Any, logits: int) -> int:
        return int(self._lib.llama_sampler_sample(sampler.handle, self.ctx, logits))

    def top_logprobs(self, logits: int, token: int, k: int) -> TopLogprobs:
        ptr = self._lib.llama_get_logits_ith(self.ctx, logits)
        row = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float64)
        mx = row.max()
        lse = mx + np.log(np.exp(row - mx).sum())
        top: tuple[tuple[int, float], ...] = ()
        if k > 0:
            idx = np.argpartition(-row, k)[:k]
            idx = idx[np.argsort(-row[idx], kind="stable")]
            top = tuple((int(i), float(row[i] - lse)) for i in idx)
        return TopLogprobs(token=token, logprob=float(row[token] - lse), top=top)

    def copy_seq(self, src: int, dst: int) -> None:
        self._lib.llama_memory_seq_cp(self.mem, src, dst, -1, -1)

    def remove(self, slot: int, from_pos: int = 0) -> None:
        if not self._lib.llama_memory_seq_rm(self.mem, slot, from_pos, -1):
            raise RuntimeError(f"llama.cpp could not remove positions >= {from_pos} of sequence {slot}")

    # -- adapters ------------------------------------------------------------------------------
    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a LoRA GGUF (or a PEFT folder, converted once for this model) under ``name``."""
        info = read_gguf_info(adapter_gguf(path, self._model_path))
        if not info.is_adapter:
            raise ModelLoadError(f"{info.path} is not a LoRA adapter GGUF (general.type != adapter)")
        handle = self._lib.llama_adapter_lora_init(self.model, str(info.path).encode())
        if not handle:
            raise ModelLoadError(
                f"llama.cpp could not load adapter {name!r} from {info.path}; is it made for this base model?"
            )
        self._adapters[name] = handle
        self.adapter_files[name] = Path(info.path)

    def unload_adapter(self, name: str) -> None:
        handle = self._adapters.pop(name, None)
        if handle is None:
            raise UnknownAdapterError(f"adapter {name!r} is not loaded")
        self.adapter_files.pop(name, None)
        if any(n == name for n, _ in self._active_adapters):
            self.set_adapters(())
        self._lib.llama_adapter_lora_free(handle)

    @property
    def adapter_names(self) -> list[str]:
        return sorted(self._adapters)

    def set_adapters(self, adapters: AdapterSet) -> None:
        if adapters == self._active_adapters:
            return
        require_loaded(adapters, self._adapters)
        n = len(adapters)
        arr = (self._lib.llama_adapter_lora_p_ctypes * max(n, 1))(*[self._adapters[a] for a, _ in adapters])
        scales = (ctypes.c_float * max(n, 1))(*[s for _, s in adapters])
        rc = self._lib.llama_set_adapters_lora(self.ctx, arr if n else None, n, scales if n else None)
        if rc != 0:
            raise RuntimeError(f"llama.cpp could not set adapters {adapters} (code {rc})")
        self._active_adapters = adapters

    def close(self) -> None:
        for handle in self._adapters.values():
            self._lib.llama_adapter_lora_free(handle)
        self._adapters.clear()
        self._stack.close()
