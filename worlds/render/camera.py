"""Camera: which part of the map is on screen, and at what zoom.

The camera maps tile coordinates to screen pixels and back. ``offset`` is the screen position of
the top-left corner of tile ``(0, 0)``; ``tile_size`` is the side of one tile in pixels. Zoom moves
through a fixed ladder of integer tile sizes so tiles stay crisp (no fractional pixel seams).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Tile sizes the zoom steps through, in pixels.
ZOOM_LEVELS: tuple[int, ...] = (4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48)


@dataclass
class Camera:
    """Pan and zoom state.

    Attributes:
        offset_x: Screen x of the left edge of tile column 0, in pixels.
        offset_y: Screen y of the top edge of tile row 0, in pixels.
        tile_size: Side of one tile in pixels; one of :data:`ZOOM_LEVELS` after any zoom.
    """

    offset_x: float = 0.0
    offset_y: float = 0.0
    tile_size: int = 16

    def tile_to_screen(self, tx: float, ty: float) -> tuple[int, int]:
        """Screen pixel of the top-left corner of tile ``(tx, ty)``."""
        return (
            int(math.floor(self.offset_x + tx * self.tile_size)),
            int(math.floor(self.offset_y + ty * self.tile_size)),
        )

    def tile_center(self, tx: float, ty: float) -> tuple[int, int]:
        """Screen pixel at the centre of tile ``(tx, ty)``."""
        return self.tile_to_screen(tx + 0.5, ty + 0.5)

    def screen_to_tile(self, px: float, py: float) -> tuple[int, int]:
        """The tile under a screen pixel; may lie outside the map (the caller checks bounds)."""
        return (
            int(math.floor((px - self.offset_x) / self.tile_size)),
            int(math.floor((py - self.offset_y) / self.tile_size)),
        )

    def pan(self, dx: float, dy: float) -> None:
        """Move the map by ``(dx, dy)`` screen pixels (positive moves the map right/down)."""
        self.offset_x += dx
        self.offset_y += dy

    def set_tile_size(self, size: int, anchor: tuple[float, float]) -> None:
        """Zoom to ``size`` keeping the map point under ``anchor`` (a screen pixel) where it is."""
        # World position (in tiles) under the anchor before the zoom must stay under it afterwards.
        wx = (anchor[0] - self.offset_x) / self.tile_size
        wy = (anchor[1] - self.offset_y) / self.tile_size
        self.tile_size = int(size)
        self.offset_x = anchor[0] - wx * self.tile_size
        self.offset_y = anchor[1] - wy * self.tile_size

    def zoom(self, steps: int, anchor: tuple[float, float]) -> None:
        """Zoom in (``steps > 0``) or out by ladder steps around a screen pixel."""
        i = _nearest_level(self.tile_size)
        j = min(max(i + steps, 0), len(ZOOM_LEVELS) - 1)
        self.set_tile_size(ZOOM_LEVELS[j], anchor)

    def fit(self, map_w: int, map_h: int, viewport: tuple[int, int, int, int]) -> None:
        """Choose the largest zoom level showing the whole map in ``viewport`` and centre it.

        Args:
            map_w: Map width in tiles.
            map_h: Map height in tiles.
            viewport: ``(x, y, w, h)`` screen rectangle the map should fill.
        """
        vx, vy, vw, vh = viewport
        fitting = [s for s in ZOOM_LEVELS if s * map_w <= vw and s * map_h <= vh]
        self.tile_size = fitting[-1] if fitting else ZOOM_LEVELS[0]
        self.offset_x = vx + (vw - map_w * self.tile_size) // 2
        self.offset_y = vy + (vh - map_h * self.tile_size) // 2


def _nearest_level(size: int) -> int:
    return min(range(len(ZOOM_LEVELS)), key=lambda i: abs(ZOOM_LEVELS[i] - size))
