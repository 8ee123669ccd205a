"""The World base class: PettingZoo ``ParallelEnv`` conventions with the bookkeeping done for you.

A world subclass declares its roles, persona type and action union, and writes the rules::

    class Meadow(World):
        metadata = {"name": "meadow", "render_modes": ["ansi"]}
        roles = frozenset({"grazer"})
        action_type = action_union(Graze, Idle)

        def _setup(self, rng, options): ...        # initial state, drawing only from rng
        def _apply(self, actions): ...             # actions are already validated models
        def _observe_all(self): ...                # agent -> observation
        def score(self, agent): ...                # well-being in 0..1
        def _get_state(self): ...                  # JSON-ready world state
        def _set_state(self, state): ...
        ...

The base class registers agents, seeds one ``numpy.random.Generator`` per world (no global
random), counts ticks, turns malformed actions into refusals the agent observes next tick, keeps
each agent's memory, computes rewards (score deltas) and infos, truncates at ``max_ticks``, hashes
the full state (:meth:`World.state_hash`) and saves/loads it as JSON (:meth:`World.save`,
:meth:`World.load`; never pickle).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import gymnasium
import numpy as np
from pettingzoo import ParallelEnv
from pydantic import BaseModel

from agents.actions import action_adapter, parse_action
from agents.memory import Memory
from agents.persona import Persona
from worlds.view import WorldView

SAVE_FORMAT = "murmurate.world/1"


def canonical_json(data: Any) -> str:
    """Canonical JSON (sorted keys, no spaces, ASCII): equal data gives equal bytes."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


