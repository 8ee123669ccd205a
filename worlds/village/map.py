"""The village map: a fixed 48x48 layout, named places, shortest paths, and a spatial grid.

The layout is the same for every seed (the seed moves agents, not houses), so the rule text and
the place names in every prompt stay valid and a model trained on one run knows the map of all.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np

from worlds.village.rules import PLACES

SIZE = 48
TILE_KINDS: dict[int, str] = {
    0: "grass",
    1: "path",
    2: "field",
    3: "forest",
    4: "water",
    5: "bridge",
    6: "market",
    7: "home",
    8: "tavern",
}
GRASS, PATH, FIELD, FOREST, WATER, BRIDGE, MARKET, HOME, TAVERN = range(9)
AREAS: tuple[str, ...] = (*PLACES, "path", "grass")
"""What an agent can be standing in: a named place, or plain path or grass."""
STEPS: dict[str, tuple[int, int]] = {"north": (0, -1), "east": (1, 0), "south": (0, 1), "west": (-1, 0)}
_TILE_AREA = {
    MARKET: "market",
    TAVERN: "tavern",
    HOME: "homes",
    FIELD: "fields",
    FOREST: "forest",
    BRIDGE: "river",
}


def river_x(y: int) -> int:
    """Column of the river's west bank water tile on row ``y`` (the river is two tiles wide)."""
    return 30 + round(1.5 * math.sin(y / 5.0))


def build_tiles() -> np.ndarray:
    """The (H, W) tile-code array of the village."""
    t = np.full((SIZE, SIZE), GRASS, dtype=np.int8)  # (H, W), indexed [y, x]
    for y in range(2, 46):
        for x in range(36, 47):
            # a few clearings keep the forest from being a solid block
            if (x * 7 + y * 13) % 11:
                t[y, x] = FOREST
    t[1:9, 1:9] = FOREST
    t[30:45, 3:18] = FIELD
    t[23, 2:46] = PATH
    t[6:45, 20] = PATH
    t[13, 8:27] = PATH
    for y in range(SIZE):
        x0 = river_x(y)
        t[y, x0 : x0 + 2] = BRIDGE if y == 23 else WATER
    for x in (8, 12, 16, 24):
        t[10:12, x : x + 2] = HOME
    t[17:22, 17:23] = MARKET
    t[25:29, 24:28] = TAVERN
    return t


TILES = build_tiles()
TILES.setflags(write=False)
PASSABLE = TILES != WATER


def _areas(tiles: np.ndarray) -> np.ndarray:
    area = np.empty(tiles.shape, dtype=np.int8)
    water = tiles == WATER
    for y in range(SIZE):
        for x in range(SIZE):
            kind = int(tiles[y, x])
            name = _TILE_AREA.get(kind)
            if name is None and kind != WATER:
                near_water = any(
                    0 <= x + dx < SIZE and 0 <= y + dy < SIZE and water[y + dy, x + dx]
                    for dx, dy in STEPS.values()
                )
                name = "river" if near_water else TILE_KINDS[kind]
            area[y, x] = AREAS.index(name) if name else -1
    return area


AREA = _areas(TILES)
"""(H, W) index into AREAS of each tile (-1 on water)."""

ANCHORS: dict[str, tuple[int, int]] = {
    "market": (19, 19),
    "tavern": (25, 26),
    "homes": (16, 11),
    "fields": (10, 37),
    "forest": (40, 20),
    "river": (river_x(30) - 1, 30),
}
"""The tile (x, y) a go_to heads for; it lies inside its place."""


def area_at(x: int, y: int) -> str:
    """The area (place, ``path`` or ``grass``) of tile (x, y)."""
    return AREAS[AREA[y, x]]


def _distance_field(goal: tuple[int, int]) -> np.ndarray:
    dist = np.full((SIZE, SIZE), np.iinfo(np.int32).max, dtype=np.int32)
    gx, gy = goal
    dist[gy, gx] = 0
    queue = deque([goal])
    while queue:
        x, y = queue.popleft()
        for dx, dy in STEPS.values():
            nx, ny = x + dx, y + dy
            if 0 <= nx < SIZE and 0 <= ny < SIZE and PASSABLE[ny, nx] and dist[ny, nx] > dist[y, x] + 1:
                dist[ny, nx] = dist[y, x] + 1
                queue.append((nx, ny))
    return dist


DISTANCE: dict[str, np.ndarray] = {p: _distance_field(a) for p, a in ANCHORS.items()}
"""place -> (H, W) path length to its anchor."""


def path_step(x: int, y: int, place: str) -> tuple[int, int]:
    """The next tile on a shortest path from (x, y) towards ``place`` (ties: N, E, S, W)."""
    dist = DISTANCE[place]
    best = (x, y)
    for dx, dy in STEPS.values():
        nx, ny = x + dx, y + dy
        if 0 <= nx < SIZE and 0 <= ny < SIZE and dist[ny, nx] < dist[best[1], best[0]]:
            best = (nx, ny)
    return best


def chebyshev(a: tuple[int, int], b: tuple[int, int]) -> int:
    """Chessboard distance between two tiles."""
    return max(abs(a[0] - b[0]), abs(a[1] - b[1]))


def _ring(x: int, y: int, d: int) -> Iterator[tuple[int, int]]:
    if d == 0:
        yield (x, y)
        return
    for dx in range(-d, d + 1):
        yield (x + dx, y - d)
        yield (x + dx, y + d)
    for dy in range(-d + 1, d):
        yield (x - d, y + dy)
        yield (x + d, y + dy)


class SpatialGrid:
    """Agents bucketed by tile, so a "who is near me" query costs O(radius^2 + k), not O(N).

    Args:
        positions: (x, y) of each agent, indexed like the agent list.
    """

    def __init__(self, positions: Sequence[tuple[int, int]]) -> None:
        self.positions = positions
        self.cells: dict[tuple[int, int], list[int]] = {}
        for i, pos in enumerate(positions):
            self.cells.setdefault(pos, []).append(i)  # appended in index order: lists stay sorted

    def nearby(self, i: int, radius: int, k: int) -> list[tuple[int, int]]:
        """Up to ``k`` other agents within ``radius`` of agent ``i`` as (index, distance),
        nearest first, lower index first among equals."""
        x, y = self.positions[i]
        out: list[tuple[int, int]] = []
        for d in range(radius + 1):
            lists = [c for c in (self.cells.get(cell) for cell in _ring(x, y, d)) if c]
            for j in heapq.merge(*lists):
                if j != i:
                    out.append((j, d))
                    if len(out) == k:
                        return out
        return out
