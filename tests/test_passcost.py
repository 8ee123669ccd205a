"""The pass-cost model and the prefill grouping it drives."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from _helpers import make_batcher
from test_engine import SHARED

from runtime.passcost import PRIOR, PassCostModel, group_rows
from runtime.types import Request, SamplingParams


def _cost(groups, rows, coef) -> float:
    fixed, per_row, per_slot, per_col = coef
    total = 0.0
    for g in groups:
        t = max(rows[i][1] for i in g)
        w = max(rows[i][0] for i in g)
        total += fixed + per_row * len(g) + len(g) * t * (per_slot + per_col * (w + t))
    return total


def _partitions(items):
    """Every way to split ``items`` into non-empty groups (small inputs only)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        yield [[first], *part]
        for k in range(len(part)):
            yield [*part[:k], [first, *part[k]], *part[k + 1 :]]


def test_fit_recovers_the_coefficients_of_a_pass_cost():
    rng = np.random.default_rng(0)
    true = np.array([0.2e-3, 0.03e-3, 5e-6, 0.03e-6])  # not the prior
    m = PassCostModel()
    assert np.allclose(m.coef, PRIOR)
    for _ in range(300):
        b, t, w = int(rng.integers(1, 40)), int(rng.integers(1, 120)), int(rng.integers(0, 400))
        m.observe(b, t, w, float(m.features(b, t, w) @ true) * rng.uniform(0.95, 1.05))
    assert m.observed == 300
    for b, t, w in [(16, 80, 230), (8, 6, 330), (30, 300, 0), (2, 20, 100)]:
        assert m.predict(b, t, w) == pytest.approx(float(m.features(b, t, w) @ true), rel=0.1)
    # the intercept is held towards the prior a little (a ridge), yet moves most of the way
    assert m.predict(1, 1, 0) == pytest.approx(float(m.features(1, 1, 0) @ true), rel=0.25)


def test_prior_holds_until_passes_are_seen_and_coefficients_stay_positive():
    m = PassCostModel()
    m.observe(4, 10, 50, 0.0)  # a pass that took no time (a broken clock) cannot zero the model
    assert (m.coef > 0).all()
    assert m.predict(16, 80, 230) > m.predict(16, 40, 230) > m.predict(16, 40, 0) > 0


@pytest.mark.parametrize("seed", range(5))
def test_grouping_is_the_cheapest_split_of_its_order(seed):
    """The dynamic programme finds the best split of the sorted rows (checked against every
    contiguous split), is never worse than one pass or one pass per row, and is close to the best
    split of all (every partition, on six rows)."""
    rng = np.random.default_rng(seed)
    rows = [(int(rng.integers(0, 300)), int(rng.integers(1, 150))) for _ in range(6)]
    m = PassCostModel()
    groups = group_rows(rows, m)
    assert sorted(i for g in groups for i in g) == list(range(6))
    got = _cost(groups, rows, m.coef)
    order = sorted(range(6), key=lambda i: (rows[i][1], rows[i][0]))
    contiguous = min(
        _cost([order[a:b] for a, b in zip((0, *cuts), (*cuts, 6))], rows, m.coef)
        for k in range(6)
        for cuts in itertools.combinations(range(1, 6), k)
    )
    assert got == pytest.approx(contiguous)
    assert got <= _cost([list(range(6))], rows, m.coef) + 1e-12
    assert got <= _cost([[i] for i in range(6)], rows, m.coef) + 1e-12
    best = min(_cost(p, rows, m.coef) for p in _partitions(list(range(6))))
    assert got <= 1.25 * best


def test_grouping_separates_long_cached_prefixes_from_short_ones():
    """Rows with the same tail but very different cached prefixes go to different passes once the
    attention over padded columns outweighs a pass's fixed cost; alike rows share one pass."""
    m = PassCostModel()
    rows = [(1000, 50)] * 8 + [(10, 50)] * 8
    groups = group_rows(rows, m)
    assert len(groups) == 2 and {frozenset(rows[i] for i in g) for g in groups} == {
        frozenset([(1000, 50)]),
        frozenset([(10, 50)]),
    }
    assert len(group_rows([(200, 40)] * 30, m)) == 1
    assert group_rows([], m) == [] and group_rows([(5, 5)], m) == [[0]]


def test_batcher_groupings_give_the_same_outputs(tiny_models):
    """Cost-model grouping and tail-length grouping split a mixed admission differently; outputs
    do not change, and the cost model learns from the passes run."""
    reqs = [
        Request(
            model="m",
            prompt=[SHARED * (1 + i % 3), f"agent {i} " + "looks around " * (i % 5)],
            sampling=SamplingParams(max_tokens=8, temperature=0.8, seed=i),
        )
        for i in range(12)
    ]
    reference = make_batcher(tiny_models["qwen3"], cache=False).run(reqs)
    for grouping in ("cost", "padding"):
        b = make_batcher(tiny_models["qwen3"], prefill_grouping=grouping)
        b.run(reqs[:3])  # some prefixes cached
        got = b.run(reqs)
        assert [r.token_ids for r in got] == [r.token_ids for r in reference]
        if grouping == "cost":
            assert b.pass_cost.observed >= 2
    with pytest.raises(ValueError, match="prefill_grouping"):
        make_batcher(tiny_models["qwen3"], prefill_grouping="fastest")


def test_tail_rule_closes_a_pass_past_twice_its_real_tokens():
    from runtime.passcost import group_by_tail

    assert group_by_tail([5, 100, 6, 90]) == [[0, 2], [3, 1]]
    assert group_by_tail([7]) == [[0]] and group_by_tail([]) == []
