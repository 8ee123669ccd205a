"""Constrained decoding with llguidance: the output always conforms to the request's constraint.

One :class:`ConstraintCompiler` per model builds llguidance's token tables once and hands out a
fresh :class:`llguidance.LLMatcher` per request. Each step the batcher asks for the allowed-token
bitmask of every constrained row in one call (on llguidance's thread pool when the worker has
several threads, in the calling thread when it has one), masks the logits, and after sampling asks
for the tokens the grammar now forces (appended without sampling, fed to the model in one pass).
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

    def matcher(self, constraint: Constraint) -> llguidance.LLMatcher:
        """A fresh matcher for one request.

        Building a matcher parses its grammar (~2 ms for an action union); a deep copy of a pristine
        matcher kept per constraint is a small fraction of that, and a tick asks for thousands.
        """
        return self._templates(constraint.base).deep_copy()

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

    def fill_masks(self, matchers: list[tuple[llguidance.LLMatcher, int]], bitmask: np.ndarray) -> None:
        """Compute the allowed tokens of every ``(matcher, row)`` into ``bitmask``."""
        if self.executor is None:
            for m, row in matchers:
                llnp.fill_next_token_bitmask(m, bitmask, row)
        else:
            llnp.fill_next_token_bitmask_par(self.executor, matchers, bitmask)

    @staticmethod
    def apply(logits: np.ndarray, bitmask: np.ndarray) -> None:
        """Set forbidden logits to -inf, in place. ``logits (R, V)``, ``bitmask (R, ceil(V/32))``."""
        words = bitmask.view(np.uint32)
        bits = np.unpackbits(words.view(np.uint8), bitorder="little").reshape(words.shape[0], -1)
        allowed = bits[:, : logits.shape[1]].astype(bool)
        logits[~allowed] = -np.inf
