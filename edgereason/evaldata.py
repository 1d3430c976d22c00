"""Seeded multi-step arithmetic word problems with exact answers (evals, benchmarks, distillation).

Each problem starts from a quantity and applies two to four operations (add, subtract, multiply);
``difficulty`` follows the number of steps. A problem's split is a function of its text (a hash
bucket), so train, dev and test never share a question, whatever the seeds.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

Split = Literal["train", "dev", "test"]
SPLITS: tuple[Split, ...] = ("train", "dev", "test")
MIN_STEPS, MAX_STEPS = 2, 4
DIFFICULTY = {2: "easy", 3: "medium", 4: "hard"}
_SPLIT_SALT = {"train": 0, "dev": 1_000_003, "test": 2_000_029}
# Percent of the hash space per split (train 80, dev 10, test 10).
_SPLIT_BUCKETS: tuple[tuple[Split, int], ...] = (("train", 80), ("dev", 90), ("test", 100))
_NAMES = ("Tom", "Ana", "Li", "Sam", "Maya", "Omar", "Eva", "Raj")
_ITEMS = ("apples", "books", "coins", "marbles", "stickers", "pencils")
_MAX_MUL_VALUE = 60  # multiply only small totals, so answers stay below a few hundred
_OP_SYMBOL = {"add": "+", "sub": "-", "mul": "*"}


@dataclass(frozen=True)
class ArithProblem:
    question: str
    answer: str  # an integer, as text
    kind: str  # the operations in order, e.g. "add-sub-mul"
    steps: int = MIN_STEPS
    difficulty: str = DIFFICULTY[MIN_STEPS]
    working: tuple[str, ...] = ()  # one equation per step: "12 + 7 = 19"


def split_of(question: str) -> Split:
    """The split a question belongs to; fixed by its text alone."""
    bucket = int.from_bytes(hashlib.blake2b(question.encode(), digest_size=8).digest(), "big") % 100
    return next(split for split, upper in _SPLIT_BUCKETS if bucket < upper)


def _then(first: bool) -> str:
    return "" if first else "Then "


def _add_sentence(rng: random.Random, name: str, item: str, b: int, first: bool) -> str:
    t = _then(first)
    return rng.choice(
        (
            f"{t}{name} buys {b} more {item}.",
            f"{t}{name} finds {b} more {item}.",
            f"{t}{'a' if t else 'A'} friend gives {name} {b} more {item}.",
        )
    )


def _sub_sentence(rng: random.Random, name: str, item: str, b: int, first: bool) -> str:
    t = _then(first)
    return rng.choice(
        (
            f"{t}{name} gives away {b} {item}.",
            f"{t}{name} loses {b} {item}.",
            f"{t}{name} sells {b} {item}.",
        )
    )


def _mul_sentence(rng: random.Random, name: str, item: str, k: int, first: bool) -> str:
    t = _then(first)
    verb, times = {2: ("doubles", "twice"), 3: ("triples", "three times")}[k]
    return rng.choice(
        (
            f"{t}{'the' if t else 'The'} number of {item} {name} has {verb}.",
            f"{t}{name} ends up with {times} as many {item} as before.",
        )
    )


_Step = Callable[[random.Random, str, str, int, bool], str]
_SENTENCES: dict[str, _Step] = {"add": _add_sentence, "sub": _sub_sentence, "mul": _mul_sentence}


def _pick_op(rng: random.Random, value: int) -> tuple[str, int, int]:
    """(op, operand, new value) allowed at the current value."""
    ops = ["add"] + (["sub"] if value >= 3 else []) + (["mul"] if value <= _MAX_MUL_VALUE else [])
    op = rng.choice(ops)
    if op == "add":
        b = rng.randint(2, 30)
        return op, b, value + b
    if op == "sub":
        b = rng.randint(1, value - 1)
        return op, b, value - b
    k = rng.choice((2, 3))
    return op, k, value * k


def _one(rng: random.Random) -> ArithProblem:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    steps = rng.randint(MIN_STEPS, MAX_STEPS)
    value = rng.randint(3, 40)
    sentences = [f"{name} has {value} {item}."]
    working: list[str] = []
    ops: list[str] = []
    for i in range(steps):
        op, operand, new = _pick_op(rng, value)
        sentences.append(_SENTENCES[op](rng, name, item, operand, i == 0))
        working.append(f"{value} {_OP_SYMBOL[op]} {operand} = {new}")
        ops.append(op)
        value = new
    sentences.append(f"How many {item} does {name} have now?")
    return ArithProblem(
        question=" ".join(sentences),
        answer=str(value),
        kind="-".join(ops),
        steps=steps,
        difficulty=DIFFICULTY[steps],
        working=tuple(working),
    )


def arith_problems(n: int, seed: int = 0, split: Split = "test") -> list[ArithProblem]:
    """``n`` distinct problems of ``split``; the same (n, seed, split) always gives the same list.

    A longer list with the same seed and split starts with the shorter one.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if split not in _SPLIT_SALT:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    rng = random.Random(seed * 7_919 + _SPLIT_SALT[split])
    out: list[ArithProblem] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 10_000:  # never reached: the problem space is far larger
            raise RuntimeError(f"could not draw {n} distinct {split} problems")
        p = _one(rng)
        if p.question in seen or split_of(p.question) != split:
            continue
        seen.add(p.question)
        out.append(p)
    return out


_BLANKS = (
    (re.compile(r"\d+"), "#"),
    (re.compile(r"\b(?:" + "|".join(_NAMES) + r")\b"), "NAME"),
    (re.compile(r"\b(?:" + "|".join(_ITEMS) + r")\b"), "ITEM"),
)


def question_template(question: str) -> str:
    """The question with its numbers, name and item blanked: the generator's sentences, in order. Two
    questions with one template differ only in the values the generator drew."""
    for pattern, blank in _BLANKS:
        question = pattern.sub(blank, question)
    return question


def training_draws(per_role: int, roles: Sequence[str], seed: int = 0) -> dict[str, list[ArithProblem]]:
    """The train-split problems each role was trained on, as ``convert.distill`` draws them: role ``i``
    takes problems ``i * per_role`` to ``(i + 1) * per_role`` of one seeded draw."""
    draw = arith_problems(per_role * len(roles), seed=seed, split="train")
    return {role: draw[i * per_role : (i + 1) * per_role] for i, role in enumerate(roles)}
