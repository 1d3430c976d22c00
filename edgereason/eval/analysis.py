"""``edgereason eval --analyze DIR``: the figures a results folder supports beyond its table, computed from
its records alone (no model runs).

- oracle accuracy: items some strategy got right, and per self-consistency strategy items some sample got
  right;
- ties: items whose vote had two or more answers tied for first place;
- stopping-rule replay: Adaptive-Consistency's Beta rule (several thresholds) and ESC windows replayed over
  the largest fixed self-consistency run's samples, in sample order;
- confident half: the vote of the more confident half of each item's samples, and the confidence-weighted
  vote;
- held out: accuracy on items whose template (numbers, name and item blanked) the training set holds, and on
  the others; the share of the items' step equations that training traces hold;
- comparisons against the baseline with exact McNemar p-values and Holm's correction over all of them;
- LoRID against self-consistency at matched tokens (the nearest run, and a replay of the first k samples).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..answers import answers_equal
from ..evaldata import arith_problems, question_template, split_of, training_draws
from ..strategies.voting import BetaStopping, ESCStopping, StoppingRule, Vote, tally
from .runner import ItemRecord, StrategyRun
from .summary import default_baseline

ALPHA = 0.05
REPLAY_RULES: tuple[tuple[str, StoppingRule], ...] = (
    ("beta 0.95", BetaStopping(threshold=0.95)),
    ("beta 0.9", BetaStopping(threshold=0.9)),
    ("beta 0.8", BetaStopping(threshold=0.8)),
    ("beta 0.6", BetaStopping(threshold=0.6)),
    ("esc window 2", ESCStopping(window=2)),
    ("esc window 4", ESCStopping(window=4)),
)
ARITH_ID = re.compile(r"arith-(?:train|dev|test)-\d+")  # built-in arith items (not arith-ood, not JSONL)
DEFAULT_MANIFEST = Path(__file__).resolve().parent.parent / "data" / "student" / "manifest.json"
SampleList = list[dict[str, Any]]


@lru_cache(maxsize=65536)
def _right(answer: str | None, gold: str) -> bool:
    return answer is not None and answers_equal(answer, gold)


def _samples(rec: ItemRecord) -> SampleList:
    return list(rec.extra.get("sample_answers") or [])


def _vote(samples: SampleList, weighted: bool = False) -> str | None:
    votes = [
        Vote(
            s["answer"],
            weight=float(s.get("confidence") or 0.0),
            confidence=float(s.get("confidence") or 0.0),
            index=int(s["index"]),
        )
        for s in samples
    ]
    return tally(votes, "weighted" if weighted else "majority").winner


def _share(k: int, n: int) -> float:
    return round(k / n, 4) if n else 0.0


# -- oracle, ties, confident half -------------------------------------------------------------------
def oracle(runs: Sequence[StrategyRun]) -> dict[str, Any]:
    """Items some strategy got right (over the items every strategy ran), and per sampling strategy the
    items some sample got right."""
    shared = set.intersection(*(set(r.id for r in run.records) for run in runs)) if runs else set()
    right = {r.id for run in runs for r in run.records if r.id in shared and r.correct}
    out: dict[str, Any] = {
        "any_strategy": {"n": len(shared), "right": len(right), "share": _share(len(right), len(shared))}
    }
    per: dict[str, Any] = {}
    for run in runs:
        sampled = [r for r in run.records if _samples(r)]
        if sampled:
            k = sum(any(_right(s["answer"], r.gold) for s in _samples(r)) for r in sampled)
            per[run.spec.label] = {"n": len(sampled), "any_sample_right": k, "share": _share(k, len(sampled))}
    out["any_sample"] = per
    return out


def ties(runs: Sequence[StrategyRun]) -> dict[str, Any]:
    """Items whose majority vote had two or more answers tied for first place."""
    out = {}
    for run in runs:
        sampled = [r for r in run.records if _samples(r)]
        if not sampled:
            continue
        tied = 0
        for r in sampled:
            counts = Counter(s["answer"] for s in _samples(r) if s["answer"] is not None).most_common(2)
            tied += len(counts) == 2 and counts[0][1] == counts[1][1]
        out[run.spec.label] = {"n": len(sampled), "tied": tied}
    return out


def confident_half(runs: Sequence[StrategyRun]) -> dict[str, Any]:
    """Accuracy of the recorded vote, of the confidence-weighted vote, and of the majority of each item's
    more confident half of samples (ties in confidence broken by sample order)."""
    out = {}
    for run in runs:
        sampled = [r for r in run.records if _samples(r)]
        if not sampled:
            continue
        weighted = half = 0
        for r in sampled:
            samples = _samples(r)
            weighted += _right(_vote(samples, weighted=True), r.gold)
            keep = sorted(samples, key=lambda s: (-float(s.get("confidence") or 0.0), s["index"]))
            half += _right(_vote(keep[: math.ceil(len(keep) / 2)]), r.gold)
        n = len(sampled)
        out[run.spec.label] = {
            "n": n,
            "vote": _share(sum(r.correct for r in sampled), n),
            "weighted_vote": _share(weighted, n),
            "confident_half_vote": _share(half, n),
        }
    return out


# -- stopping-rule replay ---------------------------------------------------------------------------
def replay_stopping(
    run: StrategyRun, rules: Sequence[tuple[str, StoppingRule]] = REPLAY_RULES
) -> dict[str, Any]:
    """Each rule replayed over ``run``'s recorded samples in sample order: mean samples it would use, the
    share of items whose vote changes from the full vote, and the accuracy of its votes."""
    sampled = [r for r in run.records if _samples(r)]
    most = run.spec.samples
    full = {r.id: _vote(_samples(r)) for r in sampled}
    out: dict[str, Any] = {
        "strategy": run.spec.label,
        "n": len(sampled),
        "full_vote_accuracy": _share(sum(_right(full[r.id], r.gold) for r in sampled), len(sampled)),
        "rules": {},
    }
    for name, rule in rules:
        used, changed, right = [], 0, 0
        for r in sampled:
            samples = sorted(_samples(r), key=lambda s: s["index"])
            k = next(
                (
                    k
                    for k in range(1, len(samples) + 1)
                    if rule.should_stop([s["answer"] for s in samples[:k]], most)
                ),
                len(samples),
            )
            winner = _vote(samples[:k])
            used.append(k)
            changed += winner != full[r.id]
            right += _right(winner, r.gold)
        mean = sum(used) / len(used) if used else 0.0
        out["rules"][name] = {
            "mean_samples": round(mean, 2),
            "fewer_samples": round(most / mean, 2) if mean else None,
            "vote_changed": _share(changed, len(sampled)),
            "accuracy": _share(right, len(sampled)),
        }
    return out


# -- held out: templates and equations seen in training --------------------------------------------
def training_overlap(
    runs: Sequence[StrategyRun], manifest_path: Path = DEFAULT_MANIFEST, data_seed: int = 0
) -> dict[str, Any] | None:
    """Accuracy per strategy on items whose template the training set holds ("seen") and the rest
    ("unseen"), against the student's own training problems and against every role's. None when the
    items are not built-in arith problems or the manifest is missing."""
    if not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    data = manifest.get("data", {})
    roles = list(manifest.get("adapters", {}))
    if not roles or "problems_per_role" not in data:
        return None
    draws = training_draws(int(data["problems_per_role"]), roles, int(data.get("seed", 0)))
    every = [p for ps in draws.values() for p in ps]
    sets = {
        "student": {question_template(p.question) for p in draws.get("student", [])},
        "all_roles": {question_template(p.question) for p in every},
    }
    seen_equations = {w for p in every for w in p.working}
    items = {r.id: r for run in runs for r in run.records if ARITH_ID.fullmatch(r.id)}
    if not items:
        return None
    working = _working_of(items.values(), data_seed)
    equations = [w for ws in working.values() for w in ws]
    out: dict[str, Any] = {
        "template": "question with numbers, names and items blanked (edgereason.evaldata.question_template)",
        "training": {role: len(ps) for role, ps in draws.items()},
        "items": len(items),
        "templates_seen": {
            k: sum(question_template(r.question) in s for r in items.values()) for k, s in sets.items()
        },
        "equations": len(equations),
        "equations_seen": sum(w in seen_equations for w in equations),
        "by_strategy": {},
    }
    for run in runs:
        row = {}
        for key, s in sets.items():
            seen = [r for r in run.records if question_template(r.question) in s]
            unseen = [r for r in run.records if question_template(r.question) not in s]
            row[key] = {
                "seen": {"n": len(seen), "accuracy": _share(sum(r.correct for r in seen), len(seen))},
                "unseen": {"n": len(unseen), "accuracy": _share(sum(r.correct for r in unseen), len(unseen))},
            }
        out["by_strategy"][run.spec.label] = row
    return out


def _working_of(records: Any, seed: int) -> dict[str, tuple[str, ...]]:
    """Step equations of arith items, regenerated from their split and index (ids are
    ``arith-SPLIT-INDEX``) and the run's data seed; an item that does not match is left out."""
    want: dict[str, list[tuple[int, ItemRecord]]] = {}
    for r in records:
        _, split, index = r.id.split("-")
        want.setdefault(split, []).append((int(index), r))
    out = {}
    for split, rows in want.items():
        problems = arith_problems(max(i for i, _ in rows) + 1, seed=seed, split=split)  # type: ignore[arg-type]
        for i, r in rows:
            if problems[i].question == r.question and split_of(r.question) == split:
                out[r.id] = problems[i].working
    return out


