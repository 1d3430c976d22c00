"""arith-ood shares no phrasing, names or items with the training generator, and its answers are right."""

from __future__ import annotations

import re

import pytest

from convert import writers
from convert.distill import knowledge_text, teacher_trace
from edgereason import data_ood, evaldata
from edgereason.errors import InvalidRequestError
from edgereason.eval.data import load_items

OOD = data_ood.ood_problems(300)
NUMBER = re.compile(r"\d+")
# Words for operands the stories write out (the rest are digits).
WORD_OPERANDS = {
    ("mul", 2): "double",
    ("mul", 3): "triple",
    ("mul", 4): "four times",
    **{("div", d): w for d, w in {2: "half", 3: "third", 4: "quarter", 5: "fifth", 6: "sixth"}.items()},
    **{("div", d): w for d, w in {7: "seventh", 8: "eighth", 9: "ninth"}.items()},
}


def _blank(text: str, names: tuple[str, ...], items: tuple[str, ...]) -> str:
    text = NUMBER.sub("#", text.lower())
    for word, blank in [(n.lower(), "NAME") for n in names] + [(i.lower(), "ITEM") for i in items]:
        text = re.sub(rf"\b{re.escape(word)}\b", blank, text)
    return text


def _trigrams(text: str) -> set[tuple[str, ...]]:
    """Three-word phrases within each sentence."""
    grams = set()
    for sentence in re.split(r"[.?!\n]+", text):
        words = re.findall(r"[a-z#']+|NAME|ITEM", sentence)
        grams |= {tuple(words[i : i + 3]) for i in range(len(words) - 2)}
    return grams


WRITTEN = writers.written_problems(2000)  # the code student's other training stories


def _training_texts() -> list[str]:
    """Every question arith writes (all splits, several seeds) and the distilled student's traces."""
    problems = [
        p for split in evaldata.SPLITS for seed in range(3) for p in evaldata.arith_problems(400, seed, split)
    ]
    return [p.question for p in problems] + [teacher_trace(p) + knowledge_text(p) for p in problems[:200]]


def _written_grams() -> set[tuple[str, ...]]:
    """The training writers' questions and code, blanked with their own names and items."""
    grams: set[tuple[str, ...]] = set()
    for p in WRITTEN:
        grams |= _trigrams(_blank(p.question + "\n" + p.code, writers.NAMES, writers.ITEMS))
    return grams


def test_no_ood_question_shares_a_three_word_phrase_with_training() -> None:
    training: set[tuple[str, ...]] = set()
    for text in _training_texts():
        training |= _trigrams(_blank(text, evaldata._NAMES, evaldata._ITEMS))
    assert ("how", "many", "ITEM") in training and ("then", "NAME", "buys") in training  # the check sees them
    ood_items = data_ood.GOODS + data_ood.TICKETS
    written = _written_grams()
    assert ("how", "big", "is") in written and ("NAME", "keeps", "#") in written  # the check sees them
    shared = {
        gram: p.question
        for p in OOD
        for gram in _trigrams(_blank(p.question, data_ood.NAMES, ood_items)) & (training | written)
    }
    assert shared == {}


def test_no_template_repeats_a_training_template() -> None:
    def templates(texts: list[str], names: tuple[str, ...], items: tuple[str, ...]) -> set[str]:
        return {
            s.strip() for t in texts for s in re.split(r"(?<=[.?])\s+", _blank(t, names, items)) if s.strip()
        }

    training = templates(
        [p.question for p in evaldata.arith_problems(2000)], evaldata._NAMES, evaldata._ITEMS
    ) | templates([p.question for p in WRITTEN], writers.NAMES, writers.ITEMS)
    ood = templates([p.question for p in OOD], data_ood.NAMES, data_ood.GOODS + data_ood.TICKETS)
    assert len(ood) > 60  # many distinct sentence templates
    assert training & ood == set()


def test_names_items_and_units_are_disjoint_from_training() -> None:
    ood_words = {w.lower() for w in data_ood.NAMES + data_ood.GOODS + data_ood.TICKETS + data_ood.UNITS}
    train_words = {w.lower() for w in evaldata._NAMES + evaldata._ITEMS + writers.NAMES + writers.ITEMS}
    train_words |= set(writers.CURRENCIES)
    assert ood_words & train_words == set()
    for p in OOD:
        words = set(re.findall(r"[a-z]+", p.question.lower()))
        assert words & train_words == set(), p.question
    for question in [p.question for p in evaldata.arith_problems(1000)] + [p.question for p in WRITTEN]:
        words = set(re.findall(r"[a-z]+", question.lower()))
        assert not any(w in words for w in ood_words if " " not in w), question


