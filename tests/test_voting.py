from __future__ import annotations

import math

import pytest

from edgereason.errors import InvalidRequestError
from edgereason.strategies.voting import (
    BetaStopping,
    ESCStopping,
    NoStopping,
    StoppingRule,
    Tally,
    Vote,
    beta_stop_probability,
    dirichlet_stop_probability,
    group_confidences,
    make_stopping_rule,
    tally,
    token_confidence,
    trace_confidence,
)


def stop_point(rule: StoppingRule, answers: list[str | None], max_samples: int = 40) -> int:
    """Feed answers one at a time; return how many were used when the rule stopped (len+1 if never)."""
    for n in range(1, len(answers) + 1):
        if rule.should_stop(answers[:n], max_samples):
            return n
    return len(answers) + 1


# --- Beta rule -------------------------------------------------------------------------------------


def test_beta_matches_scipy_on_grid() -> None:
    special = pytest.importorskip("scipy.special")
    stats = pytest.importorskip("scipy.stats")
    for a in range(41):
        for b in range(a + 1):
            p = beta_stop_probability(a, b)
            assert p == pytest.approx(1.0 - special.betainc(a + 1, b + 1, 0.5), abs=1e-12)
            assert p == pytest.approx(stats.beta.sf(0.5, a + 1, b + 1), abs=1e-12)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (0, 0, 0.5),
        (1, 0, 0.75),
        (3, 0, 0.9375),
        (4, 0, 0.96875),
        (2, 1, 11 / 16),
        (5, 5, 0.5),
    ],
)
def test_beta_known_values(a: int, b: int, expected: float) -> None:
    assert beta_stop_probability(a, b) == expected


def test_beta_symmetry_and_monotonicity() -> None:
    for a in range(15):
        for b in range(15):
            assert beta_stop_probability(a, b) + beta_stop_probability(b, a) == pytest.approx(1.0, abs=1e-15)
            assert beta_stop_probability(a + 1, b) > beta_stop_probability(a, b)
            assert beta_stop_probability(a, b + 1) < beta_stop_probability(a, b)


def test_beta_rejects_negative_counts() -> None:
    with pytest.raises(ValueError):
        beta_stop_probability(-1, 0)


# --- Dirichlet rule --------------------------------------------------------------------------------


def test_dirichlet_is_deterministic_for_a_seed() -> None:
    counts = [5, 3, 2, 1]
    assert dirichlet_stop_probability(counts) == dirichlet_stop_probability(counts)
    assert dirichlet_stop_probability(counts, seed=7) == dirichlet_stop_probability(counts, seed=7)
    assert dirichlet_stop_probability(counts, seed=1) != dirichlet_stop_probability(counts, seed=2)


@pytest.mark.parametrize(("a", "b"), [(8, 8), (10, 4), (6, 2), (12, 3), (20, 1)])
def test_dirichlet_with_empty_third_answer_is_close_to_beta(a: int, b: int) -> None:
    # Dirichlet(a+1, b+1, 1) aggregates to Beta(a+1, b+1) for p_a / (p_a + p_b); the empty third
    # answer only rarely leads, so the two rules agree up to that and Monte Carlo noise.
    p = dirichlet_stop_probability([a, b, 0], n_draws=20000)
    assert p == pytest.approx(beta_stop_probability(a, b), abs=0.015)


def test_dirichlet_order_of_counts_does_not_matter() -> None:
    assert dirichlet_stop_probability([1, 2, 6]) == dirichlet_stop_probability([6, 2, 1])


def test_dirichlet_three_way_tie_is_about_a_third() -> None:
    assert dirichlet_stop_probability([3, 3, 3], n_draws=20000) == pytest.approx(1 / 3, abs=0.02)


def test_dirichlet_grows_with_the_leaders_count() -> None:
    probs = [dirichlet_stop_probability([lead, 2, 1]) for lead in (2, 4, 8, 16, 32)]
    assert probs == sorted(probs)
    assert probs[0] < 0.6
    assert probs[-1] > 0.99


