"""The packaged demo student: the embedded base plus its distilled LoRA adapter, applied by default."""

from __future__ import annotations

import json

import pytest

import edgereason as er
from edgereason.errors import InvalidRequestError
from edgereason.models import STUDENT_DIR, list_models, student_preset

QUESTION = "Tom has 12 apples. He buys 7 more, then gives away 5. How many apples does Tom have now?"


@pytest.fixture(scope="module")
def student():
    with er.load("student", n_ctx=1024, max_sequences=4) as engine:
        yield engine


def test_preset_files_are_small_and_described() -> None:
    preset = student_preset()
    assert preset.default_adapter == "student" and "student" in preset.adapters
    for path in preset.adapters.values():
        assert path.stat().st_size <= 2 * 1024 * 1024  # committed to the repository
    manifest_path = STUDENT_DIR / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        assert manifest["recipe"] == "edgereason.convert.distill"
        assert set(preset.adapters) <= set(manifest["adapters"])


def test_student_thinks_and_boxes_its_answer(student) -> None:
    assert student.name == "student" and student.default_adapters == (("student", 1.0),)
    res = student.chat([{"role": "user", "content": QUESTION}], max_tokens=256, temperature=0)
    choice = res.choices[0]
    assert choice.reasoning.startswith("Start with")  # the distilled trace format, routed to reasoning
    assert choice.reasoning_tokens > 10
    assert "\\boxed{" in choice.content and choice.answer is not None


def test_default_adapter_equals_naming_it_on_the_base(student) -> None:
    msgs = [{"role": "user", "content": QUESTION}]
    mine = student.chat(msgs, max_tokens=48, temperature=0)
    preset = student_preset()
    with er.load(
        "default", n_ctx=1024, max_sequences=2, adapters=preset.adapters, reasoning_format="deepseek-r1"
    ) as base:
        named = base.chat(msgs, max_tokens=48, temperature=0, adapter="student")
        plain = base.chat(msgs, max_tokens=48, temperature=0)
    assert named.choices[0].content == mine.choices[0].content
    assert named.choices[0].reasoning == mine.choices[0].reasoning
    assert (plain.choices[0].reasoning, plain.choices[0].content) != (
        mine.choices[0].reasoning,
        mine.choices[0].content,
    )


def test_student_adapter_cannot_be_unloaded(student) -> None:
    with pytest.raises(InvalidRequestError, match="part of the model"):
        student.unload_adapter("student")


def test_models_lists_the_student() -> None:
    assert "student" in [entry.name for entry in list_models()]
