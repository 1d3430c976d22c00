"""Which free slot a new sequence gets, so that a prompt reuses the KV a finished sequence left behind.

A finished sequence's KV stays in its slot, keyed by the tokens it holds and its adapter set (an adapter
changes the KV). A new prompt takes the free slot holding its longest common prefix and decodes only the
rest; without a match it takes an empty slot, else the least recently used one. Pure bookkeeping: the
scheduler trims the backend's memory to what this says to keep.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .backends.base import AdapterSet

# Reusing fewer tokens than this is not worth giving up a slot that holds a longer history.
MIN_REUSE_TOKENS = 4
# A hit still decodes at least this many prompt tokens. On this llama.cpp build a call holding one token
# takes another kernel path than a call of several, and its logits differ (by up to 0.66 on the embedded
# model's chat prompt: another greedy token); any split into calls of >= 2 tokens gives the same logits
# bit for bit as one call, so a cache hit equals a cold run exactly.
MIN_SUFFIX_TOKENS = 2


@dataclass
class _Held:
    tokens: list[int] = field(default_factory=list)
    adapters: AdapterSet = ()
    last_used: int = 0


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token lists."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n], dtype=np.int64) != np.asarray(b[:n], dtype=np.int64))
    return int(diff[0]) if diff.size else n


class SlotCache:
    """Free slots and what each still holds.

    ``trim``: the backend can drop a suffix of a slot (KV caches). Recurrent state cannot: a slot is
    reused only when everything it holds is a prefix of the new prompt.
    """

    def __init__(self, n_slots: int, *, trim: bool = True, enabled: bool = True) -> None:
        self.trim = trim
        self.enabled = enabled
        self._free: dict[int, _Held] = {slot: _Held() for slot in range(n_slots)}
        self._clock = 0
        self.hits = 0
        self.reused_tokens = 0

    def __len__(self) -> int:
        return len(self._free)

    @property
    def warm(self) -> set[int]:
        """Free slots whose memory still holds a finished sequence's tokens."""
        return {slot for slot, held in self._free.items() if held.tokens}

    def release(self, slot: int, tokens: list[int] | None, adapters: AdapterSet = ()) -> None:
        """``slot`` is free again; it still holds ``tokens`` (None or [] when its memory was cleared)."""
        self._clock += 1
        keep = list(tokens) if tokens and self.enabled else []
        self._free[slot] = _Held(keep, adapters, self._clock)

    def take(
        self, prompt: list[int] | None = None, adapters: AdapterSet = (), *, reuse: bool = True
    ) -> tuple[int, int]:
        """A free slot for ``prompt`` and how many of its tokens the slot already holds (kept).

        At least ``MIN_SUFFIX_TOKENS`` prompt tokens are left to decode (exact logits, see above). Raises KeyError when
        no slot is free. The caller drops everything past the kept count from the backend's memory.
        """
        if not self._free:
            raise KeyError("no free slot")
        best, keep = None, 0
        if prompt and reuse and self.enabled:
            for slot, held in self._free.items():
                n = self._reusable(held, prompt, adapters)
                if n > keep:
                    best, keep = slot, n
        if best is None or keep < MIN_REUSE_TOKENS:
            best, keep = self._victim(), 0
        del self._free[best]
        if keep:
            self.hits += 1
            self.reused_tokens += keep
        return best, keep

    def _reusable(self, held: _Held, prompt: list[int], adapters: AdapterSet) -> int:
        if not held.tokens or held.adapters != adapters:
            return 0
        n = min(common_prefix(held.tokens, prompt), len(prompt) - MIN_SUFFIX_TOKENS)
        if not self.trim and n < len(held.tokens):
            return 0  # recurrent state holds exactly its tokens: only a full-history extension fits
        return n

    def _victim(self) -> int:
        """An empty slot if there is one, else the least recently used."""
        return min(self._free, key=lambda s: (bool(self._free[s].tokens), self._free[s].last_used))
