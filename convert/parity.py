"""Check that a converted GGUF computes what its Hugging Face checkpoint computes.

Both sides see the same token ids: transformers in float32 eval mode, llama.cpp through its C API (via
llama-cpp-python) with logits for every position. Greedy continuation is plain argmax over raw logits on
both sides (no sampler, no EOS stop), so any divergence is the model's, not the decoding loop's.

llama.cpp runs with a float32 KV cache and flash attention off: its defaults (f16 cache; flash attention,
which computes in f16 on CPU) add ~1e-2 of logit error on their own, hiding conversion bugs of that size.
With both off an f32 GGUF matches transformers to ~3e-5.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np

from edgereason.errors import InvalidRequestError, MissingExtraError, ModelLoadError

if TYPE_CHECKING:
    from numpy.typing import NDArray

logger = logging.getLogger(__name__)

DEFAULT_GREEDY_TOKENS = 32


class ParityReport(TypedDict):
    n_positions: int
    max_abs_diff: float
    mean_abs_diff: float
    max_logit: float
    top1_agreement: float
    greedy_hf: list[int]
    greedy_gguf: list[int]
    greedy_match: bool
    greedy_common_prefix: int


def logits_parity(
    hf_dir: Path,
    gguf: Path,
    token_ids: list[int],
    *,
    greedy_tokens: int = DEFAULT_GREEDY_TOKENS,
    threads: int = 1,
    peft_dir: Path | None = None,
    adapter: Path | None = None,
) -> ParityReport:
    """Compare per-position logits and a greedy continuation between ``hf_dir`` and its GGUF ``gguf``.

    ``max_abs_diff``/``mean_abs_diff`` are over all positions of ``token_ids`` and the whole vocabulary;
    ``top1_agreement`` is the fraction of positions whose argmax token agrees; the greedy fields compare
    ``greedy_tokens`` argmax tokens generated after ``token_ids`` by each side. ``threads`` is llama.cpp's
    thread count: one suits tiny models, whose spinning worker threads crawl when torch's share the cores.
    With ``peft_dir`` (a PEFT LoRA, applied by peft) and ``adapter`` (its LoRA GGUF, applied by llama.cpp
    at scale 1) the comparison covers the adapter too.
    """
    if not token_ids:
        raise InvalidRequestError("token_ids is empty; pass at least one token id", param="token_ids")
    hf_logits, hf_greedy = _hf_logits_and_greedy(Path(hf_dir), token_ids, greedy_tokens, peft_dir)
    cpp_logits, cpp_greedy = _llama_cpp_logits_and_greedy(
        Path(gguf), token_ids, greedy_tokens, threads, adapter
    )
    return compare_runs(hf_logits, hf_greedy, cpp_logits, cpp_greedy, f"{gguf.name} vs transformers")


def compare_runs(
    ref_logits: NDArray[np.floating],
    ref_greedy: list[int],
    cpp_logits: NDArray[np.floating],
    cpp_greedy: list[int],
    label: str,
) -> ParityReport:
    """The parity report of a reference run (transformers, or a reference model) against llama.cpp's."""
    if ref_logits.shape != cpp_logits.shape:
        raise ModelLoadError(
            f"logit shapes differ: reference {ref_logits.shape}, llama.cpp {cpp_logits.shape}; "
            "the GGUF does not come from this checkpoint"
        )
    diff = np.abs(ref_logits.astype(np.float64) - cpp_logits.astype(np.float64))
    common = next(
        (i for i, (a, b) in enumerate(zip(ref_greedy, cpp_greedy, strict=True)) if a != b), len(ref_greedy)
    )
    report = ParityReport(
        n_positions=ref_logits.shape[0],
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        max_logit=float(np.abs(ref_logits).max()),
        top1_agreement=float(np.mean(ref_logits.argmax(axis=-1) == cpp_logits.argmax(axis=-1))),
        greedy_hf=ref_greedy,
        greedy_gguf=cpp_greedy,
        greedy_match=ref_greedy == cpp_greedy,
        greedy_common_prefix=common,
    )
    logger.info(
        "parity %s: max |diff| %.3g over %d positions, top-1 agreement %.3f, greedy match %s",
        label,
        report["max_abs_diff"],
        report["n_positions"],
        report["top1_agreement"],
        report["greedy_match"],
    )
    return report


