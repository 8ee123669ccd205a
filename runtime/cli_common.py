"""What the command-line modules share: the console, model look-up, defaults and worker arguments."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console

from runtime.affinity import PIN_MODES

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
            f"model {spec!r}: no such directory and no installed model of that name (see `murmurate models list`)"
        )
    return found


DEFAULT_ACT_MODEL = "village-act"
"""The shipped act student, fp32: what ``murmurate run village`` and the village benchmarks think with
(and ``VillagePersona.DEFAULT_MODELS``). Not its int8 copy, ``village-act-int8``: that copy scales
each activation tensor by the largest value in the whole batch, so a request's answer depends on the
requests that share its batch, and a run then depends on the number of workers (docs/models.md)."""
DEFAULT_TEACHER = "village-act-teacher"
"""The act student's MoE teacher: ``--cascade`` without a name, the cascade baselines."""

MAX_AUTO_WORKERS = 8


def auto_workers() -> int:
    """Model workers when none are asked for: one single-threaded worker per core, at most 8.

    These models' matrices are small, so ONNX Runtime's intra-op threads gain little, while separate
    worker processes each keep a core busy: on 2 cores, one 2-thread worker served a 1,000-agent
    village at 388 decisions/s and two 1-thread workers at 679 (a 300-agent run 578 → 799).
    """
    return max(1, min(MAX_AUTO_WORKERS, os.cpu_count() or 1))


def auto_worker_cpus(workers: int, models: int) -> float:
    """CPUs each worker reserves in Ray so that ``workers`` replicas of ``models`` models fit this
    machine's cores (a reservation Ray cannot grant would leave the workers waiting forever)."""
    cores = os.cpu_count() or 1
    return max(0.05, min(1.0, cores / max(1, workers * models)))


def add_worker_args(parser: argparse.ArgumentParser) -> None:
    """``--workers``, ``--threads`` and ``--pin``, alike wherever model workers are started."""
    parser.add_argument(
        "--workers", type=int, default=0, help="model worker replicas (default: one per core, at most 8)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="ONNX Runtime threads per worker (default 1; 0: all cores)"
    )
    parser.add_argument(
        "--pin",
        choices=PIN_MODES,
        default="auto",
        help="bind each worker to cores of its own (auto: when Ray is local and the workers' threads "
        "fit the cores; on: always; off: never)",
    )
