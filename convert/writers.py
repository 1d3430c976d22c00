"""Problem writers for training the code student beyond ``arith``'s one story (issue 23 item 5).

``evaldata.arith_problems`` tells one person's count of one item changing by add/subtract/multiply, in a
handful of sentences. A student trained on it alone learns that phrasing, not the translation from a
story to code (it scores 91% on ``arith`` and 10% on ``arith-ood``). These writers tell other stories,
each in its own words: purchases and change, equal sharing with a remainder, rates kept up for a time,
people compared to one another, savings, recipes scaled up, groups and leftovers. Every problem comes
with the teacher's Python (named quantities, one line per step, ``print`` of the answer) and the
answer, which the code reproduces (``check``).

They are written without ``arith-ood`` (``edgereason.data_ood``, a test set): no name, item, unit,
sentence template or three-word phrase in common, checked by ``tests/test_data_ood.py``.
"""

from __future__ import annotations

import contextlib
import io
import random
from collections.abc import Callable
from dataclasses import dataclass

NAMES = (
    "Nadia",
    "Felix",
    "Aisha",
    "Hugo",
    "Mei",
    "Pablo",
    "Greta",
    "Kofi",
    "Sofia",
    "Yusuf",
    "Elena",
    "Arjun",
)
ITEMS = (
    "crayons",
    "buttons",
    "eggs",
    "cookies",
    "stamps",
    "beads",
    "cupcakes",
    "oranges",
    "balloons",
    "toy cars",
)
CURRENCIES = ("euros", "pounds", "francs")
_BIG_NOTES = (10, 20, 50, 100, 200, 500)


@dataclass(frozen=True)
class WrittenProblem:
    question: str
    code: str  # the teacher's Python: named quantities, one line per step, print(answer)
    answer: str
    writer: str


def run_code(code: str) -> str:
    """What ``code`` prints (the teacher's own check; the engine runs the student's code in its sandbox)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<teacher>", "exec"), {})  # noqa: S102 - the teacher's own generated lines
    return out.getvalue().strip()


def _var(text: str) -> str:
    return text.lower().replace(" ", "_")


class _Writer:
    """A story under construction: sentences, code lines, and the value each named quantity has."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.sentences: list[str] = []
        self.lines: list[str] = []
        self.values: dict[str, int] = {}

    def pick(self, *options: str) -> str:
        return self.rng.choice(options)

    def say(self, *options: str) -> None:
        self.sentences.append(self.pick(*options))

    def let(self, name: str, expr: str) -> int:
        value = eval(expr, {}, dict(self.values))  # noqa: S307 - arithmetic over the story's own names
        self.values[name] = int(value)
        self.lines.append(f"{name} = {expr}")
        return int(value)

    def done(self, answer_var: str, writer: str) -> WrittenProblem:
        code = "\n".join([*self.lines, f"print({answer_var})"])
        return WrittenProblem(" ".join(self.sentences), code, str(self.values[answer_var]), writer)


