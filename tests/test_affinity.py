"""Binding workers to cores: the plan, and a process bound for real (in a child process)."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest

from runtime.affinity import available_cores, bind_process, plan_cores

CORES = [0, 1, 2, 3]


def test_auto_gives_each_replica_cores_of_its_own_when_they_fit():
    assert plan_cores([1, 1], "auto", CORES) == [(0,), (1,)]
    assert plan_cores([2, 1, 1], "auto", CORES) == [(0, 1), (2,), (3,)]


def test_auto_leaves_replicas_floating_when_they_do_not_fit_or_want_every_core():
    assert plan_cores([1] * 5, "auto", CORES) == [None] * 5  # 5 threads, 4 cores
    assert plan_cores([0, 1], "auto", CORES) == [None, None]  # 0 = all cores
    assert plan_cores([4], "auto", CORES) == [None]  # every core: binding would change nothing


def test_on_deals_cores_in_turn_and_off_binds_nothing():
    assert plan_cores([1] * 6, "on", CORES) == [(0,), (1,), (2,), (3,), (0,), (1,)]
    assert plan_cores([3, 3], "on", CORES) == [(0, 1, 2), (0, 1, 3)]
    assert plan_cores([1, 1], "off", CORES) == [None, None]
    with pytest.raises(ValueError, match="pin must be one of"):
        plan_cores([1], "always", CORES)


def _bind_and_report(cores, q):
    import threading

    bound = bind_process(cores)
    seen = []
    t = threading.Thread(target=lambda: seen.append(sorted(os.sched_getaffinity(0))))
    t.start()
    t.join()
    q.put((bound, sorted(os.sched_getaffinity(0)), seen[0]))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_a_bound_process_and_its_new_threads_stay_on_their_cores():
    core = available_cores()[-1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    cases = [
        ([core], (core,), [core]),
        ([core, 10_000], (core,), [core]),  # cores the process may not use are dropped
        ([10_000], None, available_cores()),  # none left: nothing changes
    ]
    for cores, bound_expected, affinity_expected in cases:
        p = ctx.Process(target=_bind_and_report, args=(cores, q))
        p.start()
        bound, main, thread = q.get(timeout=60)
        p.join(timeout=60)
        assert bound == bound_expected
        assert main == thread == affinity_expected  # the main thread and one started after
    assert available_cores() == sorted(os.sched_getaffinity(0))  # this process was never touched
