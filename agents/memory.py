"""A bounded memory stream with retrieval by recency, importance and relevance.

Generative-agents style retrieval without an embedding model: relevance is the lexical overlap
between a query and an event. Everything is deterministic (ties break towards newer events), so the
same stream and query always give the same memories, and so the same prompt.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

MAX_EVENT_CHARS = 160
_WORD = re.compile(r"[a-z]+")
_STOPWORDS = frozenset(
    [
        "the",
        "and",
        "for",
        "you",
        "your",
        "with",
        "from",
        "that",
        "this",
        "are",
        "was",
        "were",
        "has",
        "have",
        "had",
        "not",
        "but",
        "can",
        "its",
        "all",
        "any",
        "out",
        "now",
        "who",
        "his",
        "her",
        "him",
        "she",
        "they",
        "them",
        "their",
        "our",
    ]
)


def keywords(text: str) -> frozenset[str]:
    """Lower-case words of three or more letters, minus common stopwords."""
    return frozenset(w for w in _WORD.findall(text.lower()) if len(w) >= 3 and w not in _STOPWORDS)


@dataclass(frozen=True)
class MemoryEvent:
    """One remembered event.

    Attributes:
        tick: when it happened.
        text: what happened, one short line.
        importance: how much it matters, 0..1.
        seq: insertion number, the final tie-breaker.
    """

    tick: int
    text: str
    importance: float
    seq: int = 0
    words: frozenset[str] = field(default=frozenset(), compare=False, repr=False)


class Memory:
    """A bounded stream of events.

    Args:
        capacity: most events kept; beyond it the event with the lowest retention
            (``importance * decay ** age``) is forgotten, so important events outlive trivia.
        decay: per-tick recency decay in (0, 1).
        weights: (recency, importance, relevance) weights of the retrieval score.
    """

    def __init__(
        self,
        capacity: int = 32,
        *,
        decay: float = 0.95,
        weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.capacity = capacity
        self.decay = decay
        self.weights = weights
        self._events: list[MemoryEvent] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[MemoryEvent]:
        return iter(self._events)

    def add(self, tick: int, text: str, importance: float) -> None:
        """Remember ``text`` at ``tick`` with ``importance`` (clamped to 0..1, text cut to 160 chars)."""
        text = " ".join(text.split())[:MAX_EVENT_CHARS]
        importance = min(1.0, max(0.0, float(importance)))
        event = MemoryEvent(tick, text, round(importance, 3), self._seq, keywords(text))
        self._seq += 1
        self._events.append(event)
        if len(self._events) > self.capacity:
            self._forget(now=tick)

    def _forget(self, now: int) -> None:
        # Lowest retention goes; among equals the oldest goes first.
        victim = min(
            range(len(self._events)),
            key=lambda i: (
                self._events[i].importance * self.decay ** max(0, now - self._events[i].tick),
                self._events[i].seq,
            ),
        )
        del self._events[victim]

    def score(self, event: MemoryEvent, now: int, query_words: frozenset[str]) -> float:
        """Retrieval score of ``event`` at ``now`` for a query's keywords (higher is better)."""
        recency = self.decay ** max(0, now - event.tick)
        relevance = len(query_words & event.words) / len(event.words) if event.words else 0.0
        w_rec, w_imp, w_rel = self.weights
        return w_rec * recency + w_imp * event.importance + w_rel * relevance

    def retrieve(self, query: str, now: int, k: int = 5) -> list[MemoryEvent]:
        """The ``k`` best events for ``query`` at tick ``now``, returned oldest first."""
        if k <= 0 or not self._events:
            return []
        words = keywords(query)
        best = sorted(self._events, key=lambda e: (self.score(e, now, words), e.seq), reverse=True)[:k]
        return sorted(best, key=lambda e: e.seq)

    def recent(self, n: int = 5) -> list[MemoryEvent]:
        """The ``n`` newest events, oldest first."""
        return self._events[-n:] if n > 0 else []

    def to_dict(self) -> dict[str, Any]:
        """The full stream as JSON-ready data (see :meth:`from_dict`)."""
        return {
            "capacity": self.capacity,
            "decay": self.decay,
            "weights": list(self.weights),
            "seq": self._seq,
            "events": [[e.tick, e.text, e.importance, e.seq] for e in self._events],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Memory:
        """Rebuild a stream saved with :meth:`to_dict`."""
        memory = cls(data["capacity"], decay=data["decay"], weights=tuple(data["weights"]))
        memory._seq = int(data["seq"])
        memory._events = [
            MemoryEvent(int(t), str(text), float(imp), int(seq), keywords(str(text)))
            for t, text, imp, seq in data["events"]
        ]
        return memory