# -- comparisons: McNemar and Holm ------------------------------------------------------------------
def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value (a sign test on the discordant pairs ``b`` and ``c``)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def holm(pvalues: Mapping[str, float], alpha: float = ALPHA) -> dict[str, dict[str, Any]]:
    """Holm's step-down correction: adjusted p-values, and which hypotheses are rejected at ``alpha``."""
    order = sorted(pvalues, key=lambda k: pvalues[k])
    m, running, rejecting = len(order), 0.0, True
    out = {}
    for i, key in enumerate(order):
        running = max(running, min(1.0, (m - i) * pvalues[key]))
        rejecting = rejecting and pvalues[key] <= alpha / (m - i)
        out[key] = {"p": round(pvalues[key], 6), "p_holm": round(running, 6), "survives": rejecting}
    return out


def _pairs(base: Sequence[ItemRecord], other: Sequence[ItemRecord]) -> tuple[int, int, int]:
    by_id = {r.id: r for r in base}
    pairs = [(by_id[r.id], r) for r in other if r.id in by_id]
    return (
        len(pairs),
        sum(b.correct and not o.correct for b, o in pairs),
        sum(o.correct and not b.correct for b, o in pairs),
    )


def comparisons(runs: Sequence[StrategyRun], baseline: str | None = None) -> dict[str, Any] | None:
    """Every strategy against the baseline on shared items: exact McNemar p, Holm-adjusted over all."""
    labels = [run.spec.label for run in runs]
    baseline = baseline or default_baseline(labels)
    base = next((run.records for run in runs if run.spec.label == baseline), None)
    if base is None:
        return None
    rows, pvalues = {}, {}
    for run in runs:
        if run.spec.label == baseline:
            continue
        n, only_base, only_this = _pairs(base, run.records)
        if n == 0:
            continue
        pvalues[run.spec.label] = mcnemar_exact(only_base, only_this)
        rows[run.spec.label] = {
            "n": n,
            "delta": _share(only_this - only_base, n),
            "only_baseline_right": only_base,
            "only_this_right": only_this,
        }
    for label, h in holm(pvalues).items():
        rows[label].update(h)
    return {
        "baseline": baseline,
        "alpha": ALPHA,
        "test": "exact McNemar (two-sided), Holm",
        "strategies": rows,
    }


