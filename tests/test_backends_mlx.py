"""The MLX backend (mlx[cpu] on Linux) on the embedded SmolLM2 converted with edgereason.convert."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlx.core", reason="needs the mlx extra: pip install 'edgereason[mlx]'")
pytest.importorskip("mlx_lm", reason="needs the mlx extra: pip install 'edgereason[mlx]'")
pytest.importorskip("torch", reason="the embedded model is converted with the convert extra")

import edgereason as er
from edgereason.backends.base import BatchItem, SamplingParams
from edgereason.backends.mlx import MlxBackend
from edgereason.errors import MissingExtraError, ModelLoadError, UnknownAdapterError

from .backend_checks import (
    PROMPTS,
    check_budget_caps_exactly,
    check_generates,
    check_greedy_deterministic,
    check_n_choices_share_the_prompt,
    check_self_consistency,
    check_stream_equals_chat,
    msgs,
)

pytestmark = pytest.mark.convert


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The embedded model as an MLX folder, plus two random mlx-lm adapters converted from PEFT."""
    from edgereason.convert import convert, embedded_gguf_path
    from edgereason.convert.adapters import peft_to_mlx_adapter
    from edgereason.convert.lora_export import hf_copy_of_gguf, make_random_peft_adapter

    root = tmp_path_factory.mktemp("mlx")
    hf = hf_copy_of_gguf(embedded_gguf_path(), root / "hf")
    model = convert(hf, root / "smol-mlx", to="mlx", quant="f32").path
    out = {"model": model, "hf": hf}
    for i, name in enumerate(("alpha", "beta")):
        peft = make_random_peft_adapter(
            hf, root / f"peft-{name}", target_modules=("q_proj", "v_proj"), seed=i
        )
        out[name] = peft_to_mlx_adapter(peft, hf, root / f"{name}-mlx")
    return out


@pytest.fixture(scope="module")
def engine(artefacts: dict[str, Path]) -> Iterator[er.Engine]:
    eng = er.load(
        artefacts["model"],
        n_ctx=512,
        max_sequences=6,
        adapters={"alpha": artefacts["alpha"], "beta": artefacts["beta"]},
    )
    assert isinstance(eng, er.Engine)
    yield eng
    eng.close()


def test_auto_picks_mlx_and_reads_the_folder(engine: er.Engine, artefacts: dict[str, Path]) -> None:
    assert er.pick_backend(artefacts["model"]) == "mlx"
    info = engine.info
    assert info.format == "mlx" and info.architecture == "llama" and info.quantization == "f32"
    assert info.chat_template and "<|im_start|>" in info.chat_template
    assert info.eos_token == "<|im_end|>" and not info.add_bos
    assert info.n_params > 100_000_000 and info.n_ctx_train == 8192
    caps = engine.backend.capabilities
    assert caps.fork and caps.rewind and caps.lora


def test_generates(engine: er.Engine) -> None:
    check_generates(engine)


def test_greedy_is_deterministic(engine: er.Engine) -> None:
    check_greedy_deterministic(engine)


def test_stream_equals_chat(engine: er.Engine) -> None:
    check_stream_equals_chat(engine)


def test_budgets_cap_exactly(engine: er.Engine) -> None:
    check_budget_caps_exactly(engine)


def test_self_consistency_n4(engine: er.Engine) -> None:
    check_self_consistency(engine)


def test_forked_choices_match_a_single_run(engine: er.Engine) -> None:
    check_n_choices_share_the_prompt(engine)


def test_adapters_switch_per_request_without_reloading(engine: er.Engine) -> None:
    kw = dict(max_tokens=5, temperature=0.0, logprobs=True)
    base = engine.chat(msgs(PROMPTS[0]), **kw)
    alpha = engine.chat(msgs(PROMPTS[0]), adapter="alpha", **kw)
    beta = engine.chat(msgs(PROMPTS[0]), adapter="beta", **kw)
    again = engine.chat(msgs(PROMPTS[0]), **kw)
    lp = lambda r: [t.logprob for t in r.choices[0].logprobs]  # noqa: E731
    assert lp(base) == lp(again)  # switching back restores the base exactly
    assert lp(alpha) != lp(base) and lp(beta) != lp(base) and lp(alpha) != lp(beta)
    # concurrent requests under different adapters each get their own
    streams = [engine.stream(msgs(PROMPTS[0]), adapter=a, **kw) for a in (None, "alpha", "beta")]
    assert [lp(s.wait()) for s in streams] == [lp(base), lp(alpha), lp(beta)]
    with pytest.raises(UnknownAdapterError):
        engine.chat(msgs(PROMPTS[0]), adapter="gamma", max_tokens=2)


def test_adapter_logits_match_mlx_lm(artefacts: dict[str, Path]) -> None:
    """Our swapped-in LoRA layers compute what mlx-lm's own adapter loading computes."""
    import mlx.core as mx
    from mlx_lm import load

    be = MlxBackend(artefacts["model"], n_ctx=256, max_sequences=1, adapters={"alpha": artefacts["alpha"]})
    try:
        ids = be.tokenize("<|im_start|>user\nHello there<|im_end|>\n")
        be.set_adapters((("alpha", 1.0),))
        ours = be.logits(be.decode([BatchItem(0, 0, ids, True)])[0])
    finally:
        be.close()
    model, _ = load(str(artefacts["model"]), adapter_path=str(artefacts["alpha"]))
    theirs = np.asarray(model(mx.array(ids)[None])[0, -1].astype(mx.float32))
    # The same MLX ops on the same weights: measured exactly 0; a bound well under any LoRA effect.
    diff = float(np.abs(ours - theirs).max())
    assert diff < 1e-5, diff


def test_cache_fork_and_rewind_are_exact(artefacts: dict[str, Path]) -> None:
    be = MlxBackend(artefacts["model"], n_ctx=256, max_sequences=3)
    try:
        ids = be.tokenize("<|im_start|>user\nCount: one two three<|im_end|>\n")
        h = be.decode([BatchItem(0, 0, ids, True)])
        ref = be.logits(h[0]).copy()
        be.copy_seq(0, 1)
        extra = be.tokenize(" four five")
        be.decode([BatchItem(1, len(ids), extra, True)])
        be.remove(1, len(ids) - 1)  # back to the prompt minus its last token
        again = be.logits(be.decode([BatchItem(1, len(ids) - 1, ids[-1:], True)])[0])
        assert np.array_equal(ref, again)
        with pytest.raises(RuntimeError, match="holds"):
            be.decode([BatchItem(2, 5, [1], True)])  # a slot must be decoded from its held position
        s = be.make_sampler(SamplingParams(temperature=0.8, top_k=20, top_p=0.9, min_p=0.05, seed=5))
        h = be.decode([BatchItem(0, len(ids), [12], True), BatchItem(1, len(ids), [12], True)])
        assert be.top_logprobs(h[0], 12, 3).top == be.top_logprobs(h[1], 12, 3).top
        assert 0 <= be.sample(s, h[0]) < be.info.n_vocab
    finally:
        be.close()


def test_bad_folders_and_missing_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelLoadError, match="no model format"):
        er.load(tmp_path)
    with pytest.raises(ModelLoadError, match="not an MLX model folder"):
        er.load(tmp_path, backend="mlx")
    monkeypatch.setitem(sys.modules, "mlx", None)
    monkeypatch.setitem(sys.modules, "mlx.core", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'edgereason\[mlx\]'"):
        MlxBackend(tmp_path)
