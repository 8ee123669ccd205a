"""Draw a :class:`~worlds.view.WorldView` onto a pygame surface: map, agents, speech, HUD.

The renderer is pure drawing: it never opens a window, so the interactive viewer and the headless
recorder share it. It knows worlds only through ``WorldView`` (see ``worlds/view.py``).

Speed matters because a village holds hundreds of agents: the tile layer is painted once per
(tile map, zoom, day/night) and blitted each frame; agent markers and bubble texts are cached
surfaces, so a frame costs a few hundred blits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pygame

from worlds.render.camera import Camera
from worlds.render.palette import Color, luminance, role_color, shade
from worlds.render.text import ellipsize, font, wrap
from worlds.render.tiles import paint_tiles
from worlds.view import AgentView, WorldView

Stats = Mapping[str, float | int | str]

BACKGROUND: Color = (26, 28, 34)
HUD_COLOR: Color = (22, 24, 30)
BUBBLE_COLOR: Color = (252, 250, 242)
BUBBLE_TEXT: Color = (30, 30, 36)
SELECT_COLOR: Color = (255, 236, 90)
REFUSED_COLOR: Color = (235, 40, 40)
_OUTLINE: Color = (24, 24, 28)


@dataclass(frozen=True)
class Placed:
    """Where an agent's marker was drawn: centre ``(cx, cy)`` and radius ``r``, in screen pixels."""

    agent: AgentView
    cx: int
    cy: int
    r: int


