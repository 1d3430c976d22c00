"""The code-using student (issue 23 item 4): a LoRA that makes the embedded SmolLM2-135M translate an
arithmetic word problem into short Python, read what the engine's built-in tool printed, and box it.

The teacher is programmatic, like ``convert.distill``'s: each ``arith`` training problem becomes one
line of Python per named quantity and step (``apples = 12``, ``bought = 7``,
``apples = apples + bought``, ``print(apples)``), inside the fence the engine's tool runs
(``tools.builtin``), followed by the output exactly as the engine injects it
(``tools.builtin.output_text``), then the close of the think block and ``\\boxed{answer}``::

    <think>                                   (the prompt's, or the model's own: see open_think_share)
    ```python
    apples = 12
    bought = 7
    apples = apples + bought
    print(apples)
    ```
    <output>                                  (injected by the engine: not trained on)
    19
    </output>
    </think>

    The answer is \\boxed{19}.

Training sees the tokens inference feeds: the prompt from the runtime's chat template, the model's text
tokenised by llama.cpp's tokenizer in the same pieces the engine produces them (the model's text up to
the closing fence, then the injected output tokenised on its own, as ``strategies.generate`` does, then
the rest). The injected output's tokens are masked out of the loss like the prompt: the student learns
to write the code and to read the output, never to predict it.

    python -m edgereason.convert.distill_code --out DIR            # the full run
    python -m edgereason.convert.distill_code --out DIR --smoke    # a few steps, to check the pipeline
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgereason import sandbox
from edgereason.errors import EdgeReasonError
from edgereason.evaldata import ArithProblem, arith_problems, split_of
from edgereason.tools.builtin import output_text

from .distill import (
    MANIFEST,
    DistillSettings,
    _sha256,
    _versions,
    export_adapter,
    prepare_work,
    train_adapter,
)
from .writers import WrittenProblem, written_problems

logger = logging.getLogger(__name__)

ADAPTER = "student"  # the adapter's name inside its preset folder (student-code's default adapter)
FENCE_OPEN = "```python\n"
FENCE_CLOSE = "\n```"
ANSWER = "</think>\n\nThe answer is \\boxed{{{answer}}}."

# The operand's name, from the verb of the problem's step sentence (evaldata's phrasings).
_OPERAND_NAMES = (
    (re.compile(r"\bgives away\b"), "gave_away"),
    (re.compile(r"\bfriend gives\b"), "received"),
    (re.compile(r"\bbuys\b"), "bought"),
    (re.compile(r"\bfinds\b"), "found"),
    (re.compile(r"\bloses\b"), "lost"),
    (re.compile(r"\bsells\b"), "sold"),
)
_SENTENCE_END = re.compile(r"(?<=[.?])\s+")
_FIRST = re.compile(r"^(\w+) has (\d+) (\w+)(?:\.$| and )")


@dataclass(frozen=True)
class CodeSettings(DistillSettings):
    """``DistillSettings`` plus the code teacher's data mix. Each example is seen once.

    one_step_share: problems cut to their first step (the generator writes 2 to 4), so the student
    learns to write as many steps as the question has; and_share: first two sentences joined
    ("Tom has 12 apples and buys 7 more apples."). Both variants are kept only when their text falls
    in the train split (``evaldata.split_of``), so no dev or test question is ever trained on."""

    steps: int = 160
    batch_size: int = 4
    lr: float = 2e-3
    max_len: int = 320
    one_step_share: float = 0.2
    and_share: float = 0.15
    # Share of examples from ``convert.writers`` (purchases and change, sharing with remainders, rates,
    # comparisons, savings, recipes, groups; never arith-ood's words), the rest ``arith``'s story.
    writer_share: float = 0.5


SMOKE = CodeSettings(
    steps=2, batch_size=2, warmup=1, eval_problems=4, lorid_eval_problems=0, writer_share=0.5
)


# -- the teacher --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CodeTrace:
    code: str  # the block's body (what the tool runs)
    output: str  # what it prints: the answer


def _operand_name(sentence: str) -> str:
    for pattern, name in _OPERAND_NAMES:
        if pattern.search(sentence):
            return name
    raise ValueError(f"no operand name for {sentence!r}")


def code_trace(p: ArithProblem) -> CodeTrace:
    """The Python of ``p``: the start quantity under the item's name, then per step the operand's
    name (add, subtract) and the update; multiplications name their factor inline."""
    sentences = _SENTENCE_END.split(p.question)
    first = _FIRST.match(sentences[0])
    if first is None:
        raise ValueError(f"not an arith question: {p.question!r}")
    item = first.group(3)
    step_sentences = _step_sentences(sentences)
    if len(step_sentences) != len(p.working):
        raise ValueError(f"{len(step_sentences)} step sentences for {len(p.working)} steps: {p.question!r}")
    lines = [f"{item} = {first.group(2)}"]
    for sentence, equation in zip(step_sentences, p.working):
        a, op, b = equation.split(" = ")[0].split()
        if op == "*":
            lines.append(f"{item} = {item} * {b}")
        else:
            name = _operand_name(sentence)
            lines += [f"{name} = {b}", f"{item} = {item} {op} {name}"]
    lines.append(f"print({item})")
    return CodeTrace("\n".join(lines), p.answer)


def _step_sentences(sentences: list[str]) -> list[str]:
    """The step sentences of a question split at sentence ends (a joined first sentence holds one)."""
    head, body = sentences[0], sentences[1:-1]
    if " and " in head:
        return [head.split(" and ", 1)[1], *body]
    return body


def one_step(p: ArithProblem) -> ArithProblem:
    """``p`` cut to its first step (the start, that step's sentence and the question)."""
    sentences = _SENTENCE_END.split(p.question)
    first_eq = p.working[0]
    return ArithProblem(
        question=" ".join([sentences[0], sentences[1], sentences[-1]]),
        answer=first_eq.split(" = ")[1],
        kind=p.kind.split("-")[0],
        steps=1,
        difficulty="easy",
        working=(first_eq,),
    )


def joined(p: ArithProblem) -> ArithProblem | None:
    """``p`` with its first two sentences joined by "and" (None when the first step's sentence does
    not start with the name: "The number of ... doubles", "A friend gives ...")."""
    sentences = _SENTENCE_END.split(p.question)
    name = sentences[0].split()[0]
    if not sentences[1].startswith(name + " "):
        return None
    head = sentences[0][:-1] + " and " + sentences[1][len(name) + 1 :]
    return dataclasses.replace(p, question=" ".join([head, *sentences[2:]]))


def training_problems(n: int, settings: CodeSettings) -> list[ArithProblem]:
    """``n`` train-split problems with the settings' share of one-step and joined variants (a variant
    whose text is not in the train split is replaced by the original problem)."""
    rng = random.Random(settings.seed + 1)
    out = []
    for p in arith_problems(n, seed=settings.seed, split="train"):
        roll = rng.random()
        variant: ArithProblem | None = None
        if roll < settings.one_step_share:
            variant = one_step(p)
        elif roll < settings.one_step_share + settings.and_share:
            variant = joined(p)
        out.append(variant if variant is not None and split_of(variant.question) == "train" else p)
    return out


@dataclass(frozen=True)
class CodeExample:
    """One training pair: the user turn, whether the prompt opens <think>, and the model's output as
    pieces (text, trained): the model's own text is trained on, the tool's injected output is not."""

    user: str
    pieces: tuple[tuple[str, bool], ...]
    think_open: bool = True

    @property
    def text(self) -> str:
        return "".join(t for t, _ in self.pieces)


def injected_output(output: str) -> str:
    """What the engine injects after a block whose code printed ``output`` (the model's closing fence
    token ends the block, so nothing of the model's follows it in that token)."""
    result = sandbox.ToolResult(
        output=output, ok=True, error=None, truncated=False, wall_s=0.0, isolated=True
    )
    return output_text(result, after="")


def code_example(p: ArithProblem | WrittenProblem, think_open: bool = True) -> CodeExample:
    """The training pair of an ``arith`` problem (its code from ``code_trace``) or a writer's problem
    (its code written with it)."""
    code = p.code if isinstance(p, WrittenProblem) else code_trace(p).code
    block = ("" if think_open else "<think>\n") + FENCE_OPEN + code + FENCE_CLOSE
    return CodeExample(
        p.question,
        ((block, True), (injected_output(p.answer), False), (ANSWER.format(answer=p.answer), True)),
        think_open,
    )


def code_examples(
    problems: Sequence[ArithProblem | WrittenProblem], settings: CodeSettings
) -> list[CodeExample]:
    rng = random.Random(settings.seed)
    return [code_example(p, think_open=rng.random() >= settings.open_think_share) for p in problems]


def training_mix(settings: CodeSettings) -> list[ArithProblem | WrittenProblem]:
    """``steps * batch_size`` problems: the writers' share from ``convert.writers``, the rest from
    ``training_problems``, interleaved in a seeded order."""
    n = settings.steps * settings.batch_size
    n_written = round(n * settings.writer_share)
    mix: list[ArithProblem | WrittenProblem] = [
        *training_problems(n - n_written, settings),
        *written_problems(n_written, settings.seed),
    ]
    random.Random(settings.seed + 2).shuffle(mix)
    return mix


# -- tokens exactly as the runtime makes them ---------------------------------------------------
def tokenize_code_examples(
    base_gguf: Path, examples: Sequence[CodeExample]
) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt ids, target ids + end-of-turn, loss mask over the target) per example: each piece is
    tokenised on its own, as the engine tokenises the injected output apart from the model's tokens."""
    import edgereason as er

    engine = er.load(base_gguf, n_ctx=512, threads=1, max_sequences=1)
    assert isinstance(engine, er.Engine)
    try:
        eos = engine.info.eos_token
        out = []
        for ex in examples:
            opts = er.GenerationOptions(thinking=True if ex.think_open else "auto")
            prompt = engine.prepare_chat([{"role": "user", "content": ex.user}], opts).tokens
            target: list[int] = []
            mask: list[int] = []
            for i, (text, trained) in enumerate(ex.pieces):
                ids = engine.backend.tokenize(text + (eos if i == len(ex.pieces) - 1 else ""))
                target += ids
                mask += [int(trained)] * len(ids)
            out.append((prompt, target, mask))
        return out
    finally:
        engine.close()


