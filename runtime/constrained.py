"""Constrained decoding with llguidance: the output always conforms to the request's constraint.

One :class:`ConstraintCompiler` per model builds llguidance's token tables once and hands out a
matcher per request. Each step the batcher asks for the allowed-token bitmask of every constrained
row in one call (on llguidance's thread pool when the worker has several threads, in the calling
thread when it has one), masks the logits, and after sampling asks for the tokens the grammar now
forces (appended without sampling, fed to the model in one pass).

A grammar's answers (the allowed tokens, the forced ones, whether it has stopped) depend only on the
tokens consumed so far, and a swarm's agents write the same few dozen outputs over and over. The
requests of one constraint therefore share a :class:`GrammarMemo`, a tree of the token paths met so
far holding each state's answers: a request asks llguidance only on a path no request took before
(:class:`MemoMatcher`; its own ``LLMatcher`` is made then and caught up on the path).
"""

from __future__ import annotations

import json
from functools import cached_property, lru_cache

import llguidance
import llguidance.numpy as llnp
import numpy as np

from runtime.choices import ChoiceTracker, TokenBytes
from runtime.types import Constraint


class ConstraintError(ValueError):
    """A constraint that llguidance cannot compile (bad schema, regex or grammar)."""


def grammar_for(constraint: Constraint) -> str:
    """The llguidance grammar string for a constraint."""
    if constraint.kind == "json_schema":
        return llguidance.LLMatcher.grammar_from_json_schema(
            constraint.value,
            defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "},
        )
    if constraint.kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(constraint.value)
    if constraint.kind == "choices":
        options = json.loads(constraint.value)
        # Lark string literals take JSON escapes, so json.dumps quotes each option safely.
        return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(o) for o in options))
    if constraint.kind == "lark":
        return llguidance.LLMatcher.grammar_from_lark(constraint.value)
    raise ConstraintError(f"unknown constraint kind {constraint.kind!r}")


class ConstraintCompiler:
    """Compiles constraints for one tokenizer.

    Args:
        tokenizer_json: the serialized ``tokenizers`` tokenizer.
        vocab_size: the model's vocabulary (logits width; may exceed the tokenizer's).
        eos_token_ids: end-of-sequence ids (the grammar's end).
        threads: threads computing masks: 1 computes them in the calling thread; more (or ``None``,
            llguidance's default) hands each step's masks to llguidance's thread pool. A
            single-threaded worker gains nothing from the pool and, when the cores are busy, waits
            for the pool's thread to be scheduled: replaying the village's batches with two other
            processes on both cores, a worker filling its masks itself was 1.1–1.3× faster (alike
            on idle cores).
    """

    def __init__(
        self,
        tokenizer_json: str,
        vocab_size: int,
        eos_token_ids: tuple[int, ...],
        threads: int | None = None,
    ):
        eos = list(eos_token_ids) or None
        self.lltokenizer = llguidance.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=eos)
        self.vocab_size = vocab_size
        self.executor = None if threads == 1 else llguidance.LLExecutor(num_threads=threads)
        self._grammar = lru_cache(maxsize=1024)(self._compile)
        self._templates = lru_cache(maxsize=256)(self._template)
        self._memos = lru_cache(maxsize=256)(self._memo)

    def _compile(self, constraint: Constraint) -> str:
        grammar = grammar_for(constraint)
        err = llguidance.LLMatcher.validate_grammar(grammar, self.lltokenizer)
        if err and not err.startswith("WARNING"):
            raise ConstraintError(f"invalid {constraint.kind} constraint: {err}")
        return grammar

    def _template(self, constraint: Constraint) -> llguidance.LLMatcher:
        m = llguidance.LLMatcher(self.lltokenizer, self._grammar(constraint), log_level=0)
        if m.is_error():
            raise ConstraintError(f"invalid {constraint.kind} constraint: {m.get_error()}")
        return m

    def _memo(self, constraint: Constraint) -> GrammarMemo:
        return GrammarMemo(self._templates(constraint), self.vocab_size)

    def matcher(self, constraint: Constraint) -> MemoMatcher:
        """A fresh matcher for one request, sharing its constraint's :class:`GrammarMemo`.

        Building an ``LLMatcher`` parses its grammar (~2 ms for an action union); the memo's is a
        deep copy of a pristine one kept per constraint, made only when the request leaves the paths
        already known.
        """
        return self._memos(constraint.base).matcher()

    @cached_property
    def token_bytes(self) -> TokenBytes:
        """Every token's bytes (built on first use, for ``Constraint.string_choices``)."""
        tok = self.lltokenizer
        special = [tok.is_special_token(i) for i in range(self.vocab_size)]
        return TokenBytes([b"" if special[i] else tok.decode_bytes([i]) for i in range(self.vocab_size)])

    def choice_tracker(self, constraint: Constraint) -> ChoiceTracker | None:
        """A tracker for the constraint's string choices, or ``None`` when it has none."""
        if not constraint.string_choices:
            return None
        return ChoiceTracker(self.token_bytes, constraint.string_choices)

    def allocate_bitmask(self, rows: int) -> np.ndarray:
        return llnp.allocate_token_bitmask(rows, self.vocab_size)

    def fill_masks(self, matchers: list[tuple[MemoMatcher, int]], bitmask: np.ndarray) -> None:
        """Write the allowed tokens of every ``(matcher, row)`` into ``bitmask``: a state's mask is
        computed once (by llguidance) and copied for every later row in that state."""
        todo = []
        for m, row in matchers:
            mask = m.state.mask
            if mask is None:
                todo.append((m, row))
            else:
                bitmask[row] = mask
        if not todo:
            return
        if self.executor is None or len(todo) == 1:
            for m, row in todo:
                llnp.fill_next_token_bitmask(m.llmatcher(), bitmask, row)
        else:
            llnp.fill_next_token_bitmask_par(
                self.executor, [(m.llmatcher(), row) for m, row in todo], bitmask
            )
        for m, row in todo:
            m.state.mask = m.memo.intern(bitmask[row])

    @staticmethod
    def apply(logits: np.ndarray, bitmask: np.ndarray) -> None:
        """Set forbidden logits to -inf, in place. ``logits (R, V)``, ``bitmask (R, ceil(V/32))``."""
        words = bitmask.view(np.uint32)
        bits = np.unpackbits(words.view(np.uint8), bitorder="little").reshape(words.shape[0], -1)
        allowed = bits[:, : logits.shape[1]].astype(bool)
        logits[~allowed] = -np.inf


