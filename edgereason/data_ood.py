"""``arith-ood``: arithmetic word problems written independently of the ``arith`` generator.

``evaldata.arith_problems`` (what the students are trained on) tells one person's count of one item
changing step by step. These stories share none of its sentence templates, names, items or operation
phrasings: prices and change from a payment, rates over time, comparisons between people, even
sharing with remainders, several sentences per story, one to four steps, whole-number answers. They
are a test set only: never train or tune on them.

Every problem stores its start value and operation list; ``solve`` recomputes the answer from them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MIN_STEPS, MAX_STEPS = 1, 4
DIFFICULTY = {1: "easy", 2: "easy", 3: "medium", 4: "hard"}
DEFAULT_ITEMS = 300
_SEED_SALT = 4_000_037  # keeps these draws apart from arith's seeds
NAMES = ("Priya", "Jonas", "Keiko", "Bruno", "Fatima", "Dmitri", "Lucia", "Tariq", "Ingrid", "Mateo")
GOODS = ("tulips", "seashells", "muffins", "bolts", "postcards", "candles", "lemons", "jars of honey")
TICKETS = ("bus tickets", "notebooks", "paintbrushes", "sandwiches", "tea bags", "light bulbs")
UNITS = ("dollars", "kilometres", "litres", "minutes")
Op = tuple[str, int]  # ("add" | "sub" | "mul" | "div" | "mod" | "rsub", operand)


@dataclass(frozen=True)
class OodProblem:
    question: str
    answer: str  # a non-negative integer, as text
    start: int
    ops: tuple[Op, ...]  # applied in order to ``start``; ``solve`` gives the answer
    story: str  # which story family wrote it
    steps: int
    difficulty: str


def apply(value: int, op: Op) -> int:
    """One operation; ``rsub`` is ``operand - value`` (change from a payment)."""
    name, b = op
    if name == "add":
        return value + b
    if name == "sub":
        return value - b
    if name == "mul":
        return value * b
    if name == "div":
        if value % b:
            raise ValueError(f"{value} is not divisible by {b}")
        return value // b
    if name == "mod":
        return value % b
    if name == "rsub":
        return b - value
    raise ValueError(f"unknown operation {name!r}")


def solve(start: int, ops: Sequence[Op]) -> int:
    value = start
    for op in ops:
        value = apply(value, op)
    return value


@dataclass
class _Story:
    rng: random.Random
    sentences: list[str]
    start: int
    ops: list[Op]

    @property
    def value(self) -> int:
        return solve(self.start, self.ops)

    def say(self, op: Op, *texts: str) -> None:
        self.ops.append(op)
        self.sentences.append(self.rng.choice(texts))


_LINKS = ("Later,", "After that,", "Next,", "By evening,", "Soon after,", "The following day,")


def _link(rng: random.Random) -> str:
    return rng.choice(_LINKS)


def _divisor(rng: random.Random, value: int) -> int | None:
    options = [k for k in range(2, 10) if value % k == 0 and value // k >= 2]
    return rng.choice(options) if options else None


def _stock_story(rng: random.Random, steps: int) -> _Story:
    """A shop's stock of goods: deliveries, breakage, growth, even shelves, leftovers."""
    who, goods = rng.choice(NAMES), rng.choice(GOODS)
    start = rng.randint(12, 60)
    s = _Story(
        rng,
        [
            rng.choice(
                (
                    f"A market stall run by {who} opens the week with {start} {goods}.",
                    f"At dawn, {who}'s stall holds {start} {goods} on its table.",
                    f"{who} keeps a stall, and on Monday it stocks {start} {goods}.",
                )
            )
        ],
        start,
        [],
    )
    for i in range(steps):
        last = i == steps - 1
        v = s.value
        choices = ["add"] + (["sub"] if v >= 3 else []) + (["mul"] if v <= 40 else [])
        k = _divisor(rng, v)
        if k is not None:
            choices.append("div")
        if last and v >= 12:
            choices.append("mod")
        op = rng.choice(choices)
        link = _link(rng)
        if op == "add":
            b = rng.randint(3, 25)
            s.say(
                ("add", b),
                f"{link} a supplier drops off another {b}.",
                f"{link} {b} extra {goods} arrive in a crate.",
            )
        elif op == "sub":
            b = rng.randint(1, v - 1)
            s.say(
                ("sub", b),
                f"{link} {b} of them are sold to a café.",
                f"{link} {who} throws out {b} that were damaged.",
            )
        elif op == "mul":
            b = rng.randint(2, 4)
            s.say(
                ("mul", b),
                f"{link} the stock grows to {b} times its size after a big order.",
                f"{link} a second delivery multiplies the pile by {b}.",
            )
        elif op == "div":
            assert k is not None
            s.say(
                ("div", k),
                f"{link} the {goods} are split evenly over {k} shelves, and every shelf but one is carried to another store.",
                f"{link} {who} splits them fairly among {k} branches and keeps one branch's share.",
            )
        else:
            b = rng.randint(5, 11)
            s.say(
                ("mod", b),
                f"{link} {who} packs them into boxes of {b}; full boxes are shipped away and the rest stay.",
                f"{link} the {goods} are bundled {b} to a bundle, and every complete bundle goes to the van.",
            )
    s.sentences.append(
        rng.choice(
            (
                f"What quantity of {goods} does the stall have at the end?",
                "Work out what remains on the stall.",
                f"Find the final tally of {goods} at {who}'s stall.",
            )
        )
    )
    return s


