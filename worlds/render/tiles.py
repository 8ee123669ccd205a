"""Painting the tile map into one surface, which the renderer caches and blits every frame.

Each tile is filled with its kind's colour (slightly varied per position, so large areas do not look
flat) and, when tiles are big enough to read, a small motif: furrows on fields, tree crowns in
forests, ripples on the river, stalls on the market, roofs on homes and the tavern. Motifs keep clear
of the top-left corner of each tile, so that corner always shows the kind's own colour.
"""

from __future__ import annotations

import numpy as np
import pygame

from worlds.render.palette import Color, shade, tile_color

# Below this tile size motifs would be noise; plain colour reads better.
_MOTIF_MIN_SIZE = 8
_WINDOW_GLOW: Color = (255, 214, 120)


def _jitter(x: int, y: int) -> float:
    # Cheap deterministic per-tile noise in [-0.025, 0.025]: large hashing primes, no RNG state.
    # Enough to break up flat areas; more reads as a checkerboard when zoomed in.
    h = (x * 73856093) ^ (y * 19349663)
    return ((h % 11) - 5) / 200.0


def paint_tiles(tiles: np.ndarray, kinds: dict[int, str], tile_size: int, night: bool) -> pygame.Surface:
    """Paint a whole tile map.

    Args:
        tiles: ``(H, W)`` integer tile codes.
        kinds: Code to kind name; codes missing from it are painted as kind ``"unknown"``.
        tile_size: Side of a tile in pixels.
        night: Paint the night palette (darker, lit windows).

    Returns:
        A surface of ``(W * tile_size, H * tile_size)`` pixels.
    """
    h, w = tiles.shape
    s = tile_size
    surf = (
        pygame.Surface((w * s, h * s)).convert()
        if pygame.display.get_surface()
        else pygame.Surface((w * s, h * s))
    )
    for code in np.unique(tiles):
        kind = kinds.get(int(code), "unknown")
        base = tile_color(kind, night)
        motif = _MOTIFS.get(kind) if s >= _MOTIF_MIN_SIZE else None
        for y, x in zip(*np.nonzero(tiles == code), strict=True):
            rect = pygame.Rect(int(x) * s, int(y) * s, s, s)
            color = shade(base, _jitter(int(x), int(y)))
            surf.fill(color, rect)
            if motif is not None:
                motif(surf, rect, color, int(x), int(y), night)
    return surf