def test_dirichlet_only_uses_the_top_answers() -> None:
    counts = [6, 2, 1, 1, 1, 1, 1, 1]
    assert dirichlet_stop_probability(counts, top=3) == dirichlet_stop_probability([6, 2, 1])
    assert dirichlet_stop_probability(counts, top=5) == dirichlet_stop_probability(counts[:5])


def test_dirichlet_falls_back_to_beta_below_three_counts() -> None:
    assert dirichlet_stop_probability([4, 1]) == beta_stop_probability(4, 1)
    assert dirichlet_stop_probability([1, 4]) == beta_stop_probability(4, 1)
    assert dirichlet_stop_probability([4]) == beta_stop_probability(4, 0)


def test_dirichlet_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError):
        dirichlet_stop_probability([3, -1, 1])
    with pytest.raises(ValueError):
        dirichlet_stop_probability([3, 2, 1], top=1)


# --- Stopping rules --------------------------------------------------------------------------------


def test_no_stopping_runs_to_max_samples() -> None:
    rule = NoStopping()
    assert stop_point(rule, ["4"] * 12, max_samples=10) == 10
    assert not rule.should_stop(["4"] * 9, 10)


def test_beta_stopping_unanimous_stops_at_four() -> None:
    # 3 agreeing votes give 0.9375 < 0.95; 4 give 0.96875.
    assert stop_point(BetaStopping(threshold=0.95), ["4"] * 10) == 4


def test_beta_stopping_disagreement_does_not_stop() -> None:
    rule = BetaStopping(threshold=0.95)
    assert not rule.should_stop(["4", "5"], 40)
    assert not rule.should_stop(["4", "5", "4", "5", "4", "5"], 40)
    # 4 vs 1: P = 26/32 = 0.8125, still short of 0.95.
    assert not rule.should_stop(["4", "5", "4", "4", "4"], 40)


def test_beta_stopping_after_early_disagreement() -> None:
    # With b=1, P = 1 - (a+3)/2^(a+2): a=5 gives 0.9375, a=6 gives 0.9648 (>= 0.95),
    # a=8 gives 0.98926 and a=9 gives 0.99414 (>= 0.99).
    answers: list[str | None] = ["5", *(["4"] * 10)]
    assert stop_point(BetaStopping(threshold=0.95), answers) == 7
    assert stop_point(BetaStopping(threshold=0.99), answers) == 10


def test_beta_stopping_ignores_abstentions() -> None:
    answers: list[str | None] = ["4", None, "4", None, None, "4", "4"]
    assert stop_point(BetaStopping(threshold=0.95), answers) == 7
    assert not BetaStopping().should_stop([None] * 10, 40)


def test_beta_stopping_respects_min_samples() -> None:
    # With a low threshold two votes would do, but min_samples holds out for five.
    assert stop_point(BetaStopping(threshold=0.6, min_samples=2), ["4"] * 10) == 2
    assert stop_point(BetaStopping(threshold=0.6, min_samples=5), ["4"] * 10) == 5
    assert stop_point(BetaStopping(threshold=0.6, min_samples=5), ["4", None, "4", None, "4", "4", "4"]) == 7


def test_beta_stopping_uses_dirichlet_for_three_answers() -> None:
    rule = BetaStopping(threshold=0.95)
    answers: list[str | None] = ["1", "2", "3", *(["1"] * 20)]
    n = stop_point(rule, answers)
    assert 4 < n <= len(answers)
    counts = [n - 2, 1, 1]
    assert dirichlet_stop_probability(counts) >= 0.95
    assert dirichlet_stop_probability([n - 3, 1, 1]) < 0.95


def test_beta_stopping_stops_at_max_samples() -> None:
    assert BetaStopping().should_stop(["1", "2", "1", "2"], 4)


def test_esc_unanimous_window_stops() -> None:
    assert stop_point(ESCStopping(window=5), ["7"] * 12) == 5


def test_esc_later_unanimous_window_stops() -> None:
    answers: list[str | None] = ["7", "8", "7", "7", "7", *(["7"] * 5)]
    assert stop_point(ESCStopping(window=5), answers) == 10


