"""Evaluation strategies (``greedy``, ``budget:N``, ``budget:auto``, ``sc:N``, ``sc:adaptive``, ``lorid``)
and the request fields each one sends to the engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..errors import InvalidRequestError
from ..options import DEFAULT_MAX_SAMPLES, MAX_EARLY_EXIT_AGREE, GenerationOptions

StrategyKind = Literal["greedy", "budget", "sc", "lorid"]
DEFAULT_ADAPTIVE_MAX = 16  # sc:adaptive samples at most this many
# ... and decodes this many at a time (a new one as each finishes), so that stopping early saves the
# compute of samples not started (Adaptive-Consistency samples one at a time; all 16 at once would stop
# when most of them are nearly done).
ADAPTIVE_PARALLEL = 4
DEFAULT_MAX_THINK = 256
DEFAULT_ANSWER_TOKENS = 64
DEFAULT_PROMPT = "{question}"
# Item i is seeded with seed + i * SEED_STRIDE; samples and LoRID roles add small offsets to that.
SEED_STRIDE = 1000
# What the strategy and the shared settings decide; --option cannot set these.
STRATEGY_FIELDS = frozenset(
    {
        "thinking",
        "seed",
        "max_tokens",
        "thinking_budget",
        "self_consistency",
        "strategy",
        "adapter",
        "builtin_tools",
    }
)
STRATEGY_HELP = "greedy | budget:N | budget:auto[:K][:trial] | sc:N | sc:adaptive[:MAX] | lorid"


@dataclass(frozen=True)
class StrategySpec:
    """One strategy to evaluate. ``samples`` is the most samples for ``sc`` (fixed or adaptive);
    ``agree``: for ``budget:auto:K``, the successive agreeing trial answers early exit wants;
    ``trial``: for ``budget:auto:trial``, an early exit answers with the confident trial answer."""

    kind: StrategyKind
    budget: int | Literal["auto"] | None = None
    samples: int = 1
    adaptive: bool = False
    agree: int = 1
    trial: bool = False

    @property
    def label(self) -> str:
        if self.kind == "budget":
            extra = (f":{self.agree}" if self.agree > 1 else "") + (":trial" if self.trial else "")
            return f"budget:{self.budget}{extra}"
        if self.kind == "sc" and self.adaptive:
            return "sc:adaptive" if self.samples == DEFAULT_ADAPTIVE_MAX else f"sc:adaptive:{self.samples}"
        if self.kind == "sc":
            return f"sc:{self.samples}"
        return self.kind

    def describe(self) -> dict[str, Any]:
        out = {"kind": self.kind, "budget": self.budget, "samples": self.samples, "adaptive": self.adaptive}
        if self.agree > 1:
            out["agree"] = self.agree
        if self.trial:
            out["trial"] = True
        if self.adaptive:
            out["parallel"] = ADAPTIVE_PARALLEL
        return out


def _positive(text: str, what: str, spec: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0 or (value == 0 and what == "samples"):
        raise InvalidRequestError(
            f"strategy {spec!r}: {what} must be a whole number, got {text!r}", "strategy"
        )
    if what == "samples" and value > DEFAULT_MAX_SAMPLES:
        raise InvalidRequestError(f"strategy {spec!r}: at most {DEFAULT_MAX_SAMPLES} samples", "strategy")
    return value


def parse_strategy(text: str) -> StrategySpec:
    """Parse one strategy spec; InvalidRequestError names the accepted forms."""
    parts = text.strip().lower().split(":")
    head, args = parts[0], parts[1:]
    if head in ("greedy", "lorid") and not args:
        return StrategySpec(head)  # type: ignore[arg-type]
    if head == "budget" and args and args[0] == "auto" and len(args) <= 3:
        trial = args[-1] == "trial" and len(args) > 1
        rest = args[1 : len(args) - trial]
        if len(rest) > 1:
            raise InvalidRequestError(f"unknown strategy {text!r}; use {STRATEGY_HELP}", param="strategy")
        agree = _positive(rest[0], "agreeing answers", text) if rest else 1
        if not 1 <= agree <= MAX_EARLY_EXIT_AGREE:
            raise InvalidRequestError(
                f"strategy {text!r}: K (agreeing trial answers) must be 1 to {MAX_EARLY_EXIT_AGREE}",
                "strategy",
            )
        return StrategySpec("budget", budget="auto", agree=agree, trial=trial)
    if head == "budget" and len(args) == 1:
        return StrategySpec("budget", budget=_positive(args[0], "budget", text))
    if head == "sc" and len(args) == 1 and args[0] != "adaptive":
        return StrategySpec("sc", samples=_positive(args[0], "samples", text))
    if head == "sc" and args and args[0] == "adaptive" and len(args) <= 2:
        most = _positive(args[1], "samples", text) if len(args) == 2 else DEFAULT_ADAPTIVE_MAX
        return StrategySpec("sc", samples=most, adaptive=True)
    raise InvalidRequestError(f"unknown strategy {text!r}; use {STRATEGY_HELP}", param="strategy")


@dataclass(frozen=True)
class EvalSettings:
    """What every strategy shares: token room, thinking mode, prompt template, base seed.

    Uncapped strategies (greedy, sc, lorid) get ``max_think + answer_tokens`` tokens; ``budget:N``
    gets ``N + answer_tokens``; ``budget:auto`` exits early within ``max_think``.
    """

    max_think: int = DEFAULT_MAX_THINK
    answer_tokens: int = DEFAULT_ANSWER_TOKENS
    thinking: bool | Literal["auto"] = True
    prompt: str = DEFAULT_PROMPT  # "{question}" is replaced by the item's question
    seed: int = 0
    adapter: str | None = None  # a loaded LoRA adapter for every strategy but lorid (which picks by role)
    tools: tuple[str, ...] = ()  # built-in tools the engine runs for every strategy (--tool python)
    # Generation options set on every request after the strategy's own (--option KEY=VALUE): how a dev
    # sweep varies a setting (early_exit_threshold, transition_markers, ...). Sorted (key, value) pairs.
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.max_think < 0 or self.answer_tokens < 1:
            raise InvalidRequestError("max_think must be >= 0 and answer_tokens >= 1", param="max_tokens")
        if "{question}" not in self.prompt:
            raise InvalidRequestError("the prompt template must contain {question}", param="prompt")
        reserved = sorted({k for k, _ in self.options} & STRATEGY_FIELDS)
        if reserved:
            raise InvalidRequestError(
                f"--option {reserved[0]}: the strategy sets it (choose it with --strategy or the eval flags)",
                param="option",
            )
        GenerationOptions.build(None, dict(self.options))  # a bad key or value fails before any work

    @property
    def max_tokens(self) -> int:
        return self.max_think + self.answer_tokens

    def user_text(self, question: str) -> str:
        return self.prompt.replace("{question}", question)

    def describe(self) -> dict[str, Any]:
        return {
            "max_think": self.max_think,
            "answer_tokens": self.answer_tokens,
            "thinking": self.thinking,
            "prompt": self.prompt,
            "seed": self.seed,
            "adapter": self.adapter,
            **({"tools": list(self.tools)} if self.tools else {}),
            **({"options": dict(self.options)} if self.options else {}),
        }


def request_fields(spec: StrategySpec, settings: EvalSettings, index: int) -> dict[str, Any]:
    """GenerationOptions fields for item ``index``; each item gets its own block of seeds."""
    fields: dict[str, Any] = {
        "thinking": settings.thinking,
        "seed": (settings.seed + index * SEED_STRIDE) % 2**32,
        "max_tokens": settings.max_tokens,
        "temperature": 0.0,
    }
    if spec.kind == "budget":
        fields["thinking_budget"] = spec.budget
        if spec.budget == "auto":
            fields["auto_budget_cap"] = max(1, settings.max_think)
            if spec.agree > 1:
                fields["early_exit_agree"] = spec.agree
            if spec.trial:
                fields["early_exit_answer"] = "trial"
        else:
            fields["max_tokens"] = int(spec.budget or 0) + settings.answer_tokens
    elif spec.kind == "sc":
        fields["self_consistency"] = {"samples": spec.samples, "adaptive": "beta" if spec.adaptive else False}
        if spec.adaptive:
            fields["self_consistency"]["parallel"] = ADAPTIVE_PARALLEL
    elif spec.kind == "lorid":
        fields["strategy"] = "lorid"
    if settings.adapter is not None and spec.kind != "lorid":
        fields["adapter"] = settings.adapter
    if settings.tools:
        fields["builtin_tools"] = list(settings.tools)
    fields.update(settings.options)
    return fields
