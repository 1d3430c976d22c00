"""One options object for a generation request, validated once at the boundary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InvalidRequestError

DEFAULT_TEMPERATURE = 0.7
MAX_STOP_STRINGS = 8


class GenerationOptions(BaseModel):
    """Everything a request can set. Unknown fields are rejected, values checked once here."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tokens: int | None = Field(default=None, ge=0, description="cap on generated tokens (reasoning + answer)")
    temperature: float = Field(default=DEFAULT_TEMPERATURE, ge=0.0, le=5.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    top_k: int = Field(default=40, ge=0)
    min_p: float = Field(default=0.05, ge=0.0, le=1.0)
    repeat_penalty: float = Field(default=1.0, gt=0.0, le=5.0)
    repeat_last_n: int = Field(default=64, ge=0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    seed: int | None = Field(default=None, ge=0, lt=2**32)
    stop: tuple[str, ...] = Field(default=(), max_length=MAX_STOP_STRINGS)
    n: int = Field(default=1, ge=1, le=64, description="independent choices, decoded in one batch")
    logprobs: bool = Field(default=False, description="record each generated token's log-probability")
    top_logprobs: int = Field(default=0, ge=0, le=20, description="and this many alternatives per token")
    thinking: bool | Literal["auto"] = "auto"
    ignore_eos: bool = Field(default=False, description="keep generating past end-of-generation (benchmarks)")

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

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def build(cls, base: GenerationOptions | None = None, overrides: Mapping[str, Any] | None = None) -> GenerationOptions:
        """Merge ``overrides`` into ``base`` (or the defaults), raising InvalidRequestError on bad values."""
        data = base.model_dump() if base is not None else {}
        data.update(overrides or {})
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from None


def validation_error(exc: ValidationError) -> InvalidRequestError:
    """Turn pydantic's report into one readable line naming the first bad field."""
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first.get("loc", ())) or None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        msg = "unknown option"
    return InvalidRequestError(f"{param}: {msg}" if param else msg, param=param)
