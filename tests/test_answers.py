"""Table-driven tests for final-answer extraction, normalisation and comparison."""

from __future__ import annotations

import dataclasses
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from edgereason.answers import (
    AnswerFormat,
    Extracted,
    answer_key,
    answers_equal,
    extract_answer,
    extract_gold,
    last_reasoning_answer,
    normalize_answer,
)

GSM8K_OUTPUT = (
    "Janet's ducks lay 16 eggs per day. She eats 3 for breakfast and bakes muffins with 4.\n"
    "So she sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\n"
    "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer's market.\n"
    "#### 18"
)
MATH_OUTPUT = (
    "We have $\\frac{2}{4} = \\frac{1}{2}$, and after simplifying the expression we get\n"
    "$$x = \\boxed{\\frac{1}{2}}.$$"
)
R1_OUTPUT = (
    "<think>\nOkay, 12 apples cost $3 each, so 12 * 3 = 36. Wait, she buys 2 more: 14 * 3 = 42.\n"
    "So the answer is 42.\n</think>\n\nShe spends 14 \\times 3 = 42 dollars.\n\n"
    "**Final Answer**\n\\[\n\\boxed{42}\n\\]"
)

# (text, fmt, normalized, value, source)
EXTRACT_CASES: list[tuple[str, AnswerFormat, str, float | None, str]] = [
    # boxed, nested braces, last box wins
    (MATH_OUTPUT, "auto", "1/2", 0.5, "boxed"),
    ("The answer is $\\boxed{\\frac{1}{2}}$.", "auto", "1/2", 0.5, "boxed"),
    ("\\boxed{{3}}", "auto", "3", 3.0, "boxed"),
    ("First try: \\boxed{2}. Actually that is wrong, so \\boxed{5}.", "auto", "5", 5.0, "boxed"),
    ("\\boxed{5} and then an unbalanced \\boxed{6", "auto", "5", 5.0, "boxed"),
    ("\\fbox{9}", "auto", "9", 9.0, "boxed"),
    ("so the result is \\boxed 7", "auto", "7", 7.0, "boxed"),
    ("\\boxed{-\\dfrac{3}{4}}", "auto", "-3/4", -0.75, "boxed"),
    ("\\boxed{\\tfrac{6}{8}}", "auto", "3/4", 0.75, "boxed"),
    ("\\boxed{\\frac12}", "auto", "1/2", 0.5, "boxed"),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "auto", "\\frac{\\sqrt{3}}{2}", None, "boxed"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "auto", "(3,\\frac{\\pi}{2})", None, "boxed"),
    ("\\boxed{\\{1, 2\\}}", "auto", "\\{1,2\\}", None, "boxed"),
    ("\\boxed{x = 5}", "auto", "5", 5.0, "boxed"),
    ("\\boxed{y = 2x + 3}", "auto", "y=2x+3", None, "boxed"),
    ("\\boxed{30^\\circ}", "auto", "30", 30.0, "boxed"),
    ("\\boxed{45^{\\circ}}", "auto", "45", 45.0, "boxed"),
    ("\\boxed{18 \\text{ dollars}}", "auto", "18", 18.0, "boxed"),
    ("\\boxed{\\$18.00}", "auto", "18", 18.0, "boxed"),
    ("\\boxed{1,\\!234}", "auto", "1234", 1234.0, "boxed"),
    ("\\boxed{10\\%}", "auto", "10%", 10.0, "boxed"),
    ("\\boxed{+5}", "auto", "5", 5.0, "boxed"),
    ("\\boxed{\\text{(C)}}", "auto", "C", None, "boxed"),
    (R1_OUTPUT, "auto", "42", 42.0, "boxed"),
    # GSM8K "####"
    (GSM8K_OUTPUT, "auto", "18", 18.0, "gsm8k"),
    ("He has 1234 in total.\n#### 1,234", "auto", "1234", 1234.0, "gsm8k"),
    ("#### -7", "auto", "-7", -7.0, "gsm8k"),
    # "The answer is ..." and "Answer: ..."
    ("The answer is $18.", "auto", "18", 18.0, "answer_is"),
    ("So the final answer is 3.5.", "auto", "3.5", 3.5, "answer_is"),
    ("The answer is \u22127.", "auto", "-7", -7.0, "answer_is"),
    ("Answer: 12 apples", "auto", "12", 12.0, "answer_is"),
    ("**Answer:** 15", "auto", "15", 15.0, "answer_is"),
    ("The answer is: \n\n$$42$$", "auto", "42", 42.0, "answer_is"),
    ("The answer is 12.5\\%.", "auto", "12.5%", 12.5, "answer_is"),
    ("The answer is 5 cm, since the sides are equal.", "auto", "5", 5.0, "answer_is"),
    ("The answer is: Janet makes $18 every day at the market.", "auto", "18", 18.0, "answer_is"),
    ("The answer is Yes.", "auto", "yes", None, "answer_is"),
    ("Final Answer: The final answer is $7$. I hope it is correct.", "auto", "7", 7.0, "answer_is"),
    # "Final Answer" headers
    ("**Final Answer**\n\n42", "auto", "42", 42.0, "final_answer"),
    ("## Final Answer:\n0.25", "auto", "0.25", 0.25, "final_answer"),
    # choices
    ("The answer is (B).", "auto", "B", None, "choice"),
    ("The correct answer is C: 42", "auto", "C", None, "choice"),
    ("Comparing all of them, I pick Option D because it is largest.", "auto", "D", None, "choice"),
    ("Only (A) is correct here.", "auto", "A", None, "choice"),
    ("I think it is (a) or maybe (c).", "choice", "C", None, "choice"),
    ("The answer is: she has 18 apples left (B)", "choice", "B", None, "choice"),
    ("B", "choice", "B", None, "choice"),
    # last-number fallback (lm-eval flexible-extract style)
    ("She earns $1,200.50 per month.", "auto", "1200.5", 1200.5, "last_number"),
    ("In total 3 + 4 = 7", "auto", "7", 7.0, "last_number"),
    ("About 50% of them left.", "auto", "50%", 50.0, "last_number"),
    ("The sequence is 1,2,3", "auto", "3", 3.0, "last_number"),
    ("a loss of -4 points", "auto", "-4", -4.0, "last_number"),
    ("To find the answer: we first count the pens.\nShe has 7 left.", "auto", "7", 7.0, "last_number"),
    # forced formats
    ("The answer is: she has 18 apples left (B)", "number", "18", 18.0, "answer_is"),
    ("The total is 7.\n\\boxed{n}", "number", "7", 7.0, "last_number"),
    ("The answer is 4 but \\boxed{5}", "boxed", "5", 5.0, "boxed"),
    ("The answer is The Eiffel   Tower.", "text", "the eiffel tower", None, "answer_is"),
    ("Paris\n", "text", "paris", None, "text"),
    # only the text after </think> holds the answer
    ("<think>the answer is 5</think>The answer is 6", "auto", "6", 6.0, "answer_is"),
]


