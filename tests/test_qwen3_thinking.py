"""A real thinking template end to end: tiny random Qwen3 with the real tokenizer, converted to GGUF."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import edgereason as er
from edgereason.chat.reasoning import ReasoningFormat

pytest.importorskip("torch")
pytestmark = pytest.mark.convert

Q = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(scope="module")
def qwen3_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[er.Engine]:
    from edgereason.convert.gguf_export import hf_to_gguf
    from edgereason.convert.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("qwen3")
    hf = make_tiny_checkpoint("qwen3", root / "hf")
    gguf = hf_to_gguf(hf, root / "tiny-qwen3.gguf", "f32")
    eng = er.load(gguf, n_ctx=512, max_sequences=4)
    yield eng
    eng.close()


def test_detects_qwen3_format(qwen3_engine: er.Engine) -> None:
    assert qwen3_engine.reasoning_format is ReasoningFormat.QWEN3
    assert qwen3_engine.info.has_think_token
    assert qwen3_engine.info.architecture == "qwen3"


def test_enable_thinking_rendered_both_ways(qwen3_engine: er.Engine) -> None:
    off = qwen3_engine.render(Q, thinking=False)
    assert off.text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") and off.thinking_disabled
    auto = qwen3_engine.render(Q, thinking="auto")
    assert auto.text.endswith("<|im_start|>assistant\n") and auto.may_open and not auto.starts_in_reasoning
    on = qwen3_engine.render(Q, thinking=True)
    assert on.text.endswith("<think>\n") and on.starts_in_reasoning


def test_think_output_routed_to_reasoning(qwen3_engine: er.Engine) -> None:
    # A random model never closes its think block: everything it writes must land in reasoning.
    res = qwen3_engine.chat(Q, max_tokens=12, temperature=0.0, thinking=True, ignore_eos=True)
    assert res.content == "" and res.reasoning
    assert res.usage.reasoning_tokens == res.usage.completion_tokens == 12
    off = qwen3_engine.chat(Q, max_tokens=12, temperature=0.0, thinking=False, ignore_eos=True)
    assert off.reasoning == "" and off.usage.reasoning_tokens == 0 and off.thinking_stopped_by == "disabled"


def test_model_written_think_tags_split(qwen3_engine: er.Engine) -> None:
    # A raw prompt whose continuation starts inside <think>: the splitter follows the prompt's state.
    prompt = qwen3_engine.render(Q, thinking="auto").text + "<think>\nlet me see"
    res = qwen3_engine.complete(prompt, max_tokens=8, temperature=0.0, ignore_eos=True)
    assert res.content == "" and res.usage.reasoning_tokens == 8
