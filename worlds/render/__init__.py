"""Seeing a world: pygame drawing of :class:`~worlds.view.WorldView` snapshots.

- :class:`Renderer` draws a view (tile map, role-coloured agents, speech bubbles, HUD) onto any
  pygame surface, with a :class:`Camera` for pan and zoom and pixel → tile / agent lookups.
- :class:`Viewer` is the interactive window; the simulation loop drives it
  (``handle_events`` → ``should_step`` → ``draw``) and supplies ``inspect(name)`` for the inspector.
- :class:`Recorder` writes the same frames headless to ``.mp4`` or ``.gif``; :func:`snapshot`
  saves one frame as a PNG.

Everything works without a display under ``SDL_VIDEODRIVER=dummy``.
"""

import os

# Keep pygame's import banner out of CLI output and logs.
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

from worlds.render.camera import ZOOM_LEVELS, Camera  # noqa: E402
from worlds.render.palette import ROLE_COLORS, TILE_COLORS, role_color, tile_color  # noqa: E402
from worlds.render.recorder import Recorder, RecordingError, snapshot, surface_to_array  # noqa: E402
from worlds.render.renderer import Renderer  # noqa: E402
from worlds.render.viewer import SPEEDS, Viewer  # noqa: E402

__all__ = [
    "Camera",
    "ROLE_COLORS",
    "Recorder",
    "RecordingError",
    "Renderer",
    "SPEEDS",
    "TILE_COLORS",
    "Viewer",
    "ZOOM_LEVELS",
    "role_color",
    "snapshot",
    "surface_to_array",
    "tile_color",
]
