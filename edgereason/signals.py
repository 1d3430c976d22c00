"""Answer signals reported on every result: how sure the model was of its answer, and whether the
answer it gave is the one its reasoning arrived at (two hallucination signals)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .answers import Extracted, answers_equal, extract_answer, last_reasoning_answer


def final_answer(content: str, reasoning: str, fmt: str = "auto") -> Extracted | None:
    """The answer of an output: from the content, or from the reasoning when there is no content."""
    if content.strip():
        return extract_answer(content, fmt)  # type: ignore[arg-type]
    return last_reasoning_answer(reasoning)


def answer_confidence(
    pieces: Sequence[str], logprobs: Sequence[float], answer: Extracted | None
) -> float | None:
    """Mean probability of the generated tokens that spell the answer's last occurrence.

    ``pieces`` are the texts of the generated tokens and ``logprobs`` their log-probabilities, in
    order. None when there is no answer, no log-probabilities, or the answer text is not found.
    """
    if answer is None or not pieces or len(pieces) != len(logprobs) or not answer.raw:
        return None
    text = "".join(pieces)
    start = text.rfind(answer.raw)
    if start < 0:
        return None
    end = start + len(answer.raw)
    probs, pos = [], 0
    for piece, lp in zip(pieces, logprobs):
        nxt = pos + len(piece)
        if nxt > start and pos < end and piece:
            probs.append(math.exp(lp))
        pos = nxt
        if pos >= end:
            break
    return math.fsum(probs) / len(probs) if probs else None


def think_answer_mismatch(content: str, reasoning: str, fmt: str = "auto") -> bool | None:
    """Whether the final answer differs from the last answer the reasoning arrived at.

    None when either side has no answer (no reasoning, no content, nothing extractable).
    """
    if not reasoning.strip() or not content.strip():
        return None
    thought, given = last_reasoning_answer(reasoning), extract_answer(content, fmt)  # type: ignore[arg-type]
    if thought is None or given is None:
        return None
    return not answers_equal(thought, given)