class Renderer:
    """Draws world views; holds the camera and the caches that make redrawing cheap.

    Args:
        tile_size: Initial zoom, in pixels per tile.
        hud_height: Height of the HUD bar at the top of the surface, in pixels.
        max_bubbles: At most this many speech bubbles per frame; further speakers get a small
            "…" badge instead, so a crowd stays readable.
        legend: Draw a role colour legend in the bottom-left corner.

    Attributes:
        camera: Pan and zoom; change it directly or through the viewer.
        bubbles: After :meth:`draw`, the screen rectangle of each speech bubble, by agent name.
    """

    def __init__(
        self, tile_size: int = 16, *, hud_height: int = 30, max_bubbles: int = 40, legend: bool = True
    ):
        self.camera = Camera(tile_size=tile_size)
        self.hud_height = hud_height
        self.max_bubbles = max_bubbles
        self.legend = legend
        self.bubbles: dict[str, pygame.Rect] = {}
        self._tiles_key: tuple[np.ndarray, tuple[tuple[int, str], ...]] | None = None
        self._layers: dict[tuple[int, bool], pygame.Surface] = {}
        self._markers: dict[tuple, pygame.Surface] = {}
        self._bubble_text: dict[tuple[str, int], pygame.Surface] = {}
        self._labels: dict[tuple[str, bool], pygame.Surface] = {}

    # ----------------------------------------------------------------- geometry

    def viewport(self, size: tuple[int, int]) -> pygame.Rect:
        """The part of a surface of ``size`` where the map shows (everything below the HUD)."""
        return pygame.Rect(0, self.hud_height, size[0], max(0, size[1] - self.hud_height))

    def fit(self, view: WorldView, size: tuple[int, int]) -> None:
        """Zoom and centre the camera so the whole map fits a surface of ``size``."""
        h, w = view.tiles.shape
        self.camera.fit(w, h, tuple(self.viewport(size)))

    def tile_at(self, view: WorldView, pixel: tuple[int, int]) -> tuple[int, int] | None:
        """The map tile ``(x, y)`` under a screen pixel, or ``None`` off the map or on the HUD."""
        if pixel[1] < self.hud_height:
            return None
        tx, ty = self.camera.screen_to_tile(*pixel)
        h, w = view.tiles.shape
        return (tx, ty) if 0 <= tx < w and 0 <= ty < h else None

    def agent_at(self, view: WorldView, pixel: tuple[int, int]) -> AgentView | None:
        """The agent whose marker covers a screen pixel (the topmost if several), else ``None``.

        At small zoom markers are tiny, so a click on a tile with agents but off every marker still
        picks the topmost agent standing on that tile.
        """
        if pixel[1] < self.hud_height:
            return None
        placed = self.layout(view)
        for p in reversed(placed):  # drawn last = on top
            if (pixel[0] - p.cx) ** 2 + (pixel[1] - p.cy) ** 2 <= (p.r + 1) ** 2:
                return p.agent
        tile = self.tile_at(view, pixel)
        if tile is None:
            return None
        for p in reversed(placed):
            if (p.agent.x, p.agent.y) == tile:
                return p.agent
        return None

    def layout(self, view: WorldView) -> list[Placed]:
        """Marker positions for every agent, in drawing order.

        Agents sharing a tile are spread on a small ring inside it so each stays visible and clickable.
        """
        s = self.camera.tile_size
        crowd: dict[tuple[int, int], list[AgentView]] = {}
        for a in view.agents:
            crowd.setdefault((a.x, a.y), []).append(a)
        placed: list[Placed] = []
        for (x, y), group in crowd.items():
            cx, cy = self.camera.tile_center(x, y)
            if len(group) == 1:
                # A marker as wide as its tile: at the usual 16 px zoom anything smaller makes the initial unreadable.
                placed.append(Placed(group[0], cx, cy, max(2, round(s * 0.5))))
                continue
            ring, r = s * 0.26, max(2, round(s * 0.32))
            for k, a in enumerate(group):
                ang = -math.pi / 2 + 2 * math.pi * k / len(group)
                placed.append(
                    Placed(a, cx + round(ring * math.cos(ang)), cy + round(ring * math.sin(ang)), r)
                )
        return placed

    # ----------------------------------------------------------------- drawing

    def render(self, view: WorldView, size: tuple[int, int], stats: Stats | None = None) -> pygame.Surface:
        """Draw ``view`` on a new offscreen surface of ``size`` pixels and return it."""
        surface = pygame.Surface(size)
        self.draw(surface, view, stats)
        return surface

    def draw(
        self,
        surface: pygame.Surface,
        view: WorldView,
        stats: Stats | None = None,
        selected: str | None = None,
        map_area: pygame.Rect | None = None,
    ) -> None:
        """Draw one frame.

        Args:
            surface: Target surface (a window or an offscreen surface); drawn over entirely.
            view: The world at this tick.
            stats: Extra numbers for the HUD, e.g. ``{"decisions/s": 312.5}``, shown in order.
            selected: Name of an agent to highlight (the one open in the inspector).
            map_area: Where the map may draw (default: all below the HUD); the viewer passes the
                area left of its inspector panel so bubbles and the legend are not hidden under it.
        """
        size = surface.get_size()
        vp = self.viewport(size) if map_area is None else map_area.clip(self.viewport(size))
        surface.fill(BACKGROUND)
        surface.set_clip(vp)
        surface.blit(self._tile_layer(view), self.camera.tile_to_screen(0, 0))
        placed = self.layout(view)
        s = self.camera.tile_size
        for p in placed:
            self._draw_marker(surface, p)
            if s >= 32 or p.agent.name == selected:
                self._draw_label(surface, p, highlight=p.agent.name == selected)
        for p in placed:
            if p.agent.name == selected:
                pygame.draw.circle(surface, SELECT_COLOR, (p.cx, p.cy), p.r + 3, width=2)
        self._draw_bubbles(surface, placed, vp, selected)
        if self.legend:
            self._draw_legend(surface, view, vp)
        surface.set_clip(None)
        self._draw_hud(surface, view, stats)

    def _tile_layer(self, view: WorldView) -> pygame.Surface:
        kinds = tuple(sorted(view.tile_kinds.items()))
        key = self._tiles_key
        # Comparing a 48x48 array costs microseconds; repainting costs milliseconds.
        if key is None or key[1] != kinds or not np.array_equal(key[0], view.tiles):
            self._tiles_key = (np.array(view.tiles, copy=True), kinds)
            self._layers.clear()
        layer_key = (self.camera.tile_size, view.is_night)
        layer = self._layers.get(layer_key)
        if layer is None:
            if len(self._layers) >= 4:  # zooming through every level must not keep every layer
                self._layers.clear()
            layer = paint_tiles(view.tiles, view.tile_kinds, self.camera.tile_size, view.is_night)
            self._layers[layer_key] = layer
        return layer

    def _marker(self, role: str, initial: str, r: int, refused: bool) -> pygame.Surface:
        key = (role, initial, r, refused)
        surf = self._markers.get(key)
        if surf is None:
            color = role_color(role)
            d = 2 * r + 3
            surf = pygame.Surface((d, d + 2), pygame.SRCALPHA)
            c = r + 1
            pygame.draw.circle(surf, (0, 0, 0, 90), (c, c + 2), r)  # soft drop shadow
            pygame.draw.circle(surf, _OUTLINE if not refused else REFUSED_COLOR, (c, c), r)
            pygame.draw.circle(surf, color, (c, c), max(1, r - (1 if r < 8 else 2)))
            if r >= 6:
                glyph = font(max(11, int(r * 1.6)), bold=True).render(
                    initial, True, (20, 20, 24) if luminance(color) > 140 else (250, 250, 250)
                )
                surf.blit(glyph, glyph.get_rect(center=(c, c + 1)))
            self._markers[key] = surf
        return surf

    def _draw_marker(self, surface: pygame.Surface, p: Placed) -> None:
        initial = (p.agent.name[:1] or "?").upper()
        m = self._marker(p.agent.role, initial, p.r, p.agent.refused is not None)
        surface.blit(m, (p.cx - p.r - 1, p.cy - p.r - 1))

    def _draw_label(self, surface: pygame.Surface, p: Placed, highlight: bool) -> None:
        key = (p.agent.name, highlight)
        pill = self._labels.get(key)
        if pill is None:
            if len(self._labels) > 2048:
                self._labels.clear()
            f = font(15, bold=highlight)
            text = f.render(ellipsize(p.agent.name, f, 110), True, (250, 250, 250))
            pill = pygame.Surface(text.get_rect().inflate(6, 2).size, pygame.SRCALPHA)
            pill.fill((20, 20, 26, 190))
            pill.blit(text, text.get_rect(center=pill.get_rect().center))
            self._labels[key] = pill
        surface.blit(pill, pill.get_rect(midtop=(p.cx, p.cy + p.r + 3)))

    def _bubble(self, utterance: str, max_w: int) -> pygame.Surface:
        key = (utterance, max_w)
        surf = self._bubble_text.get(key)
        if surf is None:
            if len(self._bubble_text) > 512:  # utterances change every tick; bound the cache
                self._bubble_text.clear()
            f = font(16)
            lines = wrap(utterance, f, max_w - 12, max_lines=3) or ["…"]
            lh = f.get_linesize()
            w = max(f.size(line)[0] for line in lines) + 12
            rect = pygame.Rect(0, 0, w, lh * len(lines) + 8)
            surf = pygame.Surface((rect.w + 2, rect.h + 2), pygame.SRCALPHA)
            # A soft shadow lifts the bubble off a busy map.
            pygame.draw.rect(surf, (0, 0, 0, 70), rect.move(2, 2), border_radius=7)
            pygame.draw.rect(surf, BUBBLE_COLOR, rect, border_radius=7)
            pygame.draw.rect(surf, (70, 70, 80), rect, width=1, border_radius=7)
            for i, line in enumerate(lines):
                surf.blit(f.render(line, True, BUBBLE_TEXT), (6, 4 + i * lh))
            self._bubble_text[key] = surf
        return surf

    def _draw_bubbles(
        self, surface: pygame.Surface, placed: list[Placed], vp: pygame.Rect, selected: str | None
    ) -> None:
        self.bubbles = {}
        speakers = [p for p in placed if p.agent.utterance]
        speakers.sort(key=lambda p: p.agent.name != selected)  # the inspected agent speaks first
        taken: list[pygame.Rect] = []
        markers = [pygame.Rect(p.cx - p.r, p.cy - p.r, 2 * p.r, 2 * p.r) for p in placed]
        max_w = max(80, min(220, vp.w // 3))
        for p in speakers:
            if not vp.collidepoint(p.cx, p.cy):
                continue
            rect = None
            if len(self.bubbles) < self.max_bubbles:
                bubble = self._bubble(p.agent.utterance or "", max_w)
                rect = self._place_bubble(bubble.get_rect(), p, vp, taken, markers)
            if rect is None:
                self._draw_speaking_badge(surface, p)
                continue
            # The tail points from the bubble's nearest edge to the speaker's marker.
            above = rect.bottom <= p.cy
            edge_y = rect.bottom - 1 if above else rect.top + 1
            tip_y = p.cy - p.r if above else p.cy + p.r
            bx = min(max(p.cx, rect.left + 8), rect.right - 8)
            tail = [(bx - 5, edge_y), (bx + 5, edge_y), (p.cx, tip_y)]
            pygame.draw.polygon(surface, BUBBLE_COLOR, tail)
            pygame.draw.lines(surface, (70, 70, 80), False, [tail[0], tail[2], tail[1]])
            surface.blit(bubble, rect)
            taken.append(rect)
            self.bubbles[p.agent.name] = rect

    @staticmethod
    def _place_bubble(
        box: pygame.Rect, p: Placed, vp: pygame.Rect, taken: list[pygame.Rect], markers: list[pygame.Rect]
    ) -> pygame.Rect | None:
        gap = 6
        candidates = [
            box.copy().move(p.cx - box.w // 2, p.cy - p.r - gap - box.h),  # above, centred
            box.copy().move(p.cx - box.w + 12, p.cy - p.r - gap - box.h),  # above, to the left
            box.copy().move(p.cx - 12, p.cy - p.r - gap - box.h),  # above, to the right
            box.copy().move(p.cx - box.w // 2, p.cy + p.r + gap),  # below
        ]
        blocked = [t.inflate(4, 4) for t in taken]
        fallback = None
        for rect in candidates:
            # Keep it inside the map viewport, hence never over the HUD.
            rect.clamp_ip(vp)
            if rect.collidepoint(p.cx, p.cy) or rect.collidelist(blocked) != -1:
                continue  # over its own speaker (after clamping) or over another bubble
            if rect.collidelist(markers) == -1:
                return rect
            # Covering other agents is allowed, but only when no spot leaves them visible.
            fallback = fallback or rect
        return fallback

    @staticmethod
    def _draw_speaking_badge(surface: pygame.Surface, p: Placed) -> None:
        # A crowd's overflow speakers: a tiny "…" pill shows they talk without covering the map.
        rect = pygame.Rect(0, 0, max(9, p.r + 5), max(6, p.r // 2 + 4))
        rect.midbottom = (p.cx + p.r // 2, p.cy - p.r + 1)
        pygame.draw.rect(surface, BUBBLE_COLOR, rect, border_radius=3)
        for i in (-1, 0, 1):
            surface.fill(BUBBLE_TEXT, (rect.centerx + i * 3 - 1, rect.centery, 2, 1))

    def _draw_legend(self, surface: pygame.Surface, view: WorldView, vp: pygame.Rect) -> None:
        roles = sorted({a.role for a in view.agents})
        if not roles:
            return
        f = font(15)
        lh = f.get_linesize() + 2
        w = max(f.size(r)[0] for r in roles) + 30
        box = pygame.Rect(vp.x + 8, vp.bottom - 8 - lh * len(roles) - 8, w, lh * len(roles) + 8)
        panel = pygame.Surface(box.size, pygame.SRCALPHA)
        panel.fill((18, 20, 26, 170))
        surface.blit(panel, box)
        for i, role in enumerate(roles):
            cy = box.y + 4 + i * lh + lh // 2
            pygame.draw.circle(surface, _OUTLINE, (box.x + 12, cy), 6)
            pygame.draw.circle(surface, role_color(role), (box.x + 12, cy), 5)
            surface.blit(f.render(role, True, (230, 230, 232)), (box.x + 24, cy - f.get_height() // 2))

    def _draw_hud(self, surface: pygame.Surface, view: WorldView, stats: Stats | None) -> None:
        width = surface.get_width()
        bar = pygame.Rect(0, 0, width, self.hud_height)
        surface.fill(HUD_COLOR, bar)
        surface.fill(shade(HUD_COLOR, 0.25), (0, bar.bottom - 1, width, 1))
        items: list[tuple[str, str]] = [("tick", str(view.tick)), ("agents", str(len(view.agents)))]
        items += [(k, format_stat(v)) for k, v in (stats or {}).items()]
        if view.score is not None:
            items.append(("score", format_stat(view.score)))
        label_f, value_f = font(17), font(19, bold=True)
        x, cy = 10, bar.centery
        # Day/night icon first: a sun or a crescent moon.
        if view.is_night:
            pygame.draw.circle(surface, (226, 230, 250), (x + 7, cy), 7)
            pygame.draw.circle(surface, HUD_COLOR, (x + 10, cy - 3), 6)
        else:
            pygame.draw.circle(surface, (255, 206, 70), (x + 7, cy), 6)
        x += 24
        for label, value in items:
            lab = label_f.render(label, True, (150, 156, 170))
            val = value_f.render(value, True, (245, 245, 248))
            need = lab.get_width() + 5 + val.get_width()
            if x + need > width - 8:
                surface.blit(label_f.render("…", True, (150, 156, 170)), (x, cy - lab.get_height() // 2))
                break
            surface.blit(lab, (x, cy - lab.get_height() // 2))
            surface.blit(val, (x + lab.get_width() + 5, cy - val.get_height() // 2))
            x += need + 18


def format_stat(value: float | int | str) -> str:
    """A HUD number: integers as they are, floats with fewer decimals the bigger they are."""
    if isinstance(value, (bool, str)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    v = float(value)
    if not math.isfinite(v):
        return str(v)
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
