"""LoRID (arXiv 2508.13037): three LoRA adapters on one base reason until two views agree.

Each iteration runs the intuitive reasoner (IR, answers directly) and, concurrently, the knowledge
generator (KG) followed by the deep reasoner (DR, reasons from the question plus KG's knowledge). Every
iteration adds IR's answer and DR's answer to two sets; the loop stops at the first iteration where the
sets intersect. DR's prompt always fits: knowledge that would leave DR less than a quarter of the context
(or its ``max_tokens``) to answer in is cut at a token boundary, and the report says so. The paper scores no agreement as wrong; here the majority over all answers is returned
with ``agreed: false``. IR and KG/DR are separate sequences with their own adapter sets, live at the
same time; the scheduler decodes each group under its own adapters, the groups taking turns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..answers import answer_key
from ..errors import ContextOverflowError
from ..job import Job, PreparedPrompt
from ..options import GenerationOptions, LoridOptions
from ..result import ChatResult, Choice, Chunk, Usage
from ..signals import final_answer
from .generate import ChoiceDecoder, sampling_for

if TYPE_CHECKING:
    from ..scheduler import Scheduler

Role = Literal["ir", "kg", "dr"]
# (role, user text) -> the prompt tokens; the engine renders the chat template.
PromptMaker = Callable[[Role, str], PreparedPrompt]


def role_text(role: Role, instruction: str, question: str, knowledge: str = "") -> str:
    """The user turn of one role: the instruction, the question and (for DR) KG's knowledge."""
    if role == "dr":
        return f"{instruction}\n\nQuestion: {question}\n\nKnowledge: {knowledge.strip()}"
    return f"{instruction}\n\nQuestion: {question}"


def output_text(choice: Choice) -> str:
    """What a role wrote: its answer channel, else its reasoning (a student that only thinks)."""
    return choice.content if choice.content.strip() else choice.reasoning


@dataclass
class Round:
    """One iteration as the loop sees it: IR's and DR's finished choices, their answers, DR's knowledge."""

    ir: Choice | None = None
    dr: Choice | None = None
    ir_answer: str | None = None
    dr_answer: str | None = None
    knowledge: str = ""  # what DR was given (KG's output, cut to fit when ``knowledge_truncated``)
    knowledge_truncated: bool = False