def _fold(start: int, ops: tuple[tuple[str, int], ...]) -> int:
    """An independent evaluator of the stored operations (not ``data_ood.solve``)."""
    table = {
        "add": lambda v, b: v + b,
        "sub": lambda v, b: v - b,
        "mul": lambda v, b: v * b,
        "div": lambda v, b: v // b,
        "mod": lambda v, b: v % b,
        "rsub": lambda v, b: b - v,
    }
    value = start
    for name, b in ops:
        if name == "div":
            assert value % b == 0, "a division that is not exact"
        value = table[name](value, b)
    return value


def _mismatch(p: data_ood.OodProblem) -> str | None:
    """Why ``p`` is wrong, or None: its answer must follow from its operations, and its text must state
    the start and every operand in order (a few operands as words)."""
    if not 1 <= p.steps == len(p.ops) <= 4:
        return f"{p.steps} steps, {len(p.ops)} operations"
    value = _fold(p.start, p.ops)
    if value < 0 or p.answer != str(value):
        return f"answer {p.answer}, operations give {value}"
    numbers = [int(n) for n in NUMBER.findall(p.question)]
    expected = [p.start] + [b for _, b in p.ops]
    words = [None] + [WORD_OPERANDS.get(op) for op in p.ops]

    def matches(slot: int, position: int) -> bool:  # each operand as the next number, or as its word
        if slot == len(expected):
            return position == len(numbers)
        as_digits = (
            position < len(numbers)
            and numbers[position] == expected[slot]
            and matches(slot + 1, position + 1)
        )
        word = words[slot]
        return as_digits or (word is not None and word in p.question and matches(slot + 1, position))

    return None if matches(0, 0) else f"numbers {numbers} do not match {expected}"


def test_every_answer_follows_from_its_question() -> None:
    wrong = {p.question: why for p in OOD if (why := _mismatch(p)) is not None}
    assert wrong == {}
    broken = data_ood.OodProblem(**{**OOD[0].__dict__, "answer": str(int(OOD[0].answer) + 1)})
    assert _mismatch(broken) is not None  # the check can fail


def test_spot_checked_by_hand() -> None:
    # Worked out from the text alone.
    by_question = {p.question: p.answer for p in OOD}
    q = (
        "In a small shop, paintbrushes cost 3 dollars apiece. Keiko picks up 7 of them. The order is "
        "repeated for 2 departments in all. Keiko hands over a 50-dollar note. Work out the change owed, in dollars."
    )
    assert by_question[q] == "8"  # 50 - 3 * 7 * 2
    q = (
        "A pump run by Dmitri moves 4 litres of water every minute. It keeps this pace for 7 minutes. "
        "That amount is shared equally by 4 tanks. Give the result in litres for a single part."
    )
    assert by_question[q] == "7"  # 4 * 7 / 4


def test_varied_and_deterministic() -> None:
    assert {p.story for p in OOD} == {"stock", "shopping", "rate", "compare"}
    assert {p.steps for p in OOD} == {1, 2, 3, 4}
    assert {op for p in OOD for op, _ in p.ops} == {"add", "sub", "mul", "div", "mod", "rsub"}
    assert len({p.question for p in OOD}) == 300
    assert data_ood.ood_problems(300) == OOD
    assert data_ood.ood_problems(50) == OOD[:50]
    assert data_ood.ood_problems(50, seed=1) != OOD[:50]


def test_registered_as_an_eval_data_set() -> None:
    items = load_items("arith-ood")
    assert len(items) == 300
    assert [(i.question, i.gold) for i in items] == [(p.question, p.answer) for p in OOD]
    assert items[0].id == "arith-ood-0"
    assert len(load_items("arith-ood", limit=20)) == 20
    with pytest.raises(InvalidRequestError, match="only a test split"):
        load_items("arith-ood", split="train")
    arith = {i.question for i in load_items("arith")}
    assert arith & {i.question for i in items} == set()
