"""Personas: who an agent is, defined in plain Python and checked when it is defined.

A :class:`Persona` is a frozen pydantic model. A world narrows it by subclassing and setting the
class variables (``ROLES``, ``DEFAULT_MODELS``; optionally ``TRAITS`` and ``KNOWN_MODELS``)::

    class VillagePersona(Persona):
        ROLES = frozenset({"farmer", "merchant"})

    VillagePersona(name="Alda", role="farmer", traits={"caution": 0.8})

A bad definition (unknown trait, value outside 0..1, role the world does not have, unknown task or
model name) raises :class:`pydantic.ValidationError` whose message says what to change.

Traits are stored rounded to two decimals because that is how they appear in the prompt: a
scripted expert reading them decides on exactly what a model sees.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

KNOWN_TRAITS: tuple[str, ...] = (
    "greed",
    "caution",
    "sociability",
    "diligence",
    "generosity",
    "curiosity",
)
"""Trait names every persona has (missing ones default to 0.5)."""

KNOWN_TASKS: tuple[str, ...] = ("act", "talk")
"""Tasks a persona can assign a model to: ``act`` picks the next action, ``talk`` writes speech."""

NAME_PATTERN = r"^[A-Z][A-Za-z0-9_-]{0,23}$"
MAX_GOALS = 5
MAX_GOAL_CHARS = 120
MAX_BACKSTORY_CHARS = 300


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Persona(BaseModel):
    """An agent's identity: name, role, traits, goals, backstory and the models serving it.

    Args:
        name: unique name; starts with a capital letter, then letters, digits, ``_`` or ``-``
            (at most 24 characters, no spaces, so it can be addressed in actions).
        role: one of the world's roles (``ROLES``), e.g. ``"farmer"``.
        traits: named traits in 0..1 (``TRAITS``); unnamed ones default to 0.5.
        goals: up to 5 short goals.
        backstory: a short backstory (at most 300 characters).
        models: task -> model name, e.g. ``{"act": "village-act", "talk": "village-talk"}``;
            ``act`` is required. Tasks missing here are taken from ``DEFAULT_MODELS``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ROLES: ClassVar[frozenset[str] | None] = None
    """Allowed roles; ``None`` accepts any non-empty role (the world checks it later)."""
    TRAITS: ClassVar[tuple[str, ...]] = KNOWN_TRAITS
    """Known trait names, in the order they are rendered."""
    TASKS: ClassVar[tuple[str, ...]] = KNOWN_TASKS
    DEFAULT_MODELS: ClassVar[dict[str, str]] = {"act": "act", "talk": "talk"}
    KNOWN_MODELS: ClassVar[frozenset[str] | None] = None
    """If set, model names outside it are rejected at definition time."""

    name: str = Field(pattern=NAME_PATTERN)
    role: str = Field(min_length=1, max_length=24)
    traits: dict[str, float] = Field(default_factory=dict, validate_default=True)
    goals: list[str] = Field(default_factory=list)
    backstory: str = ""
    models: dict[str, str] = Field(default_factory=dict, validate_default=True)

    @field_validator("name", mode="before")
    @classmethod
    def _check_name(cls, v: Any) -> Any:
        if isinstance(v, str) and not v[:1].isupper():
            raise ValueError(
                f"name {v!r} must start with a capital letter and contain no spaces, e.g. 'Alda'"
            )
        return v

    @field_validator("role")
    @classmethod
    def _check_role(cls, v: str) -> str:
        if cls.ROLES is not None and v not in cls.ROLES:
            raise ValueError(
                f"role {v!r} is not a role of this world{_did_you_mean(v, cls.ROLES)}; "
                f"use one of: {', '.join(sorted(cls.ROLES))}"
            )
        return v

    @field_validator("traits", mode="before")
    @classmethod
    def _check_traits(cls, v: Any) -> dict[str, float]:
        if not isinstance(v, dict):
            raise ValueError("traits must be a dict of trait name -> value in 0..1")
        out: dict[str, float] = {}
        for name, value in v.items():
            if name not in cls.TRAITS:
                raise ValueError(
                    f"unknown trait {name!r}{_did_you_mean(str(name), cls.TRAITS)}; "
                    f"known traits: {', '.join(cls.TRAITS)}"
                )
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"trait {name!r} must be a number in 0..1, got {value!r}")
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"trait {name!r} = {value} is out of range; use a value in 0..1")
        for name in cls.TRAITS:
            # Rounded to the precision the prompt shows, so experts and models see the same value.
            out[name] = round(float(v.get(name, 0.5)), 2)
        return out

    @field_validator("goals")
    @classmethod
    def _check_goals(cls, v: list[str]) -> list[str]:
        if len(v) > MAX_GOALS:
            raise ValueError(f"{len(v)} goals given; keep at most {MAX_GOALS}")
        for goal in v:
            if not goal.strip() or len(goal) > MAX_GOAL_CHARS:
                raise ValueError(f"goal {goal[:40]!r} must be 1..{MAX_GOAL_CHARS} characters")
        return v

    @field_validator("backstory")
    @classmethod
    def _check_backstory(cls, v: str) -> str:
        if len(v) > MAX_BACKSTORY_CHARS:
            raise ValueError(f"backstory is {len(v)} characters; shorten it to at most {MAX_BACKSTORY_CHARS}")
        return v

    @field_validator("models", mode="before")
    @classmethod
    def _check_models(cls, v: Any, info: ValidationInfo) -> dict[str, str]:
        if not isinstance(v, dict):
            raise ValueError('models must be a dict of task -> model name, e.g. {"act": "village-act"}')
        models = {**cls.DEFAULT_MODELS, **v}
        known = (info.context or {}).get("known_models", cls.KNOWN_MODELS)
        for task, model in models.items():
            if task not in cls.TASKS:
                raise ValueError(
                    f"unknown task {task!r}{_did_you_mean(str(task), cls.TASKS)}; "
                    f"tasks: {', '.join(cls.TASKS)}"
                )
            if not isinstance(model, str) or not model.strip() or len(model) > 64:
                raise ValueError(f"model name for task {task!r} must be 1..64 characters")
            if known is not None and model not in known:
                raise ValueError(
                    f"model {model!r} for task {task!r} is not a known model"
                    f"{_did_you_mean(model, known)}; known: {', '.join(sorted(known))}"
                )
        if "act" not in models:
            raise ValueError('models needs an "act" entry: the model that picks actions')
        return {task: models[task] for task in cls.TASKS if task in models}

    def trait(self, name: str) -> float:
        """The value of trait ``name`` (0..1)."""
        if name not in self.traits:
            raise KeyError(f"unknown trait {name!r}; known traits: {', '.join(self.traits)}")
        return self.traits[name]

    def check_models(self, known: Iterable[str]) -> None:
        """Raise ``ValueError`` if a model this persona uses is not in ``known``.

        The simulation calls this once the scheduler knows which models it serves.
        """
        known = set(known)
        missing = {task: m for task, m in self.models.items() if m not in known}
        if missing:
            pairs = ", ".join(f"{t} -> {m!r}" for t, m in missing.items())
            raise ValueError(
                f"persona {self.name!r} uses models the scheduler does not serve ({pairs}); "
                f"serve them or set models= to one of: {', '.join(sorted(known))}"
            )

    def describe(self) -> str:
        """The persona as prompt text: stable for a given persona (no tick, no state)."""
        traits = ", ".join(f"{k} {v:.2f}" for k, v in self.traits.items())
        lines = [f"You are {self.name}, a {self.role}.", f"Traits: {traits}."]
        if self.goals:
            lines.append("Goals: " + "; ".join(self.goals) + ".")
        if self.backstory:
            lines.append("Backstory: " + self.backstory)
        return "\n".join(lines)
