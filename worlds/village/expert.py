"""The scripted expert: a rule policy per role, shaped by the persona's traits.

It is the yardstick for models and the source of their training data, so it must be learnable:
it decides only from what the agent's prompt contains (the persona's role and two-decimal traits,
and the observation text, which it parses back), deterministically. It never reads world state.
Its need thresholds are the ones the observation's ``feel`` line names (``observation.feelings``).

Priorities, first match wins: sleep if exhausted; eat when hungry and holding food; answer a
good offer; buy or fetch food when hungry; keep
sleeping until rested, or go home when tired or (unless diligent) at night; leave the riverbank
at night if cautious; talk when lonely; otherwise do the role's work.
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
from worlds.village.observation import Offer, VillageObs, bedtime, hungry_at, lonely_at, tired_below

Traits = dict[str, float]
FOOD_PREFERENCE = ("meal", "fish", "wheat")
PRODUCE = {"farmer": ("wheat", "fields"), "fisher": ("fish", "river"), "woodcutter": ("wood", "forest")}
ROLE_PHRASE = {
    "farmer": "good harvest today",
    "fisher": "fresh fish here",
    "woodcutter": "wood for sale",
    "merchant": "want to trade?",
    "innkeeper": "meals at the tavern",
}


def expert_action(persona: Persona, observation: str | VillageObs) -> BaseModel:
    """The expert's action for ``persona`` given its observation (text or parsed)."""
    obs = observation if isinstance(observation, VillageObs) else VillageObs.from_text(observation)
    t = persona.traits
    role = persona.role
    if obs.energy < 0.15:
        return Sleep()
    hungry = obs.hunger >= hungry_at(t)
    food = next((f for f in FOOD_PREFERENCE if obs.has(f)), None)
    if hungry and food is not None:
        return Eat(item=food)
    for offer in obs.offers:
        if worth_accepting(offer, obs, persona):
            return Accept(offer_from=offer.offer_from)
    if hungry:
        meal = _feed(obs)
        if meal is not None:
            return meal
    home = "tavern" if role == "innkeeper" else "homes"
    tired = obs.energy < tired_below(t)
    if obs.last == "slept" and obs.energy < 0.9 or tired or bedtime(obs.night, obs.energy, t):
        return Sleep() if obs.area in (home, "homes") or obs.energy < 0.2 else GoTo(place=home)
    if obs.night and t["caution"] >= 0.5 and obs.area == "river":
        return GoTo(place=home)
    if obs.near and obs.social >= lonely_at(t):
        return Talk(to=obs.near[0].name, text=_phrase(role, obs, t))
    return ROLE_POLICY[role](obs, t)


def value(good: str, qty: int, obs: VillageObs, role: str) -> float:
    """What ``qty`` of ``good`` is worth to this agent: coins at face value, goods at market sell
    price (plus the resale bonus for merchants), food double when hungry."""
    if good == "coins":
        return float(qty)
    unit = R.SELL_PRICE[good] + (R.MERCHANT_BONUS if role == "merchant" else 0)
    worth = float(unit * qty)
    return worth * 2 if good in R.FOOD and obs.hunger >= 0.5 else worth


def worth_accepting(offer: Offer, obs: VillageObs, persona: Persona) -> bool:
    """Accept when I can pay and what I get beats what I give by a greed-dependent margin
    (the generous settle for less)."""
    if obs.has(offer.get) < offer.get_qty:
        return False
    t = persona.traits
    margin = 0.9 + 0.3 * t["greed"] - 0.2 * t["generosity"]
    gain = value(offer.give, offer.give_qty, obs, persona.role)
    return gain >= value(offer.get, offer.get_qty, obs, persona.role) * margin


def _feed(obs: VillageObs) -> BaseModel | None:
    """Hungry with nothing to eat: buy food, or gather wheat if broke and starving."""
    affordable = [f for f in FOOD_PREFERENCE if R.BUY_PRICE[f] <= obs.coins]
    if affordable:
        return Buy(item=affordable[0], qty=1) if obs.area == "market" else GoTo(place="market")
    if obs.hunger >= 0.8:  # broke and starving: anyone can gather a little wheat
        return Gather() if obs.area == "fields" else GoTo(place="fields")
    return None


def _phrase(role: str, obs: VillageObs, t: Traits) -> str:
    if obs.night and t["caution"] >= 0.5:
        return "stay away from the river at night"
    return ROLE_PHRASE[role] if obs.tick % 2 else "hello"


