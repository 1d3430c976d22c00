"""What the evaluation counts and records: every generated token (early-exit probes included), the
code version and frozen configuration in a run's identity, dev/test protocol, and the analysis of a
results folder."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import edgereason as er
from edgereason.backends.base import Capabilities
from edgereason.errors import InvalidRequestError
from edgereason.eval import (
    EvalSettings,
    ItemRecord,
    StrategySpec,
    load_items,
    parse_strategy,
    run_strategy,
    summarize,
    write_run,
)
from edgereason.eval.analysis import (
    comparisons,
    confident_half,
    holm,
    mcnemar_exact,
    oracle,
    replay_stopping,
    ties,
    training_overlap,
)
from edgereason.eval.data import EvalItem
from edgereason.eval.progress import no_progress
from edgereason.eval.protocol import TUNED, code_version, frozen_config, package_digest
from edgereason.eval.resume import PartialLog, load_previous
from edgereason.eval.runner import StrategyRun, _record
from edgereason.evaldata import question_template, training_draws
from edgereason.result import ChatResult, Choice, Usage
from edgereason.strategies.budget import DEFAULT_PROBE_PREFIXES
from edgereason.strategies.voting import ESCStopping, NoStopping

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


# -- analysis of a results folder -----------------------------------------------------------------
def _sc_rec(
    label: str, i: int, gold: str, answers: list[str | None], confs: list[float], answer: str | None
) -> ItemRecord:
    samples = [{"index": k, "answer": a, "confidence": c} for k, (a, c) in enumerate(zip(answers, confs))]
    return ItemRecord(
        strategy=label,
        id=f"q{i}",
        question=f"question {i}",
        gold=gold,
        answer=answer,
        correct=answer == gold,
        reasoning_tokens=10 * len(answers),
        answer_tokens=len(answers),
        samples=len(answers),
        wall_s=0.1,
        thinking_stopped_by="model",
        finish_reason="stop",
        extra={"sample_answers": samples},
    )


def _plain(label: str, i: int, gold: str, answer: str | None, tokens: int = 10) -> ItemRecord:
    return ItemRecord(
        strategy=label,
        id=f"q{i}",
        question=f"question {i}",
        gold=gold,
        answer=answer,
        correct=answer == gold,
        reasoning_tokens=tokens,
        answer_tokens=1,
        samples=1,
        wall_s=0.1,
        thinking_stopped_by="model",
        finish_reason="stop",
    )


def _sc_run() -> StrategyRun:
    recs = [
        # q0: 1 1 2 2 -> tie (2 vs 2); the more confident half (the 2s) says 2, the gold.
        _sc_rec("sc:4", 0, "2", ["1", "1", "2", "2"], [0.1, 0.2, 0.9, 0.8], "1"),
        # q1: unanimous 5, right.
        _sc_rec("sc:4", 1, "5", ["5", "5", "5", "5"], [0.5, 0.5, 0.5, 0.5], "5"),
        # q2: 7 7 7 3; gold 3: some sample right, vote wrong.
        _sc_rec("sc:4", 2, "3", ["7", "7", "7", "3"], [0.5, 0.5, 0.5, 0.9], "7"),
        # q3: nothing right.
        _sc_rec("sc:4", 3, "9", ["1", None, "1", "4"], [0.5, 0.0, 0.5, 0.5], "1"),
    ]
    return StrategyRun(parse_strategy("sc:4"), recs, 1.0, 1)


def test_oracle_ties_and_confident_half_by_hand() -> None:
    sc = _sc_run()
    greedy = StrategyRun(
        parse_strategy("greedy"),
        [
            _plain("greedy", i, g, a)
            for i, (g, a) in enumerate([("2", "2"), ("5", "4"), ("3", "1"), ("9", "1")])
        ],
        1.0,
        1,
    )
    o = oracle([greedy, sc])
    assert o["any_strategy"] == {"n": 4, "right": 2, "share": 0.5}  # q0 (greedy) and q1 (sc)
    assert o["any_sample"] == {"sc:4": {"n": 4, "any_sample_right": 3, "share": 0.75}}
    assert ties([greedy, sc]) == {"sc:4": {"n": 4, "tied": 1}}
    half = confident_half([sc])["sc:4"]
    # vote: q1 only; weighted: q0 (1.7 vs 0.3) and q1; confident half: q0 (2,2), q1, q2 (3 at 0.9 and a 7).
    assert half == {"n": 4, "vote": 0.25, "weighted_vote": 0.5, "confident_half_vote": 0.75}


def test_stopping_rule_replay_by_hand() -> None:
    report = replay_stopping(_sc_run(), [("esc window 2", ESCStopping(window=2)), ("none", NoStopping())])
    assert report["n"] == 4 and report["full_vote_accuracy"] == 0.5  # q0's tie goes to the confident 2
    esc = report["rules"]["esc window 2"]
    # q0: window [1,1] unanimous -> 2 samples, vote 1 (changed, wrong); q1: 2 samples; q2: 2 (7,7); q3: 4.
    assert esc == {"mean_samples": 2.5, "fewer_samples": 1.6, "vote_changed": 0.25, "accuracy": 0.25}
    assert report["rules"]["none"] == {
        "mean_samples": 4.0,
        "fewer_samples": 1.0,
        "vote_changed": 0.0,
        "accuracy": 0.5,
    }


def test_mcnemar_and_holm_by_hand() -> None:
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0
    got = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005})
    assert {k: v["survives"] for k, v in got.items()} == {"d": True, "a": True, "c": False, "b": False}
    assert [got[k]["p_holm"] for k in "dacb"] == pytest.approx([0.02, 0.03, 0.06, 0.06])


def test_comparisons_mark_what_survives_holm() -> None:
    n = 40
    greedy = [_plain("greedy", i, "1", "1" if i < 10 else "0") for i in range(n)]
    big = [_plain("big", i, "1", "1" if i < 22 else "0") for i in range(n)]  # 12 only-this, 0 only-greedy
    small = [_plain("small", i, "1", "1" if i < 13 else "0") for i in range(n)]  # 3 vs 0: p 0.25
    runs = [
        StrategyRun(StrategySpec("greedy"), greedy, 1, 1),
        StrategyRun(StrategySpec("sc", samples=8), big, 1, 1),
        StrategyRun(StrategySpec("sc", samples=4), small, 1, 1),
    ]
    for run in runs:
        for i, r in enumerate(run.records):
            run.records[i] = ItemRecord.from_dict({**r.to_dict(), "strategy": run.spec.label})
    cmp = comparisons(runs)
    assert cmp is not None and cmp["baseline"] == "greedy"
    assert cmp["strategies"]["sc:8"]["survives"] and cmp["strategies"]["sc:8"]["p"] == pytest.approx(
        2 / 4096, rel=1e-3
    )
    assert not cmp["strategies"]["sc:4"]["survives"] and cmp["strategies"]["sc:4"]["p"] == 0.25


def test_template_overlap_reproduces_the_issue_figures() -> None:
    """129 of the 300 test templates appear in the training set (all four adapters' problems) and 574 of
    the 914 step equations in its traces; 84 templates in the student's own 360 problems."""
    items = load_items("arith", split="test", limit=300)
    recs = [_plain("greedy", 0, it.gold, it.gold if i % 2 else None) for i, it in enumerate(items)]
    recs = [
        ItemRecord.from_dict({**r.to_dict(), "id": it.id, "question": it.question})
        for r, it in zip(recs, items)
    ]
    held = training_overlap([StrategyRun(StrategySpec("greedy"), recs, 1, 1)])
    assert held is not None
    assert held["templates_seen"] == {"student": 84, "all_roles": 129}
    assert (held["equations"], held["equations_seen"]) == (914, 574)
    row = held["by_strategy"]["greedy"]["all_roles"]
    assert row["seen"]["n"] == 129 and row["unseen"]["n"] == 171
    seen = [
        r
        for r in recs
        if question_template(r.question)
        in {
            question_template(p.question)
            for ps in training_draws(360, ["student", "ir", "kg", "dr"]).values()
            for p in ps
        }
    ]
    assert row["seen"]["accuracy"] == round(sum(r.correct for r in seen) / 129, 4)


def test_analyze_cli_on_a_results_folder(tmp_path: Path) -> None:
    sc = _sc_run()
    greedy = StrategyRun(
        parse_strategy("greedy"),
        [_plain("greedy", i, r.gold, r.gold if i == 0 else "0", 12) for i, r in enumerate(sc.records)],
        1.0,
        1,
    )
    lorid = StrategyRun(
        parse_strategy("lorid"),
        [_plain("lorid", i, r.gold, r.gold if i < 3 else "0", 40) for i, r in enumerate(sc.records)],
        1.0,
        1,
    )
    runs = [greedy, sc, lorid]
    write_run(tmp_path, runs, summarize(runs, {"data": "x", "items": 4}))
    r = subprocess.run(
        [sys.executable, "-m", "edgereason", "eval", "--analyze", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "oracle: some strategy right on 3 of 4 items (75.0%)" in r.stdout
    assert "sc:4: some sample right on 3 of 4 (75.0%); 1 votes tied for first" in r.stdout
    report = json.loads((tmp_path / "analysis.json").read_text())
    assert report["held_out"] is None  # not arith items
    assert set(report["comparisons"]["strategies"]) == {"sc:4", "lorid"}
    lv = report["lorid_vs_sc"]
    # sc:4 has 44 tokens per item, 11 per sample; LoRID 41: the replay takes the first 4 samples.
    assert lv["nearest"]["strategy"] == "sc:4" and lv["replay"]["samples"] == 4
    assert lv["nearest"]["only_lorid_right"] == 2 and lv["nearest"]["only_sc_right"] == 0


# -- protocol: code version, frozen configuration, resuming ------------------------------------------
def test_code_version_hashes_the_package_files(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    (pkg / "notes.txt").write_text("not code")
    first = package_digest(pkg)
    (pkg / "notes.txt").write_text("changed, still not code")
    assert package_digest(pkg) == first
    (pkg / "sub" / "b.py").write_text("y = 3\n")
    assert package_digest(pkg) != first
    version = code_version(pkg)
    assert version["git"] is None and version["files"] == package_digest(pkg)  # not a git checkout
    here = code_version()
    assert here["files"] == package_digest() and len(here["files"]) == 16
    assert here["git"] is not None  # the tests run from the repository


def test_resuming_under_other_code_is_refused_unless_allowed(tmp_path: Path) -> None:
    items = [EvalItem(f"q{i}", f"question {i}", str(i)) for i in range(2)]
    meta = {"model": "m", "items": 2, "code": {"version": "0.1.0", "git": "abc", "files": "1111"}}
    write_run(tmp_path, [], summarize([], meta))
    assert load_previous(tmp_path, meta, items).earlier_code == []  # same code: nothing to record
    # A README-only commit changes git describe, not the package: the same code.
    assert load_previous(tmp_path, {**meta, "code": {**meta["code"], "git": "abd"}}, items).earlier_code == []
    other = {**meta, "code": {"version": "0.1.0", "git": "abc-dirty", "files": "2222"}}
    with pytest.raises(
        InvalidRequestError, match="other code .*abc \\(files 1111\\).*--allow-code-change"
    ) as err:
        load_previous(tmp_path, other, items)
    assert err.value.param == "resume"
    prev = load_previous(tmp_path, other, items, allow_code_change=True)
    assert prev.earlier_code == [meta["code"]]
    unrecorded = {k: v for k, v in meta.items() if k != "code"}  # a run from before code versions
    write_run(tmp_path, [], summarize([], unrecorded))
    with pytest.raises(InvalidRequestError, match="unrecorded"):
        load_previous(tmp_path, meta, items)


def test_a_test_runs_configuration_is_frozen(tmp_path: Path) -> None:
    specs = [parse_strategy("greedy"), parse_strategy("budget:auto"), parse_strategy("budget:auto:trial")]
    frozen = frozen_config(specs, EvalSettings())
    assert set(frozen) == {"greedy", "budget:auto", "budget:auto:trial"} and "tuned" not in frozen["greedy"]
    tuned = frozen["budget:auto"]["tuned"]
    assert (
        tuned["transition_markers"] == ["Wait", "Alternatively", "Hmm"]
        and tuned["early_exit_threshold"] == 0.95
    )
    assert frozen["budget:auto:trial"]["tuned"]["early_exit_answer"] == "trial"
    assert frozen["budget:auto"]["options"] != frozen["budget:auto:trial"]["options"]
    assert frozen_config(specs, EvalSettings()) == frozen  # deterministic (seeds left out)
    assert frozen_config(specs[:1], EvalSettings(max_think=100))["greedy"] != frozen["greedy"]
    # Resuming a test run: a strategy both runs list must be configured alike; a new strategy is fine.
    items = [EvalItem("q0", "question 0", "0")]
    meta = {"model": "m", "items": 1, "frozen": frozen}
    write_run(tmp_path, [], summarize([], meta))
    more = {**meta, "frozen": {**frozen, "sc:8": {"options": "x"}}}
    assert load_previous(tmp_path, more, items).finished == {}
    changed = {**meta, "frozen": {**frozen, "budget:auto": {"options": "y"}}}
    with pytest.raises(InvalidRequestError, match="differs in frozen"):
        load_previous(tmp_path, changed, items)
    for name, entry in TUNED.items():
        assert entry["chosen_on"] in ("dev", "test[:60]", "not swept"), name


def test_option_sets_a_generation_option_on_every_request_and_in_the_identity(tmp_path: Path) -> None:
    """``eval --option KEY=VALUE`` (how a dev sweep varies a setting): on every request, over the
    strategy's own fields; in the settings (so a resumed run with another value is refused) and in a test
    run's frozen configuration; bad keys, values and strategy-owned fields refused before any work."""
    from edgereason.eval.specs import request_fields

    markers = ["Wait", "\n\n"]
    swept = EvalSettings(options=(("early_exit_threshold", 0.99), ("transition_markers", markers)))
    for label in ("greedy", "budget:auto:trial", "sc:4"):
        fields = request_fields(parse_strategy(label), swept, 3)
        assert fields["early_exit_threshold"] == 0.99 and fields["transition_markers"] == markers
    assert swept.describe()["options"] == {"early_exit_threshold": 0.99, "transition_markers": markers}
    assert "options" not in EvalSettings().describe()
    tuned = frozen_config([parse_strategy("budget:auto")], swept)["budget:auto"]["tuned"]
    assert tuned["early_exit_threshold"] == 0.99 and tuned["transition_markers"] == markers
    for bad, match in (
        ((("bogus", 1),), "unknown option"),
        ((("early_exit_threshold", 2),), "less than or equal"),
        ((("seed", 3),), "the strategy sets it"),
        ((("thinking_budget", 5),), "the strategy sets it"),
    ):
        with pytest.raises(InvalidRequestError, match=match):
            EvalSettings(options=bad)
    # The CLI: JSON values, bare strings, and a one-line error.
    from edgereason.cli.eval_cmd import _option

    assert _option('transition_markers=["Wait","\\n\\n"]') == ("transition_markers", markers)
    assert _option("early_exit_confidence=min") == ("early_exit_confidence", "min")
    cmd = [
        sys.executable,
        "-m",
        "edgereason",
        "eval",
        "--split",
        "dev",
        "--limit",
        "1",
        "--strategy",
        "greedy",
    ]
    proc = subprocess.run(
        [*cmd, "--option", "early_exit_threshold=7", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "early_exit_threshold" in proc.stderr and not (tmp_path / "x").exists()
    # A sweep run end to end on the embedded model: the option reaches the run's settings, and resuming
    # that folder with another value is refused.
    out = tmp_path / "swept"
    sweep = [*cmd[:-1], "budget:auto", "--max-think", "32", "--no-plots", "--quiet", "--out", str(out)]
    run = subprocess.run(
        [*sweep, "--option", "early_exit_threshold=0.99", "--option", "early_exit_confidence=min"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    settings = json.loads((out / "summary.json").read_text())["meta"]["settings"]
    assert settings["options"] == {"early_exit_confidence": "min", "early_exit_threshold": 0.99}
    other = subprocess.run(
        [*sweep, "--option", "early_exit_threshold=0.9", "--resume"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert other.returncode != 0 and "settings" in other.stderr, other.stderr[-2000:]


class _ClockedEngine:
    """Answers each question after ``delay`` seconds (a stand-in whose only job is to take time)."""

    parallel = 1
    max_queue = 1
    capabilities = Capabilities(max_sequences=1, n_ctx=1024, n_batch=512)
    adapter_names: list[str] = []

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def sequences_per_request(self, messages: Any, options: Any) -> int:
        return 1

    def chat(self, messages: Any, **fields: Any) -> ChatResult:
        time.sleep(self.delay)
        choice = Choice(0, "\\boxed{1}", "", "stop", 3, 0, answer="1", thinking_stopped_by="model")
        return ChatResult([choice], Usage(prompt_tokens=5, completion_tokens=3))


def test_wall_time_of_a_resumed_run_excludes_the_pause(tmp_path: Path) -> None:
    """An interrupted strategy resumed after a pause: its wall time is the two runs' active time."""
    items = [EvalItem(f"q{i}", f"question {i}", "1") for i in range(4)]
    engine, spec = _ClockedEngine(0.2), parse_strategy("greedy")
    meta = {"model": "m", "items": 4}
    write_run(tmp_path, [], summarize([], meta))
    with PartialLog(tmp_path) as log:
        log.start()
        run_strategy(engine, items[:2], spec, EvalSettings(), no_progress, on_record=log)  # type: ignore[arg-type]
    time.sleep(1.0)  # the pause between the runs
    prev = load_previous(tmp_path, meta, items)
    first = prev.partial_wall_s["greedy"]
    assert 0.35 <= first < 0.9 and set(prev.partial["greedy"]) == {"q0", "q1"}
    with PartialLog(tmp_path, resume=True) as log:
        log.start(first)
        run = run_strategy(
            engine,
            items,
            spec,
            EvalSettings(),
            no_progress,
            done=prev.partial["greedy"],
            on_record=log,  # type: ignore[arg-type]
            prior_wall_s=first,
        )
    assert 0.75 <= run.wall_s < 1.5  # four items of 0.2 s, not the 1 s pause
    assert summarize([run])["strategies"]["greedy"]["wall_s"] == round(run.wall_s, 2)


def test_test_split_run_records_frozen_config_and_refuses_other_code(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "edgereason",
        "eval",
        "--split",
        "test",
        "--limit",
        "2",
        "--strategy",
        "greedy",
    ]
    cmd += [
        "--max-think",
        "8",
        "--answer-tokens",
        "4",
        "--threads",
        "2",
        "--out",
        str(out),
        "--quiet",
        "--no-plots",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "test split: its configuration and code version are frozen" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    meta = summary["meta"]
    # (Other work may edit the package while this runs: the version is checked by shape, not by value.)
    assert meta["split"] == "test" and set(meta["code"]) == {"version", "git", "files"}
    assert len(meta["code"]["files"]) == 16 and meta["code"]["git"]
    assert meta["frozen"] == frozen_config(
        [parse_strategy("greedy")], EvalSettings(max_think=8, answer_tokens=4)
    )
    assert "Code " in (out / "table.md").read_text()
    # The folder now claims other code: resuming is refused with one clear line, then allowed on request.
    meta["code"] = {**meta["code"], "files": "0000000000000000", "git": "v0-old"}
    (out / "summary.json").write_text(json.dumps(summary))
    r = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "v0-old (files 0000000000000000)" in r.stderr and "Traceback" not in r.stderr
    assert "--allow-code-change" in r.stderr
    r = subprocess.run([*cmd, "--resume", "--allow-code-change"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    after = json.loads((out / "summary.json").read_text())["meta"]
    assert after["code"]["files"] != "0000000000000000" and after["earlier_code"][0]["git"] == "v0-old"
    assert "resumed across code versions" in (out / "table.md").read_text()


# -- benchmarks that don't flatter ------------------------------------------------------------------
def test_bench_votes_keeps_the_baselines_prefix_reuse_and_interleaves(
    engine: er.Engine, model_path: Path
) -> None:
    from edgereason.bench.decode import make_raw_llama
    from edgereason.bench.votes import SAMPLES, bench_batched

    raw = make_raw_llama(model_path, n_ctx=256, n_threads=2, n_threads_batch=2, n_batch=256)
    order: list[str] = []
    resets: list[int] = []
    complete, create, reset = engine.complete, raw.create_completion, raw.reset

    def counted_reset() -> None:
        resets.append(raw.n_tokens)
        reset()

    def ours(*a: Any, **k: Any) -> Any:
        order.append("edgereason")
        return complete(*a, **k)

    def baseline(*a: Any, **k: Any) -> Any:
        order.append("llama")
        return create(*a, **k)

    raw.reset, raw.create_completion = counted_reset, baseline
    engine.complete = ours  # type: ignore[method-assign]
    try:
        got = bench_batched(engine, raw, tokens=4, repeats=2)
    finally:
        del engine.complete
        raw.close()
    # Warm-up (one of each), then edgereason and the SAMPLES baseline calls alternate per repeat.
    assert order == ["edgereason", "llama"] + (["edgereason"] + ["llama"] * SAMPLES) * 2
    assert len(got["edgereason_runs_s"]) == len(got["llama_cpp_runs_s"]) == 2
    assert got["llama_cpp_sequential_s"] == pytest.approx(
        sum(got["llama_cpp_runs_s"]) / 2, abs=1e-3
    )  # median
    assert got["tokens"] == [SAMPLES * 4, SAMPLES * 4]
    # llama-cpp-python resets by itself only when nothing of the prompt is cached: the first call.
    assert resets == [0]