class LoridLoop:
    """LoRID's decisions, without an engine: what each role is asked, when the loop stops, which answer
    and output it returns, and the report. The local job (sequences on the scheduler) and the remote
    executor (requests with ``model=<adapter>``) run the roles and hand their finished choices here."""

    def __init__(self, question: str, lorid: LoridOptions) -> None:
        self.question, self.lorid = question, lorid
        self.rounds: list[Round] = []
        self.shown: dict[str, str] = {}  # answer key -> its normalised text, first seen

    def next_round(self) -> tuple[str, str]:
        """Open an iteration: IR's and KG's user turns."""
        self.rounds.append(Round())
        return self.text("ir"), self.text("kg")

    def text(self, role: Role, knowledge: str = "") -> str:
        return role_text(role, self.lorid.prompts[role], self.question, knowledge)

    def seed_offset(self, role: Role) -> int:
        """Each role of each iteration samples with its own seed."""
        return 3 * (len(self.rounds) - 1) + ("ir", "kg", "dr").index(role)

    def answer(self, choice: Choice) -> str | None:
        found = final_answer(choice.content, choice.reasoning, self.lorid.answer_format)
        if found is None:
            return None
        key = answer_key(found)
        self.shown.setdefault(key, found.normalized)
        return key

    def settle(self, ir: Choice, dr: Choice) -> tuple[str | None, bool] | None:
        """IR and DR of the current iteration finished: ``(answer key, agreed)`` when the loop is over (the
        sets of IR and DR answers intersect, or the iterations are spent: the majority), else None."""
        it = self.rounds[-1]
        it.ir, it.dr = ir, dr
        it.ir_answer, it.dr_answer = self.answer(ir), self.answer(dr)
        ir_set = {a for r in self.rounds if (a := r.ir_answer) is not None}
        dr_set = {a for r in self.rounds if (a := r.dr_answer) is not None}
        common = ir_set & dr_set
        if common:
            # Prefer an answer this iteration produced (it caused the agreement).
            return next((a for a in (it.dr_answer, it.ir_answer) if a in common), min(common)), True
        if len(self.rounds) >= self.lorid.max_iterations:
            votes = Counter(a for r in self.rounds for a in (r.ir_answer, r.dr_answer) if a is not None)
            return (votes.most_common(1)[0][0] if votes else None), False
        return None

    def result(
        self,
        key: str | None,
        agreed: bool,
        outputs: list[Choice],
        model: str,
        *,
        prompt_tokens: int,
        cached_tokens: int = 0,
    ) -> ChatResult:
        """The loop's result: DR's (else IR's) output from the latest iteration that gave ``key``; usage over
        ``outputs`` (every role output, KG's included, with their probes and tool runs); the ``lorid`` report."""
        source: Choice | None = None
        knowledge = ""
        for it in reversed(self.rounds):
            if key is not None and it.dr_answer == key:
                source, knowledge = it.dr, it.knowledge
            elif key is not None and it.ir_answer == key:
                source = it.ir
            if source is not None:
                break
        if source is None and self.rounds:
            last = self.rounds[-1]
            source, knowledge = last.dr or last.ir, last.knowledge
        answer = self.shown.get(key) if key is not None else None
        choice = Choice(
            index=0,
            content=source.content if source else "",
            reasoning=source.reasoning if source else "",
            finish_reason=source.finish_reason if source else "cancelled",
            completion_tokens=sum(c.completion_tokens for c in outputs),
            reasoning_tokens=sum(c.reasoning_tokens for c in outputs),
            answer=answer,
        )
        report: dict[str, Any] = {
            "iterations": len(self.rounds),
            "ir_answers": [self.shown.get(r.ir_answer) if r.ir_answer else None for r in self.rounds],
            "dr_answers": [self.shown.get(r.dr_answer) if r.dr_answer else None for r in self.rounds],
            "agreed": agreed,
            "answer": answer,
            "knowledge": knowledge,
        }
        if any(r.knowledge_truncated for r in self.rounds):
            report["knowledge_truncated"] = True  # DR got less than KG wrote
        usage = Usage.of_choices(prompt_tokens, outputs, cached_tokens)
        return ChatResult(choices=[choice], usage=usage, model=model, extra={"lorid": report})


@dataclass
class Iteration:
    """The local job's sequences of one iteration (the loop's Round holds their finished choices)."""

    ir: ChoiceDecoder | None = None
    kg: ChoiceDecoder | None = None
    dr: ChoiceDecoder | None = None


