"""Headless recording: the renderer's frames written to MP4 or GIF, and PNG snapshots.

No window is needed (run with ``SDL_VIDEODRIVER=dummy`` on a server). MP4 frames stream to ffmpeg
(imageio's ffmpeg plugin, with the binary from ``imageio-ffmpeg``) as they come, so long runs cost
no memory; GIF frames are kept until :meth:`Recorder.close` because Pillow writes a GIF in one go,
so GIF suits short clips (Pillow also merges identical consecutive GIF frames into one longer
frame, so a paused stretch shows as fewer frames of the same total duration)::

    with Recorder("village.mp4", fps=10) as rec:
        for _ in range(ticks):
            world.step(actions)
            rec.add_frame(world.view(), {"decisions/s": dps})
    snapshot(world.view(), "final.png")
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import TracebackType

import imageio.v2 as imageio
import numpy as np
import pygame

from worlds.render.renderer import Renderer, Stats
from worlds.view import WorldView

log = logging.getLogger(__name__)

VIDEO_FORMATS = (".mp4", ".gif")
IMAGE_FORMATS = (".png", ".jpg", ".jpeg", ".bmp")
_GIF_WARN_FRAMES = 500


class RecordingError(ValueError):
    """A recording or snapshot cannot be written where or how it was asked."""


def _check_target(path: Path, formats: tuple[str, ...], what: str) -> None:
    ext = path.suffix.lower()
    if ext not in formats:
        raise RecordingError(
            f"cannot write a {what} to {str(path)!r}: unsupported extension {ext or '(none)'!r}; "
            f"use one of {', '.join(formats)}"
        )
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise RecordingError(f"cannot write {str(path)!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise RecordingError(f"cannot write {str(path)!r}: permission denied")


def surface_to_array(surface: pygame.Surface) -> np.ndarray:
    """A surface's pixels as an ``(H, W, 3)`` uint8 RGB array (the layout image writers expect)."""
    w, h = surface.get_size()
    return np.frombuffer(pygame.image.tobytes(surface, "RGB"), dtype=np.uint8).reshape(h, w, 3)


def _init_pygame() -> None:
    # Fonts need pygame.font; offscreen surfaces need nothing else. No window, no audio.
    if not pygame.font.get_init():
        pygame.font.init()


def snapshot(
    view: WorldView,
    path: str | os.PathLike[str],
    stats: Stats | None = None,
    *,
    size: tuple[int, int] = (1200, 820),
    renderer: Renderer | None = None,
) -> Path:
    """Draw one view offscreen and save it as an image.

    Args:
        view: The world to draw.
        path: Output file; ``.png`` (or ``.jpg``/``.bmp``).
        stats: Extra HUD numbers.
        size: Image size in pixels.
        renderer: Renderer to draw with; a new one fitted to the map if ``None``.

    Returns:
        The path written.

    Raises:
        RecordingError: Unsupported extension or unwritable location.
    """
    target = Path(path)
    _check_target(target, IMAGE_FORMATS, "snapshot")
    _init_pygame()
    if renderer is None:
        renderer = Renderer()
        renderer.fit(view, size)
    pygame.image.save(renderer.render(view, size, stats), str(target))
    return target


class Recorder:
    """Records views to a video file, drawn exactly as the window draws them.

    Args:
        path: Output file; the extension picks the format: ``.mp4`` or ``.gif``.
        size: Frame size in pixels. For MP4 each side is rounded down to an even number (H.264
            needs it); :attr:`size` holds the size actually used.
        fps: Frames per second of the output.
        renderer: Renderer to draw with; a new one, fitted to the map on the first frame, if
            ``None``.

    Attributes:
        frames: Number of frames added so far.

    Raises:
        RecordingError: Unsupported extension or unwritable location (raised here, before any
            simulation time is spent).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        size: tuple[int, int] = (1200, 820),
        fps: float = 10.0,
        renderer: Renderer | None = None,
    ):
        self.path = Path(path)
        _check_target(self.path, VIDEO_FORMATS, "recording")
        if fps <= 0:
            raise RecordingError(f"fps must be positive, got {fps}")
        self.format = self.path.suffix.lower()
        if self.format == ".mp4":
            size = (size[0] - size[0] % 2, size[1] - size[1] % 2)
        if min(size) < 16:
            raise RecordingError(f"frame size {size} is too small; use at least 16x16 pixels")
        self.size = size
        self.fps = fps
        self.frames = 0
        self._fit = renderer is None
        self.renderer = renderer or Renderer()
        _init_pygame()
        self._surface = pygame.Surface(size)
        if self.format == ".mp4":
            # macro_block_size=2: only evenness is required; the default 16 would rescale frames.
            self._writer = imageio.get_writer(
                self.path, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=7,
                macro_block_size=2, pixelformat="yuv420p", ffmpeg_log_level="error",
            )  # fmt: skip
        else:
            # Pillow's GIF duration is in milliseconds; loop=0 repeats forever.
            self._writer = imageio.get_writer(self.path, mode="I", duration=1000.0 / fps, loop=0)
        self._closed = False

    def add_frame(self, view: WorldView, stats: Stats | None = None) -> None:
        """Draw ``view`` and append it as the next frame."""
        if self._closed:
            raise RecordingError(f"recording {str(self.path)!r} is already closed")
        if self._fit:
            self.renderer.fit(view, self.size)
            self._fit = False
        self.renderer.draw(self._surface, view, stats)
        self._writer.append_data(surface_to_array(self._surface))
        self.frames += 1
        if self.format == ".gif" and self.frames == _GIF_WARN_FRAMES:
            log.warning("GIF %s holds %d frames in memory; record long runs to .mp4", self.path, self.frames)

    def snapshot(self, view: WorldView, path: str | os.PathLike[str], stats: Stats | None = None) -> Path:
        """Save ``view`` as an image with this recorder's size and camera."""
        if self._fit:
            self.renderer.fit(view, self.size)
            self._fit = False
        return snapshot(view, path, stats, size=self.size, renderer=self.renderer)

    def close(self) -> None:
        """Finish the file. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._writer.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