@pytest.mark.parametrize(("text", "fmt", "normalized", "value", "source"), EXTRACT_CASES)
def test_extract_answer(
    text: str, fmt: AnswerFormat, normalized: str, value: float | None, source: str
) -> None:
    got = extract_answer(text, fmt)
    assert got is not None
    assert (got.normalized, got.source) == (normalized, source)
    assert got.value == (pytest.approx(value) if value is not None else None)


ABSTAIN_CASES: list[tuple[str, AnswerFormat]] = [
    ("", "auto"),
    ("   \n\t ", "auto"),
    ("no digits and no answer here", "auto"),
    ("{{{{ }", "auto"),
    ("\\boxed{", "auto"),
    ("\\boxed{}", "boxed"),
    ("The answer is 42", "boxed"),
    ("The total is 42", "choice"),
    ("<think>the answer is 5</think>", "auto"),
    ("A train leaves the station.", "choice"),
    ("$$", "auto"),
    ("...,,,", "number"),
    ("The answer is the Eiffel Tower.", "auto"),
]


@pytest.mark.parametrize(("text", "fmt"), ABSTAIN_CASES)
def test_extract_answer_abstains(text: str, fmt: AnswerFormat) -> None:
    assert extract_answer(text, fmt) is None


# (raw, normalized, value)
NORMALIZE_CASES: list[tuple[str, str, float | None]] = [
    ("42", "42", 42.0),
    (" 42. ", "42", 42.0),
    ("42.0", "42", 42.0),
    ("0.50", "0.5", 0.5),
    (".5", "0.5", 0.5),
    ("-0", "0", 0.0),
    ("\u22123", "-3", -3.0),
    ("1,234,567", "1234567", 1234567.0),
    ("1,2", "1,2", None),
    ("\\$1{,}000", "1000", 1000.0),
    ("\\frac{2}{4}", "1/2", 0.5),
    ("\\frac{-1}{2}", "-1/2", -0.5),
    ("6/3", "2", 2.0),
    ("1/0", "1/0", None),
    ("1e3", "1000", 1000.0),
    ("50\\%", "50%", 50.0),
    ("50 percent", "50%", 50.0),
    ("5 m", "5", 5.0),
    ("5 x", "5x", None),
    ("3 \\pi", "3\\pi", None),
    ("\\text{Yes}", "yes", None),
    ("(b)", "B", None),
    ("Option E", "E", None),
    ("\\left[ 1, 2 \\right)", "[1,2)", None),
    ("", "", None),
]