def _wander(obs: VillageObs, t: Traits) -> BaseModel:
    """Nothing to do: the curious look around, the rest wait."""
    if t["curiosity"] >= 0.6:
        return Move(direction=R.DIRECTIONS[obs.tick % 4])
    return Idle()


def _producer(obs: VillageObs, t: Traits, item: str, place: str) -> BaseModel:
    keep = 2 if item in R.FOOD else 0  # producers keep something to eat
    surplus = obs.has(item) - keep
    cap = 4 + round(6 * t["diligence"])
    if obs.area == "market" and surplus > 0:
        # First ask a merchant for a little more than the market pays (the greedy ask more);
        # if that offer was not taken, sell to the market.
        merchant = next((n for n in obs.near if n.role == "merchant"), None)
        if merchant is not None and not obs.last.startswith("offered"):
            ask = R.SELL_PRICE[item] + (2 if t["greed"] >= 0.7 else 1)
            qty = min(R.MAX_TRADE_QTY // ask, surplus)
            return Trade(to=merchant.name, give=item, give_qty=qty, get="coins", get_qty=qty * ask)
        return Sell(item=item, qty=min(R.MAX_QTY, surplus))
    if surplus >= cap:
        return GoTo(place="market")
    if place == "river" and obs.night and t["caution"] >= 0.5:
        return _rest(obs)
    return Gather() if obs.area == place else GoTo(place=place)


def _rest(obs: VillageObs) -> BaseModel:
    return Sleep() if obs.area == "homes" else GoTo(place="homes")


def _farmer(obs: VillageObs, t: Traits) -> BaseModel:
    return _producer(obs, t, "wheat", "fields")


def _fisher(obs: VillageObs, t: Traits) -> BaseModel:
    return _producer(obs, t, "fish", "river")


def _woodcutter(obs: VillageObs, t: Traits) -> BaseModel:
    return _producer(obs, t, "wood", "forest")


def _merchant(obs: VillageObs, t: Traits) -> BaseModel:
    stock = [(obs.has(i), i) for i in R.ITEMS if i != "meal" and obs.has(i)]
    broke = obs.coins < 6 and not stock
    farming = obs.coins < 20 and obs.last.startswith(("gathered", "go_to fields"))
    if broke or farming:  # no capital: earn some as a farmer (the market pays merchants a bonus)
        return _producer(obs, t, "wheat", "fields")
    if obs.area != "market":
        return GoTo(place="market")
    # Offers alternate with selling, so a crowd of producers cannot keep a merchant busy forever.
    # A greedy merchant offers the plain market price; others share their bonus with the seller.
    if not obs.last.startswith("offered"):
        for n in obs.near:
            if n.role in PRODUCE:
                item = PRODUCE[n.role][0]
                unit = R.SELL_PRICE[item] + (0 if t["greed"] >= 0.6 else R.MERCHANT_BONUS // 2)
                qty = min(3, obs.coins // unit)
                if qty:
                    return Trade(to=n.name, give="coins", give_qty=qty * unit, get=item, get_qty=qty)
    if stock:
        qty, item = max(stock)
        return Sell(item=item, qty=min(R.MAX_QTY, qty))
    return _wander(obs, t)


def _innkeeper(obs: VillageObs, t: Traits) -> BaseModel:
    lacking = [i for i in ("wheat", "fish", "wood") if not obs.has(i)]
    meals = obs.has("meal")
    if meals and obs.area == "tavern" and not obs.last.startswith("offered"):
        guest = next((n for n in obs.near if n.role != "innkeeper"), None)
        if guest is not None:
            price = 4 + round(2 * t["greed"])
            return Trade(to=guest.name, give="meal", give_qty=1, get="coins", get_qty=price)
    if meals >= 6:  # more than guests will buy: the market takes the rest
        return Sell(item="meal", qty=min(R.MAX_QTY, meals - 2)) if obs.area == "market" else GoTo(place="market")
    if not lacking:
        return Cook() if obs.area == "tavern" else GoTo(place="tavern")
    if obs.coins >= R.BUY_PRICE[lacking[0]]:
        return Buy(item=lacking[0], qty=1) if obs.area == "market" else GoTo(place="market")
    if obs.area != "tavern":
        return GoTo(place="tavern")
    return _wander(obs, t) if t["curiosity"] >= 0.8 else Idle()


ROLE_POLICY: dict[str, Callable[[VillageObs, Traits], BaseModel]] = {
    "farmer": _farmer,
    "fisher": _fisher,
    "woodcutter": _woodcutter,
    "merchant": _merchant,
    "innkeeper": _innkeeper,
}