def _mean_tokens(records: Sequence[ItemRecord]) -> float:
    ok = [r for r in records if r.error is None]
    return sum(r.tokens for r in ok) / len(ok) if ok else 0.0


def lorid_vs_sc(runs: Sequence[StrategyRun]) -> dict[str, Any] | None:
    """LoRID against self-consistency at matched tokens: the SC run nearest in mean tokens, and a replay
    of the first k samples of the largest fixed SC run, k chosen so its tokens match LoRID's."""
    lorid = next((run for run in runs if run.spec.kind == "lorid"), None)
    scs = [run for run in runs if run.spec.kind == "sc"]
    if lorid is None or not scs:
        return None
    target = _mean_tokens(lorid.records)

    def versus(records: Sequence[ItemRecord]) -> dict[str, Any]:
        n, only_sc, only_lorid = _pairs(records, lorid.records)
        return {
            "n": n,
            "lorid_minus_sc": _share(only_lorid - only_sc, n),
            "only_sc_right": only_sc,
            "only_lorid_right": only_lorid,
            "p": round(mcnemar_exact(only_sc, only_lorid), 6),
        }

    nearest = min(scs, key=lambda run: abs(_mean_tokens(run.records) - target))
    out: dict[str, Any] = {
        "lorid_mean_tokens": round(target, 1),
        "nearest": {
            "strategy": nearest.spec.label,
            "mean_tokens": round(_mean_tokens(nearest.records), 1),
            **versus(nearest.records),
        },
    }
    fixed = [run for run in scs if not run.spec.adaptive and any(_samples(r) for r in run.records)]
    if fixed:
        big = max(fixed, key=lambda run: run.spec.samples)
        per_sample = _mean_tokens(big.records) / big.spec.samples
        k = max(1, min(big.spec.samples, round(target / per_sample))) if per_sample else big.spec.samples
        replayed = [_first_k(r, k) for r in big.records]
        out["replay"] = {
            "from": big.spec.label,
            "samples": k,
            "mean_tokens": round(k * per_sample, 1),
            "accuracy": _share(sum(r.correct for r in replayed), len(replayed)),
            **versus(replayed),
        }
    return out


def _first_k(rec: ItemRecord, k: int) -> ItemRecord:
    samples = sorted(_samples(rec), key=lambda s: s["index"])[:k]
    winner = _vote(samples)
    return ItemRecord.from_dict({**rec.to_dict(), "answer": winner, "correct": _right(winner, rec.gold)})


