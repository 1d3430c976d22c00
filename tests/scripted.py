"""A byte-level scripted Backend for deterministic unit tests of strategies' state machines.

Each sampler pops the bytes its test scripted for it, then EOS. Subclasses pick the script per
sampler (from the seed) and record what the strategy did (prefills, slots, adapters).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgereason.backends.base import AdapterSet, BatchItem, Capabilities, ModelInfo, TopLogprobs

EOS = 0


@dataclass
class ScriptedSampler:
    seed: int
    out: list[int]

    def close(self) -> None:
        pass


def script_sampler(seed: int, text: str) -> ScriptedSampler:
    return ScriptedSampler(seed, [*text.encode(), EOS])


class ByteScriptBackend:
    """Bytes are tokens; decode returns a logits handle per item that asked for one."""

    def __init__(
        self, *, max_sequences: int = 4, chat_template: str | None = None, lora: bool = False
    ) -> None:
        self.info = ModelInfo(
            name="scripted", path=None, format="gguf", architecture="none", quantization="none", n_params=0,
            size_bytes=0, n_ctx_train=4096, n_vocab=256, chat_template=chat_template, bos_token="",
            eos_token="", add_bos=False, has_think_token=False,
        )  # fmt: skip
        self.capabilities = Capabilities(max_sequences=max_sequences, n_ctx=4096, n_batch=512, lora=lora)

    def tokenize(self, text: str, *, add_bos: bool = False) -> list[int]:
        return list(text.encode())

    def token_bytes(self, token: int) -> bytes:
        return b"" if token == EOS else bytes([token])

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode()

    def is_eog(self, token: int) -> bool:
        return token == EOS

    def decode(self, items: Sequence[BatchItem]) -> list[int]:
        return [i if it.want_logits else -1 for i, it in enumerate(items)]

    def sample(self, sampler: ScriptedSampler, logits: int) -> int:
        return sampler.out.pop(0) if sampler.out else EOS

    def top_logprobs(self, logits: int, token: int, k: int) -> TopLogprobs:
        return TopLogprobs(token=token, logprob=-0.1, top=((token, -0.1), (1, -4.0)))

    def copy_seq(self, src: int, dst: int) -> None:
        pass

    def remove(self, slot: int, from_pos: int = 0) -> None:
        pass

    def set_adapters(self, adapters: AdapterSet) -> None:
        pass

    def close(self) -> None:
        pass