def test_esc_mixed_windows_continue() -> None:
    rule = ESCStopping(window=5)
    answers: list[str | None] = ["7", "8"] * 10
    assert stop_point(rule, answers) == len(answers) + 1
    assert not rule.should_stop(["7", "7", "7", "7", None], 40)


def test_esc_ignores_incomplete_window() -> None:
    rule = ESCStopping(window=5)
    # The first window is mixed; the second holds four agreeing answers but is not complete.
    assert not rule.should_stop(["1", "2", "3", "4", "5", "9", "9", "9", "9"], 40)
    assert not rule.should_stop(["9", "9", "9", "9"], 40)


def test_esc_only_the_latest_window_counts() -> None:
    # Windows are blocks [0, 5), [5, 10): five agreeing answers that straddle them do not stop.
    assert not ESCStopping(window=5).should_stop(["1", "2", "3", "9", "9", "9", "9", "9", "4", "5"], 40)


def test_esc_stops_at_max_samples() -> None:
    assert ESCStopping(window=5).should_stop(["1", "2", "3"], 3)


def test_make_stopping_rule_builds_each_rule() -> None:
    assert make_stopping_rule(False) == NoStopping()
    assert make_stopping_rule("beta", threshold=0.9) == BetaStopping(threshold=0.9)
    assert make_stopping_rule(True) == BetaStopping()
    assert make_stopping_rule("esc", window=3) == ESCStopping(window=3)
    assert {make_stopping_rule(r).name for r in (False, "beta", "esc")} == {"none", "beta", "esc"}


@pytest.mark.parametrize("threshold", [0.5, 1.0, 1.2, 0.0, -0.3])
def test_make_stopping_rule_rejects_bad_threshold(threshold: float) -> None:
    with pytest.raises(InvalidRequestError) as info:
        make_stopping_rule("beta", threshold=threshold)
    assert info.value.param == "self_consistency.threshold"
    assert "between 0.5 and 1" in str(info.value)


@pytest.mark.parametrize("window", [0, -1])
def test_make_stopping_rule_rejects_bad_window(window: int) -> None:
    with pytest.raises(InvalidRequestError) as info:
        make_stopping_rule("esc", window=window)
    assert info.value.param == "self_consistency.window"


@pytest.mark.parametrize("adaptive", ["foo", "BETA", "", None, 1])
def test_make_stopping_rule_rejects_unknown_rule(adaptive: object) -> None:
    with pytest.raises(InvalidRequestError) as info:
        make_stopping_rule(adaptive)  # type: ignore[arg-type]
    assert info.value.param == "self_consistency.adaptive"
    assert "'beta' or 'esc'" in str(info.value)


def test_rules_validate_when_built_directly() -> None:
    with pytest.raises(InvalidRequestError):
        BetaStopping(threshold=1.0)
    with pytest.raises(InvalidRequestError):
        BetaStopping(min_samples=0)
    with pytest.raises(InvalidRequestError):
        ESCStopping(window=0)


# --- DeepConf --------------------------------------------------------------------------------------


def test_token_confidence_is_minus_mean_logprob() -> None:
    assert token_confidence([-1.0, -2.0, -3.0]) == pytest.approx(2.0)
    assert token_confidence([math.log(0.5), math.log(0.25)]) == pytest.approx(
        -(math.log(0.5) + math.log(0.25)) / 2
    )
    assert token_confidence([0.0]) == 0.0


def test_token_confidence_skips_non_finite_and_handles_empty() -> None:
    assert token_confidence([-1.0, -math.inf, -3.0]) == pytest.approx(2.0)
    assert token_confidence([]) == 0.0
    assert token_confidence([-math.inf]) == 0.0


def test_group_confidences_sliding_means() -> None:
    assert group_confidences([1.0, 2.0, 3.0, 4.0, 5.0], 2) == pytest.approx([1.5, 2.5, 3.5, 4.5])
    assert group_confidences([1.0, 2.0, 3.0, 4.0, 5.0], 3) == pytest.approx([2.0, 3.0, 4.0])
    assert group_confidences([1.0, 2.0, 3.0], 1) == pytest.approx([1.0, 2.0, 3.0])


