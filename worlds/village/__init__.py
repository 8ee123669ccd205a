"""Village: persona agents farm, fish, cut wood, cook, trade and talk on a 48x48 map.

**Map.** A fixed 48x48 tile map (``worlds.village.map``): fields in the south-west, forest in the
east and north-west, a two-tile river crossed by one bridge, a market, a tavern, homes and paths.
Named places: market, tavern, homes, fields, forest, river (the riverbank).

**Agents.** Each agent has a :class:`~worlds.village.cast.VillagePersona` with one of the roles
farmer, fisher, woodcutter, merchant, innkeeper; needs (hunger and social rise each tick, energy
falls), an inventory (wheat, fish, wood, meal) and coins. Agents never die; the episode truncates
at ``max_ticks`` if one is set. A day is 48 ticks; the last 12 are night.

**Actions** (``worlds.village.actions``, a pydantic union on ``action``): move (direction), go_to
(place, up to 3 tiles of shortest path), gather (wheat/wood/fish by place; specialists get 2; the
riverbank is slippery at night), eat, sleep (best at homes), cook (wheat+fish+wood -> meals at the
tavern or homes), sell / buy at the market, trade (an offer to an agent within 3 tiles, which
happens only if that agent sends accept on the next tick and both still hold the goods), accept,
talk (up to 80 printable characters to an agent within 3 tiles), idle. ``step`` takes action
models, dicts, JSON text, or samples of ``action_space(agent)``. Every action is validated; a
refused one comes back as a reason in the agent's next observation. Words carry no power:
nothing moves goods but the agent's own actions.

**Observations.** Compact text (``worlds.village.observation``, about 40 tokens): day or night and
the place, the needs as this persona feels them (``feel``: hungry, tired, lonely, laden, ...), coins
and goods carried, the outcome of the last action, a refusal reason, agents within 3 tiles (name and
role), utterances heard and trade offers received last tick, each with this persona's verdict
(good or bad). The needs' numbers, the tick and the position stay out of the text. The persona's
prompt segment ends with its ``Ways`` (``Village.persona_text``): its trade terms and habits.

**Score.** Per agent, well-being in 0..1: 0.3 fed (1 - hunger) + 0.25 rested (energy) + 0.25 wealth
(coins plus goods at sell prices, full at 60) + 0.2 social (1 - social need). Rewards are its
change per tick; ``infos[agent]`` carries ``score`` and ``world_score`` (the mean).

**Expert.** ``worlds.village.expert.expert_action(persona, observation_text)``: a per-role rule
policy shaped by the traits (a greedy merchant offers less, a cautious fisher stays off the river
at night), reading only what the prompt shows, in words: the feel line, the offers' verdicts and the
persona's Ways.

**Cast.** :func:`~worlds.village.cast.default_cast` (12 villagers),
:func:`~worlds.village.cast.generate_personas` (N seeded ones), :func:`~worlds.village.cast.village_cast`
(either, by count).
"""

from worlds.village.actions import (
    ACTION_TYPES,
    Accept,
    Buy,
    Cook,
    Eat,
    Gather,
    GoTo,
    Idle,
    Move,
    Sell,
    Sleep,
    Talk,
    Trade,
    VillageAction,
    decode_action,
    encode_action,
)
from worlds.village.cast import VillagePersona, default_cast, generate_personas, village_cast
from worlds.village.expert import expert_action
from worlds.village.observation import VillageObs
from worlds.village.world import Village

__all__ = [
    "ACTION_TYPES",
    "Accept",
    "Buy",
    "Cook",
    "Eat",
    "Gather",
    "GoTo",
    "Idle",
    "Move",
    "Sell",
    "Sleep",
    "Talk",
    "Trade",
    "Village",
    "VillageAction",
    "VillageObs",
    "VillagePersona",
    "decode_action",
    "default_cast",
    "encode_action",
    "expert_action",
    "generate_personas",
    "village_cast",
]
