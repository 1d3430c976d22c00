"""The demo student: LoRA adapters that make the embedded SmolLM2-135M reason in the distilled format.

Four adapters on the same base, trained reproducibly on CPU (a GPU is used when present):

- ``student``: question -> ``<think>`` step-by-step working ``</think>`` then ``\\boxed{answer}``;
- LoRID's roles (``edgereason.strategies.lorid``, the paper's prompts): ``ir`` (question -> the same
  step-by-step solution), ``kg`` (question -> the knowledge/plan needed, no answer) and ``dr``
  (question + knowledge -> the solution).

The teacher is programmatic: ``arith`` training problems carry their exact working, written out the
way a distilled reasoning model writes it (steps separated by blank lines, then a "Wait, let me
check" pass, so thinking budgets have something to cut). Prompts are rendered and tokenised by the
runtime itself (chat template, forced-open ``<think>``, llama.cpp's tokenizer), so training sees
exactly the tokens inference feeds. LoRA is trained with peft on an HF copy of the embedded GGUF
(``lora_export.hf_copy_of_gguf``), converted with ``lora_export.peft_to_gguf`` (f16: rank 8 on the
attention projections is about 1.8 MB), then measured with the eval harness. ``manifest.json``
beside the adapters records the settings, seeds, losses, timings and accuracies.

    python -m edgereason.convert.distill --out DIR            # the full run (about 40 min on 2 cores)
    python -m edgereason.convert.distill --out DIR --smoke    # a few steps, to check the pipeline
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgereason.errors import EdgeReasonError, MissingExtraError
from edgereason.evaldata import ArithProblem, arith_problems
from edgereason.options import DEFAULT_LORID_PROMPTS
from edgereason.strategies.lorid import role_text

from .lora_export import hf_copy_of_gguf, peft_to_gguf
from .tiny import embedded_gguf_path

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

ROLES = ("student", "ir", "kg", "dr")
ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MANIFEST = "manifest.json"
CLOSE = "\n</think>\n\n"  # what the runtime's early-exit probe writes before "The answer is" (format none)
_OP_WORDS = {"+": "add {b}", "-": "subtract {b}", "*": "multiply by {b}"}
_UNDO = {"+": "-", "-": "+", "*": "/"}


@dataclass(frozen=True)
class DistillSettings:
    """Everything that decides the adapters.

    Sized from measured step times on the 2-core machine (batch 8: 11 s/step for the student's ~210-token
    examples, 14 s for DR's ~290): 4 x 90 steps of batch 4 train in about 35 minutes, plus about 5 for
    the HF copy, tokenising, conversion and the dev-set measurements.
    """

    steps: int = 90  # optimiser steps per adapter
    batch_size: int = 4  # each example is seen once: steps * batch_size training problems per adapter
    lr: float = 1.5e-3
    warmup: int = 5
    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ATTENTION_MODULES
    max_len: int = 384  # tokens of prompt + target; longer examples are dropped (none are, by design)
    seed: int = 0
    threads: int = 2
    eval_problems: int = 100  # dev-split problems for the accuracies in the manifest (0: skip)
    lorid_eval_problems: int = 30
    open_think_share: float = 0.25  # student examples whose prompt leaves <think> for the model to open

    def describe(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["target_modules"] = list(self.target_modules)
        return out


SMOKE = DistillSettings(steps=2, batch_size=2, warmup=1, eval_problems=4, lorid_eval_problems=2)


# -- the teacher --------------------------------------------------------------------------------
def _steps(p: ArithProblem) -> list[tuple[int, str, int, int]]:
    """(a, op, b, result) per step, from the problem's exact working."""
    out = []
    for line in p.working:
        lhs, result = line.split(" = ")
        a, op, b = lhs.split()
        out.append((int(a), op, int(b), int(result)))
    return out


def teacher_trace(p: ArithProblem) -> str:
    """The thinking of a distilled student (after ``<think>\\n``): one step per paragraph, then a check
    that undoes the steps, then the close and the boxed answer."""
    steps = _steps(p)
    lines = [f"Start with {steps[0][0]}."]
    lines += [f"Step {i}: {a} {op} {b} = {c}." for i, (a, op, b, c) in enumerate(steps, 1)]
    undo, value = [], int(p.answer)
    for _a, op, b, _ in reversed(steps):
        back = {"+": value - b, "-": value + b, "*": value // b}[op]
        undo.append(f"{value} {_UNDO[op]} {b} = {back}")
        value = back
    check = (
        f"Wait, let me check by undoing the steps: {', '.join(undo)}. "
        f"That is the starting amount, so the answer is {p.answer}."
    )
    return "\n\n".join([*lines, check]) + CLOSE + f"The answer is \\boxed{{{p.answer}}}."


def knowledge_text(p: ArithProblem) -> str:
    """What the knowledge generator writes: the plan, with no computed values."""
    steps = _steps(p)
    lines = [f"Start with {steps[0][0]}."]
    lines += [f"Step {i}: {_OP_WORDS[op].format(b=b)}." for i, (_, op, b, _) in enumerate(steps, 1)]
    lines.append("The answer is the amount after the last step.")
    return "\n".join(lines)


@dataclass(frozen=True)
class Example:
    """One training pair: the user turn, whether the prompt opens <think>, and the model's output."""

    user: str
    target: str
    think_open: bool = True


def role_examples(
    role: str, problems: Sequence[ArithProblem], seed: int = 0, open_think_share: float = 0.0
) -> list[Example]:
    """The training pairs of ``role`` (student, ir, kg, dr) for ``problems``."""
    if role == "student":
        rng = random.Random(seed)
        out = []
        for p in problems:
            if rng.random() < open_think_share:  # `edgereason run` without --thinking: the model opens it
                out.append(Example(p.question, "<think>\n" + teacher_trace(p), think_open=False))
            else:
                out.append(Example(p.question, teacher_trace(p)))
        return out
    if role == "ir":
        return [
            Example(role_text("ir", DEFAULT_LORID_PROMPTS["ir"], p.question), teacher_trace(p))
            for p in problems
        ]
    if role == "kg":
        # Knowledge is the answer channel: thinking closes at once (LoRID reads KG's content).
        return [
            Example(
                role_text("kg", DEFAULT_LORID_PROMPTS["kg"], p.question),
                CLOSE.lstrip("\n") + knowledge_text(p),
            )
            for p in problems
        ]
    if role == "dr":
        return [
            Example(
                role_text("dr", DEFAULT_LORID_PROMPTS["dr"], p.question, knowledge_text(p)), teacher_trace(p)
            )
            for p in problems
        ]
    raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")


# -- tokens exactly as the runtime makes them ---------------------------------------------------
def tokenize_examples(base_gguf: Path, examples: Sequence[Example]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target ids + end-of-turn) per example, from the runtime's own template and tokenizer."""
    import edgereason as er

    engine = er.load(base_gguf, n_ctx=512, threads=1, max_sequences=1)
    assert isinstance(engine, er.Engine)  # a local GGUF always loads into the in-process engine
    try:
        eos = engine.info.eos_token
        out = []
        for ex in examples:
            opts = er.GenerationOptions(thinking=True if ex.think_open else "auto")
            prompt = engine.prepare_chat([{"role": "user", "content": ex.user}], opts).tokens
            out.append((prompt, engine.backend.tokenize(ex.target + eos, add_bos=False)))
        return out
    finally:
        engine.close()


# -- training -----------------------------------------------------------------------------------
def _torch() -> Any:
    try:
        import torch
        from peft import LoraConfig, get_peft_model  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError("training the demo student", "convert") from exc
    return torch


# (prompt ids, target ids) or (prompt ids, target ids, loss mask over the target: 1 trained, 0 not)
TrainItem = tuple[list[int], ...]


def _batch_loss(model: Any, batch: Sequence[TrainItem], device: str) -> torch.Tensor:
    """Mean cross-entropy over target tokens (those of the loss mask when an item has one: a tool's
    injected output is not trained on); the vocabulary projection runs on those positions only."""
    torch = _torch()
    width = max(len(ex[0]) + len(ex[1]) for ex in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    predicts = torch.zeros((len(batch), width), dtype=torch.bool)  # position i predicts token i + 1
    for row, ex in enumerate(batch):
        prompt, target = ex[0], ex[1]
        seq = prompt + target
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        if len(ex) > 2:
            predicts[row, len(prompt) - 1 : len(seq) - 1] = torch.tensor(ex[2], dtype=torch.bool)
        else:
            predicts[row, len(prompt) - 1 : len(seq) - 1] = True
    ids, mask, predicts = ids.to(device), mask.to(device), predicts.to(device)
    causal_lm = model.get_base_model()
    hidden = causal_lm.model(input_ids=ids, attention_mask=mask).last_hidden_state
    logits = causal_lm.lm_head(hidden[predicts])
    labels = ids[:, 1:][predicts[:, :-1]]
    return torch.nn.functional.cross_entropy(logits.float(), labels)


def train_adapter(
    hf_dir: Path, data: Sequence[TrainItem], settings: DistillSettings, out_dir: Path
) -> dict[str, Any]:
    """LoRA-fine-tune the HF copy on ``data`` (each example once, in a seeded order); save the PEFT folder."""
    torch = _torch()
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).to(torch.device(device))
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        target_modules=list(settings.target_modules),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to a tenth
        if step < settings.warmup:
            return (step + 1) / settings.warmup
        progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    kept = [ex for ex in data if len(ex[0]) + len(ex[1]) <= settings.max_len]
    order = list(range(len(kept)))
    random.Random(settings.seed).shuffle(order)
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(settings.steps):
        chunk = [order[(step * settings.batch_size + i) % len(order)] for i in range(settings.batch_size)]
        loss = _batch_loss(model, [kept[i] for i in chunk], device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(float(loss.detach()), 4))
        if step % 10 == 0 or step == settings.steps - 1:
            logger.info(
                "step %d/%d loss %.4f (%.1f s)",
                step + 1,
                settings.steps,
                losses[-1],
                time.perf_counter() - t0,
            )
    model.save_pretrained(str(out_dir))
    tokens = sum(len(ex[0]) + len(ex[1]) for ex in kept[: settings.steps * settings.batch_size])
    return {
        "examples": len(kept),
        "dropped_too_long": len(data) - len(kept),
        "steps": settings.steps,
        "device": device,
        "train_s": round(time.perf_counter() - t0, 1),
        "tokens_seen": tokens,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "losses": losses,
    }


# -- measuring ----------------------------------------------------------------------------------
def evaluate_adapters(
    base_gguf: Path, adapters: dict[str, Path], settings: DistillSettings
) -> dict[str, Any]:
    """Greedy accuracy of the student (and of LoRID over the roles) on held-out dev problems."""
    import edgereason as er
    from edgereason.eval import EvalSettings, load_items, parse_strategy, run_strategy, summarize
    from edgereason.eval.progress import no_progress

    out: dict[str, Any] = {}
    if settings.eval_problems <= 0:
        return out
    files: dict[str, str | os.PathLike[str]] = dict(adapters)
    engine = er.load(base_gguf, n_ctx=1024, threads=settings.threads, max_sequences=16, adapters=files)
    assert isinstance(engine, er.Engine)
    try:
        student = EvalSettings(max_think=256, answer_tokens=32, adapter="student")
        items = load_items("arith", split="dev", limit=settings.eval_problems, seed=settings.seed)
        runs = [run_strategy(engine, items, parse_strategy("greedy"), student, no_progress)]
        if settings.lorid_eval_problems > 0 and all(r in adapters for r in ("ir", "kg", "dr")):
            few = items[: settings.lorid_eval_problems]
            runs.append(
                run_strategy(
                    engine,
                    few,
                    parse_strategy("lorid"),
                    EvalSettings(max_think=256, answer_tokens=32),
                    no_progress,
                )
            )
        table = summarize(runs)["strategies"]
        out["dev_student_greedy"] = _row(table["greedy"])
        if "lorid" in table:
            out["dev_lorid"] = _row(table["lorid"])
    finally:
        engine.close()
    return out


def _row(s: dict[str, Any]) -> dict[str, Any]:
    keys = ("n", "accuracy", "ci95", "mean_reasoning_tokens", "mean_tokens", "mean_samples", "stopped_by")
    return {k: s[k] for k in keys}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    return {name: md.version(name) for name in ("torch", "transformers", "peft", "llama-cpp-python")}


# -- the whole recipe ---------------------------------------------------------------------------
def prepare_work(out_dir: Path, work_dir: Path | None) -> tuple[Path, Path, Path]:
    """The embedded base GGUF, the scratch folder and the base's HF copy in it (made once) that a distilled
    adapter trains on: ``(base_gguf, work, hf_dir)``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    work = work_dir or out_dir / "work"
    base_gguf = embedded_gguf_path()
    hf_dir = work / "base-hf"
    if not (hf_dir / "config.json").is_file():
        logger.info("HF copy of %s", base_gguf.name)
        hf_copy_of_gguf(base_gguf, hf_dir)
    return base_gguf, work, hf_dir


def export_adapter(
    report: dict[str, Any], peft_dir: Path, hf_dir: Path, out: Path
) -> tuple[Path, dict[str, Any]]:
    """A trained PEFT adapter as a llama.cpp LoRA GGUF (f16) at ``out``, and its manifest entry."""
    gguf = peft_to_gguf(peft_dir, hf_dir, out, "f16", force=True)
    return gguf, {**report, "file": gguf.name, "bytes": gguf.stat().st_size, "sha256": _sha256(gguf)}


def distill_demo(
    out_dir: Path,
    settings: DistillSettings = DistillSettings(),
    roles: Sequence[str] = ROLES,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Train, convert and measure the adapters of ``roles``; writes ``<role>.gguf`` and the manifest to ``out_dir``."""
    t0 = time.perf_counter()
    base_gguf, work, hf_dir = prepare_work(out_dir, work_dir)
    n_train = settings.steps * settings.batch_size
    adapters: dict[str, Path] = {}
    reports: dict[str, Any] = {}
    for i, role in enumerate(roles):
        # Each role sees its own problems (disjoint draws from the train split).
        problems = arith_problems(n_train * (i + 1), seed=settings.seed, split="train")[n_train * i :]
        data = tokenize_examples(
            base_gguf, role_examples(role, problems, settings.seed, settings.open_think_share)
        )
        logger.info("training %s on %d examples", role, len(data))
        report = train_adapter(hf_dir, data, settings, work / f"peft-{role}")
        adapters[role], reports[role] = export_adapter(
            report, work / f"peft-{role}", hf_dir, out_dir / f"{role}.gguf"
        )
    accuracy = evaluate_adapters(base_gguf, adapters, settings)
    return write_manifest(out_dir, base_gguf, settings, reports, accuracy, time.perf_counter() - t0)


def write_manifest(
    out_dir: Path,
    base_gguf: Path,
    settings: DistillSettings,
    reports: dict[str, Any],
    accuracy: dict[str, Any],
    total_s: float,
) -> dict[str, Any]:
    """``manifest.json`` beside the adapters: the recipe's settings, each adapter's training report and
    file hash, and the dev-set accuracies."""
    manifest = {
        "recipe": "edgereason.convert.distill",
        "base": {"file": base_gguf.name, "sha256": _sha256(base_gguf)},
        "settings": settings.describe(),
        "data": {
            "generator": "edgereason.evaldata.arith_problems",
            "split": "train",
            "seed": settings.seed,
            "problems_per_role": settings.steps * settings.batch_size,
            "eval_split": "dev",
        },
        "adapters": reports,
        "accuracy": accuracy,
        "total_s": round(total_s, 1),
        "versions": _versions(),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


_LOG_ROLE = re.compile(r"training (\w+) on (\d+) examples")
_LOG_STEP = re.compile(r"step (\d+)/(\d+) loss ([\d.]+) \(([\d.]+) s\)")


def reports_from_log(text: str) -> dict[str, dict[str, Any]]:
    """Training reports recovered from this script's own log (``--measure --train-log``): examples,
    steps, the losses it logged (every 10th step and the last) and the training time, per role."""
    reports: dict[str, dict[str, Any]] = {}
    role: str | None = None
    for line in text.splitlines():
        if m := _LOG_ROLE.search(line):
            role = m.group(1)
            reports[role] = {"examples": int(m.group(2)), "losses_logged": {}, "source": "training log"}
        elif (m := _LOG_STEP.search(line)) and role is not None:
            rep = reports[role]
            rep["steps"] = int(m.group(2))
            rep["losses_logged"][int(m.group(1))] = float(m.group(3))
            rep["train_s"] = float(m.group(4))
    for rep in reports.values():
        logged = list(rep["losses_logged"].values())
        rep["loss_first"], rep["loss_last"] = (logged[0], logged[-1]) if logged else (None, None)
    return reports


def measure_existing(
    out_dir: Path, settings: DistillSettings, roles: Sequence[str], train_log: Path | None = None
) -> dict[str, Any]:
    """Measure adapters already in ``out_dir`` (trained earlier by this recipe with ``settings``) and
    write their manifest; training details come from the run's log when given."""
    t0 = time.perf_counter()
    base_gguf = embedded_gguf_path()
    adapters = {role: out_dir / f"{role}.gguf" for role in roles}
    missing = [str(p) for p in adapters.values() if not p.is_file()]
    if missing:
        raise EdgeReasonError(f"no adapter to measure: {', '.join(missing)} not found")
    logged = reports_from_log(train_log.read_text(encoding="utf-8")) if train_log else {}
    reports = {
        role: {
            **logged.get(role, {}),
            "file": path.name,
            "bytes": path.stat().st_size,
            "sha256": _sha256(path),
        }
        for role, path in adapters.items()
    }
    accuracy = evaluate_adapters(base_gguf, adapters, settings)
    return write_manifest(out_dir, base_gguf, settings, reports, accuracy, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Train the demo student and LoRID's role adapters (LoRA, CPU)."
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for <role>.gguf and manifest.json")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default OUT/work)")
    parser.add_argument("--roles", nargs="+", choices=ROLES, default=list(ROLES))
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per adapter")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--eval-problems", type=int, default=None, help="dev problems measured (0: none)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--smoke", action="store_true", help="a few steps on a few examples (pipeline check)")
    parser.add_argument(
        "--measure",
        action="store_true",
        help="no training: measure the adapters in OUT and write the manifest",
    )
    parser.add_argument("--train-log", type=Path, default=None, help="with --measure: the training run's log")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("edgereason.backends.llama_cpp").setLevel(logging.ERROR)
    settings = SMOKE if args.smoke else DistillSettings()
    given = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "eval_problems": args.eval_problems,
        "threads": args.threads,
    }
    overrides = {k: v for k, v in given.items() if v is not None}
    settings = dataclasses.replace(settings, **overrides)
    try:
        if args.measure:
            manifest = measure_existing(args.out, settings, args.roles, args.train_log)
        else:
            manifest = distill_demo(args.out, settings, args.roles, args.work)
    except EdgeReasonError as exc:
        logger.error("error: %s", exc)
        return 2
    print(json.dumps({"accuracy": manifest["accuracy"], "total_s": manifest["total_s"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
