"""String choices: JSON string values limited to per-request options, without a new grammar.

A world often knows which values an argument can take for one agent right now (the names within
reach, the offers made to it). Putting them in the JSON schema would make every agent's schema a
different grammar, and compiling one costs milliseconds, thousands of times a tick. Instead the
request keeps the shared schema (one compiled llguidance grammar for every agent) and adds
``Constraint.string_choices``: while the output is inside the value of one of those keys, only tokens
that keep the value a prefix of an option (or that close it on an option) are allowed. The schema's
mask and this one are applied together, so the output is still valid JSON for the schema.

Everything works on bytes, as llguidance does, so options with non-ASCII characters are handled.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Sequence as Seq
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=1 << 16)
def _value_bytes(option: str) -> bytes:
    """How ``option`` is written inside a JSON string (escaped, UTF-8, no quotes)."""
    return json.dumps(option, ensure_ascii=False)[1:-1].encode("utf-8")


@lru_cache(maxsize=256)
def _patterns(keys: tuple[str, ...]) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    """Where the output ends: after a restricted key, before its value opens (``{"key":``), or
    inside that value (``{"key": "partial``)."""
    alts = b"|".join(re.escape(_value_bytes(k)) for k in keys)
    before = re.compile(rb'[{,]\s*"(' + alts + rb')"\s*:?\s*\Z')
    inside = re.compile(rb'[{,]\s*"(' + alts + rb')"\s*:\s*"((?:[^"\\]|\\.)*\\?)\Z')
    return before, inside


class TokenBytes:
    """Every token's bytes, indexed for "which tokens are a prefix of this / start with this".

    Args:
        token_bytes: the bytes of each token id (special tokens as ``b""``).
    """

    def __init__(self, token_bytes: Seq[bytes]):
        self.bytes = list(token_bytes)
        whole: dict[bytes, list[int]] = {}
        after_quote: dict[bytes, list[int]] = {}  # tokens with a '"': what follows the first one
        no_quote = []
        for i, b in enumerate(self.bytes):
            if not b:
                continue
            whole.setdefault(b, []).append(i)
            q = b.find(b'"')
            if q < 0:
                no_quote.append(i)
            else:
                after_quote.setdefault(b[q + 1 :], []).append(i)
        self.whole = _Index(whole)
        self.after_quote = _Index(after_quote)
        self.no_quote = no_quote
        self._memo: dict[tuple[tuple[bytes, ...], bytes | None], np.ndarray | None] = {}

    def allowed(self, options: tuple[bytes, ...], partial: bytes | None) -> np.ndarray | None:
        """Tokens allowed for a string value that must be one of ``options`` (JSON-escaped bytes).

        Inside the value (``partial`` written so far): tokens that continue it towards an option or
        close it on one. Before it opens (``partial is None``): tokens without a quote (the
        separator; the schema decides), and tokens whose first quote opens the value and whose rest
        fits an option. ``None`` when no option fits (nothing to restrict to). Memoised: agents
        share most option lists (the action kinds, the places), so a tick computes few.
        """
        key = (options, partial)
        hit = self._memo.get(key, False)
        if hit is not False:
            return hit
        ids: set[int] = set()
        index = self.whole if partial is not None else self.after_quote
        for option in options:
            if partial is None or option.startswith(partial):
                rest = option[len(partial or b"") :] + b'"'
                ids.update(index.prefixes_of(rest, empty=partial is None))
                ids.update(index.starting_with(rest))
        if partial is None:
            ids.update(self.no_quote)
        out = np.fromiter(sorted(ids), dtype=np.int64) if ids else None
        if len(self._memo) >= 1 << 16:
            self._memo.clear()
        self._memo[key] = out
        return out


class _Index:
    """Token ids by a byte string, answering "a non-empty prefix of X" and "starts with X"."""

    def __init__(self, by: dict[bytes, list[int]]):
        self.by = by
        self.sorted = sorted(by)

    def prefixes_of(self, target: bytes, empty: bool = False) -> list[int]:
        """Ids whose string is a prefix of ``target`` (the empty string only if ``empty``)."""
        out: list[int] = []
        for k in range(0 if empty else 1, len(target) + 1):
            out.extend(self.by.get(target[:k], ()))
        return out

    def starting_with(self, head: bytes) -> list[int]:
        """Ids whose string starts with ``head`` (``head`` itself included)."""
        out: list[int] = []
        i = bisect.bisect_left(self.sorted, head)
        while i < len(self.sorted) and self.sorted[i].startswith(head):
            out.extend(self.by[self.sorted[i]])
            i += 1
        return out


class ChoiceTracker:
    """Follows one request's output and says which tokens a restricted string value allows.

    Args:
        table: the model's :class:`TokenBytes`.
        choices: ``(key, options)`` pairs: the string value of ``key`` must be one of ``options``.
    """

    def __init__(self, table: TokenBytes, choices: Seq[tuple[str, Seq[str]]]):
        self.table = table
        self.options = {_value_bytes(k): tuple(_value_bytes(o) for o in opts) for k, opts in choices}
        self._before, self._inside = _patterns(tuple(k for k, _ in choices))
        self._text = b""
        self._seen = 0

    def allowed(self, out: list[int]) -> np.ndarray | None:
        """Token ids allowed next after the output ``out``; ``None`` when nothing is restricted now
        (outside every restricted value, or a value that already left the options)."""
        if len(out) > self._seen:
            self._text += b"".join(self.table.bytes[t] for t in out[self._seen :])
            self._seen = len(out)
        tail = self._text[-512:]
        m = self._inside.search(tail)
        if m is not None:
            return self.table.allowed(self.options[m.group(1)], m.group(2))
        m = self._before.search(tail)
        if m is not None:
            return self.table.allowed(self.options[m.group(1)], None)
        return None


def restrict(logits: np.ndarray, allowed: np.ndarray) -> bool:
    """Keep only ``allowed`` of one row of ``logits`` (in place) unless that would leave no
    finite logit (the schema's mask and the options disagree); returns whether it restricted."""
    allowed = allowed[allowed < logits.shape[0]]
    kept = logits[allowed]
    if not np.isfinite(kept).any():
        return False
    logits.fill(-np.inf)
    logits[allowed] = kept
    return True
