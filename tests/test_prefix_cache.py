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


def test_leaves_two_tokens_to_decode() -> None:
    cache = SlotCache(1)
    s, _ = cache.take()
    cache.release(s, list(range(10)))
    assert cache.take(list(range(10))) == (s, 8)


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
    assert cache.take(list(range(11)))[1] == 0  # one new token: the state cannot stop short of it
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


# -- on the real embedded model ------------------------------------------------------------------------
import edgereason as er  # noqa: E402

TURNS = [
    "A farmer has 12 cows and buys 7 more. How many cows does he have?",
    "And if he sells 5 of them?",
    "Now he doubles the herd. How many?",
]


@pytest.fixture(scope="module")
def warm(model_path) -> er.Engine:
    with er.load(model_path, n_ctx=1024, max_sequences=2, threads=2) as eng:
        yield eng


def _converse(eng: er.Engine, **opts: object) -> list[er.ChatResult]:
    msgs: list[dict[str, str]] = []
    out = []
    for q in TURNS:
        msgs.append({"role": "user", "content": q})
        res = eng.chat(msgs, max_tokens=24, temperature=0.0, **opts)
        out.append(res)
        msgs.append({"role": "assistant", "content": res.content})
    return out


def test_multi_turn_reuses_the_conversation_and_equals_a_cold_run(warm: er.Engine) -> None:
    cold = _converse(warm, cache_prompt=False)
    assert [r.usage.cached_tokens for r in cold] == [0, 0, 0]
    before = warm.scheduler.decoded_tokens
    hot = _converse(warm)
    assert [r.content for r in hot] == [r.content for r in cold]
    # Turn 1 may reuse the cold run's last slot only up to the shared system/user header; turns 2 and 3
    # reuse the whole previous prompt at least.
    for prev, res in zip(hot, hot[1:]):
        assert res.usage.cached_tokens >= prev.usage.prompt_tokens
        assert res.usage.cached_tokens < res.usage.prompt_tokens
    # Only the uncached suffix of each prompt is decoded (plus the generated tokens but the last of each).
    decoded = warm.scheduler.decoded_tokens - before
    expect = sum(r.usage.prompt_tokens - r.usage.cached_tokens + r.usage.completion_tokens for r in hot)
    assert expect - len(hot) <= decoded <= expect


def test_cache_hit_reports_the_common_prefix(warm: er.Engine) -> None:
    msgs = [{"role": "user", "content": TURNS[0]}]
    first = warm.chat(msgs, max_tokens=8, temperature=0.0)
    again = warm.chat(msgs, max_tokens=8, temperature=0.0)
    # The same prompt: everything but its last two tokens comes from the cache.
    assert again.usage.cached_tokens == again.usage.prompt_tokens - 2
    assert again.content == first.content


def test_eviction_under_slot_pressure_stays_exact(warm: er.Engine) -> None:
    msgs = [{"role": "user", "content": TURNS[0]}]
    ref = warm.chat(msgs, max_tokens=8, temperature=0.0, cache_prompt=False)
    for i in range(3):  # two slots: three other conversations push the first one out
        warm.chat([{"role": "user", "content": f"Tell me about the number {i * 37 + 11}."}], max_tokens=8)
    res = warm.chat(msgs, max_tokens=8, temperature=0.0)
    assert res.content == ref.content
    assert warm.live_sequences == 0


def test_adapter_changes_the_key() -> None:
    with er.load("student", n_ctx=1024, max_sequences=3, threads=2) as eng:
        msgs = [{"role": "user", "content": TURNS[0]}]
        tuned = eng.chat(msgs, max_tokens=8, temperature=0.0)  # the student adapter by default
        other = eng.chat(msgs, max_tokens=8, temperature=0.0, adapter="ir")
        cold_other = eng.chat(msgs, max_tokens=8, temperature=0.0, adapter="ir", cache_prompt=False)
        assert other.usage.cached_tokens == 0  # the student adapter's KV is not the ir adapter's
        assert other.content == cold_other.content
        again = eng.chat(msgs, max_tokens=8, temperature=0.0)
        assert again.usage.cached_tokens == again.usage.prompt_tokens - 2
        assert again.content == tuned.content


def test_warm_slots_are_listed() -> None:
    cache = SlotCache(3)
    a, _ = cache.take()
    b, _ = cache.take()
    cache.release(a, [1, 2, 3])
    cache.release(b, None)
    assert cache.warm == {a}


def test_hit_on_the_same_prompt_equals_cold_for_a_fragile_prompt(warm: er.Engine) -> None:
    # On this prompt a lone last-token decode gives another greedy token ("Alec" vs "The"): a hit must
    # still decode two prompt tokens together to stay exact.
    q = [{"role": "user", "content": "Name a color."}]
    cold = warm.chat(q, max_tokens=6, temperature=0.0, cache_prompt=False)
    warm.chat(q, max_tokens=6, temperature=0.0)
    hot = warm.chat(q, max_tokens=6, temperature=0.0)
    assert hot.usage.cached_tokens == hot.usage.prompt_tokens - 2
    assert hot.content == cold.content
