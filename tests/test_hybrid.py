"""Mamba2 and hybrid Mamba2/attention students: conversion parity, serving, forked recurrent state."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import edgereason as er
from edgereason.backends.base import BatchItem, SamplingParams
from edgereason.backends.llama_cpp import LlamaCppBackend
from edgereason.convert.gguf_export import SUPPORTED_ARCHITECTURES, hf_to_gguf, read_hf_config
from edgereason.convert.hybrid import HYBRID_CLASSES, check_hybrid_layout, make_tiny_hybrid
from edgereason.convert.parity import logits_parity
from edgereason.convert.pipeline import convert
from edgereason.errors import ModelLoadError
from edgereason.scheduler import Scheduler, Seq

pytestmark = pytest.mark.convert

VERIFIED = ("mamba2", "bamba", "granitemoehybrid", "falcon_h1")
# f32 GGUF vs transformers over 32 positions measured 2.6-3.8e-5 (mamba2), 1.9e-5 (bamba), 1.0-1.2e-5
# (granite), 1.6e-5 (falcon_h1): about 10x that, so a real regression (25-100x) fails.
LOGIT_TOLERANCE = {"mamba2": 4e-4, "bamba": 2e-4, "granitemoehybrid": 1.5e-4, "falcon_h1": 2e-4}
PARITY_TOKENS = list(range(1000, 1032))  # 32 positions
PROMPT = "Q: What is 12 + 7?\nA:"


@pytest.fixture(scope="module", params=VERIFIED)
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp(request.param)
    hf = make_tiny_hybrid(request.param, root / "hf")
    return hf, hf_to_gguf(hf, root / "model.gguf")


@pytest.fixture(scope="module")
def bamba_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bamba-serve")
    return hf_to_gguf(make_tiny_hybrid("bamba", root / "hf"), root / "model.gguf")


@pytest.fixture(scope="module")
def backend(bamba_gguf: Path) -> Iterator[LlamaCppBackend]:
    be = LlamaCppBackend(bamba_gguf, n_ctx=256, threads=1, max_sequences=4)
    yield be
    be.close()


# -- conversion ---------------------------------------------------------------------------------------
def test_f32_gguf_matches_transformers(converted: tuple[Path, Path]) -> None:
    hf, gguf = converted
    report = logits_parity(hf, gguf, PARITY_TOKENS, greedy_tokens=32, threads=1)
    assert report["n_positions"] == 32
    arch = json.loads((hf / "config.json").read_text())["model_type"]
    assert report["max_abs_diff"] <= LOGIT_TOLERANCE[arch], report["max_abs_diff"]
    assert report["greedy_match"], (report["greedy_hf"], report["greedy_gguf"])


def test_verified_layouts_are_listed_as_supported() -> None:
    for arch in VERIFIED:
        assert HYBRID_CLASSES[arch] in SUPPORTED_ARCHITECTURES


def _config(tmp_path: Path, **config: object) -> dict:
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "tokenizer.json").write_text("{}")
    return config


def test_unsupported_hybrid_architecture_names_the_supported_ones(tmp_path: Path) -> None:
    _config(tmp_path, architectures=["JambaForCausalLM"], num_hidden_layers=4)
    with pytest.raises(ModelLoadError, match="JambaForCausalLM is not supported.*BambaForCausalLM"):
        read_hf_config(tmp_path)


@pytest.mark.parametrize(
    ("config", "why"),
    [
        (
            {
                "architectures": ["BambaForCausalLM"],
                "num_hidden_layers": 4,
                "attn_layer_indices": [1],
                "hidden_size": 64,
                "num_attention_heads": 4,
                "attn_rotary_emb": 8,
            },
            "partial RoPE",
        ),
        (
            {
                "architectures": ["FalconH1ForCausalLM"],
                "num_hidden_layers": 2,
                "tie_word_embeddings": True,
                "embedding_multiplier": 2.0,
                "lm_head_multiplier": 0.5,
            },
            "tied embeddings",
        ),
        (
            {
                "architectures": ["GraniteMoeHybridForCausalLM"],
                "num_hidden_layers": 2,
                "layer_types": ["mamba", "attention"],
                "num_local_experts": 8,
            },
            "mixture-of-experts",
        ),
        (
            {
                "architectures": ["Mamba2ForCausalLM"],
                "num_hidden_layers": 2,
                "hidden_size": 64,
                "expand": 2,
                "num_heads": 4,
                "head_dim": 16,
            },
            "num_heads \\* head_dim",
        ),
    ],
)
def test_unsupported_hybrid_layout_is_rejected_clearly(config: dict, why: str) -> None:
    with pytest.raises(ModelLoadError, match=f"{why}.*Supported hybrids: Mamba2ForCausalLM"):
        check_hybrid_layout(config)


def test_unsupported_layout_fails_before_conversion(tmp_path: Path) -> None:
    src = tmp_path / "bamba"
    src.mkdir()
    _config(src, architectures=["BambaForCausalLM"], num_hidden_layers=4, attn_layer_indices=[1],
            hidden_size=64, num_attention_heads=4, attn_rotary_emb=8)  # fmt: skip
    with pytest.raises(ModelLoadError, match="partial RoPE.*Supported hybrids"):
        read_hf_config(src)
    out = tmp_path / "out.gguf"
    with pytest.raises(ModelLoadError, match="partial RoPE"):
        convert(src, out, to="gguf", quant="f32")
    assert not out.exists() and list(tmp_path.iterdir()) == [src]


def test_onnx_export_of_a_hybrid_names_the_architecture(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime_genai")
    hf = make_tiny_hybrid("bamba", tmp_path / "hf")
    out = tmp_path / "onnx"
    with pytest.raises(ModelLoadError, match="cannot export BambaForCausalLM.*--to gguf"):
        convert(hf, out, to="onnx", quant="fp32")
    assert not out.exists()


def test_supported_layouts_pass_the_layout_check(converted: tuple[Path, Path]) -> None:
    check_hybrid_layout(json.loads((converted[0] / "config.json").read_text()))


# -- serving ------------------------------------------------------------------------------------------
class Collect:
    """Controller that keeps each sequence's sampled tokens and finishes it after ``n``."""

    def __init__(self, sched: Scheduler, n: int) -> None:
        self.sched, self.n = sched, n
        self.tokens: dict[int, list[int]] = {}
        self.ready: list[Seq] = []

    def on_token(self, seq: Seq, token: int, text: str, logprobs: object) -> None:
        got = self.tokens.setdefault(id(seq), [])
        got.append(token)
        if len(got) >= self.n:
            self.sched.finish(seq)

    def on_ready(self, seq: Seq) -> None:
        self.ready.append(seq)

    def on_context_full(self, seq: Seq) -> None:
        raise AssertionError("context full")


