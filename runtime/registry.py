"""Installed models: where ``--model NAME`` looks.

Models live in directories with a ``murmurate.json`` manifest under the search path: the models
shipped inside the package (``exports/models``), then ``~/.cache/murmurate/models`` (or
``$MURMURATE_MODELS``), where ``murmurate models import`` writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from runtime.artifacts import MANIFEST


def cache_dir() -> Path:
    """Where murmurate keeps what it generates (benchmark models, rewritten graphs):
    ``MURMURATE_CACHE`` or ``~/.cache/murmurate``."""
    return Path(os.environ.get("MURMURATE_CACHE", Path.home() / ".cache" / "murmurate"))


def search_path() -> list[Path]:
    paths = [Path(__file__).resolve().parent.parent / "exports" / "models"]
    user = os.environ.get("MURMURATE_MODELS")
    paths.append(Path(user) if user else Path.home() / ".cache" / "murmurate" / "models")
    return paths


def installed_models() -> dict[str, Path]:
    """Model name -> directory, first found wins."""
    out: dict[str, Path] = {}
    for root in search_path():
        if not root.is_dir():
            continue
        for d in sorted(root.iterdir()):
            if not (d / MANIFEST).is_file() and (d / "onnx" / MANIFEST).is_file():
                d = d / "onnx"  # an imported model: <name>/onnx next to <name>/hf
            m = d / MANIFEST
            if m.is_file():
                try:
                    name = json.loads(m.read_text()).get("name", d.name)
                except (OSError, json.JSONDecodeError):
                    continue
                out.setdefault(name, d)
    return out


def find_model(name: str) -> Path | None:
    return installed_models().get(name)