@pytest.mark.parametrize(("raw", "normalized", "value"), NORMALIZE_CASES)
def test_normalize_answer(raw: str, normalized: str, value: float | None) -> None:
    assert normalize_answer(raw) == (normalized, value)


# (a, b, equal)
EQUAL_CASES: list[tuple[str, str, bool]] = [
    ("\\frac{1}{2}", "0.5", True),
    ("1/2", "\\dfrac{1}{2}", True),
    ("\\frac{1}{3}", "0.33333", True),
    ("\\frac{1}{3}", "0.33", False),
    ("100000", "100001", True),  # within rel_tol 1e-4
    ("1000", "1001", False),
    ("50%", "0.5", True),
    ("0.5", "50\\%", True),
    ("50%", "50", True),
    ("50", "0.5", False),  # x100 is only accepted when a "%" is written
    ("$1,234", "1234.00", True),
    ("-3", "3", False),
    ("(B)", "B", True),
    ("B", "C", False),
    ("\\text{Yes}", "yes", True),
    ("(1, 2)", "(1,2)", True),
    ("", "0", False),
]


@pytest.mark.parametrize(("a", "b", "equal"), EQUAL_CASES)
def test_answers_equal(a: str, b: str, equal: bool) -> None:
    assert answers_equal(a, b) is equal
    assert answers_equal(b, a) is equal


def test_answers_equal_rel_tol_and_extracted() -> None:
    assert not answers_equal("100000", "100001", rel_tol=1e-9)
    e = extract_answer(MATH_OUTPUT)
    assert e is not None
    assert answers_equal(e, "0.5")
    assert answers_equal(e, extract_gold("Hence $\\boxed{\\frac{2}{4}}$.") or "")


# (a, b, same key)
KEY_CASES: list[tuple[str, str, bool]] = [
    ("\\boxed{\\frac{1}{2}}", "The answer is 0.5.", True),
    ("\\boxed{0.30000000000000004}", "\\boxed{0.3}", True),
    ("#### 1,234", "The answer is 1234.00", True),
    ("\\boxed{50\\%}", "The answer is 50.", True),
    ("The answer is (C).", "Option C is best.", True),
    ("\\boxed{3}", "\\boxed{-3}", False),
    ("\\boxed{\\sqrt{2}}", "\\boxed{\\sqrt{3}}", False),
]


@pytest.mark.parametrize(("a", "b", "same"), KEY_CASES)
def test_answer_key(a: str, b: str, same: bool) -> None:
    ea, eb = extract_answer(a), extract_answer(b)
    assert ea is not None and eb is not None
    assert (answer_key(ea) == answer_key(eb)) is same


def test_answer_key_prints_integers_as_ints() -> None:
    e = extract_answer("The answer is 42.0")
    assert e is not None and answer_key(e) == "42"


# (reasoning, normalized, source)
REASONING_CASES: list[tuple[str, str, str]] = [
    (R1_OUTPUT, "42", "answer_is"),
    ("<think>Each box holds 4, so 3 * 4 = 12. Then 12 + 5 = 17.</think>The answer is 17.", "17", "equation"),
    ("First I get \\boxed{6}. Hmm, no: recomputing, the answer is 8.", "8", "answer_is"),
    ("The answer is 8? Let me check again... it is \\boxed{9}.", "9", "boxed"),
    ("Let me compute 3 + 4 = 7, so x = \\frac{1}{2}", "1/2", "equation"),
    ("Hmm, I think it's about 12 or maybe 13", "13", "last_number"),
]


@pytest.mark.parametrize(("reasoning", "normalized", "source"), REASONING_CASES)
def test_last_reasoning_answer(reasoning: str, normalized: str, source: str) -> None:
    got = last_reasoning_answer(reasoning)
    assert got is not None
    assert (got.normalized, got.source) == (normalized, source)


def test_last_reasoning_answer_flags_think_answer_mismatch() -> None:
    output = "<think>So 6 * 7 = 42. The answer is 42.</think>\nThe answer is \\boxed{24}."
    thought, said = last_reasoning_answer(output), extract_answer(output)
    assert thought is not None and said is not None
    assert not answers_equal(thought, said)
    assert last_reasoning_answer("<think>   </think> 42") is None


