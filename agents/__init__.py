"""Agents: personas, action schemas, memory, prompts, and the minds that turn results into actions.

Imports only the request/result types from ``runtime``; worlds build on this package.
"""

from agents.actions import ActionParseError, action_json, action_schema, action_union, parse_action
from agents.memory import Memory, MemoryEvent
from agents.mind import Brain, Decision, ExpertBrain, Mind, MindContext, ModelBrain, derive_seed
from agents.persona import KNOWN_TASKS, KNOWN_TRAITS, Persona
from agents.prompt import SEGMENTS, build_prompt

__all__ = [
    "KNOWN_TASKS",
    "KNOWN_TRAITS",
    "SEGMENTS",
    "ActionParseError",
    "Brain",
    "Decision",
    "ExpertBrain",
    "Memory",
    "MemoryEvent",
    "Mind",
    "MindContext",
    "ModelBrain",
    "Persona",
    "action_json",
    "action_schema",
    "action_union",
    "build_prompt",
    "derive_seed",
    "parse_action",
]
