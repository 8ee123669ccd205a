"""The scheduler: requests from many callers, routed by model name to Ray ``ModelWorker`` replicas.

Callers hand over requests (``submit`` one, or ``generate`` many); a dispatcher thread runs the loop

    receive pending requests → group by model → split over live replicas → one Ray call per chunk
    → collect finished calls → deliver results (re-sending a dead replica's chunk elsewhere)

so each worker gets its requests in batches: never one Ray call per request or per token. A replica
that dies mid-batch is replaced, and its requests are served by a live replica; callers get results,
not exceptions.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, replace

from runtime.affinity import plan_cores
from runtime.cascade import Cascade
from runtime.policy import split_for_replicas
from runtime.types import Request, Result
from runtime.wire import WIRES, pack_requests, unpack
from runtime.worker import ModelWorkerImpl, WorkerConfig

log = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, num_cpus: float | None = None) -> None:
    """Start Ray locally on demand, or join the cluster at ``address`` (``"auto"`` finds a running one)."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, namespace="murmurate", log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, namespace="murmurate", log_to_driver=False)


def ray_cluster() -> str:
    """Where this process's Ray runs, in words: the GCS address and the cluster's CPUs."""
    import ray

    ctx = ray.get_runtime_context()
    cpus = ray.cluster_resources().get("CPU", 0)
    return f"Ray cluster at {ctx.gcs_address} ({cpus:g} CPUs, {len(ray.nodes())} node(s))"


def ModelWorker():  # noqa: N802 - the actor class, named as users know it
    """The Ray actor class wrapping :class:`runtime.worker.ModelWorkerImpl`."""
    import ray

    global _MODEL_WORKER
    if _MODEL_WORKER is None:
        _MODEL_WORKER = ray.remote(ModelWorkerImpl)
    return _MODEL_WORKER


_MODEL_WORKER = None


@dataclass(frozen=True)
class ModelSpec:
    """A model to serve: its worker configuration, how many replicas, what each reserves."""

    worker: WorkerConfig
    replicas: int = 1
    num_cpus: float = 0.5
    num_gpus: float = 0.0

    @property
    def name(self) -> str:
        if self.worker.name:
            return self.worker.name
        from runtime.artifacts import load_model_dir

        return load_model_dir(self.worker.model_dir, verify=False).name


@dataclass
class _Call:
    model: str
    replica: object
    requests: list[Request]
    futures: list[Future]
    attempt: int = 0
    cascades: list[Cascade | None] | None = None  # per request: escalate its result?


