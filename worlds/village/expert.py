"""The scripted expert: a rule policy per role, shaped by the persona's traits.

It is the yardstick for models and the source of their training data, so it must be learnable:
it decides only from what the agent's prompt contains, deterministically. It reads the
observation text (parsed back) and the persona's traits only through what the prompt states in
words: the ``feel`` line (needs past this persona's thresholds, and ``laden``), each offer's
``good``/``bad`` verdict, the ``spare`` line at the market (what to sell, how many), and the
persona segment's ``Ways`` line (trade terms and habits, see
:func:`worlds.village.observation.ways`). It never reads world state.

Priorities, first match wins: sleep if exhausted; eat when hungry and holding food; take a good
offer; buy or fetch food when hungry; keep sleeping until rested, or go home when tired or
sleepy; leave the riverbank at night if one shuns it; talk when lonely; otherwise do the role's
work.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from agents.persona import Persona
from worlds.village import rules as R
from worlds.village.actions import (
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
)
from worlds.village.observation import (
    LOT,
    MERCHANT_LOT,
    PRODUCE,
    VillageObs,
    meal_price,
    merchant_pays,
    producer_ask,
    shuns_river_at_night,
    wanders,
)

Traits = dict[str, float]
FOOD_PREFERENCE = ("meal", "fish", "wheat")
ROLE_PHRASE = {
    "farmer": "good harvest today",
    "fisher": "fresh fish here",
    "woodcutter": "wood for sale",
    "merchant": "want to trade?",
    "innkeeper": "meals at the tavern",
}
NIGHT_WARNING = "stay away from the river at night"


def expert_action(persona: Persona, observation: str | VillageObs) -> BaseModel:
    """The expert's action for ``persona`` given its observation (text or parsed)."""
    obs = observation if isinstance(observation, VillageObs) else VillageObs.from_text(observation)
    t = persona.traits
    role = persona.role
    if obs.feels("exhausted"):
        return Sleep()
    hungry = obs.feels("hungry") or obs.feels("starving")
    food = next((f for f in FOOD_PREFERENCE if obs.has(f)), None)
    if hungry and food is not None:
        return Eat(item=food)
    offer = next((o for o in obs.offers if o.good), None)
    if offer is not None:
        return Accept(offer_from=offer.offer_from)
    if hungry:
        meal = _feed(obs)
        if meal is not None:
            return meal
    home = "tavern" if role == "innkeeper" else "homes"
    still_sleeping = obs.last == "slept" and not obs.feels("rested")
    if still_sleeping or obs.feels("tired") or obs.feels("sleepy"):
        return Sleep() if obs.area in (home, "homes") else GoTo(place=home)
    if obs.night and shuns_river_at_night(t) and obs.area == "river":
        return GoTo(place=home)
    if obs.near and obs.feels("lonely"):
        text = NIGHT_WARNING if obs.night and shuns_river_at_night(t) else ROLE_PHRASE[role]
        return Talk(to=obs.near[0].name, text=text)
    return ROLE_POLICY[role](obs, role, t)


def _feed(obs: VillageObs) -> BaseModel | None:
    """Hungry with nothing to eat: buy food, or gather wheat if broke and starving."""
    affordable = [f for f in FOOD_PREFERENCE if R.BUY_PRICE[f] <= obs.coins]
    if affordable:
        return Buy(item=affordable[0], qty=1) if obs.area == "market" else GoTo(place="market")
    if obs.feels("starving"):  # broke and starving: anyone can gather a little wheat
        return Gather() if obs.area == "fields" else GoTo(place="fields")
    return None


def _wander(obs: VillageObs, role: str, t: Traits) -> BaseModel:
    """Nothing to do: the curious walk around (each step turning right of the last), the rest wait."""
    if not wanders(role, t):
        return Idle()
    last = obs.last.split(" ")
    if last[0] == "moved" and last[-1] in R.DIRECTIONS:
        return Move(direction=R.DIRECTIONS[(R.DIRECTIONS.index(last[-1]) + 1) % len(R.DIRECTIONS)])
    return Move(direction=R.DIRECTIONS[0])


