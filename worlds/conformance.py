"""Conformance checks any murmurate world must pass.

:func:`check_world` runs PettingZoo's ``parallel_api_test`` and then murmurate's own contract:
observations lie in their spaces, the same seed and the same decisions give the same state hash,
hashing does not change the state, and save -> load -> continue equals an uninterrupted run.
Every world's tests call it; users can call it on their own worlds.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pettingzoo.test import parallel_api_test

from worlds.base import World

Policy = Callable[[World, Mapping[str, Any]], dict[str, Any]]
"""``policy(world, observations) -> actions``; the default samples each agent's action space."""


class ConformanceError(AssertionError):
    """A world broke the contract; the message says which check and how."""


def sample_policy(seed: int = 0) -> Policy:
    """A policy that samples ``action_space(agent)`` from its own seeded generator."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def policy(world: World, observations: Mapping[str, Any]) -> dict[str, Any]:
        actions = {}
        for agent in world.agents:
            space = world.action_space(agent)
            space.seed(int(rng.integers(2**31)))
            actions[agent] = space.sample()
        return actions

    return policy


def _run(world: World, policy: Policy, obs: Mapping[str, Any], ticks: int) -> tuple[list[str], Mapping]:
    hashes = []
    for _ in range(ticks):
        if not world.agents:
            break
        obs, *_ = world.step(policy(world, obs))
        hashes.append(world.state_hash())
    return hashes, obs


def check_world(
    make_world: Callable[[], World],
    *,
    seed: int = 0,
    ticks: int = 30,
    api_cycles: int = 100,
    policy: Callable[[], Policy] | None = None,
) -> None:
    """Run every conformance check on fresh worlds from ``make_world``.

    Args:
        make_world: builds a new, not yet reset world (the same configuration each call).
        seed: the seed of the runs compared.
        ticks: ticks per run in the determinism and save/load checks.
        api_cycles: cycles of ``parallel_api_test``.
        policy: builds a fresh policy per run (so stateful policies start equal); default:
            seeded action-space sampling.

    Raises:
        ConformanceError: a check failed.
    """
    make_policy = policy or (lambda: sample_policy(seed))
    try:
        parallel_api_test(make_world(), num_cycles=api_cycles)
    except AssertionError as exc:
        raise ConformanceError(f"parallel_api_test failed: {exc}") from exc

    # Observations belong to their spaces.
    world = make_world()
    obs, infos = world.reset(seed=seed)
    for agent, o in obs.items():
        if not world.observation_space(agent).contains(o):
            raise ConformanceError(f"observation of {agent!r} at reset is not in observation_space")
        if "score" not in infos[agent]:
            raise ConformanceError(f"infos[{agent!r}] has no 'score'")

    # Determinism and hash stability: same seed + same decisions -> same hashes, tick by tick.
    a, b = make_world(), make_world()
    obs_a, _ = a.reset(seed=seed)
    obs_b, _ = b.reset(seed=seed)
    if a.state_hash() != b.state_hash():
        raise ConformanceError("two resets with the same seed give different states")
    if a.state_hash() != a.state_hash():
        raise ConformanceError("state_hash() is not stable: hashing twice differs")
    hashes_a, _ = _run(a, make_policy(), obs_a, ticks)
    hashes_b, _ = _run(b, make_policy(), obs_b, ticks)
    for tick, (ha, hb) in enumerate(zip(hashes_a, hashes_b, strict=True)):
        if ha != hb:
            raise ConformanceError(f"same seed and decisions diverge at tick {tick + 1}")

    # Save -> load -> continue equals an uninterrupted run.
    half = max(1, ticks // 2)
    whole, resumed = make_world(), make_world()
    pol_whole, pol_resumed = make_policy(), make_policy()
    obs_w, _ = whole.reset(seed=seed)
    obs_r, _ = resumed.reset(seed=seed)
    _, obs_w = _run(whole, pol_whole, obs_w, half)
    _, obs_r = _run(resumed, pol_resumed, obs_r, half)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.json"
        resumed.save(path)
        resumed = make_world()
        resumed.load(path)
    if resumed.state_hash() != whole.state_hash():
        raise ConformanceError("save -> load changed the state hash")
    if resumed.observations() != obs_w:
        raise ConformanceError("after load, observations differ from the uninterrupted run's")
    hashes_w, _ = _run(whole, pol_whole, obs_w, ticks - half)
    hashes_r, _ = _run(resumed, pol_resumed, resumed.observations(), ticks - half)
    if hashes_w != hashes_r:
        raise ConformanceError("save -> load -> continue diverges from the uninterrupted run")