class Scheduler:
    """Routes requests by model name to worker replicas, one Ray call per batch.

    Args:
        models: the models to serve.
        address: a Ray cluster to join; ``None`` starts Ray locally when needed.
        max_retries: times a batch is re-sent after its replica died.
        cascades: virtual models served by a student that escalates to a teacher
            (:class:`runtime.cascade.Cascade`); both must be among ``models``.
        pin: bind each replica to cores of its own (:func:`runtime.affinity.plan_cores`):
            ``"auto"`` when Ray runs on this machine and the replicas' threads fit its cores,
            ``"on"`` always, ``"off"`` never. A replica that restarts keeps its cores.
        wire: how a call's requests and results cross Ray: ``"pickle"``, one pickled ``bytes``
            each way (:mod:`runtime.wire`), or ``"ray"``, the lists as they are, through Ray's own
            serializer (what the benchmarks compare against).
    """

    def __init__(
        self,
        models: list[ModelSpec],
        address: str | None = None,
        max_retries: int = 3,
        cascades: list[Cascade] | None = None,
        pin: str = "auto",
        wire: str = "pickle",
    ):
        if wire not in WIRES:
            raise ValueError(f"wire must be one of {', '.join(WIRES)}, not {wire!r}")
        self.wire = wire
        ensure_ray(address)
        self.specs: dict[str, ModelSpec] = {}
        self.replicas: dict[str, list] = {}
        self._serial = 0
        self.max_retries = max_retries
        self.cores: dict[str, list[tuple[int, ...] | None]] = {}  # model -> each replica's cores
        demands = [s.worker.threads for s in models for _ in range(s.replicas)]
        plan = iter(plan_cores(demands, "off" if address and pin == "auto" else pin))
        for spec in models:
            name = spec.name
            spec = replace(spec, worker=replace(spec.worker, name=name))
            if name in self.specs:
                raise ValueError(f"model {name!r} given twice")
            self.specs[name] = spec
            planned = [next(plan) for _ in range(spec.replicas)]
            self.cores[name] = [spec.worker.cpus or p for p in planned]  # a config's own cores win
            self.replicas[name] = [self._start_replica(spec, cpus) for cpus in self.cores[name]]
        self.cascades: dict[str, Cascade] = {}
        for c in cascades or []:
            for m in (c.student, c.teacher):
                if m not in self.specs:
                    raise ValueError(
                        f"cascade {c.name!r}: model {m!r} is not served (serving: {', '.join(self.specs)})"
                    )
            self.cascades[c.name] = c
        self.escalations = 0
        self.cascade_requests = 0
        import ray

        ray.get(
            [r.ping.remote() for reps in self.replicas.values() for r in reps]
        )  # fail early on bad models
        self._inbox: queue.Queue = queue.Queue()
        self._calls: dict = {}  # ObjectRef -> _Call
        self._closed = threading.Event()
        self.ray_calls = 0
        self.requests_served = 0
        self.restarts = 0
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    @property
    def models(self) -> list[str]:
        return list(self.specs)

    def _start_replica(self, spec: ModelSpec, cpus: tuple[int, ...] | None = None):
        self._serial += 1
        wid = f"{spec.worker.name}#{self._serial}"
        return (
            ModelWorker()
            .options(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus or None, max_concurrency=64)
            .remote(replace(spec.worker, cpus=cpus), wid)
        )

    # ---- callers ------------------------------------------------------------------------------
    def submit(self, request: Request) -> Future:
        """Queue one request; the future resolves to its :class:`Result`."""
        return self.submit_many([request])[0]

    def submit_many(self, requests: list[Request]) -> list[Future]:
        """Queue requests together (they leave in the same batch); one future each."""
        if self._closed.is_set():
            raise RuntimeError("scheduler is shut down")
        futs = [Future() for _ in requests]
        self._inbox.put(list(zip(requests, futs)))
        return futs

    def generate(self, requests: list[Request], timeout: float | None = None) -> list[Result]:
        """Serve ``requests``; results in the same order. Unknown models give error results.

        The batch waits on one event rather than a future per request: a future is a lock and a
        condition, and a 1,000-agent tick spent ≈ 15 ms making them while the workers waited.
        """
        if self._closed.is_set():
            raise RuntimeError("scheduler is shut down")
        if not requests:
            return []
        batch = _Batch(len(requests))
        self._inbox.put([(r, _Slot(batch, i)) for i, r in enumerate(requests)])
        if not batch.event.wait(timeout):
            raise TimeoutError(f"{batch.left} of {len(requests)} requests unanswered after {timeout} s")
        return batch.results  # type: ignore[return-value]

    # ---- the loop -----------------------------------------------------------------------------
    def _loop(self) -> None:
        # Blocks on the inbox: callers put request lists there, and each Ray call's completion
        # callback puts a ``_Done`` — no polling, so the dispatcher takes no CPU from the workers.
        while not self._closed.is_set():
            messages = self._receive()
            pending = [item for m in messages if not isinstance(m, _Done) for item in m]
            try:
                if pending:
                    self._dispatch(pending)
                for m in messages:
                    if isinstance(m, _Done) and m.ref in self._calls:
                        self._collect(m.ref, self._calls.pop(m.ref))
            except Exception as e:  # a scheduler bug must not leave callers waiting forever
                log.exception("scheduler loop failed")
                for req, fut in pending:
                    if not fut.done():
                        fut.set_result(_error(req, f"scheduler error: {type(e).__name__}: {e}"))

    def _receive(self) -> list:
        messages: list = []
        try:
            messages.append(self._inbox.get(timeout=0.1))
            while True:
                messages.append(self._inbox.get_nowait())
        except queue.Empty:
            pass
        return messages

    def _dispatch(self, items: list[tuple[Request, Future]], attempt: int = 0) -> None:
        by_model: dict[str, list[tuple[Request, Future, Cascade | None]]] = {}
        for req, fut in items:
            cascade = self.cascades.get(req.model)
            if cascade is not None:
                self.cascade_requests += 1
                by_model.setdefault(cascade.student, []).append((cascade.to_student(req), fut, cascade))
                continue
            if req.model not in self.specs:
                fut.set_result(
                    _error(req, f"unknown model {req.model!r}; serving: {', '.join(self.specs) or 'none'}")
                )
                continue
            by_model.setdefault(req.model, []).append((req, fut, None))
        for model, group in by_model.items():
            meta = {r.id: (f, c) for r, f, c in group}
            replicas = self.replicas[model]
            for i, chunk in enumerate(split_for_replicas([r for r, _, _ in group], len(replicas))):
                futs = [meta[r.id][0] for r in chunk]
                cascades = [meta[r.id][1] for r in chunk]
                self._send(
                    _Call(model, replicas[i], chunk, futs, attempt, cascades if any(cascades) else None)
                )

    def _send(self, call: _Call) -> None:
        if self.wire == "pickle":
            ref = call.replica.generate_packed.remote(pack_requests(call.requests))
        else:
            ref = call.replica.generate.remote(call.requests)
        self.ray_calls += 1
        self._calls[ref] = call
        ref.future().add_done_callback(lambda _f, ref=ref: self._inbox.put(_Done(ref)))

    def _collect(self, ref, call: _Call) -> None:
        import ray

        try:
            results = unpack(ray.get(ref))
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            self._on_replica_failure(call, e)
            return
        except Exception as e:  # a bug inside the worker: report per request, keep serving
            log.exception("worker call failed")
            results = [_error(r, f"worker error: {type(e).__name__}: {e}") for r in call.requests]
        escalate = []
        for i, (fut, res) in enumerate(zip(call.futures, results)):
            cascade = call.cascades[i] if call.cascades else None
            if cascade is not None and cascade.escalate(res):
                escalate.append((cascade.to_teacher(call.requests[i]), fut))
                continue
            self.requests_served += 1
            fut.set_result(res)
        if escalate:
            self.escalations += len(escalate)
            self._dispatch(escalate)

    def _on_replica_failure(self, call: _Call, err: Exception) -> None:
        log.warning(
            "replica of %s died (%s); restarting it and re-sending %d requests",
            call.model,
            type(err).__name__,
            len(call.requests),
        )
        reps = self.replicas[call.model]
        idx = 0
        if call.replica in reps:
            idx = reps.index(call.replica)
            reps[idx] = self._start_replica(self.specs[call.model], self.cores[call.model][idx])
            self.restarts += 1
            # other in-flight calls to the dead replica fail on their own and come back here
        if call.attempt >= self.max_retries:
            for r, fut in zip(call.requests, call.futures):
                fut.set_result(
                    _error(
                        r, f"model {call.model!r}: replica died {call.attempt + 1} times serving this request"
                    )
                )
            return
        live = [r for r in reps if r is not call.replica]
        target = live[(call.attempt + idx) % len(live)] if live else reps[0]
        self._send(_Call(call.model, target, call.requests, call.futures, call.attempt + 1, call.cascades))

    # ---- introspection and shutdown -------------------------------------------------------------
    def worker_stats(self) -> list[dict]:
        import ray

        return ray.get([r.stats.remote() for reps in self.replicas.values() for r in reps])

    def shutdown(self) -> None:
        import ray

        self._closed.set()
        self._thread.join(timeout=5)
        for reps in self.replicas.values():
            for r in reps:
                ray.kill(r, no_restart=True)
        self.replicas.clear()

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