def _selling(obs: VillageObs, item: str | None = None) -> int:
    """How much of ``item`` (any, when None) the ``spare`` line offers for sale (0 away from the market)."""
    if obs.spare is None or (item is not None and obs.spare[0] != item):
        return 0
    return obs.spare[1]


def _sell_spare(obs: VillageObs) -> Sell:
    assert obs.spare is not None
    return Sell(item=obs.spare[0], qty=min(R.MAX_QTY, obs.spare[1]))


def _producer(obs: VillageObs, role: str, t: Traits) -> BaseModel:
    item, place = PRODUCE[role]
    surplus = _selling(obs, item)
    if surplus > 0:
        # First offer a merchant a lot at a little over the market's price; if that offer was not
        # taken (or there is less than a lot), sell to the market.
        merchant = next((n for n in obs.near if n.role == "merchant"), None)
        if merchant is not None and surplus >= LOT and not obs.last.startswith("offered"):
            ask = producer_ask(item, t)
            return Trade(to=merchant.name, give=item, give_qty=LOT, get="coins", get_qty=LOT * ask)
        return _sell_spare(obs)
    if obs.feels("laden"):
        return GoTo(place="market")
    if place == "river" and obs.night and shuns_river_at_night(t):
        return Sleep() if obs.area == "homes" else GoTo(place="homes")
    return Gather() if obs.area == place else GoTo(place=place)


def _merchant(obs: VillageObs, role: str, t: Traits) -> BaseModel:
    broke = obs.coins < 6 and not any(obs.has(i) for i in R.ITEMS if i != "meal")
    farming = obs.coins < 20 and obs.last.startswith(("gathered", "go_to fields"))
    if broke or farming:  # no capital: earn some as a farmer (the market pays merchants a bonus)
        return _producer(obs, role, t)
    if obs.area != "market":
        return GoTo(place="market")
    # Offers alternate with selling, so a crowd of producers cannot keep a merchant busy forever:
    # a lot from the first producer nearby whose lot the merchant can pay for.
    if not obs.last.startswith("offered"):
        for n in obs.near:
            item = R.SPECIALIST.get(n.role)
            if item is not None and obs.coins >= MERCHANT_LOT * merchant_pays(item, t):
                price = MERCHANT_LOT * merchant_pays(item, t)
                return Trade(to=n.name, give="coins", give_qty=price, get=item, get_qty=MERCHANT_LOT)
    if _selling(obs):
        return _sell_spare(obs)
    return _wander(obs, role, t)


def _innkeeper(obs: VillageObs, role: str, t: Traits) -> BaseModel:
    lacking = [i for i in ("wheat", "fish", "wood") if not obs.has(i)]
    meals = obs.has("meal")
    if meals and obs.area == "tavern" and not obs.last.startswith("offered"):
        guest = next((n for n in obs.near if n.role != "innkeeper"), None)
        if guest is not None:
            return Trade(to=guest.name, give="meal", give_qty=1, get="coins", get_qty=meal_price(t))
    if _selling(obs, "meal"):  # more than guests will buy (six or more): the market takes the rest
        return _sell_spare(obs)
    if meals >= 6:
        return GoTo(place="market")
    if not lacking:
        return Cook() if obs.area == "tavern" else GoTo(place="tavern")
    if obs.coins >= R.BUY_PRICE[lacking[0]]:
        return Buy(item=lacking[0], qty=1) if obs.area == "market" else GoTo(place="market")
    if obs.area != "tavern":
        return GoTo(place="tavern")
    return _wander(obs, role, t)


ROLE_POLICY: dict[str, Callable[[VillageObs, str, Traits], BaseModel]] = {
    "farmer": _producer,
    "fisher": _producer,
    "woodcutter": _producer,
    "merchant": _merchant,
    "innkeeper": _innkeeper,
}
