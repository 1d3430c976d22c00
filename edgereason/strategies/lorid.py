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
from dataclasses import dataclass, field
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


@dataclass
class Iteration:
    ir: ChoiceDecoder | None = None
    kg: ChoiceDecoder | None = None
    dr: ChoiceDecoder | None = None
    ir_answer: str | None = None
    dr_answer: str | None = None
    knowledge: str = ""  # what DR was given (KG's output, cut to fit when ``knowledge_truncated``)
    knowledge_truncated: bool = False
    shown: dict[str, str] = field(default_factory=dict)  # answer key -> normalised text


class _RoleDecoder(ChoiceDecoder):
    """A role's sequence; a full context ends it like any other finish (the loop goes on)."""

    def on_context_full(self, seq: Any) -> None:
        super().on_context_full(seq)
        self.job_choice_done()


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
        self.iterations: list[Iteration] = []
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.shown: dict[str, str] = {}  # answer key -> its normalised text, first seen

    # -- engine thread -------------------------------------------------------------------------------
    def start(self, sched: Scheduler) -> None:
        self.sched = sched
        self._next_iteration()

    def _next_iteration(self) -> None:
        it = Iteration()
        self.iterations.append(it)
        it.ir = self._spawn(
            "ir", self.make_prompt("ir", role_text("ir", self.lorid.prompts["ir"], self.question))
        )
        it.kg = self._spawn(
            "kg", self.make_prompt("kg", role_text("kg", self.lorid.prompts["kg"], self.question))
        )

    def _spawn(self, role: Role, prompt: PreparedPrompt) -> ChoiceDecoder:
        self.prompt_tokens += len(prompt.tokens)
        d = _RoleDecoder(self, self.sched, prompt, self.opts, index=0, stream=False)
        offset = 3 * (len(self.iterations) - 1) + ("ir", "kg", "dr").index(role)
        sampling = sampling_for(self.opts, offset, temperature=self.lorid.temperature, top_p=self.lorid.top_p)
        adapters = ((self.lorid.roles[role], 1.0),)
        seq = self.sched.spawn(
            d, prompt.tokens, sampling, adapters=adapters, owner=self, reuse=self.opts.cache_prompt
        )
        self.cached_tokens += seq.n_past
        d.attach(seq)
        return d

    def _dr_prompt(self, it: Iteration) -> PreparedPrompt:
        """DR's prompt with as much of KG's knowledge as leaves DR room to answer (see the module docs)."""
        n_ctx = self.sched.caps.n_ctx
        limit = n_ctx - min(self.opts.max_tokens if self.opts.max_tokens is not None else n_ctx, n_ctx // 4)
        backend = self.sched.backend
        tokens = backend.tokenize(it.knowledge) if it.knowledge else []
        keep = len(tokens)
        for _ in range(32):
            text = role_text("dr", self.lorid.prompts["dr"], self.question, it.knowledge)
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
        return self.make_prompt("dr", role_text("dr", self.lorid.prompts["dr"], self.question, ""))

    def on_choice_done(self, decoder: ChoiceDecoder) -> None:
        if self.done:
            return
        it = self.iterations[-1]
        if decoder is it.kg:
            it.knowledge = _output_text(decoder)
            it.dr = self._spawn("dr", self._dr_prompt(it))
            return
        if it.ir is None or it.dr is None or not (it.ir.finished and it.dr.finished):
            return
        it.ir_answer = self._answer(it.ir)
        it.dr_answer = self._answer(it.dr)
        ir_set = {a for i in self.iterations if (a := i.ir_answer) is not None}
        dr_set = {a for i in self.iterations if (a := i.dr_answer) is not None}
        common = ir_set & dr_set
        if common:
            # Prefer an answer this iteration produced (it caused the agreement).
            pick = next((a for a in (it.dr_answer, it.ir_answer) if a in common), min(common))
            self._finish(pick, agreed=True)
        elif len(self.iterations) >= self.lorid.max_iterations:
            votes = Counter(a for i in self.iterations for a in (i.ir_answer, i.dr_answer) if a is not None)
            self._finish(votes.most_common(1)[0][0] if votes else None, agreed=False)
        else:
            self._next_iteration()

    def _answer(self, d: ChoiceDecoder) -> str | None:
        found = final_answer("".join(d.content), "".join(d.reasoning), self.lorid.answer_format)
        if found is None:
            return None
        key = answer_key(found)
        self.shown.setdefault(key, found.normalized)
        return key

    def on_token(self, *args: Any) -> None:  # pragma: no cover - decoders own the sequences
        pass

    def on_ready(self, *args: Any) -> None:  # pragma: no cover
        pass

    def on_context_full(self, *args: Any) -> None:  # pragma: no cover
        pass

    def abort(self, sched: Scheduler) -> None:
        for it in self.iterations:
            for d in (it.ir, it.kg, it.dr):
                if d is not None and d.seq is not None and d.seq.live:
                    d._finalize(d.seq, "cancelled")
                    sched.finish(d.seq)
        self._finish(None, agreed=False)

    def _finish(self, key: str | None, *, agreed: bool) -> None:
        if self.done:
            return
        # The reported output: DR's (else IR's) text from the latest iteration that gave this answer.
        source: ChoiceDecoder | None = None
        knowledge = ""
        for it in reversed(self.iterations):
            if key is not None and it.dr_answer == key:
                source, knowledge = it.dr, it.knowledge
            elif key is not None and it.ir_answer == key:
                source = it.ir
            if source is not None:
                break
        if source is None and self.iterations:
            last = self.iterations[-1]
            source = last.dr or last.ir
            knowledge = last.knowledge
        answer = self.shown.get(key) if key is not None else None
        decoders = [d for it in self.iterations for d in (it.ir, it.kg, it.dr) if d is not None]
        base = source.to_choice() if source is not None else None
        choice = Choice(
            index=0,
            content=base.content if base else "",
            reasoning=base.reasoning if base else "",
            finish_reason=base.finish_reason if base else "cancelled",
            completion_tokens=sum(d.completion_tokens for d in decoders),
            reasoning_tokens=sum(d.reasoning_tokens for d in decoders),
            answer=answer,
        )
        report = {
            "iterations": len(self.iterations),
            "ir_answers": [self.shown.get(i.ir_answer) if i.ir_answer else None for i in self.iterations],
            "dr_answers": [self.shown.get(i.dr_answer) if i.dr_answer else None for i in self.iterations],
            "agreed": agreed,
            "answer": answer,
            "knowledge": knowledge,
        }
        if any(i.knowledge_truncated for i in self.iterations):
            report["knowledge_truncated"] = True  # DR got less than KG wrote (see _dr_prompt)
        usage = Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=choice.completion_tokens,
            reasoning_tokens=choice.reasoning_tokens,
            cached_tokens=self.cached_tokens,
        )
        # Streaming callers get the chosen output once the loop has settled (role outputs are not streamed).
        if choice.reasoning:
            self.emit(Chunk("reasoning", choice.reasoning))
        if choice.content:
            self.emit(Chunk("content", choice.content))
        self.complete(ChatResult(choices=[choice], usage=usage, model=self.model, extra={"lorid": report}))


def _output_text(d: ChoiceDecoder) -> str:
    """What a decoder wrote: its answer channel, else its reasoning (a student that only thinks)."""
    content = "".join(d.content)
    return content if content.strip() else "".join(d.reasoning)
