"""Prefix reuse across requests: slot choice (pure logic) and exactness on the real embedded model."""

from __future__ import annotations

import pytest

from edgereason.prefix_cache import MIN_REUSE_TOKENS, SlotCache, common_prefix


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [6]) == 0


def test_takes_the_slot_with_the_longest_prefix() -> None:
    cache = SlotCache(3)
    a, _ = cache.take([1] * 10)
    b, _ = cache.take([2] * 10)
    cache.release(a, list(range(20)))
    cache.release(b, list(range(12)) + [99] * 8)
    slot, keep = cache.take(list(range(30)))
    assert (slot, keep) == (a, 20)
    slot2, keep2 = cache.take(list(range(15)))
    assert (slot2, keep2) == (b, 12)
    assert cache.hits == 2 and cache.reused_tokens == 32


def test_leaves_one_token_to_decode() -> None:
    cache = SlotCache(1)
    s, _ = cache.take()
    cache.release(s, list(range(10)))
    assert cache.take(list(range(10))) == (s, 9)


def test_adapters_are_part_of_the_key() -> None:
    cache = SlotCache(2)
    s, _ = cache.take()
    cache.release(s, list(range(10)), (("ir", 1.0),))
    slot, keep = cache.take(list(range(12)), ())
    assert keep == 0
    assert slot != s  # the empty slot goes first; the adapter's history stays for its owner
    assert cache.take(list(range(12)), (("ir", 1.0),)) == (s, 10)


def test_short_matches_do_not_count_and_empty_slots_go_first() -> None:
    cache = SlotCache(2)
    s, _ = cache.take()
    cache.release(s, [7] * 50)
    slot, keep = cache.take([7] * (MIN_REUSE_TOKENS - 1) + [1, 2])
    assert keep == 0 and slot != s


def test_least_recently_used_is_evicted() -> None:
    cache = SlotCache(2)
    a, _ = cache.take()
    b, _ = cache.take()
    cache.release(a, [1] * 10)
    cache.release(b, [2] * 10)
    slot, keep = cache.take([3] * 10)
    assert (slot, keep) == (a, 0)


def test_recurrent_slots_only_extend() -> None:
    cache = SlotCache(1, trim=False)
    s, _ = cache.take()
    cache.release(s, list(range(10)))
    assert cache.take(list(range(5)) + [99] * 10)[1] == 0
    cache.release(s, list(range(10)))
    assert cache.take(list(range(14))) == (s, 10)


def test_opt_out_and_disabled() -> None:
    cache = SlotCache(1)
    s, _ = cache.take()
    cache.release(s, list(range(10)))
    assert cache.take(list(range(12)), reuse=False) == (s, 0)
    off = SlotCache(1, enabled=False)
    s, _ = off.take()
    off.release(s, list(range(10)))
    assert off.take(list(range(12))) == (s, 0)


def test_no_free_slot() -> None:
    cache = SlotCache(1)
    cache.take()
    with pytest.raises(KeyError):
        cache.take()
