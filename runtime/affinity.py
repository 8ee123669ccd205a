"""Binding model workers to CPU cores.

A worker with one ONNX Runtime thread keeps one core busy; left to the kernel, a machine's workers,
the driver and Ray's own threads move between cores. On the 2-core VM the benchmarks run on, binding
each of two workers to its own core served a 1,000-agent village at 1,298 decisions/s against 1,102
floating (1.18×, three alternating pairs, fresh seeds) and 100 agents at 1,191 against 1,114 (1.07×,
eight pairs); through ``murmurate bench village --agents 1000 --repeat 3``, 1.08× (docs/benchmarks.md).
The driver is never bound: it takes whichever core is free while the workers serve.

:func:`plan_cores` decides which cores each replica gets; the worker binds itself
(:func:`bind_process`) when it starts, before its batcher thread exists, so every thread of the
process (Ray's included) stays on those cores.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

log = logging.getLogger(__name__)

PIN_MODES = ("auto", "on", "off")


def available_cores() -> list[int]:
    """The cores this process may run on (all of them where the OS cannot say)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def plan_cores(
    demands: Sequence[int], mode: str = "auto", cores: Sequence[int] | None = None
) -> list[tuple[int, ...] | None]:
    """Cores for each replica, given each one's ONNX Runtime threads (``demands``; 0 = all cores).

    ``"off"`` binds nothing; ``"auto"`` binds only when every replica asks for a fixed number of
    threads and together they fit ``cores`` (this machine's by default), each replica on cores of
    its own; ``"on"`` always binds, dealing cores in turn (replicas then share cores when they do
    not fit). ``None`` in the plan: leave that replica unbound.
    """
    if mode not in PIN_MODES:
        raise ValueError(f"pin must be one of {', '.join(PIN_MODES)}, not {mode!r}")
    cores = list(cores) if cores is not None else available_cores()
    if mode == "off" or not cores:
        return [None] * len(demands)
    if mode == "auto" and (any(d <= 0 for d in demands) or sum(demands) > len(cores)):
        return [None] * len(demands)
    plan, at = [], 0
    for d in demands:
        if d <= 0 or d >= len(cores):
            plan.append(None)  # wants every core: binding would only restrict it
            continue
        plan.append(tuple(sorted({cores[(at + j) % len(cores)] for j in range(d)})))
        at = (at + d) % len(cores)
    return plan


def bind_process(cores: Sequence[int] | None) -> tuple[int, ...] | None:
    """Bind every thread of this process to ``cores``; threads started later inherit it.

    Cores this process may not use are dropped (a worker on a smaller node of a cluster); with
    none left, or where the OS has no affinity call, nothing changes. Returns the cores bound, or
    ``None``.
    """
    if not cores:
        return None
    if not hasattr(os, "sched_setaffinity"):
        log.info("CPU binding is not supported on this platform; workers float")
        return None
    allowed = set(available_cores())
    wanted = tuple(sorted(c for c in cores if c in allowed))
    if not wanted:
        log.warning("cores %s are not available here (%s); not binding", list(cores), sorted(allowed))
        return None
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]  # the calling thread only
    for tid in threads:
        try:
            os.sched_setaffinity(tid, wanted)
        except (ProcessLookupError, PermissionError):  # a thread that just ended
            continue
    return wanted
