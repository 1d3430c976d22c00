"""Tiny random-weight Mamba2 and hybrid Mamba2/attention checkpoints with a real tokenizer.

These are the recurrent counterparts of :mod:`convert.tiny`: transformers builds them from a config with
random weights, they carry SmolLM2's real tokenizer and chat template, and the tests convert them to GGUF
for real and compare logits with transformers. Layouts follow the released families: ``mamba2`` (pure
Mamba2, grouped B/C), ``bamba`` (Mamba2 layers with Llama attention at listed indices, partial RoPE),
``granitemoehybrid`` (Granite 4 dense: Mamba2 and NoPE attention, Granite's scaling multipliers) and
``falcon_h1`` (attention and Mamba2 side by side in every layer, Falcon-H1's multipliers).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from edgereason.errors import InvalidRequestError, ModelLoadError

from .tiny import DEFAULT_INIT_STD, load_reference_tokenizer

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

HybridArch = Literal["mamba2", "bamba", "granitemoehybrid", "falcon_h1"]
HYBRID_ARCHS: tuple[str, ...] = get_args(HybridArch)
# HF class of each tiny layout; the convert toolkit lists these in SUPPORTED_ARCHITECTURES.
HYBRID_CLASSES: dict[str, str] = {
    "mamba2": "Mamba2ForCausalLM",
    "bamba": "BambaForCausalLM",
    "granitemoehybrid": "GraniteMoeHybridForCausalLM",
    "falcon_h1": "FalconH1ForCausalLM",
}
# llama.cpp's Mamba2 converters round vocab_size up to this multiple (16 for Mamba2, 8 for the hybrids);
# a checkpoint whose embedding rows are not already a multiple gets a GGUF with more logits than it has.
PAD_VOCAB_MULTIPLE = 16
# The Mamba2 state of a random model is near zero with the default A/dt init; these give a recurrence
# that carries information across the 32 compared positions.
_DT_BIAS_RANGE = (-1.0, 1.0)
_HUB_LAYER_TYPES = {"linear_attention": "mamba", "full_attention": "attention"}


def padded_vocab_size(n_tokens: int, multiple: int = PAD_VOCAB_MULTIPLE) -> int:
    """``n_tokens`` rounded up to a multiple of ``multiple`` (what the Mamba2 converters pad to)."""
    return -(n_tokens // -multiple) * multiple


def _mamba_fields(
    hidden: int, state_size: int, n_groups: int, head_dim: int, conv_kernel: int, expand: int
) -> dict[str, Any]:
    d_inner = expand * hidden
    if d_inner % head_dim:
        raise InvalidRequestError(
            f"expand*hidden={d_inner} must divide by mamba_head_dim={head_dim}", param="mamba_head_dim"
        )
    n_heads = d_inner // head_dim
    if n_heads % n_groups:
        raise InvalidRequestError(
            f"{n_heads} Mamba heads must divide into n_groups={n_groups} groups", param="n_groups"
        )
    return {
        "mamba_n_heads": n_heads,
        "mamba_d_head": head_dim,
        "mamba_n_groups": n_groups,
        "mamba_d_state": state_size,
        "mamba_d_conv": conv_kernel,
        "mamba_expand": expand,
        "mamba_chunk_size": 16,
        "mamba_conv_bias": True,
        "mamba_proj_bias": False,
    }


def _check_attention(
    arch: str, layers: int, attn_layers: Sequence[int], hidden: int, heads: int, kv: int
) -> None:
    if arch in ("mamba2", "falcon_h1"):
        return
    if not attn_layers or any(not 0 <= i < layers for i in attn_layers):
        raise InvalidRequestError(
            f"attn_layers {list(attn_layers)} must name at least one layer index in [0, {layers})",
            param="attn_layers",
        )
    if len(set(attn_layers)) == layers:
        raise InvalidRequestError(
            f"attn_layers {list(attn_layers)} leaves no Mamba2 layer; a hybrid needs at least one",
            param="attn_layers",
        )
    if hidden % heads or heads % kv:
        raise InvalidRequestError(
            f"hidden={hidden}, heads={heads}, kv_heads={kv}: hidden must divide by heads and heads by kv_heads"
        )


def _hybrid_config(
    arch: HybridArch,
    tokenizer: PreTrainedTokenizerBase,
    *,
    layers: int,
    hidden: int,
    attn_layers: Sequence[int],
    heads: int,
    kv_heads: int,
    intermediate: int,
    state_size: int,
    n_groups: int,
    mamba_head_dim: int,
    tie_embeddings: bool,
) -> PretrainedConfig:
    from transformers import BambaConfig, FalconH1Config, GraniteMoeHybridConfig, Mamba2Config

    _check_attention(arch, layers, attn_layers, hidden, heads, kv_heads)
    mamba = _mamba_fields(hidden, state_size, n_groups, mamba_head_dim, conv_kernel=4, expand=2)
    common: dict[str, Any] = {
        "vocab_size": padded_vocab_size(len(tokenizer)),
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "initializer_range": DEFAULT_INIT_STD,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": tie_embeddings,
        "dtype": "float32",
    }
    if arch == "mamba2":
        return Mamba2Config(
            **common,
            num_heads=mamba["mamba_n_heads"],
            head_dim=mamba_head_dim,
            state_size=state_size,
            n_groups=n_groups,
            expand=2,
            conv_kernel=4,
            chunk_size=16,
            layer_norm_epsilon=1e-5,
            residual_in_fp32=True,
            pad_vocab_size_multiple=PAD_VOCAB_MULTIPLE,
        )
    attention: dict[str, Any] = {
        "intermediate_size": intermediate,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 8192,
        **mamba,
    }
    if arch == "bamba":
        return BambaConfig(
            **common,
            **attention,
            attn_layer_indices=sorted(set(attn_layers)),
            # Full RoPE: llama.cpp's converter permutes q/k over the whole head, which is only right when
            # every dimension rotates (see check_hybrid_layout). The converter reads this key, not the factor.
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0},
            attn_rotary_emb=hidden // heads,
        )
    if arch == "granitemoehybrid":
        return GraniteMoeHybridConfig(
            **common,
            **attention,
            layer_types=["attention" if i in attn_layers else "mamba" for i in range(layers)],
            num_local_experts=0,
            num_experts_per_tok=0,
            shared_intermediate_size=intermediate,
            position_embedding_type="nope",
            # Granite's scalings, away from 1 so the converter's handling of each is checked.
            embedding_multiplier=2.0,
            residual_multiplier=0.5,
            attention_multiplier=1.0 / (hidden // heads) ** 0.5,
            logits_scaling=2.0,
        )
    return FalconH1Config(
        **common,
        **attention,
        head_dim=hidden // heads,
        mamba_d_ssm=2 * hidden,
        mamba_rms_norm=True,
        mamba_norm_before_gate=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        # Falcon-H1's multipliers, away from 1 so the converter's folding of each into weights is checked.
        embedding_multiplier=1.5,
        lm_head_multiplier=0.75,
        key_multiplier=0.5,
        attention_in_multiplier=1.25,
        attention_out_multiplier=0.8,
        ssm_in_multiplier=1.1,
        ssm_out_multiplier=0.9,
        mlp_multipliers=[1.2, 0.7],
        ssm_multipliers=[1.0, 0.9, 1.1, 1.2, 0.8],
    )


def make_tiny_hybrid(
    arch: HybridArch,
    out_dir: Path,
    *,
    layers: int = 4,
    hidden: int = 64,
    attn_layers: Sequence[int] = (1, 3),
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    state_size: int = 16,
    n_groups: int = 2,
    mamba_head_dim: int = 16,
    tie_embeddings: bool | None = None,
    seed: int = 0,
) -> Path:
    """Write a random-init float32 ``arch`` checkpoint with SmolLM2's tokenizer to ``out_dir``.

    ``attn_layers`` are the attention layer indices of ``bamba`` and ``granitemoehybrid`` (ignored by
    ``mamba2``, which has none, and ``falcon_h1``, which runs attention beside Mamba2 in every layer).
    The Mamba2 mixers have ``2 * hidden`` channels in heads of ``mamba_head_dim``, B/C shared by
    ``n_groups`` groups, and a ``state_size`` state. Embeddings are tied unless ``tie_embeddings`` says
    otherwise, except for ``falcon_h1``, whose converter scales a tied output matrix by the embedding
    multiplier. Returns ``out_dir``.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    if arch not in HYBRID_ARCHS:
        raise InvalidRequestError(
            f"unknown hybrid architecture '{arch}'; choose one of {', '.join(HYBRID_ARCHS)}", param="arch"
        )
    out_dir = Path(out_dir)
    tokenizer = load_reference_tokenizer("llama")
    config = _hybrid_config(
        arch,
        tokenizer,
        layers=layers,
        hidden=hidden,
        attn_layers=attn_layers,
        heads=heads,
        kv_heads=kv_heads,
        intermediate=intermediate,
        state_size=state_size,
        n_groups=n_groups,
        mamba_head_dim=mamba_head_dim,
        tie_embeddings=arch != "falcon_h1" if tie_embeddings is None else tie_embeddings,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _randomise_mixers(model)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    logger.info("wrote tiny %s checkpoint (%d params) to %s", arch, model.num_parameters(), out_dir)
    return out_dir


def hub_layer_types(hparams: dict[str, Any]) -> dict[str, Any]:
    """``hparams`` with Granite's layer kinds spelled as released checkpoints do ("mamba"/"attention").

    transformers 5 reads them as "linear_attention"/"full_attention" (the converter loads configs through
    it), names llama.cpp's converter does not know: it would take every layer for Mamba2.
    """
    if types := hparams.get("layer_types"):
        hparams = {**hparams, "layer_types": [_HUB_LAYER_TYPES.get(t, t) for t in types]}
    return hparams


def _randomise_mixers(model: Any) -> None:
    """Random biases, norm gains, dt biases and D: defaults (0 or 1) would leave their conversion untested."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("dt_bias"):
                param.uniform_(*_DT_BIAS_RANGE)
            elif name.endswith(".D"):
                param.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                param.normal_(0.0, DEFAULT_INIT_STD)
            elif "norm" in name and name.endswith(".weight"):
                param.uniform_(0.5, 1.5)


def hybrid_layout(config: dict[str, Any]) -> str:
    """The layer layout of a Mamba2-family config: M Mamba2, * attention, P both in parallel."""
    layers = int(config.get("num_hidden_layers", 0))
    arch = (config.get("architectures") or [""])[0]
    if arch == "Mamba2ForCausalLM":
        return "M" * layers
    if arch == "FalconH1ForCausalLM":
        return "P" * layers
    if types := config.get("layer_types"):
        return "".join("*" if t in ("attention", "full_attention") else "M" for t in types)
    attn = set(config.get("attn_layer_indices") or [])
    return "".join("*" if i in attn else "M" for i in range(layers))


SUPPORTED_HYBRIDS = (
    "Mamba2ForCausalLM; BambaForCausalLM with full RoPE (Mamba2 layers, Llama attention at "
    "attn_layer_indices, SiLU MLPs); GraniteMoeHybridForCausalLM without experts (Mamba2 and NoPE "
    "attention by layer_types); FalconH1ForCausalLM with untied embeddings or equal "
    "embedding/lm_head multipliers; M1/MambaInLlama folders (mamba_config.json, see convert/m1.py)"
)


def hybrid_layout_problems(config: dict[str, Any]) -> list[str]:
    """Why llama.cpp's converter would give a GGUF that computes something else for this config."""
    arch = (config.get("architectures") or [""])[0]
    problems: list[str] = []
    if arch == "Mamba2ForCausalLM":
        d_inner = config.get("expand", 2) * config.get("hidden_size", 0)
        if config.get("num_heads", 0) * config.get("head_dim", 0) != d_inner:
            problems.append(f"num_heads * head_dim != expand * hidden_size ({d_inner})")
    elif arch == "BambaForCausalLM":
        if not config.get("attn_layer_indices"):
            problems.append("no attn_layer_indices")
        if config.get("hidden_act", "silu") != "silu":
            problems.append(f"MLP activation {config['hidden_act']!r} (only silu)")
        head_dim = config.get("hidden_size", 0) // max(1, config.get("num_attention_heads", 1))
        rope_dim = config.get("attn_rotary_emb")
        if rope_dim is None:
            factor = (config.get("rope_parameters") or {}).get("partial_rotary_factor", 1.0)
            rope_dim = int(head_dim * factor)
        if rope_dim != head_dim:
            # The converter permutes q/k rows for llama.cpp's interleaved RoPE over the whole head; with
            # partial RoPE transformers rotates pairs (i, i + rope_dim/2) of the first rope_dim dims only.
            problems.append(f"partial RoPE ({rope_dim} of {head_dim} head dims; the converter permutes all)")
    elif arch == "FalconH1ForCausalLM":
        tied = config.get("tie_word_embeddings", False)
        if tied and config.get("embedding_multiplier", 1.0) != config.get("lm_head_multiplier", 1.0):
            problems.append(
                "tied embeddings with embedding_multiplier != lm_head_multiplier (the converter folds only "
                "the embedding multiplier into the one shared matrix)"
            )
    elif arch == "GraniteMoeHybridForCausalLM":
        if (config.get("num_local_experts") or 0) > 0:
            problems.append("mixture-of-experts layers (only dense GraniteMoeHybrid is parity-tested)")
        if not any(t in ("attention", "full_attention") for t in config.get("layer_types") or []):
            problems.append("no attention layer in layer_types")
    return problems


def check_hybrid_layout(config: dict[str, Any]) -> None:
    """Raise ModelLoadError, naming the supported layouts, for a hybrid config the GGUF path would get wrong.

    Non-hybrid architectures pass. Supported layouts are the ones tests/test_hybrid.py verifies by logits
    parity with transformers.
    """
    problems = hybrid_layout_problems(config)
    if problems:
        arch = (config.get("architectures") or ["?"])[0]
        raise ModelLoadError(
            f"unsupported {arch} layout ({hybrid_layout(config)}): {'; '.join(problems)}. "
            f"Supported hybrids: {SUPPORTED_HYBRIDS}"
        )
