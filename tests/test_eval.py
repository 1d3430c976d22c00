"""The eval harness: strategy specs, data loading, arith splits, summaries with Wilson intervals,
run comparison, plots, and one end-to-end `edgereason eval` on the embedded model."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import edgereason as er
from edgereason.answers import answers_equal
from edgereason.errors import InvalidRequestError
from edgereason.eval import (
    EvalSettings,
    ItemRecord,
    StrategySpec,
    compare_table,
    load_items,
    load_records,
    load_summary,
    parse_strategy,
    request_fields,
    run_strategy,
    summarize,
    wilson_interval,
    write_run,
)
from edgereason.eval.data import EvalItem
from edgereason.eval.plots import write_plots
from edgereason.eval.progress import CounterProgress, no_progress
from edgereason.eval.protocol import package_digest
from edgereason.eval.runner import StrategyRun, check_strategy, concurrency_for
from edgereason.eval.summary import (
    markdown_table,
    paired_difference,
    paired_interval,
    paired_runs,
    summarize_records,
)
from edgereason.evaldata import DIFFICULTY, arith_problems, split_of

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- strategy specs ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("greedy", StrategySpec("greedy")),
        ("budget:16", StrategySpec("budget", budget=16)),
        ("budget:0", StrategySpec("budget", budget=0)),
        ("budget:auto", StrategySpec("budget", budget="auto")),
        ("budget:auto:2", StrategySpec("budget", budget="auto", agree=2)),
        ("sc:8", StrategySpec("sc", samples=8)),
        ("sc:adaptive", StrategySpec("sc", samples=16, adaptive=True)),
        ("sc:adaptive:32", StrategySpec("sc", samples=32, adaptive=True)),
        ("lorid", StrategySpec("lorid")),
        (" SC:4 ", StrategySpec("sc", samples=4)),
    ],
)
def test_parse_strategy(text: str, spec: StrategySpec) -> None:
    assert parse_strategy(text) == spec
    assert parse_strategy(spec.label) == spec  # labels parse back to the same spec


@pytest.mark.parametrize(
    "text",
    [
        *("", "beam", "greedy:1", "budget", "budget:-1", "budget:x", "sc:0", "sc:65", "sc:adaptive:0"),
        *("sc:1:2", "budget:auto:0", "budget:auto:11", "budget:auto:2:2", "budget:16:2"),
    ],
)
def test_parse_strategy_rejects(text: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        parse_strategy(text)
    assert err.value.param == "strategy"


def test_request_fields_per_strategy() -> None:
    s = EvalSettings(max_think=100, answer_tokens=20, seed=5)
    greedy = request_fields(parse_strategy("greedy"), s, 0)
    assert greedy["max_tokens"] == 120 and greedy["temperature"] == 0.0 and greedy["thinking"] is True
    assert "thinking_budget" not in greedy
    b16 = request_fields(parse_strategy("budget:16"), s, 0)
    assert b16["thinking_budget"] == 16 and b16["max_tokens"] == 36
    auto = request_fields(parse_strategy("budget:auto"), s, 0)
    assert auto["thinking_budget"] == "auto" and auto["auto_budget_cap"] == 100 and auto["max_tokens"] == 120
    assert "early_exit_agree" not in auto
    assert request_fields(parse_strategy("budget:auto:3"), s, 0)["early_exit_agree"] == 3
    sc = request_fields(parse_strategy("sc:adaptive"), s, 0)
    assert sc["self_consistency"] == {"samples": 16, "adaptive": "beta", "parallel": 4}
    assert request_fields(parse_strategy("lorid"), s, 0)["strategy"] == "lorid"
    seeds = {request_fields(parse_strategy("sc:8"), s, i)["seed"] for i in range(50)}
    assert len(seeds) == 50
    for text in ("greedy", "budget:16", "budget:auto", "budget:auto:2", "sc:8", "sc:adaptive", "lorid"):
        er.GenerationOptions.build(None, request_fields(parse_strategy(text), s, 3))  # all valid options
    with_adapter = EvalSettings(adapter="student")
    assert request_fields(parse_strategy("greedy"), with_adapter, 0)["adapter"] == "student"
    assert "adapter" not in request_fields(parse_strategy("lorid"), with_adapter, 0)


def test_settings_validate() -> None:
    with pytest.raises(InvalidRequestError):
        EvalSettings(prompt="no placeholder")
    with pytest.raises(InvalidRequestError):
        EvalSettings(answer_tokens=0)
    assert EvalSettings(prompt="Q: {question}\nA:").user_text("2+2?") == "Q: 2+2?\nA:"


# -- the arith generator -------------------------------------------------------------------------
def _evaluate(working: tuple[str, ...]) -> int:
    value = None
    for line in working:
        lhs, rhs = line.split(" = ")
        a, op, b = lhs.split()
        assert value is None or int(a) == value  # each step starts from the previous result
        value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert value == int(rhs)
    assert value is not None
    return value


def test_arith_is_deterministic_multistep_and_exact() -> None:
    problems = arith_problems(300, seed=0, split="test")
    assert problems == arith_problems(300, seed=0, split="test")
    assert problems[:50] == arith_problems(50, seed=0, split="test")  # a longer list extends a shorter one
    assert problems != arith_problems(300, seed=1, split="test")
    assert len({p.question for p in problems}) == 300
    for p in problems:
        assert 2 <= p.steps <= 4 and len(p.working) == p.steps and p.difficulty == DIFFICULTY[p.steps]
        assert set(p.kind.split("-")) <= {"add", "sub", "mul"} and len(p.kind.split("-")) == p.steps
        assert _evaluate(p.working) == int(p.answer) and int(p.answer) >= 0
        assert split_of(p.question) == "test"
    kinds = {op for p in problems for op in p.kind.split("-")}
    assert kinds == {"add", "sub", "mul"} and {p.difficulty for p in problems} == set(DIFFICULTY.values())


def test_arith_splits_are_disjoint_for_any_seeds() -> None:
    test = {p.question for p in arith_problems(300, seed=0, split="test")}
    dev = {p.question for p in arith_problems(300, seed=0, split="dev")}
    for seed in (0, 1, 7):
        train = {p.question for p in arith_problems(3000, seed=seed, split="train")}
        assert not train & test and not train & dev
    assert not dev & test


def test_arith_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        arith_problems(-1)
    with pytest.raises(ValueError):
        arith_problems(3, split="validation")  # type: ignore[arg-type]


# -- data loading --------------------------------------------------------------------------------
def test_load_arith_items() -> None:
    items = load_items("arith", split="test", limit=5)
    assert [i.id for i in items] == [f"arith-test-{k}" for k in range(5)]
    assert [i.question for i in items] == [p.question for p in arith_problems(5, split="test")]
    assert all(i.difficulty in DIFFICULTY.values() for i in items)
    assert len(load_items("arith", split="train")) == 300  # the default size
    with pytest.raises(InvalidRequestError):
        load_items("arith", split="validation")
    with pytest.raises(InvalidRequestError):
        load_items("arith", limit=0)


def test_load_jsonl_gsm8k_and_math_answers(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    rows: list[dict[str, Any]] = [
        {"question": "Janet has 3 ducks...", "answer": "She has 3 + 1,230 = 1,233 ducks.\n#### 1,233"},
        {"problem": "Simplify 2/4.", "solution": "We get $\\boxed{\\frac{1}{2}}$.", "level": "Level 2"},
        {"question": "How many?", "answer": 42, "id": "q3"},
        {"question": "What percent?", "answer": "\\boxed{12\\%}"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    items = load_items(str(path))
    assert [i.gold for i in items] == ["1233", "1/2", "42", "12%"]
    assert items[1].question == "Simplify 2/4." and items[1].difficulty == "Level 2"
    assert items[2].id == "q3" and items[0].id == "mixed-1"
    assert answers_equal("0.5", items[1].gold) and answers_equal("1233", items[0].gold)
    assert len(load_items(str(path), limit=2)) == 2


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"question": "q", "answer": "1"}\nnot json\n', ":2: not valid JSON"),
        ('{"answer": "1"}\n', ":1: no question"),
        ('{"question": "q"}\n', ":1: no answer"),
        ('["q", "1"]\n', "JSON object"),
        ("\n\n", "has no items"),
    ],
)
def test_load_jsonl_errors_name_the_line(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(InvalidRequestError, match=needle):
        load_items(str(path))


def test_load_missing_file() -> None:
    with pytest.raises(InvalidRequestError, match="not found"):
        load_items("/nonexistent/data.jsonl")


# -- summaries -----------------------------------------------------------------------------------
def test_wilson_interval_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(0, 4), (4, 4), (1, 10), (150, 300), (299, 300), (37, 80)]:
        ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        lo, hi = wilson_interval(k, n)
        assert lo == pytest.approx(ref.low, abs=1e-9) and hi == pytest.approx(ref.high, abs=1e-9)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def _rec(strategy: str, i: int, correct: bool, **kw: Any) -> ItemRecord:
    base: dict[str, Any] = {
        "strategy": strategy,
        "id": f"q{i}",
        "question": f"question {i}",
        "gold": str(i),
        "answer": str(i) if correct else "-1",
        "correct": correct,
        "reasoning_tokens": 10 * i,
        "answer_tokens": 5,
        "samples": 1,
        "wall_s": 0.5,
        "thinking_stopped_by": "model",
        "finish_reason": "stop",
        "difficulty": "easy" if i % 2 else "hard",
    }
    return ItemRecord(**{**base, **kw})


def _runs() -> list[StrategyRun]:
    greedy = [_rec("greedy", i, i < 3) for i in range(4)]
    sc = [_rec("sc:4", i, i < 2, samples=4, reasoning_tokens=40) for i in range(3)]
    sc.append(
        _rec(
            "sc:4",
            3,
            False,
            answer=None,
            samples=0,
            reasoning_tokens=0,
            answer_tokens=0,
            error="ContextOverflowError: too long",
            thinking_stopped_by=None,
            finish_reason="error",
        )
    )
    return [
        StrategyRun(parse_strategy("greedy"), greedy, wall_s=3.0, concurrency=16),
        StrategyRun(parse_strategy("sc:4"), sc, wall_s=6.0, concurrency=3),
    ]


def test_summarize_records() -> None:
    greedy, sc = (run.records for run in _runs())
    s = summarize_records(greedy, wall_s=3.0)
    assert s["n"] == 4 and s["correct"] == 3 and s["accuracy"] == 0.75
    assert s["ci95"] == [round(x, 4) for x in wilson_interval(3, 4)]
    assert s["mean_reasoning_tokens"] == 15.0 and s["mean_answer_tokens"] == 5.0 and s["mean_tokens"] == 20.0
    assert s["mean_samples"] == 1.0 and s["wall_s"] == 3.0 and s["mean_item_wall_s"] == 0.5
    assert s["stopped_by"] == {"model": 4} and s["errors"] == 0
    assert s["by_difficulty"] == {"easy": {"n": 2, "accuracy": 0.5}, "hard": {"n": 2, "accuracy": 1.0}}
    e = summarize_records(sc)
    # The failed item counts as wrong but stays out of the token and sample means.
    assert e["accuracy"] == 0.5 and e["errors"] == 1 and e["mean_samples"] == 4.0
    assert e["mean_reasoning_tokens"] == 40.0 and e["abstained"] == 0


def test_tool_cost_is_summarised_and_tabled() -> None:
    # Two items ran the tool (2 and 1 runs, 0.3 s in all) within 2.0 s of request time; one did not.
    recs = [
        _rec("greedy", 0, True, tool_calls=2, tool_wall_s=0.2, wall_s=1.0),
        _rec("greedy", 1, True, tool_calls=1, tool_wall_s=0.1, wall_s=1.0),
        _rec("greedy", 2, False, wall_s=1.0),
    ]
    s = summarize_records(recs)
    assert s["tool_calls_per_item"] == 1.0 and s["tool_s_per_call"] == 0.1
    assert s["tool_share_of_item_time"] == 0.1
    assert summarize_records(_runs()[0].records)["tool_calls_per_item"] == 0.0
    table = markdown_table({"strategies": {"greedy": s}})
    assert "Built-in tool: greedy 1.00 runs per problem, 100 ms per run, 10.0% of request time." in table
    assert "Built-in tool" not in markdown_table({"strategies": {"greedy": summarize_records(recs[2:])}})


def test_summary_files_round_trip_and_compare(tmp_path: Path) -> None:
    runs = _runs()
    summary = summarize(runs, {"model": "m"})
    assert list(summary["strategies"]) == ["greedy", "sc:4"]
    assert summary["strategies"]["sc:4"]["kind"] == "sc" and summary["strategies"]["sc:4"]["concurrency"] == 3
    results, summary_path = write_run(tmp_path / "a", runs, summary)
    assert load_summary(tmp_path / "a") == json.loads(summary_path.read_text())
    assert load_records(tmp_path / "a") == [r for run in runs for r in run.records]
    assert len(results.read_text().splitlines()) == 8

    other = summarize(
        [StrategyRun(parse_strategy("greedy"), [_rec("greedy", i, True) for i in range(4)], 1.0, 16)]
    )
    write_run(tmp_path / "b", runs[:1], other)
    table = compare_table(summary, other, "a", "b")
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["strategy", "a"] and set(lines[1]) <= {"-", " "}
    greedy_row = next(line for line in lines if line.startswith("greedy"))
    assert "75.0 [30.1, 95.4]" in greedy_row and "100.0 [51.0, 100.0]" in greedy_row
    assert greedy_row.rstrip().endswith("+25.0")
    sc_row = next(line for line in lines if line.startswith("sc:4"))
    assert sc_row.split()[-1] == "-"  # only in the first run
    # Paired on the same items (two models on one data set): b is right where a missed item 3.
    paired = paired_runs(load_records(tmp_path / "a"), [_rec("greedy", i, True) for i in range(4)], "a")
    assert set(paired) == {"greedy"} and paired["greedy"] is not None
    assert (paired["greedy"]["n"], paired["greedy"]["only_this_right"], paired["greedy"]["delta"]) == (
        4,
        1,
        0.25,
    )
    lo, hi = paired["greedy"]["ci95"]
    row = next(
        x for x in compare_table(summary, other, "a", "b", paired).splitlines() if x.startswith("greedy")
    )
    assert row.rstrip().endswith(f"+25.0 [{100 * lo:+.1f}, {100 * hi:+.1f}] (n 4)")

    with pytest.raises(InvalidRequestError, match="not found"):
        load_summary(tmp_path / "missing")


def test_paired_interval_matches_newcombes_method_10() -> None:
    # Altman et al., Statistics with Confidence (2000), table 6.2: 14 both, 5 only first, 0 only second, 22
    # neither; the book gives 0.0115 to 0.2265 for p_first - p_second.
    lo, hi = paired_interval(14, 0, 5, 22)
    assert (round(lo, 4), round(hi, 4)) == (0.0115, 0.2265)
    assert paired_interval(14, 5, 0, 22) == pytest.approx((-hi, -lo))
    lo, hi = paired_interval(30, 0, 0, 10)  # identical strategies: 0, with a margin for n = 40
    assert lo < 0 < hi < 0.1 and lo == pytest.approx(-hi)
    assert paired_interval(0, 0, 0, 0) == (-1.0, 1.0)


def test_each_strategy_is_held_against_the_baseline_on_the_same_items() -> None:
    greedy, sc = (run.records for run in _runs())
    vs = paired_difference(greedy, sc, "greedy")
    assert vs is not None
    # q0, q1 right under both; q2 only greedy; q3 neither (sc's error counts as wrong).
    assert vs["n"] == 4 and vs["only_baseline_right"] == 1 and vs["only_this_right"] == 0
    assert vs["delta"] == -0.25 and vs["accuracy"] == 0.5 and vs["baseline_accuracy"] == 0.75
    assert vs["ci95"][0] < -0.25 < vs["ci95"][1] and vs["ci95"][1] > 0
    # Tokens over q0..q2 (q3 failed): reasoning 120 vs 30, all tokens 135 vs 45.
    assert vs["reasoning_tokens_change"] == 3.0 and vs["tokens_change"] == 2.0
    assert paired_difference(greedy[:2], sc[2:], "greedy") is None  # no shared item

    summary = summarize(_runs())
    assert "vs_baseline" not in summary["strategies"]["greedy"]
    assert summary["strategies"]["sc:4"]["vs_baseline"] == vs
    against_sc = summarize(_runs(), baseline="sc:4")["strategies"]
    assert against_sc["greedy"]["vs_baseline"]["delta"] == 0.25 and "vs_baseline" not in against_sc["sc:4"]
    first = summarize([_runs()[1]])["strategies"]["sc:4"]  # no greedy: the first strategy is the baseline
    assert "vs_baseline" not in first
    table = markdown_table(summary).splitlines()
    assert "vs greedy, same items: Δ accuracy [95% CI]" in table[0]
    assert table[3].startswith("| sc:4 | 50.0") and "| -25.0 [" in table[3] and table[3].endswith("| +300% |")


def test_plots_are_png_files(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    runs = [
        *_runs(),
        StrategyRun(parse_strategy("budget:16"), [_rec("budget:16", i, i < 1) for i in range(4)], 1.0, 16),
        StrategyRun(
            parse_strategy("sc:adaptive"), [_rec("sc:adaptive", i, i < 2, samples=3) for i in range(4)], 1, 5
        ),
    ]
    paths = write_plots(summarize(runs), tmp_path)
    assert [p.name for p in paths] == ["budgets.png", "self_consistency.png", "strategies.png"]
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000
    (tmp_path / "g").mkdir()
    assert [p.name for p in write_plots(summarize(runs[:1]), tmp_path / "g")] == ["strategies.png"]
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["strategies.png"]


def test_counter_progress_without_a_terminal() -> None:
    out = io.StringIO()
    bar = CounterProgress(20, "greedy", stream=out)
    for _ in range(20):
        bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "greedy: 2/20" and lines[-1] == "greedy: 20/20" and len(lines) == 10


# -- on the engine (no generation) ---------------------------------------------------------------
def test_lorid_without_adapters_fails_before_any_request(engine: er.Engine) -> None:
    with pytest.raises(InvalidRequestError, match="--adapter ir=PATH"):
        check_strategy(engine, parse_strategy("lorid"), EvalSettings())
    with pytest.raises(er.UnknownAdapterError):
        check_strategy(engine, parse_strategy("greedy"), EvalSettings(adapter="nope"))


def test_concurrency_follows_the_jobs_slots(engine: er.Engine) -> None:
    s = EvalSettings()
    assert concurrency_for(engine, parse_strategy("greedy"), s) == 16
    assert concurrency_for(engine, parse_strategy("budget:auto"), s) == 8  # a probe beside each
    assert concurrency_for(engine, parse_strategy("sc:4"), s) == 4  # 4 samples, the prompt is sample 0's
    assert concurrency_for(engine, parse_strategy("sc:adaptive"), s) == 3  # 4 at a time + the prompt


def test_a_refused_item_is_recorded_not_fatal(engine: er.Engine) -> None:
    items = [EvalItem("long", "word " * 3000, "1"), EvalItem("short", "What is 2 + 2?", "4")]
    run = run_strategy(engine, items, parse_strategy("budget:0"), EvalSettings(answer_tokens=4), no_progress)
    long, short = run.records
    assert long.error is not None and long.error.startswith("ContextOverflowError") and not long.correct
    assert short.error is None and short.reasoning_tokens == 0 and short.thinking_stopped_by == "budget"


# -- resuming an interrupted run -----------------------------------------------------------------
def test_resumed_strategy_samples_what_the_whole_run_sampled(engine: er.Engine) -> None:
    """Items keep their seeds when earlier ones are skipped: a resumed SC run votes on the same samples."""
    items = load_items("arith", limit=3)
    spec, s = parse_strategy("sc:2"), EvalSettings(max_think=24, answer_tokens=8)
    whole = run_strategy(engine, items, spec, s, no_progress)
    seen: list[str] = []
    done = {whole.records[1].id: whole.records[1]}
    resumed = run_strategy(
        engine, items, spec, s, no_progress, done=done, on_record=lambda r: seen.append(r.id), prior_wall_s=5
    )
    assert sorted(seen) == [items[0].id, items[2].id] and resumed.wall_s > 5
    assert resumed.records[1] is whole.records[1]
    for a, b in zip(whole.records, resumed.records, strict=True):
        assert (a.id, a.answer, a.reasoning_tokens) == (b.id, b.answer, b.reasoning_tokens)
        assert a.extra["sample_answers"] == b.extra["sample_answers"]


def test_previous_work_is_read_back_and_checked(tmp_path: Path) -> None:
    from edgereason.eval.resume import PARTIAL_FILE, PartialLog, load_previous, merge_runs

    items = [EvalItem(f"q{i}", f"question {i}", str(i)) for i in range(4)]
    meta = {"model": "m", "files": {"model": "ab12"}, "items": 4, "settings": {"max_think": 8}}
    runs = _runs()  # greedy finished (4 items); sc:4 is dropped below, as if interrupted
    write_run(tmp_path, runs[:1], summarize(runs[:1], meta))
    log = PartialLog(tmp_path)
    log.start(prior_wall_s=2.0)
    for rec in runs[1].records[:2]:
        log(rec)
    log.close()  # an interrupted run: the file stays
    with (tmp_path / PARTIAL_FILE).open("a") as fh:
        fh.write('{"record": {"strategy": "sc:4", "id"')  # a torn last line
    prev = load_previous(tmp_path, meta, items)
    assert list(prev.finished) == ["greedy"] and prev.finished["greedy"].records == runs[0].records
    assert prev.finished["greedy"].wall_s == 3.0 and prev.finished["greedy"].concurrency == 16
    assert list(prev.partial["sc:4"]) == ["q0", "q1"] and prev.partial_wall_s["sc:4"] >= 2.0
    assert "greedy" in prev.describe() and "sc:4 (2 items)" in prev.describe()
    order = merge_runs(
        [parse_strategy("sc:4"), parse_strategy("greedy")], {"greedy": runs[0], "sc:4": runs[1]}
    )
    assert [r.spec.label for r in order] == ["sc:4", "greedy"]

    for key, value in [("files", {"model": "cd34"}), ("settings", {"max_think": 16}), ("items", 5)]:
        with pytest.raises(InvalidRequestError, match=f"differs in {key}") as err:
            load_previous(tmp_path, {**meta, key: value}, items)
        assert err.value.param == "resume"
    # Interrupted during the first strategy: the summary (written before any work) has no strategies yet.
    write_run(tmp_path, [], summarize([], meta))
    first = load_previous(tmp_path, meta, items)
    assert first.finished == {} and list(first.partial["sc:4"]) == ["q0", "q1"]
    # The table shows a run as it stands: the running strategy with its finished items, n as "k of N".
    write_run(tmp_path, runs[:1], summarize(runs[:1], meta))
    from edgereason.eval.resume import load_run

    got_meta, now = load_run(tmp_path)
    assert got_meta == meta and [(r.spec.label, len(r.records)) for r in now] == [("greedy", 4), ("sc:4", 2)]
    rows = markdown_table(summarize(now, got_meta)).splitlines()
    assert rows[3].startswith("| sc:4 | 100.0") and "| 2 of 4 |" in rows[3] and "(n 2)" in rows[3]
    (tmp_path / "summary.json").unlink()
    with pytest.raises(InvalidRequestError, match="cannot tell which run"):
        load_previous(tmp_path, meta, items)
    with PartialLog(tmp_path):  # a fresh run starts the file afresh and removes it when done
        assert (tmp_path / PARTIAL_FILE).read_text() == ""


def test_finishing_a_strategy_keeps_another_strategys_partial_items(tmp_path: Path) -> None:
    """Interrupted in sc:4, resumed with greedy first: greedy's end must not drop sc:4's items."""
    from edgereason.eval.resume import PARTIAL_FILE, PartialLog, load_previous

    items = [EvalItem(f"q{i}", f"question {i}", str(i)) for i in range(4)]
    meta = {"model": "m", "items": 4}
    greedy, sc = _runs()
    write_run(tmp_path, [], summarize([], meta))
    log = PartialLog(tmp_path)
    log(sc.records[0])
    log.close()
    with (tmp_path / PARTIAL_FILE).open("a") as fh:
        fh.write('{"record": {"strategy": "sc:4"')  # torn, no newline
    with PartialLog(tmp_path, resume=True) as log:
        for rec in greedy.records:
            log(rec)
        assert (
            len(load_previous(tmp_path, meta, items).partial["greedy"]) == 4
        )  # the torn line swallowed none
        log.finish("greedy")
    prev = load_previous(tmp_path, meta, items)
    assert list(prev.partial) == ["sc:4"] and list(prev.partial["sc:4"]) == ["q0"]
    with PartialLog(tmp_path, resume=True) as log:
        log(sc.records[1])
        log.finish("sc:4")
    assert not (tmp_path / PARTIAL_FILE).exists()  # nothing left: the file goes
    assert not (tmp_path / PARTIAL_FILE).exists()
    assert load_previous(tmp_path / "empty", meta, items).finished == {}


def test_jsonl_ids_must_be_unique(tmp_path: Path) -> None:
    path = tmp_path / "dup.jsonl"
    path.write_text(
        '{"id": "a", "question": "q", "answer": "1"}\n{"id": "a", "question": "r", "answer": "2"}\n'
    )
    with pytest.raises(InvalidRequestError, match=":2: id 'a' repeats line 1"):
        load_items(str(path))


# -- end to end: the command as a user runs it --------------------------------------------------
def test_eval_end_to_end_on_the_embedded_model(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "edgereason", "eval", "--data", "arith", "--limit", "4"]
    cmd += ["--strategy", "greedy", "--strategy", "sc:2", "--strategy", "budget:16"]
    cmd += ["--max-think", "48", "--answer-tokens", "16", "--out", str(out), "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "budget:16: accuracy" in r.stdout and "wrote" in r.stdout

    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [x["strategy"] for x in records] == ["greedy"] * 4 + ["sc:2"] * 4 + ["budget:16"] * 4
    items = load_items("arith", split="dev", limit=4)  # the CLI's default split: dev
    for rec in records:
        assert rec["error"] is None and rec["gold"] == items[int(rec["id"].rsplit("-", 1)[1])].gold
        assert rec["correct"] == (rec["answer"] is not None and answers_equal(rec["answer"], rec["gold"]))
        assert rec["wall_s"] > 0 and rec["thinking_stopped_by"] in ("model", "budget", "length")
        assert set(rec) >= {"answer", "reasoning_tokens", "answer_tokens", "samples", "difficulty"}
    for rec in records[4:8]:
        assert rec["samples"] == 2 and len(rec["extra"]["sample_answers"]) == 2
    for rec in records[8:]:
        assert rec["samples"] == 1 and rec["reasoning_tokens"] <= 16
    for rec in records[:4]:
        assert rec["reasoning_tokens"] + rec["answer_tokens"] <= 64

    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["items"] == 4 and summary["meta"]["model"] == "default"
    assert summary["meta"]["split"] == "dev" and "frozen" not in summary["meta"]
    assert summary["meta"]["code"]["files"] == package_digest()
    for label in ("greedy", "sc:2", "budget:16"):
        row = summary["strategies"][label]
        hits = sum(x["correct"] for x in records if x["strategy"] == label)
        assert row["n"] == 4 and row["correct"] == hits and row["accuracy"] == hits / 4
        assert row["ci95"] == [round(x, 4) for x in wilson_interval(hits, 4)] and row["wall_s"] > 0
    assert summary["strategies"]["sc:2"]["mean_samples"] == 2.0

    for name in ("budgets.png", "self_consistency.png", "strategies.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    table = (out / "table.md").read_text().splitlines()
    assert (
        table[0].startswith("| strategy | accuracy % [95% CI]")
        and len([x for x in table if x.startswith("| ")]) == 4
    )
    shown = subprocess.run(
        [sys.executable, "-m", "edgereason", "eval", "--table", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0 and shown.stdout.splitlines() == table
    table_cmd = [sys.executable, "-m", "edgereason", "eval", "--table", str(out), "--baseline"]
    against = subprocess.run([*table_cmd, "sc:2"], capture_output=True, text=True, timeout=120)
    assert against.returncode == 0 and "vs sc:2, same items" in against.stdout
    unknown = subprocess.run([*table_cmd, "sc:9"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "--baseline sc:9 is not among" in unknown.stderr
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- edgereason eval table -->\nold\n<!-- /edgereason eval table -->\ntail\n")
    into = [sys.executable, "-m", "edgereason", "eval", "--table", str(out), "--into", str(readme)]
    assert subprocess.run(into, capture_output=True, text=True, timeout=120).returncode == 0
    text = readme.read_text()
    assert "old" not in text and "\n".join(table) in text and text.endswith("-->\ntail\n")
    readme.write_text("no markers\n")
    refused = subprocess.run(into, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "no '<!-- edgereason eval table -->'" in refused.stderr
    assert readme.read_text() == "no markers\n"

    cmp = subprocess.run(
        [sys.executable, "-m", "edgereason", "eval", "--compare", str(out), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cmp.returncode == 0, cmp.stderr
    assert cmp.stdout.splitlines()[0].startswith("strategy") and "+0.0" in cmp.stdout

    # Resuming a finished run decodes nothing and rewrites the same records; another model is refused.
    again = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "finished strategies: greedy, sc:2, budget:16" in again.stdout
    assert [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()] == records
    other = [*cmd[:-7], "--max-think", "40", "--answer-tokens", "16", "--out", str(out), "--resume"]
    refused = subprocess.run(other, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "differs in settings" in refused.stderr


def test_eval_usage_errors_are_one_line() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgereason", "eval", *args], capture_output=True, text=True, timeout=120
        )

    bad = run("--strategy", "beam", "--out", "x")
    assert bad.returncode == 2 and "unknown strategy 'beam'" in bad.stderr
    missing = run("--strategy", "greedy")
    assert missing.returncode == 2 and "--out DIR" in missing.stderr
    twice = run("--strategy", "greedy", "--strategy", "greedy", "--out", "x")
    assert twice.returncode == 2 and "listed twice" in twice.stderr
    no_run = run("--compare", "/nonexistent/a", "/nonexistent/b")
    assert no_run.returncode == 2 and "summary.json not found" in no_run.stderr


# -- the distilled student's training data (convert/distill.py; no torch needed) ------------------
def test_teacher_traces_read_back_as_the_gold_answer() -> None:
    from edgereason.answers import extract_answer, last_reasoning_answer
    from edgereason.chat.reasoning import CLOSE_TAG
    from edgereason.convert.distill import knowledge_text, teacher_trace

    for p in arith_problems(200, seed=3, split="train"):
        trace = teacher_trace(p)
        reasoning, answer = trace.split(CLOSE_TAG)
        assert trace.count(CLOSE_TAG) == 1 and "\\boxed{" + p.answer + "}" in answer
        found = extract_answer(trace)
        assert found is not None and found.source == "boxed" and found.normalized == p.answer
        check = last_reasoning_answer(reasoning)
        assert check is not None and check.normalized == p.answer  # the thinking ends on the answer
        paragraphs = reasoning.strip().split("\n\n")
        assert len(paragraphs) == p.steps + 2 and paragraphs[-1].startswith("Wait")  # budget cut points
        plan = knowledge_text(p)
        assert "=" not in plan and len(plan.splitlines()) == p.steps + 2


def test_role_examples_use_the_lorid_prompts() -> None:
    from edgereason.convert.distill import ROLES, knowledge_text, role_examples, teacher_trace
    from edgereason.options import DEFAULT_LORID_PROMPTS

    problems = arith_problems(40, seed=0, split="train")
    by_role = {role: role_examples(role, problems, seed=0, open_think_share=0.25) for role in ROLES}
    p = problems[0]
    assert by_role["ir"][0].user.startswith(DEFAULT_LORID_PROMPTS["ir"]) and by_role["ir"][
        0
    ].target == teacher_trace(p)
    assert by_role["kg"][0].target.startswith("</think>") and by_role["kg"][0].target.endswith(
        knowledge_text(p)
    )
    assert by_role["dr"][0].user.endswith("Knowledge: " + knowledge_text(p))
    student = by_role["student"]
    opened = [ex for ex in student if not ex.think_open]
    assert 0 < len(opened) < len(student) and all(ex.target.startswith("<think>\n") for ex in opened)
    assert all(ex.user in {q.question for q in problems} for ex in student)
    with pytest.raises(ValueError):
        role_examples("critic", problems)


def test_training_reports_from_the_log(tmp_path: Path) -> None:
    from edgereason.convert.distill import DistillSettings, measure_existing, reports_from_log
    from edgereason.errors import EdgeReasonError

    log = "\n".join(
        [
            "2026-11-29 06:10:34,814 training student on 360 examples",
            "2026-11-29 06:10:40,000 step 1/90 loss 1.5459 (5.2 s)",
            "Loading weights: 100%|####| 272/272",
            "2026-11-29 06:55:00,000 step 90/90 loss 0.0281 (2702.3 s)",
            "2026-11-29 06:55:10,000 training kg on 360 examples",
            "2026-11-29 06:55:12,000 step 1/90 loss 1.7264 (2.5 s)",
        ]
    )
    reports = reports_from_log(log)
    assert reports["student"] == {
        "examples": 360,
        "steps": 90,
        "losses_logged": {1: 1.5459, 90: 0.0281},
        "train_s": 2702.3,
        "loss_first": 1.5459,
        "loss_last": 0.0281,
        "source": "training log",
    }
    assert reports["kg"]["loss_last"] == 1.7264 and list(reports) == ["student", "kg"]
    with pytest.raises(EdgeReasonError, match="student.gguf not found"):
        measure_existing(tmp_path, DistillSettings(), ["student"])
