"""Process-wide tuning for long-lived serving and simulation processes."""

from __future__ import annotations

import gc

import pytest

from runtime.process import DEFAULT_GC_THRESHOLD, quiet_gc


@pytest.fixture
def restore_gc():
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_quiet_gc_freezes_what_exists_and_collects_less_often(restore_gc):
    import weakref

    class Node:  # a reference cycle: only the collector frees it
        def __init__(self):
            self.me = self

    cycle = Node()
    alive = weakref.ref(cycle)
    quiet_gc()
    assert gc.get_threshold() == (DEFAULT_GC_THRESHOLD, 50, 100)
    assert gc.get_freeze_count() > 0
    del cycle  # garbage now, but frozen: no collection looks at it...
    gc.collect()
    assert alive() is not None
    quiet_gc()  # ...until the next call unfreezes, collects and freezes again
    assert alive() is None


def test_quiet_gc_zero_leaves_the_collector_alone(restore_gc):
    gc.set_threshold(700, 10, 10)
    quiet_gc(0)
    assert gc.get_threshold() == (700, 10, 10)