def _shopping_story(rng: random.Random, steps: int) -> _Story:
    """Unit prices, a fee or a coupon, and the change from a note."""
    who, item = rng.choice(NAMES), rng.choice(TICKETS)
    price = rng.randint(2, 12)
    s = _Story(rng, [f"In a small shop, {item} cost {price} dollars apiece."], price, [])
    middle = rng.choice((["fee", "coupon"], ["coupon", "fee"], ["mul2", "fee"], ["mul2", "coupon"]))
    plan = ["mul"] + middle[: max(0, steps - 2)] + (["change"] if steps >= 2 else [])
    for op in plan:
        v = s.value
        if op == "mul":
            k = rng.randint(2, 9)
            s.say(("mul", k), f"{who} picks up {k} of them.", f"{who} wants {k} for the office.")
        elif op == "mul2":
            k = rng.randint(2, 3)
            s.say(
                ("mul", k),
                f"The order is repeated for {k} departments in all.",
                f"The same order is placed for {k} weeks in a row.",
            )
        elif op == "fee":
            b = rng.randint(1, 9)
            s.say(
                ("add", b),
                f"The cashier adds a service charge of {b} dollars.",
                f"Delivery is {b} dollars on top.",
            )
        elif op == "coupon":
            b = rng.randint(1, max(1, v // 3))
            s.say(
                ("sub", b),
                f"A voucher knocks {b} dollars off the bill.",
                f"The cashier takes off {b} dollars as a loyalty discount.",
            )
        else:
            note = next(n for n in (20, 50, 100, 200, 500, 1000) if n >= v + 1)
            s.say(
                ("rsub", note),
                f"{who} hands over a {note}-dollar note.",
                f"Payment is made with a single {note}-dollar bill.",
            )
    s.sentences.append(
        rng.choice(
            (
                "How much change comes back, in dollars?"
                if plan[-1] == "change"
                else "What is the bill, in dollars?",
                "Work out the change owed, in dollars."
                if plan[-1] == "change"
                else "Work out the total to pay, in dollars.",
            )
        )
    )
    return s


def _rate_story(rng: random.Random, steps: int) -> _Story:
    """A rate kept up for a while, then extra distance or volume, then equal parts."""
    who = rng.choice(NAMES)
    unit = rng.choice(("kilometres", "litres"))
    rate = rng.randint(3, 15)
    if unit == "kilometres":
        opening = f"{who} cycles at a steady {rate} kilometres per hour."
    else:
        opening = f"A pump run by {who} moves {rate} litres of water every minute."
    s = _Story(rng, [opening], rate, [])
    k = rng.randint(2, 8)
    s.say(("mul", k), f"It keeps this pace for {k} {'hours' if unit == 'kilometres' else 'minutes'}.")
    for i in range(1, steps):
        v = s.value
        last = i == steps - 1
        d = _divisor(rng, v)
        choices = ["add"] + (["sub"] if v >= 3 else []) + (["div"] if d is not None and last else [])
        op = rng.choice(choices)
        if op == "add":
            b = rng.randint(2, 20)
            s.say(
                ("add", b),
                f"Afterwards a final stretch adds {b} {unit}.",
                f"A last burst adds another {b} {unit}.",
            )
        elif op == "sub":
            b = rng.randint(1, v - 1)
            if unit == "litres":
                s.say(
                    ("sub", b),
                    f"A leak wastes {b} of those litres.",
                    f"Of that water, {b} litres spill on the ground.",
                )
            else:
                s.say(
                    ("sub", b),
                    f"Of that distance, {b} kilometres were a wrong turn, which does not count.",
                    f"A detour of {b} kilometres is left out of the log.",
                )
        else:
            assert d is not None
            s.say(
                ("div", d),
                f"The counted total is divided into {d} equal parts.",
                f"That amount is shared equally by {d} tanks."
                if unit == "litres"
                else f"The route is cut into {d} equal legs.",
            )
    s.sentences.append(
        f"Give the result in {unit}" + (" for a single part." if s.ops[-1][0] == "div" else ".")
    )
    return s


def _compare_story(rng: random.Random, steps: int) -> _Story:
    """A chain of people, each described by the previous one's amount."""
    people = rng.sample(NAMES, k=steps + 1)
    goods = rng.choice(GOODS)
    start = rng.randint(4, 30)
    s = _Story(rng, [f"{people[0]} collected {start} {goods} this season."], start, [])
    for i in range(1, steps + 1):
        prev, cur, v = people[i - 1], people[i], s.value
        choices = ["add"] + (["sub"] if v >= 3 else []) + (["mul"] if v <= 50 else [])
        d = _divisor(rng, v)
        if d is not None:
            choices.append("div")
        op = rng.choice(choices)
        if op == "add":
            b = rng.randint(2, 20)
            s.say(
                ("add", b),
                f"{cur} gathered {b} beyond {prev}'s amount.",
                f"{cur} ended with {b} more than {prev} did.",
            )
        elif op == "sub":
            b = rng.randint(1, v - 1)
            s.say(
                ("sub", b),
                f"{cur} gathered {b} fewer than {prev}.",
                f"{cur} fell {b} short of {prev}'s amount.",
            )
        elif op == "mul":
            b = rng.randint(2, 4)
            word = {2: "double", 3: "triple", 4: "four times"}[b]
            s.say(
                ("mul", b),
                f"{cur} got {word} what {prev} got.",
                f"{cur}'s total is {b} times the amount {prev} has.",
            )
        else:
            assert d is not None
            s.say(
                ("div", d),
                f"{cur} managed only one {_fraction(d)} of {prev}'s amount.",
                f"{cur}'s haul was {prev}'s divided by {d}.",
            )
    s.sentences.append(f"What was {people[-1]}'s haul?")
    return s


def _fraction(d: int) -> str:
    return {
        2: "half",
        3: "third",
        4: "quarter",
        5: "fifth",
        6: "sixth",
        7: "seventh",
        8: "eighth",
        9: "ninth",
    }[d]


_STORIES: dict[str, Callable[[random.Random, int], _Story]] = {
    "stock": _stock_story,
    "shopping": _shopping_story,
    "rate": _rate_story,
    "compare": _compare_story,
}


def _one(rng: random.Random) -> OodProblem | None:
    steps = rng.randint(MIN_STEPS, MAX_STEPS)
    story = rng.choice(sorted(_STORIES))
    if story == "rate" and steps == 1:
        steps = 2  # a rate story always has its rate and its duration
    s = _STORIES[story](rng, steps)
    answer = s.value
    if answer < 0 or answer > 5000:
        return None
    return OodProblem(
        question=" ".join(s.sentences),
        answer=str(answer),
        start=s.start,
        ops=tuple(s.ops),
        story=story,
        steps=len(s.ops),
        difficulty=DIFFICULTY[min(len(s.ops), MAX_STEPS)],
    )


def ood_problems(n: int = DEFAULT_ITEMS, seed: int = 0) -> list[OodProblem]:
    """``n`` distinct problems (a test split only); the same (n, seed) always gives the same list, and a
    longer list with the same seed starts with the shorter one."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed * 7_919 + _SEED_SALT)
    out: list[OodProblem] = []
    seen: set[str] = set()
    for _ in range(200 * n + 10_000):
        if len(out) >= n:
            return out
        p = _one(rng)
        if p is None or p.question in seen:
            continue
        seen.add(p.question)
        out.append(p)
    if len(out) < n:
        raise RuntimeError(f"could not draw {n} distinct arith-ood problems")
    return out
