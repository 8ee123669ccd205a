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


def test_world_rollouts_are_saved_per_world_and_shareable(tmp_path):
    """Each world is a rollout of its own: two processes taking half the worlds each get what one
    gets; a re-run loads saved worlds; another rollout design does not reuse them."""
    from dataclasses import asdict, replace
    from pathlib import Path

    import exports
    from exports.dagger import DaggerConfig, world_rollouts

    model = Path(exports.__file__).parent / "models" / "village-act"
    spec = DatasetSpec()
    cfg = DaggerConfig(rounds=1, worlds=2, ticks=2, sample_rate=1.0, seed=13)
    whole = world_rollouts(model, spec, cfg, tmp_path / "a", progress=False)
    second = world_rollouts(model, spec, cfg, tmp_path / "b", worlds=[1], progress=False)
    first = world_rollouts(model, spec, cfg, tmp_path / "b", worlds=[0], progress=False)
    assert whole and [asdict(e) for e in whole] == [asdict(e) for e in first + second]
    assert len({e.world_seed for e in whole}) == 2 and all(e.split == "train" for e in whole)
    saved = (tmp_path / "a" / "world0.json").stat().st_mtime_ns
    assert world_rollouts(model, spec, cfg, tmp_path / "a", progress=False) == whole
    assert (tmp_path / "a" / "world0.json").stat().st_mtime_ns == saved  # loaded, not re-run
    longer = world_rollouts(model, spec, replace(cfg, ticks=3), tmp_path / "a", progress=False)
    assert len(longer) > len(whole)  # another design: the saved worlds were dropped
