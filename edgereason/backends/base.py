"""The Backend protocol: one model, many sequences.

Everything EdgeReason adds (budgets, probes, votes, LoRID, continuous batching) drives many
sequences over one model through this interface. Sequences are identified by small integer
slots ``0 <= slot < capabilities.max_sequences``; the scheduler owns slot allocation.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

AdapterSet = tuple[tuple[str, float], ...]  # ((name, scale), ...) sorted by name; () = base model


@dataclass(frozen=True)
class Capabilities:
    max_sequences: int  # slots available for concurrent sequences
    n_ctx: int  # tokens of memory shared by all sequences
    n_batch: int  # most tokens one decode call takes
    mixed_batch_tokens: int = 1 << 30  # most tokens in a call that mixes several sequences
    fork: bool = True  # copy_seq shares a sequence's state; else the scheduler re-prefills
    rewind: bool = True  # remove() with from_pos > 0 works
    lora: bool = False
    grammar: bool = False  # set_grammar/check_grammar work (GrammarBackend): GBNF-constrained sampling


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path | None
    format: str  # gguf | mlx | onnx | remote
    architecture: str
    quantization: str
    n_params: int
    size_bytes: int
    n_ctx_train: int
    n_vocab: int
    chat_template: str | None
    bos_token: str
    eos_token: str
    add_bos: bool
    has_think_token: bool


@dataclass(frozen=True)
class SamplingParams:
    """Per-sequence sampler settings; temperature 0 means greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = 0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)


@dataclass(frozen=True)
class BatchItem:
    """Tokens of one sequence in a decode call, at positions ``pos ..``; logits for the last if asked."""

    slot: int
    pos: int
    tokens: Sequence[int]
    want_logits: bool


@dataclass(frozen=True)
class TopLogprobs:
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (token, logprob), most likely first


class Sampler(Protocol):
    def close(self) -> None: ...


class Tokenizer(Protocol):
    """Text <-> tokens of one model (what a backend's surfaces, like the server's /tokenize, read)."""

    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = True) -> list[int]:
        """Text to token ids; with ``special``, special-token text (``<|im_start|>``) becomes the
        special token, else it is ordinary text (message contents)."""
        ...

    def token_bytes(self, token: int) -> bytes:
        """The bytes a token contributes to generated text (may be part of a UTF-8 character)."""
        ...

    def special_piece(self, token: int) -> bytes:
        """The token's bytes with control tokens written out (``<|im_end|>``), as llama-server shows them."""
        ...

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    def is_eog(self, token: int) -> bool:
        """End of generation (EOS, EOT, <|im_end|>...)."""
        ...


class Backend(Tokenizer, Protocol):
    info: ModelInfo
    capabilities: Capabilities

    def decode(self, items: Sequence[BatchItem]) -> list[int]:
        """Run one forward pass over tokens of many sequences.

        Returns, per item, the handle of its logits (for ``sample``/``top_logprobs``) or -1.
        Raises ``ContextFullError`` when the memory has no room for the batch.
        """
        ...

    def make_sampler(self, params: SamplingParams) -> Sampler: ...

    def sample(self, sampler: Sampler, logits: int) -> int:
        """Draw a token from a decode output with the sequence's sampler (and record it there)."""
        ...

    def top_logprobs(self, logits: int, token: int, k: int) -> TopLogprobs:
        """Log-probabilities (temperature 1) of ``token`` and the ``k`` most likely tokens."""
        ...

    def copy_seq(self, src: int, dst: int) -> None:
        """Make slot ``dst`` share everything slot ``src`` holds (prompt sharing, forks)."""
        ...

    def remove(self, slot: int, from_pos: int = 0) -> None:
        """Forget positions ``>= from_pos`` of a slot (0 frees it)."""
        ...

    # -- LoRA adapters (``capabilities.lora``; a backend without them refuses to load any) --
    @property
    def adapter_names(self) -> list[str]:
        """Names of the loaded adapters, sorted."""
        ...

    @property
    def adapter_files(self) -> Mapping[str, Path]:
        """Name -> the file or folder each loaded adapter came from (run records hash them)."""
        ...

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load an adapter under ``name`` (ModelLoadError for a bad file, or a backend without LoRA)."""
        ...

    def unload_adapter(self, name: str) -> None:
        """Free an adapter (UnknownAdapterError if it is not loaded)."""
        ...

    def set_adapters(self, adapters: AdapterSet) -> None:
        """Select the LoRA adapters the next decode calls apply."""
        ...

    def close(self) -> None: ...


class GrammarBackend(Protocol):
    """A backend whose samplers can be constrained by a GBNF grammar (``capabilities.grammar``)."""

    def check_grammar(self, grammar: str, root: str) -> None:
        """InvalidRequestError unless ``grammar`` (GBNF, start rule ``root``) works with this model."""
        ...

    def set_grammar(self, sampler: Sampler, grammar: str | None, root: str = "root") -> None:
        """Constrain ``sampler`` from its next token on with a fresh ``grammar`` (None: unconstrained).
        A sequence whose grammar is complete can only sample end-of-generation."""
        ...


def require_loaded(adapters: AdapterSet, loaded: Collection[str]) -> None:
    """UnknownAdapterError for the first adapter of ``adapters`` that is not in ``loaded``."""
    from ..errors import UnknownAdapterError

    for name, _ in adapters:
        if name not in loaded:
            raise UnknownAdapterError(f"adapter {name!r} is not loaded (loaded: {sorted(loaded) or 'none'})")


class ContextFullError(RuntimeError):
    """The backend's memory has no room for a decode batch."""
