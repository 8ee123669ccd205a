"""Choosing the next token: greedy, temperature, top-k, top-p, with a per-request seeded RNG.

Each request owns its :class:`numpy.random.Generator` (seeded from ``SamplingParams.seed``) and draws
exactly one uniform number per sampled token, so its output does not depend on what else shares the
batch.
"""

from __future__ import annotations

import numpy as np

from runtime.types import SamplingParams


def request_rng(params: SamplingParams) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(params.seed & 0xFFFFFFFFFFFFFFFF))


class NgramBlocker:
    """Tokens that would repeat an n-gram of a sequence (``no_repeat_ngram_size``, as transformers
    defines it: the prompt counts). Kept up to date token by token: each step costs O(1)."""

    def __init__(self, n: int, tokens: list[int]):
        self.n = n
        self.seen: dict[tuple[int, ...], set[int]] = {}
        self.tail: list[int] = []
        for t in tokens:
            self.push(t)

    def push(self, token: int) -> None:
        self.tail.append(token)
        if len(self.tail) >= self.n:
            *prefix, last = self.tail[-self.n :]
            self.seen.setdefault(tuple(prefix), set()).add(last)
        del self.tail[: max(0, len(self.tail) - self.n)]

    def banned(self) -> set[int]:
        """The tokens that may not come next."""
        if len(self.tail) < self.n - 1:
            return set()
        return self.seen.get(tuple(self.tail[len(self.tail) - self.n + 1 :]), set())


def log_softmax(logits: np.ndarray) -> np.ndarray:
    m = np.max(logits, axis=-1, keepdims=True)
    z = logits - m
    return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def sample_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> tuple[int, float]:
    """Pick a token from one row of logits ``(V,)`` (already masked with -inf where forbidden).

    Returns:
        the token id and its log-probability under the (masked, temperature 1) distribution —
        the confidence a cascade can act on.
    """
    return _pick(logits, log_softmax(logits.astype(np.float64)), params, rng)


def sample_tokens(
    logits: np.ndarray, params: list[SamplingParams], rngs: list[np.random.Generator]
) -> list[tuple[int, float]]:
    """:func:`sample_token` for every row of ``logits`` ``(B, V)``, with one log-softmax over the
    whole batch (row by row it gives the same numbers as :func:`sample_token`)."""
    logp = log_softmax(logits.astype(np.float64))
    return [_pick(logits[b], logp[b], p, rng) for b, (p, rng) in enumerate(zip(params, rngs))]


def _pick(
    logits: np.ndarray, logp: np.ndarray, params: SamplingParams, rng: np.random.Generator
) -> tuple[int, float]:
    if params.temperature == 0.0:
        tok = int(np.argmax(logits))
        return tok, float(logp[tok])
    scaled = logp / params.temperature
    order = np.argsort(-scaled, kind="stable")
    if params.top_k > 0:
        order = order[: params.top_k]
    probs = np.exp(scaled[order] - scaled[order[0]])
    probs /= probs.sum()
    if params.top_p < 1.0:
        cum = np.cumsum(probs)
        keep = int(np.searchsorted(cum, params.top_p) + 1)  # smallest set whose mass reaches top_p
        order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
    u = rng.random()
    idx = min(int(np.searchsorted(np.cumsum(probs), u, side="right")), len(order) - 1)
    tok = int(order[idx])
    return tok, float(logp[tok])
