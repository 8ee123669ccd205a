"""What a villager observes: a structured record and the compact text the prompt carries.

The text is the observation (the world returns it from ``reset``/``step``). It is line-based
and parses back exactly (:meth:`VillageObs.from_text`), which is how the scripted expert reads
it: the expert sees precisely what a model sees in its prompt, nothing more. It is short (about
40 tokens) because every agent's model reads all of it anew each tick, and it says in words what
the persona's traits make of the numbers, so a model need not do trait arithmetic:

- ``feel`` names the needs past the thresholds this agent's persona sets (:func:`feelings`), and
  ``laden`` when a producer carries enough to be worth a trip to the market (:func:`laden_at`);
- each offer ends with this agent's verdict on it, ``good`` or ``bad`` (:func:`appraise`);
- at the market, ``spare`` says what this agent's habits would sell there (:func:`for_sale`), so
  neither the choice to sell nor the quantity takes arithmetic;
- ``near`` writes each agent within reach role first (``merchant Bram``): the experts pick a
  partner by role (the first producer, the first guest), and a causal model reads the role before
  the name it then copies.

The needs themselves (0-1 numbers) stay in :class:`VillageObs` for the world, the renderer and
the inspector, but are not in the text. Example::

    day at market
    feel hungry, lonely, laden
    carry 12 coins, wheat 9, fish 1
    last go_to market, arrived
    spare 7 wheat
    refused "eat: you have no meal"
    near merchant Bram, farmer Cora
    heard Bram "fresh fish here"
    offer Bram gives 2 fish for 3 coins, good
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass

from worlds.village import rules as R

_HEAD = re.compile(r"(day|night) at (\S+)$")
_CARRY = re.compile(r"carry (\d+) coins((?:, \S+ \d+)*)$")
_FEEL = re.compile(r"feel ([a-z, ]+)$")
_OFFER = re.compile(r"offer (\S+) gives (\d+) (\S+) for (\d+) (\S+), (good|bad)$")

OBSERVATION_FORMAT = 2
"""Bumped whenever the text changes (2: roles before names), so datasets of the old text are not
reused (:func:`exports.card.card_dataset` keys its cache on it)."""

PRODUCE: dict[str, tuple[str, str]] = {
    "farmer": ("wheat", "fields"),
    "fisher": ("fish", "river"),
    "woodcutter": ("wood", "forest"),
    "merchant": ("wheat", "fields"),  # a merchant without capital farms wheat
}
"""What a role gathers when it gathers, and where."""
KEEP_FOOD = 2
"""Units of their own food producers keep to eat rather than sell."""


def hungry_at(traits: dict[str, float]) -> float:
    """Hunger from which this persona eats (the cautious eat early)."""
    return round(0.6 - 0.2 * traits["caution"], 2)


def tired_below(traits: dict[str, float]) -> float:
    """Energy under which this persona goes to bed (the cautious go early)."""
    return round(0.3 + 0.2 * traits["caution"], 2)


def lonely_at(traits: dict[str, float]) -> float:
    """Social need from which this persona seeks company (the sociable seek it early)."""
    return round(0.8 - 0.4 * traits["sociability"], 2)


def laden_at(traits: dict[str, float]) -> int:
    """Spare units of its produce from which a producer takes them to market (the diligent gather more first)."""
    return 4 + round(6 * traits["diligence"])


def bedtime(night: bool, energy: float, traits: dict[str, float]) -> bool:
    """Whether this persona wants to bed down now: at night, unless diligent (0.7+), until rested (0.9)."""
    return night and traits["diligence"] < 0.7 and energy < 0.9


def spare(role: str, item: str, held: int) -> int:
    """Units of ``item`` a ``role`` can part with: producers keep some of their own food to eat."""
    keep = KEEP_FOOD if PRODUCE.get(role, ("",))[0] == item and item in R.FOOD else 0
    return max(0, held - keep)


def for_sale(role: str, holdings: dict[str, int]) -> tuple[str, int] | None:
    """What this ``role``'s habits would sell at the market from ``holdings``, as ``(item, qty)``:
    a producer its :func:`spare` produce, a merchant its largest stock (goods it bought), an
    innkeeper the meals past two once it has six; ``None`` when nothing."""
    if role in R.SPECIALIST:
        item = R.SPECIALIST[role]
        qty = spare(role, item, holdings.get(item, 0))
        return (item, qty) if qty > 0 else None
    if role == "merchant":
        stock = [(n, i) for i in R.ITEMS if i != "meal" and (n := holdings.get(i, 0)) > 0]
        return max(stock)[::-1] if stock else None
    meals = holdings.get("meal", 0)
    return ("meal", meals - 2) if role == "innkeeper" and meals >= 6 else None


def feelings(
    hunger: float,
    energy: float,
    social: float,
    night: bool,
    traits: dict[str, float],
    *,
    role: str | None = None,
    holdings: dict[str, int] | None = None,
) -> tuple[str, ...]:
    """How the (two-decimal) needs feel to a persona with ``traits``: at most one word per need,
    then ``laden`` for a producer (``role``) whose spare produce in ``holdings`` reached :func:`laden_at`.

    Hunger: ``starving`` from 0.8, else ``hungry`` from :func:`hungry_at`. Energy: ``exhausted``
    under 0.2, ``tired`` under :func:`tired_below`, ``sleepy`` at night for the less diligent
    (diligence under 0.7) under 0.9, ``rested`` from 0.9. Social: ``lonely`` from :func:`lonely_at`.
    """
    words = []
    if hunger >= 0.8:
        words.append("starving")
    elif hunger >= hungry_at(traits):
        words.append("hungry")
    if energy < 0.2:
        words.append("exhausted")
    elif energy < tired_below(traits):
        words.append("tired")
    elif bedtime(night, energy, traits):
        words.append("sleepy")
    elif energy >= 0.9:
        words.append("rested")
    if social >= lonely_at(traits):
        words.append("lonely")
    if role in PRODUCE and holdings is not None:
        item = PRODUCE[role][0]
        if spare(role, item, holdings.get(item, 0)) >= laden_at(traits):
            words.append("laden")
    return tuple(words)


LOT = 4
"""Units a producer offers a merchant in one trade."""
MERCHANT_LOT = 3
"""Units a merchant offers to buy from a producer in one trade."""


def producer_ask(item: str, traits: dict[str, float]) -> int:
    """Coins per unit a producer asks a merchant for: a little over the market's price (the greedy ask more)."""
    return R.SELL_PRICE[item] + (2 if traits["greed"] >= 0.7 else 1)


