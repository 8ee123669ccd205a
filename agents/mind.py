"""Minds and brains: from (persona, memory, observation) to a request, and from a result to an action.

A :class:`Mind` serves one agent: it builds the prompt segments and the :class:`~runtime.types.Request`
(the persona's ``act`` model, a JSON-schema constraint for the world's action union, greedy
decoding, a seed derived from the simulation seed, the agent and the tick), and turns the
:class:`~runtime.types.Result` back into an action. A result that carries an error or does not
parse becomes the world's fallback action (idle) with the reason recorded and logged, never an
exception.

A *brain* decides for every agent of a world each tick, with the same two calls whatever drives it::

    requests = brain.requests(observations)    # [] for the expert brain
    results = scheduler.run(requests)          # the serving core, not this package
    actions = brain.actions(results)           # agent -> action, for world.step

:class:`ModelBrain` asks models; :class:`ExpertBrain` asks the world's scripted expert, which sees
only what the prompt contains (persona and the observation text), so models can learn to imitate it.
Both keep the last prompt and decision per agent for the inspector.
"""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from agents.actions import ActionParseError, action_json, action_schema, parse_action
from agents.memory import Memory
from agents.persona import Persona
from agents.prompt import build_prompt
from runtime.types import Constraint, Request, Result, SamplingParams

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 128


class MindContext(Protocol):
    """What a brain needs from a world (``worlds.base.World`` provides all of it)."""

    agents: list[str]
    tick: int
    seed: int
    action_type: Any

    def persona(self, agent: str) -> Persona: ...
    def memory(self, agent: str) -> Memory: ...
    def rules_text(self) -> str: ...
    def argument_choices(self, agent: str) -> dict[str, list[str]]: ...
    def role_text(self, role: str) -> str: ...
    def persona_text(self, agent: str) -> str: ...
    def fallback_action(self) -> BaseModel: ...
    def expert(self, persona: Persona, observation: str) -> BaseModel: ...


