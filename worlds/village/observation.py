"""What a villager observes: a structured record and the compact text the prompt carries.

The text is the observation (the world returns it from ``reset``/``step``). It is line-based
and parses back exactly (:meth:`VillageObs.from_text`), which is how the scripted expert reads
it: the expert sees precisely what a model sees in its prompt, nothing more. The ``feel`` line
names the needs past the thresholds this agent's persona sets (:func:`feelings`), so the prompt
states how the needs feel to *this* agent and a model need not do the trait arithmetic. Example::

    tick 37, day, night in 5
    at 12,30 fields
    hunger 0.42, energy 0.80, social 0.31, coins 12
    feel hungry, lonely
    inventory wheat 3, fish 1
    last gathered 2 wheat
    refused "eat: you have no meal"
    near Bram merchant 1, Cora farmer 2
    heard Bram "fresh fish here"
    offer Bram gives 2 fish for 3 coins
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from worlds.village import rules as R

_HEAD = re.compile(r"tick (\d+), (day|night), (?:night|day) in (\d+)$")
_AT = re.compile(r"at (\d+),(\d+) (\S+)$")
_NEEDS = re.compile(r"hunger ([\d.]+), energy ([\d.]+), social ([\d.]+), coins (\d+)$")
_FEEL = re.compile(r"feel ([a-z, ]+)$")
_OFFER = re.compile(r"offer (\S+) gives (\d+) (\S+) for (\d+) (\S+)$")


def hungry_at(traits: dict[str, float]) -> float:
    """Hunger from which this persona eats (the cautious eat early)."""
    return round(0.6 - 0.2 * traits["caution"], 2)


def tired_below(traits: dict[str, float]) -> float:
    """Energy under which this persona goes to bed (the cautious go early)."""
    return round(0.3 + 0.2 * traits["caution"], 2)


def lonely_at(traits: dict[str, float]) -> float:
    """Social need from which this persona seeks company (the sociable seek it early)."""
    return round(0.8 - 0.4 * traits["sociability"], 2)


def bedtime(night: bool, energy: float, traits: dict[str, float]) -> bool:
    """Whether this persona wants to bed down now: at night, unless diligent (0.7+), until rested (0.9)."""
    return night and traits["diligence"] < 0.7 and energy < 0.9


def feelings(hunger: float, energy: float, social: float, night: bool, traits: dict[str, float]) -> tuple[str, ...]:
    """How the (two-decimal) needs feel to a persona with ``traits``: at most one word per need.

    Hunger: ``starving`` from 0.8, else ``hungry`` from :func:`hungry_at`. Energy: ``exhausted``
    under 0.15, ``tired`` under :func:`tired_below`, ``sleepy`` at night for the less diligent
    (diligence under 0.7) under 0.9, ``rested`` from 0.9. Social: ``lonely`` from :func:`lonely_at`.
    """
    words = []
    if hunger >= 0.8:
        words.append("starving")
    elif hunger >= hungry_at(traits):
        words.append("hungry")
    if energy < 0.15:
        words.append("exhausted")
    elif energy < tired_below(traits):
        words.append("tired")
    elif bedtime(night, energy, traits):
        words.append("sleepy")
    elif energy >= 0.9:
        words.append("rested")
    if social >= lonely_at(traits):
        words.append("lonely")
    return tuple(words)


@dataclass(frozen=True)
class Neighbor:
    """Another agent within reach: its name, role and distance in tiles."""

    name: str
    role: str
    dist: int


@dataclass(frozen=True)
class Offer:
    """A trade offered to me on the previous tick: ``offer_from`` gives ``give_qty`` ``give``
    and wants ``get_qty`` ``get`` from me."""

    offer_from: str
    give: str
    give_qty: int
    get: str
    get_qty: int


@dataclass(frozen=True)
class VillageObs:
    """One agent's observation (needs shown, and stored, with two decimals)."""

    tick: int
    night: bool
    switch_in: int
    x: int
    y: int
    area: str
    hunger: float
    energy: float
    social: float
    coins: int
    feel: tuple[str, ...] = ()
    inventory: tuple[tuple[str, int], ...] = ()
    last: str = "nothing yet"
    refused: str | None = None
    near: tuple[Neighbor, ...] = ()
    heard: tuple[tuple[str, str], ...] = ()
    offers: tuple[Offer, ...] = ()

    def has(self, item: str) -> int:
        """How many ``item`` the agent holds (``coins`` included)."""
        if item == "coins":
            return self.coins
        return dict(self.inventory).get(item, 0)

    def argument_choices(self) -> dict[str, list[str]]:
        """The values this agent's action arguments can take now without a sure refusal, as far as
        this observation shows: the action kinds, the places to go to, the partners within reach
        (``to``) and the offers to accept (``offer_from``). Anything left out would be refused
        whatever the other arguments; what depends on them (quantities, items) is left free."""
        holds = {k for k, n in self.inventory if n > 0}
        at_market = self.area == "market"
        possible = {
            "move": True,
            "go_to": True,
            "gather": self.area in R.GATHER,
            "eat": bool(holds & R.FOOD.keys()),
            "sleep": True,
            "cook": self.area in R.COOK_SITES and {"wheat", "fish", "wood"} <= holds,
            "sell": at_market and bool(holds),
            "buy": at_market and self.coins >= min(R.BUY_PRICE.values()),
            "trade": bool(self.near) and (self.coins > 0 or bool(holds)),
            "accept": bool(self.offers),
            "talk": bool(self.near),
            "idle": True,
        }
        return {
            "action": [kind for kind, ok in possible.items() if ok],
            "place": [p for p in R.PLACES if p != self.area],
            "to": [n.name for n in self.near],
            "offer_from": list(dict.fromkeys(o.offer_from for o in self.offers)),
        }

    def to_text(self) -> str:
        """The compact observation text (see the module docstring)."""
        phase, other = ("night", "day") if self.night else ("day", "night")
        lines = [
            f"tick {self.tick}, {phase}, {other} in {self.switch_in}",
            f"at {self.x},{self.y} {self.area}",
            f"hunger {self.hunger:.2f}, energy {self.energy:.2f}, social {self.social:.2f}, coins {self.coins}",
            "feel " + (", ".join(self.feel) or "fine"),
            "inventory " + (", ".join(f"{k} {v}" for k, v in self.inventory) or "nothing"),
            f"last {self.last}",
        ]
        if self.refused is not None:
            lines.append("refused " + json.dumps(self.refused))
        if self.near:
            lines.append("near " + ", ".join(f"{n.name} {n.role} {n.dist}" for n in self.near))
        lines += [f"heard {who} {json.dumps(text)}" for who, text in self.heard]
        lines += [
            f"offer {o.offer_from} gives {o.give_qty} {o.give} for {o.get_qty} {o.get}" for o in self.offers
        ]
        return "\n".join(lines)

    @classmethod
    def from_text(cls, text: str) -> VillageObs:
        """Parse :meth:`to_text` output back (raises ``ValueError`` on anything else)."""
        lines = text.strip().split("\n")
        try:
            head, at, needs, feel, inventory, last = lines[:6]
            tick, phase, switch_in = _match(_HEAD, head).groups()
            x, y, area = _match(_AT, at).groups()
            hunger, energy, social, coins = _match(_NEEDS, needs).groups()
            feel_text = _match(_FEEL, feel).group(1)
            inv_text = _strip_prefix(inventory, "inventory ")
            inv = () if inv_text == "nothing" else tuple(_pair(p) for p in inv_text.split(", "))
            fields = {
                "tick": int(tick),
                "night": phase == "night",
                "switch_in": int(switch_in),
                "x": int(x),
                "y": int(y),
                "area": area,
                "hunger": float(hunger),
                "energy": float(energy),
                "social": float(social),
                "coins": int(coins),
                "feel": () if feel_text == "fine" else tuple(feel_text.split(", ")),
                "inventory": inv,
                "last": _strip_prefix(last, "last "),
            }
            near: list[Neighbor] = []
            heard: list[tuple[str, str]] = []
            offers: list[Offer] = []
            for line in lines[6:]:
                key, _, rest = line.partition(" ")
                if key == "refused":
                    fields["refused"] = json.loads(rest)
                elif key == "near":
                    for part in rest.split(", "):
                        name, role, dist = part.split(" ")
                        near.append(Neighbor(name, role, int(dist)))
                elif key == "heard":
                    who, _, said = rest.partition(" ")
                    heard.append((who, json.loads(said)))
                elif key == "offer":
                    who, give_qty, give, get_qty, get = _match(_OFFER, line).groups()
                    offers.append(Offer(who, give, int(give_qty), get, int(get_qty)))
                else:
                    raise ValueError(f"unknown line {line!r}")
        except (ValueError, IndexError) as exc:
            raise ValueError(f"not a village observation: {exc}") from None
        return cls(**fields, near=tuple(near), heard=tuple(heard), offers=tuple(offers))


def _match(pattern: re.Pattern[str], line: str) -> re.Match[str]:
    m = pattern.match(line)
    if m is None:
        raise ValueError(f"cannot read {line!r}")
    return m


def _strip_prefix(line: str, prefix: str) -> str:
    if not line.startswith(prefix):
        raise ValueError(f"expected {prefix.strip()!r} line, got {line!r}")
    return line[len(prefix) :]


def _pair(part: str) -> tuple[str, int]:
    name, qty = part.split(" ")
    return name, int(qty)
