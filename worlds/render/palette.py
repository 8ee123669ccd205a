"""Colours for tiles and roles, day and night.

Kept apart from the drawing code so that tests, legends and custom worlds can ask "what colour is a
farmer?" without a pygame surface. Every colour is a plain ``(r, g, b)`` tuple.
"""

from __future__ import annotations

import colorsys
import zlib

Color = tuple[int, int, int]

#: Base colour per tile kind used by the village (and any world that reuses these names).
TILE_COLORS: dict[str, Color] = {
    "grass": (112, 170, 86),
    "field": (222, 196, 112),
    "forest": (52, 112, 64),
    "river": (70, 136, 206),
    "water": (70, 136, 206),
    "bridge": (150, 112, 72),
    "market": (196, 182, 160),
    "home": (178, 104, 78),
    "tavern": (132, 74, 58),
    "path": (212, 190, 146),
}

#: Marker colour per role; chosen to stand out against every tile colour above.
ROLE_COLORS: dict[str, Color] = {
    "farmer": (244, 160, 36),
    "merchant": (156, 84, 214),
    "woodcutter": (204, 52, 44),
    "fisher": (36, 200, 220),
    "innkeeper": (240, 100, 170),
    "villager": (245, 245, 240),
}

# Night is darker and slightly blue, the way dusk reads in most 2D games.
_NIGHT_SCALE = (0.46, 0.5, 0.66)


def _hashed_hue(name: str) -> float:
    # crc32, not hash(): Python salts str hashes per process, and colours must not change between runs.
    return (zlib.crc32(name.encode("utf-8")) % 360) / 360.0


def tile_color(kind: str, night: bool = False) -> Color:
    """The fill colour of a tile kind.

    Args:
        kind: Tile kind name, e.g. ``"grass"``. Unknown kinds get a muted colour derived from the
            name, so two unknown kinds stay distinguishable and keep their colour between runs.
        night: Whether to return the darker night variant.

    Returns:
        An ``(r, g, b)`` tuple.
    """
    base = TILE_COLORS.get(kind)
    if base is None:
        r, g, b = colorsys.hsv_to_rgb(_hashed_hue(kind), 0.25, 0.7)
        base = (int(r * 255), int(g * 255), int(b * 255))
    return darken(base) if night else base


def role_color(role: str) -> Color:
    """The marker colour of a role; unknown roles get a bright, stable colour hashed from the name."""
    known = ROLE_COLORS.get(role)
    if known is not None:
        return known
    r, g, b = colorsys.hsv_to_rgb(_hashed_hue(role), 0.65, 0.95)
    return (int(r * 255), int(g * 255), int(b * 255))


def darken(color: Color) -> Color:
    """The night variant of a colour."""
    return tuple(int(c * s) for c, s in zip(color, _NIGHT_SCALE, strict=True))  # type: ignore[return-value]


def shade(color: Color, amount: float) -> Color:
    """Lighten (``amount > 0``) or darken (``amount < 0``) a colour by a fraction of its range."""
    if amount >= 0:
        return tuple(int(c + (255 - c) * amount) for c in color)  # type: ignore[return-value]
    return tuple(int(c * (1 + amount)) for c in color)  # type: ignore[return-value]


def luminance(color: Color) -> float:
    """Perceived brightness in 0..255, used to pick black or white text on a colour."""
    r, g, b = color
    return 0.299 * r + 0.587 * g + 0.114 * b
