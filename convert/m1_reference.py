"""A pure-PyTorch reference of M1 / MambaInLlama hybrids: a sequential scan, no CUDA kernels.

It computes what MambaInLlama's ``Mamba2`` mixer, Llama attention, MLP and RMSNorms compute (see
:mod:`convert.m1` for the layout), in float64 by default, one token of the recurrence at a time. A cache
(Mamba conv/SSM states, attention keys/values) lets it decode step by step; the tests check both against
independent formulations, and llama.cpp's logits of the converted GGUF against this reference.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from edgereason.errors import InvalidRequestError, ModelLoadError

from .m1 import GATED_NORM_EPS, M1Config, load_m1_weights, read_m1_config
from .parity import DEFAULT_GREEDY_TOKENS, ParityReport, _llama_cpp_logits_and_greedy, compare_runs

logger = logging.getLogger(__name__)


@dataclass
class MambaState:
    conv: torch.Tensor  # (conv channels, d_conv - 1): the last inputs of the causal conv
    ssm: torch.Tensor  # (heads, head_dim, d_state)


@dataclass
class AttentionState:
    k: torch.Tensor  # (positions, kv heads, head_dim), after RoPE
    v: torch.Tensor


@dataclass
class M1Cache:
    layers: list[MambaState | AttentionState]
    n_past: int = 0
    tokens: list[int] = field(default_factory=list)


def selective_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    d: torch.Tensor,
    h0: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba2's recurrence, token by token: h = exp(dt*A) h + dt x B^T; y = h C + D x.

    x (L, H, P), dt (L, H) after softplus, a (H,) negative, b and c (L, H, N), d (H,) or (H, P),
    h0 (H, P, N). Returns y (L, H, P) and the final state.
    """
    h = h0.clone()
    d = d[:, None] if d.dim() == 1 else d
    ys = []
    for t in range(x.shape[0]):
        decay = torch.exp(dt[t] * a)[:, None, None]
        h = h * decay + (dt[t][:, None] * x[t])[:, :, None] * b[t][:, None, :]
        ys.append((h * c[t][:, None, :]).sum(-1) + d * x[t])
    return torch.stack(ys), h