def _grass(surf: pygame.Surface, r: pygame.Rect, c: Color, x: int, y: int, night: bool) -> None:
    dark = shade(c, -0.18)
    for i in range(2):
        h = ((x + 3 * i) * 2654435761 ^ y * 40503) & 0xFFFF
        px = r.x + r.w // 4 + (h % (r.w // 2))
        py = r.y + r.h // 3 + ((h >> 5) % (r.h // 2))
        pygame.draw.line(surf, dark, (px, py), (px, py - max(1, r.h // 8)))
        pygame.draw.line(surf, dark, (px + 1, py), (px + 2, py - max(1, r.h // 10)))


def _field(surf: pygame.Surface, r: pygame.Rect, c: Color, x: int, y: int, night: bool) -> None:
    furrow = shade(c, -0.2)
    step = max(3, r.h // 4)
    for yy in range(r.y + step, r.bottom, step):
        pygame.draw.line(surf, furrow, (r.x + 2, yy), (r.right - 1, yy))


def _forest(surf: pygame.Surface, r: pygame.Rect, c: Color, x: int, y: int, night: bool) -> None:
    cx, cy = r.x + r.w // 2 + (1 if (x + y) % 2 else -1), r.y + r.h // 2 + 1
    rad = max(2, int(r.w * 0.36))
    pygame.draw.circle(surf, shade(c, -0.3), (cx, cy + 1), rad)
    pygame.draw.circle(surf, shade(c, 0.12), (cx, cy), rad - 1)
    pygame.draw.circle(surf, shade(c, 0.3), (cx - rad // 3, cy - rad // 3), max(1, rad // 3))


def _river(surf: pygame.Surface, r: pygame.Rect, c: Color, x: int, y: int, night: bool) -> None:
    light = shade(c, 0.3)
    off = (x * 3 + y) % 3
    for k in (1, 2):
        yy = r.y + k * r.h // 3 + off - 1
        x0 = r.x + r.w // 5 + (k - 1) * r.w // 4
        pygame.draw.line(surf, light, (x0, yy), (x0 + r.w // 3, yy))


def _market(surf: pygame.Surface, r: pygame.Rect, c: Color, x: int, y: int, night: bool) -> None:
    seam = shade(c, -0.1)
    pygame.draw.line(surf, seam, (r.x + r.w // 2, r.y + 2), (r.x + r.w // 2, r.bottom - 1))
    pygame.draw.line(surf, seam, (r.x + 2, r.y + r.h // 2), (r.right - 1, r.y + r.h // 2))
    if (x * 7 + y * 3) % 4 == 0:  # a stall on some tiles: striped awning over a counter
        awning = (200, 70, 60) if (x + y) % 2 else (60, 120, 190)
        if night:
            awning = shade(awning, -0.5)
        top = pygame.Rect(r.x + r.w // 6, r.y + r.h // 4, r.w * 2 // 3, max(2, r.h // 4))
        pygame.draw.rect(surf, awning, top)
        for sx in range(top.x + 2, top.right, 4):
            pygame.draw.line(surf, shade(awning, 0.5), (sx, top.y), (sx, top.bottom - 1))
        pygame.draw.rect(surf, shade(c, -0.35), (top.x, top.bottom, top.w, max(2, r.h // 4)))


def _house(surf: pygame.Surface, r: pygame.Rect, roof: Color, night: bool, sign: bool) -> None:
    inset = max(2, r.w // 8)
    body = pygame.Rect(r.x + inset, r.y + r.h // 2, r.w - 2 * inset, r.h // 2 - inset // 2)
    wall = (226, 210, 178) if not night else (92, 88, 98)
    pygame.draw.rect(surf, wall, body)
    apex = (r.x + r.w // 2, r.y + inset)
    pygame.draw.polygon(
        surf, shade(roof, -0.25), [(r.x + inset - 1, body.y), apex, (r.right - inset, body.y)]
    )
    win = max(2, r.w // 6)
    window = pygame.Rect(body.x + body.w // 4 - win // 2, body.y + body.h // 3, win, win)
    pygame.draw.rect(surf, _WINDOW_GLOW if night else (90, 120, 150), window)
    door = pygame.Rect(
        body.x + body.w * 5 // 8, body.y + body.h // 3, max(2, win), body.bottom - body.y - body.h // 3
    )
    pygame.draw.rect(surf, (96, 62, 40) if not night else (50, 34, 26), door)
    if sign:
        pygame.draw.circle(
            surf, _WINDOW_GLOW if night else (236, 190, 60), (r.right - inset, body.y), max(1, r.w // 10)
        )


def _home(surf: pygame.Surface, r: pygame.Rect, c: Color, x: int, y: int, night: bool) -> None:
    _house(surf, r, c, night, sign=False)


def _tavern(surf: pygame.Surface, r: pygame.Rect, c: Color, x: int, y: int, night: bool) -> None:
    _house(surf, r, c, night, sign=True)


def _path(surf: pygame.Surface, r: pygame.Rect, c: Color, x: int, y: int, night: bool) -> None:
    pebble = shade(c, -0.15)
    h = (x * 2654435761 ^ y * 97) & 0xFFFF
    for i in range(2):
        px = r.x + 2 + (h >> (3 * i)) % max(1, r.w - 4)
        py = r.y + 3 + (h >> (3 * i + 7)) % max(1, r.h - 5)
        surf.fill(pebble, (px, py, 2 if r.w >= 16 else 1, 1))


_MOTIFS = {
    "grass": _grass,
    "field": _field,
    "forest": _forest,
    "river": _river,
    "water": _river,
    "bridge": _path,
    "market": _market,
    "home": _home,
    "tavern": _tavern,
    "path": _path,
}
