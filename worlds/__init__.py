"""Worlds: the World API (PettingZoo ``ParallelEnv`` conventions), example worlds, rendering.

Build a world by name (worlds are imported on demand, so importing this package stays cheap)::

    from worlds import make_world
    world = make_world("village", agents=200, seed=0, max_ticks=500)
    observations, infos = world.reset(seed=0)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worlds.base import World

WORLDS: dict[str, str] = {"village": "worlds.village:Village"}
"""World name -> ``module:Class``."""


def world_class(name: str) -> type[World]:
    """The World subclass registered as ``name``."""
    if name not in WORLDS:
        raise KeyError(f"unknown world {name!r}; known worlds: {', '.join(sorted(WORLDS))}")
    module, _, cls = WORLDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def make_world(
    name: str, *, agents: int | None = None, seed: int = 0, personas: Any = None, **kwargs: Any
) -> World:
    """Build world ``name`` with ``personas``, or its default cast of ``agents`` agents.

    Args:
        name: a key of :data:`WORLDS`.
        agents: cast size (``None``: the world's default cast); ignored if ``personas`` is given.
        seed: seeds generated personas (the world's own seed is given to ``reset``).
        personas: an explicit cast.
        kwargs: passed to the world (e.g. ``max_ticks``, ``render_mode``).
    """
    cls = world_class(name)
    cast = personas if personas is not None else cls.default_cast(agents, seed)
    return cls(cast, **kwargs)


__all__ = ["WORLDS", "make_world", "world_class"]
