"""The conformance check: it passes on the village and catches worlds that break the contract."""

from __future__ import annotations

import random

import pytest

from agents import ExpertBrain
from worlds.conformance import ConformanceError, check_world
from worlds.village import Village


def expert_policy():
    return lambda world, obs: ExpertBrain(world, record_prompts=False).decide(obs)


def test_village_passes_with_sampled_actions():
    check_world(lambda: Village(max_ticks=60), ticks=30, api_cycles=100)


def test_village_passes_with_the_expert():
    check_world(Village, policy=expert_policy, ticks=60, api_cycles=30)


class ForgetfulVillage(Village):
    """Loses coins on load: save -> load is not a round trip."""

    def _set_state(self, state):
        super()._set_state(state)
        for v in self._v.values():
            v.coins = 0


class NoisyVillage(Village):
    """Draws from the global random module instead of the world's generator."""

    def _setup(self, rng, options):
        super()._setup(rng, options)
        for v in self._v.values():
            v.coins = random.randint(0, 1000)


class CopyingSpaces(Village):
    """Returns a new action space object on every call."""

    def action_space(self, agent):
        return self._make_action_space()


@pytest.mark.parametrize(
    ("world_type", "message"),
    [
        (ForgetfulVillage, "save -> load changed the state hash"),
        (NoisyVillage, "same seed give different states"),
        (CopyingSpaces, "parallel_api_test failed"),
    ],
)
def test_conformance_catches_broken_worlds(world_type, message):
    with pytest.raises(ConformanceError, match=message):
        check_world(lambda: world_type(max_ticks=40), ticks=10, api_cycles=10)