def _run(sched: Scheduler) -> None:
    while sched.step():
        pass


def test_recurrent_model_declares_no_rewind(backend: LlamaCppBackend) -> None:
    assert backend.info.architecture == "granitehybrid"
    assert backend.capabilities.rewind is False and backend.capabilities.fork is True
    assert backend.capabilities.max_sequences == 4


def test_forked_samples_equal_independent_runs(backend: LlamaCppBackend) -> None:
    assert_forks_equal_independent_runs(backend)


def assert_forks_equal_independent_runs(backend: LlamaCppBackend) -> None:
    """Self-consistency's shape: one prefilled prompt, N forks of its recurrent+KV state, N seeds."""
    prompt = backend.tokenize(PROMPT, add_bos=True)
    seeds = [11, 12, 13]
    sampling = [SamplingParams(temperature=0.8, top_p=0.95, seed=s) for s in seeds]

    sched = Scheduler(backend)
    forks = Collect(sched, 16)
    root = sched.spawn(forks, prompt[:-1], None)
    _run(sched)
    assert forks.ready == [root]
    seqs = [sched.fork(root, forks, p, pending=[prompt[-1]]) for p in sampling]
    _run(sched)
    sched.finish(root)
    forked = [forks.tokens[id(s)] for s in seqs]
    for (
        slot
    ) in sched.cached_slots:  # finished sequences leave their state for reuse: clear it for the raw run
        backend.remove(slot, 0)

    # The same N samples without copy_seq: each slot prefills its own copy of the prompt. The calls have
    # the shapes of the forked run (prompt minus its last token alone, then one token per sample side by
    # side), since a matrix product over 22 rows may round differently from one over 3.
    samplers = [backend.make_sampler(p) for p in sampling]
    for slot in range(len(seeds)):
        backend.decode([BatchItem(slot, 0, prompt[:-1], want_logits=False)])
    last, pos = [prompt[-1]] * len(seeds), len(prompt) - 1
    independent: list[list[int]] = [[] for _ in seeds]
    for _ in range(16):
        handles = backend.decode([BatchItem(k, pos, [t], want_logits=True) for k, t in enumerate(last)])
        last = [backend.sample(sm, h) for sm, h in zip(samplers, handles)]
        for got, t in zip(independent, last):
            got.append(t)
        pos += 1
    for slot, sm in enumerate(samplers):
        backend.remove(slot, 0)
        sm.close()
    assert forked == independent
    assert len({tuple(t) for t in forked}) > 1  # the seeds really differ


