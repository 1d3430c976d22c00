"""The ONNX backend (onnxruntime-genai) on the embedded SmolLM2 converted with edgereason.convert.

ONNX generators cannot copy their state, so this backend declares ``fork = False``: every fork here
(n > 1, self-consistency samples, budget probes) goes through the scheduler's re-prefill path.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime_genai", reason="needs the onnx extra: pip install 'edgereason[onnx]'")
pytest.importorskip("torch", reason="the embedded model is converted with the convert extra")

import edgereason as er
from edgereason.backends.base import BatchItem
from edgereason.backends.onnx import OnnxBackend
from edgereason.errors import InvalidRequestError, MissingExtraError, ModelLoadError

from .backend_checks import (
    PROMPTS,
    check_budget_caps_exactly,
    check_generates,
    check_greedy_deterministic,
    check_n_choices_share_the_prompt,
    check_self_consistency,
    check_stream_equals_chat,
    convert_embedded,
    msgs,
)

pytestmark = pytest.mark.convert


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_embedded(tmp_path_factory.mktemp("onnx") / "smol-onnx", "onnx", "fp32")


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Iterator[er.Engine]:
    eng = er.load(model_dir, n_ctx=512, max_sequences=6, threads=2)
    assert isinstance(eng, er.Engine)
    yield eng
    eng.close()


def test_auto_picks_onnx_and_reads_the_folder(engine: er.Engine, model_dir: Path) -> None:
    assert er.pick_backend(model_dir) == "onnx"
    info = engine.info
    assert info.format == "onnx" and info.architecture == "llama" and info.quantization == "unquantized"
    assert info.chat_template and "<|im_start|>" in info.chat_template
    assert info.eos_token == "<|im_end|>" and not info.add_bos and info.n_ctx_train == 8192
    caps = engine.backend.capabilities
    assert not caps.fork and caps.rewind and not caps.lora


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


def test_re_prefilled_choices_match_a_single_run(engine: er.Engine) -> None:
    check_n_choices_share_the_prompt(engine)


def test_early_exit_probes_on_re_prefilled_forks(engine: er.Engine) -> None:
    """Budget probes fork the main sequence mid-thought; without fork they re-prefill and still leave it intact."""
    base = dict(thinking=True, max_tokens=24, temperature=0.0)
    plain = engine.chat(msgs(PROMPTS[1]), **base).choices[0]
    probed = engine.chat(
        msgs(PROMPTS[1]),
        thinking_budget="auto",
        early_exit_threshold=1.0,  # never met: every probe is discarded
        transition_markers=("\n", " ", "Wait"),
        early_exit_probe_tokens=3,
        loop_guard=False,
        **base,
    ).choices[0]
    assert probed.extra["early_exit_probe_count"] > 0
    assert (probed.reasoning, probed.content) == (plain.reasoning, plain.content)
    assert engine.live_sequences == 0


def test_adapters_are_refused_clearly(engine: er.Engine, model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="does not support LoRA"):
        engine.load_adapter("x", tmp_path)
    with pytest.raises(ModelLoadError, match="cannot switch LoRA"):
        OnnxBackend(model_dir, adapters={"x": tmp_path})


def test_rewind_is_exact(model_dir: Path) -> None:
    be = OnnxBackend(model_dir, n_ctx=256, max_sequences=2, threads=2)
    try:
        ids = be.tokenize("<|im_start|>user\nCount: one two three<|im_end|>\n")
        ref = be.top_logprobs(be.decode([BatchItem(0, 0, ids, True)])[0], 0, 5)
        be.decode([BatchItem(0, len(ids), be.tokenize(" four five"), True)])
        be.remove(0, len(ids) - 1)
        again = be.top_logprobs(be.decode([BatchItem(0, len(ids) - 1, ids[-1:], True)])[0], 0, 5)
        assert np.allclose([p for _, p in ref.top], [p for _, p in again.top], atol=1e-4)
        assert [t for t, _ in ref.top] == [t for t, _ in again.top]
        with pytest.raises(RuntimeError, match="cannot copy"):
            be.copy_seq(0, 1)
    finally:
        be.close()


def test_missing_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "genai_config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'edgereason\[onnx\]'"):
        er.load(tmp_path)
