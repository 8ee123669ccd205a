"""The village world: needs, goods, a market, trades that both sides accept, talk, day and night."""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

import gymnasium
import numpy as np
from pydantic import BaseModel

from agents.persona import Persona
from worlds.base import World
from worlds.view import AgentView, WorldView
from worlds.village import rules as R
from worlds.village.actions import ACTION_TYPES, Talk, VillageAction, decode_action, make_action_space
from worlds.village.actions import Idle as IdleAction
from worlds.village.map import (
    PASSABLE,
    SIZE,
    STEPS,
    TILE_KINDS,
    TILES,
    SpatialGrid,
    area_at,
    chebyshev,
    path_step,
)
from worlds.village.observation import Offer, VillageObs, appraise, feelings, for_sale, neighbor, ways

START_BOX = (6, 8, 27, 15)
"""x0, y0, x1, y1 (inclusive) of the area agents wake up in on reset."""
START_COINS = {"merchant": 30, "innkeeper": 20}
START_ITEMS = {"farmer": "wheat", "fisher": "fish", "woodcutter": "wood", "innkeeper": "meal"}
MAX_OFFERS = 3
OBS_MAX_CHARS = 2048


class _Refusal(Exception):
    """An action the rules do not allow; the message is the reason the agent sees."""


@dataclass
class Villager:
    """One agent's mutable state (all of it is saved and hashed)."""

    x: int
    y: int
    hunger: float
    energy: float
    social: float
    coins: int
    inventory: dict[str, int]
    last: str = "nothing yet"
    said: str | None = None
    heard: list[list[str]] = field(default_factory=list)  # [speaker, text] from the previous tick
    offers: list[list[Any]] = field(default_factory=list)  # [from, give, give_qty, get, get_qty]

    def has(self, good: str) -> int:
        return self.coins if good == "coins" else self.inventory[good]

    def add(self, good: str, qty: int) -> None:
        if good == "coins":
            self.coins += qty
        else:
            self.inventory[good] += qty


def _clamp(v: float) -> float:
    return round(min(1.0, max(0.0, v)), 4)


