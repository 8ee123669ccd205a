"""Village personas: the persona type, a default cast of 12, and a seeded generator for N agents."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from agents.persona import KNOWN_TRAITS, Persona
from worlds.village.rules import ROLES


class VillagePersona(Persona):
    """A persona whose role must be a village role; it uses the village models by default."""

    ROLES: ClassVar[frozenset[str] | None] = frozenset(ROLES)
    # The act student in fp32 (runtime.cli_common.DEFAULT_ACT_MODEL): its answers do not depend on the
    # requests that share a batch, so a seed gives the same run with any number of workers. Its int8
    # copy is 10-15% faster and does not have that property (docs/models.md); bind it per persona.
    DEFAULT_MODELS: ClassVar[dict[str, str]] = {"act": "village-act", "talk": "village-talk"}


def _p(name: str, role: str, traits: dict[str, float], goals: list[str], backstory: str) -> VillagePersona:
    return VillagePersona(name=name, role=role, traits=traits, goals=goals, backstory=backstory)


def default_cast() -> list[VillagePersona]:
    """Twelve distinct villagers covering every role with contrasting traits."""
    return [
        _p(
            "Alda",
            "farmer",
            {"caution": 0.85, "diligence": 0.7, "greed": 0.2},
            ["never go hungry"],
            "Lost a brother to the river one winter night and has kept away from it after dark since.",
        ),
        _p(
            "Bertram",
            "farmer",
            {"caution": 0.2, "diligence": 0.9, "greed": 0.6, "curiosity": 0.3},
            ["grow the biggest harvest"],
            "Works the fields from dawn to dusk and counts every coin.",
        ),
        _p(
            "Cora",
            "farmer",
            {"sociability": 0.9, "diligence": 0.4, "generosity": 0.8},
            ["know everyone's news"],
            "Would rather chat at the field's edge than bind sheaves.",
        ),
        _p(
            "Dunstan",
            "fisher",
            {"caution": 0.1, "diligence": 0.8, "greed": 0.5},
            ["catch fish by moonlight"],
            "Swears the best fish bite at night and laughs at the river's dangers.",
        ),
        _p(
            "Edda",
            "fisher",
            {"caution": 0.9, "sociability": 0.6, "generosity": 0.7},
            ["feed her family"],
            "Mends nets at home when the light fails; the river took her father.",
        ),
        _p(
            "Fenwick",
            "woodcutter",
            {"diligence": 0.95, "sociability": 0.15, "greed": 0.4},
            ["save for a new axe"],
            "A quiet man of the forest who speaks mostly to trees.",
        ),
        _p(
            "Gisela",
            "woodcutter",
            {"curiosity": 0.9, "diligence": 0.5, "caution": 0.4},
            ["find the oldest oak"],
            "Wanders between the trunks looking for something she cannot name.",
        ),
        _p(
            "Harlan",
            "merchant",
            {"greed": 0.95, "caution": 0.5, "generosity": 0.05},
            ["become the richest in the village"],
            "Buys low and sells high, and forgets no debt.",
        ),
        _p(
            "Isolde",
            "merchant",
            {"greed": 0.3, "generosity": 0.8, "sociability": 0.8},
            ["keep the market fair"],
            "Pays farmers a fair price because her mother was one.",
        ),
        _p(
            "Jory",
            "merchant",
            {"greed": 0.6, "curiosity": 0.8, "caution": 0.3},
            ["trade with every villager"],
            "A travelling trader who stayed for the tavern's stew.",
        ),
        _p(
            "Katrin",
            "innkeeper",
            {"generosity": 0.7, "sociability": 0.9, "greed": 0.3},
            ["no guest leaves hungry"],
            "Runs the tavern her grandmother built and knows every regular.",
        ),
        _p(
            "Lothar",
            "innkeeper",
            {"greed": 0.8, "diligence": 0.8, "caution": 0.6},
            ["buy the tavern outright"],
            "Cooks well and charges for it; saves every coin for the deed.",
        ),
    ]


_FIRST = [
    "Ansel",
    "Berta",
    "Clem",
    "Dagna",
    "Eberhard",
    "Frida",
    "Gunter",
    "Hilde",
    "Ivo",
    "Jutta",
    "Konrad",
    "Liesel",
    "Matthis",
    "Nele",
    "Osric",
    "Perpetua",
    "Quirin",
    "Roswitha",
    "Sigmund",
    "Trude",
    "Ulf",
    "Veit",
    "Walburga",
    "Xaver",
    "Yrsa",
    "Zeno",
    "Agnes",
    "Bruno",
    "Clothilde",
    "Detlef",
    "Elske",
    "Fritz",
    "Gerlind",
    "Hagen",
    "Irmel",
    "Joost",
    "Kunigunde",
    "Lenz",
    "Mechtild",
    "Norbert",
]
_GOALS = {
    "farmer": ["bring in the harvest", "never go hungry", "buy a second field"],
    "fisher": ["catch a giant pike", "sell fish at a good price", "mend the old boat"],
    "woodcutter": ["fell the tallest tree", "stack wood for winter", "save for a new axe"],
    "merchant": ["grow rich", "trade with everyone", "keep prices fair"],
    "innkeeper": ["keep the tavern full", "feed every guest", "save for a bigger hearth"],
}
_ORIGINS = ("in the village", "across the river", "in a northern town", "on a farm nearby", "on the road")
_QUIRKS = (
    "hums while working",
    "distrusts strangers",
    "loves a good bargain",
    "fears the dark",
    "tells long stories",
    "rises before the sun",
)
_ROLE_WEIGHTS = {"farmer": 0.3, "fisher": 0.2, "woodcutter": 0.2, "merchant": 0.15, "innkeeper": 0.15}


def _numbered_name(rng: np.random.Generator, k: int) -> str:
    """A first name drawn from ``rng`` and the number ``k``: ``Ansel-13``."""
    return f"{_FIRST[int(rng.integers(len(_FIRST)))]}-{k}"


def generate_personas(
    n: int, seed: int = 0, *, start: int = 1, first_names: list[str] | None = None
) -> list[VillagePersona]:
    """``n`` villagers with seeded random roles, traits, goals and backstories.

    Names carry a number (``Ansel-1``, ``Berta-2``...), so they never clash with each other or
    with the default cast. With ``first_names``, each villager is named by one of them instead,
    drawn without replacement and without a number (as the default cast is named).

    Args:
        n: how many.
        seed: the generator's seed: the same seed gives the same personas.
        start: the first number used in names.
        first_names: plain names to draw from (at least ``n`` distinct ones).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    plain = None
    if first_names is not None:
        pool = list(dict.fromkeys(first_names))
        if len(pool) < n:
            raise ValueError(f"{n} villagers need {n} distinct first names, got {len(pool)}")
        plain = [pool[int(i)] for i in rng.permutation(len(pool))[:n]]
    roles = list(_ROLE_WEIGHTS)
    weights = np.array(list(_ROLE_WEIGHTS.values()))
    out = []
    for k in range(start, start + n):
        name = plain[k - start] if plain is not None else _numbered_name(rng, k)
        role = roles[int(rng.choice(len(roles), p=weights))]
        traits = {
            t: round(float(v), 2) for t, v in zip(KNOWN_TRAITS, rng.random(len(KNOWN_TRAITS)), strict=True)
        }
        goal = _GOALS[role][int(rng.integers(len(_GOALS[role])))]
        backstory = (
            f"{name.split('-')[0]} grew up {_ORIGINS[int(rng.integers(len(_ORIGINS)))]} "
            f"and {_QUIRKS[int(rng.integers(len(_QUIRKS)))]}."
        )
        out.append(VillagePersona(name=name, role=role, traits=traits, goals=[goal], backstory=backstory))
    return out


def renamed(personas: list[VillagePersona], seed: int, *, start: int) -> list[VillagePersona]:
    """``personas`` under generated names (``Ansel-{start}``, ...), everything else kept.

    The dataset uses it to show the default villagers' characters under names a model must read
    from its prompt rather than remember.

    Args:
        personas: the villagers to rename.
        seed: the generator's seed for the first names.
        start: the first number used in names.
    """
    rng = np.random.default_rng(seed)
    return [p.model_copy(update={"name": _numbered_name(rng, start + k)}) for k, p in enumerate(personas)]


def village_cast(n: int | None = None, seed: int = 0) -> list[VillagePersona]:
    """The default cast, cut to ``n`` or topped up to ``n`` with generated villagers.

    Args:
        n: how many agents (``None``: the 12 of the default cast).
        seed: seeds the generated villagers.
    """
    cast = default_cast()
    if n is None:
        return cast
    if n < 1:
        raise ValueError(f"a village needs at least one agent, got n={n}")
    if n <= len(cast):
        return cast[:n]
    return cast + generate_personas(n - len(cast), seed, start=len(cast) + 1)
