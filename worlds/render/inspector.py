"""The inspector panel: everything about one agent, drawn down the right side of the window.

The top of the panel comes from the agent's :class:`~worlds.view.AgentView` (role, position, coins,
needs as bars, inventory, last action, refusal); below it come the sections returned by the
simulation loop's ``inspect(agent_name)`` callback (persona, memory, last prompt, last decision…),
each a heading and word-wrapped text. The panel scrolls when the text is longer than the window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pygame

from worlds.render.palette import Color, role_color
from worlds.render.text import font, wrap
from worlds.view import AgentView

PANEL_COLOR: Color = (30, 33, 42)  # opaque: text over a busy map is hard to read
_HEADING: Color = (255, 214, 110)
_TEXT: Color = (226, 228, 234)
_DIM: Color = (150, 156, 172)
_PAD = 14


@dataclass
class PanelLayout:
    """Where the panel was drawn, for hit-testing clicks and bounding the scroll.

    Attributes:
        rect: The whole panel, in screen pixels.
        close: The close button.
        content_height: Height of everything in the panel, scrolled or not.
    """

    rect: pygame.Rect
    close: pygame.Rect
    content_height: int


def panel_rect(size: tuple[int, int], top: int) -> pygame.Rect:
    """The panel's rectangle on a window of ``size`` whose map starts at ``top`` (below the HUD)."""
    w = max(240, min(400, int(size[0] * 0.36)))
    return pygame.Rect(size[0] - w, top, w, size[1] - top)


def draw_inspector(
    surface: pygame.Surface,
    rect: pygame.Rect,
    name: str,
    agent: AgentView | None,
    sections: Mapping[str, str],
    scroll: int = 0,
) -> PanelLayout:
    """Draw the inspector panel for one agent.

    Args:
        surface: Where to draw.
        rect: Panel rectangle (see :func:`panel_rect`).
        name: The inspected agent's name (shown even if it has left the view).
        agent: The agent as in the current view, or ``None`` if it is no longer there.
        sections: Heading to text, from the caller's ``inspect`` callback.
        scroll: Pixels scrolled down from the top of the content.

    Returns:
        The layout, for click handling and scroll limits.
    """
    surface.fill(PANEL_COLOR, rect)
    pygame.draw.line(surface, (80, 86, 104), rect.topleft, rect.bottomleft)

    close = pygame.Rect(rect.right - 30, rect.y + 8, 22, 22)
    inner_w = rect.w - 2 * _PAD
    surface.set_clip(rect)
    y = rect.y + _PAD - scroll
    y = _header(surface, rect.x + _PAD, y, inner_w, name, agent)
    if agent is not None:
        y = _agent_facts(surface, rect.x + _PAD, y, inner_w, agent)
    body = font(16)
    for heading, text in sections.items():
        y += 8
        surface.blit(font(16, bold=True).render(heading.upper(), True, _HEADING), (rect.x + _PAD, y))
        y += font(16, bold=True).get_linesize() + 2
        for line in wrap(str(text), body, inner_w) or ["—"]:
            surface.blit(body.render(line, True, _TEXT), (rect.x + _PAD, y))
            y += body.get_linesize()
    content_height = y + scroll - rect.y + _PAD
    # The close button stays put while the content scrolls under it.
    pygame.draw.rect(surface, (70, 74, 90), close, border_radius=5)
    pygame.draw.line(surface, _TEXT, (close.x + 6, close.y + 6), (close.right - 7, close.bottom - 7), 2)
    pygame.draw.line(surface, _TEXT, (close.x + 6, close.bottom - 7), (close.right - 7, close.y + 6), 2)
    surface.set_clip(None)
    return PanelLayout(rect=rect, close=close, content_height=content_height)


def _header(surface: pygame.Surface, x: int, y: int, w: int, name: str, agent: AgentView | None) -> int:
    title = font(26, bold=True)
    if agent is not None:
        pygame.draw.circle(surface, (20, 20, 24), (x + 9, y + 10), 9)
        pygame.draw.circle(surface, role_color(agent.role), (x + 9, y + 10), 7)
    surface.blit(title.render(name, True, (250, 250, 252)), (x + 26, y))
    y += title.get_linesize()
    sub = (
        f"{agent.role} · at ({agent.x}, {agent.y}) · {agent.coins} coins" if agent else "not in the world now"
    )
    surface.blit(font(16).render(sub, True, _DIM), (x, y))
    return y + font(16).get_linesize() + 6


def _agent_facts(surface: pygame.Surface, x: int, y: int, w: int, agent: AgentView) -> int:
    f = font(16)
    lh = f.get_linesize()
    for need, value in agent.needs.items():
        surface.blit(f.render(need, True, _TEXT), (x, y))
        bar = pygame.Rect(x + 80, y + 3, w - 80 - 44, lh - 7)
        v = min(max(float(value), 0.0), 1.0)
        pygame.draw.rect(surface, (58, 62, 76), bar, border_radius=3)
        # One neutral colour: WorldView does not say whether a high need is good (energy) or bad
        # (hunger), so the bar must not pretend to know.
        fill = (110, 164, 230)
        pygame.draw.rect(surface, fill, (bar.x, bar.y, max(1, int(bar.w * v)), bar.h), border_radius=3)
        surface.blit(f.render(f"{v:.2f}", True, _DIM), (bar.right + 6, y))
        y += lh + 2
    facts = []
    if agent.inventory:
        facts.append(("inventory", ", ".join(f"{k} ×{n}" for k, n in agent.inventory.items())))
    if agent.last_action:
        facts.append(("last action", agent.last_action))
    if agent.refused:
        facts.append(("refused", agent.refused))
    if agent.utterance:
        facts.append(("says", f"“{agent.utterance}”"))
    for label, text in facts:
        color = (240, 110, 100) if label == "refused" else _TEXT
        lines = wrap(text, f, w - 90) or [""]
        surface.blit(f.render(label, True, _DIM), (x, y))
        for line in lines:
            surface.blit(f.render(line, True, color), (x + 90, y))
            y += lh
    return y + 4