# (gold, normalized, source)
GOLD_CASES: list[tuple[str, str, str]] = [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "72", "gsm8k"),
    ("#### 1,000", "1000", "gsm8k"),
    ("Thus the probability is $\\boxed{\\dfrac{3}{8}}$.", "3/8", "boxed"),
    ("The roots are $\\boxed{2, -3}$.", "2,-3", "boxed"),
    ("42", "42", "text"),
    ("\\frac{\\pi}{4}", "\\frac{\\pi}{4}", "text"),
]


@pytest.mark.parametrize(("gold", "normalized", "source"), GOLD_CASES)
def test_extract_gold(gold: str, normalized: str, source: str) -> None:
    got = extract_gold(gold)
    assert got is not None
    assert (got.normalized, got.source) == (normalized, source)
    assert extract_gold("  ") is None


def test_extracted_is_frozen_and_hashable() -> None:
    e = Extracted(raw="42", normalized="42", value=42.0, source="boxed")
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.value = 1.0  # type: ignore[misc]
    assert len({e, Extracted("42", "42", 42.0, "boxed")}) == 1


LONG = 200_000
JUNK_CASES: dict[str, str] = {
    "open_braces": "{" * LONG,
    "close_braces": "}" * LONG,
    "unclosed_boxes": "\\boxed{" * (LONG // 7),
    "many_boxes": "\\boxed{1}" * (LONG // 9),
    "answer_is_spam": "the answer is " * (LONG // 14),
    "final_answer_spam": "Final Answer\n" * (LONG // 13),
    "comma_list": "1," * (LONG // 2),
    "digits": "9" * LONG,
    "percent_digits": "5" * LONG + "%",
    "decimal_digits": "1" * (LONG // 2) + "." + "1" * (LONG // 2) + " apples",
    "dots": "." * LONG,
    "hashes": "#" * LONG,
    "text_wrappers": "\\text{" * (LONG // 6),
    "equations": "= 1 " * (LONG // 4),
    "whitespace": " 1" + " " * LONG + "x",
    "long_box": "\\boxed{" + "x " * (LONG // 2) + "}",
}


@pytest.mark.parametrize("junk", list(JUNK_CASES.values()), ids=list(JUNK_CASES))
def test_long_junk_is_fast_and_safe(junk: str) -> None:
    start = time.perf_counter()
    for fmt in ("auto", "number", "boxed", "choice", "text"):
        extract_answer(junk, fmt)  # type: ignore[arg-type]
    last_reasoning_answer(junk)
    extract_gold(junk)
    normalize_answer(junk)
    answers_equal(junk, junk + "1")
    # A quadratic regex takes minutes on 200k characters; linear scans take well under a second.
    assert time.perf_counter() - start < 10.0


# Pairs only math-verify decides (neither side is a plain number).
SYMBOLIC_PAIRS = [
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("\\sqrt{2}", "\\sqrt{3}", False),
]


def test_symbolic_equivalence_with_math_verify() -> None:
    # math-verify is a dev dependency: without it this fails rather than skipping.
    for a, b, equal in SYMBOLIC_PAIRS:
        assert answers_equal(a, b) is equal, (a, b)


def test_symbolic_equivalence_off_the_main_thread() -> None:
    # The server's and eval's workers are threads; math-verify's signal timeouts raise there, which
    # used to make every symbolic match False.
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda p: answers_equal(p[0], p[1]), SYMBOLIC_PAIRS))
    assert got == [equal for _, _, equal in SYMBOLIC_PAIRS]


def test_symbolic_check_that_overruns_is_cut_off_the_main_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    # 9^(9^(9^9)) keeps sympy busy until math-verify's own timeout; with a shorter wait than that the
    # helper process is killed, the answer is False, and the next call starts a new helper.
    from edgereason import answers

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(answers_equal, "x^2+2x+1", "(x+1)^2").result() is True  # helper started
        helper = answers._symbolic_worker()._proc
        monkeypatch.setattr(answers, "_SYMBOLIC_WAIT_S", 1)
        start = time.perf_counter()
        assert pool.submit(answers_equal, "9^{9^{9^{9}}}", "3").result() is False
        assert time.perf_counter() - start < answers._SYMBOLIC_TIMEOUT_S
        assert helper.exitcode == -signal.SIGKILL
        monkeypatch.undo()
        assert pool.submit(answers_equal, "x^2+2x+1", "(x+1)^2").result() is True
