"""The conformance check: it passes on the village and catches worlds that break the contract."""

from __future__ import annotations

import random
from typing import Literal

import gymnasium
import numpy as np
import pytest
from pydantic import BaseModel

from agents import ExpertBrain, Persona, action_union
from worlds import make_world
from worlds.base import World
from worlds.conformance import ConformanceError, check_world
from worlds.view import AgentView, WorldView
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


class Graze(BaseModel):
    action: Literal["graze"] = "graze"


class Rest(BaseModel):
    action: Literal["rest"] = "rest"


class Meadow(World):
    """A minimal user world: the base class does the seeding, bookkeeping, hashing and saving."""

    roles = frozenset({"sheep"})
    action_type = action_union(Graze, Rest)

    def _setup(self, rng, options):
        self.grass = {a: int(rng.integers(0, 10)) for a in self.agents}

    def _apply(self, actions):
        for agent, act in actions.items():
            if act.action == "graze":
                if self.grass[agent] == 0:
                    self.refuse(agent, "no grass left")
                else:
                    self.grass[agent] -= 1

    def _observe_all(self):
        return {a: f"grass {self.grass[a]}" for a in self.agents}

    def score(self, agent):
        return 1.0 - self.grass[agent] / 10

    def _get_state(self):
        return {"grass": self.grass}

    def _set_state(self, state):
        self.grass = dict(state["grass"])

    def _make_observation_space(self):
        return gymnasium.spaces.Text(max_length=16, charset="grass 0123456789")

    def _make_action_space(self):
        return gymnasium.spaces.Discrete(2)

    def _coerce_action(self, agent, raw):
        if isinstance(raw, (int,)) or hasattr(raw, "dtype"):
            return (Graze(), Rest())[int(raw)]
        return super()._coerce_action(agent, raw)

    def fallback_action(self):
        return Rest()

    def rules_text(self):
        return "Graze or rest."

    def role_text(self, role):
        return "You are a sheep."

    def view(self):
        agents = tuple(AgentView(name=a, role="sheep", x=0, y=0) for a in self.agents)
        return WorldView(self.tick, np.zeros((1, 1), dtype=np.int8), {0: "grass"}, agents)


def test_a_minimal_user_world_passes():
    flock = [Persona(name=n, role="sheep") for n in ("Dolly", "Shaun")]
    check_world(lambda: Meadow(flock, max_ticks=20), ticks=10, api_cycles=30)
    meadow = Meadow(flock)
    meadow.reset(seed=1)
    assert meadow.persona_text("Dolly") == flock[0].describe()  # a world need not word its personas
    *_, infos = meadow.step({"Dolly": '{"action": "graze"}', "Shaun": "baa"})
    assert infos["Shaun"]["refused"].startswith("invalid action: not JSON")
    with pytest.raises(ValueError, match="role 'wolf'"):
        Meadow([Persona(name="Big", role="wolf")])


def test_make_world_by_name():
    world = make_world("village", agents=20, seed=1, max_ticks=3)
    assert isinstance(world, Village) and len(world.possible_agents) == 20 and world.max_ticks == 3
    with pytest.raises(KeyError, match="known worlds: village"):
        make_world("moon")