class World(ParallelEnv, ABC):
    """Base class of every murmurate world (a PettingZoo ``ParallelEnv``).

    Args:
        personas: the cast; names must be unique and roles among ``roles``.
        max_ticks: truncate every agent at this tick (``None``: run forever).
        render_mode: ``None`` or ``"ansi"`` (pygame drawing lives in ``worlds.render``).
        memory_capacity: events each agent's memory keeps.

    Attributes:
        possible_agents: every agent name, in cast order (also the order actions are applied).
        agents: the live agents (empty before ``reset`` and after truncation).
        tick: ticks since reset.
        seed: the seed of this run (request seeds are derived from it).
        rng: the world's only random generator.
    """

    metadata: ClassVar[dict[str, Any]] = {"name": "world", "render_modes": ["ansi"]}
    roles: ClassVar[frozenset[str]] = frozenset()
    """Allowed persona roles (empty: any)."""
    action_type: ClassVar[Any] = None
    """The action union (``agents.actions.action_union``)."""

    def __init__(
        self,
        personas: Sequence[Persona],
        *,
        max_ticks: int | None = None,
        render_mode: str | None = None,
        memory_capacity: int = 32,
    ) -> None:
        if self.action_type is None:
            raise TypeError(
                f"{type(self).__name__} has no action_type; set `action_type = action_union(...)` "
                "on the class"
            )
        if not personas:
            raise ValueError("a world needs at least one persona; pass personas=[Persona(...), ...]")
        names: dict[str, Persona] = {}
        for p in personas:
            if not isinstance(p, Persona):
                raise TypeError(
                    f"expected Persona objects, got {type(p).__name__}: build one with Persona(...)"
                )
            if p.name in names:
                raise ValueError(f"two personas are named {p.name!r}; agent names must be unique")
            if self.roles and p.role not in self.roles:
                raise ValueError(
                    f"persona {p.name!r} has role {p.role!r}, which {type(self).__name__} does not have; "
                    f"use one of: {', '.join(sorted(self.roles))}"
                )
            names[p.name] = p
        if max_ticks is not None and max_ticks < 1:
            raise ValueError(f"max_ticks must be at least 1 or None, got {max_ticks}")
        if render_mode not in (None, *self.metadata.get("render_modes", [])):
            raise ValueError(f"render_mode {render_mode!r} is not one of {self.metadata.get('render_modes')}")
        self._personas = names
        self.possible_agents: list[str] = list(names)
        self.agents: list[str] = []
        self.max_ticks = max_ticks
        self.render_mode = render_mode
        self.memory_capacity = memory_capacity
        self.tick = 0
        self.seed: int | None = None
        self.rng: np.random.Generator | None = None
        self._memories: dict[str, Memory] = {}
        self._refused: dict[str, str | None] = {}
        self._obs_space: gymnasium.Space | None = None
        self._act_space: gymnasium.Space | None = None

    # ----------------------------------------------------------------- subclass hooks

    @abstractmethod
    def _setup(self, rng: np.random.Generator, options: Mapping[str, Any]) -> None:
        """Build the initial state for ``self.possible_agents``, drawing randomness only from ``rng``."""

    @abstractmethod
    def _apply(self, actions: dict[str, BaseModel]) -> None:
        """Apply one validated action per live agent (in ``self.agents`` order); call
        :meth:`refuse` for each one the rules do not allow."""

    @abstractmethod
    def _observe_all(self) -> dict[str, Any]:
        """Every live agent's current observation; must not change the state."""

    @abstractmethod
    def score(self, agent: str) -> float:
        """The agent's well-being in 0..1 (rewards are its change per tick)."""

    @abstractmethod
    def _get_state(self) -> dict[str, Any]:
        """The world-specific state as JSON-ready data (everything :meth:`_set_state` needs)."""

    @abstractmethod
    def _set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_get_state` returned."""

    @abstractmethod
    def _make_observation_space(self) -> gymnasium.Space:
        """The observation space (one object, shared by all agents)."""

    @abstractmethod
    def _make_action_space(self) -> gymnasium.Space:
        """The action space (one object, shared by all agents); its samples must be accepted by
        :meth:`step` (see :meth:`_coerce_action`)."""

    @abstractmethod
    def fallback_action(self) -> BaseModel:
        """The action used when an agent gives none or an invalid one (usually idle)."""

    def argument_choices(self, agent: str) -> dict[str, list[str]]:
        """The values ``agent``'s action arguments can take on this tick without a sure refusal,
        by JSON key (e.g. ``{"to": [names within reach]}``); a model brain limits its output to
        them. Keys left out are free; the default is no limits (override, together with
        :meth:`observation_choices`)."""
        return {}

    @classmethod
    def observation_choices(cls, observation: str) -> dict[str, list[str]]:
        """:meth:`argument_choices` from an observation text alone (what held-out evaluation has);
        the default, no limits (override)."""
        return {}

    def speech_target(self, agent: str, action: BaseModel) -> tuple[str, str | None] | None:
        """If ``action`` is ``agent`` speaking to someone: ``(partner, what the partner last said to
        agent or None)``, so a talk model can write the line (``ModelBrain(speech=True)``); None for
        any other action. The default: the world has no speech (override with
        :meth:`with_utterance`)."""
        return None

    def with_utterance(self, action: BaseModel, text: str) -> BaseModel:
        """``action`` (a speech action, see :meth:`speech_target`) saying ``text`` instead, made to
        fit the world's rules for a line; raises ``ValueError`` if nothing of ``text`` fits."""
        raise NotImplementedError(f"{type(self).__name__} has no speech actions")

    @abstractmethod
    def rules_text(self) -> str:
        """The world rules prompt segment: identical for every agent and every tick."""

    @abstractmethod
    def role_text(self, role: str) -> str:
        """The role prompt segment: identical for every agent with ``role``."""

    def persona_text(self, agent: str) -> str:
        """The persona prompt segment of ``agent``: identical on every tick. The default is
        :meth:`Persona.describe`; a world may add what the persona's traits mean in it."""
        return self.persona(agent).describe()

    @abstractmethod
    def view(self) -> WorldView:
        """A plain snapshot for renderers."""

    @classmethod
    def default_cast(cls, n: int | None = None, seed: int = 0) -> list[Persona]:
        """The world's own cast: its default personas, or ``n`` of them (seeded) (override)."""
        raise NotImplementedError(f"{cls.__name__} has no default cast; pass personas=[...] explicitly")

    def expert(self, persona: Persona, observation: Any) -> BaseModel:
        """The scripted expert's action for ``persona`` given its observation (override)."""
        raise NotImplementedError(f"{type(self).__name__} has no scripted expert; override World.expert")

    def _coerce_action(self, agent: str, raw: Any) -> BaseModel:
        """Turn what an agent sent (action model, dict, or JSON text) into a validated action."""
        if isinstance(raw, str):
            return parse_action(self.action_type, raw)
        return action_adapter(self.action_type).validate_python(raw)

    def _info(self, agent: str) -> dict[str, Any]:
        """Extra per-agent info (override to add fields)."""
        return {}

    def _render_text(self) -> str:
        return f"{self.metadata.get('name')} tick {self.tick}: {len(self.agents)} agents"

    # ----------------------------------------------------------------- agents' context

    def persona(self, agent: str) -> Persona:
        """The persona of ``agent``."""
        self._check_agent(agent)
        return self._personas[agent]

    @property
    def personas(self) -> list[Persona]:
        """The cast, in ``possible_agents`` order."""
        return list(self._personas.values())

    def memory(self, agent: str) -> Memory:
        """The memory stream of ``agent`` (part of the world state, so saved and hashed)."""
        self._check_ready()
        self._check_agent(agent)
        return self._memories[agent]

    def remember(self, agent: str, text: str, importance: float) -> None:
        """Add an event to ``agent``'s memory at the current tick."""
        self._memories[agent].add(self.tick, text, importance)

    def refuse(self, agent: str, reason: str) -> None:
        """Refuse ``agent``'s action this tick; it sees ``reason`` in its next observation."""
        self._refused[agent] = reason
        self.remember(agent, f"refused: {reason}", 0.6)

    def refusal(self, agent: str) -> str | None:
        """Why ``agent``'s last action was refused, or ``None``."""
        return self._refused.get(agent)

    # ----------------------------------------------------------------- PettingZoo face

    def observation_space(self, agent: str) -> gymnasium.Space:
        """The observation space of ``agent`` (the same object on every call)."""
        self._check_agent(agent)
        if self._obs_space is None:
            self._obs_space = self._make_observation_space()
        return self._obs_space

    def action_space(self, agent: str) -> gymnasium.Space:
        """The action space of ``agent`` (the same object on every call)."""
        self._check_agent(agent)
        if self._act_space is None:
            self._act_space = self._make_action_space()
        return self._act_space

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """Start an episode.

        Args:
            seed: seeds the world's generator. ``None`` continues the current generator (a new
                episode of the same run); on the very first reset it draws fresh entropy and
                records it in :attr:`seed` so the run can be repeated.
            options: world-specific options.

        Returns:
            ``(observations, infos)`` keyed by agent.
        """
        if seed is not None or self.rng is None:
            if seed is None:
                seed = int(np.random.SeedSequence().entropy % (2**63))
            self.seed = int(seed)
            self.rng = np.random.default_rng(self.seed)
        self.tick = 0
        self.agents = list(self.possible_agents)
        self._memories = {a: Memory(self.memory_capacity) for a in self.agents}
        self._refused = dict.fromkeys(self.agents)
        self._setup(self.rng, options or {})
        return self._observe_all(), self.infos()

    def step(self, actions: Mapping[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        """Advance one tick.

        Args:
            actions: agent -> action (an action model, a dict, JSON text, or a sample of
                ``action_space(agent)``). A missing agent idles; a malformed action is refused
                with the reason in the agent's next observation.

        Returns:
            ``(observations, rewards, terminations, truncations, infos)`` keyed by agent.
        """
        self._check_ready()
        if not self.agents:
            raise RuntimeError(f"every agent is done (tick {self.tick}); call reset() to start again")
        for agent in actions:
            if agent not in self._personas:
                raise KeyError(f"action for unknown agent {agent!r}; world.agents lists the live ones")
        live = set(self.agents)
        for agent in actions:
            if agent not in live:
                raise ValueError(f"agent {agent!r} is done; drop it from the actions dict")
        before = {a: self.score(a) for a in self.agents}
        self._refused = dict.fromkeys(self.agents)
        parsed: dict[str, BaseModel] = {}
        for agent in self.agents:
            raw = actions.get(agent)
            if raw is None:
                parsed[agent] = self.fallback_action()
                continue
            try:
                parsed[agent] = self._coerce_action(agent, raw)
            except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
                parsed[agent] = self.fallback_action()
                self.refuse(agent, f"invalid action: {str(exc).splitlines()[0][:120]}")
        self._apply(parsed)
        self.tick += 1
        done = self.max_ticks is not None and self.tick >= self.max_ticks
        agents = list(self.agents)
        after = {a: self.score(a) for a in agents}
        rewards = {a: round(after[a] - before[a], 6) for a in agents}
        observations = self._observe_all()
        infos = self._infos(after)
        if done:
            self.agents = []
        return (
            observations,
            rewards,
            dict.fromkeys(agents, False),  # agents never die in normal play
            dict.fromkeys(agents, done),
            infos,
        )

    def observations(self) -> dict[str, Any]:
        """The current observations of the live agents (e.g. to continue after :meth:`load`)."""
        self._check_ready()
        return self._observe_all()

    def infos(self) -> dict[str, dict[str, Any]]:
        """Per-agent infos: ``score``, ``world_score``, ``refused``, ``tick`` and world extras."""
        return self._infos()

    def _infos(self, scores: Mapping[str, float] | None = None) -> dict[str, dict[str, Any]]:
        """:meth:`infos`, from the live agents' scores when the caller has them already."""
        scores = {a: round(scores[a] if scores is not None else self.score(a), 6) for a in self.agents}
        world_score = round(sum(scores.values()) / len(scores), 6) if scores else 0.0
        return {
            a: {
                "tick": self.tick,
                "score": scores[a],
                "world_score": world_score,
                "refused": self._refused.get(a),
                **self._info(a),
            }
            for a in self.agents
        }

    def world_score(self) -> float:
        """Mean score of the live agents."""
        self._check_ready()
        return sum(self.score(a) for a in self.agents) / max(1, len(self.agents))

    def render(self) -> str | None:
        """``"ansi"`` mode returns a text picture; pygame rendering is ``worlds.render``'s job."""
        if self.render_mode is None:
            gymnasium.logger.warn("render() called with render_mode=None; pass render_mode='ansi'")
            return None
        return self._render_text()

    # ----------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """The full state as JSON-ready data: enough to continue the run exactly."""
        self._check_ready()
        return {
            "world": type(self).__name__,
            "tick": self.tick,
            "seed": self.seed,
            "max_ticks": self.max_ticks,
            "rng": self.rng.bit_generator.state,
            "agents": list(self.agents),
            "personas": [p.model_dump(mode="json") for p in self._personas.values()],
            "memories": {a: m.to_dict() for a, m in self._memories.items()},
            "refused": dict(self._refused),
            "state": self._get_state(),
        }

    def load_state_dict(self, data: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` into this world (same class, same cast)."""
        if data.get("world") != type(self).__name__:
            raise ValueError(f"this state is of a {data.get('world')!r} world, not {type(self).__name__!r}")
        ours = [p.model_dump(mode="json") for p in self._personas.values()]
        if data["personas"] != ours:
            raise ValueError(
                "this state was saved with a different cast; build the world with the same personas "
                "(they are listed under 'personas' in the saved state)"
            )
        self.tick = int(data["tick"])
        self.seed = int(data["seed"])
        self.max_ticks = data["max_ticks"]
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = data["rng"]
        self.agents = list(data["agents"])
        self._memories = {a: Memory.from_dict(m) for a, m in data["memories"].items()}
        self._refused = dict(data["refused"])
        self._set_state(data["state"])

    def state_hash(self) -> str:
        """sha256 of the canonical JSON of the full state: equal hashes mean equal worlds."""
        return hashlib.sha256(canonical_json(self.state_dict()).encode()).hexdigest()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the full state to ``path`` as JSON (atomically: a crash leaves the old file)."""
        path = Path(path)
        payload = canonical_json({"format": SAVE_FORMAT, "state": self.state_dict()})
        fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(payload)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def load(self, path: str | os.PathLike) -> None:
        """Load a state written by :meth:`save` into this world; then call :meth:`observations`."""
        with open(path, encoding="ascii") as f:
            payload = json.load(f)
        if not isinstance(payload, dict) or payload.get("format") != SAVE_FORMAT:
            raise ValueError(f"{path} is not a murmurate world save (expected format {SAVE_FORMAT!r})")
        self.load_state_dict(payload["state"])

    # ----------------------------------------------------------------- checks

    def _check_ready(self) -> None:
        if self.rng is None:
            raise RuntimeError(f"{type(self).__name__} is not started; call reset(seed=...) first")

    def _check_agent(self, agent: str) -> None:
        if agent not in self._personas:
            raise KeyError(f"unknown agent {agent!r}; see world.possible_agents")
