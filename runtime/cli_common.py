"""What the command-line modules share: the console and model look-up."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rich.console import Console

console = Console(width=130 if not sys.stdout.isatty() else None)


def has_display() -> bool:
    if os.environ.get("SDL_VIDEODRIVER") in ("dummy", "offscreen"):
        return False
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def resolve_model(spec: str) -> Path:
    """A model directory from ``--model``: a path, or the name of an installed model."""
    from runtime.artifacts import ModelError

    p = Path(spec).expanduser()
    if p.is_dir():
        return p
    from runtime.registry import find_model

    found = find_model(spec)
    if found is None:
        raise ModelError(
            f"--model {spec!r}: no such directory and no installed model of that name (see `murmurate models list`)"
        )
    return found
