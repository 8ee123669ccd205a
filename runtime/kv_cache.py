"""Radix prefix KV cache shared by every request to one model (the idea of SGLang's RadixAttention).

A radix tree over token ids. Each edge holds a run of tokens and the KV computed for them, an array
whose token axis is ``token_axis`` (``(L, 2, H, n, D)`` from the engine, any array in tests). A
request whose prompt starts with tokens already in the tree — computed for any agent at any earlier
time — starts from that KV and prefills only the rest.

- :meth:`RadixCache.match_prefix` finds the longest cached prefix (splitting an edge so the match
  ends on a node) and :meth:`RadixCache.gather` returns its KV.
- :meth:`RadixCache.insert` stores the KV of a prompt's uncached tail.
- :meth:`RadixCache.lock` / :meth:`RadixCache.unlock` pin the path of an in-flight request;
  eviction never touches a locked node.
- Eviction removes unlocked leaves in the order of a pluggable policy (LRU by default) until the
  cache fits its byte budget.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class TreeNode:
    __slots__ = ("children", "parent", "key", "value", "lock_ref", "last_access", "hits", "id")
    _ids = itertools.count()

    def __init__(self, parent: TreeNode | None = None, key: tuple[int, ...] = (), value: Any = None):
        self.children: dict[int, TreeNode] = {}
        self.parent = parent
        self.key = key  # the edge's tokens
        self.value = value  # their KV, token axis = RadixCache.token_axis
        self.lock_ref = 0
        self.last_access = 0
        self.hits = 0
        self.id = next(TreeNode._ids)

    def __lt__(self, other: TreeNode) -> bool:  # heap tie-break
        return self.id < other.id


class EvictionPolicy(Protocol):
    def priority(self, node: TreeNode) -> tuple:  # smaller is evicted first
        ...


class LRUPolicy:
    """Least recently used first."""

    def priority(self, node: TreeNode) -> tuple:
        return (node.last_access,)


class LFUPolicy:
    """Least often hit first, then least recently used."""

    def priority(self, node: TreeNode) -> tuple:
        return (node.hits, node.last_access)


EVICT_SLACK = 0.1
"""Share of the budget an insert into a full cache frees at once (amortizes the tree walk)."""
EVICT_SLACK_MIN_BUDGET = 16 << 20
"""Smaller caches evict just enough (there the walk is cheap and every entry counts)."""


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of two token sequences."""
    n = min(len(a), len(b))
    if n and a[0] != b[0]:
        return 0  # the common case when walking a node's children
    if n > 32:
        # Long edges (a shared rules segment is hundreds of tokens): compare slices, halving the
        # window, instead of a Python loop per token.
        if type(a) is not type(b):  # a tuple never equals a list: compare like with like
            a, b = list(a), list(b)
        lo, hi = 0, n
        if a[:n] == b[:n]:
            return n
        while hi - lo > 32:
            mid = (lo + hi) // 2
            if a[lo:mid] == b[lo:mid]:
                lo = mid
            else:
                hi = mid
        n = hi
        start = lo
    else:
        start = 0
    for i in range(start, n):
        if a[i] != b[i]:
            return i
    return n


def _edge_match(key: tuple[int, ...], tokens: tuple[int, ...], i: int) -> int:
    """How many of an edge's ``key`` tokens ``tokens`` continues with from position ``i`` (both
    tuples, so the common case — the whole edge matches — is one comparison, with no copy of the
    rest of the prompt)."""
    k = len(key)
    part = tokens[i : i + k]
    return k if part == key else common_prefix_length(key, part)


def _as_tuple(tokens: Sequence[int]) -> tuple[int, ...]:
    return tokens if type(tokens) is tuple else tuple(tokens)


@dataclass
class MatchResult:
    """The longest cached prefix of a token sequence."""

    length: int
    node: TreeNode  # the node where the match ends (root when nothing matched)
    path: list[TreeNode] = field(default_factory=list)  # root's children → node


