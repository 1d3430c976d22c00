"""Runs strategies over items on one engine: concurrent requests (the engine batches their sequences),
one record per item."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..answers import answers_equal
from ..errors import EdgeReasonError, InvalidRequestError
from ..options import GenerationOptions, LoridOptions
from ..result import ChatResult
from .data import EvalItem
from .progress import Progress, make_progress
from .specs import EvalSettings, StrategySpec, request_fields

if TYPE_CHECKING:
    from ..surface import ChatEngine

log = logging.getLogger(__name__)

LORID_ROLES = tuple(LoridOptions().roles.values())
ProgressFactory = Callable[[int, str], Progress]
_SLOT_PROBE = "What is 1 + 1?"


@dataclass(frozen=True)
class ItemRecord:
    """One item under one strategy. ``samples``: generations run (sc: samples used; lorid: 3 per
    iteration, IR + KG + DR). Token counts cover every generation of the item; ``probe_tokens`` are
    those of early-exit probes (trial prefixes and answers), outside reasoning and answer tokens."""

    strategy: str
    id: str
    question: str
    gold: str
    answer: str | None
    correct: bool
    reasoning_tokens: int
    answer_tokens: int
    samples: int
    wall_s: float
    thinking_stopped_by: str | None
    finish_reason: str
    difficulty: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    probe_tokens: int = 0
    tool_calls: int = 0  # built-in tool runs (--tool python) over every generation of the item
    tool_wall_s: float = 0.0  # their wall time, part of wall_s

    @property
    def tokens(self) -> int:
        """Every token generated for the item: reasoning, answer and probes."""
        return self.reasoning_tokens + self.answer_tokens + self.probe_tokens

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> ItemRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})


@dataclass(frozen=True)
class StrategyRun:
    spec: StrategySpec
    records: list[ItemRecord]
    wall_s: float
    concurrency: int


def check_strategy(engine: ChatEngine, spec: StrategySpec, settings: EvalSettings) -> None:
    """Fail before any request when the engine cannot run ``spec`` (LoRID without its adapters)."""
    if settings.adapter is not None:
        engine.require_adapters([settings.adapter])
    if spec.kind == "lorid":
        missing = [r for r in LORID_ROLES if r not in engine.adapter_names]
        if missing:
            raise InvalidRequestError(
                f"strategy lorid needs LoRA adapters named {', '.join(LORID_ROLES)} (missing: "
                f"{', '.join(missing)}); pass --adapter ir=PATH --adapter kg=PATH --adapter dr=PATH",
                param="strategy",
            )


def concurrency_for(engine: ChatEngine, spec: StrategySpec, settings: EvalSettings) -> int:
    """Requests of ``spec`` that fit in the engine's parallel capacity at once (sequence slots locally,
    requests in flight remotely), at most its queue. Also checks the options before any request is sent.
    """
    # The slot count depends on the options only; a short probe question keeps this from failing.
    messages = [{"role": "user", "content": settings.user_text(_SLOT_PROBE)}]
    opts = GenerationOptions.build(None, request_fields(spec, settings, 0))
    per_request = engine.sequences_per_request(messages, opts)
    return max(1, min(engine.capabilities.max_sequences // per_request, engine.max_queue))


def _record(spec: StrategySpec, item: EvalItem, res: ChatResult, wall: float) -> ItemRecord:
    choice = res.choices[0]
    extra: dict[str, Any] = {}
    samples = 1
    if (sc := res.extra.get("self_consistency")) is not None:
        samples = int(sc["samples_used"])
        extra["stop_rule"] = sc["stop_rule"]
        extra["sample_answers"] = [
            {"index": s["index"], "answer": s["answer"], "confidence": s["confidence"]}
            for s in sorted(sc["samples"], key=lambda s: s["index"])
        ]
    elif (lorid := res.extra.get("lorid")) is not None:
        samples = 3 * int(lorid["iterations"])
        extra.update(iterations=lorid["iterations"], agreed=lorid["agreed"])
    if "early_exit_probe_count" in choice.extra:
        extra["probes"] = choice.extra["early_exit_probe_count"]
    answer = res.answer
    return ItemRecord(
        strategy=spec.label,
        id=item.id,
        question=item.question,
        gold=item.gold,
        answer=answer,
        correct=answer is not None and answers_equal(answer, item.gold),
        reasoning_tokens=res.usage.reasoning_tokens,
        answer_tokens=res.usage.completion_tokens - res.usage.reasoning_tokens - res.usage.probe_tokens,
        probe_tokens=res.usage.probe_tokens,
        samples=samples,
        wall_s=round(wall, 4),
        thinking_stopped_by=choice.thinking_stopped_by,
        finish_reason=choice.finish_reason,
        difficulty=item.difficulty,
        extra=extra,
        tool_calls=res.usage.tool_calls,
        tool_wall_s=round(res.usage.tool_wall_s, 4),
    )


def _failed(spec: StrategySpec, item: EvalItem, exc: EdgeReasonError, wall: float) -> ItemRecord:
    return ItemRecord(
        strategy=spec.label,
        id=item.id,
        question=item.question,
        gold=item.gold,
        answer=None,
        correct=False,
        reasoning_tokens=0,
        answer_tokens=0,
        samples=0,
        wall_s=round(wall, 4),
        thinking_stopped_by=None,
        finish_reason="error",
        difficulty=item.difficulty,
        error=f"{type(exc).__name__}: {exc}",
    )


def ask(
    engine: ChatEngine, spec: StrategySpec, settings: EvalSettings, item: EvalItem, index: int
) -> ItemRecord:
    """One item; a request the engine refuses (e.g. a question over the context) is recorded as an error."""
    messages = [{"role": "user", "content": settings.user_text(item.question)}]
    t0 = time.perf_counter()
    try:
        res = engine.chat(messages, **request_fields(spec, settings, index))
    except EdgeReasonError as exc:
        log.warning("%s on %s failed: %s", spec.label, item.id, exc)
        return _failed(spec, item, exc, time.perf_counter() - t0)
    return _record(spec, item, res, time.perf_counter() - t0)


def run_strategy(
    engine: ChatEngine,
    items: Sequence[EvalItem],
    spec: StrategySpec,
    settings: EvalSettings,
    progress: ProgressFactory = make_progress,
    done: Mapping[str, ItemRecord] | None = None,
    on_record: Callable[[ItemRecord], None] | None = None,
    prior_wall_s: float = 0.0,
) -> StrategyRun:
    """Every item under ``spec``, as many in flight as the engine's slots hold; records in item order.

    ``done``: records (by item id) of an interrupted earlier run, reused as they are; ``on_record`` sees
    each new record as its item finishes; ``prior_wall_s``: the earlier run's time on this strategy.
    """
    if not items:
        raise InvalidRequestError("no items to evaluate", param="data")
    check_strategy(engine, spec, settings)
    done = done or {}
    workers = concurrency_for(engine, spec, settings)
    todo = [(i, item) for i, item in enumerate(items) if item.id not in done]
    bar = progress(len(todo), spec.label)
    t0 = time.perf_counter()
    fresh: dict[str, ItemRecord] = {}
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgereason-eval") as pool:
            # The item's index, not its place in ``todo``, seeds it: a resumed run samples the same.
            futures = [pool.submit(ask, engine, spec, settings, item, i) for i, item in todo]
            try:
                for fut in as_completed(futures):
                    rec = fut.result()
                    fresh[rec.id] = rec
                    if on_record is not None:
                        on_record(rec)
                    bar.update(1)
            except BaseException:  # Ctrl-C: drop what has not started; running requests finish
                for f in futures:
                    f.cancel()
                raise
    finally:
        bar.close()
    records = [done.get(item.id) or fresh[item.id] for item in items]
    return StrategyRun(spec, records, prior_wall_s + time.perf_counter() - t0, workers)


def run_eval(
    engine: ChatEngine,
    items: Sequence[EvalItem],
    specs: Sequence[StrategySpec],
    settings: EvalSettings,
    progress: ProgressFactory = make_progress,
) -> list[StrategyRun]:
    """Each strategy in turn over all items (checked first, so a bad one fails before any work)."""
    for spec in specs:
        check_strategy(engine, spec, settings)
    return [run_strategy(engine, items, spec, settings, progress) for spec in specs]
