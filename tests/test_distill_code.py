"""The code-using student's recipe (convert/distill_code.py): the teacher's Python is right when the
real sandbox runs it, training text is what the engine feeds at inference (the injected output in the
same bytes and tokens), that output is masked out of the loss, and `--smoke` trains an adapter that
loads and runs with the built-in tool."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import edgereason as er
from edgereason import sandbox
from edgereason.convert.distill_code import (
    ANSWER,
    FENCE_CLOSE,
    FENCE_OPEN,
    CodeSettings,
    code_example,
    code_examples,
    code_trace,
    injected_output,
    tokenize_code_examples,
    training_mix,
    training_problems,
)
from edgereason.convert.writers import WRITERS, WrittenProblem, written_problems
from edgereason.evaldata import arith_problems, split_of
from edgereason.models import CODE_STUDENT_DIR, STUDENT_DIR, embedded_model_path, preset_for
from edgereason.tools.builtin import CodeWatcher, output_text

pytestmark = pytest.mark.convert

DEMO = "A farmer has 12 cows and buys 7 more. How many cows does he have now?"


def test_teacher_code_prints_the_answer_in_the_real_sandbox() -> None:
    """200 problems (the training mix: 2-4 steps, one-step cuts, joined sentences): each trace's Python,
    run by sandbox.run_python, prints the answer, and the engine's injected text for that run is the
    text the training example holds."""
    if sandbox.sandbox_unavailable_reason() is not None:
        pytest.skip(f"no sandbox here: {sandbox.sandbox_unavailable_reason()}")
    problems = training_problems(200, CodeSettings())
    assert {p.steps for p in problems} == {1, 2, 3, 4}
    assert any(" and " in p.question.split(". ")[0] for p in problems)
    assert all(split_of(p.question) == "train" for p in problems)
    traces = [code_trace(p) for p in problems]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda t: sandbox.run_python(t.code), traces))
    wrong = [(p.question, r.output) for p, r in zip(problems, results) if not r.ok or r.output != p.answer]
    assert not wrong, wrong[:3]
    for p, t, r in zip(problems[:20], traces, results):
        assert injected_output(t.output) == output_text(r, after="")
        assert len(t.code.splitlines()) == 2 + sum(1 if "*" in w else 2 for w in p.working)


def test_writers_code_prints_the_answer_in_the_real_sandbox() -> None:
    """The other writers' problems (every writer, 140 problems): the teacher's code, run by the real
    sandbox, prints the stored answer; operations the arith story lacks are there (// % and change)."""
    if sandbox.sandbox_unavailable_reason() is not None:
        pytest.skip(f"no sandbox here: {sandbox.sandbox_unavailable_reason()}")
    problems = written_problems(140)
    assert {p.writer for p in problems} == set(WRITERS) and len({p.question for p in problems}) == 140
    code = "\n".join(p.code for p in problems)
    assert "//" in code and "%" in code and "paid - cost" in code
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda p: sandbox.run_python(p.code), problems))
    wrong = [(p.question, r.output) for p, r in zip(problems, results) if not r.ok or r.output != p.answer]
    assert not wrong, wrong[:3]
    assert written_problems(30) == problems[:30] and written_problems(30, seed=1) != problems[:30]


def test_training_mix_takes_the_writers_share() -> None:
    settings = CodeSettings(steps=25, batch_size=4, writer_share=0.4)
    mix = training_mix(settings)
    written = [p for p in mix if isinstance(p, WrittenProblem)]
    assert len(mix) == 100 and len(written) == 40
    assert written != sorted(written, key=lambda p: p.writer)  # interleaved, not in blocks
    assert mix == training_mix(settings)
    first, last = (code_example(p) for p in (written[0], mix[0]))
    assert first.pieces[0][0] == FENCE_OPEN + written[0].code + FENCE_CLOSE
    assert first.pieces[1][0] == injected_output(written[0].answer) and last.user == mix[0].question


def test_training_text_is_what_the_engine_watches_and_injects() -> None:
    p = arith_problems(1, split="train")[0]
    ex = code_example(p)
    (block, trained_a), (out, trained_out), (tail, trained_b) = ex.pieces
    assert (trained_a, trained_out, trained_b) == (True, False, True)
    assert block.startswith(FENCE_OPEN) and block.endswith(FENCE_CLOSE)
    assert out == f"\n<output>\n{p.answer}\n</output>\n"
    assert tail == ANSWER.format(answer=p.answer)
    # The engine's watcher closes the block exactly where the model's text ends, with nothing after.
    watcher = CodeWatcher()
    found = [b for ch in block for b in [watcher.feed(ch)] if b is not None]
    assert len(found) == 1 and found[0].code == code_trace(p).code and found[0].after == ""
    opened = code_example(p, think_open=False)
    assert opened.pieces[0][0] == "<think>\n" + block and not opened.think_open


