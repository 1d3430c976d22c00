"""A byte-level scripted Backend for deterministic unit tests of strategies' state machines.

Each sampler pops the bytes its test scripted for it, then EOS. Subclasses pick the script per
sampler (from the seed) and record what the strategy did (prefills, slots, adapters).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        self.adapter_names: list[str] = []  # names only: set_adapters applies nothing
        self.adapter_files: dict[str, Path] = {}

    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = True) -> list[int]:
        return list(text.encode())

    def token_bytes(self, token: int) -> bytes:
        return b"" if token == EOS else bytes([token])

    def special_piece(self, token: int) -> bytes:
        return self.token_bytes(token)

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

    def load_adapter(self, name: str, path: str | Path) -> None:
        self.adapter_names = sorted({*self.adapter_names, name})
        self.adapter_files[name] = Path(path)

    def unload_adapter(self, name: str) -> None:
        self.adapter_names = [n for n in self.adapter_names if n != name]
        self.adapter_files.pop(name, None)

    def set_adapters(self, adapters: AdapterSet) -> None:
        pass

    def close(self) -> None:
        pass


# -- fault injection ----------------------------------------------------------------------------------
FAULT_POINTS = ("decode", "sample", "copy_seq", "make_sampler", "callback", "tokenize")


class InjectedFault(RuntimeError):
    """What a FaultyBackend raises."""


@dataclass
class FaultPlan:
    """Raise at ``point`` from the ``after + 1``-th time a call there involves the job, every time after."""

    point: str
    after: int = 0
    seen: int = 0
    hit: bool = False


class FaultyBackend:
    """Wraps a real (or scripted) backend and raises at chosen points for chosen jobs.

    A call involves a job when it touches one of the job's sequences: decode (any item's slot), sample
    (the sampler's sequence), copy_seq (the source slot); make_sampler, tokenize on the engine thread and
    ``is_eog`` (called only inside controller callbacks: the "callback" point) involve the job whose code
    is running (``Scheduler.acting``). Tokenizing on a caller thread faults when that thread armed it
    (``arm_caller``): the request fails before it reaches the engine.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.info = inner.info
        self.capabilities = inner.capabilities
        self.sched: Any = None  # the engine's scheduler, set once the engine exists
        self.engine_thread: threading.Thread | None = None
        self.plans: dict[object, FaultPlan] = {}
        self._caller = threading.local()
        self.caller_hits = 0

    def attach(self, engine: Any) -> None:
        self.sched = engine.scheduler
        self.engine_thread = engine._thread

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    # -- who is involved ---------------------------------------------------------------------------------
    def _slot_owner(self, slot: int) -> object:
        return next((s.owner for s in self.sched.seqs if s.slot == slot), None)

    def _check(self, job: object, point: str) -> None:
        plan = self.plans.get(job) if job is not None else None
        if plan is None or plan.point != point:
            return
        plan.seen += 1
        if plan.seen > plan.after:
            plan.hit = True
            raise InjectedFault(f"injected {point} fault")

    def arm_caller(self, armed: bool) -> None:
        self._caller.armed = armed

    # -- the Backend protocol ------------------------------------------------------------------------------
    def decode(self, items: Sequence[BatchItem]) -> list[int]:
        for job in {self._slot_owner(it.slot) for it in items}:
            self._check(job, "decode")
        return self.inner.decode(items)  # type: ignore[no-any-return]

    def sample(self, sampler: Any, logits: int) -> int:
        owner = next((s.owner for s in self.sched.seqs if s.sampler is sampler), None)
        self._check(owner, "sample")
        return self.inner.sample(sampler, logits)  # type: ignore[no-any-return]

    def copy_seq(self, src: int, dst: int) -> None:
        self._check(self._slot_owner(src), "copy_seq")
        self.inner.copy_seq(src, dst)

    def make_sampler(self, params: Any) -> Any:
        if self.sched is not None:
            self._check(self.sched.acting, "make_sampler")
        return self.inner.make_sampler(params)

    def is_eog(self, token: int) -> bool:
        if self.sched is not None:
            self._check(self.sched.acting, "callback")
        return self.inner.is_eog(token)  # type: ignore[no-any-return]

    def tokenize(self, text: str, **kw: Any) -> list[int]:
        if threading.current_thread() is self.engine_thread:
            self._check(self.sched.acting, "tokenize")
        elif getattr(self._caller, "armed", False):
            self.caller_hits += 1
            raise InjectedFault("injected tokenize fault")
        return self.inner.tokenize(text, **kw)  # type: ignore[no-any-return]