def merchant_pays(item: str, traits: dict[str, float]) -> int:
    """Coins per unit a merchant offers producers: the market price, plus half its resale bonus
    unless greedy."""
    return R.SELL_PRICE[item] + (0 if traits["greed"] >= 0.6 else R.MERCHANT_BONUS // 2)


def meal_price(traits: dict[str, float]) -> int:
    """Coins an innkeeper asks for a meal (the greedy ask more)."""
    return 4 + round(2 * traits["greed"])


def shuns_river_at_night(traits: dict[str, float]) -> bool:
    return traits["caution"] >= 0.5


def wanders(role: str, traits: dict[str, float]) -> bool:
    """Whether this persona looks around when it has nothing to do (innkeepers rarely leave the tavern)."""
    return traits["curiosity"] >= (0.8 if role == "innkeeper" else 0.6)


def ways(role: str, traits: dict[str, float]) -> str:
    """The persona's habits in words, with the numbers its traits give them (its trade terms):
    a line of the persona's prompt segment, the same on every tick."""
    parts = []
    if role in R.SPECIALIST:
        item = R.SPECIALIST[role]
        parts.append(f"you offer merchants {LOT} {item} for {LOT * producer_ask(item, traits)} coins")
    elif role == "merchant":
        offers = ", ".join(
            f"{r}s {MERCHANT_LOT * merchant_pays(i, traits)} coins for {MERCHANT_LOT} {i}"
            for r, i in R.SPECIALIST.items()
        )
        parts.append(f"you offer {offers}")
    elif role == "innkeeper":
        parts.append(f"you sell a meal for {meal_price(traits)} coins")
    if shuns_river_at_night(traits):
        parts.append("you shun the river at night")
    parts.append("idle, you wander" if wanders(role, traits) else "idle, you wait")
    return "Ways: " + "; ".join(parts) + "."


def value(good: str, qty: int, role: str, hungry: bool) -> float:
    """What ``qty`` of ``good`` is worth to a ``role``: coins at face value, goods at market sell
    price (plus the resale bonus for merchants), food double when hungry."""
    if good == "coins":
        return float(qty)
    unit = R.SELL_PRICE[good] + (R.MERCHANT_BONUS if role == "merchant" else 0)
    worth = float(unit * qty)
    return worth * 2 if good in R.FOOD and hungry else worth


def accept_margin(traits: dict[str, float]) -> float:
    """How much more than it gives an offer must bring for this persona to take it (the greedy
    want more, the generous settle for less)."""
    return 0.9 + 0.3 * traits["greed"] - 0.2 * traits["generosity"]


def appraise(
    offer: Offer, holdings: dict[str, int], role: str, traits: dict[str, float], hungry: bool
) -> bool:
    """Whether this agent would take ``offer``: it can pay, and what it gets beats what it gives
    by its :func:`accept_margin`."""
    if holdings.get(offer.get, 0) < offer.get_qty:
        return False
    gain = value(offer.give, offer.give_qty, role, hungry)
    return gain >= value(offer.get, offer.get_qty, role, hungry) * accept_margin(traits)


@dataclass(frozen=True)
class Neighbor:
    """Another agent within reach: its name and role (and, for the world, its distance in tiles;
    everyone listed is within :data:`rules.REACH`, so the text leaves the distance out)."""

    name: str
    role: str
    dist: int | None = None


@functools.lru_cache(maxsize=1 << 16)
def neighbor(name: str, role: str, dist: int) -> Neighbor:
    """One immutable :class:`Neighbor` per agent and distance, made once: building ≈ 5,000 frozen
    dataclasses a tick was a sixth of the driver's time in a 1,000-agent village."""
    return Neighbor(name, role, dist)


@dataclass(frozen=True)
class Offer:
    """A trade offered to me on the previous tick: ``offer_from`` gives ``give_qty`` ``give``
    and wants ``get_qty`` ``get`` from me; ``good`` is my verdict on it (:func:`appraise`)."""

    offer_from: str
    give: str
    give_qty: int
    get: str
    get_qty: int
    good: bool = False


@dataclass(frozen=True)
class VillageObs:
    """One agent's observation.

    The fields from ``night`` to ``offers`` are the text; ``tick``, the position and the needs
    (two decimals) are for the world and its views only, and are ``None`` in an observation read
    back from text.
    """

    night: bool
    area: str
    coins: int
    feel: tuple[str, ...] = ()
    inventory: tuple[tuple[str, int], ...] = ()
    last: str = "nothing yet"
    spare: tuple[str, int] | None = None
    refused: str | None = None
    near: tuple[Neighbor, ...] = ()
    heard: tuple[tuple[str, str], ...] = ()
    offers: tuple[Offer, ...] = ()
    tick: int | None = None
    x: int | None = None
    y: int | None = None
    hunger: float | None = None
    energy: float | None = None
    social: float | None = None

    def has(self, item: str) -> int:
        """How many ``item`` the agent holds (``coins`` included)."""
        if item == "coins":
            return self.coins
        return dict(self.inventory).get(item, 0)

    def feels(self, word: str) -> bool:
        return word in self.feel

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
        goods = "".join(f", {k} {v}" for k, v in self.inventory)
        lines = [
            f"{'night' if self.night else 'day'} at {self.area}",
            "feel " + (", ".join(self.feel) or "fine"),
            f"carry {self.coins} coins{goods}",
            f"last {self.last}",
        ]
        if self.spare is not None:
            lines.append(f"spare {self.spare[1]} {self.spare[0]}")
        if self.refused is not None:
            lines.append("refused " + json.dumps(self.refused))
        if self.near:
            lines.append("near " + ", ".join(f"{n.role} {n.name}" for n in self.near))
        lines += [f"heard {who} {json.dumps(text)}" for who, text in self.heard]
        lines += [
            f"offer {o.offer_from} gives {o.give_qty} {o.give} for {o.get_qty} {o.get}, "
            + ("good" if o.good else "bad")
            for o in self.offers
        ]
        return "\n".join(lines)

    @classmethod
    def from_text(cls, text: str) -> VillageObs:
        """Parse :meth:`to_text` output back (raises ``ValueError`` on anything else)."""
        lines = text.strip().split("\n")
        try:
            head, feel, carry, last = lines[:4]
            phase, area = _match(_HEAD, head).groups()
            feel_text = _match(_FEEL, feel).group(1)
            coins, goods = _match(_CARRY, carry).groups()
            fields = {
                "night": phase == "night",
                "area": area,
                "coins": int(coins),
                "feel": () if feel_text == "fine" else tuple(feel_text.split(", ")),
                "inventory": tuple(_pair(p) for p in goods.split(", ")[1:]),
                "last": _strip_prefix(last, "last "),
            }
            near: list[Neighbor] = []
            heard: list[tuple[str, str]] = []
            offers: list[Offer] = []
            for line in lines[4:]:
                key, _, rest = line.partition(" ")
                if key == "spare":
                    qty, item = rest.split(" ")
                    fields["spare"] = (item, int(qty))
                elif key == "refused":
                    fields["refused"] = json.loads(rest)
                elif key == "near":
                    for part in rest.split(", "):
                        role, name = part.split(" ")
                        near.append(Neighbor(name, role))
                elif key == "heard":
                    who, _, said = rest.partition(" ")
                    heard.append((who, json.loads(said)))
                elif key == "offer":
                    who, give_qty, give, get_qty, get, verdict = _match(_OFFER, line).groups()
                    offers.append(Offer(who, give, int(give_qty), get, int(get_qty), verdict == "good"))
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