def test_injected_output_tokens_are_masked_and_match_the_engine() -> None:
    settings = CodeSettings()
    examples = code_examples(training_problems(6, settings), settings)
    data = tokenize_code_examples(embedded_model_path(), examples)
    with er.load(embedded_model_path(), n_ctx=512, threads=1, max_sequences=1) as engine:
        assert isinstance(engine, er.Engine)
        tok, detok, eos = engine.backend.tokenize, engine.backend.detokenize, engine.info.eos_token
        for ex, (prompt, target, mask) in zip(examples, data):
            block, out, tail = (t for t, _ in ex.pieces)
            assert len(mask) == len(target)
            # The masked tokens are the output, tokenised on its own as strategies/generate.py does.
            masked = [t for t, m in zip(target, mask) if not m]
            assert masked == tok(out) and detok(masked) == out
            assert target == tok(block) + tok(out) + tok(tail + eos)
            assert detok(target[:-1]) == ex.text and target[-1:] == tok(eos)
            opts = er.GenerationOptions(thinking=True if ex.think_open else "auto")
            assert prompt == engine.prepare_chat([{"role": "user", "content": ex.user}], opts).tokens


def test_loss_counts_only_the_unmasked_target_tokens() -> None:
    torch = pytest.importorskip("torch")
    from edgereason.convert.distill import _batch_loss

    torch.manual_seed(0)
    vocab, dim = 50, 8

    class Inner(torch.nn.Module):  # position-wise: a token's logits depend on that token only
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(vocab, dim)

        def forward(self, input_ids, attention_mask):  # noqa: ANN001, ANN201
            return type("Out", (), {"last_hidden_state": self.emb(input_ids)})

    class Fake(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.lm_head = Inner(), torch.nn.Linear(dim, vocab)

        def get_base_model(self):  # noqa: ANN201
            return self

    model = Fake().requires_grad_(False)
    prompt, target = [1, 2, 3], [4, 5, 6, 7, 8, 9]
    mask = [1, 1, 0, 0, 1, 1]  # tokens 6 and 7 are the tool's output
    seq = prompt + target
    logits = model.lm_head(model.model.emb(torch.tensor(seq)))
    trained = [len(prompt) + j for j, m in enumerate(mask) if m]
    want = torch.nn.functional.cross_entropy(logits[[i - 1 for i in trained]], torch.tensor(seq)[trained])
    got = _batch_loss(model, [(prompt, target, mask)], "cpu")
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    everything = _batch_loss(model, [(prompt, target)], "cpu")
    assert float(everything) != pytest.approx(float(got), rel=1e-3)
    assert float(_batch_loss(model, [(prompt, target, [1] * 6)], "cpu")) == pytest.approx(float(everything))


def test_smoke_run_trains_an_adapter_that_loads_and_runs_the_tool(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    gguf = pytest.importorskip("gguf")
    out = tmp_path / "code"
    cmd = [sys.executable, "-m", "edgereason.convert.distill_code", "--out", str(out), "--smoke"]
    cmd += ["--eval-problems", "2", "--threads", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(proc.stdout)["accuracy"]["dev_code_student_greedy_tool"]["n"] == 2
    path = out / "student.gguf"
    assert path.stat().st_size <= 2_000_000
    reader = gguf.GGUFReader(path)
    assert reader.get_field("adapter.type").contents() == "lora"
    assert len(reader.tensors) == 30 * 4 * 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"] == "edgereason.convert.distill_code"
    report = manifest["adapters"]["student"]
    assert report["steps"] == 2 and report["examples"] == 4 and all(x > 0 for x in report["losses"])
    # The adapter loads into the engine and a request with the tool runs.
    with er.load(embedded_model_path(), n_ctx=512, max_sequences=1, adapters={"student": path}) as engine:
        res = engine.chat(
            [{"role": "user", "content": DEMO}],
            builtin_tools=["python"],
            adapter="student",
            temperature=0,
            max_tokens=24,
        )
        assert res.choices[0].finish_reason in ("stop", "length")


def test_student_is_the_code_student_and_the_cot_one_stays_available() -> None:
    if not (CODE_STUDENT_DIR / "student.gguf").is_file():
        pytest.skip("the code student is not trained into the package (make student-code)")
    code, cot = preset_for("student"), preset_for("student-cot")
    assert code is not None and cot is not None and preset_for("student-code") is not None
    assert code.adapters["student"] == CODE_STUDENT_DIR / "student.gguf" and code.default_adapter == "student"
    assert {"ir", "kg", "dr"} <= set(code.adapters)  # LoRID's roles come along
    assert cot.adapters["student"] == STUDENT_DIR / "student.gguf"
    path = CODE_STUDENT_DIR / "student.gguf"
    assert path.stat().st_size <= 2 * 1024 * 1024
    manifest = json.loads((CODE_STUDENT_DIR / "manifest.json").read_text())
    assert manifest["recipe"] == "edgereason.convert.distill_code"
    assert manifest["adapters"]["student"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["accuracy"]["dev_code_student_greedy_tool"]["accuracy"] >= 0.85  # measured 0.90


def test_shipped_student_answers_the_demo_with_the_tool() -> None:
    if not (CODE_STUDENT_DIR / "student.gguf").is_file():
        pytest.skip("the code student is not trained into the package (make student-code)")
    with er.load("student", n_ctx=1024, max_sequences=1) as engine:
        res = engine.chat(
            [{"role": "user", "content": DEMO}], builtin_tools=["python"], temperature=0, max_tokens=200
        )
    choice = res.choices[0]
    assert res.usage.tool_calls == 1, choice.reasoning
    assert choice.reasoning.startswith("```python\ncows = 12\n")  # the trace, in the thinking channel
    assert "<output>\n19\n</output>" in choice.reasoning
    assert choice.content == "The answer is \\boxed{19}." and choice.answer == "19"
