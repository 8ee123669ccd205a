"""``ModelWorker``: a Ray actor holding one model's engine, radix cache and continuous batcher.

A caller sends a whole batch in one Ray call (:meth:`ModelWorker.generate`). Inside the actor a
loop thread steps the batcher; batches from different calls join the same running batch between
decode steps, and each call returns when all of its requests are done.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runtime.affinity import available_cores, bind_process
from runtime.types import Request, Result
from runtime.wire import pack, unpack_requests

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker serves its model.

    Args:
        model_dir: the model directory.
        name: the model's name (what requests ask for); defaults to the manifest's.
        providers: ONNX Runtime providers (``"cpu"``, ``"cuda"``, ``"auto"`` or a list).
        threads: ONNX Runtime intra-op threads (0 = all cores).
        max_batch_size: most rows decoding together.
        max_prefill_tokens: most prompt tokens (cached ones included) admitted per step.
        prefill_grouping: how rows admitted together are split into prefill passes (``"cost"``:
            least predicted cost; ``"padding"``: by tail length only; see
            :meth:`runtime.batcher.Batcher._prefill_groups`).
        cache_bytes: radix cache budget; 0 disables prefix caching.
        cache_policy: what the radix cache evicts first: ``"lfu"`` (least often hit, then least
            recently used: an agent's persona, hit every tick, outlives the one-off observation
            tails inserted after it) or ``"lru"``.
        verify: check file checksums on load.
        numpy_hugepages: let numpy back large arrays with transparent huge pages in this process
            (off by default: see :func:`runtime.engine.set_numpy_hugepages`).
        gc_threshold: allocations between young-generation garbage collections in this process,
            whose state is frozen once loaded (:func:`runtime.process.quiet_gc`; 0 keeps Python's
            defaults).
        cpus: the cores this worker's process (every thread of it) is bound to; ``None`` leaves it
            to the OS (:mod:`runtime.affinity`; the scheduler assigns them).
    """

    model_dir: str
    name: str | None = None
    providers: str | tuple[str, ...] | None = None
    threads: int = 0
    max_batch_size: int = 64
    max_prefill_tokens: int = 8192
    prefill_grouping: str = "cost"
    cache_bytes: int = 512 << 20
    cache_policy: str = "lfu"
    verify: bool = True
    numpy_hugepages: bool = False
    gc_threshold: int = 20_000
    cpus: tuple[int, ...] | None = None
    extra: dict = field(default_factory=dict)


def build_batcher(cfg: WorkerConfig):
    """Engine + tokenizer + cache + batcher for ``cfg`` (also used without Ray)."""
    from runtime.artifacts import load_model_dir, model_tokenizer
    from runtime.batcher import Batcher
    from runtime.engine import OrtEngine, set_numpy_hugepages
    from runtime.kv_cache import LFUPolicy, LRUPolicy, RadixCache

    policies = {"lfu": LFUPolicy, "lru": LRUPolicy}
    if cfg.cache_policy not in policies:
        raise ValueError(f"cache_policy must be one of {', '.join(policies)}, not {cfg.cache_policy!r}")
    set_numpy_hugepages(cfg.numpy_hugepages)
    art = load_model_dir(Path(cfg.model_dir), verify=cfg.verify)
    providers = list(cfg.providers) if isinstance(cfg.providers, tuple) else cfg.providers
    engine = OrtEngine(art, providers=providers, intra_op_threads=cfg.threads or None)
    tok = model_tokenizer(art)
    cache = RadixCache(cfg.cache_bytes, policies[cfg.cache_policy]()) if cfg.cache_bytes > 0 else None
    return Batcher(
        engine,
        tok,
        cache,
        max_batch_size=cfg.max_batch_size,
        max_prefill_tokens=cfg.max_prefill_tokens,
        prefill_grouping=cfg.prefill_grouping,
    )


class ModelWorkerImpl:
    """The actor's body (plain class so it can also run in-process)."""

    def __init__(self, cfg: WorkerConfig, worker_id: str = "worker"):
        self.cfg = cfg
        self.worker_id = worker_id
        self.cpus = bind_process(cfg.cpus)  # first, so every thread started below inherits it
        self.batcher = build_batcher(cfg)
        self.batcher.worker_id = worker_id  # results name the replica that served them
        if cfg.gc_threshold:
            from runtime.process import quiet_gc

            quiet_gc(cfg.gc_threshold)
        self.name = cfg.name or self.batcher.engine.artifacts.name
        self._inbox: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"{worker_id}-loop", daemon=True)
        self._thread.start()
        self.started = time.time()

    async def generate(self, requests: list[Request]) -> list[Result]:
        """Serve a batch; returns results in request order (errors as error results)."""
        if not requests:
            return []
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._inbox.put((list(requests), loop, fut))
        return await fut

    async def generate_packed(self, payload: bytes | list[Request]) -> bytes | list[Result]:
        """:meth:`generate` as the scheduler calls it: requests and results packed by
        :func:`runtime.wire.pack_requests` and :func:`runtime.wire.pack` (one ``bytes`` each way, not
        Ray's per-object cloudpickle)."""
        return pack(await self.generate(unpack_requests(payload)))

    def _loop(self) -> None:
        # pending: request id -> (batch index, position); batches collect results until complete
        batches: dict[int, tuple[list, object, object, int]] = {}
        owner: dict[str, tuple[int, int]] = {}
        next_batch = 0
        b = self.batcher
        while not self._stop.is_set():
            block = not b.has_work
            try:
                while True:
                    reqs, loop, fut = self._inbox.get(block=block, timeout=0.05 if block else None)
                    block = False
                    batches[next_batch] = ([None] * len(reqs), loop, fut, len(reqs))
                    for i, r in enumerate(reqs):
                        owner[r.id] = (next_batch, i)
                    b.add_many(reqs)
                    next_batch += 1
            except queue.Empty:
                pass
            if not b.has_work:
                continue
            try:
                finished = b.step()
            except Exception as e:  # never leave callers hanging: fail their requests loudly
                log.exception("batcher step failed")
                finished = b.fail_all(f"engine failure: {type(e).__name__}: {e}")
            for res in finished:
                bi, pos = owner.pop(res.id)
                slots, loop, fut, left = batches[bi]
                slots[pos] = res
                left -= 1
                if left == 0:
                    del batches[bi]
                    loop.call_soon_threadsafe(_resolve, fut, slots)
                else:
                    batches[bi] = (slots, loop, fut, left)

    def stats(self) -> dict:
        s = self.batcher.stats
        cache = self.batcher.cache
        return {
            "worker": self.worker_id,
            "model": self.name,
            "pid": os.getpid(),
            **asdict(s),
            "hit_ratio": s.hit_ratio,
            "cache_bytes": cache.total_bytes if cache else 0,
            "cache_tokens": cache.total_tokens if cache else 0,
            "providers": self.batcher.engine.providers,
            "peak_rss_mb": peak_rss_mb(),
            "bound": self.cpus is not None,
            "cpus": available_cores(),  # read back from the OS: the cores this process may use
        }

    def ping(self) -> str:
        return self.worker_id

    def shutdown(self) -> None:
        self._stop.set()


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _resolve(fut, value) -> None:
    if not fut.done():
        fut.set_result(value)


def remote_worker_class():
    """The Ray actor class (created lazily so importing this module does not import Ray)."""
    import ray

    return ray.remote(ModelWorkerImpl)