@dataclass
class CacheStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    inserted_tokens: int = 0
    evicted_tokens: int = 0

    @property
    def hit_ratio(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class RadixCache:
    """Prefix tree of token ids → KV arrays, under a byte budget.

    Args:
        budget_bytes: the most KV bytes kept (locked entries may exceed it until unlocked).
        policy: eviction order (:class:`LRUPolicy` by default).
        token_axis: the axis of the stored arrays that runs over tokens.
        nbytes: how to size a stored value (``value.nbytes`` by default).
    """

    def __init__(
        self,
        budget_bytes: int = 256 << 20,
        policy: EvictionPolicy | None = None,
        token_axis: int = 3,
        nbytes: Callable[[Any], int] | None = None,
    ):
        if budget_bytes <= 0:
            raise ValueError("budget_bytes must be positive")
        self.budget_bytes = budget_bytes
        self.policy = policy or LRUPolicy()
        self.token_axis = token_axis
        self._nbytes = nbytes or (lambda v: int(v.nbytes))
        self.root = TreeNode()
        self.root.lock_ref = 1  # never evicted
        self.total_bytes = 0
        self.total_tokens = 0
        self._clock = itertools.count(1)
        self.stats = CacheStats()

    # ---- matching -------------------------------------------------------------------------
    def match_prefix(self, tokens: Sequence[int], count_hit: bool = True) -> MatchResult:
        """Longest cached prefix of ``tokens``; splits an edge so the match ends on a node."""
        node, i, path = self.root, 0, []
        now = next(self._clock)
        tokens = _as_tuple(tokens)
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                break
            k = _edge_match(child.key, tokens, i)
            if k < len(child.key):
                child = self._split(child, k)
            node = child
            node.last_access = now
            node.hits += count_hit
            path.append(node)
            i += k
        return MatchResult(i, node, path)

    def cached_length(self, tokens: Sequence[int]) -> int:
        """How many leading ``tokens`` are cached, without touching the tree (no split, no access)."""
        node, i = self.root, 0
        tokens = _as_tuple(tokens)
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                break
            k = _edge_match(child.key, tokens, i)
            i += k
            if k < len(child.key):
                break
            node = child
        return i

    def gather(self, match: MatchResult) -> np.ndarray | None:
        """The KV of a match, concatenated along the token axis (``None`` for an empty match)."""
        if not match.path:
            return None
        return np.concatenate([n.value for n in match.path], axis=self.token_axis)

    def _split(self, child: TreeNode, k: int) -> TreeNode:
        """Split ``child``'s edge after ``k`` tokens; returns the new upper node."""
        upper = TreeNode(child.parent, child.key[:k], self._slice(child.value, 0, k))
        upper.lock_ref, upper.last_access, upper.hits = child.lock_ref, child.last_access, child.hits
        child.parent.children[child.key[0]] = upper
        child.key = child.key[k:]
        child.value = self._slice(child.value, k, None)
        child.parent = upper
        upper.children[child.key[0]] = child
        return upper

    def _slice(self, value: Any, start: int, stop: int | None) -> Any:
        idx = [slice(None)] * value.ndim
        idx[self.token_axis] = slice(start, stop)
        return np.ascontiguousarray(value[tuple(idx)])  # a copy: a view would pin the whole parent buffer

    # ---- inserting ------------------------------------------------------------------------
    def insert(self, tokens: Sequence[int], value: Any, offset: int = 0, lock: bool = False) -> TreeNode:
        """Store the KV of ``tokens``; ``value`` covers ``tokens[offset:]`` along the token axis.

        Tokens already in the tree are not stored again. With ``lock=True`` the path is locked
        before eviction runs (the caller then owns one unlock).

        Returns:
            the node where ``tokens`` ends.
        """
        tokens = tuple(tokens)
        match = self.match_prefix(tokens, count_hit=False)
        if match.length < offset:
            raise ValueError(
                f"insert: value starts at token {offset} but only {match.length} tokens are cached before it"
            )
        node = match.node
        if match.length < len(tokens):
            new = TreeNode(node, tokens[match.length :], self._slice(value, match.length - offset, None))
            new.last_access = next(self._clock)
            node.children[tokens[match.length]] = new
            n = len(new.key)
            self.total_bytes += self._nbytes(new.value)
            self.total_tokens += n
            self.stats.inserted_tokens += n
            node = new
        if lock:
            self.lock(node)
        if self.total_bytes > self.budget_bytes:
            # Down to a low watermark, not just under the budget: finding the leaves walks the
            # tree, and doing that on every insert of a full cache is quadratic in its size
            # (10,000 agents' prompts).
            slack = EVICT_SLACK if self.budget_bytes >= EVICT_SLACK_MIN_BUDGET else 0.0
            self.evict(int(self.budget_bytes * (1.0 - slack)))
        return node

    # ---- locking and eviction ---------------------------------------------------------------
    def lock(self, node: TreeNode) -> None:
        """Pin ``node`` and its ancestors (an in-flight request depends on them)."""
        while node is not None:
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: TreeNode) -> None:
        while node is not None:
            if node.lock_ref <= 0 and node is not self.root:
                raise RuntimeError("unlock without a matching lock")
            node.lock_ref -= 1
            node = node.parent

    def evict(self, budget_bytes: int | None = None) -> int:
        """Remove unlocked leaves, policy order, until the cache fits; returns bytes freed."""
        budget = self.budget_bytes if budget_bytes is None else budget_bytes
        if self.total_bytes <= budget:
            return 0
        heap = [(self.policy.priority(n), n) for n in self._leaves() if n.lock_ref == 0]
        heapq.heapify(heap)
        freed = 0
        while self.total_bytes > budget and heap:
            _, leaf = heapq.heappop(heap)
            size = self._nbytes(leaf.value)
            parent = leaf.parent
            del parent.children[leaf.key[0]]
            self.total_bytes -= size
            self.total_tokens -= len(leaf.key)
            self.stats.evicted_tokens += len(leaf.key)
            freed += size
            if parent is not self.root and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, (self.policy.priority(parent), parent))
        return freed

    def _leaves(self) -> list[TreeNode]:
        out, stack = [], [self.root]
        while stack:
            n = stack.pop()
            if n.children:
                stack.extend(n.children.values())
            elif n is not self.root:
                out.append(n)
        return out

    def nodes(self) -> list[TreeNode]:
        out, stack = [], list(self.root.children.values())
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(n.children.values())
        return out

    def locked_bytes(self) -> int:
        return sum(self._nbytes(n.value) for n in self.nodes() if n.lock_ref > 0)

    def reset(self) -> None:
        self.root = TreeNode()
        self.root.lock_ref = 1
        self.total_bytes = self.total_tokens = 0
