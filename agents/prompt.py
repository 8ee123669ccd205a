"""Prompt building in segments, from the most shared to the least shared.

``world rules -> role -> persona -> memory -> observation``. A request's segments are tokenized
separately, so a segment that is byte-identical across agents (rules, role) or across ticks
(persona) maps to the same tokens and the radix prefix cache serves it from KV computed once.
That only works if the shared segments carry no tick, position or other changing data: keep all
of that in the memory and observation segments.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from agents.memory import Memory, MemoryEvent
from agents.persona import Persona

SEGMENTS: tuple[str, ...] = ("rules", "role", "persona", "memory", "observation")
"""Segment names, in prompt order."""

MEMORY_K = 5
ACTION_CUE = "Action:"


def render_memory(events: Sequence[MemoryEvent]) -> str:
    """Memories as prompt text, oldest first; absolute ticks keep the text stable across ticks."""
    if not events:
        return "Memories: none."
    return "Memories:\n" + "\n".join(f"- t{e.tick}: {e.text}" for e in events)


def observation_of(prompt: tuple[str, ...] | list[str]) -> str:
    """The observation text inside prompt segments made by :func:`build_prompt`."""
    last = prompt[-1]
    if not (last.startswith("Now:\n") and last.endswith("\n" + ACTION_CUE)):
        raise ValueError("not a prompt built by build_prompt: its last segment is not 'Now: ... cue'")
    return last[len("Now:\n") : -len(ACTION_CUE) - 1]


def build_prompt(
    *,
    rules: str,
    role: str,
    persona: Persona,
    memory: Memory | None,
    observation: str,
    now: int,
    k: int = MEMORY_K,
    persona_text: str | None = None,
) -> tuple[str, ...]:
    """Build the prompt segments for one agent.

    Args:
        rules: the world's rules (identical for every agent of the world).
        role: the role's description (identical for every agent with that role).
        persona: the agent's persona (identical for that agent on every tick).
        memory: the agent's memory; the ``k`` events most relevant to ``observation`` are shown.
        observation: the compact current observation.
        now: the current tick (for recency; it does not appear in the shared segments).
        k: how many memories to show.
        persona_text: the persona segment as the world words it (``World.persona_text``);
            ``persona.describe()`` when not given.

    Returns:
        Five segments in :data:`SEGMENTS` order, each ending with a blank line except the last,
        which ends with the action cue.
    """
    events = memory.retrieve(observation, now, k) if memory is not None else []
    return (
        _block(rules.strip()),
        _block(role.strip()),
        _block(persona.describe() if persona_text is None else persona_text),
        render_memory(events) + "\n\n",
        "Now:\n" + observation.strip() + "\n" + ACTION_CUE,
    )


@lru_cache(maxsize=1 << 14)
def _block(text: str) -> str:
    """``text`` as a segment: one string object for equal texts, however many agents share it.

    The segments every agent repeats (rules, role, its persona on every tick) then cost a request
    batch one copy each when pickled for a worker (pickle writes an object it has seen as a
    reference): a worker's 500 village requests went from 1,029 KB to 458 KB.
    """
    return text + "\n\n"
