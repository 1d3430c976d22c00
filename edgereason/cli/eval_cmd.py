"""``edgereason eval``: run strategies over a data set and write results, a summary and plots;
``edgereason eval --compare D1 D2`` prints two runs side by side."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import InvalidRequestError, MissingExtraError

if TYPE_CHECKING:
    from ..surface import ChatEngine

log = logging.getLogger(__name__)

# 30 slots: one decode call per step (the engine keeps mixed-sequence calls at <= 30 tokens), and room for
# three SC@8 requests or thirty single-sequence ones at a time.
DEFAULT_MAX_SEQUENCES = 30
PROMPT_ROOM = 384  # context tokens kept for the rendered prompt


def _strategy(value: str) -> Any:
    from ..eval.specs import parse_strategy

    try:
        return parse_strategy(value)
    except InvalidRequestError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_eval_parser(
    sub: Any,
    add_model_flags: Callable[[argparse.ArgumentParser], None],
    add_adapter_flags: Callable[[argparse.ArgumentParser], None],
) -> None:
    from ..eval.specs import DEFAULT_ANSWER_TOKENS, DEFAULT_MAX_THINK, STRATEGY_HELP

    p = sub.add_parser(
        "eval", help="measure strategies (greedy, budgets, self-consistency, LoRID) on a data set"
    )
    p.add_argument("--data", default="arith", help="'arith' (built-in, seeded) or a JSONL file")
    p.add_argument(
        "--split",
        choices=["train", "dev", "test"],
        default=None,
        help="arith split: dev (the default) to tune and compare settings, test once to report (its "
        "configuration and code version are frozen into the run); arith-ood is test only",
    )
    p.add_argument("--limit", type=int, default=None, help="first N items (arith default: 300)")
    p.add_argument(
        "--strategy",
        action="append",
        type=_strategy,
        default=None,
        metavar="S",
        help=f"{STRATEGY_HELP} (repeatable)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output directory (results.jsonl, summary.json, PNGs)"
    )
    p.add_argument("--table", type=Path, metavar="DIR", help="print a run's summary as a Markdown table")
    p.add_argument(
        "--into", type=Path, metavar="FILE", help="with --table: replace the marked table block in FILE"
    )
    p.add_argument(
        "--baseline",
        metavar="S",
        default=None,
        help="strategy the others are held against on the same items (default: greedy, else the first)",
    )
    p.add_argument(
        "--compare", nargs=2, type=Path, metavar=("DIR1", "DIR2"), help="print two runs side by side"
    )
    p.add_argument("--max-think", type=int, default=DEFAULT_MAX_THINK, help="reasoning tokens when uncapped")
    p.add_argument("--answer-tokens", type=int, default=DEFAULT_ANSWER_TOKENS, help="tokens after thinking")
    p.add_argument(
        "--thinking", choices=["on", "off", "auto"], default="on", help="thinking mode of every request"
    )
    p.add_argument("--prompt", default=None, help="user-turn template containing {question}")
    p.add_argument(
        "--use-adapter",
        default=None,
        metavar="NAME",
        help="evaluate with this loaded adapter (every strategy but lorid)",
    )
    p.add_argument("--seed", type=int, default=0, help="base seed (data and sampling)")
    p.add_argument(
        "--option",
        action="append",
        type=_option,
        default=None,
        metavar="KEY=VALUE",
        help="a generation option for every request, VALUE as JSON or a bare string (repeatable; e.g. "
        'early_exit_threshold=0.99, transition_markers=\'["Wait","\\n\\n"]\'): how a dev sweep varies a setting; '
        "recorded in the run's settings",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out: keep its finished strategies and items (same model and settings)",
    )
    p.add_argument(
        "--allow-code-change",
        action="store_true",
        help="with --resume: continue a run that other code started (recorded in the run; refused otherwise)",
    )
    p.add_argument(
        "--analyze",
        type=Path,
        metavar="DIR",
        help="a finished run's analysis: oracle accuracy, vote ties, stopping-rule replay, confident half, "
        "seen/unseen templates, Holm-corrected comparisons, LoRID vs self-consistency at matched tokens",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_model_flags(p)
    add_adapter_flags(p)
    from .flags import add_tool_flags

    add_tool_flags(p)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    if args.max_sequences is None:  # --parallel/--max-sequences (model flags) defaults to 30 slots here
        args.max_sequences = DEFAULT_MAX_SEQUENCES
    if args.compare:
        return _compare(args.compare)
    if args.analyze:
        return _analyze(args)
    if args.table:
        from ..eval.resume import load_run
        from ..eval.summary import markdown_table, summarize, write_table_into

        meta, runs = load_run(args.table)  # a strategy still running shows its finished items
        _check_baseline(args.baseline, [run.spec.label for run in runs], f"{args.table}'s strategies")
        table = markdown_table(summarize(runs, meta, args.baseline))
        if args.into:
            write_table_into(args.into, table)
            print(f"wrote the table into {args.into}")
        else:
            print(table, end="")
        return 0
    if not args.strategy or args.out is None:
        raise InvalidRequestError(
            "eval needs --strategy S (repeatable) and --out DIR, or --compare DIR1 DIR2, or --table DIR"
        )
    labels = [s.label for s in args.strategy]
    if len(set(labels)) != len(labels):
        raise InvalidRequestError(f"a strategy is listed twice: {', '.join(labels)}", param="strategy")
    _check_baseline(args.baseline, labels, "the strategies")
    return _evaluate(args)


def _analyze(args: argparse.Namespace) -> int:
    from ..eval.analysis import analyze_run, format_analysis

    report = analyze_run(args.analyze, baseline=args.baseline)
    path = args.analyze / "analysis.json"
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(format_analysis(report), end="")
    print(f"wrote {path}")
    return 0


def _check_baseline(baseline: str | None, labels: list[str], where: str) -> None:
    if baseline is not None and baseline not in labels:
        raise InvalidRequestError(
            f"--baseline {baseline} is not among {where} ({', '.join(labels)})", param="baseline"
        )


def _compare(dirs: list[Path]) -> int:
    from ..eval.summary import compare_table, load_records, load_summary, paired_runs

    a, b = (load_summary(d) for d in dirs)
    name_a, name_b = dirs[0].name or str(dirs[0]), dirs[1].name or str(dirs[1])
    paired = paired_runs(load_records(dirs[0]), load_records(dirs[1]), name_a)
    print(compare_table(a, b, name_a, name_b, paired))
    return 0


def _option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (key, value): VALUE read as JSON when it is JSON, else as the string itself."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def _settings(args: argparse.Namespace) -> Any:
    from ..eval.specs import DEFAULT_PROMPT, EvalSettings

    modes: dict[str, bool | Literal["auto"]] = {"on": True, "off": False, "auto": "auto"}
    thinking = modes[args.thinking]
    return EvalSettings(
        max_think=args.max_think,
        answer_tokens=args.answer_tokens,
        thinking=thinking,
        prompt=args.prompt or DEFAULT_PROMPT,
        seed=args.seed,
        adapter=args.use_adapter,
        tools=tuple(args.builtin_tools or ()),
        options=tuple(sorted(dict(args.option or ()).items())),
    )


def _load_engine(args: argparse.Namespace, settings: Any) -> ChatEngine:
    from ..adapters import parse_adapter_spec
    from ..loading import load_engine
    from .main import engine_spec

    specs = [parse_adapter_spec(text) for text in args.adapter or ()]
    # LoRID's deep reasoner reads the knowledge generator's output in its prompt.
    room = settings.max_tokens * (2 if any(s.kind == "lorid" for s in args.strategy) else 1) + PROMPT_ROOM
    return load_engine(
        engine_spec(args, n_ctx=args.n_ctx or -(-room // 64) * 64, adapters={s.name: s.path for s in specs})
    )


def _evaluate(args: argparse.Namespace) -> int:
    from .. import __version__
    from ..eval.data import load_items
    from ..eval.plots import write_plots
    from ..eval.progress import make_progress, no_progress
    from ..eval.protocol import code_version, frozen_config, protocol_note
    from ..eval.resume import PartialLog, Previous, files_fingerprint, items_digest, load_previous, merge_runs
    from ..eval.runner import check_strategy, run_strategy
    from ..eval.summary import TABLE_FILE, markdown_table, summarize, summarize_records, write_run

    settings = _settings(args)
    if args.split is None:  # tune on dev by default; arith-ood was written as a test set only
        args.split = "test" if args.data == "arith-ood" else "dev"
    items = load_items(args.data, split=args.split, limit=args.limit, seed=args.seed)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    with _load_engine(args, settings) as engine:
        for spec in args.strategy:
            check_strategy(engine, spec, settings)
        model_path = engine.info.path
        meta = {
            "model": str(args.model or "default"),
            "engine_model": engine.name,
            "adapters": engine.adapter_names,
            "files": files_fingerprint(Path(model_path) if model_path else None, engine.adapter_files),
            "data": args.data,
            "split": args.split if args.data in ("arith", "arith-ood") else None,
            "items": len(items),
            "item_ids": items_digest(items),
            "settings": settings.describe(),
            "max_sequences": args.max_sequences,
            "started": started,
            "edgereason": __version__,
            "code": code_version(),
        }
        split = meta["split"]
        if split == "test":  # reported once: the configuration is part of the run's identity
            meta["frozen"] = frozen_config(args.strategy, settings)
        if note := protocol_note(split):
            print(note)
        prev = (
            load_previous(args.out, meta, items, allow_code_change=args.allow_code_change)
            if args.resume
            else Previous()
        )
        if args.resume:
            print(f"resuming {args.out}: {prev.describe()}")
        if prev.earlier_code:
            meta["earlier_code"] = prev.earlier_code
        done = dict(prev.finished)
        # The run's identity goes on disk before any work, so even the first strategy can be resumed.
        runs = merge_runs(args.strategy, done)
        write_run(args.out, runs, summarize(runs, meta, args.baseline))
        with PartialLog(args.out, resume=args.resume) as partial:
            for spec in args.strategy:
                if spec.label in done:
                    _print_row(
                        spec.label, summarize_records(done[spec.label].records, done[spec.label].wall_s)
                    )
                    continue
                prior = prev.partial_wall_s.get(spec.label, 0.0)
                partial.start(prior)
                done[spec.label] = run_strategy(
                    engine,
                    items,
                    spec,
                    settings,
                    no_progress if args.quiet else make_progress,
                    done=prev.partial.get(spec.label),
                    on_record=partial,
                    prior_wall_s=prior,
                )
                runs = merge_runs(args.strategy, done)
                summary = summarize(runs, meta, args.baseline)
                write_run(args.out, runs, summary)  # a long run keeps what it has finished
                partial.finish(spec.label)
                _print_row(spec.label, summary["strategies"][spec.label])
    runs = merge_runs(args.strategy, done)
    summary = summarize(runs, meta, args.baseline)
    results, summary_path = write_run(args.out, runs, summary)
    table = args.out / TABLE_FILE
    table.write_text(markdown_table(summary), encoding="utf-8")
    print(f"wrote {results}, {summary_path} and {table}")
    if not args.no_plots:
        try:
            for png in write_plots(summary, args.out):
                print(f"wrote {png}")
        except MissingExtraError as exc:
            log.warning("no plots: %s", exc)
    return 0


def _print_row(label: str, row: dict[str, Any]) -> None:
    lo, hi = row["ci95"]
    print(
        f"{label:>14}: accuracy {100 * row['accuracy']:5.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]  "
        f"tokens {row['mean_tokens']:7.1f} (reasoning {row['mean_reasoning_tokens']:.1f})  "
        f"samples {row['mean_samples']:5.2f}  wall {row['wall_s']:.1f} s"
        + (f"  errors {row['errors']}" if row["errors"] else "")
    )
