"""Village actions: pydantic models in one discriminated union, and their gym encoding.

Models emit the JSON form (``{"action": "eat", "item": "fish"}``), constrained by
``action_schema(VillageAction)``. Reinforcement-learning code and ``parallel_api_test`` use the
encoded form, a sample of :func:`make_action_space` (a ``gymnasium.spaces.Dict`` of ``Discrete``
fields), in which trade and talk partners are slots of the agent's ``near`` list and utterances
are canned :data:`~worlds.village.rules.PHRASES`. :func:`decode_action` and :func:`encode_action`
convert between the two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from gymnasium import spaces
from pydantic import BaseModel, ConfigDict, Field

from agents.actions import action_union
from agents.persona import NAME_PATTERN
from worlds.village.rules import (
    DIRECTIONS,
    GOODS,
    ITEMS,
    MAX_NEARBY,
    MAX_QTY,
    MAX_TRADE_QTY,
    MAX_UTTERANCE,
    PHRASES,
    PLACES,
)

Item = Literal[ITEMS]  # type: ignore[valid-type]
Good = Literal[GOODS]  # type: ignore[valid-type]
Place = Literal[PLACES]  # type: ignore[valid-type]
Direction = Literal[DIRECTIONS]  # type: ignore[valid-type]
AgentName = Annotated[str, Field(pattern=NAME_PATTERN)]


class _Action(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Move(_Action):
    """Step one tile north, east, south or west."""

    action: Literal["move"] = "move"
    direction: Direction


class GoTo(_Action):
    """Walk up to GO_TO_SPEED tiles along the shortest path to a named place."""

    action: Literal["go_to"] = "go_to"
    place: Place


class Gather(_Action):
    """Gather what the current place yields (fields: wheat, forest: wood, river: fish)."""

    action: Literal["gather"] = "gather"


class Eat(_Action):
    """Eat one unit of an item from the inventory."""

    action: Literal["eat"] = "eat"
    item: Item


class Sleep(_Action):
    """Restore energy (most at homes)."""

    action: Literal["sleep"] = "sleep"


class Cook(_Action):
    """At the tavern or homes: 1 wheat + 1 fish + 1 wood -> meals."""

    action: Literal["cook"] = "cook"


class Sell(_Action):
    """Sell items to the market for coins."""

    action: Literal["sell"] = "sell"
    item: Item
    qty: int = Field(1, ge=1, le=MAX_QTY)


class Buy(_Action):
    """Buy items from the market."""

    action: Literal["buy"] = "buy"
    item: Item
    qty: int = Field(1, ge=1, le=MAX_QTY)


class Trade(_Action):
    """Offer ``to`` a swap: I give ``give_qty`` ``give`` for ``get_qty`` ``get``.

    Nothing moves until ``to`` answers with :class:`Accept` on the next tick.
    """

    action: Literal["trade"] = "trade"
    to: AgentName
    give: Good
    give_qty: int = Field(ge=1, le=MAX_TRADE_QTY)
    get: Good
    get_qty: int = Field(ge=1, le=MAX_TRADE_QTY)


class Accept(_Action):
    """Accept the offer ``offer_from`` made to me on the previous tick."""

    action: Literal["accept"] = "accept"
    offer_from: AgentName


class Talk(_Action):
    """Say a short line (printable ASCII) to an agent within reach."""

    action: Literal["talk"] = "talk"
    to: AgentName
    text: str = Field(min_length=1, max_length=MAX_UTTERANCE, pattern=r"^[ -~]+$")


class Idle(_Action):
    """Do nothing."""

    action: Literal["idle"] = "idle"


ACTION_TYPES: tuple[type[BaseModel], ...] = (
    Move,
    GoTo,
    Gather,
    Eat,
    Sleep,
    Cook,
    Sell,
    Buy,
    Trade,
    Accept,
    Talk,
    Idle,
)
ACTION_NAMES: tuple[str, ...] = tuple(t.model_fields["action"].default for t in ACTION_TYPES)
VillageAction = action_union(*ACTION_TYPES)
"""The union every village decision parses into."""


def make_action_space() -> spaces.Dict:
    """The encoded action space: ``action`` picks the kind, the other fields its arguments.

    ``qty``/``get_qty`` encode 1..MAX_QTY as 0..MAX_QTY-1; ``target`` is a slot of the agent's
    ``near`` list; ``phrase`` indexes PHRASES. Fields a kind does not use are ignored.
    """
    return spaces.Dict(
        {
            "action": spaces.Discrete(len(ACTION_NAMES)),
            "direction": spaces.Discrete(len(DIRECTIONS)),
            "place": spaces.Discrete(len(PLACES)),
            "item": spaces.Discrete(len(ITEMS)),
            "qty": spaces.Discrete(MAX_QTY),
            "target": spaces.Discrete(MAX_NEARBY),
            "give": spaces.Discrete(len(GOODS)),
            "get": spaces.Discrete(len(GOODS)),
            "get_qty": spaces.Discrete(MAX_QTY),
            "phrase": spaces.Discrete(len(PHRASES)),
        }
    )


def decode_action(encoded: Mapping[str, Any], near: Sequence[str]) -> BaseModel:
    """Turn an encoded action into a village action.

    Args:
        encoded: a sample of :func:`make_action_space`.
        near: the names in the agent's latest ``near`` list, nearest first.

    Raises:
        ValueError: ``target`` points at an empty slot (the world refuses such an action).
    """

    def field(name: str, table: Sequence[str]) -> str:
        return table[int(encoded[name])]

    def target() -> str:
        slot = int(encoded["target"])
        if slot >= len(near):
            raise ValueError(f"nobody is in near slot {slot} (you see {len(near)} agents)")
        return near[slot]

    kind = ACTION_NAMES[int(encoded["action"])]
    qty = int(encoded["qty"]) + 1
    if kind == "move":
        return Move(direction=field("direction", DIRECTIONS))
    if kind == "go_to":
        return GoTo(place=field("place", PLACES))
    if kind == "eat":
        return Eat(item=field("item", ITEMS))
    if kind in ("sell", "buy"):
        model = Sell if kind == "sell" else Buy
        return model(item=field("item", ITEMS), qty=qty)
    if kind == "trade":
        return Trade(
            to=target(),
            give=field("give", GOODS),
            give_qty=qty,
            get=field("get", GOODS),
            get_qty=int(encoded["get_qty"]) + 1,
        )
    if kind == "accept":
        return Accept(offer_from=target())
    if kind == "talk":
        return Talk(to=target(), text=field("phrase", PHRASES))
    return {"gather": Gather, "sleep": Sleep, "cook": Cook, "idle": Idle}[kind]()


def encode_action(action: BaseModel, near: Sequence[str]) -> dict[str, int]:
    """The encoded form of ``action`` (inverse of :func:`decode_action`).

    Raises:
        ValueError: the action cannot be encoded (a partner not in ``near``, free-form talk
            text, or a quantity above MAX_QTY).
    """
    out = dict.fromkeys(make_action_space().spaces, 0)
    data = action.model_dump()
    out["action"] = ACTION_NAMES.index(data["action"])

    def index(table: Sequence[str], value: str, what: str) -> int:
        if value not in table:
            raise ValueError(f"{what} {value!r} cannot be encoded; encodable: {list(table)}")
        return table.index(value)

    def qty(value: int) -> int:
        if not 1 <= value <= MAX_QTY:
            raise ValueError(f"quantity {value} cannot be encoded (1..{MAX_QTY})")
        return value - 1

    if "direction" in data:
        out["direction"] = DIRECTIONS.index(data["direction"])
    if "place" in data:
        out["place"] = PLACES.index(data["place"])
    if "item" in data:
        out["item"] = ITEMS.index(data["item"])
    if "qty" in data:
        out["qty"] = qty(data["qty"])
    if "to" in data or "offer_from" in data:
        out["target"] = index(near, data.get("to") or data["offer_from"], "partner")
    if data["action"] == "trade":
        out.update(
            give=GOODS.index(data["give"]),
            get=GOODS.index(data["get"]),
            qty=qty(data["give_qty"]),
            get_qty=qty(data["get_qty"]),
        )
    if "text" in data:
        out["phrase"] = index(PHRASES, data["text"], "utterance")
    return out
