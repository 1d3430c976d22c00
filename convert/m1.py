"""M1 / MambaInLlama hybrids: a pure-PyTorch reference, tiny checkpoints, and a rewrite llama.cpp runs.

M1 (Wang et al. 2025) distils a Llama-architecture reasoner into Mamba2 layers plus a few Llama attention
layers. Its checkpoints use the MambaInLlama layout: ``config.json`` is the teacher's Llama config,
``mamba_config.json`` lists ``d_model``, ``d_inner``, ``d_xb``, ``ssm_cfg``, ``n_layer`` and
``attn_layers``, and the weights keep Llama's names except that a Mamba layer's mixer is ``mamba.*``.

The Mamba2 mixer is shaped after GQA attention (the paper initialises it from one: x<-V, B<-K, C<-Q,
out<-O). With H = ``ssm_cfg.ngroups`` heads and N = ``ssm_cfg.d_state``:

- ``in_proj`` rows are ``[z (d_inner), x (d_xb), B (d_xb), C (d_inner), dt (H)]``, d_inner = H * N;
- x and B hold ``d_xb / N`` "key-value" groups of N channels, each repeated for ``d_inner / d_xb``
  consecutive heads, like ``repeat_kv``; the causal depthwise conv runs before that repeat (over
  d_inner + 2 d_xb channels) unless ``repeat_kv_before_conv`` (then over 3 d_inner channels);
- every head has its own C (N channels) and its head dimension equals the state size N;
- dt = softplus(dt + dt_bias), A = -exp(A_log), D one per head, all per head;
- y * silu(z) goes through an RMSNorm grouped per head (group size d_inner / ngroups = N), then out_proj.

:func:`m1_to_bamba` rewrites such a checkpoint as a ``BambaForCausalLM`` folder for llama.cpp's converter:
x and B rows (and their conv channels) are duplicated per head, so ``n_groups = n_heads`` and llama.cpp's
grouped gated norm is M1's per-head norm. The vendored llama.cpp's granitehybrid graph also requires
``d_inner == 2 * d_model`` (GGML_ASSERT); M1 has d_inner = d_model, so the rewrite appends zero heads (zero
in_proj rows, conv channels and out_proj columns): their state stays 0, their norm group is their own, they
add exactly 0. Both are exact, but cost memory and compute: 2x SSM state, ~3x Mamba in_proj rows, 2x out_proj
columns (a Llama-3.2-3B-shaped M1 grows from ~3.4B to ~4.7B parameters in the GGUF).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from edgereason.errors import InvalidRequestError, ModelLoadError

from .tiny import DEFAULT_INIT_STD, _tiny_config, load_reference_tokenizer

if TYPE_CHECKING:
    import torch
    from transformers import LlamaConfig

logger = logging.getLogger(__name__)

M1_CONFIG_NAME = "mamba_config.json"
# ssm_cfg keys the reference implements, with MambaInLlama's defaults.
_SSM_DEFAULTS: dict[str, Any] = {
    "d_state": 128,
    "d_conv": 4,
    "ngroups": 1,
    "repeat_kv_before_conv": False,
    "D_has_hdim": False,
    "rmsnorm": True,
    "norm_before_gate": False,
    "conv_bias": True,
    "bias": False,
    "dt_limit": (0.0, math.inf),
}
# Keys that only shape initialisation or kernels, not the function the model computes.
_SSM_IGNORED = {"expand", "headdim", "d_ssm", "chunk_size", "use_mem_eff_path", "dt_min", "dt_max",
                "dt_init_floor", "A_init_range", "conv_init", "layer"}  # fmt: skip
# llama.cpp's granitehybrid graph asserts d_inner == 2 * n_embd; M1's mixers are padded with zero heads.
LLAMA_CPP_EXPAND = 2
GATED_NORM_EPS = 1e-5  # MambaInLlama's gated RMSNorm eps (fixed, independent of rms_norm_eps)
SUPPORTED_M1 = (
    "MambaInLlama/M1 checkpoints (mamba_config.json) with d_inner = ngroups * d_state, d_xb a multiple of "
    "d_state dividing d_inner, d_inner <= 2*d_model, per-head D, gated RMSNorm after the gate, "
    "no dt_limit, no in_proj/out_proj bias, rms_norm_eps 1e-5, SiLU MLPs, at least one attention layer and one "
    "Mamba layer, Llama attention without biases, default or llama3 RoPE"
)


@dataclass(frozen=True)
class M1Config:
    """The hyper-parameters of an M1 checkpoint: mamba_config.json plus the Llama fields of config.json."""

    d_model: int
    d_inner: int
    d_xb: int
    n_layer: int
    attn_layers: tuple[int, ...]
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    tie_embeddings: bool
    ssm: dict[str, Any] = field(default_factory=lambda: dict(_SSM_DEFAULTS))
    hidden_act: str = "silu"
    rope_scaling: dict[str, Any] | None = None
    attention_bias: bool = False
    mlp_bias: bool = False

    @property
    def n_heads(self) -> int:
        """Mamba heads (MambaInLlama sets nheads = ngroups)."""
        return int(self.ssm["ngroups"])

    @property
    def d_state(self) -> int:
        """State size N, which is also the head dimension of every Mamba head."""
        return int(self.ssm["d_state"])

    @property
    def n_xb_groups(self) -> int:
        return self.d_xb // self.d_state

    @property
    def repeat(self) -> int:
        """Consecutive heads that share one x/B group (like GQA's heads per KV head)."""
        return self.d_inner // self.d_xb

    @property
    def conv_dim(self) -> int:
        return 3 * self.d_inner if self.ssm["repeat_kv_before_conv"] else self.d_inner + 2 * self.d_xb

    @property
    def in_proj_rows(self) -> int:
        return 2 * self.d_inner + 2 * self.d_xb + self.n_heads

    def is_attention(self, layer: int) -> bool:
        return layer in self.attn_layers


def is_m1_checkpoint(src: Path) -> bool:
    """Whether ``src`` is a MambaInLlama/M1 folder (it has a mamba_config.json)."""
    return (Path(src) / M1_CONFIG_NAME).is_file()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return data


def read_m1_config(src: Path) -> M1Config:
    """Parse and check ``src``'s mamba_config.json and config.json; ModelLoadError names what is wrong."""
    src = Path(src)
    mamba = _read_json(src / M1_CONFIG_NAME)
    if not (src / "config.json").is_file():
        raise ModelLoadError(f"{src} has {M1_CONFIG_NAME} but no config.json (the Llama config of the model)")
    llama = _read_json(src / "config.json")
    missing = [k for k in ("d_model", "d_xb", "n_layer", "attn_layers") if k not in mamba]
    if missing:
        raise ModelLoadError(f"{src / M1_CONFIG_NAME} lacks {', '.join(missing)}. Supported: {SUPPORTED_M1}")
    ssm_cfg = dict(mamba.get("ssm_cfg") or {})
    unknown = sorted(set(ssm_cfg) - set(_SSM_DEFAULTS) - _SSM_IGNORED)
    if unknown:
        raise ModelLoadError(
            f"{src / M1_CONFIG_NAME}: unknown ssm_cfg keys {unknown}. Supported: {SUPPORTED_M1}"
        )
    ssm = {**_SSM_DEFAULTS, **{k: v for k, v in ssm_cfg.items() if k in _SSM_DEFAULTS}}
    ssm["dt_limit"] = tuple(float(v) for v in ssm["dt_limit"])
    d_model = int(mamba["d_model"])
    heads = int(llama.get("num_attention_heads", 0)) or 1
    rope_theta = llama.get("rope_theta") or (llama.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    rope_scaling = llama.get("rope_scaling") or llama.get("rope_parameters")
    if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type", "default")) == "default":
        rope_scaling = None
    config = M1Config(
        d_model=d_model,
        d_inner=int(mamba.get("d_inner") or d_model),
        d_xb=int(mamba["d_xb"]),
        n_layer=int(mamba["n_layer"]),
        attn_layers=tuple(sorted({int(i) for i in mamba["attn_layers"]})),
        intermediate_size=int(mamba.get("intermediate_size") or llama["intermediate_size"]),
        vocab_size=int(mamba.get("vocab_size") or llama["vocab_size"]),
        rms_norm_eps=float(mamba.get("rms_norm_eps", llama.get("rms_norm_eps", 1e-5))),
        num_heads=heads,
        num_kv_heads=int(llama.get("num_key_value_heads", heads)),
        head_dim=int(llama.get("head_dim") or d_model // heads),
        rope_theta=float(rope_theta),
        tie_embeddings=bool(llama.get("tie_word_embeddings", False)),
        ssm=ssm,
        hidden_act=str(mamba.get("hidden_act", "silu")),
        rope_scaling=rope_scaling,
        attention_bias=bool(llama.get("attention_bias", False)),
        mlp_bias=bool(llama.get("mlp_bias", False)),
    )
    problems = _shape_problems(config)
    if problems:
        raise ModelLoadError(
            f"unsupported M1 layout in {src}: {'; '.join(problems)}. Supported: {SUPPORTED_M1}"
        )
    return config


def _shape_problems(c: M1Config) -> list[str]:
    """What makes the checkpoint ill-formed for the M1 mixer itself (the reference refuses these too)."""
    problems = []
    if c.d_inner != c.n_heads * c.d_state:
        problems.append(f"d_inner={c.d_inner} != ngroups*d_state={c.n_heads}*{c.d_state}")
    if c.d_xb % c.d_state or not c.d_xb or c.d_inner % c.d_xb:
        problems.append(f"d_xb={c.d_xb} must be a multiple of d_state={c.d_state} that divides d_inner")
    if any(not 0 <= i < c.n_layer for i in c.attn_layers):
        problems.append(f"attn_layers {list(c.attn_layers)} outside [0, {c.n_layer})")
    if c.hidden_act != "silu":
        problems.append(f"MLP activation {c.hidden_act!r} (only silu)")
    if c.ssm["bias"]:
        problems.append("in_proj/out_proj bias")
    if c.rope_scaling is not None and c.rope_scaling.get("rope_type", c.rope_scaling.get("type")) != "llama3":
        problems.append(f"RoPE scaling {c.rope_scaling} (default and llama3 only)")
    return problems


def llama_cpp_problems(c: M1Config) -> list[str]:
    """Operations of ``c`` that llama.cpp's Mamba2/attention graph (via Bamba) does not compute exactly."""
    problems = []
    if c.ssm["D_has_hdim"]:
        problems.append(
            f"D per channel ({c.d_inner} values; llama.cpp's ssm_d has one per head, {c.n_heads})"
        )
    if not c.ssm["rmsnorm"]:
        problems.append("no gated RMSNorm (llama.cpp's Mamba2 graph always applies y*silu(z) then its norm)")
    if c.ssm["norm_before_gate"]:
        problems.append("norm_before_gate=True (llama.cpp gates first, then normalises)")
    if c.ssm["dt_limit"] != (0.0, math.inf):
        problems.append(f"dt_limit {c.ssm['dt_limit']} (llama.cpp does not clamp dt)")
    if c.rms_norm_eps != GATED_NORM_EPS:
        problems.append(
            f"rms_norm_eps={c.rms_norm_eps} (llama.cpp uses it for the gated norm too, M1 uses {GATED_NORM_EPS})"
        )
    if c.d_inner > LLAMA_CPP_EXPAND * c.d_model or (LLAMA_CPP_EXPAND * c.d_model) % c.d_state:
        problems.append(
            f"d_inner={c.d_inner} cannot be padded to llama.cpp's 2*d_model={2 * c.d_model} with whole heads "
            f"of {c.d_state}"
        )
    if c.head_dim * c.num_heads != c.d_model:
        problems.append(f"attention head_dim={c.head_dim} != d_model/heads")
    if c.attention_bias or c.mlp_bias:
        problems.append("attention or MLP biases")
    if not c.attn_layers:
        problems.append("no attention layer (Bamba, the layout llama.cpp runs, needs attn_layer_indices)")
    if len(c.attn_layers) == c.n_layer:
        problems.append("no Mamba layer (attn_layers lists every layer; convert it as a Llama model)")
    return problems


def check_m1_checkpoint(src: Path) -> M1Config:
    """Read ``src``'s M1 config; raise ModelLoadError, naming what is supported, unless llama.cpp runs it."""
    config = read_m1_config(src)
    problems = llama_cpp_problems(config)
    if problems:
        raise ModelLoadError(
            f"M1 checkpoint {src} cannot be converted exactly for llama.cpp: {'; '.join(problems)}. "
            f"Supported: {SUPPORTED_M1}"
        )
    return config


# -- weights ------------------------------------------------------------------------------------------
def load_m1_weights(src: Path) -> dict[str, torch.Tensor]:
    """All tensors of ``src`` (safetensors shards or pytorch_model*.bin), named as in the model."""
    import torch
    from safetensors.torch import load_file

    files = sorted(Path(src).glob("*.safetensors"))
    weights: dict[str, torch.Tensor] = {}
    for path in files or sorted(Path(src).glob("pytorch_model*.bin")):
        part = load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
        weights.update(part)
    if not weights:
        raise ModelLoadError(f"{src} has no weights (*.safetensors or pytorch_model*.bin)")
    # A state dict saved from MambaInLlama's wrapper module carries one more "model." prefix.
    if all(k.startswith("model.model.") or k.startswith("model.lm_head") for k in weights):
        weights = {k.removeprefix("model."): v for k, v in weights.items()}
    return weights


def _get(weights: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    try:
        return weights[name]
    except KeyError:
        raise ModelLoadError(
            f"the checkpoint has no tensor {name}; is it an M1/MambaInLlama model?"
        ) from None


def _repeat_index(config: M1Config) -> torch.Tensor:
    """For each of the d_inner per-head channels, the d_xb channel it repeats (head h uses group h // rep)."""
    import torch

    n = config.d_state
    heads = torch.arange(config.n_heads).repeat_interleave(n)
    return (heads // config.repeat) * n + torch.arange(n).repeat(config.n_heads)


def _pad_rows(t: torch.Tensor, rows: int, value: float = 0.0) -> torch.Tensor:
    import torch

    return torch.cat([t, torch.full((rows, *t.shape[1:]), value, dtype=t.dtype)], dim=0)


def _expand_in_proj(w: torch.Tensor, config: M1Config, pad: int) -> torch.Tensor:
    """Rows [z, x (d_xb), B (d_xb), C, dt] -> [z, x, B, C, dt] with x, B per head and ``pad`` zero channels."""
    import torch

    d_in, d_xb = config.d_inner, config.d_xb
    z, x, b, c, dt = torch.split(w, [d_in, d_xb, d_xb, d_in, config.n_heads], dim=0)
    idx = _repeat_index(config)
    parts = [z, x[idx], b[idx], c]
    heads_pad = pad // config.d_state
    return torch.cat([*(_pad_rows(t, pad) for t in parts), _pad_rows(dt, heads_pad)], dim=0).contiguous()


def _expand_conv(t: torch.Tensor, config: M1Config, pad: int) -> torch.Tensor:
    """Conv channels [x (d_xb), B (d_xb), C] (or 3 x d_inner if repeated before the conv) -> per head, padded."""
    import torch

    if config.ssm["repeat_kv_before_conv"]:
        x, b, c = torch.split(t, [config.d_inner] * 3, dim=0)
    else:
        x, b, c = torch.split(t, [config.d_xb, config.d_xb, config.d_inner], dim=0)
        idx = _repeat_index(config)
        x, b = x[idx], b[idx]
    return torch.cat([_pad_rows(v, pad) for v in (x, b, c)], dim=0).contiguous()


def _bamba_mixer(weights: dict[str, torch.Tensor], m: str, config: M1Config) -> dict[str, torch.Tensor]:
    """One M1 mixer as a Bamba mixer with d_inner = 2 * d_model: x/B repeated per head, zero heads appended."""
    import torch

    pad = LLAMA_CPP_EXPAND * config.d_model - config.d_inner
    heads_pad = pad // config.d_state
    conv_w = _get(weights, m + "conv1d.weight")
    conv_b = weights.get(m + "conv1d.bias")
    if conv_b is None:  # conv_bias=False: a zero bias computes the same
        conv_b = torch.zeros(conv_w.shape[0], dtype=conv_w.dtype)
    out_proj = _get(weights, m + "out_proj.weight")
    return {
        "in_proj.weight": _expand_in_proj(_get(weights, m + "in_proj.weight"), config, pad),
        "conv1d.weight": _expand_conv(conv_w, config, pad),
        "conv1d.bias": _expand_conv(conv_b, config, pad),
        "dt_bias": _pad_rows(_get(weights, m + "dt_bias"), heads_pad),
        "A_log": _pad_rows(_get(weights, m + "A_log"), heads_pad),
        "D": _pad_rows(_get(weights, m + "D"), heads_pad),
        "norm.weight": _pad_rows(_get(weights, m + "norm.weight"), pad, 1.0),
        "out_proj.weight": _pad_rows(out_proj.T, pad).T.contiguous(),
    }


def bamba_tensors(weights: dict[str, torch.Tensor], config: M1Config) -> dict[str, torch.Tensor]:
    """M1 tensors renamed and widened to BambaForCausalLM's (see the module doc; exact)."""
    out = {
        "model.embed_tokens.weight": _get(weights, "model.embed_tokens.weight"),
        "model.final_layernorm.weight": _get(weights, "model.norm.weight"),
    }
    if not config.tie_embeddings:
        out["lm_head.weight"] = _get(weights, "lm_head.weight")
    for i in range(config.n_layer):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = _get(weights, p + "input_layernorm.weight")
        out[p + "pre_ff_layernorm.weight"] = _get(weights, p + "post_attention_layernorm.weight")
        for proj in ("gate_proj", "up_proj", "down_proj"):
            out[p + f"feed_forward.{proj}.weight"] = _get(weights, p + f"mlp.{proj}.weight")
        if config.is_attention(i):
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                out[p + f"self_attn.{proj}.weight"] = _get(weights, p + f"self_attn.{proj}.weight")
        else:
            out.update({p + "mamba." + k: v for k, v in _bamba_mixer(weights, p + "mamba.", config).items()})
    return out


def bamba_config(config: M1Config, llama: dict[str, Any]) -> dict[str, Any]:
    """A BambaForCausalLM config.json computing what ``config`` computes (n_groups = n_heads, padded heads)."""
    heads = LLAMA_CPP_EXPAND * config.d_model // config.d_state
    return {
        "architectures": ["BambaForCausalLM"],
        "model_type": "bamba",
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layer,
        "attn_layer_indices": list(config.attn_layers),
        "intermediate_size": config.intermediate_size,
        "hidden_act": "silu",
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "rms_norm_eps": config.rms_norm_eps,
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": config.tie_embeddings,
        "max_position_embeddings": int(llama.get("max_position_embeddings", 8192)),
        "rope_theta": config.rope_theta,
        "rope_parameters": {
            **(config.rope_scaling or {"rope_type": "default"}),
            "rope_theta": config.rope_theta,
            "partial_rotary_factor": 1.0,
        },
        "attn_rotary_emb": config.head_dim,
        "mamba_n_heads": heads,
        "mamba_d_head": config.d_state,
        "mamba_n_groups": heads,
        "mamba_d_state": config.d_state,
        "mamba_d_conv": int(config.ssm["d_conv"]),
        "mamba_expand": LLAMA_CPP_EXPAND,
        "mamba_chunk_size": 256,
        "mamba_conv_bias": True,
        "mamba_proj_bias": False,
        "bos_token_id": llama.get("bos_token_id"),
        "eos_token_id": llama.get("eos_token_id"),
        "pad_token_id": llama.get("pad_token_id"),
        "dtype": llama.get("dtype") or llama.get("torch_dtype") or "float32",
    }


_SIDE_FILES = ("tokenizer*", "special_tokens_map.json", "chat_template*", "generation_config.json",
               "vocab.json", "merges.txt", "added_tokens.json")  # fmt: skip


def allow_hybrid_rope_freqs() -> None:
    """Let llama.cpp's converter write ``rope_freqs`` (llama3 RoPE scaling) for granitehybrid models.

    gguf-py does not list that tensor for the architecture, but llama.cpp's granitehybrid graph loads and
    applies it (tests/test_m1.py checks a llama3-scaled tiny M1 by logits parity).
    """
    import gguf  # in the converter's child process: llama.cpp's own copy (gguf_export._convert_here)

    tensors = gguf.MODEL_TENSORS[gguf.MODEL_ARCH.GRANITE_HYBRID]
    if gguf.MODEL_TENSOR.ROPE_FREQS not in tensors:
        tensors.append(gguf.MODEL_TENSOR.ROPE_FREQS)


def m1_to_bamba(src: Path, out_dir: Path) -> Path:
    """Rewrite the M1 checkpoint ``src`` as a BambaForCausalLM folder ``out_dir`` (exact; see module doc).

    Raises ModelLoadError naming the supported layouts when an operation has no exact llama.cpp form.
    """
    from safetensors.torch import save_file

    src, out_dir = Path(src), Path(out_dir)
    config = check_m1_checkpoint(src)
    tensors = bamba_tensors(load_m1_weights(src), config)
    out_dir.mkdir(parents=True, exist_ok=True)
    llama = _read_json(src / "config.json")
    text = json.dumps(bamba_config(config, llama), indent=2) + "\n"
    (out_dir / "config.json").write_text(text, encoding="utf-8")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_dir / "model.safetensors"))
    for pattern in _SIDE_FILES:
        for path in src.glob(pattern):
            shutil.copy2(path, out_dir / path.name)
    logger.info("rewrote M1 checkpoint %s as Bamba (%d heads, x/B repeated x%d, %d zero heads) in %s", src,
                config.n_heads, config.repeat, LLAMA_CPP_EXPAND * config.d_model // config.d_state - config.n_heads,
                out_dir)  # fmt: skip
    return out_dir


# -- tiny checkpoints ---------------------------------------------------------------------------------
def mamba_from_attention(attn: dict[str, torch.Tensor], config: M1Config) -> dict[str, torch.Tensor]:
    """M1's initialisation of a Mamba mixer from a Llama attention layer: x<-V, B<-K, C<-Q, out<-O.

    ``attn`` holds ``q_proj``/``k_proj``/``v_proj``/``o_proj`` weights; z and dt rows, the conv, A_log,
    dt_bias, D and the norm start from Mamba2's defaults (z, dt rows normal; conv as torch inits it).
    """
    import torch

    d_in, h = config.d_inner, config.n_heads
    std = float(attn["q_proj"].std())
    in_proj = torch.cat([
        torch.randn(d_in, config.d_model) * std,  # z
        attn["v_proj"], attn["k_proj"], attn["q_proj"],  # x <- V, B <- K, C <- Q
        torch.randn(h, config.d_model) * std,  # dt
    ])  # fmt: skip
    # nn.Conv1d's default init for a depthwise conv: fan-in = kernel width
    width = int(config.ssm["d_conv"])
    bound = 1.0 / math.sqrt(width)
    return {
        "in_proj.weight": in_proj,
        "conv1d.weight": torch.empty(config.conv_dim, 1, width).uniform_(-bound, bound),
        "conv1d.bias": torch.empty(config.conv_dim).uniform_(-bound, bound),
        "dt_bias": torch.zeros(h),
        "A_log": torch.log(torch.empty(h).uniform_(1.0, 16.0)),
        "D": torch.ones(d_in if config.ssm["D_has_hdim"] else h),
        "norm.weight": torch.ones(d_in),
        "out_proj.weight": attn["o_proj"].clone(),
    }


def _randomise_mixer(mixer: dict[str, torch.Tensor]) -> None:
    """Slow decay (A in [0.1, 1], dt in [0.05, 0.3]) so state carries across the compared positions; gains != 1."""
    import torch

    h = mixer["A_log"].shape[0]
    mixer["A_log"] = torch.log(torch.empty(h).uniform_(0.1, 1.0))
    mixer["dt_bias"] = torch.empty(h).uniform_(-3.0, -1.0)
    mixer["D"] = torch.empty_like(mixer["D"]).uniform_(0.5, 1.5)
    mixer["norm.weight"] = torch.empty_like(mixer["norm.weight"]).uniform_(0.5, 1.5)
    mixer["conv1d.bias"] = torch.randn_like(mixer["conv1d.bias"]) * DEFAULT_INIT_STD


def make_tiny_m1(
    out_dir: Path,
    *,
    layers: int = 4,
    hidden: int = 64,
    attn_layers: Sequence[int] = (1,),
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    repeat_kv_before_conv: bool = False,
    rope_scaling: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Write a random float32 M1 checkpoint (MambaInLlama layout, SmolLM2's tokenizer) to ``out_dir``.

    A random tied-embedding Llama is built with transformers; every layer not in ``attn_layers`` gets a
    Mamba mixer initialised from its attention weights as M1 does (d_inner = hidden, d_xb = kv_heads *
    head_dim, d_state = head_dim, ngroups = heads), then decay, dt, D, norm gains and conv biases are
    randomised so the recurrence matters. ``rope_scaling`` (e.g. Llama 3's ``{"rope_type": "llama3", ...}``)
    goes into config.json. Returns ``out_dir``.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, LlamaForCausalLM

    if any(not 0 <= i < layers for i in attn_layers):
        raise InvalidRequestError(
            f"attn_layers {list(attn_layers)} must lie in [0, {layers})", param="attn_layers"
        )
    out_dir = Path(out_dir)
    tokenizer = load_reference_tokenizer("llama")
    llama_config = _tiny_config(
        "llama", tokenizer, layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
        intermediate=intermediate, head_dim=None,
    )  # fmt: skip
    llama_config.architectures = ["LlamaForCausalLM"]  # MambaInLlama keeps the teacher's config.json
    if rope_scaling is not None:
        llama_config.rope_parameters = {
            **rope_scaling,
            "rope_theta": llama_config.rope_parameters["rope_theta"],
        }
    head_dim = hidden // heads
    mamba = {
        "d_model": hidden,
        "ssm_cfg": {
            "expand": 1,
            "ngroups": heads,
            "d_state": head_dim,
            "repeat_kv_before_conv": repeat_kv_before_conv,
        },
        "rms_norm_eps": llama_config.rms_norm_eps,
        "vocab_size": llama_config.vocab_size,
        "d_inner": hidden,
        "d_xb": kv_heads * head_dim,
        "intermediate_size": intermediate,
        "hidden_act": "silu",
        "n_layer": layers,
        "attn_layers": sorted(set(attn_layers)),
    }
    torch.manual_seed(seed)
    llama = LlamaForCausalLM(cast("LlamaConfig", llama_config)).eval()
    state = {k: v.detach().clone() for k, v in llama.state_dict().items() if k != "lm_head.weight"}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / M1_CONFIG_NAME).write_text(json.dumps(mamba, indent=4) + "\n", encoding="utf-8")
    llama_config.save_pretrained(out_dir)
    config = read_m1_config(out_dir)
    for i in range(layers):
        if config.is_attention(i):
            continue
        prefix = f"model.layers.{i}.self_attn."
        attn = {p: state.pop(f"{prefix}{p}.weight") for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
        mixer = mamba_from_attention(attn, config)
        _randomise_mixer(mixer)
        state.update({f"model.layers.{i}.mamba.{k}": v for k, v in mixer.items()})
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_dir / "model.safetensors"))
    GenerationConfig(
        bos_token_id=llama_config.bos_token_id,
        eos_token_id=llama_config.eos_token_id,
        pad_token_id=llama_config.pad_token_id,
    ).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    logger.info(
        "wrote tiny M1 checkpoint (%d layers, attention at %s) to %s", layers, list(attn_layers), out_dir
    )
    return out_dir