def _purchase(w: _Writer) -> WrittenProblem:
    """Several of one thing at a unit price, maybe a second purchase or a discount, then the change."""
    who, item, cur = w.pick(*NAMES), w.pick(*ITEMS), w.pick(*CURRENCIES)
    price, count = w.rng.randint(2, 9), w.rng.randint(2, 8)
    w.let("price", str(price))
    w.let(_var(item), str(count))
    w.say(
        f"{item.capitalize()} sell for {price} {cur} each at the corner shop.",
        f"One of the {item} at the fair costs {price} {cur}.",
        f"The price tag on the {item} reads {price} {cur} per piece.",
    )
    w.say(
        f"{who} takes {count} to the till.",
        f"{who} chooses {count} {item}.",
        f"{who} decides to get {count}.",
    )
    w.let("cost", f"price * {_var(item)}")
    extra = w.pick("none", "more", "discount")
    if extra == "more":
        w.let("wrapping", str(w.rng.randint(1, 6)))
        w.say(
            f"Gift wrapping costs {w.values['wrapping']} {cur} more.",
            f"A paper bag adds {w.values['wrapping']} {cur} to the price.",
        )
        w.let("cost", "cost + wrapping")
    elif extra == "discount":
        w.let("discount", str(w.rng.randint(1, max(1, w.values["cost"] // 3))))
        w.say(
            f"The shopkeeper lets {w.values['discount']} {cur} go.",
            f"A member card saves {w.values['discount']} {cur}.",
        )
        w.let("cost", "cost - discount")
    if w.rng.random() < 0.6:
        note = next(n for n in _BIG_NOTES if n > w.values["cost"])
        w.let("paid", str(note))
        w.say(
            f"{who} pays with {note} {cur}.",
            f"{who} gives the seller {note} {cur}.",
            f"{who} hands the clerk {note} {cur}.",
        )
        w.let("change", "paid - cost")
        w.say(
            f"How many {cur} should {who} get back?",
            f"What change does {who} receive?",
            f"How much money is returned to {who}?",
        )
        return w.done("change", "purchase")
    w.say(
        f"How many {cur} does {who} spend?",
        f"What does {who} pay altogether?",
        "How much is the total cost?",
    )
    return w.done("cost", "purchase")


def _sharing(w: _Writer) -> WrittenProblem:
    """A pile made of packs or earned over days, shared or grouped evenly; the share or the leftovers."""
    who, item = w.pick(*NAMES), w.pick(*ITEMS)
    if w.rng.random() < 0.5:
        packs, per = w.rng.randint(2, 9), w.rng.randint(3, 12)
        w.let("packs", str(packs))
        w.let("per_pack", str(per))
        w.say(
            f"{who} opens {packs} packs, each holding {per} {item}.",
            f"There are {packs} bags of {item}, and each bag holds {per}.",
        )
        w.let(_var(item), "packs * per_pack")
    else:
        total = w.rng.randint(15, 90)
        w.let(_var(item), str(total))
        w.say(
            f"{who} has a box of {total} {item}.",
            f"A jar on the shelf contains {total} {item}.",
            f"{who} counts {total} {item} in a tin.",
        )
    if w.rng.random() < 0.3:
        more = w.rng.randint(2, 15)
        w.let("more", str(more))
        w.say(f"A neighbour adds {more} of their own.", f"{more} more turn up under the couch.")
        w.let(_var(item), f"{_var(item)} + more")
    k = w.rng.randint(2, 9)
    kind = w.pick("friends", "children", "rows", "piles", "bags")
    if kind in ("friends", "children"):
        w.let(kind, str(k))
        w.say(
            f"{who} shares the {item} equally between {k} {kind}, and any extra ones stay in the box.",
            f"{who} deals them out evenly to {k} {kind}, keeping whatever cannot be dealt.",
        )
        w.let("each", f"{_var(item)} // {kind}")
        w.say(f"How many does each of the {kind} get?", "How big is one share?")
        return w.done("each", "sharing")
    if kind in ("rows", "piles"):
        w.let("per_" + kind[:-1], str(k))
        w.say(f"{who} puts them into {kind} of {k}.", f"They are arranged in {kind} of {k}.")
        w.let("left_over", f"{_var(item)} % per_{kind[:-1]}")
        w.say(f"How many {item} do not fit in a full {kind[:-1]}?", "How many are left over?")
        return w.done("left_over", "sharing")
    w.let("per_bag", str(k))
    w.say(f"Every gift bag gets {k}.", f"{who} fills gift bags with {k} each.")
    w.let("full_bags", f"{_var(item)} // per_bag")
    w.say("How many bags can be filled completely?", "How many full bags does that make?")
    return w.done("full_bags", "sharing")


def _rate(w: _Writer) -> WrittenProblem:
    """Something done at a rate for some hours or days, then more, less, or split up."""
    who = w.pick(*NAMES)
    thing, unit, per = w.pick(
        ("a printer", "pages", "hour"),
        ("an oven", "loaves", "hour"),
        ("a hen house", "eggs", "day"),
        ("a truck", "miles", "hour"),
        ("a hose", "gallons", "hour"),
    )
    rate, time = w.rng.randint(3, 25), w.rng.randint(2, 9)
    w.let("rate", str(rate))
    w.let(per + "s", str(time))
    w.say(
        f"{thing.capitalize()} makes {rate} {unit} in one {per}."
        if unit != "miles"
        else f"{thing.capitalize()} drives {rate} miles in one hour.",
        f"Each {per}, {thing} produces {rate} {unit}."
        if unit != "miles"
        else f"Each hour, {thing} covers {rate} miles.",
    )
    w.say(
        f"{who} keeps it going {time} {per}s.",
        f"The job lasts {time} {per}s.",
    )
    w.let(unit, f"rate * {per}s")
    step = w.pick("none", "add", "sub", "div")
    if step == "add":
        w.let("extra", str(w.rng.randint(2, 30)))
        w.say(
            f"On top of that, {who} adds {w.values['extra']} {unit} by hand.",
            f"Then {w.values['extra']} {unit} more come from a spare one.",
        )
        w.let(unit, f"{unit} + extra")
    elif step == "sub":
        w.let("spoiled", str(w.rng.randint(1, w.values[unit] - 1)))
        w.say(
            f"Sadly, {w.values['spoiled']} {unit} are no good.",
            f"{who} throws away {w.values['spoiled']} {unit} that went wrong.",
        )
        w.let(unit, f"{unit} - spoiled")
    elif step == "div":
        options = [d for d in range(2, 8) if w.values[unit] % d == 0]
        if options:
            d = w.rng.choice(options)
            w.let("parts", str(d))
            w.say(
                f"{who} packs the {unit} in {d} boxes of the same size.",
                f"{who} divides the {unit} evenly into {d} lots.",
            )
            w.let("batch", f"{unit} // parts")
            w.say(
                f"How many {unit} does one box get?"
                if "boxes" in w.sentences[-1]
                else f"How many {unit} go in each lot?"
            )
            return w.done("batch", "rate")
    w.say(f"How many {unit} is that in total?", f"How many {unit} are there altogether?")
    return w.done(unit, "rate")


def _compare(w: _Writer) -> WrittenProblem:
    """People described by one another: as many times, half as many, a few more or less."""
    people = w.rng.sample(NAMES, k=w.rng.randint(2, 4))
    item = w.pick(*ITEMS)
    start = w.rng.randint(4, 24)
    w.let(_var(people[0]), str(start))
    w.say(f"{people[0]} owns {start} {item}.", f"{people[0]} keeps {start} {item} in a drawer.")
    for prev, cur in zip(people, people[1:]):
        p, c, v = _var(prev), _var(cur), w.values[_var(prev)]
        options = ["more", "less", "times"] + (["half"] if v % 2 == 0 else [])
        op = w.pick(*options)
        if op == "more":
            b = w.rng.randint(2, 15)
            w.let(c, f"{p} + {b}")
            w.say(f"{cur} has {b} more {item} than {prev}.", f"{cur} is {b} {item} ahead of {prev}.")
        elif op == "less" and v > 2:
            b = w.rng.randint(1, v - 1)
            w.let(c, f"{p} - {b}")
            w.say(f"{cur} has {b} less than {prev}.", f"{cur} is {b} {item} behind {prev}.")
        elif op == "half":
            w.let(c, f"{p} // 2")
            w.say(f"{cur} has half as many as {prev}.", f"{cur} owns half of what {prev} owns.")
        else:
            k = w.rng.randint(2, 4)
            w.let(c, f"{p} * {k}")
            word = {2: "twice", 3: "three times", 4: "four times"}[k]
            w.say(f"{cur} has {word} as many {item} as {prev}.", f"{cur} owns {word} the number {prev} has.")
    if w.rng.random() < 0.3:
        names = [_var(n) for n in people]
        w.let("together", " + ".join(names))
        w.say(f"How many {item} do they have together?", "Give their combined count.")
        return w.done("together", "compare")
    w.say(f"How many {item} does {people[-1]} have?", f"Count {people[-1]}'s {item}.")
    return w.done(_var(people[-1]), "compare")


def _savings(w: _Writer) -> WrittenProblem:
    """Money put aside each week, a gift, a purchase."""
    who, cur = w.pick(*NAMES), w.pick(*CURRENCIES)
    start = w.rng.randint(0, 30)
    weekly, weeks = w.rng.randint(2, 15), w.rng.randint(2, 8)
    w.let("savings", str(start))
    w.say(f"{who} starts with {start} {cur} in a piggy bank." if start else f"{who} has an empty piggy bank.")
    w.let("weekly", str(weekly))
    w.let("weeks", str(weeks))
    w.say(f"Every week {who} saves {weekly} {cur}.", f"{who} puts away {weekly} {cur} a week.")
    w.say(f"After {weeks} weeks, {who} looks inside.", f"The habit lasts {weeks} weeks.")
    w.let("savings", "savings + weekly * weeks")
    if w.rng.random() < 0.5:
        gift = w.rng.randint(3, 20)
        w.let("gift", str(gift))
        w.say(f"Grandma sends {gift} {cur} as a present.", f"An aunt adds {gift} {cur}.")
        w.let("savings", "savings + gift")
    if w.rng.random() < 0.6:
        spend = w.rng.randint(1, w.values["savings"] - 1)
        w.let("spent", str(spend))
        w.say(f"{who} spends {spend} {cur} on a kite.", f"A book costs {who} {spend} {cur}.")
        w.let("savings", "savings - spent")
    w.say(f"How many {cur} does {who} have now?", "How much is in the piggy bank now?")
    return w.done("savings", "savings")


def _recipe(w: _Writer) -> WrittenProblem:
    """An amount per batch scaled to several batches, against what is in the cupboard."""
    who = w.pick(*NAMES)
    what, per_what = w.pick(("cups of flour", "cake"), ("eggs", "omelette"), ("spoons of sugar", "pie"))
    per, batches = w.rng.randint(2, 6), w.rng.randint(2, 7)
    w.let("per_batch", str(per))
    w.let("batches", str(batches))
    w.say(f"One {per_what} needs {per} {what}.", f"A {per_what} takes {per} {what}.")
    w.say(f"{who} is making {batches} of that dish.", f"{who} wants to bake {batches}.")
    w.let("needed", "per_batch * batches")
    if w.rng.random() < 0.6:
        have = w.values["needed"] + w.rng.randint(0, 20)
        w.let("have", str(have))
        w.say(f"There are {have} {what} in the cupboard.", f"{who} has {have} {what} at home.")
        w.let("left", "have - needed")
        w.say(f"How many {what} remain after baking?", f"How many {what} are not used?")
        return w.done("left", "recipe")
    w.say(f"How many {what} does {who} need?", f"How many {what} are used in all?")
    return w.done("needed", "recipe")


def _groups(w: _Writer) -> WrittenProblem:
    """People seated or carried in groups: how many groups are needed, or how many people remain."""
    what, group = w.pick(("pupils", "table"), ("hikers", "tent"), ("guests", "car"), ("players", "team"))
    n, size = w.rng.randint(10, 80), w.rng.randint(2, 9)
    w.let(what, str(n))
    w.let("size", str(size))
    w.say(f"There are {n} {what} on the trip.", f"A group of {n} {what} arrives.", f"{n} {what} sign up.")
    w.say(f"Each {group} fits {size} {what}.", f"One {group} takes {size} {what}.")
    if w.rng.random() < 0.5:
        w.let("full", f"{what} // size")
        w.say(f"How many {group}s can be filled completely?", f"How many full {group}s are there?")
        return w.done("full", "groups")
    w.let("needed", f"({what} + size - 1) // size")
    w.say(
        f"How many {group}s are needed so that everyone fits?",
        f"Find the smallest number of {group}s for everyone.",
    )
    return w.done("needed", "groups")


WRITERS: dict[str, Callable[[_Writer], WrittenProblem]] = {
    "purchase": _purchase,
    "sharing": _sharing,
    "rate": _rate,
    "compare": _compare,
    "savings": _savings,
    "recipe": _recipe,
    "groups": _groups,
}
_SEED_SALT = 7_000_003


def written_problems(n: int, seed: int = 0) -> list[WrittenProblem]:
    """``n`` distinct problems, the writers taken in turn; the same (n, seed) gives the same list."""
    rng = random.Random(seed * 104_729 + _SEED_SALT)
    out: list[WrittenProblem] = []
    seen: set[str] = set()
    names = sorted(WRITERS)
    for i in range(50 * n + 1000):
        if len(out) >= n:
            break
        p = WRITERS[names[i % len(names)]](_Writer(rng))
        if p.question in seen or int(p.answer) < 0:
            continue
        seen.add(p.question)
        out.append(p)
    return out


def check(p: WrittenProblem) -> None:
    """The teacher's code prints the answer (raises AssertionError otherwise)."""
    printed = run_code(p.code)
    assert printed == p.answer, f"{p.question!r}: code prints {printed!r}, answer {p.answer!r}"
