"""Self-consistency: vote counting, adaptive stopping rules and DeepConf trace confidence.

Pure logic over extracted answers and log-probs; the sampling loop that feeds it lives elsewhere.
Stopping rules follow Adaptive-Consistency (arXiv 2305.11860) and ESC (arXiv 2401.10480); trace
confidence follows DeepConf (arXiv 2508.15260).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

import numpy as np

from ..errors import InvalidRequestError

DEFAULT_THRESHOLD = 0.95
DEFAULT_WINDOW = 5
DEFAULT_DIRICHLET_TOP = 5


def beta_stop_probability(a: int, b: int) -> float:
    """P(p_a > 0.5) under Beta(a + 1, b + 1), i.e. 1 - I_{0.5}(a + 1, b + 1), exactly.

    For integer shapes I_x(a+1, b+1) = P(Binomial(a+b+1, x) >= a+1), so the answer is
    sum_{j<=a} C(a+b+1, j) / 2^(a+b+1); integer arithmetic keeps it exact up to the final rounding.
    """
    if a < 0 or b < 0:
        raise ValueError(f"vote counts must be >= 0, got a={a}, b={b}")
    n = a + b + 1
    return sum(math.comb(n, j) for j in range(a + 1)) / (1 << n)


def dirichlet_stop_probability(
    counts: Sequence[int], n_draws: int = 4000, seed: int = 0, top: int = DEFAULT_DIRICHLET_TOP
) -> float:
    """P(the leading answer has the largest probability) under Dirichlet(counts + 1) over the top answers.

    Monte Carlo with a seeded generator, so the same inputs always give the same value. With fewer
    than three counts the Beta rule is exact and is used instead (a lone count is paired with 0).
    """
    if any(c < 0 for c in counts):
        raise ValueError(f"vote counts must be >= 0, got {list(counts)}")
    if top < 2:
        raise ValueError(f"top must be >= 2, got {top}")
    ranked = sorted(counts, reverse=True)[:top]
    if len(ranked) < 3:
        padded = [*ranked, 0, 0]
        return beta_stop_probability(padded[0], padded[1])
    alpha = np.asarray(ranked, dtype=np.float64) + 1.0
    draws = np.random.default_rng(seed).dirichlet(alpha, size=n_draws)
    return float(np.mean(np.argmax(draws, axis=1) == 0))


class StoppingRule(Protocol):
    """Decides, after each finished sample, whether to stop sampling.

    ``answers`` are the extracted answers of finished samples in finish order; ``None`` is an
    abstention (no answer could be extracted) and is never a vote. Every rule stops once
    ``len(answers) >= max_samples``.
    """

    @property
    def name(self) -> str: ...

    def should_stop(self, answers: Sequence[str | None], max_samples: int) -> bool: ...


def _check_threshold(threshold: float) -> None:
    if not 0.5 < threshold < 1.0:
        raise InvalidRequestError(
            f"the stopping threshold must be strictly between 0.5 and 1, got {threshold}; 0.95 is typical",
            param="self_consistency.threshold",
        )


def _check_window(window: int) -> None:
    if window < 1:
        raise InvalidRequestError(
            f"the ESC window must be at least 1 sample, got {window}; 5 is typical",
            param="self_consistency.window",
        )


@dataclass(frozen=True)
class NoStopping:
    """Fixed N: sample until ``max_samples``."""

    name: ClassVar[str] = "none"

    def should_stop(self, answers: Sequence[str | None], max_samples: int) -> bool:
        return len(answers) >= max_samples


@dataclass(frozen=True)
class BetaStopping:
    """Adaptive-Consistency: stop once the leader is the true majority with probability >= ``threshold``.

    Uses the exact Beta rule on the top two counts while at most two distinct answers have been seen,
    and the Dirichlet rule over the top five once three or more have.
    """

    threshold: float = DEFAULT_THRESHOLD
    min_samples: int = 2
    name: ClassVar[str] = "beta"

    def __post_init__(self) -> None:
        _check_threshold(self.threshold)
        if self.min_samples < 1:
            raise InvalidRequestError(
                f"min_samples must be at least 1, got {self.min_samples}",
                param="self_consistency.min_samples",
            )

    def should_stop(self, answers: Sequence[str | None], max_samples: int) -> bool:
        if len(answers) >= max_samples:
            return True
        votes = [a for a in answers if a is not None]
        if len(votes) < self.min_samples:
            return False
        counts = sorted(Counter(votes).values(), reverse=True)
        if len(counts) <= 2:
            b = counts[1] if len(counts) == 2 else 0
            p = beta_stop_probability(counts[0], b)
        else:
            p = dirichlet_stop_probability(counts)
        return p >= self.threshold


@dataclass(frozen=True)
class ESCStopping:
    """Early-Stopping Self-Consistency: stop when the latest complete window of samples is unanimous.

    Windows are fixed blocks ``[k*w, (k+1)*w)`` in finish order; a window holding an abstention is
    not unanimous, and a partly filled window is not judged yet.
    """

    window: int = DEFAULT_WINDOW
    name: ClassVar[str] = "esc"

    def __post_init__(self) -> None:
        _check_window(self.window)

    def should_stop(self, answers: Sequence[str | None], max_samples: int) -> bool:
        if len(answers) >= max_samples:
            return True
        complete = len(answers) // self.window
        if complete == 0:
            return False
        last = answers[(complete - 1) * self.window : complete * self.window]
        return last[0] is not None and all(a == last[0] for a in last)


def make_stopping_rule(
    adaptive: Literal[False, "beta", "esc"] | bool,
    threshold: float = DEFAULT_THRESHOLD,
    window: int = DEFAULT_WINDOW,
) -> StoppingRule:
    """Build the stopping rule a request asked for; ``True`` means the default adaptive rule (beta)."""
    _check_threshold(threshold)
    _check_window(window)
    if adaptive is False:
        return NoStopping()
    if adaptive is True or adaptive == "beta":
        return BetaStopping(threshold=threshold)
    if adaptive == "esc":
        return ESCStopping(window=window)
    raise InvalidRequestError(
        f"unknown adaptive stopping rule {adaptive!r}; use false, true, 'beta' or 'esc'",
        param="self_consistency.adaptive",
    )


def token_confidence(top_logprobs: Sequence[float]) -> float:
    """DeepConf token confidence: minus the mean log-prob of the top-k candidates at one position.

    Non-finite log-probs (-inf for candidates with no mass) are skipped; no usable candidate gives 0.0.
    """
    finite = [lp for lp in top_logprobs if math.isfinite(lp)]
    if not finite:
        return 0.0
    return -math.fsum(finite) / len(finite)


def group_confidences(token_confs: Sequence[float], window: int) -> list[float]:
    """Means over every sliding window of ``window`` tokens; a shorter trace is one window of itself."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    n = len(token_confs)
    if n == 0:
        return []
    w = min(window, n)
    # Cumulative sums make this O(n) for the long windows DeepConf uses (2048 tokens).
    csum = np.concatenate(([0.0], np.cumsum(np.asarray(token_confs, dtype=np.float64))))
    return ((csum[w:] - csum[:-w]) / w).tolist()


