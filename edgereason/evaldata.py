"""Seeded arithmetic word problems with exact answers (benchmarks and evals; no downloads)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

Split = Literal["train", "dev", "test"]
_SPLIT_SALT = {"train": 0, "dev": 1_000_003, "test": 2_000_029}
_NAMES = ("Tom", "Ana", "Li", "Sam", "Maya", "Omar", "Eva", "Raj")
_ITEMS = ("apples", "books", "coins", "marbles", "stickers", "pencils")


@dataclass(frozen=True)
class ArithProblem:
    question: str
    answer: str  # an integer, as text
    kind: str


def _one(rng: random.Random) -> ArithProblem:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    kind = rng.choice(("add", "sub", "mul", "two_step", "share"))
    if kind == "add":
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        return ArithProblem(
            f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?",
            str(a + b),
            kind,
        )
    if kind == "sub":
        a = rng.randint(20, 90)
        b = rng.randint(1, a - 1)
        return ArithProblem(
            f"{name} had {a} {item} and gave away {b}. How many {item} are left?", str(a - b), kind
        )
    if kind == "mul":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        return ArithProblem(
            f"{name} buys {a} boxes with {b} {item} in each box. How many {item} is that in total?",
            str(a * b),
            kind,
        )
    if kind == "share":
        b = rng.randint(2, 9)
        a = b * rng.randint(2, 12)
        return ArithProblem(
            f"{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get?",
            str(a // b),
            kind,
        )
    a, b, c = rng.randint(5, 50), rng.randint(2, 30), rng.randint(1, 5)
    return ArithProblem(
        f"{name} has {a} {item}, buys {b} more, then loses {c}. How many {item} does {name} have?",
        str(a + b - c),
        kind,
    )


def arith_problems(n: int, seed: int = 0, split: Split = "test") -> list[ArithProblem]:
    """``n`` problems; the same (n, seed, split) always gives the same list, and splits never share a seed."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed * 7_919 + _SPLIT_SALT[split])
    return [_one(rng) for _ in range(n)]