# -- measuring ----------------------------------------------------------------------------------
def evaluate_code_student(
    base_gguf: Path, adapter: Path, n: int, seed: int = 0, threads: int = 2, max_tokens: int = 200
) -> dict[str, Any]:
    """Greedy accuracy with the built-in Python tool on ``n`` arith dev problems (the Python API:
    builtin_tools=["python"], temperature 0), with tool-call counts and wall time."""
    import edgereason as er
    from edgereason.answers import answer_key, extract_gold
    from edgereason.eval.summary import wilson_interval
    from edgereason.signals import final_answer

    out: dict[str, Any] = {}
    if n <= 0:
        return out
    problems = arith_problems(n, seed=seed, split="dev")
    engine = er.load(base_gguf, n_ctx=1024, threads=threads, max_sequences=8, adapters={ADAPTER: adapter})
    assert isinstance(engine, er.Engine)
    t0 = time.perf_counter()
    try:
        results = engine.chat_many(
            [[{"role": "user", "content": p.question}] for p in problems],
            builtin_tools=["python"],
            temperature=0,
            max_tokens=max_tokens,
            adapter=ADAPTER,
        )
    finally:
        engine.close()
    right = calls = 0
    tool_s = 0.0
    for p, res in zip(problems, results):
        gold, choice = extract_gold(p.answer), res.choices[0]
        got = final_answer(choice.content, choice.reasoning)
        right += gold is not None and got is not None and answer_key(got) == answer_key(gold)
        calls += res.usage.tool_calls
        tool_s += res.usage.tool_wall_s
    out["dev_code_student_greedy_tool"] = {
        "n": n,
        "accuracy": round(right / n, 4),
        "ci95": [round(x, 4) for x in wilson_interval(right, n)],
        "tool_calls": calls,
        "tool_wall_s": round(tool_s, 2),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    return out


# -- the whole recipe ---------------------------------------------------------------------------
def distill_code(
    out_dir: Path, settings: CodeSettings = CodeSettings(), work_dir: Path | None = None
) -> dict[str, Any]:
    """Train, convert and measure the code student; writes ``student.gguf`` and the manifest to ``out_dir``."""
    t0 = time.perf_counter()
    base_gguf, work, hf_dir = prepare_work(out_dir, work_dir)
    problems = training_mix(settings)
    arith = [p for p in problems if isinstance(p, ArithProblem)]
    written = [p for p in problems if isinstance(p, WrittenProblem)]
    data = tokenize_code_examples(base_gguf, code_examples(problems, settings))
    logger.info("training %s on %d examples", ADAPTER, len(data))
    report = train_adapter(hf_dir, data, settings, work / "peft-code")
    gguf, entry = export_adapter(report, work / "peft-code", hf_dir, out_dir / f"{ADAPTER}.gguf")
    reports = {ADAPTER: entry}
    accuracy = evaluate_code_student(base_gguf, gguf, settings.eval_problems, settings.seed, settings.threads)
    manifest = {
        "recipe": "edgereason.convert.distill_code",
        "base": {"file": base_gguf.name, "sha256": _sha256(base_gguf)},
        "settings": settings.describe(),
        "data": {
            "generator": "edgereason.evaldata.arith_problems",
            "split": "train",
            "seed": settings.seed,
            "problems": len(problems),
            "arith": len(arith),
            "one_step": sum(p.steps == 1 for p in arith),
            "joined": sum(" and " in p.question.split(". ")[0] for p in arith),
            "writers": {w: sum(p.writer == w for p in written) for w in sorted({p.writer for p in written})},
            "trace": "python block + injected <output> (masked) + boxed answer",
            "eval_split": "dev",
        },
        "adapters": reports,
        "accuracy": accuracy,
        "total_s": round(time.perf_counter() - t0, 1),
        "versions": _versions(),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the code-using student (LoRA, CPU).")
    parser.add_argument("--out", type=Path, required=True, help="folder for student.gguf and manifest.json")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default OUT/work)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--eval-problems", type=int, default=None, help="dev problems measured (0: none)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--smoke", action="store_true", help="a few steps on a few examples (pipeline check)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("edgereason.backends.llama_cpp").setLevel(logging.ERROR)
    settings = SMOKE if args.smoke else CodeSettings()
    given = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "eval_problems": args.eval_problems,
        "threads": args.threads,
    }
    settings = dataclasses.replace(settings, **{k: v for k, v in given.items() if v is not None})
    try:
        manifest = distill_code(args.out, settings, args.work)
    except EdgeReasonError as exc:
        logger.error("error: %s", exc)
        return 2
    print(json.dumps({"accuracy": manifest["accuracy"], "total_s": manifest["total_s"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