def trace_confidence(token_confs: Sequence[float], window: int = 64) -> float:
    """DeepConf lowest group confidence of a trace; an empty trace scores 0.0."""
    groups = group_confidences(token_confs, window)
    return min(groups) if groups else 0.0


@dataclass(frozen=True)
class Vote:
    """One sample's extracted answer (``None`` = abstention) with its weight and trace confidence."""

    answer: str | None
    weight: float = 1.0
    confidence: float = 0.0
    index: int = 0


@dataclass(frozen=True)
class Tally:
    """Vote totals per answer (in first-appearance order), the winner and its share of the total."""

    winner: str | None
    votes: dict[str, float]
    share: float


def tally(votes: Sequence[Vote], strategy: Literal["majority", "weighted"] = "majority") -> Tally:
    """Count votes: ``majority`` counts 1 per answer, ``weighted`` sums ``Vote.weight``.

    Ties go to the answer with the highest single-vote confidence, then to the one that appeared first.
    """
    if strategy not in ("majority", "weighted"):
        raise ValueError(f"unknown voting strategy {strategy!r}; use 'majority' or 'weighted'")
    totals: dict[str, float] = {}
    best_conf: dict[str, float] = {}
    first: dict[str, int] = {}
    for v in sorted(votes, key=lambda v: v.index):
        if v.answer is None:
            continue
        totals[v.answer] = totals.get(v.answer, 0.0) + (1.0 if strategy == "majority" else v.weight)
        best_conf[v.answer] = max(best_conf.get(v.answer, -math.inf), v.confidence)
        first.setdefault(v.answer, v.index)
    if not totals:
        return Tally(winner=None, votes={}, share=0.0)
    top = max(totals.values())
    # Weighted sums accumulate float error, so near-equal totals count as a tie.
    tied = [a for a, t in totals.items() if math.isclose(t, top, rel_tol=1e-9, abs_tol=1e-12)]
    winner = min(tied, key=lambda a: (-best_conf[a], first[a]))
    total = math.fsum(totals.values())
    return Tally(winner=winner, votes=totals, share=totals[winner] / total if total > 0 else 0.0)
