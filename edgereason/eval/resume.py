"""Resuming an interrupted ``edgereason eval --resume``: finished strategies are read back from the run
directory, and the items a strategy had finished before the interruption from ``partial.jsonl``, where
every record is appended (and flushed) the moment its item completes. A resumed run is the same run: it
must be of the same model files (by content hash), data, settings and slots, else it is refused.

Item seeds depend on the item's index only, so a resumed strategy produces what the uninterrupted run
would have produced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from ..errors import InvalidRequestError
from .data import EvalItem
from .protocol import check_same_code
from .runner import ItemRecord, StrategyRun
from .specs import StrategySpec, parse_strategy
from .summary import RESULTS_FILE, SUMMARY_FILE, load_records, load_summary

log = logging.getLogger(__name__)

PARTIAL_FILE = "partial.jsonl"
# What must agree between a run and the one it resumes (the rest of ``meta`` may change).
MATCH_KEYS = ("model", "files", "data", "split", "items", "item_ids", "settings", "max_sequences")
_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    """sha256 of a file's content (first 16 hex digits)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()[:16]


def files_fingerprint(model: Path | None, adapters: Mapping[str, Path]) -> dict[str, str]:
    """Content hashes of the model file and each loaded adapter, by name (``model``, ``adapter:NAME``)."""
    out = {}
    if model is not None and model.is_file():
        out["model"] = file_digest(model)
    for name, path in sorted(adapters.items()):
        if path.is_file():
            out[f"adapter:{name}"] = file_digest(path)
    return out


def items_digest(items: Sequence[EvalItem]) -> str:
    """One hash over the items' ids, questions and gold answers, in order."""
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps([item.id, item.question, item.gold]).encode())
    return h.hexdigest()[:16]


@dataclass
class Previous:
    """What an earlier run in the same directory finished: whole strategies, and one strategy's items."""

    finished: dict[str, StrategyRun] = field(default_factory=dict)
    partial: dict[str, dict[str, ItemRecord]] = field(default_factory=dict)  # label -> id -> record
    partial_wall_s: dict[str, float] = field(default_factory=dict)
    earlier_code: list[dict[str, Any]] = field(default_factory=list)  # other code that ran part of it

    def describe(self) -> str:
        done = ", ".join(self.finished) or "none"
        part = ", ".join(f"{label} ({len(recs)} items)" for label, recs in self.partial.items()) or "none"
        return f"finished strategies: {done}; partly done: {part}"


def check_same_run(old: Mapping[str, Any], new: Mapping[str, Any], out: Path) -> None:
    """InvalidRequestError naming every key on which the run in ``out`` differs from this one."""
    differ = [k for k in MATCH_KEYS if old.get(k) != new.get(k)]
    # A test run's frozen configuration: a strategy both runs list must be configured alike.
    frozen_old, frozen_new = old.get("frozen") or {}, new.get("frozen") or {}
    if any(frozen_old[k] != frozen_new[k] for k in frozen_old.keys() & frozen_new.keys()):
        differ.append("frozen")
    if differ:
        details = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differ)
        raise InvalidRequestError(
            f"{out} holds a different run (differs in {', '.join(differ)}: {details}); "
            "use another --out, or delete it to start again",
            param="resume",
        )


def _finished_runs(out: Path, summary: Mapping[str, Any]) -> dict[str, StrategyRun]:
    """The strategies ``summary.json`` lists, with their records from ``results.jsonl``."""
    by_label: dict[str, list[ItemRecord]] = {}
    for rec in load_records(out) if (out / RESULTS_FILE).is_file() else []:
        by_label.setdefault(rec.strategy, []).append(rec)
    return {
        label: StrategyRun(
            parse_strategy(label),
            by_label.get(label, []),
            float(row.get("wall_s", 0.0)),
            int(row["concurrency"]),
        )
        for label, row in summary["strategies"].items()
    }


def _partial_records(out: Path, skip: Iterable[str], ids: Iterable[str] | None = None) -> Previous:
    """The items ``partial.jsonl`` holds of strategies not in ``skip`` (and, given ``ids``, of those items)."""
    prev = Previous()
    skip, wanted = set(skip), None if ids is None else set(ids)
    for label, rec, elapsed in _read_partial(out / PARTIAL_FILE):
        if label in skip or (wanted is not None and rec.id not in wanted):
            continue
        prev.partial.setdefault(label, {})[rec.id] = rec
        prev.partial_wall_s[label] = max(prev.partial_wall_s.get(label, 0.0), elapsed)
    return prev