class _Batch:
    """The results of one :meth:`Scheduler.generate` call and the event set when all are in."""

    __slots__ = ("results", "left", "event", "lock")

    def __init__(self, n: int) -> None:
        self.results: list[Result | None] = [None] * n
        self.left = n
        self.event = threading.Event()
        self.lock = threading.Lock()


class _Slot:
    """One request's place in a :class:`_Batch`; answers ``set_result``/``done`` as a future does."""

    __slots__ = ("batch", "index", "filled")

    def __init__(self, batch: _Batch, index: int) -> None:
        self.batch, self.index, self.filled = batch, index, False

    def done(self) -> bool:
        return self.filled

    def set_result(self, result: Result) -> None:
        if self.filled:
            return
        self.filled = True
        b = self.batch
        b.results[self.index] = result
        with b.lock:
            b.left -= 1
            if b.left == 0:
                b.event.set()


@dataclass(frozen=True)
class _Done:
    """Inbox message: the Ray call ``ref`` finished (or failed)."""

    ref: object


def _error(req: Request, msg: str) -> Result:
    return Result(
        id=req.id,
        model=req.model,
        text="",
        token_ids=[],
        finish_reason="error",
        prompt_tokens=0,
        cached_tokens=0,
        generated_tokens=0,
        error=msg,
        tag=req.tag,
    )