def _hf_logits_and_greedy(
    hf_dir: Path, token_ids: list[int], n_new: int, peft_dir: Path | None = None
) -> tuple[NDArray[np.float32], list[int]]:
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as exc:
        raise MissingExtraError("logits parity", "convert") from exc
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    if peft_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(peft_dir)).eval()
    vocab = model.config.vocab_size
    if max(token_ids) >= vocab or min(token_ids) < 0:
        raise InvalidRequestError(f"token ids must lie in [0, {vocab})", param="token_ids")
    # One pass over the prompt, then one token per step on the returned KV cache (use_cache/past_key_values
    # mean the same in transformers 4.57 and 5). Mamba-family models keep recurrent state in other cache
    # objects whose incremental path is not a plain past_key_values: they re-run the whole sequence.
    recurrent = model.config.model_type in _RECURRENT_MODEL_TYPES
    with torch.no_grad():
        out = model(input_ids=torch.tensor([token_ids]), use_cache=not recurrent)
        logits = out.logits[0].float().numpy()
        greedy: list[int] = []
        next_id = int(logits[-1].argmax())
        for _ in range(n_new):
            greedy.append(next_id)
            if recurrent:
                out = model(input_ids=torch.tensor([token_ids + greedy]), use_cache=False)
            else:
                out = model(
                    input_ids=torch.tensor([[next_id]]), past_key_values=out.past_key_values, use_cache=True
                )
            next_id = int(out.logits[0, -1].argmax())
    return logits, greedy


_RECURRENT_MODEL_TYPES = frozenset(
    {"mamba", "mamba2", "bamba", "falcon_h1", "granitemoehybrid", "nemotron_h", "jamba"}
)


def _llama_cpp_logits_and_greedy(
    gguf: Path, token_ids: list[int], n_new: int, threads: int, adapter: Path | None = None
) -> tuple[NDArray[np.float32], list[int]]:
    from edgereason.backends.llama_cpp import _import_llama

    if not gguf.is_file():
        raise ModelLoadError(f"GGUF file not found: {gguf}")
    lib = _import_llama()  # routes llama.cpp's log lines to logging
    mparams = lib.llama_model_default_params()
    # Weight-repacking kernels (AMX, ARM repack) are a runtime choice, not part of what was converted, and
    # AMX traps on some VMs; parity runs llama.cpp's reference CPU kernels.
    mparams.use_extra_bufts = False
    with contextlib.ExitStack() as stack:
        model = lib.llama_model_load_from_file(str(gguf).encode(), mparams)
        if not model:
            raise ModelLoadError(f"llama.cpp could not load {gguf}")
        stack.callback(lib.llama_model_free, model)
        n_vocab = int(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model)))
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = len(token_ids) + n_new + 1
        cparams.n_batch = cparams.n_ubatch = len(token_ids)
        cparams.n_threads = cparams.n_threads_batch = max(1, threads)
        cparams.type_k = cparams.type_v = lib.GGML_TYPE_F32
        cparams.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cparams.no_perf = True
        ctx = lib.llama_init_from_model(model, cparams)
        if not ctx:
            raise ModelLoadError(f"llama.cpp could not create a context for {gguf}")
        stack.callback(lib.llama_free, ctx)
        if adapter is not None:
            lora = lib.llama_adapter_lora_init(model, str(adapter).encode())
            if not lora:
                raise ModelLoadError(f"llama.cpp could not load adapter {adapter} for {gguf}")
            stack.callback(lib.llama_adapter_lora_free, lora)
            loras = (lib.llama_adapter_lora_p_ctypes * 1)(lora)
            scales = (ctypes.c_float * 1)(1.0)
            if lib.llama_set_adapters_lora(ctx, loras, 1, scales) != 0:
                raise ModelLoadError(f"llama.cpp could not apply adapter {adapter}")
        batch = lib.llama_batch_init(len(token_ids), 0, 1)
        stack.callback(lib.llama_batch_free, batch)

        def decode(ids: list[int], start: int, all_logits: bool) -> NDArray[np.float32]:
            for i, token in enumerate(ids):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = all_logits or i == len(ids) - 1
            batch.n_tokens = len(ids)
            if lib.llama_decode(ctx, batch) != 0:
                raise ModelLoadError(f"llama.cpp failed to decode {len(ids)} tokens with {gguf}")
            rows = len(ids) if all_logits else 1
            return np.ctypeslib.as_array(lib.llama_get_logits(ctx), shape=(rows, n_vocab)).copy()

        logits = decode(token_ids, 0, all_logits=True)
        greedy: list[int] = []
        next_id = int(logits[-1].argmax())
        for step in range(n_new):
            greedy.append(next_id)
            next_id = int(decode([next_id], len(token_ids) + step, all_logits=False)[0].argmax())
    return logits, greedy