def test_rewind_of_decoded_tokens_replays_the_kept_ones(backend: LlamaCppBackend) -> None:
    assert_rewind_replays_kept_tokens(backend)


def assert_rewind_replays_kept_tokens(backend: LlamaCppBackend) -> None:
    """A scheduler rewind on a recurrent model (no rewind capability) gives the run without the rewind."""
    prompt = backend.tokenize(PROMPT, add_bos=True)
    sched = Scheduler(backend)
    first = Collect(sched, 8)
    seq = sched.spawn(first, prompt, SamplingParams())
    _run(sched)
    greedy = first.tokens[id(seq)]

    class RewindOnce(Collect):
        def on_token(self, seq: Seq, token: int, text: str, logprobs: object) -> None:
            got = self.tokens.setdefault(id(seq), [])
            got.append(token)
            if len(got) == 6 and not self.rewound:
                self.rewound = True
                # the last token is sampled, not decoded; the two before it are in the recurrent state
                sched.rewind(seq, 3)
                del got[-3:]
            elif len(got) >= self.n:
                sched.finish(seq)

    again = RewindOnce(sched, 8)
    again.rewound = False
    seq = sched.spawn(again, prompt, SamplingParams())
    _run(sched)
    assert again.rewound and again.tokens[id(seq)] == greedy


@pytest.fixture(scope="module")
def engine(bamba_gguf: Path) -> Iterator[er.Engine]:
    eng = er.load(bamba_gguf, n_ctx=512, threads=1, max_sequences=4)
    yield eng
    eng.close()


def test_generation_budgets_and_self_consistency_run(engine: er.Engine) -> None:
    assert_engine_features_run(engine)


def assert_engine_features_run(engine: er.Engine) -> None:
    """Plain generation, a thinking budget and self-consistency through the engine."""
    msgs = [{"role": "user", "content": "What is 12 + 7?"}]
    plain = engine.chat(msgs, max_tokens=12, temperature=0.0, ignore_eos=True, thinking=False).choices[0]
    assert plain.completion_tokens == 12 and plain.finish_reason == "length"

    capped = engine.chat(msgs, thinking=True, thinking_budget=6, max_tokens=24, temperature=0.0).choices[0]
    assert capped.thinking_stopped_by == "budget" and capped.reasoning_tokens == 6

    res = engine.complete(PROMPT, seed=3, max_tokens=12, self_consistency={"samples": 3})
    report = res.extra["self_consistency"]
    assert report["samples_used"] == 3 and report["samples_requested"] == 3


def test_prefix_cache_on_recurrent_state_extends_exactly(engine: er.Engine) -> None:
    """A hybrid slot holds exactly its tokens: a longer prompt continues from it, equal to a cold run."""
    head = "Question: what is 12 + 7?\n"
    more = head + "Answer: let me think step by step.\n"
    cold = engine.complete(more, max_tokens=8, temperature=0.0, cache_prompt=False)
    first = engine.complete(head, max_tokens=1, temperature=0.0)  # its one token is sampled, never decoded
    # The same prompt again: the state cannot stop two tokens short of what it holds, so nothing is reused.
    again = engine.complete(head, max_tokens=1, temperature=0.0)
    assert again.usage.cached_tokens == 0 and again.content == first.content
    hot = engine.complete(more, max_tokens=8, temperature=0.0)
    assert hot.usage.cached_tokens == again.usage.prompt_tokens  # the whole state of ``head`` is reused
    assert hot.content == cold.content
    assert engine.live_sequences == 0
