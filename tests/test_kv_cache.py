"""Radix prefix cache: matching, splitting, locking, eviction under a byte budget (no model needed)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.kv_cache import LFUPolicy, RadixCache, common_prefix_length


def kv(tokens) -> np.ndarray:
    """A fake KV array whose token axis (3) holds the token ids, 8 bytes per token."""
    return np.asarray(tokens, dtype=np.float64).reshape(1, 1, 1, -1, 1)


def cached_tokens(cache: RadixCache, tokens) -> list[int]:
    m = cache.match_prefix(tokens)
    g = cache.gather(m)
    return [] if g is None else g.reshape(-1).astype(int).tolist()


def test_common_prefix_length():
    assert common_prefix_length([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([1, 2], [1, 2]) == 2


def test_match_insert_and_split():
    c = RadixCache(1 << 20)
    c.insert([1, 2, 3, 4], kv([1, 2, 3, 4]))
    assert c.match_prefix([1, 2, 3, 4, 5]).length == 4
    assert c.match_prefix([1, 2, 9]).length == 2  # splits the edge after two tokens
    assert cached_tokens(c, [1, 2, 9]) == [1, 2]
    c.insert([1, 2, 9, 9], kv([9, 9]), offset=2)  # only the uncached tail is given
    assert cached_tokens(c, [1, 2, 9, 9, 0]) == [1, 2, 9, 9]
    assert cached_tokens(c, [1, 2, 3, 4]) == [1, 2, 3, 4]
    assert c.total_tokens == 6 and c.total_bytes == 6 * 8
    assert c.match_prefix([7]).length == 0


def test_cached_length_peeks_without_splitting():
    c = RadixCache(1 << 20)
    c.insert([1, 2, 3, 4], kv([1, 2, 3, 4]))
    c.insert([1, 2, 3, 4, 5, 6], kv([5, 6]), offset=4)
    nodes = c.total_tokens, len(c.root.children[1].children)
    for probe in ([1, 2, 9], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6, 7], [7], []):
        assert c.cached_length(probe) == min(len(probe), common_prefix_length(probe, [1, 2, 3, 4, 5, 6]))
    assert (c.total_tokens, len(c.root.children[1].children)) == nodes  # nothing split or added
    assert c.match_prefix([1, 2, 9]).length == c.cached_length([1, 2, 9])


def test_insert_existing_stores_nothing_new():
    c = RadixCache(1 << 20)
    c.insert([1, 2, 3], kv([1, 2, 3]))
    c.insert([1, 2, 3], kv([1, 2, 3]))
    assert c.total_tokens == 3


def test_eviction_keeps_budget_and_prefers_lru():
    c = RadixCache(budget_bytes=10 * 8)
    c.insert([1, 1, 1, 1], kv([1] * 4))
    c.insert([2, 2, 2, 2], kv([2] * 4))
    c.match_prefix([1, 1, 1, 1])  # touch 1s: 2s are now least recently used
    c.insert([3, 3, 3, 3], kv([3] * 4))
    assert c.total_bytes <= 10 * 8
    assert c.match_prefix([1, 1, 1, 1]).length == 4
    assert c.match_prefix([2, 2, 2, 2]).length == 0
    assert c.match_prefix([3, 3, 3, 3]).length == 4


def test_locked_entries_are_never_evicted():
    c = RadixCache(budget_bytes=4 * 8)
    node = c.insert([1, 2, 3, 4], kv([1, 2, 3, 4]), lock=True)
    c.insert([5, 6, 7, 8], kv([5, 6, 7, 8]))  # over budget: only the unlocked one can go
    assert c.match_prefix([1, 2, 3, 4]).length == 4
    assert c.match_prefix([5, 6, 7, 8]).length == 0
    c.evict(budget_bytes=0)
    assert c.match_prefix([1, 2, 3, 4]).length == 4  # still locked
    c.unlock(node)
    c.evict(budget_bytes=0)
    assert c.total_bytes == 0 and c.match_prefix([1, 2, 3, 4]).length == 0


def test_split_keeps_locks_on_the_new_parent():
    c = RadixCache(budget_bytes=1 << 20)
    node = c.insert([1, 2, 3, 4], kv([1, 2, 3, 4]), lock=True)
    c.match_prefix([1, 2, 7])  # split above the locked node
    c.evict(budget_bytes=0)
    assert cached_tokens(c, [1, 2, 3, 4]) == [1, 2, 3, 4]
    c.unlock(node)
    c.evict(budget_bytes=0)
    assert c.total_tokens == 0


def test_lfu_policy_evicts_least_hit():
    c = RadixCache(budget_bytes=8 * 8, policy=LFUPolicy())
    c.insert([1, 1, 1, 1], kv([1] * 4))
    c.insert([2, 2, 2, 2], kv([2] * 4))
    for _ in range(3):
        c.match_prefix([2, 2, 2, 2])
    c.match_prefix([1, 1, 1, 1])  # most recent, but hit fewer times
    node = c.insert([3, 3, 3, 3], kv([3] * 4), lock=True)  # in flight, as the batcher inserts
    assert c.match_prefix([3, 3, 3, 3]).length == 4
    c.unlock(node)
    assert c.match_prefix([2, 2, 2, 2]).length == 4
    assert c.match_prefix([1, 1, 1, 1]).length == 0


seqs = st.lists(st.integers(0, 4), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(st.tuples(st.sampled_from(["insert", "lock", "unlock", "match"]), seqs), max_size=40),
    budget=st.integers(8, 400),
)
def test_cache_invariants(ops, budget):
    """Random operations: cached KV always equals the tokens, accounting adds up, budget holds."""
    c = RadixCache(budget_bytes=budget)
    locked = []
    for op, toks in ops:
        if op == "insert":
            c.insert(toks, kv(toks))
        elif op == "lock":
            m = c.match_prefix(toks)
            c.lock(m.node)
            locked.append((m.node, toks[: m.length]))
        elif op == "unlock" and locked:
            c.unlock(locked.pop(0)[0])
            c.evict()
        m = c.match_prefix(toks)
        assert cached_tokens(c, toks) == list(toks[: m.length])
        nodes = c.nodes()
        assert c.total_bytes == sum(n.value.nbytes for n in nodes)
        assert c.total_tokens == sum(len(n.key) for n in nodes)
        assert c.total_bytes <= max(budget, c.locked_bytes())
        for _, prefix in locked:  # locked paths survive every eviction
            assert c.match_prefix(prefix).length == len(prefix)


def test_a_full_large_cache_frees_a_slack_at_once():
    from runtime.kv_cache import EVICT_SLACK, EVICT_SLACK_MIN_BUDGET

    token_bytes = 8 << 10  # one fake token's KV
    per = 64  # tokens per entry
    c = RadixCache(budget_bytes=EVICT_SLACK_MIN_BUDGET, nbytes=lambda v: v.shape[-1] * token_bytes)
    fits = EVICT_SLACK_MIN_BUDGET // (per * token_bytes)
    for i in range(fits + 1):
        c.insert([i + 1] + [0] * (per - 1), np.zeros((1, 1, 1, per)))
    # One insert over the budget evicts down to the low watermark, not just below the budget.
    assert c.total_bytes <= EVICT_SLACK_MIN_BUDGET * (1 - EVICT_SLACK)
    assert c.match_prefix([fits + 1] + [0] * (per - 1)).length == per  # the newest stays