def derive_seed(sim_seed: int, agent: str, tick: int) -> int:
    """A 31-bit request seed from the simulation seed, the agent and the tick.

    sha256 rather than ``hash()`` so that it is the same in every process and every run.
    """
    digest = hashlib.sha256(f"{sim_seed}/{agent}/{tick}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True)
class Decision:
    """What an agent decided on one tick and where it came from.

    Attributes:
        agent: the agent's name.
        tick: the tick it decided on.
        action: the action handed to the world.
        source: ``"model"``, ``"expert"`` or ``"fallback"`` (the fallback action after a failure).
        text: the raw model output (or the expert action as JSON).
        reason: why the fallback was used, when it was.
    """

    agent: str
    tick: int
    action: BaseModel
    source: Literal["model", "expert", "fallback"]
    text: str = ""
    reason: str | None = None
    speech: str | None = None  # the line the agent's talk model wrote for this action, if it did


class Mind:
    """One agent's link to its model: prompt, request, and parsing the result.

    Args:
        persona: the agent's persona; ``persona.models["act"]`` names the model unless ``model``
            overrides it.
        rules: the world rules segment.
        role: the role segment.
        action_type: the world's action union.
        constraint: the JSON-schema constraint for ``action_type`` (shared by all minds).
        model: serve with this model instead of the persona's ``act`` model.
        max_tokens: generation limit for one action.
        persona_text: the persona segment as the world words it (default ``persona.describe()``).
    """

    def __init__(
        self,
        persona: Persona,
        *,
        rules: str,
        role: str,
        action_type: Any,
        constraint: Constraint | None = None,
        model: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        persona_text: str | None = None,
    ) -> None:
        self.persona = persona
        self.persona_text = persona_text
        self.rules = rules
        self.role = role
        self.action_type = action_type
        self.constraint = constraint or Constraint.json_schema(action_schema(action_type))
        self.model = model or persona.models["act"]
        self.max_tokens = max_tokens

    def prompt(self, memory: Memory | None, observation: str, now: int) -> tuple[str, ...]:
        """The prompt segments, most shared first."""
        return build_prompt(
            rules=self.rules,
            role=self.role,
            persona=self.persona,
            memory=memory,
            observation=observation,
            now=now,
            persona_text=self.persona_text,
        )

    def request(
        self,
        prompt: tuple[str, ...],
        *,
        now: int,
        sim_seed: int,
        choices: dict[str, list[str]] | None = None,
    ) -> Request:
        """A greedy, constrained, seeded request for ``prompt``; ``tag`` is the agent's name.
        ``choices`` limits string arguments to the listed values (``Constraint.string_choices``)."""
        sampling = SamplingParams(
            max_tokens=self.max_tokens,
            temperature=0.0,
            seed=derive_seed(sim_seed, self.persona.name, now),
        )
        return Request(
            model=self.model,
            prompt=prompt,
            sampling=sampling,
            constraint=self.constraint.with_string_choices(choices) if choices else self.constraint,
            tag=self.persona.name,
        )

    def decide(self, result: Result | None, *, now: int, fallback: BaseModel) -> Decision:
        """Turn a result into a decision; failures give ``fallback`` with the reason."""
        agent = self.persona.name
        if result is None:
            reason = "no result came back for this agent"
        elif result.error is not None:
            reason = f"serving error: {result.error}"
        else:
            try:
                action = parse_action(self.action_type, result.text)
            except ActionParseError as exc:
                reason = f"unparsable output ({result.finish_reason}): {exc}"
            else:
                return Decision(agent, now, action, "model", result.text)
        logger.warning("agent %s tick %d: fallback to %s: %s", agent, now, action_json(fallback), reason)
        text = result.text if result is not None else ""
        return Decision(agent, now, fallback, "fallback", text, reason)


class Brain(ABC):
    """Decides for every live agent of a world, tick after tick.

    Attributes:
        world: the world it decides for.
        last_prompt: agent -> prompt segments of its latest decision.
        last_decision: agent -> its latest :class:`Decision`.
        stats: running counts (``decisions``, ``fallbacks``).
    """

    def __init__(self, world: MindContext) -> None:
        self.world = world
        self.last_prompt: dict[str, tuple[str, ...]] = {}
        self.last_decision: dict[str, Decision] = {}
        self.stats: dict[str, int] = {"decisions": 0, "fallbacks": 0}
        self._observations: dict[str, str] = {}
        self._tick = 0

    @abstractmethod
    def requests(self, observations: Mapping[str, str]) -> list[Request]:
        """Record this tick's observations and return the requests to serve (maybe none)."""

    @abstractmethod
    def actions(self, results: Iterable[Result] = ()) -> dict[str, BaseModel]:
        """Turn the served results into one action per observed agent."""

    def decide(
        self,
        observations: Mapping[str, str],
        serve: Callable[[list[Request]], list[Result]] | None = None,
    ) -> dict[str, BaseModel]:
        """``requests`` -> ``serve`` -> ``actions`` in one call (``serve`` may be omitted if no
        requests are made, as with the expert brain)."""
        requests = self.requests(observations)
        if requests and serve is None:
            raise ValueError(f"{type(self).__name__} made requests; pass serve= to run them")
        actions = self.actions(serve(requests) if requests else [])
        more = self.followups(actions)
        if more and serve is None:
            raise ValueError(f"{type(self).__name__} made requests; pass serve= to run them")
        return self.revise(actions, serve(more)) if more else actions

    def followups(self, actions: Mapping[str, BaseModel]) -> list[Request]:
        """Requests this tick needs once its actions are known (a talk model's lines); none by default."""
        return []

    def revise(self, actions: dict[str, BaseModel], results: Iterable[Result]) -> dict[str, BaseModel]:
        """The actions with the :meth:`followups` results worked in; unchanged by default."""
        return actions

    def _start(self, observations: Mapping[str, str]) -> list[str]:
        self._tick = self.world.tick
        live = [a for a in self.world.agents if a in observations]
        self._observations = {a: observations[a] for a in live}
        return live

    def _prompt(self, agent: str) -> tuple[str, ...]:
        world = self.world
        persona = world.persona(agent)
        prompt = build_prompt(
            rules=world.rules_text(),
            role=world.role_text(persona.role),
            persona=persona,
            memory=world.memory(agent),
            observation=self._observations[agent],
            now=self._tick,
            persona_text=world.persona_text(agent),
        )
        self.last_prompt[agent] = prompt
        return prompt

    def _record(self, decision: Decision) -> BaseModel:
        self.last_decision[decision.agent] = decision
        self.stats["decisions"] += 1
        if decision.source == "fallback":
            self.stats["fallbacks"] += 1
        return decision.action


class ModelBrain(Brain):
    """Every decision comes from a model through the scheduler.

    Args:
        world: the world to decide for.
        model: serve every agent with this model instead of each persona's ``act`` model.
        max_tokens: generation limit per action.
        limit_choices: limit the arguments the world lists in ``argument_choices`` (partners within
            reach, actions that would not be refused) to its values, by a token mask on top of the
            shared action schema; ``False`` leaves them to the model.
        speech: when the ``act`` model decides to speak (``world.speech_target``), the speaker's
            ``talk`` model writes the line in a second request of the same tick
            (:mod:`agents.speech`), fitted to the world's rules (``world.with_utterance``); a line
            that fails keeps the ``act`` model's own words.
        talk_model: serve every line with this model instead of each persona's ``talk`` model.
        speech_tokens: generation limit per line.
        speech_temperature: sampling temperature of the lines (0: greedy); each line's draw is
            seeded by the simulation seed, the speaker and the tick, so a run still repeats.
        speech_top_p: nucleus sampling of the lines.
    """

    def __init__(
        self,
        world: MindContext,
        *,
        model: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        limit_choices: bool = True,
        speech: bool = False,
        talk_model: str | None = None,
        speech_tokens: int = 32,
        speech_temperature: float = 0.0,
        speech_top_p: float = 1.0,
    ):
        super().__init__(world)
        if speech and not callable(getattr(world, "speech_target", None)):
            raise ValueError(f"{type(world).__name__} has no speech actions (no speech_target)")
        self.model = model
        self.max_tokens = max_tokens
        self.limit_choices = limit_choices
        self.speech = speech
        self.talk_model = talk_model
        self.speech_tokens = speech_tokens
        self.speech_temperature = speech_temperature
        self.speech_top_p = speech_top_p
        self.constraint = Constraint.json_schema(action_schema(world.action_type))
        self._minds: dict[str, Mind] = {}

    def mind(self, agent: str) -> Mind:
        """The agent's :class:`Mind` (built on first use)."""
        mind = self._minds.get(agent)
        if mind is None:
            persona = self.world.persona(agent)
            mind = Mind(
                persona,
                rules=self.world.rules_text(),
                role=self.world.role_text(persona.role),
                action_type=self.world.action_type,
                constraint=self.constraint,
                model=self.model,
                max_tokens=self.max_tokens,
                persona_text=self.world.persona_text(agent),
            )
            self._minds[agent] = mind
        return mind

    def requests(self, observations: Mapping[str, str]) -> list[Request]:
        """One request per observed live agent, in ``world.agents`` order."""
        out = []
        for agent in self._start(observations):
            prompt = self._prompt(agent)
            choices = self.world.argument_choices(agent) if self.limit_choices else None
            out.append(
                self.mind(agent).request(prompt, now=self._tick, sim_seed=self.world.seed, choices=choices)
            )
        return out

    def actions(self, results: Iterable[Result] = ()) -> dict[str, BaseModel]:
        """Parse each agent's result (matched by ``tag``); missing or bad ones fall back."""
        by_agent: dict[str, Result] = {}
        for result in results:
            if result.tag in self._observations:
                by_agent[result.tag] = result
            else:
                logger.warning(
                    "result %s has tag %r, which is no agent waiting for one", result.id, result.tag
                )
        fallback = self.world.fallback_action()
        return {
            agent: self._record(
                self.mind(agent).decide(by_agent.get(agent), now=self._tick, fallback=fallback)
            )
            for agent in self._observations
        }

    def followups(self, actions: Mapping[str, BaseModel]) -> list[Request]:
        """One line request for every agent whose action is speech (with ``speech`` on)."""
        if not self.speech:
            return []
        from agents.speech import speech_request

        out = []
        for agent, action in actions.items():
            target = self.world.speech_target(agent, action)
            if target is None:
                continue
            partner, heard = target
            speaker = self.world.persona(agent)
            model = self.talk_model or speaker.models["talk"]
            partner_persona = self.world.persona(partner)
            out.append(
                speech_request(
                    speaker,
                    partner_persona,
                    heard,
                    model=model,
                    max_tokens=self.speech_tokens,
                    tag=agent,
                    temperature=self.speech_temperature,
                    top_p=self.speech_top_p,
                    seed=derive_seed(self.world.seed, f"{agent}/speech", self._tick),
                )
            )
        return out

    def revise(self, actions: dict[str, BaseModel], results: Iterable[Result]) -> dict[str, BaseModel]:
        """Each speaker's action saying its talk model's line (the ``act`` model's words if it failed)."""
        out = dict(actions)
        for result in results:
            agent = result.tag
            if agent not in out:
                continue
            self.stats["speech"] = self.stats.get("speech", 0) + 1
            try:
                if result.error:
                    raise ValueError(result.error)
                out[agent] = self.world.with_utterance(out[agent], result.text)
            except ValueError as exc:
                self.stats["speech_failed"] = self.stats.get("speech_failed", 0) + 1
                logger.warning("agent %s tick %d: talk model's line not used: %s", agent, self._tick, exc)
                continue
            decision = self.last_decision.get(agent)
            if decision is not None:
                self.last_decision[agent] = replace(decision, action=out[agent], speech=result.text)
        return out


class ExpertBrain(Brain):
    """Decisions from a scripted expert that reads only the persona and the observation text.

    Args:
        world: the world to decide for.
        policy: ``policy(persona, observation_text) -> action``; defaults to ``world.expert``.
        record_prompts: also build each agent's prompt (for the inspector and for datasets);
            turn off for the fastest large runs.
    """

    def __init__(
        self,
        world: MindContext,
        policy: Callable[[Persona, str], BaseModel] | None = None,
        *,
        record_prompts: bool = True,
    ) -> None:
        super().__init__(world)
        self.policy = policy or world.expert
        self.record_prompts = record_prompts

    def requests(self, observations: Mapping[str, str]) -> list[Request]:
        """Record the observations (and prompts); the expert needs no model, so no requests."""
        for agent in self._start(observations):
            if self.record_prompts:
                self._prompt(agent)
        return []

    def actions(self, results: Iterable[Result] = ()) -> dict[str, BaseModel]:
        """The expert's action for each observed agent; an expert failure falls back, logged."""
        out: dict[str, BaseModel] = {}
        fallback = self.world.fallback_action()
        for agent, observation in self._observations.items():
            try:
                action = self.policy(self.world.persona(agent), observation)
                decision = Decision(agent, self._tick, action, "expert", action_json(action))
            except Exception as exc:  # an expert bug must not stop a long run; it is logged
                first_line = str(exc).splitlines()[0] if str(exc) else ""
                logger.warning(
                    "agent %s tick %d: expert failed: %s: %s",
                    agent,
                    self._tick,
                    type(exc).__name__,
                    first_line,
                )
                decision = Decision(agent, self._tick, fallback, "fallback", "", f"expert failed: {exc!r}")
            out[agent] = self._record(decision)
        return out
