"""What a renderer needs to know about a world: a plain snapshot, no game logic.

Worlds produce a :class:`WorldView` every tick (``world.view()``); the pygame renderer, the
recorder and the inspector draw from it alone, so rendering never reaches into world internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class AgentView:
    """One agent as drawn: where it stands and what it shows."""

    name: str
    role: str
    x: int
    y: int
    utterance: str | None = None  # said this tick, drawn as a speech bubble
    needs: dict[str, float] = field(default_factory=dict)  # e.g. hunger/energy/social in 0..1
    inventory: dict[str, int] = field(default_factory=dict)
    coins: int = 0
    last_action: str | None = None
    refused: str | None = None  # reason the last action was refused, if it was


@dataclass(frozen=True)
class WorldView:
    """A world at one tick."""

    tick: int
    tiles: np.ndarray  # (H, W) integer tile codes
    tile_kinds: dict[int, str]  # code -> kind name, e.g. {0: "grass", 1: "field", ...}
    agents: tuple[AgentView, ...]
    is_night: bool = False
    score: float | None = None
