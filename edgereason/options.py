"""One options object for a generation request, validated once at the boundary."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import InvalidRequestError
from .structured import DEFAULT_GRAMMAR_ROOT, MAX_GRAMMAR_CHARS, check_grammar, grammar_for_response_format
from .tools.builtin import DEFAULT_MAX_TOOL_CALLS, check_builtin_tools

DEFAULT_TEMPERATURE = 0.7
MAX_STOP_STRINGS = 8
# Thinking budgets (see strategies/budget.py). reasoning_effort maps to these reasoning-token caps;
# "none" turns thinking off. Sized for small on-device students; pass thinking_budget to override.
DEFAULT_EFFORT_BUDGETS: dict[str, int | None] = {"none": None, "low": 256, "medium": 1024, "high": 4096}
DEFAULT_WRAP_UP = (
    "Considering the limited time, I have to give the solution based on the thinking directly now."
)
# DEER's markers (it probes at "Wait"), not paragraph breaks: a step-by-step model's paragraph ends fall
# mid-computation, where a trial answer is a confident intermediate value (measured on the demo student).
DEFAULT_TRANSITION_MARKERS = ("Wait", "Alternatively", "Hmm")
DEFAULT_AUTO_BUDGET_CAP = 1024
DEFAULT_MAX_SAMPLES = 64  # most self-consistency samples one request may ask for
MAX_EARLY_EXIT_AGREE = 10  # most successive agreeing trial answers early exit may want
MAX_LOGIT_BIAS = 100.0  # OpenAI's range; +-100 bans or forces a token
MAX_LOGIT_BIAS_TOKENS = 1024


class SelfConsistencyOptions(BaseModel):
    """Sample several reasoning paths in one batch and vote on their extracted answers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    samples: int = Field(
        default=8, ge=1, le=DEFAULT_MAX_SAMPLES, description="samples (the most, when adaptive or timed)"
    )
    temperature: float = Field(default=0.6, ge=0.0, le=5.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    adaptive: Literal[False, "beta", "esc"] = Field(
        default=False, description="stopping rule: Beta (Adaptive-Consistency) or ESC windows"
    )
    threshold: float = Field(
        default=0.95, gt=0.5, lt=1.0, description="beta: stop once P(leader is the majority) reaches this"
    )
    window: int = Field(default=5, ge=1, le=DEFAULT_MAX_SAMPLES, description="esc: samples per window")
    strategy: Literal["majority", "weighted"] = Field(
        default="majority", description="weighted: DeepConf trace confidence"
    )
    time_budget_s: float | None = Field(
        default=None, gt=0.0, description="keep sampling until this deadline, then vote"
    )
    parallel: int | None = Field(
        default=None,
        ge=1,
        le=DEFAULT_MAX_SAMPLES,
        description="samples decoded at once (default: as many as the slots hold); fewer lets an adaptive "
        "stop save the compute of samples not yet started",
    )
    answer_format: Literal["auto", "number", "boxed", "choice", "text"] = "auto"
    mismatch: Literal["keep", "drop", "downweight"] = Field(
        default="keep",
        description="samples whose reasoning and final answer disagree: vote, abstain, or half a vote",
    )
    failed_code: Literal["keep", "drop"] = Field(
        default="drop",
        description="built-in Python tool: samples whose every code run failed lose their vote when "
        "another sample's code ran (Agent Distillation's self-consistent action generation)",
    )

    @field_validator("adaptive", mode="before")
    @classmethod
    def _adaptive_alias(cls, v: Any) -> Any:
        return "beta" if v is True else v


DEFAULT_LORID_PROMPTS = {
    "ir": "Please answer this question step by step.",
    "kg": "Please output the knowledge needed to solve the question step by step.",
    "dr": "Please reason step by step based on the given question and knowledge, and output the final answer.",
}
MAX_ADAPTER_SCALE = 4.0


class AdapterRef(BaseModel):
    """One LoRA adapter of a request, by the name it was loaded under."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=256)
    scale: float = Field(default=1.0, ge=-MAX_ADAPTER_SCALE, le=MAX_ADAPTER_SCALE)


class LoridOptions(BaseModel):
    """LoRID: an intuitive reasoner (IR) and a knowledge generator + deep reasoner (KG→DR) until they agree."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    roles: dict[str, str] = Field(
        default_factory=lambda: {"ir": "ir", "kg": "kg", "dr": "dr"}, description="role -> adapter name"
    )
    prompts: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_LORID_PROMPTS), description="role -> instruction"
    )
    max_iterations: int = Field(default=8, ge=1, le=32)
    temperature: float = Field(default=1.0, ge=0.0, le=5.0, description="the paper samples at 1.5")
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    answer_format: Literal["auto", "number", "boxed", "choice", "text"] = "auto"

    @field_validator("roles", "prompts", mode="after")
    @classmethod
    def _fill_defaults(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        base = {"ir": "ir", "kg": "kg", "dr": "dr"} if info.field_name == "roles" else DEFAULT_LORID_PROMPTS
        unknown = sorted(set(v) - set(base))
        if unknown:
            raise ValueError(f"unknown role {unknown[0]!r}; roles are ir, kg, dr")
        if any(not x for x in v.values()):
            raise ValueError("empty value")
        return {**base, **v}


class GenerationOptions(BaseModel):
    """Everything a request can set. Unknown fields are rejected, values checked once here."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tokens: int | None = Field(
        default=None, ge=0, description="cap on generated tokens (reasoning + answer)"
    )
    temperature: float = Field(default=DEFAULT_TEMPERATURE, ge=0.0, le=5.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    top_k: int = Field(default=40, ge=0)
    min_p: float = Field(default=0.05, ge=0.0, le=1.0)
    repeat_penalty: float = Field(default=1.0, gt=0.0, le=5.0)
    repeat_last_n: int = Field(default=64, ge=0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: tuple[tuple[int, float], ...] = Field(
        default=(),
        max_length=MAX_LOGIT_BIAS_TOKENS,
        description="token id -> bias in [-100, 100] added to its logit (OpenAI's logit_bias; a dict)",
    )
    seed: int | None = Field(default=None, ge=0, lt=2**32)
    stop: tuple[str, ...] = Field(default=(), max_length=MAX_STOP_STRINGS)
    n: int = Field(default=1, ge=1, le=64, description="independent choices, decoded in one batch")
    logprobs: bool = Field(default=False, description="record each generated token's log-probability")
    top_logprobs: int = Field(default=0, ge=0, le=20, description="and this many alternatives per token")
    thinking: bool | Literal["auto"] = "auto"
    ignore_eos: bool = Field(default=False, description="keep generating past end-of-generation (benchmarks)")
    cache_prompt: bool = Field(
        default=True,
        description="reuse the KV a finished request left for this prompt's prefix (llama-server's name); "
        "false decodes the whole prompt and keeps nothing for later requests",
    )
    self_consistency: SelfConsistencyOptions | None = Field(
        default=None, description="an int N or an object: vote over N samples"
    )
    adapter: str | None = Field(default=None, min_length=1, description="a loaded LoRA adapter, at scale 1")
    adapters: tuple[AdapterRef, ...] | None = Field(
        default=None, max_length=8, description="LoRA adapters with scales"
    )
    strategy: Literal["generate", "lorid"] | None = Field(
        default=None, description="'lorid': the multi-LoRA loop"
    )
    lorid: LoridOptions | None = Field(default=None, description="LoRID settings (implies strategy 'lorid')")
    # -- the built-in Python tool (tools/builtin.py): the engine runs the model's code blocks ------
    builtin_tools: tuple[str, ...] = Field(
        default=(),
        max_length=4,
        description="tools the engine runs itself when the model writes for them: python",
    )
    max_tool_calls: int = Field(
        default=DEFAULT_MAX_TOOL_CALLS,
        ge=0,
        le=64,
        description="code blocks run per choice; later ones stay text",
    )
    # -- structured output (structured.py): constrains the answer only, after any thinking ---------
    grammar: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_GRAMMAR_CHARS,
        description="GBNF (llama.cpp's grammar format) the answer must match; thinking before it is free",
    )
    grammar_root: str = Field(
        default=DEFAULT_GRAMMAR_ROOT, pattern=r"^[a-zA-Z0-9-]+$", description="the grammar's start rule"
    )
    response_format: dict[str, Any] | None = Field(
        default=None,
        description="OpenAI's response_format: text, json_object or json_schema (a grammar for the answer)",
    )

    @field_validator("self_consistency", mode="before")
    @classmethod
    def _samples_shorthand(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return {"samples": v}
        return v

    @field_validator("response_format")
    @classmethod
    def _known_format(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            grammar_for_response_format(v)  # InvalidRequestError naming the bad field
        return v

    @model_validator(mode="after")
    def _one_grammar(self) -> GenerationOptions:
        if self.grammar is not None:
            if self.response_format is not None and self.response_format.get("type") != "text":
                raise InvalidRequestError(
                    "give either grammar or a JSON response_format, not both", param="grammar"
                )
            check_grammar(self.grammar, self.grammar_root)
        if self.answer_grammar is not None and self.uses_lorid:
            raise InvalidRequestError(
                "LoRID's roles write knowledge and reasoning, not the answer alone: it takes no grammar",
                param="grammar",
            )
        if self.answer_grammar is not None and self.early_exit_answer == "trial":
            raise InvalidRequestError(
                "early_exit_answer 'trial' writes the answer itself, so a grammar cannot constrain it; "
                "use early_exit_answer 'model'",
                param="early_exit_answer",
            )
        return self

    @property
    def answer_grammar(self) -> tuple[str, str] | None:
        """(GBNF, root rule) the answer must match: ``grammar``, else ``response_format``'s; None if free."""
        if self.grammar is not None:
            return self.grammar, self.grammar_root
        if self.response_format is None:
            return None
        gbnf = _response_format_grammar(json.dumps(self.response_format, sort_keys=True))
        return (gbnf, DEFAULT_GRAMMAR_ROOT) if gbnf is not None else None

    @field_validator("builtin_tools", mode="before")
    @classmethod
    def _tool_names(cls, v: Any) -> Any:
        if v is None:
            return ()
        return (v,) if isinstance(v, str) else v

    @field_validator("builtin_tools")
    @classmethod
    def _known_tools(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_builtin_tools(v)

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _bias_pairs(cls, v: Any) -> Any:
        if v is None:
            return ()
        if not isinstance(v, Mapping):
            return v
        pairs = []
        for key, bias in v.items():
            token = key.strip() if isinstance(key, str) else key
            if isinstance(token, str) and token.isdigit():
                token = int(token)
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                raise ValueError(f"keys are token ids (non-negative integers as strings), got {key!r}")
            pairs.append((token, bias))
        return sorted(pairs)

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, v: tuple[tuple[int, float], ...]) -> tuple[tuple[int, float], ...]:
        for token, bias in v:
            if not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
                raise ValueError(f"the bias of token {token} is {bias}; biases lie in [-100, 100]")
        return v

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, v: Any) -> Any:
        if v is None:
            return ()
        if isinstance(v, str):
            return (v,)
        return v

    @field_validator("stop")
    @classmethod
    def _stop_nonempty(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not s for s in v):
            raise ValueError("stop strings must be non-empty")
        return v

    # -- thinking budgets ------------------------------------------------------------------------
    thinking_budget: int | Literal["auto"] | None = Field(
        default=None,
        validation_alias=AliasChoices("thinking_budget", "thinking_token_budget"),
        description="cap on reasoning tokens (exact), or 'auto' for adaptive early exit (DEER)",
    )
    reasoning_effort: Literal["none", "low", "medium", "high"] | None = Field(
        default=None, description="a thinking budget from DEFAULT_EFFORT_BUDGETS; 'none' skips thinking"
    )
    min_thinking: StrictInt | None = Field(default=None, ge=0, description="reasoning tokens to write")
    max_waits: int = Field(default=2, ge=0, le=16, description="most 'Wait' extensions for min_thinking")
    wrap_up: str = Field(default=DEFAULT_WRAP_UP, max_length=400, description="said before a forced close")
    early_exit_threshold: float = Field(default=0.95, gt=0.0, le=1.0)
    early_exit_max_probes: int = Field(default=10, ge=0, le=100)
    early_exit_probe_tokens: int = Field(default=20, ge=1, le=64)
    early_exit_confidence: Literal["mean", "geometric", "min"] = "mean"
    early_exit_agree: int = Field(
        default=1,
        ge=1,
        le=MAX_EARLY_EXIT_AGREE,
        description="exit once this many successive trial answers agree, each confident (1: DEER as published)",
    )
    early_exit_answer: Literal["model", "trial"] = Field(
        default="model",
        description="after an early exit the model answers (DEER), or the confident trial answer is the answer",
    )
    early_exit_prefix: str | None = Field(
        default=None, min_length=1, description="trial-answer prefix; default by format"
    )
    transition_markers: tuple[str, ...] = Field(
        default=DEFAULT_TRANSITION_MARKERS, min_length=1, max_length=16
    )
    auto_budget_cap: int = Field(default=DEFAULT_AUTO_BUDGET_CAP, ge=1, description="overall cap in 'auto'")
    loop_guard: bool | None = Field(default=None, description="close degenerate thinking; None: on in 'auto'")

    @field_validator("thinking_budget", mode="before")
    @classmethod
    def _budget_int_or_auto(cls, v: Any) -> Any:
        if v is None or v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"must be a non-negative integer or 'auto', got {v!r}")
        return v

    @field_validator("reasoning_effort")
    @classmethod
    def _effort_vs_budget(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v == "none" and info.data.get("thinking_budget") is not None:
            raise ValueError("'none' turns thinking off; drop thinking_budget or pick low/medium/high")
        return v

    @field_validator("min_thinking")
    @classmethod
    def _min_within_budget(cls, v: int | None, info: ValidationInfo) -> int | None:
        budget = info.data.get("thinking_budget")
        if budget is None and info.data.get("reasoning_effort") is not None:
            budget = DEFAULT_EFFORT_BUDGETS[info.data["reasoning_effort"]]
        if v is not None and isinstance(budget, int) and v > budget:
            raise ValueError(f"min_thinking ({v}) is larger than thinking_budget ({budget})")
        return v

    @property
    def effective_thinking_budget(self) -> int | Literal["auto"] | None:
        """thinking_budget, else the reasoning_effort table's budget."""
        if self.thinking_budget is not None:
            return self.thinking_budget
        return DEFAULT_EFFORT_BUDGETS[self.reasoning_effort] if self.reasoning_effort else None

    @property
    def effective_thinking(self) -> bool | Literal["auto"]:
        """thinking, turned off by reasoning_effort='none'."""
        return False if self.reasoning_effort == "none" else self.thinking

    # -- end of thinking budgets -------------------------------------------------------------------

    @field_validator("adapters")
    @classmethod
    def _adapters_unique(
        cls, v: tuple[AdapterRef, ...] | None, info: ValidationInfo
    ) -> tuple[AdapterRef, ...] | None:
        if v is not None:
            if info.data.get("adapter") is not None:
                raise ValueError("give either adapter or adapters, not both")
            if len({a.name for a in v}) != len(v):
                raise ValueError("an adapter is listed twice")
        return v

    @property
    def adapter_set(self) -> tuple[tuple[str, float], ...]:
        """The requested adapters as a sorted ((name, scale), ...) tuple; () is the base model."""
        if self.adapter is not None:
            return ((self.adapter, 1.0),)
        return tuple(sorted((a.name, a.scale) for a in self.adapters or ()))

    @property
    def uses_lorid(self) -> bool:
        return self.strategy == "lorid" or self.lorid is not None

    @classmethod
    def build(
        cls, base: GenerationOptions | None = None, overrides: Mapping[str, Any] | None = None
    ) -> GenerationOptions:
        """Merge ``overrides`` into ``base`` (or the defaults), raising InvalidRequestError on bad values."""
        # Only what was set: the result's model_fields_set stays the caller's (a remote server gets no defaults).
        data = base.model_dump(exclude_unset=True) if base is not None else {}
        data.update(overrides or {})
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from None


@functools.lru_cache(maxsize=64)
def _response_format_grammar(key: str) -> str | None:
    return grammar_for_response_format(json.loads(key))


def validation_error(exc: ValidationError) -> InvalidRequestError:
    """Turn pydantic's report into one readable line naming the first bad field."""
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first.get("loc", ())) or None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        msg = "unknown option"
    return InvalidRequestError(f"{param}: {msg}" if param else msg, param=param)
