"""The interactive window, driven by the simulation loop.

The viewer owns the window and the user's input, never the simulation: the loop asks it whether to
keep running and whether to step, steps the world itself, and hands it each new view::

    with Viewer(inspect=sim.inspect) as viewer:
        while viewer.handle_events():
            if viewer.should_step():
                sim.step()
            viewer.draw(sim.world.view(), {"decisions/s": sim.decisions_per_second})

Controls: arrows/WASD or mouse drag pan; mouse wheel or +/- zoom; F fits the map; space pauses;
N or . steps once while paused; 1-9 set the speed, [ and ] change it; a click on an agent opens the
inspector (persona, needs, memory, last prompt, last decision) and the wheel scrolls it; a click on
empty ground or its × closes it; Esc closes the inspector, or quits when none is open; H hides the
help line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import pygame

from worlds.render.inspector import PanelLayout, draw_inspector, panel_rect
from worlds.render.renderer import Renderer, Stats
from worlds.render.text import font
from worlds.view import WorldView

log = logging.getLogger(__name__)

#: Ticks per second for speed levels 1..9; 0 means as fast as the simulation can go.
SPEEDS: tuple[float, ...] = (0.5, 1, 2, 4, 8, 15, 30, 60, 0)
PAN_STEP = 48  # pixels per arrow key press (key repeat makes a held key pan smoothly)
_CLICK_SLOP = 4  # a press that moves less than this is a click, not a drag

Inspect = Callable[[str], Mapping[str, str]]

_PAN_KEYS = {
    pygame.K_LEFT: (1, 0), pygame.K_a: (1, 0),
    pygame.K_RIGHT: (-1, 0), pygame.K_d: (-1, 0),
    pygame.K_UP: (0, 1), pygame.K_w: (0, 1),
    pygame.K_DOWN: (0, -1), pygame.K_s: (0, -1),
}  # fmt: skip
_ZOOM_KEYS = {
    pygame.K_PLUS: 1, pygame.K_EQUALS: 1, pygame.K_KP_PLUS: 1,
    pygame.K_MINUS: -1, pygame.K_KP_MINUS: -1,
}  # fmt: skip


class Viewer:
    """A pygame window showing world views, with pan, zoom, pause, speed and an agent inspector.

    Args:
        inspect: ``inspect(agent_name) -> {heading: text}``, called for the agent open in the
            inspector each frame it is drawn (so memory and prompts stay live). ``None`` shows only
            what the view itself carries. If it raises, the panel shows the error instead.
        size: Initial window size in pixels; the window is resizable.
        title: Window title.
        fps: Most frames drawn per second; the loop sleeps instead of redrawing faster.
        speed: Initial speed level, 1..9 (see :data:`SPEEDS`).
        renderer: Renderer to draw with (a default one if ``None``).
        clock: Seconds as a float, for pacing steps and frames; tests pass a simulated clock.

    Attributes:
        paused: Whether stepping is paused.
        speed: Current speed level, 1..9.
        running: False once the user asked to quit.
        selected: Name of the agent open in the inspector, or ``None``.
        inspector: The sections last returned by ``inspect`` for ``selected``.
        screen: The window surface.
    """

    def __init__(
        self,
        inspect: Inspect | None = None,
        *,
        size: tuple[int, int] = (1200, 820),
        title: str = "murmurate",
        fps: float = 30.0,
        speed: int = 5,
        renderer: Renderer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not 1 <= speed <= len(SPEEDS):
            raise ValueError(f"speed must be 1..{len(SPEEDS)}, got {speed}")
        # display + font only: pygame.init() would also open audio, which fails noisily headless.
        pygame.display.init()
        pygame.font.init()
        self.screen = pygame.display.set_mode(size, pygame.RESIZABLE)
        pygame.display.set_caption(title)
        pygame.key.set_repeat(300, 40)
        self.renderer = renderer or Renderer()
        self.fps = fps
        self.clock = clock
        self.speed = speed
        self.paused = False
        self.running = True
        self.show_help = True
        self.selected: str | None = None
        self.inspector: dict[str, str] | None = None
        self._inspect = inspect
        self._view: WorldView | None = None
        self._fitted = False
        self._dirty = True
        self._step_once = False
        self._last_step = float("-inf")
        self._last_frame = float("-inf")
        self._drag: tuple[int, int] | None = None
        self._drag_moved = False
        self._scroll = 0
        self._panel: PanelLayout | None = None

    # ----------------------------------------------------------------- loop API

    @property
    def ticks_per_second(self) -> float:
        """Target simulation speed; 0 means unthrottled."""
        return SPEEDS[self.speed - 1]

    def handle_events(self) -> bool:
        """Process pending input; returns False once the user asked to quit."""
        for event in pygame.event.get():
            self.handle_event(event)
        return self.running

    def should_step(self) -> bool:
        """Whether the simulation should advance one tick now (respects pause and speed)."""
        if not self.running:
            return False
        if self.paused:
            step, self._step_once = self._step_once, False
            return step
        tps = self.ticks_per_second
        now = self.clock()
        if tps == 0:
            self._last_step = now
            return True
        interval = 1.0 / tps
        if now - self._last_step < interval:
            return False
        # Keep a steady cadence, but do not try to catch up after a long stall (e.g. a slow tick).
        self._last_step = now if now - self._last_step > 2 * interval else self._last_step + interval
        return True

    def draw(self, view: WorldView, stats: Stats | None = None) -> bool:
        """Show ``view``; redraws at most ``fps`` times a second and sleeps while nothing is due.

        Args:
            view: The world now.
            stats: Extra HUD numbers, e.g. ``{"decisions/s": 310.0}``.

        Returns:
            Whether a frame was drawn (False when skipped to respect ``fps``).
        """
        # A new view alone does not force a frame: an unthrottled simulation would otherwise redraw
        # every tick; input does (``_dirty``), so the window stays responsive.
        self._view = view
        if not self._fitted:
            self.renderer.fit(view, self.screen.get_size())
            self._fitted = True
        now = self.clock()
        frame = 1.0 / self.fps
        drew = False
        if self._dirty or now - self._last_frame >= frame:
            self._render(view, stats)
            self._last_frame, self._dirty, drew = now, False, True
        # Sleep until the next frame or tick is due, so a paused or slow-speed loop leaves the CPU
        # to the model workers; an unthrottled loop never sleeps.
        tps = self.ticks_per_second
        if self.paused or tps > 0:
            due = self._last_frame + frame
            if not self.paused:
                due = min(due, self._last_step + 1.0 / tps)
            delay = due - self.clock()
            if delay > 0:
                time.sleep(min(delay, frame))  # capped: a simulated clock may jump
        return drew

    def select(self, name: str | None) -> None:
        """Open the inspector on agent ``name`` (``None`` closes it)."""
        self.selected = name
        self._scroll = 0
        self._dirty = True
        self.inspector = self._call_inspect(name) if name is not None else None
        if name is None:
            self._panel = None

    def close(self) -> None:
        """Close the window."""
        self.running = False
        pygame.display.quit()

    def __enter__(self) -> Viewer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- input

    def handle_event(self, event: pygame.event.Event) -> None:
        """Apply one pygame event (``handle_events`` calls this for each pending one)."""
        self._dirty = True
        if event.type == pygame.QUIT:
            self.running = False
        elif event.type == pygame.KEYDOWN:
            self._on_key(event.key)
        elif event.type == pygame.MOUSEBUTTONDOWN:
            self._on_press(event.button, event.pos)
        elif event.type == pygame.MOUSEMOTION and self._drag is not None:
            dx, dy = event.pos[0] - self._drag[0], event.pos[1] - self._drag[1]
            self._drag_moved = self._drag_moved or abs(dx) + abs(dy) >= _CLICK_SLOP
            if self._drag_moved:
                self.renderer.camera.pan(dx, dy)
                self._drag = event.pos
        elif event.type == pygame.MOUSEBUTTONUP and self._drag is not None:
            if not self._drag_moved and event.button == 1:
                self.select(None)  # a plain click on empty ground closes the inspector
            self._drag = None
        elif event.type == pygame.MOUSEWHEEL:
            self._on_wheel(event.y, pygame.mouse.get_pos())

    def _on_key(self, key: int) -> None:
        if key == pygame.K_ESCAPE:
            if self.selected is not None:
                self.select(None)
            else:
                self.running = False
        elif key == pygame.K_SPACE:
            self.paused = not self.paused
        elif key in (pygame.K_n, pygame.K_PERIOD) and self.paused:
            self._step_once = True
        elif pygame.K_1 <= key <= pygame.K_9:
            self.speed = key - pygame.K_0
        elif key == pygame.K_LEFTBRACKET:
            self.speed = max(1, self.speed - 1)
        elif key == pygame.K_RIGHTBRACKET:
            self.speed = min(len(SPEEDS), self.speed + 1)
        elif key in _PAN_KEYS:
            dx, dy = _PAN_KEYS[key]
            self.renderer.camera.pan(dx * PAN_STEP, dy * PAN_STEP)
        elif key in _ZOOM_KEYS:
            self.renderer.camera.zoom(_ZOOM_KEYS[key], self._map_center())
        elif key == pygame.K_f and self._view is not None:
            self.renderer.fit(self._view, self.screen.get_size())
        elif key == pygame.K_h:
            self.show_help = not self.show_help

    def _on_press(self, button: int, pos: tuple[int, int]) -> None:
        if button not in (1, 2, 3):
            return  # 4/5 are the legacy wheel buttons; MOUSEWHEEL handles the wheel
        if self._panel is not None and self._panel.rect.collidepoint(pos):
            if button == 1 and self._panel.close.collidepoint(pos):
                self.select(None)
            return
        if button == 1 and self._view is not None:
            agent = self.renderer.agent_at(self._view, pos)
            if agent is not None:
                self.select(agent.name)
                return
        self._drag, self._drag_moved = pos, False

    def _on_wheel(self, dy: int, pos: tuple[int, int]) -> None:
        if self._panel is not None and self._panel.rect.collidepoint(pos):
            limit = max(0, self._panel.content_height - self._panel.rect.h)
            self._scroll = min(max(self._scroll - dy * 40, 0), limit)
        elif dy:
            self.renderer.camera.zoom(1 if dy > 0 else -1, pos)

    def _map_center(self) -> tuple[int, int]:
        vp = self.renderer.viewport(self.screen.get_size())
        return vp.center

    # ----------------------------------------------------------------- drawing

    def _call_inspect(self, name: str) -> dict[str, str]:
        if self._inspect is None:
            return {}
        try:
            return {str(k): str(v) for k, v in self._inspect(name).items()}
        except Exception as exc:  # the window must survive a broken callback; show why instead
            log.warning("inspect(%r) failed: %r", name, exc)
            return {"error": f"inspect({name!r}) failed: {exc!r}"}

    def _render(self, view: WorldView, stats: Stats | None) -> None:
        self.screen = pygame.display.get_surface() or self.screen  # it changes on resize
        tps = self.ticks_per_second
        hud = dict(stats or {})
        hud["speed"] = "paused" if self.paused else ("max" if tps == 0 else f"{tps:g}/s")
        size = self.screen.get_size()
        area = None
        if self.selected is not None:
            rect = panel_rect(size, self.renderer.hud_height)
            area = pygame.Rect(0, 0, rect.x, size[1])
        self.renderer.draw(self.screen, view, hud, selected=self.selected, map_area=area)
        if self.selected is not None:
            self.inspector = self._call_inspect(self.selected)
            agent = next((a for a in view.agents if a.name == self.selected), None)
            self._panel = draw_inspector(
                self.screen, rect, self.selected, agent, self.inspector, self._scroll
            )
        if self.paused:
            self._badge("PAUSED  (space)", (255, 214, 110), area or self.renderer.viewport(size))
        if self.show_help:
            self._help_line(size)
        pygame.display.flip()

    def _badge(self, text: str, color: tuple[int, int, int], area: pygame.Rect) -> None:
        f = font(20, bold=True)
        img = f.render(text, True, (20, 20, 24))
        box = img.get_rect(midtop=(area.centerx, self.renderer.hud_height + 10)).inflate(16, 8)
        pygame.draw.rect(self.screen, color, box, border_radius=6)
        self.screen.blit(img, img.get_rect(center=box.center))

    def _help_line(self, size: tuple[int, int]) -> None:
        text = "drag/arrows pan · wheel/+- zoom · F fit · space pause · 1-9 [ ] speed · click agent · H help · Esc quit"
        img = font(15).render(text, True, (225, 228, 236))
        right = self._panel.rect.x if self._panel is not None else size[0]
        box = img.get_rect(bottomright=(right - 8, size[1] - 8)).inflate(10, 6)
        bg = pygame.Surface(box.size, pygame.SRCALPHA)
        bg.fill((18, 20, 26, 170))
        self.screen.blit(bg, box)
        self.screen.blit(img, img.get_rect(center=box.center))
