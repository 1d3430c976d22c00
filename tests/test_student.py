"""The packaged chain-of-thought student ("student-cot"; "student" is the code student since issue 23, see
test_distill_code.py): the embedded base plus its distilled LoRA adapter, applied by default."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

import edgereason as er
from edgereason.errors import InvalidRequestError
from edgereason.models import STUDENT_DIR, embedded_model_path, list_models
from edgereason.models import cot_student_preset as student_preset

QUESTION = "Tom has 12 apples. He buys 7 more, then gives away 5. How many apples does Tom have now?"


@pytest.fixture(scope="module")
def student():
    with er.load("student-cot", n_ctx=1024, max_sequences=4) as engine:
        yield engine


def test_preset_files_are_small_and_described() -> None:
    preset = student_preset()
    assert preset.default_adapter == "student" and "student" in preset.adapters
    for path in preset.adapters.values():
        assert path.stat().st_size <= 2 * 1024 * 1024  # committed to the repository
    manifest = json.loads((STUDENT_DIR / "manifest.json").read_text())
    assert manifest["recipe"] == "edgereason.convert.distill"
    assert set(preset.adapters) <= set(manifest["adapters"])
    # The manifest describes the files shipped, trained on the model shipped.
    for name, path in preset.adapters.items():
        assert manifest["adapters"][name]["file"] == path.name
        assert manifest["adapters"][name]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    base = embedded_model_path()
    assert manifest["base"]["file"] == base.name
    assert manifest["base"]["sha256"] == hashlib.sha256(base.read_bytes()).hexdigest()


def test_student_thinks_and_boxes_its_answer(student) -> None:
    assert student.name == "student-cot" and student.default_adapters == (("student", 1.0),)
    res = student.chat([{"role": "user", "content": QUESTION}], max_tokens=256, temperature=0)
    choice = res.choices[0]
    assert choice.reasoning.startswith("Start with")  # the distilled trace format, routed to reasoning
    assert choice.reasoning_tokens > 10
    boxed = re.search(r"\\boxed\{(\d+)\}", choice.content)
    assert boxed is not None and choice.answer == boxed.group(1)
    # The answer is where its own steps end (here 19 - 5 = 13: the 135M student's arithmetic slips,
    # its format does not).
    assert f"= {choice.answer}." in choice.reasoning


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
    assert {"student", "student-cot"} <= {entry.name for entry in list_models()}