class _State:
    """A grammar state: the path of tokens that reached it, and what llguidance said there."""

    __slots__ = ("parent", "token", "depth", "children", "mask", "forced", "stopped")

    def __init__(self, parent: _State | None, token: int):
        self.parent = parent
        self.token = token
        self.depth = 0 if parent is None else parent.depth + 1
        self.children: dict[int, _State] = {}
        self.mask: np.ndarray | None = None  # the allowed-token bitmask row
        self.forced: list[int] | None = None  # the tokens the grammar forces here
        self.stopped: bool | None = None

    def path(self) -> list[int]:
        out, s = [], self
        while s.parent is not None:
            out.append(s.token)
            s = s.parent
        return out[::-1]


class GrammarMemo:
    """Every token path met so far under one grammar, as a tree of :class:`_State`.

    Args:
        template: a pristine ``LLMatcher`` of the grammar (deep-copied when a request needs its own).
        vocab_size: the logits' width.
        max_states: when the tree holds more states, it starts over (matchers already on the old
            tree go on there; a state costs ~0.2 KB, its mask shared with every state allowing the same tokens).
    """

    def __init__(self, template: llguidance.LLMatcher, vocab_size: int, max_states: int = 200_000):
        self.template = template
        self.vocab_size = vocab_size
        self.max_states = max_states
        self.root = _State(None, -1)
        self.states = 1
        self.hits = 0
        self.misses = 0
        self._masks: dict[bytes, np.ndarray] = {}  # a grammar has few distinct masks: one copy each

    def intern(self, mask_row: np.ndarray) -> np.ndarray:
        key = mask_row.tobytes()
        mask = self._masks.get(key)
        if mask is None:
            mask = self._masks[key] = mask_row.copy()
        return mask

    def matcher(self) -> MemoMatcher:
        if self.states > self.max_states:
            self.root, self.states, self._masks = _State(None, -1), 1, {}
        return MemoMatcher(self)


class MemoMatcher:
    """The ``LLMatcher`` calls the batcher makes, answered from a :class:`GrammarMemo` where the
    path is known and by the request's own ``LLMatcher`` (made on the first miss) where it is not."""

    __slots__ = ("memo", "state", "_ll", "_ll_state", "_error")

    def __init__(self, memo: GrammarMemo):
        self.memo = memo
        self.state = memo.root
        self._ll: llguidance.LLMatcher | None = None
        self._ll_state: _State | None = None  # where ``_ll`` stands (an ancestor of ``state``)
        self._error = ""

    def llmatcher(self) -> llguidance.LLMatcher:
        """This request's own ``LLMatcher``, caught up to the current state."""
        self.memo.misses += 1
        if self._ll is None or self._ll_state is None:  # none yet, or one left in error: start afresh
            self._ll, self._ll_state = self.memo.template.deep_copy(), self.memo.root
        if self._ll_state is not self.state:
            behind = self.state.path()[self._ll_state.depth :]
            if not self._ll.consume_tokens(behind):
                raise RuntimeError(f"grammar memo out of step: {self._ll.get_error()}")
            self._ll_state = self.state
        return self._ll

    def compute_ff_tokens(self) -> list[int]:
        st = self.state
        if st.forced is None:
            st.forced = self.llmatcher().compute_ff_tokens()
        else:
            self.memo.hits += 1
        return list(st.forced)

    def consume_token(self, token: int) -> bool:
        child = self.state.children.get(token)
        if child is None:
            ll = self.llmatcher()
            if not ll.consume_token(token):
                self._error = ll.get_error()
                self._ll_state = None  # an errored matcher is not caught up again
                return False
            child = _State(self.state, token)
            self.state.children[token] = child
            self.memo.states += 1
            self._ll_state = child
        self.state = child
        return True

    def consume_tokens(self, tokens: list[int]) -> bool:
        return all(self.consume_token(t) for t in tokens)

    def is_stopped(self) -> bool:
        st = self.state
        if st.stopped is None:
            st.stopped = self.llmatcher().is_stopped()
        return st.stopped

    def get_error(self) -> str:
        return self._error
