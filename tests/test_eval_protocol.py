"""What the evaluation counts and records: every generated token (early-exit probes included), the
code version and frozen configuration in a run's identity, dev/test protocol, and the analysis of a
results folder."""

from __future__ import annotations

import edgereason as er
from edgereason.eval import parse_strategy, summarize
from edgereason.eval.data import EvalItem
from edgereason.eval.runner import StrategyRun, _record
from edgereason.strategies.budget import DEFAULT_PROBE_PREFIXES

TRAIN_QUESTION = "A train travels 60 km in one hour. How far does it go in 2 hours?"
PROBING = dict(
    thinking=True,
    max_tokens=48,
    temperature=0.0,
    thinking_budget="auto",
    early_exit_threshold=1.0,  # never met: every probe is discarded, the choice is the plain one
    transition_markers=("\n", "Wait", " train"),
    early_exit_probe_tokens=4,
    loop_guard=False,
)


def test_probe_tokens_are_counted_in_usage(engine: er.Engine) -> None:
    msgs = [{"role": "user", "content": TRAIN_QUESTION}]
    plain = engine.chat(msgs, thinking=True, max_tokens=48, temperature=0.0)
    probed = engine.chat(msgs, **PROBING)
    c = probed.choices[0]
    count = c.extra["early_exit_probe_count"]
    assert count > 0
    prefix = len(engine.backend.tokenize(DEFAULT_PROBE_PREFIXES["deepseek-r1"]))
    probe_tokens = probed.usage.probe_tokens
    # Each probe decodes its trial prefix and samples 1 to early_exit_probe_tokens (+ its stop) tokens.
    assert count * (prefix + 1) <= probe_tokens <= count * (prefix + 5)
    assert c.extra["probe_tokens"] == probe_tokens
    # The choice is the plain one; the request's usage is the plain usage plus the probes.
    assert c.completion_tokens == plain.choices[0].completion_tokens
    assert probed.usage.completion_tokens == plain.usage.completion_tokens + probe_tokens
    assert probed.usage.reasoning_tokens == plain.usage.reasoning_tokens
    assert probed.usage.total_tokens == plain.usage.total_tokens + probe_tokens
    details = probed.usage.to_dict()["completion_tokens_details"]
    assert details == {"reasoning_tokens": plain.usage.reasoning_tokens, "probe_tokens": probe_tokens}
    assert plain.usage.probe_tokens == 0


def test_eval_records_count_probe_tokens(engine: er.Engine) -> None:
    """budget:auto's record and summary carry the probes' tokens, in the totals and the savings.
    (The default markers rarely occur in the embedded model's text: the probing request is the one above.)"""
    item = EvalItem("t0", TRAIN_QUESTION, "120")
    msgs = [{"role": "user", "content": TRAIN_QUESTION}]
    plain = engine.chat(msgs, thinking=True, max_tokens=48, temperature=0.0)
    probed = engine.chat(msgs, **PROBING)
    g = _record(parse_strategy("greedy"), item, plain, 1.0)
    rec = _record(parse_strategy("budget:auto"), item, probed, 1.0)
    assert rec.extra["probes"] > 0 and rec.probe_tokens == probed.usage.probe_tokens > 0
    assert rec.answer_tokens == g.answer_tokens and rec.reasoning_tokens == g.reasoning_tokens
    assert rec.tokens == g.tokens + rec.probe_tokens == probed.usage.completion_tokens
    runs = [
        StrategyRun(parse_strategy("greedy"), [g], 1.0, 1),
        StrategyRun(parse_strategy("budget:auto"), [rec], 1.0, 1),
    ]
    row = summarize(runs)["strategies"]["budget:auto"]
    assert row["mean_probe_tokens"] == rec.probe_tokens and row["mean_tokens"] == rec.tokens
    want = round((g.reasoning_tokens + rec.probe_tokens) / g.reasoning_tokens - 1, 4)
    assert row["vs_baseline"]["reasoning_tokens_change"] == want > 0
    assert row["vs_baseline"]["tokens_change"] == round(rec.tokens / g.tokens - 1, 4)