# -- the whole analysis -----------------------------------------------------------------------------
def analyze_runs(
    runs: Sequence[StrategyRun],
    meta: Mapping[str, Any] | None = None,
    baseline: str | None = None,
    manifest: Path = DEFAULT_MANIFEST,
) -> dict[str, Any]:
    fixed = [
        run
        for run in runs
        if run.spec.kind == "sc" and not run.spec.adaptive and any(_samples(r) for r in run.records)
    ]
    replay = replay_stopping(max(fixed, key=lambda run: run.spec.samples)) if fixed else None
    return {
        "meta": dict(meta or {}),
        "strategies": {run.spec.label: len(run.records) for run in runs},
        "oracle": oracle(runs),
        "ties": ties(runs),
        "replay": replay,
        "confident_half": confident_half(runs),
        "held_out": training_overlap(runs, manifest, int((meta or {}).get("settings", {}).get("seed", 0))),
        "comparisons": comparisons(runs, baseline),
        "lorid_vs_sc": lorid_vs_sc(runs),
    }


def analyze_run(
    run_dir: Path, baseline: str | None = None, manifest: Path = DEFAULT_MANIFEST
) -> dict[str, Any]:
    """The analysis of the run in ``run_dir`` as it stands (finished strategies and finished items)."""
    from .resume import load_run

    meta, runs = load_run(run_dir)
    return analyze_runs(runs, meta, baseline, manifest)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def format_analysis(report: Mapping[str, Any]) -> str:
    """The analysis as plain text lines."""
    lines: list[str] = []
    add: Callable[[str], None] = lines.append
    o = report["oracle"]["any_strategy"]
    add(f"oracle: some strategy right on {o['right']} of {o['n']} items ({_pct(o['share'])})")
    for label, row in report["oracle"]["any_sample"].items():
        tied = report["ties"].get(label, {}).get("tied", 0)
        add(
            f"  {label}: some sample right on {row['any_sample_right']} of {row['n']} ({_pct(row['share'])}); "
            f"{tied} votes tied for first"
        )
    for label, row in report["confident_half"].items():
        add(
            f"  {label}: vote {_pct(row['vote'])}, confidence-weighted {_pct(row['weighted_vote'])}, "
            f"confident half {_pct(row['confident_half_vote'])}"
        )
    if (replay := report.get("replay")) is not None:
        add(
            f"stopping rules replayed over {replay['strategy']}'s samples ({replay['n']} items, full vote "
            f"{_pct(replay['full_vote_accuracy'])}):"
        )
        for name, row in replay["rules"].items():
            add(
                f"  {name}: {row['mean_samples']} samples ({row['fewer_samples']}x fewer), vote changed on "
                f"{_pct(row['vote_changed'])}, accuracy {_pct(row['accuracy'])}"
            )
    if (held := report.get("held_out")) is not None:
        seen = held["templates_seen"]
        add(
            f"held out: {seen['all_roles']} of {held['items']} item templates appear in training "
            f"({seen['student']} in the student's own problems); {held['equations_seen']} of "
            f"{held['equations']} step equations appear in training traces"
        )
        for label, row in held["by_strategy"].items():
            r = row["all_roles"]
            add(
                f"  {label}: seen {_pct(r['seen']['accuracy'])} (n {r['seen']['n']}), unseen "
                f"{_pct(r['unseen']['accuracy'])} (n {r['unseen']['n']})"
            )
    if (cmp := report.get("comparisons")) is not None:
        add(f"against {cmp['baseline']} ({cmp['test']}, alpha {cmp['alpha']}):")
        for label, row in cmp["strategies"].items():
            mark = "survives Holm" if row["survives"] else "does not survive Holm"
            add(
                f"  {label}: {100 * row['delta']:+.1f} points (n {row['n']}, {row['only_baseline_right']} vs "
                f"{row['only_this_right']} discordant), p {row['p']:.4g}, Holm {row['p_holm']:.4g}: {mark}"
            )
    if (lv := report.get("lorid_vs_sc")) is not None:
        nr = lv["nearest"]
        add(
            f"LoRID ({lv['lorid_mean_tokens']} tokens) vs {nr['strategy']} ({nr['mean_tokens']} tokens): "
            f"{100 * nr['lorid_minus_sc']:+.1f} points, p {nr['p']:.4g}"
        )
        if (rp := lv.get("replay")) is not None:
            add(
                f"LoRID vs the first {rp['samples']} samples of {rp['from']} ({rp['mean_tokens']} tokens, "
                f"{_pct(rp['accuracy'])}): {100 * rp['lorid_minus_sc']:+.1f} points, p {rp['p']:.4g}"
            )
    return "\n".join(lines) + "\n"
