"""The remote executor of the strategies: raw-prompt continuation with exact thinking budgets,
self-consistency over ``n`` samples in rounds, and the LoRID loop with ``model=<adapter>`` per role.

Each reuses the local strategies' pure parts (stopping rules, tallies, DeepConf confidence, sample
reports, LoRID prompts) so a remote result carries the same reports as a local one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..chat.reasoning import ChannelSplitter, PromptPlan, State
from ..errors import InvalidRequestError
from ..options import GenerationOptions, LoridOptions
from ..result import ChatResult, Chunk, FinishReason
from ..signals import final_answer
from ..strategies.budget import ThinkingPolicy
from ..strategies.generate import StopMatcher
from ..strategies.lorid import LoridLoop, Role, output_text
from ..strategies.self_consistency import DEFAULT_CONFIDENCE_TOP_K, SampleReport, vote
from ..strategies.voting import make_stopping_rule, token_confidence
from .http import RemoteOutput, completion_logprobs, finish_reason, llama_server_tokens
from .steer import SteeredChoice, close_thinking, steered

if TYPE_CHECKING:
    from .engine import RemoteEngine, RemoteJob

log = logging.getLogger(__name__)

DEFAULT_ROUND = 4  # samples per round under an adaptive stopping rule (ESC rounds are its window)
MAX_CONTINUATIONS = 16  # raw-prompt requests per choice (thinking, cap, answer)


# -- raw-prompt continuation (thinking budgets, text completions) ---------------------------------------------
def raw_choices(
    eng: RemoteEngine, job: RemoteJob, plan: PromptPlan, opts: GenerationOptions, model: str
) -> ChatResult:
    def one(i: int) -> RemoteOutput:
        emit = job.emit if job.emit_chunks else None
        return continue_prompt(
            eng, plan, opts, model, index=i, emit=emit, seed_offset=i, top_logprobs=opts.top_logprobs
        )

    outs = map_outputs(eng, one, range(opts.n))
    return eng.result([o.to_choice(i, opts) for i, o in enumerate(outs)], outs[0].prompt_tokens)


def map_outputs(
    eng: RemoteEngine, fn: Callable[[int], RemoteOutput], indices: Sequence[int]
) -> list[RemoteOutput]:
    if len(indices) == 1:
        return [fn(indices[0])]
    with ThreadPoolExecutor(max_workers=min(eng.parallel, len(indices))) as pool:
        return list(pool.map(fn, indices))


def continue_prompt(
    eng: RemoteEngine,
    plan: PromptPlan,
    opts: GenerationOptions,
    model: str,
    *,
    index: int = 0,
    emit: Callable[[Chunk], None] | None = None,
    seed_offset: int = 0,
    temperature: float | None = None,
    top_p: float | None = None,
    top_logprobs: int = 0,
) -> RemoteOutput:
    """One choice on /v1/completions: tokens are routed here, so the thinking cap is exact (as local).
    Per-token controls (``auto``, ``min_thinking``, the loop guard) stream it under remote/steer.py."""
    sampling = {"seed_offset": seed_offset, "temperature": temperature, "top_p": top_p}
    if steered(opts) and not plan.thinking_disabled:
        steer = SteeredChoice(
            eng, plan, opts, model, index=index, emit=emit, sampling=sampling, top_logprobs=top_logprobs
        )
        return steer.run()
    out = RemoteOutput()
    splitter = ChannelSplitter(starts_in_reasoning=plan.starts_in_reasoning, may_open=plan.may_open)
    stops = StopMatcher(opts.stop)
    prompt = plan.text
    budget = opts.effective_thinking_budget if not plan.thinking_disabled else None
    closed = 0  # prompt tokens of a think block closed here (budget 0)
    if plan.thinking_disabled:
        out.thinking_stopped_by = "disabled"
    elif budget == 0:  # closed in the prompt, nothing counted (as the local ThinkingController)
        text = ThinkingPolicy.zero_budget_text(plan)
        if text:
            prompt += text
            splitter.feed(text)
            out.thinking_stopped_by = "budget"
            # Not the caller's prompt either: usage.prompt_tokens counts the prompt as rendered (as local).
            count = eng.client.count_tokens
            closed = count(eng.model, prompt) - count(eng.model, plan.text)
        budget = None
    cap = reserve = wrap_n = 0
    policy = ThinkingPolicy(opts, plan.reasoning_format)  # the local controller's cap and wrap-up rules
    if isinstance(budget, int):
        wrap_n = eng.client.count_tokens(eng.model, policy.wrap_text) if policy.wrap_text else 0
        reserve = policy.reserve(wrap_n)
        cap = budget - reserve
    left = opts.max_tokens  # None: up to the server's limit
    for _ in range(MAX_CONTINUATIONS):
        thinking = isinstance(budget, int) and splitter.state is not State.CONTENT
        by_cap = thinking and (left is None or cap - out.reasoning_tokens < left)
        limit = cap - out.reasoning_tokens if by_cap else left
        if limit is not None and limit <= 0:
            out.finish_reason = "length"
            break
        pieces, finish = _completion(eng, prompt, opts, model, limit, sampling, top_logprobs, out)
        stopped = False
        for piece, n_tokens in pieces:
            was = splitter.in_reasoning
            safe, stopped = stops.feed(piece)
            out.add(splitter.feed(safe), emit, index)
            out.completion_tokens += n_tokens
            if was and splitter.in_reasoning:
                out.reasoning_tokens += n_tokens
            if was and not splitter.in_reasoning and out.thinking_stopped_by is None:
                out.thinking_stopped_by = "model"
            prompt += piece
            if stopped:
                break
        if left is not None:
            left -= sum(n for _, n in pieces)
        if stopped or finish == "stop":
            out.finish_reason = "stop"
            break
        if by_cap and splitter.in_reasoning and out.reasoning_tokens >= cap:
            prompt += close_thinking(eng, out, splitter, policy, wrap_n, emit, index, "budget")
            if opts.max_tokens is not None:
                left = opts.max_tokens - out.completion_tokens
            continue
        if by_cap and pieces:
            continue  # thinking ended inside the capped request: the answer goes on
        out.finish_reason = "length"
        break
    out.add(splitter.feed(stops.flush()) + splitter.flush(), emit, index)
    out.prompt_tokens = max(0, out.prompt_tokens - closed) if out.prompt_tokens else 0
    if splitter.in_reasoning and out.thinking_stopped_by is None:
        out.thinking_stopped_by = "model" if out.finish_reason == "stop" else "length"
    return out


def _completion(
    eng: RemoteEngine,
    prompt: str,
    opts: GenerationOptions,
    model: str,
    limit: int | None,
    sampling: dict[str, Any],
    top_logprobs: int,
    out: RemoteOutput,
) -> tuple[list[tuple[str, int]], FinishReason]:
    """One /v1/completions request: (text, tokens) pieces, one per token from the log-probs, and why it ended.

    Without per-token texts (or with a UTF-8 character split over tokens) the whole text is one piece
    counted as ``usage.completion_tokens``.
    """
    body = eng.body(opts, model, **sampling)
    body.pop("max_tokens", None)
    if limit is not None:
        body["max_tokens"] = limit
    body.update(prompt=prompt, logprobs=eng.top_logprobs(top_logprobs))
    resp = eng.client.post("/completions", body)
    choices = resp.get("choices") or [{}]
    ch = choices[0]
    if not out.prompt_tokens:
        out.prompt_tokens = int((resp.get("usage") or {}).get("prompt_tokens") or 0)
    finish = finish_reason(ch.get("finish_reason"))
    entries = completion_logprobs(ch.get("logprobs"), finish)
    usage = resp.get("usage") or {}
    n_tokens = int(usage.get("completion_tokens") or 0)
    exact = llama_server_tokens(usage, finish, bool(body.get("stop"))) if eng.flavor == "llamacpp" else None
    n_tokens = n_tokens if exact is None else exact
    # llama-server lists the tokens of a character split over several as one entry (usage counts each).
    one_each = exact is None or len(entries) == exact
    if entries and one_each and "\ufffd" not in "".join(e.token for e in entries):
        out.add_logprobs(entries)
        return [(e.token, 1) for e in entries], finish
    text = (ch.get("reasoning_content") or "") + (ch.get("text") or "")
    return ([(text, n_tokens)] if text or n_tokens else []), finish


# -- self-consistency -------------------------------------------------------------------------------------------
def self_consistency(
    eng: RemoteEngine,
    job: RemoteJob,
    msgs: list[dict[str, Any]] | None,
    plan: PromptPlan | None,
    opts: GenerationOptions,
    model: str,
) -> ChatResult:
    sc = opts.self_consistency
    assert sc is not None
    if opts.n != 1:
        raise InvalidRequestError("self_consistency returns one voted answer; leave n at 1", param="n")
    rule = make_stopping_rule(sc.adaptive, sc.threshold, sc.window)
    size = sc.samples if not sc.adaptive else (sc.window if sc.adaptive == "esc" else DEFAULT_ROUND)
    deadline = time.monotonic() + sc.time_budget_s if sc.time_budget_s is not None else None
    finished: list[SampleReport] = []
    prompt_tokens, stop_rule = 0, None
    while len(finished) < sc.samples:
        if job.cancel_requested.is_set() or (deadline is not None and time.monotonic() >= deadline):
            stop_rule = "cancelled" if job.cancel_requested.is_set() else "time_budget"
            break
        first, k = len(finished), min(size, sc.samples - len(finished))
        outs = _samples(eng, msgs, plan, opts, model, first, k)
        prompt_tokens = prompt_tokens or outs[0].prompt_tokens
        for i, out in enumerate(outs):
            finished.append(_sample_report(first + i, out, opts))
        if rule.should_stop([r.answer for r in finished], sc.samples) and len(finished) < sc.samples:
            stop_rule = rule.name
            break
    return _vote(eng, job, finished, stop_rule, rule.name, opts, prompt_tokens, size)


def _samples(
    eng: RemoteEngine,
    msgs: list[dict[str, Any]] | None,
    plan: PromptPlan | None,
    opts: GenerationOptions,
    model: str,
    first: int,
    k: int,
) -> list[RemoteOutput]:
    sc = opts.self_consistency
    assert sc is not None
    if plan is not None:  # budgets or raw prompts: one continuation per sample
        return map_outputs(
            eng,
            lambda i: continue_prompt(
                eng,
                plan,
                opts,
                model,
                seed_offset=i,
                temperature=sc.temperature,
                top_p=sc.top_p,
                top_logprobs=DEFAULT_CONFIDENCE_TOP_K,
            ),
            range(first, first + k),
        )
    assert msgs is not None
    split_plan = eng.render(msgs, opts.effective_thinking) if eng.chat_template else None

    body = eng.body(opts, model, seed_offset=first, temperature=sc.temperature, top_p=sc.top_p)
    body.update(
        messages=msgs, logprobs=True, top_logprobs=DEFAULT_CONFIDENCE_TOP_K, **eng.thinking_fields(opts)
    )
    if k > 1 and eng.n_ok:
        try:
            outs, prompt_tokens = eng.chat_choices(body, k, split_plan)
        except InvalidRequestError as exc:  # e.g. OpenAI reasoning models or a small server: n=1 only
            log.info("the server refused n=%d (%s); one request per sample", k, exc)
            eng.n_ok = False
        else:
            for o in outs:
                o.prompt_tokens = prompt_tokens
            return outs
    return eng.chat_one_by_one(body, range(k), split_plan)[0]


def _sample_report(index: int, out: RemoteOutput, opts: GenerationOptions) -> SampleReport:
    sc = opts.self_consistency
    assert sc is not None
    choice = out.to_choice(index, opts, sc.answer_format)
    found = final_answer(choice.content, choice.reasoning, sc.answer_format)
    confs = [token_confidence([v for _, v in e.top]) for e in out.logprobs if e.top]
    return SampleReport.of(index, choice, found, confs, sc)


def _vote(
    eng: RemoteEngine,
    job: RemoteJob,
    finished: list[SampleReport],
    stop_rule: str | None,
    rule: str,
    opts: GenerationOptions,
    prompt_tokens: int,
    parallel: int,
) -> ChatResult:
    """The local job's vote and report (strategies/self_consistency.vote); a round's samples finish
    together here, so none is ever cancelled unfinished."""
    choice, report = vote(finished, opts, stop_rule=stop_rule, rule=rule, cancelled=0, parallel=parallel)
    if choice.reasoning:
        job.emit(Chunk("reasoning", choice.reasoning))
    if choice.content:
        job.emit(Chunk("content", choice.content))
    res = eng.result([r.choice for r in finished], prompt_tokens, {"self_consistency": report})
    return ChatResult(choices=[choice], usage=res.usage, model=eng.name, extra=res.extra)


# -- LoRID ---------------------------------------------------------------------------------------------------
def lorid(eng: RemoteEngine, job: RemoteJob, question: str, opts: GenerationOptions) -> ChatResult:
    """The LoRID loop (strategies/lorid.LoridLoop decides) with each role a request to ``model=<its adapter>``."""
    lorid = opts.lorid or LoridOptions()
    if opts.adapter_set:
        raise InvalidRequestError("LoRID picks adapters by role; drop adapter/adapters", param="adapters")
    eng.require_adapters(list(lorid.roles.values()))
    loop = LoridLoop(question, lorid)
    outs: list[RemoteOutput] = []

    def run(role: Role, text: str, offset: int) -> RemoteOutput:
        role_opts = opts.model_copy(update={"strategy": None, "lorid": None})
        msgs = [{"role": "user", "content": text}]
        if eng.raw_budget(role_opts):
            plan = eng.render(msgs, role_opts.effective_thinking)
            return continue_prompt(
                eng,
                plan,
                role_opts,
                lorid.roles[role],
                seed_offset=offset,
                temperature=lorid.temperature,
                top_p=lorid.top_p,
            )
        body = eng.body(
            role_opts, lorid.roles[role], seed_offset=offset, temperature=lorid.temperature, top_p=lorid.top_p
        )
        body.update(messages=msgs, n=1, **eng.thinking_fields(role_opts))
        got, prompt_tokens = eng.chat_once(body, 1)
        got[0].prompt_tokens = prompt_tokens
        return got[0]

    settled: tuple[str | None, bool] | None = None
    with ThreadPoolExecutor(max_workers=2) as pool:
        while settled is None and not job.cancel_requested.is_set():
            ir_text, kg_text = loop.next_round()
            ir_f = pool.submit(run, "ir", ir_text, loop.seed_offset("ir"))
            kg = run("kg", kg_text, loop.seed_offset("kg"))
            knowledge = output_text(kg.to_choice(0, opts))
            loop.rounds[-1].knowledge = knowledge
            dr = run("dr", loop.text("dr", knowledge), loop.seed_offset("dr"))
            ir = ir_f.result()
            outs += [ir, kg, dr]
            settled = loop.settle(ir.to_choice(0, opts), dr.to_choice(0, opts))
    key, agreed = settled if settled is not None else (None, False)
    outputs = [o.to_choice(0, opts) for o in outs]
    return loop.result(key, agreed, outputs, eng.name, prompt_tokens=sum(o.prompt_tokens for o in outs))