def test_group_confidences_window_shrinks_to_short_trace() -> None:
    assert group_confidences([1.0, 2.0, 6.0], 64) == pytest.approx([3.0])
    assert group_confidences([], 4) == []
    with pytest.raises(ValueError):
        group_confidences([1.0], 0)


def test_trace_confidence_is_lowest_group() -> None:
    # A confident trace with one shaky stretch scores that stretch, not the overall mean.
    confs = [5.0, 5.0, 5.0, 1.0, 1.0, 5.0, 5.0, 5.0]
    assert trace_confidence(confs, window=2) == pytest.approx(1.0)
    assert trace_confidence(confs, window=4) == pytest.approx(3.0)
    assert trace_confidence(confs, window=100) == pytest.approx(sum(confs) / len(confs))
    assert trace_confidence([]) == 0.0


def test_trace_confidence_from_logprobs() -> None:
    positions = [[-0.1, -2.0], [-0.5, -1.5], [-3.0, -3.0]]
    confs = [token_confidence(p) for p in positions]
    assert confs == pytest.approx([1.05, 1.0, 3.0])
    assert trace_confidence(confs, window=2) == pytest.approx(1.025)


# --- Tally -----------------------------------------------------------------------------------------


def test_tally_majority() -> None:
    votes = [Vote("4", index=0), Vote("5", index=1), Vote("4", index=2), Vote(None, index=3)]
    result = tally(votes)
    assert (result.winner, result.votes) == ("4", {"4": 2.0, "5": 1.0})
    assert result.share == pytest.approx(2 / 3)


def test_tally_majority_ignores_weights() -> None:
    votes = [Vote("4", weight=0.1, index=0), Vote("4", weight=0.1, index=1), Vote("5", weight=9.0, index=2)]
    assert tally(votes, "majority").winner == "4"


def test_tally_weighted() -> None:
    votes = [Vote("4", weight=0.1, index=0), Vote("4", weight=0.1, index=1), Vote("5", weight=9.0, index=2)]
    result = tally(votes, "weighted")
    assert result.winner == "5"
    assert result.votes == pytest.approx({"4": 0.2, "5": 9.0})
    assert result.share == pytest.approx(9.0 / 9.2)


def test_tally_tie_goes_to_higher_confidence() -> None:
    votes = [Vote("4", confidence=1.0, index=0), Vote("5", confidence=2.5, index=1)]
    assert tally(votes).winner == "5"
    votes = [Vote("4", confidence=3.0, index=0), Vote("5", confidence=2.5, index=1)]
    assert tally(votes).winner == "4"


def test_tally_tie_with_equal_confidence_goes_to_first_appearance() -> None:
    votes = [Vote("5", index=3), Vote("4", index=1), Vote("5", index=2), Vote("4", index=0)]
    result = tally(votes)
    assert result.winner == "4"
    assert list(result.votes) == ["4", "5"]
    assert result.share == 0.5
    swapped = [Vote("5", index=0), Vote("4", index=1), Vote("5", index=2), Vote("4", index=3)]
    assert tally(swapped).winner == "5"


def test_tally_weighted_float_sums_tie() -> None:
    # 0.1 + 0.2 != 0.3 in floats; the near-equal totals still tie and confidence decides.
    votes = [
        Vote("a", weight=0.1, confidence=1.0, index=0),
        Vote("a", weight=0.2, confidence=1.0, index=1),
        Vote("b", weight=0.3, confidence=2.0, index=2),
    ]
    assert tally(votes, "weighted").winner == "b"


def test_tally_no_votes() -> None:
    assert tally([]) == Tally(winner=None, votes={}, share=0.0)
    assert tally([Vote(None, index=0), Vote(None, index=1)], "weighted") == Tally(
        winner=None, votes={}, share=0.0
    )


def test_tally_zero_total_weight() -> None:
    result = tally([Vote("4", weight=0.0, index=0)], "weighted")
    assert result.winner == "4"
    assert result.share == 0.0


def test_tally_rejects_unknown_strategy() -> None:
    with pytest.raises(ValueError):
        tally([Vote("4")], "plurality")  # type: ignore[arg-type]
