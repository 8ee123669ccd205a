"""Fonts and word wrapping shared by the renderer and the inspector panel."""

from __future__ import annotations

from functools import lru_cache

import pygame


@lru_cache(maxsize=32)
def font(size: int, bold: bool = False) -> pygame.font.Font:
    """pygame's bundled default font at ``size`` px, cached (loading a font costs ~1 ms)."""
    if not pygame.font.get_init():
        pygame.font.init()
    f = pygame.font.Font(None, size)
    f.set_bold(bold)
    return f


def wrap(text: str, fnt: pygame.font.Font, max_width: int, max_lines: int | None = None) -> list[str]:
    """Break ``text`` into lines no wider than ``max_width`` pixels.

    Words longer than a line are split by characters. When ``max_lines`` cuts the text short, the
    last kept line ends with an ellipsis so the reader knows something was left out.

    Args:
        text: Text to wrap; newlines start new lines.
        fnt: Font used to measure.
        max_width: Line width limit in pixels.
        max_lines: Keep at most this many lines (``None``: all).

    Returns:
        The lines, possibly empty if ``text`` is empty.
    """
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if fnt.size(candidate)[0] <= max_width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = word
            while fnt.size(line)[0] > max_width and len(line) > 1:
                cut = _fit_chars(line, fnt, max_width)
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = ellipsize(lines[-1] + "…", fnt, max_width)
    return lines


def ellipsize(text: str, fnt: pygame.font.Font, max_width: int) -> str:
    """``text`` cut to ``max_width`` pixels, ending with an ellipsis if it was cut."""
    if fnt.size(text)[0] <= max_width:
        return text
    body = text.rstrip("…")
    while body and fnt.size(body + "…")[0] > max_width:
        body = body[:-1]
    return body + "…"


def _fit_chars(word: str, fnt: pygame.font.Font, max_width: int) -> int:
    n = 1
    while n < len(word) and fnt.size(word[: n + 1])[0] <= max_width:
        n += 1
    return n
