"""What one engine pass costs, learned from the passes the batcher runs, and prefill grouping by it.

A pass over a padded batch of ``B`` rows, ``T`` new tokens each (padding included) after ``W`` KV
columns (also padded) costs, to a good approximation on CPU,

    seconds = fixed + per_row · B + per_slot · (B·T) + per_column · (B·T·(W + T))

- ``fixed``: what any pass costs (the graph's many small ops, Python around the call);
- ``per_row``: sampling, constraint masks and caching a row's KV (the same however rows are grouped,
  fitted so that it is not mistaken for the others);
- ``per_slot``: the projections and MLP of one token slot;
- ``per_column``: one token slot attending to one KV column (scores, softmax, weighted values).

Timed in ONNX Runtime (one thread) on the 2-core benchmark VM with the shipped student, random
inputs from ``exports.graph.model_feeds`` at ``(B, T, W)`` = (1, 1, 232), (16, 40, 0), (16, 79, 0)
and (16, 79, 232): ``fixed`` 0.18 ms, ``per_slot`` 3.2 µs, ``per_column`` 0.021 µs — attending to the ≈ 230 cached prompt tokens costs twice the slot
itself. A tick's prompts differ in both how much of them is cached (``W``: persona and memories) and
how long their new tail is (``T``), and every row of a pass is padded to the longest of each, so
half the attention work of a pass that groups rows by tail length alone went to padding.

:class:`PassCostModel` fits the four coefficients by least squares to every prefill pass the batcher
times (forward, sampling and caching together)
(decayed, so it follows the machine; a prior from the figures above holds until enough passes are
seen), and :func:`group_rows` splits the rows admitted together into the passes that cost least in
all under it (a dynamic programme over the rows sorted by tail length, then cached length).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PRIOR = (0.3e-3, 0.05e-3, 3.2e-6, 0.021e-6)
"""``(fixed, per_row, per_slot, per_column)`` seconds before any pass is seen: the tiny act student's
figures above, ``fixed`` with the batcher's Python around the call, ``per_row`` a guess that the
first passes correct."""


class PassCostModel:
    """Online least-squares fit of ``seconds ≈ fixed + per_row·rows + per_slot·slots +
    per_column·slot_columns``.

    Args:
        prior: the coefficients assumed before passes are observed.
        prior_weight: how many passes' worth of evidence the prior counts for.
        decay: weight of the past each time a pass is observed (``1.0`` keeps everything).
    """

    def __init__(
        self,
        prior: tuple[float, float, float, float] = PRIOR,
        prior_weight: float = 8.0,
        decay: float = 0.995,
    ):
        self.prior = np.asarray(prior, np.float64)
        self.prior_weight = prior_weight
        self.decay = decay
        self._xtx = np.zeros((4, 4))
        self._xty = np.zeros(4)
        self.observed = 0
        self._weight = 0.0  # the observations' decayed count
        self.coef = self.prior.copy()

    @staticmethod
    def features(rows: int, new: int, width: int) -> np.ndarray:
        slots = rows * new
        return np.array([1.0, rows, slots, slots * (width + new)])

    def predict(self, rows: int, new: int, width: int) -> float:
        return float(self.features(rows, new, width) @ self.coef)

    def observe(self, rows: int, new: int, width: int, seconds: float) -> None:
        """Add one timed pass of ``rows`` × ``new`` token slots after ``width`` KV columns."""
        x = self.features(rows, new, width)
        # Scale each feature to the prior's share so the coefficients are fitted on an even
        # footing (slot columns run to millions where the intercept is 1).
        scale = np.maximum(self.prior, 1e-12)
        z = x * scale
        w = 1.0 / max(float(x @ self.prior), 1e-9)  # relative errors: small passes count as much as big
        self._xtx = self.decay * self._xtx + w * w * np.outer(z, z)
        self._xty = self.decay * self._xty + w * w * z * seconds
        self.observed += 1
        self._weight = self.decay * self._weight + 1.0
        # Ridge towards the prior (in scaled units the prior is all ones), as heavy as
        # ``prior_weight`` average observations.
        reg = self.prior_weight * np.eye(4) * (np.trace(self._xtx) / 4 / self._weight)
        try:
            sol = np.linalg.solve(self._xtx + reg, self._xty + reg @ np.ones(4))
        except np.linalg.LinAlgError:
            return
        self.coef = np.maximum(sol, 0.05) * scale  # a coefficient never drops below 5% of its prior


def group_rows(rows: Sequence[tuple[int, int]], model: PassCostModel) -> list[list[int]]:
    """Split rows ``(cached, new)`` into passes of least total predicted cost.

    Each pass pads its rows to their longest ``new`` and their longest ``cached``. Rows are sorted by
    ``new`` then ``cached``, and a dynamic programme picks where to cut that order (O(n²) for n rows;
    a step admits a few dozen).

    Returns:
        the passes, each a list of indices into ``rows``.
    """
    order = sorted(range(len(rows)), key=lambda i: (rows[i][1], rows[i][0]))
    n = len(order)
    if n <= 1:
        return [order] if order else []
    fixed, _, per_slot, per_col = (float(c) for c in model.coef)  # per-row cost: the same in any split
    cached = np.array([rows[i][0] for i in order], np.float64)
    new = np.array([rows[i][1] for i in order], np.float64)
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, np.int64)
    for j in range(1, n + 1):
        # every pass [i, j) that ends here: as long as its last row (sorted by new), as wide as its
        # widest cached prefix
        t = new[j - 1]
        w = np.maximum.accumulate(cached[j - 1 :: -1])[::-1]  # w[i] = max(cached[i:j])
        cost = best[:j] + fixed + (j - np.arange(j)) * t * (per_slot + per_col * (w + t))
        cut[j] = int(np.argmin(cost))
        best[j] = cost[cut[j]]
    groups, j = [], n
    while j:
        groups.append(order[int(cut[j]) : j])
        j = int(cut[j])
    return groups[::-1]


def group_by_tail(tails: Sequence[int]) -> list[list[int]]:
    """The rule before the cost model: rows sorted by tail length, a pass closed when its padded
    tails would exceed twice its real tokens (cached prefixes not counted). Indices into ``tails``."""
    groups: list[list[int]] = []
    cur: list[int] = []
    for i in sorted(range(len(tails)), key=lambda i: tails[i]):
        if cur and tails[i] * (len(cur) + 1) > 2 * (sum(tails[c] for c in cur) + tails[i]):
            groups.append(cur)
            cur = []
        cur.append(i)
    if cur:
        groups.append(cur)
    return groups