class Village(World):
    """The village (see the ``worlds.village`` package docstring for the rules).

    Args:
        personas: the cast (default: :func:`worlds.village.cast.default_cast`).
        max_ticks: truncate at this tick (``None``: no limit).
        render_mode: ``None`` or ``"ansi"``.
        memory_capacity: events each agent remembers.
    """

    metadata: ClassVar[dict[str, Any]] = {"name": "village", "render_modes": ["ansi"]}
    roles = frozenset(R.ROLES)
    action_type = VillageAction

    def __init__(
        self,
        personas: Sequence[Persona] | None = None,
        *,
        max_ticks: int | None = None,
        render_mode: str | None = None,
        memory_capacity: int = 32,
    ) -> None:
        if personas is None:
            personas = self.default_cast()
        super().__init__(
            personas, max_ticks=max_ticks, render_mode=render_mode, memory_capacity=memory_capacity
        )
        self._v: dict[str, Villager] = {}
        self._near: dict[str, list[str]] = {}
        self._neighbors: dict[str, tuple] = {}  # agent -> its Neighbors within reach, nearest first
        self._obs: dict[str, VillageObs] = {}  # this tick's observations, by agent
        self._persona_texts: dict[str, tuple[Persona, str]] = {}  # agent -> (persona, its text)
        self._handlers = {
            "move": self._move,
            "go_to": self._go_to,
            "gather": self._gather,
            "eat": self._eat,
            "sleep": self._sleep,
            "cook": self._cook,
            "sell": self._sell,
            "buy": self._buy,
            "trade": self._trade,
            "accept": self._accept,
            "talk": self._talk,
            "idle": lambda agent, v, act: "idled",
        }

    @classmethod
    def default_cast(cls, n: int | None = None, seed: int = 0) -> list[Persona]:
        """The 12 default villagers, cut to or topped up (seeded) to ``n``."""
        from worlds.village.cast import village_cast

        return list(village_cast(n, seed))

    # ----------------------------------------------------------------- setup and spaces

    def _setup(self, rng: np.random.Generator, options: Mapping[str, Any]) -> None:
        x0, y0, x1, y1 = START_BOX
        self._v = {}
        for agent in self.possible_agents:
            role = self.persona(agent).role
            while True:
                x, y = (int(v) for v in rng.integers((x0, y0), (x1 + 1, y1 + 1)))
                if PASSABLE[y, x]:
                    break
            inventory = dict.fromkeys(R.ITEMS, 0)
            if role in START_ITEMS:
                inventory[START_ITEMS[role]] = 2
            self._v[agent] = Villager(
                x=x,
                y=y,
                hunger=round(float(rng.uniform(0.1, 0.4)), 2),
                energy=round(float(rng.uniform(0.6, 0.9)), 2),
                social=round(float(rng.uniform(0.2, 0.5)), 2),
                coins=START_COINS.get(role, 10),
                inventory=inventory,
            )
        self._refresh_near()

    def _make_observation_space(self) -> gymnasium.Space:
        return gymnasium.spaces.Text(max_length=OBS_MAX_CHARS, charset=string.printable)

    def _make_action_space(self) -> gymnasium.Space:
        return make_action_space()

    def _coerce_action(self, agent: str, raw: Any) -> BaseModel:
        if isinstance(raw, BaseModel):
            if not isinstance(raw, ACTION_TYPES):
                raise TypeError(f"{type(raw).__name__} is not a village action")
            return raw
        if isinstance(raw, Mapping) and not isinstance(raw.get("action"), str):
            return decode_action(raw, self._near.get(agent, []))  # an action_space sample
        return super()._coerce_action(agent, raw)

    def fallback_action(self) -> BaseModel:
        return IdleAction()

    def speech_target(self, agent: str, action: BaseModel) -> tuple[str, str | None] | None:
        if not isinstance(action, Talk):
            return None
        said = [text for who, text in self._v[agent].heard if who == action.to]
        return action.to, (said[-1] if said else None)

    def with_utterance(self, action: BaseModel, text: str) -> BaseModel:
        # a line is printable ASCII of at most MAX_UTTERANCE characters: keep what fits, cut at a word
        words = ("".join(c for c in word if " " < c <= "~") for word in text.split())
        line = " ".join(w for w in words if w).strip("\"' ")
        if len(line) > R.MAX_UTTERANCE:
            line = line[: R.MAX_UTTERANCE].rsplit(" ", 1)[0] or line[: R.MAX_UTTERANCE]
        if not line:
            raise ValueError(f"no printable words in {text!r}")
        return Talk(to=action.to, text=line)

    def rules_text(self) -> str:
        return R.RULES_TEXT

    def role_text(self, role: str) -> str:
        return R.ROLE_TEXT[role]

    def persona_text(self, agent: str) -> str:
        """The persona, then its ways in this village (:func:`observation.ways`: its trade terms
        and habits, the numbers its traits give them). Personas are frozen, so the text is made
        once per persona object (every agent's prompt asks for it every tick)."""
        persona = self.persona(agent)
        hit = self._persona_texts.get(agent)
        if hit is None or hit[0] is not persona:
            hit = self._persona_texts[agent] = (
                persona,
                persona.describe() + "\n" + ways(persona.role, persona.traits),
            )
        return hit[1]

    def expert(self, persona: Persona, observation: Any) -> BaseModel:
        from worlds.village.expert import expert_action

        return expert_action(persona, observation)

    # ----------------------------------------------------------------- the rules

    def _apply(self, actions: dict[str, BaseModel]) -> None:
        self._new_heard: dict[str, list[list[str]]] = {a: [] for a in self.agents}
        self._new_offers: dict[str, list[list[Any]]] = {a: [] for a in self.agents}
        for agent in self.agents:
            self._v[agent].said = None
        for agent in self.agents:  # a fixed order keeps runs reproducible
            v, act = self._v[agent], actions[agent]
            try:
                v.last = self._handlers[act.action](agent, v, act)
            except _Refusal as refusal:
                v.last = f"{act.action} refused"
                self.refuse(agent, f"{act.action}: {refusal}")
        for agent in self.agents:
            v = self._v[agent]
            starving = 0.01 if v.hunger >= 1.0 else 0.0
            v.hunger = _clamp(v.hunger + R.HUNGER_RATE)
            v.energy = _clamp(v.energy - R.ENERGY_RATE - starving)
            v.social = _clamp(v.social + R.SOCIAL_RATE)
            v.heard = self._new_heard[agent]
            v.offers = self._new_offers[agent]

    def _move(self, agent: str, v: Villager, act: Any) -> str:
        dx, dy = STEPS[act.direction]
        x, y = v.x + dx, v.y + dy
        if not (0 <= x < SIZE and 0 <= y < SIZE):
            raise _Refusal(f"the map ends to the {act.direction}")
        if not PASSABLE[y, x]:
            raise _Refusal(f"water to the {act.direction}; cross at the bridge")
        v.x, v.y = x, y
        return f"moved {act.direction}"

    def _go_to(self, agent: str, v: Villager, act: Any) -> str:
        if area_at(v.x, v.y) == act.place:
            raise _Refusal(f"already at the {act.place}")
        for _ in range(R.GO_TO_SPEED):
            v.x, v.y = path_step(v.x, v.y, act.place)
            if area_at(v.x, v.y) == act.place:
                return f"go_to {act.place}, arrived"
        return f"go_to {act.place}, on the way"

    def _gather(self, agent: str, v: Villager, act: Any) -> str:
        area = area_at(v.x, v.y)
        item = R.GATHER.get(area)
        if item is None:
            raise _Refusal(f"nothing to gather here ({area}); go to the fields, forest or river")
        night = R.is_night(self.tick)
        v.energy = _clamp(v.energy - R.GATHER_ENERGY)
        if night and area == "river" and self.rng.random() < R.NIGHT_SLIP_CHANCE:
            v.energy = _clamp(v.energy - R.NIGHT_SLIP_ENERGY)
            self.remember(agent, "slipped on the riverbank in the dark and got hurt", 0.9)
            return "slipped on the riverbank in the dark, caught nothing"
        qty = 2 if R.SPECIALIST.get(self.persona(agent).role) == item else 1
        if night:
            qty = max(1, qty - 1)
        v.inventory[item] += qty
        return f"gathered {qty} {item}"

    def _eat(self, agent: str, v: Villager, act: Any) -> str:
        if act.item not in R.FOOD:
            raise _Refusal(f"{act.item} is not food")
        if v.inventory[act.item] < 1:
            raise _Refusal(f"you have no {act.item}")
        v.inventory[act.item] -= 1
        v.hunger = _clamp(v.hunger - R.FOOD[act.item])
        return f"ate {act.item}"

    def _sleep(self, agent: str, v: Villager, act: Any) -> str:
        gain = R.SLEEP_GAIN.get(area_at(v.x, v.y), R.SLEEP_GAIN_ELSEWHERE)
        v.energy = _clamp(v.energy + gain)
        return "slept"

    def _cook(self, agent: str, v: Villager, act: Any) -> str:
        if area_at(v.x, v.y) not in R.COOK_SITES:
            raise _Refusal("cook at the tavern or homes")
        lacking = [i for i in ("wheat", "fish", "wood") if v.inventory[i] < 1]
        if lacking:
            raise _Refusal(f"cooking needs 1 wheat, 1 fish and 1 wood; you lack {', '.join(lacking)}")
        for item in ("wheat", "fish", "wood"):
            v.inventory[item] -= 1
        meals = R.INNKEEPER_MEALS if self.persona(agent).role == "innkeeper" else R.MEALS_PER_COOK
        v.inventory["meal"] += meals
        return f"cooked {meals} meals"

    def _sell(self, agent: str, v: Villager, act: Any) -> str:
        if area_at(v.x, v.y) != "market":
            raise _Refusal("sell at the market")
        if v.inventory[act.item] < act.qty:
            raise _Refusal(f"you have only {v.inventory[act.item]} {act.item}")
        bonus = R.MERCHANT_BONUS if self.persona(agent).role == "merchant" else 0
        earned = act.qty * (R.SELL_PRICE[act.item] + bonus)
        v.inventory[act.item] -= act.qty
        v.coins += earned
        return f"sold {act.qty} {act.item} for {earned} coins"

    def _buy(self, agent: str, v: Villager, act: Any) -> str:
        if area_at(v.x, v.y) != "market":
            raise _Refusal("buy at the market")
        cost = act.qty * R.BUY_PRICE[act.item]
        if v.coins < cost:
            raise _Refusal(f"{act.qty} {act.item} cost {cost} coins; you have {v.coins}")
        v.coins -= cost
        v.inventory[act.item] += act.qty
        return f"bought {act.qty} {act.item} for {cost} coins"

    def _partner(self, agent: str, v: Villager, name: str) -> Villager:
        if name == agent:
            raise _Refusal("that is you")
        other = self._v.get(name)
        if other is None:
            raise _Refusal(f"nobody here is called {name}")
        if chebyshev((v.x, v.y), (other.x, other.y)) > R.REACH:
            raise _Refusal(f"{name} is not within {R.REACH} tiles")
        return other

    def _trade(self, agent: str, v: Villager, act: Any) -> str:
        self._partner(agent, v, act.to)
        if act.give == act.get:
            raise _Refusal("give and get must differ")
        if v.has(act.give) < act.give_qty:
            raise _Refusal(f"you have only {v.has(act.give)} {act.give}")
        inbox = self._new_offers[act.to]
        if len(inbox) >= MAX_OFFERS:
            raise _Refusal(f"{act.to} already has {MAX_OFFERS} offers this tick")
        inbox.append([agent, act.give, act.give_qty, act.get, act.get_qty])
        terms = f"{act.give_qty} {act.give} for {act.get_qty} {act.get}"
        self.remember(act.to, f"{agent} offered me {terms}", 0.6)
        return f"offered {act.to} {terms}"

    def _accept(self, agent: str, v: Villager, act: Any) -> str:
        offer = next((o for o in v.offers if o[0] == act.offer_from), None)
        if offer is None:
            raise _Refusal(f"no offer from {act.offer_from} (offers last one tick)")
        other = self._partner(agent, v, act.offer_from)
        _, give, give_qty, get, get_qty = offer  # the offerer gives `give` and gets `get`
        if other.has(give) < give_qty:
            raise _Refusal(f"{act.offer_from} no longer has {give_qty} {give}")
        if v.has(get) < get_qty:
            raise _Refusal(f"you have only {v.has(get)} {get}")
        other.add(give, -give_qty)
        v.add(give, give_qty)
        v.add(get, -get_qty)
        other.add(get, get_qty)
        v.offers.remove(offer)  # an offer is accepted once
        v.social = _clamp(v.social - R.TRADE_SOCIAL)
        other.social = _clamp(other.social - R.TRADE_SOCIAL)
        self.remember(agent, f"traded with {act.offer_from}: got {give_qty} {give} for {get_qty} {get}", 0.8)
        self.remember(act.offer_from, f"{agent} accepted: I got {get_qty} {get} for {give_qty} {give}", 0.8)
        return f"accepted: got {give_qty} {give} for {get_qty} {get} from {act.offer_from}"

    def _talk(self, agent: str, v: Villager, act: Any) -> str:
        other = self._partner(agent, v, act.to)
        text = act.text
        heard = self._new_heard[act.to]
        if len(heard) < R.MAX_HEARD:  # a crowd drowns out the rest
            heard.append([agent, text])
            other.social = _clamp(other.social - R.TALK_SOCIAL["listener"])
            self.remember(act.to, f'{agent} said: "{text}"', 0.5)
        v.social = _clamp(v.social - R.TALK_SOCIAL["speaker"])
        v.said = text
        return f"talked to {act.to}"

    # ----------------------------------------------------------------- observing and scoring

    def _refresh_near(self) -> None:
        names = self.agents or self.possible_agents
        grid = SpatialGrid([(self._v[a].x, self._v[a].y) for a in names])
        self._near_dist = {}
        self._neighbors = {}
        roles = [self._personas[a].role for a in names]
        for i, agent in enumerate(names):
            near = grid.nearby(i, R.REACH, R.MAX_NEARBY)
            self._near[agent] = [names[j] for j, _ in near]
            self._near_dist[agent] = [d for _, d in near]
            self._neighbors[agent] = tuple(neighbor(names[j], roles[j], d) for j, d in near)

    def observe(self, agent: str) -> VillageObs:
        """The structured observation of ``agent`` (its ``to_text()`` is what ``step`` returns)."""
        v = self._v[agent]
        persona = self.persona(agent)
        night = R.is_night(self.tick)
        hunger, energy, social = round(v.hunger, 2), round(v.energy, 2), round(v.social, 2)
        holdings = {k: n for k, n in v.inventory.items() if n > 0}
        feel = feelings(hunger, energy, social, night, persona.traits, role=persona.role, holdings=holdings)
        hungry = "hungry" in feel or "starving" in feel
        wallet = {**holdings, "coins": v.coins}
        area = area_at(v.x, v.y)
        return VillageObs(
            night=night,
            area=area,
            coins=v.coins,
            feel=feel,
            inventory=tuple(holdings.items()),
            last=v.last,
            spare=for_sale(persona.role, holdings) if area == "market" else None,
            refused=self.refusal(agent),
            near=self._neighbors[agent],
            heard=tuple((who, text) for who, text in v.heard),
            offers=tuple(
                replace(o, good=appraise(o, wallet, persona.role, persona.traits, hungry))
                for o in (Offer(*raw) for raw in v.offers)
            ),
            tick=self.tick,
            x=v.x,
            y=v.y,
            hunger=hunger,
            energy=energy,
            social=social,
        )

    def _observe_all(self) -> dict[str, str]:
        self._refresh_near()
        self._obs = {a: self.observe(a) for a in self.agents}
        return {a: obs.to_text()[:OBS_MAX_CHARS] for a, obs in self._obs.items()}

    def argument_choices(self, agent: str) -> dict[str, list[str]]:
        """Action kinds, places, partners and offers that would not be refused (from the agent's
        observation of this tick; see :meth:`VillageObs.argument_choices`)."""
        obs = self._obs.get(agent)
        if obs is None or obs.tick != self.tick:
            obs = self.observe(agent)
        return obs.argument_choices()

    @classmethod
    def observation_choices(cls, observation: str) -> dict[str, list[str]]:
        """:meth:`argument_choices` read back from an observation text."""
        return VillageObs.from_text(observation).argument_choices()

    def score(self, agent: str) -> float:
        """Well-being: weighted fed, rested, wealth (coins + goods at sell prices) and social."""
        v = self._v[agent]
        worth = v.coins + sum(n * R.SELL_PRICE[k] for k, n in v.inventory.items())
        parts = {
            "fed": 1.0 - v.hunger,
            "rested": v.energy,
            "wealth": min(1.0, worth / R.WEALTH_SCALE),
            "social": 1.0 - v.social,
        }
        return sum(R.SCORE_WEIGHTS[k] * parts[k] for k in parts)

    def _info(self, agent: str) -> dict[str, Any]:
        v = self._v[agent]
        return {"is_night": R.is_night(self.tick), "coins": v.coins, "last": v.last}

    # ----------------------------------------------------------------- state and views

    def _get_state(self) -> dict[str, Any]:
        return {"villagers": {a: asdict(v) for a, v in self._v.items()}}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._v = {}
        for agent in self.possible_agents:
            data = state["villagers"][agent]
            # JSON sorted the keys; observations list items in ITEMS order
            inventory = {item: int(data["inventory"][item]) for item in R.ITEMS}
            self._v[agent] = Villager(**{**data, "inventory": inventory})
        self._refresh_near()

    def view(self) -> WorldView:
        """A snapshot for the renderer."""
        agents = tuple(
            AgentView(
                name=a,
                role=self.persona(a).role,
                x=v.x,
                y=v.y,
                utterance=v.said,
                needs={"hunger": v.hunger, "energy": v.energy, "social": v.social},
                inventory={k: n for k, n in v.inventory.items() if n > 0},
                coins=v.coins,
                last_action=v.last,
                refused=self.refusal(a),
            )
            for a, v in self._v.items()
            if a in self.agents
        )
        score = self.world_score() if self.agents else None
        return WorldView(self.tick, TILES, dict(TILE_KINDS), agents, R.is_night(self.tick), score)

    def _render_text(self) -> str:
        chars = {0: ".", 1: "=", 2: '"', 3: "T", 4: "~", 5: "#", 6: "M", 7: "H", 8: "I"}
        rows = [[chars[int(c)] for c in row] for row in TILES]
        for a in self.agents:
            v = self._v[a]
            rows[v.y][v.x] = self.persona(a).role[0].upper()
        phase = "night" if R.is_night(self.tick) else "day"
        return f"tick {self.tick} ({phase})\n" + "\n".join("".join(r) for r in rows)
