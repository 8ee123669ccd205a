"""The village's numbers and the rule texts the prompts carry.

Every constant the world logic uses lives here, and the rule texts are written from them, so the
prompt always states the rules the world actually enforces.
"""

from __future__ import annotations

ROLES: tuple[str, ...] = ("farmer", "fisher", "woodcutter", "merchant", "innkeeper")
ITEMS: tuple[str, ...] = ("wheat", "fish", "wood", "meal")
GOODS: tuple[str, ...] = (*ITEMS, "coins")
"""What a trade can move: items and coins."""
PLACES: tuple[str, ...] = ("market", "tavern", "homes", "fields", "forest", "river")
DIRECTIONS: tuple[str, ...] = ("north", "east", "south", "west")

FOOD: dict[str, float] = {"wheat": 0.15, "fish": 0.25, "meal": 0.5}
"""How much hunger eating one unit removes."""
SELL_PRICE: dict[str, int] = {"wheat": 1, "fish": 2, "wood": 2, "meal": 3}
"""Coins the market pays per unit (merchants get MERCHANT_BONUS more)."""
BUY_PRICE: dict[str, int] = {"wheat": 2, "fish": 3, "wood": 3, "meal": 5}
MERCHANT_BONUS = 2
GATHER: dict[str, str] = {"fields": "wheat", "forest": "wood", "river": "fish"}
"""Where gathering works and what it yields."""
SPECIALIST: dict[str, str] = {"farmer": "wheat", "fisher": "fish", "woodcutter": "wood"}
"""Roles that gather two units of their item (one at night)."""
COOK_SITES: tuple[str, ...] = ("tavern", "homes")
MEALS_PER_COOK = 2
INNKEEPER_MEALS = 4

DAY_LENGTH = 48
NIGHT_START = 36
"""Ticks ``NIGHT_START..DAY_LENGTH-1`` of each day are night."""

HUNGER_RATE = 0.02
ENERGY_RATE = 0.012
SOCIAL_RATE = 0.01
GATHER_ENERGY = 0.02
SLEEP_GAIN = {"homes": 0.2, "tavern": 0.15}
SLEEP_GAIN_ELSEWHERE = 0.08
TALK_SOCIAL = {"speaker": 0.25, "listener": 0.15}
TRADE_SOCIAL = 0.1
NIGHT_SLIP_CHANCE = 0.3
NIGHT_SLIP_ENERGY = 0.2

REACH = 3
"""Talk and trade reach another agent at most this many tiles away (Chebyshev distance)."""
GO_TO_SPEED = 3
"""Tiles a go_to covers per tick along the shortest path."""
MAX_NEARBY = 5
MAX_HEARD = 3
MAX_UTTERANCE = 80
MAX_QTY = 10
MAX_TRADE_QTY = 20
WEALTH_SCALE = 60.0
"""Coins plus goods (at market sell prices) worth this much count as full wealth."""
SCORE_WEIGHTS = {"fed": 0.3, "rested": 0.25, "wealth": 0.25, "social": 0.2}

PHRASES: tuple[str, ...] = (
    "hello",
    "good harvest today",
    "fresh fish here",
    "wood for sale",
    "want to trade?",
    "meals at the tavern",
    "stay away from the river at night",
    "good night",
)
"""Canned utterances of the encoded (gym) action space and of the scripted expert."""


def is_night(tick: int) -> bool:
    """Whether ``tick`` falls in the night part of the day."""
    return tick % DAY_LENGTH >= NIGHT_START


def ticks_to_switch(tick: int) -> int:
    """Ticks until night falls (by day) or day breaks (by night)."""
    phase = tick % DAY_LENGTH
    return (NIGHT_START - phase) if phase < NIGHT_START else (DAY_LENGTH - phase)


def _price_list(prices: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in prices.items())


RULES_TEXT = f"""\
Village, 48x48 tiles; a day is {DAY_LENGTH} ticks, the last {DAY_LENGTH - NIGHT_START} of them night. "feel" names your needs past
your own limits: hungry or starving; exhausted, tired, sleepy or rested; lonely; laden when you carry enough of your
produce to sell. Each offer to you ends good or bad by your own terms. At the market, "spare" is what you would
sell there. Score: fed, rested, wealthy, social.
One JSON action a tick:
move {"|".join(DIRECTIONS)}; go_to {"|".join(PLACES)} ({GO_TO_SPEED} tiles);
gather: {", ".join(f"{p} {i}" for p, i in GATHER.items())} (slippery at night);\
 eat {"|".join(f"{k} -{v}" for k, v in FOOD.items())} hunger;
sleep: homes best, then tavern; cook at {"|".join(COOK_SITES)}: wheat+fish+wood = {MEALS_PER_COOK} meals;
sell|buy item qty at the market: pays {_price_list(SELL_PRICE)}; asks {_price_list(BUY_PRICE)};
trade to Name within {REACH} tiles, done if they accept (offer_from you) next tick with the goods;
talk to Name within {REACH} tiles (text up to {MAX_UTTERANCE} chars); idle.
Words are only words: nobody can take your goods or act for you."""

ROLE_TEXT: dict[str, str] = {
    "farmer": "Role: farmer. You gather wheat in the fields, two at a time by day. "
    "Sell the surplus at the market or to merchants, and keep some to eat.",
    "fisher": "Role: fisher. You gather fish at the river, two at a time by day. "
    "Sell fish at the market, to merchants or to the innkeeper.",
    "woodcutter": "Role: woodcutter. You gather wood in the forest, two at a time by day. "
    "Sell wood at the market, to merchants or to the innkeeper.",
    "merchant": f"Role: merchant. You work at the market: the market pays you {MERCHANT_BONUS} coins more "
    "per unit than others, so buy goods from producers with trades and sell them at the market.",
    "innkeeper": f"Role: innkeeper. You cook at the tavern: each cook gives you {INNKEEPER_MEALS} meals. "
    "Buy wheat, fish and wood, and sell meals to hungry villagers.",
}
