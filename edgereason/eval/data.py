"""Evaluation items: the built-in ``arith`` problems or a JSONL file of questions and gold answers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..answers import extract_gold
from ..data_ood import ood_problems
from ..errors import InvalidRequestError
from ..evaldata import SPLITS, arith_problems

BUILTIN_ARITH = "arith"
BUILTIN_ARITH_OOD = "arith-ood"  # independently written phrasing (edgereason.data_ood), test split only
DEFAULT_ARITH_ITEMS = 300  # arith with no --limit
QUESTION_KEYS = ("question", "problem", "prompt", "input")
ANSWER_KEYS = ("answer", "solution", "gold", "target")


@dataclass(frozen=True)
class EvalItem:
    """One question with its gold answer, already normalised (``answers.extract_gold``)."""

    id: str
    question: str
    gold: str
    difficulty: str | None = None


def load_items(data: str, split: str = "test", limit: int | None = None, seed: int = 0) -> list[EvalItem]:
    """``arith`` (seeded problems of ``split``), ``arith-ood`` (test only) or a JSONL path; at most
    ``limit`` items, in file order.

    JSONL lines need a question (``question``/``problem``/``prompt``/``input``) and an answer
    (``answer``/``solution``/``gold``/``target``): a bare value, GSM8K's ``#### 42`` or a MATH
    solution ending in ``\\boxed{42}``. ``split`` applies to ``arith`` only.
    """
    if limit is not None and limit < 1:
        raise InvalidRequestError(f"limit must be >= 1, got {limit}", param="limit")
    if data == BUILTIN_ARITH:
        return _arith_items(split, limit or DEFAULT_ARITH_ITEMS, seed)
    if data == BUILTIN_ARITH_OOD:
        return _arith_ood_items(split, limit or DEFAULT_ARITH_ITEMS, seed)
    return _jsonl_items(Path(data), limit)


def _arith_items(split: str, n: int, seed: int) -> list[EvalItem]:
    if split not in SPLITS:
        raise InvalidRequestError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}", param="split")
    return [
        EvalItem(id=f"arith-{split}-{i}", question=p.question, gold=p.answer, difficulty=p.difficulty)
        for i, p in enumerate(arith_problems(n, seed=seed, split=split))  # type: ignore[arg-type]
    ]


def _arith_ood_items(split: str, n: int, seed: int) -> list[EvalItem]:
    if split != "test":  # written for evaluation only: no train or dev split exists
        raise InvalidRequestError(f"arith-ood has only a test split, not {split!r}", param="split")
    return [
        EvalItem(id=f"arith-ood-{i}", question=p.question, gold=p.answer, difficulty=p.difficulty)
        for i, p in enumerate(ood_problems(n, seed=seed))
    ]


def _jsonl_items(path: Path, limit: int | None) -> list[EvalItem]:
    if not path.is_file():
        raise InvalidRequestError(
            f"data set not found: {path} (give 'arith' or a JSONL file of question/answer lines)",
            param="data",
        )
    items: list[EvalItem] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            item = _parse_line(path, lineno, line)
            if item.id in seen:  # records are kept by id (results, resuming)
                raise InvalidRequestError(
                    f"{path}:{lineno}: id {item.id!r} repeats line {seen[item.id]}; ids must be unique",
                    param="data",
                )
            seen[item.id] = lineno
            items.append(item)
            if limit is not None and len(items) >= limit:
                break
    if not items:
        raise InvalidRequestError(f"{path} has no items", param="data")
    return items


def _field(row: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((row[k] for k in keys if row.get(k) is not None), None)


def _parse_line(path: Path, lineno: int, line: str) -> EvalItem:
    where = f"{path}:{lineno}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"{where}: not valid JSON ({exc.msg})", param="data") from None
    if not isinstance(row, dict):
        raise InvalidRequestError(f"{where}: each line must be a JSON object", param="data")
    question, answer = _field(row, QUESTION_KEYS), _field(row, ANSWER_KEYS)
    if not isinstance(question, str) or not question.strip():
        raise InvalidRequestError(f"{where}: no question (one of {', '.join(QUESTION_KEYS)})", param="data")
    if answer is None or isinstance(answer, bool | dict | list):
        raise InvalidRequestError(f"{where}: no answer (one of {', '.join(ANSWER_KEYS)})", param="data")
    gold = extract_gold(str(answer))
    if gold is None:
        raise InvalidRequestError(
            f"{where}: the answer {str(answer)[:60]!r} has no usable value", param="data"
        )
    level = row.get("difficulty", row.get("level"))
    return EvalItem(
        id=str(row.get("id", f"{path.stem}-{lineno}")),
        question=question.strip(),
        gold=gold.normalized,
        difficulty=None if level is None else str(level),
    )