class LoridJob(Job):
    """The LoRID loop as a job: two sequences at a time (IR and KG→DR), each with room for an
    early-exit probe under the "auto" thinking budget."""

    def __init__(
        self,
        question: str,
        make_prompt: PromptMaker,
        opts: GenerationOptions,
        lorid: LoridOptions,
        *,
        model: str = "",
    ) -> None:
        super().__init__()
        self.question, self.make_prompt, self.opts, self.lorid, self.model = (
            question,
            make_prompt,
            opts,
            lorid,
            model,
        )
        self.adapters_used = frozenset(lorid.roles.values())
        self.slots_needed = 4 if opts.effective_thinking_budget == "auto" else 2
        self.loop = LoridLoop(question, lorid)
        self.iterations: list[Iteration] = []
        self.prompt_tokens = 0
        self.cached_tokens = 0

    # -- engine thread -------------------------------------------------------------------------------
    def start(self, sched: Scheduler) -> None:
        self.sched = sched
        self._next_iteration()

    def _next_iteration(self) -> None:
        it = Iteration()
        self.iterations.append(it)
        ir_text, kg_text = self.loop.next_round()
        it.ir = self._spawn("ir", self.make_prompt("ir", ir_text))
        it.kg = self._spawn("kg", self.make_prompt("kg", kg_text))

    def _spawn(self, role: Role, prompt: PreparedPrompt) -> ChoiceDecoder:
        self.prompt_tokens += len(prompt.tokens)
        d = ChoiceDecoder(self, self.sched, prompt, self.opts, index=0, stream=False)
        sampling = sampling_for(
            self.opts, self.loop.seed_offset(role), temperature=self.lorid.temperature, top_p=self.lorid.top_p
        )
        adapters = ((self.lorid.roles[role], 1.0),)
        seq = self.sched.spawn(
            d, prompt.tokens, sampling, adapters=adapters, owner=self, reuse=self.opts.cache_prompt
        )
        self.cached_tokens += seq.n_past
        d.attach(seq)
        return d

    def _dr_prompt(self, it: Round) -> PreparedPrompt:
        """DR's prompt with as much of KG's knowledge as leaves DR room to answer (see the module docs)."""
        n_ctx = self.sched.caps.n_ctx
        limit = n_ctx - min(self.opts.max_tokens if self.opts.max_tokens is not None else n_ctx, n_ctx // 4)
        backend = self.sched.backend
        tokens = backend.tokenize(it.knowledge) if it.knowledge else []
        keep = len(tokens)
        for _ in range(32):
            text = self.loop.text("dr", it.knowledge)
            try:
                prompt = self.make_prompt("dr", text)
            except ContextOverflowError as exc:
                if keep == 0:
                    raise
                keep = min(keep - 1, keep // 2, max(0, keep - (exc.n_prompt_tokens - limit)))
            else:
                over = len(prompt.tokens) - limit
                if over <= 0 or keep == 0:
                    return prompt
                keep = max(0, keep - over)
            it.knowledge = backend.detokenize(tokens[:keep])
            it.knowledge_truncated = True
        return self.make_prompt("dr", self.loop.text("dr"))

    def on_choice_done(self, decoder: ChoiceDecoder) -> None:
        if self.done:
            return
        it, round_ = self.iterations[-1], self.loop.rounds[-1]
        if decoder is it.kg:
            round_.knowledge = output_text(decoder.to_choice())
            it.dr = self._spawn("dr", self._dr_prompt(round_))
            return
        if it.ir is None or it.dr is None or not (it.ir.finished and it.dr.finished):
            return
        settled = self.loop.settle(it.ir.to_choice(), it.dr.to_choice())
        if settled is None:
            self._next_iteration()
        else:
            self._finish(*settled)

    def on_token(self, *args: Any) -> None:  # pragma: no cover - decoders own the sequences
        pass

    def on_ready(self, *args: Any) -> None:  # pragma: no cover
        pass

    def on_context_full(self, *args: Any) -> None:  # pragma: no cover
        pass

    def abort(self, sched: Scheduler) -> None:
        for it in self.iterations:
            for d in (it.ir, it.kg, it.dr):
                if d is not None:
                    d.cancel()
        self._finish(None, False)

    def _finish(self, key: str | None, agreed: bool) -> None:
        if self.done:
            return
        decoders = [d for it in self.iterations for d in (it.ir, it.kg, it.dr) if d is not None]
        if self.iterations and self.loop.rounds[-1].ir is None:  # cancelled mid-iteration: its outputs so far
            it, round_ = self.iterations[-1], self.loop.rounds[-1]
            round_.ir = it.ir.to_choice() if it.ir is not None else None
            round_.dr = it.dr.to_choice() if it.dr is not None else None
        outputs = [d.to_choice() for d in decoders]
        res = self.loop.result(
            key,
            agreed,
            outputs,
            self.model,
            prompt_tokens=self.prompt_tokens,
            cached_tokens=self.cached_tokens,
        )
        choice = res.choices[0]
        # Streaming callers get the chosen output once the loop has settled (role outputs are not streamed).
        if choice.reasoning:
            self.emit(Chunk("reasoning", choice.reasoning))
        if choice.content:
            self.emit(Chunk("content", choice.content))
        self.complete(res)