def causal_conv(
    u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv of u (L, C) given the previous inputs ``state`` (C, K-1); returns out, new state."""
    k = weight.shape[-1]
    full = torch.cat([state, u.T], dim=1)  # (C, K-1+L)
    windows = full.unfold(1, k, 1)  # (C, L, K)
    out = (windows * weight[:, 0, None, :]).sum(-1) + bias[:, None]
    return out.T, full[:, full.shape[1] - (k - 1) :]


def gated_rms_norm(
    y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, group: int, norm_before_gate: bool
) -> torch.Tensor:
    """MambaInLlama's RMSNormGated over groups of ``group`` channels (one group per head)."""

    def norm(v: torch.Tensor) -> torch.Tensor:
        g = v.reshape(*v.shape[:-1], -1, group)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + GATED_NORM_EPS)
        return g.reshape(v.shape) * weight

    return norm(y) * F.silu(z) if norm_before_gate else norm(y * F.silu(z))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope_inv_freq(config: M1Config, dtype: torch.dtype) -> torch.Tensor:
    """Llama's RoPE frequencies: default, or with llama3 scaling of the long wavelengths."""
    dim = config.head_dim
    inv = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    s = config.rope_scaling
    if s is None:
        return inv.to(dtype)
    factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old = float(s["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    mixed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old / high) & (wavelen <= old / low)
    return torch.where(medium, mixed, scaled).to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class M1Reference:
    """An M1 checkpoint evaluated in float64 (or ``dtype``) with a sequential scan."""

    def __init__(
        self, config: M1Config, weights: dict[str, torch.Tensor], dtype: torch.dtype = torch.float64
    ):
        self.config = config
        self.dtype = dtype
        self.w = {k: v.to(dtype) for k, v in weights.items()}
        if config.tie_embeddings or "lm_head.weight" not in self.w:
            self.w["lm_head.weight"] = self.w["model.embed_tokens.weight"]
        self.inv_freq = rope_inv_freq(config, dtype)
        self._check_shapes()

    @classmethod
    def from_pretrained(cls, src: Path, dtype: torch.dtype = torch.float64) -> M1Reference:
        return cls(read_m1_config(src), load_m1_weights(src), dtype)

    def _check_shapes(self) -> None:
        c = self.config
        for i in range(c.n_layer):
            if c.is_attention(i):
                continue
            rows = self.w[f"model.layers.{i}.mamba.in_proj.weight"].shape[0]
            if rows != c.in_proj_rows:
                raise ModelLoadError(
                    f"layer {i}: in_proj has {rows} rows, M1 expects {c.in_proj_rows} "
                    "(z, x, B, C, dt; a gated-MLP part d_mlp > 0 is not supported)"
                )

    def new_cache(self) -> M1Cache:
        c = self.config
        layers: list[MambaState | AttentionState] = []
        for i in range(c.n_layer):
            if c.is_attention(i):
                empty = torch.zeros(0, c.num_kv_heads, c.head_dim, dtype=self.dtype)
                layers.append(AttentionState(empty, empty.clone()))
            else:
                conv = torch.zeros(c.conv_dim, int(c.ssm["d_conv"]) - 1, dtype=self.dtype)
                ssm = torch.zeros(c.n_heads, c.d_state, c.d_state, dtype=self.dtype)
                layers.append(MambaState(conv, ssm))
        return M1Cache(layers)

    @torch.no_grad()
    def forward(self, ids: Sequence[int], cache: M1Cache | None = None) -> torch.Tensor:
        """Logits (len(ids), vocab) of ``ids`` following what ``cache`` holds (updated in place)."""
        if not ids:
            raise InvalidRequestError("ids is empty", param="ids")
        cache = cache if cache is not None else self.new_cache()
        h = self.w["model.embed_tokens.weight"][torch.tensor(list(ids))]
        for i, state in enumerate(cache.layers):
            p = f"model.layers.{i}."
            x = rms_norm(h, self.w[p + "input_layernorm.weight"], self.config.rms_norm_eps)
            if isinstance(state, AttentionState):
                h = h + self._attention(x, p + "self_attn.", state, cache.n_past)
            else:
                h = h + self._mamba(x, p + "mamba.", state)
            x = rms_norm(h, self.w[p + "post_attention_layernorm.weight"], self.config.rms_norm_eps)
            h = h + self._mlp(x, p + "mlp.")
        cache.n_past += len(ids)
        cache.tokens.extend(ids)
        h = rms_norm(h, self.w["model.norm.weight"], self.config.rms_norm_eps)
        return h @ self.w["lm_head.weight"].T

    def greedy(self, ids: Sequence[int], n_new: int) -> tuple[torch.Tensor, list[int]]:
        """Logits of ``ids`` and ``n_new`` argmax tokens decoded one at a time on the cache."""
        cache = self.new_cache()
        logits = self.forward(ids, cache)
        tokens: list[int] = []
        next_id = int(logits[-1].argmax())
        for _ in range(n_new):
            tokens.append(next_id)
            next_id = int(self.forward([next_id], cache)[-1].argmax())
        return logits, tokens

    def _mlp(self, x: torch.Tensor, p: str) -> torch.Tensor:
        gate = F.silu(x @ self.w[p + "gate_proj.weight"].T)
        return (gate * (x @ self.w[p + "up_proj.weight"].T)) @ self.w[p + "down_proj.weight"].T

    def _attention(self, x: torch.Tensor, p: str, state: AttentionState, n_past: int) -> torch.Tensor:
        c, n = self.config, x.shape[0]
        q = (x @ self.w[p + "q_proj.weight"].T).reshape(n, c.num_heads, c.head_dim)
        k = (x @ self.w[p + "k_proj.weight"].T).reshape(n, c.num_kv_heads, c.head_dim)
        v = (x @ self.w[p + "v_proj.weight"].T).reshape(n, c.num_kv_heads, c.head_dim)
        pos = torch.arange(n_past, n_past + n, dtype=self.dtype)
        freqs = torch.outer(pos, self.inv_freq)
        cos, sin = (torch.cat([f, f], dim=-1)[:, None, :] for f in (freqs.cos(), freqs.sin()))
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        state.k, state.v = torch.cat([state.k, k]), torch.cat([state.v, v])
        rep = c.num_heads // c.num_kv_heads
        keys, values = state.k.repeat_interleave(rep, dim=1), state.v.repeat_interleave(rep, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, keys) / math.sqrt(c.head_dim)
        visible = torch.arange(keys.shape[0])[None, :] <= (n_past + torch.arange(n))[:, None]
        scores = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        out = torch.einsum("hqk,khd->qhd", scores, values).reshape(n, -1)
        return out @ self.w[p + "o_proj.weight"].T

    def _repeat(self, t: torch.Tensor) -> torch.Tensor:
        """(L, d_xb) -> (L, H, N): group g of N channels serves heads g*rep .. g*rep + rep - 1."""
        c = self.config
        return t.reshape(t.shape[0], c.n_xb_groups, c.d_state).repeat_interleave(c.repeat, dim=1)

    def _mamba(self, u: torch.Tensor, p: str, state: MambaState) -> torch.Tensor:
        c, w, n = self.config, self.w, u.shape[0]
        d_in, d_xb, heads, d_state = c.d_inner, c.d_xb, c.n_heads, c.d_state
        z, xbc, dt = torch.split(u @ w[p + "in_proj.weight"].T, [d_in, d_in + 2 * d_xb, heads], dim=-1)
        before = bool(c.ssm["repeat_kv_before_conv"])
        if before:
            x0, b0, c0 = torch.split(xbc, [d_xb, d_xb, d_in], dim=-1)
            xbc = torch.cat([self._repeat(x0).reshape(n, -1), self._repeat(b0).reshape(n, -1), c0], dim=-1)
        bias = w.get(p + "conv1d.bias")
        bias = bias if bias is not None else torch.zeros(c.conv_dim, dtype=self.dtype)
        xbc, state.conv = causal_conv(xbc, w[p + "conv1d.weight"], bias, state.conv)
        xbc = F.silu(xbc)
        if before:
            x, b, cc = (t.reshape(n, heads, d_state) for t in torch.split(xbc, [d_in] * 3, dim=-1))
        else:
            x0, b0, c0 = torch.split(xbc, [d_xb, d_xb, d_in], dim=-1)
            x, b, cc = self._repeat(x0), self._repeat(b0), c0.reshape(n, heads, d_state)
        dt = F.softplus(dt + w[p + "dt_bias"])
        lo, hi = c.ssm["dt_limit"]
        if (lo, hi) != (0.0, math.inf):
            dt = dt.clamp(lo, hi)
        d = w[p + "D"].reshape(heads, d_state) if c.ssm["D_has_hdim"] else w[p + "D"]
        y, state.ssm = selective_scan(x, dt, -torch.exp(w[p + "A_log"]), b, cc, d, state.ssm)
        y = y.reshape(n, d_in)
        if c.ssm["rmsnorm"]:
            y = gated_rms_norm(y, z, w[p + "norm.weight"], d_in // heads, bool(c.ssm["norm_before_gate"]))
        else:
            y = y * F.silu(z)
        return y @ w[p + "out_proj.weight"].T


def m1_parity(
    m1_dir: Path,
    gguf: Path,
    token_ids: list[int],
    *,
    greedy_tokens: int = DEFAULT_GREEDY_TOKENS,
    threads: int = 1,
) -> ParityReport:
    """Compare llama.cpp's logits and greedy run of ``gguf`` with the float64 reference of ``m1_dir``."""
    if not token_ids:
        raise InvalidRequestError("token_ids is empty; pass at least one token id", param="token_ids")
    ref = M1Reference.from_pretrained(Path(m1_dir))
    ref_logits, ref_greedy = ref.greedy(token_ids, greedy_tokens)
    cpp_logits, cpp_greedy = _llama_cpp_logits_and_greedy(Path(gguf), token_ids, greedy_tokens, threads)
    return compare_runs(
        ref_logits.numpy(), ref_greedy, cpp_logits, cpp_greedy, f"{gguf.name} vs the M1 reference"
    )
