"""Process-wide settings for long-lived serving and simulation processes.

Python's cyclic garbage collector runs a collection of the youngest generation every 700 net
allocations and, now and then, a full collection that walks every tracked object. A worker holds
tens of thousands of long-lived objects (the radix cache's nodes, compiled grammars, the model's
session) and allocates hundreds of thousands of short-lived ones a tick (requests, sequences, token
lists); the driver holds the world. Measured at 1,000 village agents through Ray (two workers):
collections paused a worker for up to ≈ 50 ms while a tick's requests were unpickled, and the
driver for up to ≈ 80 ms while it unpickled results — both while the other processes waited.
:func:`quiet_gc` freezes what exists (the collector never walks it again) and collects far less
often; reference counting, which frees almost everything here, is unaffected.
"""

from __future__ import annotations

import gc

DEFAULT_GC_THRESHOLD = 20_000


def quiet_gc(threshold: int = DEFAULT_GC_THRESHOLD) -> None:
    """Collect once, freeze every object alive now, and collect the young generation every
    ``threshold`` allocations (Python's default: 700) and the rest 50 and 100 times less often.

    ``threshold`` 0 leaves the collector as it is. Call it once the process has built its
    long-lived state (a model loaded, a world reset).
    """
    if threshold <= 0:
        return
    gc.unfreeze()  # what an earlier call froze is looked at again, its cyclic garbage collected
    gc.collect()
    gc.freeze()
    gc.set_threshold(threshold, 50, 100)