def load_previous(
    out: Path, meta: Mapping[str, Any], items: Sequence[EvalItem], allow_code_change: bool = False
) -> Previous:
    """The finished work in ``out`` (nothing when it holds no run), after checking it is this run, by the
    same code (another code version is refused unless ``allow_code_change``; it is then recorded)."""
    finished: dict[str, StrategyRun] = {}
    earlier: list[dict[str, Any]] = []
    ids = [item.id for item in items]
    if (out / SUMMARY_FILE).is_file():
        summary = load_summary(out)
        old = summary.get("meta", {})
        check_same_run(old, meta, out)
        earlier = list(old.get("earlier_code", []))
        if check_same_code(old, meta, out, allow_code_change):
            earlier.append(old.get("code") or {"files": None, "git": None, "version": old.get("edgereason")})
        for label, run in _finished_runs(out, summary).items():
            if [r.id for r in run.records] != ids:
                log.warning("%s in %s is incomplete; it runs again", label, out)
                continue
            finished[label] = run
    elif (out / PARTIAL_FILE).is_file():
        raise InvalidRequestError(
            f"{out / PARTIAL_FILE} exists without {SUMMARY_FILE}: cannot tell which run it belongs to; "
            "delete it to start again",
            param="resume",
        )
    prev = _partial_records(out, finished, ids)
    prev.finished, prev.earlier_code = finished, earlier
    return prev


def load_run(out: Path) -> tuple[dict[str, Any], list[StrategyRun]]:
    """The run in ``out`` as it stands (``meta`` and runs): its finished strategies, then those whose
    finished items ``partial.jsonl`` holds (a run still going, or interrupted)."""
    summary = load_summary(out)
    finished = {label: run for label, run in _finished_runs(out, summary).items() if run.records}
    prev = _partial_records(out, finished)
    running = [
        StrategyRun(parse_strategy(label), list(recs.values()), prev.partial_wall_s[label], 0)
        for label, recs in prev.partial.items()
    ]
    return dict(summary.get("meta", {})), [*finished.values(), *running]


def _read_partial(path: Path) -> Iterable[tuple[str, ItemRecord, float]]:
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            try:
                row = json.loads(line)
                rec = ItemRecord.from_dict(row["record"])
                yield rec.strategy, rec, float(row["elapsed_s"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                # An interrupted write leaves at most one torn line, the last one.
                log.warning("%s:%d: unreadable record skipped (it runs again)", path, n)


def _ends_with_newline(path: Path) -> bool:
    """True for an empty file or one whose last byte is a newline (read without loading the file)."""
    with path.open("rb") as fh:
        if fh.seek(0, 2) == 0:
            return True
        fh.seek(-1, 2)
        return fh.read(1) == b"\n"


def _label(line: str) -> str | None:
    try:
        return str(json.loads(line)["record"]["strategy"])
    except (json.JSONDecodeError, KeyError, TypeError):
        return None  # a torn line


class PartialLog:
    """Appends each finished item of the running strategy to ``partial.jsonl`` (thread-safe, flushed).
    ``resume``: keep the records already there (they were read back), else start the file afresh.
    A finished strategy's records leave the file (:meth:`finish`); the file goes when it is empty."""

    def __init__(self, out: Path, resume: bool = False) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / PARTIAL_FILE
        self._fh: IO[str] = self.path.open("a" if resume else "w", encoding="utf-8")
        if resume and not _ends_with_newline(self.path):
            self._fh.write("\n")  # a torn last line stays alone (and unread) rather than swallow the next
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()
        self._offset = 0.0

    def start(self, prior_wall_s: float = 0.0) -> None:
        """The next strategy begins (or resumes after ``prior_wall_s`` seconds of earlier work)."""
        self._t0, self._offset = time.perf_counter(), prior_wall_s

    def __call__(self, record: ItemRecord) -> None:
        elapsed = self._offset + time.perf_counter() - self._t0
        line = json.dumps({"record": record.to_dict(), "elapsed_s": round(elapsed, 3)}, ensure_ascii=False)
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def finish(self, label: str) -> None:
        """Strategy ``label``'s records are in ``results.jsonl`` now: forget them here, keeping the items
        other strategies finished in an earlier, interrupted run (a resumed run may take them in another
        order)."""
        with self._lock:
            self._fh.close()
            lines = self.path.read_text(encoding="utf-8").splitlines(True)
            keep = [line for line in lines if _label(line) not in (label, None)]  # torn lines go too
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(keep), encoding="utf-8")
            tmp.replace(self.path)
            self._fh = self.path.open("a", encoding="utf-8")

    def close(self, remove: bool = False) -> None:
        """``remove``: the run ended; the file goes unless it keeps a strategy this run did not finish."""
        self._fh.close()
        if remove and self.path.is_file() and self.path.stat().st_size == 0:
            self.path.unlink()

    def __enter__(self) -> PartialLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(remove=exc_type is None)


def merge_runs(
    specs: Sequence[StrategySpec], done: Mapping[str, StrategyRun], keep_others: bool = True
) -> list[StrategyRun]:
    """Runs in the order of ``specs``, then (``keep_others``) earlier strategies this run did not list."""
    listed = {s.label for s in specs}
    runs = [done[s.label] for s in specs if s.label in done]
    if keep_others:
        runs += [run for label, run in done.items() if label not in listed]
    return runs
