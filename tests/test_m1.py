"""M1 / MambaInLlama hybrids: the float64 reference, the exact Bamba rewrite, llama.cpp parity, serving."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch

import edgereason as er
from edgereason.backends.llama_cpp import LlamaCppBackend
from edgereason.convert.gguf_export import hf_to_gguf, read_hf_config
from edgereason.convert.m1 import (
    M1_CONFIG_NAME,
    bamba_tensors,
    load_m1_weights,
    m1_to_bamba,
    make_tiny_m1,
    mamba_from_attention,
    read_m1_config,
)
from edgereason.convert.m1_reference import M1Reference, m1_parity, selective_scan
from edgereason.convert.pipeline import convert
from edgereason.errors import InvalidRequestError, ModelLoadError
from tests.test_hybrid import (
    PARITY_TOKENS,
    assert_engine_features_run,
    assert_forks_equal_independent_runs,
    assert_rewind_replays_kept_tokens,
)

pytestmark = pytest.mark.convert

# Llama 3's RoPE scaling with a short original context, so 32 positions see the rescaled frequencies.
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


@pytest.fixture(scope="module")
def tiny_m1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_m1(tmp_path_factory.mktemp("m1") / "m1")


# -- the reference ------------------------------------------------------------------------------------
def _quadratic_scan(x: Any, dt: Any, a: Any, b: Any, c: Any, d: Any) -> Any:
    """Mamba2 as masked attention (SSD): y_t = sum_{s<=t} (C_t . B_s) exp(sum_{s<r<=t} dt_r A) dt_s x_s + D x_t."""
    seg = torch.cumsum(dt * a, dim=0)  # (L, H)
    decay = torch.exp(seg[:, None, :] - seg[None, :, :])  # (t, s, H)
    mask = torch.tril(torch.ones(x.shape[0], x.shape[0], dtype=torch.bool))[:, :, None]
    scores = torch.einsum("thn,shn->tsh", c, b) * torch.where(mask, decay, 0.0) * dt[None, :, :]
    return torch.einsum("tsh,shp->thp", scores, x) + d[:, None] * x


def test_recurrent_scan_equals_the_quadratic_form_and_carries_its_state() -> None:
    gen = torch.Generator().manual_seed(0)
    n_tok, heads, p, n = 24, 3, 5, 4

    def rand(*shape: int) -> Any:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    x, b, c = rand(n_tok, heads, p), rand(n_tok, heads, n), rand(n_tok, heads, n)
    dt = torch.nn.functional.softplus(rand(n_tok, heads))
    a, d = -torch.rand(heads, generator=gen, dtype=torch.float64) * 2, rand(heads)
    y, _ = selective_scan(x, dt, a, b, c, d, torch.zeros(heads, p, n, dtype=torch.float64))
    assert torch.allclose(y, _quadratic_scan(x, dt, a, b, c, d), atol=1e-10)
    # in two parts, the second starting from the first's final state
    y1, h1 = selective_scan(
        x[:10], dt[:10], a, b[:10], c[:10], d, torch.zeros(heads, p, n, dtype=torch.float64)
    )
    y2, _ = selective_scan(x[10:], dt[10:], a, b[10:], c[10:], d, h1)
    assert torch.allclose(torch.cat([y1, y2]), y, atol=1e-12)


def test_decoding_on_the_cache_equals_one_pass(tiny_m1: Path) -> None:
    ref = M1Reference.from_pretrained(tiny_m1)
    ids = PARITY_TOKENS[:12]
    whole = ref.forward(ids)
    cache = ref.new_cache()
    parts = torch.cat(
        [ref.forward(ids[:5], cache), ref.forward(ids[5:6], cache), ref.forward(ids[6:], cache)]
    )
    assert cache.n_past == len(ids)
    assert (whole - parts).abs().max() < 1e-10


def test_the_recurrence_carries_the_first_token_to_the_last(tmp_path: Path) -> None:
    # Mamba layers only: past the conv's 4-token window, token 0 reaches position 31 through the SSM state.
    ref = M1Reference.from_pretrained(make_tiny_m1(tmp_path / "m1", attn_layers=()))
    changed = [PARITY_TOKENS[0] + 7, *PARITY_TOKENS[1:]]
    shift = (ref.forward(PARITY_TOKENS)[-1] - ref.forward(changed)[-1]).abs().max()
    assert shift > 0.1, float(shift)


def test_an_all_attention_m1_is_transformers_llama(tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    src = make_tiny_m1(tmp_path / "m1", attn_layers=range(4), rope_scaling=LLAMA3_ROPE)
    llama = LlamaForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = llama(input_ids=torch.tensor([PARITY_TOKENS])).logits[0].double()
    ours = M1Reference.from_pretrained(src).forward(PARITY_TOKENS)
    assert (ours - theirs).abs().max() < 1e-4


def test_mixer_initialised_from_attention_has_m1_shapes(tiny_m1: Path) -> None:
    config = read_m1_config(tiny_m1)  # d_model 64, 4 heads of 16, 2 KV heads: d_inner 64, d_xb 32
    assert (config.d_inner, config.d_xb, config.n_heads, config.d_state, config.repeat) == (64, 32, 4, 16, 2)
    attn = {"q_proj": torch.randn(64, 64), "k_proj": torch.randn(32, 64), "v_proj": torch.randn(32, 64),
            "o_proj": torch.randn(64, 64)}  # fmt: skip
    mixer = mamba_from_attention(attn, config)
    assert mixer["in_proj.weight"].shape == (64 + 32 + 32 + 64 + 4, 64)  # z, x, B, C, dt
    assert torch.equal(mixer["in_proj.weight"][64:96], attn["v_proj"])  # x <- V
    assert torch.equal(mixer["in_proj.weight"][96:128], attn["k_proj"])  # B <- K
    assert torch.equal(mixer["in_proj.weight"][128:192], attn["q_proj"])  # C <- Q
    assert torch.equal(mixer["out_proj.weight"], attn["o_proj"])  # out <- O
    assert mixer["conv1d.weight"].shape == (64 + 32 + 32, 1, 4)  # x, B before the repeat, C
    assert [mixer[k].shape for k in ("dt_bias", "A_log", "D", "norm.weight")] == [(4,), (4,), (4,), (64,)]


def test_bamba_rewrite_repeats_x_and_b_per_head_and_pads_zero_heads(tiny_m1: Path) -> None:
    config, weights = read_m1_config(tiny_m1), load_m1_weights(tiny_m1)
    bamba = bamba_tensors(weights, config)
    m1_in = weights["model.layers.0.mamba.in_proj.weight"]
    in_proj = bamba["model.layers.0.mamba.in_proj.weight"]
    assert in_proj.shape == (4 * 128 + 8, 64)  # z, x, B, C at 2 * d_model, 8 heads (4 zero) of dt
    x_m1, x = m1_in[64:96].reshape(2, 16, 64), in_proj[128:256].reshape(8, 16, 64)
    for head in range(4):
        assert torch.equal(x[head], x_m1[head // 2])  # heads 0,1 share KV group 0; heads 2,3 group 1
    assert not x[4:].any() and not in_proj[-4:].any()
    out = bamba["model.layers.0.mamba.out_proj.weight"]
    assert out.shape == (64, 128) and not out[:, 64:].any()
    assert bamba["model.layers.0.mamba.conv1d.weight"].shape == (3 * 128, 1, 4)
    assert "model.layers.1.self_attn.q_proj.weight" in bamba  # attention layer 1 kept as is


def test_bamba_rewrite_computes_the_reference_in_transformers(tiny_m1: Path, tmp_path: Path) -> None:
    from transformers import BambaForCausalLM

    bamba = BambaForCausalLM.from_pretrained(m1_to_bamba(tiny_m1, tmp_path / "bamba"), dtype=torch.float32)
    with torch.no_grad():
        theirs = bamba.eval()(input_ids=torch.tensor([PARITY_TOKENS])).logits[0].double()
    ours = M1Reference.from_pretrained(tiny_m1).forward(PARITY_TOKENS)
    assert (ours - theirs).abs().max() < 1e-4


# -- llama.cpp ----------------------------------------------------------------------------------------
@pytest.fixture(
    scope="module",
    params=[(False, None), (True, LLAMA3_ROPE)],
    ids=["conv-then-repeat", "repeat-then-conv-llama3-rope"],
)
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    before, rope = request.param
    root = tmp_path_factory.mktemp("m1-gguf")
    src = make_tiny_m1(
        root / "m1", repeat_kv_before_conv=before, rope_scaling=rope, attn_layers=(1, 3), seed=1
    )
    return src, hf_to_gguf(src, root / "model.gguf")


# llama.cpp's f32 logits vs the float64 reference over 32 positions measured 3.9e-5 (conv then repeat),
# 9.0e-6 (repeat then conv, llama3 RoPE) and 1.2e-5 (the default tiny M1 through `convert`): about 10x
# that, so a real regression (25-100x) fails.
LOGIT_TOLERANCE = {"conv-then-repeat": 4e-4, "repeat-then-conv-llama3-rope": 1e-4, "pipeline": 1.5e-4}


def test_f32_gguf_matches_the_reference(converted: tuple[Path, Path], request: pytest.FixtureRequest) -> None:
    src, gguf = converted
    report = m1_parity(src, gguf, PARITY_TOKENS, greedy_tokens=32, threads=1)
    assert report["n_positions"] == 32
    tolerance = LOGIT_TOLERANCE[request.node.callspec.id]
    assert report["max_abs_diff"] <= tolerance, report["max_abs_diff"]
    assert report["greedy_match"], (report["greedy_hf"], report["greedy_gguf"])


@pytest.fixture(scope="module")
def m1_gguf(tiny_m1: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = convert(tiny_m1, tmp_path_factory.mktemp("m1-convert") / "m1.gguf", to="gguf", quant="f32")
    assert result.manifest["architecture"] == "granitehybrid"
    assert result.manifest["source"]["layout"] == "m1"
    return result.path


def test_convert_pipeline_output_matches_the_reference(tiny_m1: Path, m1_gguf: Path) -> None:
    report = m1_parity(tiny_m1, m1_gguf, PARITY_TOKENS, greedy_tokens=32, threads=1)
    assert report["max_abs_diff"] <= LOGIT_TOLERANCE["pipeline"], report["max_abs_diff"]
    assert report["greedy_match"]


# -- serving ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backend(m1_gguf: Path) -> Iterator[LlamaCppBackend]:
    be = LlamaCppBackend(m1_gguf, n_ctx=256, threads=1, max_sequences=4)
    yield be
    be.close()


def test_m1_serves_as_a_recurrent_model(backend: LlamaCppBackend) -> None:
    assert backend.info.architecture == "granitehybrid"
    assert backend.capabilities.rewind is False and backend.capabilities.fork is True


def test_forked_samples_equal_independent_runs(backend: LlamaCppBackend) -> None:
    assert_forks_equal_independent_runs(backend)


def test_rewind_of_decoded_tokens_replays_the_kept_ones(backend: LlamaCppBackend) -> None:
    assert_rewind_replays_kept_tokens(backend)


def test_generation_budgets_and_self_consistency_run(m1_gguf: Path) -> None:
    with er.load(m1_gguf, n_ctx=512, threads=1, max_sequences=4) as engine:
        assert_engine_features_run(engine)


# -- bad input ----------------------------------------------------------------------------------------
def _bad_m1(tiny_m1: Path, dest: Path, **changes: Any) -> Path:
    dest.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy2(tiny_m1 / name, dest / name)
    (dest / "model.safetensors").write_bytes(b"")
    mamba = json.loads((tiny_m1 / M1_CONFIG_NAME).read_text())
    ssm = changes.pop("ssm_cfg", {})
    mamba.update(changes)
    mamba["ssm_cfg"].update(ssm)
    (dest / M1_CONFIG_NAME).write_text(json.dumps(mamba))
    return dest


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"ssm_cfg": {"D_has_hdim": True}}, "D per channel"),
        ({"ssm_cfg": {"norm_before_gate": True}}, "norm_before_gate"),
        ({"ssm_cfg": {"rmsnorm": False}}, "no gated RMSNorm"),
        ({"ssm_cfg": {"dt_limit": [0.0, 0.1]}}, "dt_limit"),
        ({"ssm_cfg": {"ngroups": 3}}, "d_inner=64 != ngroups\\*d_state"),
        ({"ssm_cfg": {"mystery": 1}}, "unknown ssm_cfg keys"),
        ({"d_xb": 24}, "d_xb=24"),
        ({"attn_layers": []}, "no attention layer"),
        ({"attn_layers": [0, 1, 2, 3]}, "no Mamba layer"),
        ({"rms_norm_eps": 1e-6}, "rms_norm_eps"),
    ],
)
def test_unsupported_m1_layout_is_rejected_clearly(
    tiny_m1: Path, tmp_path: Path, changes: dict[str, Any], why: str
) -> None:
    src = _bad_m1(tiny_m1, tmp_path / "bad", **changes)
    with pytest.raises(ModelLoadError, match=f"{why}.*Supported: MambaInLlama/M1 checkpoints"):
        read_hf_config(src)


def test_convert_refuses_an_unsupported_m1_before_writing(tiny_m1: Path, tmp_path: Path) -> None:
    src = _bad_m1(tiny_m1, tmp_path / "bad", ssm_cfg={"D_has_hdim": True})
    out = tmp_path / "out.gguf"
    with pytest.raises(ModelLoadError, match="D per channel"):
        convert(src, out, to="gguf", quant="f32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


def test_m1_converts_to_gguf_only(tiny_m1: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="GGUF only"):
        convert(tiny_m1, tmp_path / "mlx", to="mlx")
    assert list(tmp_path.iterdir()) == []
