"""DAgger rollouts never touch a held-out world or persona, and label what the model saw."""

from __future__ import annotations

from exports.dagger import fresh_cast, fresh_seeds
from exports.dataset import DatasetSpec, _plan


def test_fresh_worlds_and_personas_are_in_no_split():
    spec = DatasetSpec(train_worlds=3, heldout_seed_worlds=1, heldout_persona_worlds=2, generated_per_world=4)
    plans = _plan(spec)
    seeds = fresh_seeds(spec, 5, 0, 0)
    assert len(set(seeds)) == 5 and not set(seeds) & {p.seed for p in plans}
    assert fresh_seeds(spec, 5, 1, 0) != seeds  # every round its own worlds
    used = {p.name for plan in plans for p in plan.cast}
    heldout_traits = {
        tuple(sorted(p.traits.items()))
        for plan in plans
        if plan.split == "heldout_persona"
        for p in plan.cast
    }
    casts = [fresh_cast(spec, w, r, 0) for r in range(2) for w in range(3)]
    fresh = [p for cast in casts for p in cast[12:]]  # after the default cast
    assert len(fresh) == 6 * spec.generated_per_world
    assert len({p.name for p in fresh}) == len(fresh)  # no two worlds share a generated persona
    assert not {p.name for p in fresh} & used
    assert not {tuple(sorted(p.traits.items())) for p in fresh} & heldout_traits
    assert fresh_cast(spec, 0, 0, 0) == casts[0]  # seeded
