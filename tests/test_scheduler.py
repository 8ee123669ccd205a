"""Ray end to end: two worker replicas, batches per Ray call, a replica killed mid-batch."""

from __future__ import annotations

import threading
import time

import pytest
from _helpers import make_batcher
from pydantic import ValidationError

from runtime.affinity import available_cores
from runtime.policy import split_for_replicas
from runtime.scheduler import ModelSpec, Scheduler
from runtime.types import Request, SamplingParams
from runtime.wire import pack, pack_requests, unpack, unpack_requests
from runtime.worker import WorkerConfig

SHARED = "World rules: farmers farm, fishers fish, merchants trade at the market. "


def reqs(n, max_tokens=8, prefix="agent"):
    return [
        Request(
            model="tiny",
            prompt=[SHARED, f"{prefix} {i}:"],
            sampling=SamplingParams(max_tokens=max_tokens, temperature=0.8, seed=i, ignore_eos=True),
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def scheduler(ray_session, tiny_models):
    spec = ModelSpec(
        WorkerConfig(str(tiny_models["qwen3"]), name="tiny", threads=1), replicas=2, num_cpus=0.25
    )
    with Scheduler([spec]) as s:
        yield s


def test_split_for_replicas_deals_families_evenly_and_stably():
    rs = [Request(model="m", prompt=[p, str(i)]) for i, p in enumerate("aaaabbbb")]
    chunks = split_for_replicas(rs, 2)
    assert [len(c) for c in chunks] == [4, 4]
    # every replica gets the same mix of prompt families (roles), not one family each
    assert [sorted(r.segments[0] for r in c) for c in chunks] == [["a", "a", "b", "b"]] * 2
    # an agent's prompt lands on the same replica whatever order the requests come in
    again = split_for_replicas(list(reversed(rs)), 2)
    assert [[r.segments for r in c] for c in again] == [[r.segments for r in c] for c in chunks]
    assert [len(c) for c in split_for_replicas(rs[:5], 3)] == [2, 2, 1]
    assert split_for_replicas(rs[:1], 3) == [rs[:1]]
    with pytest.raises(ValueError):
        split_for_replicas(rs, 0)


def test_results_match_in_process_and_one_call_per_replica(scheduler, tiny_models):
    batch = reqs(12)
    before = scheduler.ray_calls
    results = scheduler.generate(batch, timeout=120)
    assert scheduler.ray_calls - before == 2  # one Ray call per replica for the whole batch
    assert {r.worker for r in results} == {"tiny#1", "tiny#2"}
    local = make_batcher(tiny_models["qwen3"], cache=False).run(batch)
    assert [r.token_ids for r in results] == [r.token_ids for r in local]
    again = scheduler.generate(batch, timeout=120)
    assert [r.token_ids for r in again] == [r.token_ids for r in local]
    assert all(r.cached_tokens >= r.prompt_tokens - 1 for r in again)


def test_batches_cross_ray_as_one_pickled_bytes_and_odd_tags_still_travel(scheduler):
    batch = reqs(3)
    payload = pack(batch)
    assert isinstance(payload, bytes) and unpack(payload) == batch
    assert unpack(memoryview(payload)) == batch  # a buffer of the bytes will do
    odd = [r.model_copy(update={"tag": lambda i=r.id: i}) for r in batch]  # the standard pickler refuses it
    assert pack(odd) is odd and unpack(odd) is odd  # left to Ray's cloudpickle
    results = scheduler.generate(odd, timeout=120)
    assert all(r.ok for r in results)
    assert [r.tag() for r in results] == [r.id for r in batch]  # the tags came back through Ray


def test_requests_cross_as_their_fields_and_come_back_equal():
    from runtime.types import Constraint

    schema = Constraint.json_schema({"type": "object", "properties": {"to": {"type": "string"}}})
    batch = [
        *reqs(2),
        Request(model="m", prompt="one string", tag={"agent": "Bram", "tick": 3}),
        Request(model="m", prompt=["a", "b"], constraint=schema.with_string_choices({"to": ["Cora"]}), tag=7),
    ]
    payload = pack_requests(batch)
    assert isinstance(payload, bytes)
    back = unpack_requests(payload)
    assert back == batch
    assert [hash(back[i]) for i in (0, 1, 3)] == [hash(batch[i]) for i in (0, 1, 3)]  # frozen: hashable
    for a, b in zip(back, batch, strict=True):
        assert a.model_dump() == b.model_dump() and a.model_fields_set == b.model_fields_set
        assert a.sampling.model_fields_set == b.sampling.model_fields_set
    assert back[3].constraint.base == schema and back[3].constraint.string_choices == (("to", ("Cora",)),)
    with pytest.raises(ValidationError):  # still frozen, as built
        back[0].model = "other"
    assert unpack_requests(pack(batch)) == batch  # a plain pickled list is read too

    class Tagged(Request):
        pass

    sub = [Tagged(model="m", prompt="x")]
    assert unpack_requests(pack_requests(sub)) == sub  # a subclass travels the generic way
    odd = [batch[0].model_copy(update={"tag": lambda: 1})]
    assert pack_requests(odd) is odd  # left to Ray's cloudpickle


def test_batches_may_cross_ray_through_rays_own_serializer(ray_session, tiny_models, scheduler):
    with pytest.raises(ValueError, match="wire must be one of pickle, ray"):
        Scheduler([], wire="json")
    spec = ModelSpec(WorkerConfig(str(tiny_models["qwen3"]), name="tiny", threads=1), num_cpus=0.25)
    batch = reqs(4)
    with Scheduler([spec], wire="ray") as plain:
        results = plain.generate(batch, timeout=120)
    assert [r.token_ids for r in results] == [r.token_ids for r in scheduler.generate(batch, timeout=120)]


def test_many_callers_are_batched_together(scheduler):
    out: dict[int, list] = {}

    def caller(k):
        out[k] = scheduler.generate(reqs(5, prefix=f"caller{k}"), timeout=120)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out) == [0, 1, 2, 3] and all(len(v) == 5 and all(r.ok for r in v) for v in out.values())


def test_replicas_are_bound_to_cores_of_their_own(scheduler):
    """Two 1-thread replicas fit any machine of 2 cores or more: each is bound to one core, as the
    OS reports it inside the worker; on a 1-core machine they are left to float."""
    stats = scheduler.worker_stats()
    cores = available_cores()
    if len(cores) < 2:
        assert not any(s["bound"] for s in stats)
        return
    assert all(s["bound"] for s in stats)
    assert [len(s["cpus"]) for s in stats] == [1, 1]
    assert stats[0]["cpus"] != stats[1]["cpus"]
    assert {c for s in stats for c in s["cpus"]} <= set(cores)
    assert [list(c) for c in scheduler.cores["tiny"]] == [s["cpus"] for s in stats]


def test_unbound_replicas_may_use_every_core(ray_session, tiny_models):
    spec = ModelSpec(WorkerConfig(str(tiny_models["qwen3"]), name="tiny", threads=1), num_cpus=0.25)
    with Scheduler([spec], pin="off") as s:
        (stats,) = s.worker_stats()
    assert not stats["bound"]
    assert stats["cpus"] == available_cores()


def test_unknown_model_gives_an_error_result(scheduler):
    res = scheduler.generate([Request(model="nope", prompt="hi")], timeout=30)[0]
    assert not res.ok and "unknown model 'nope'" in res.error


def test_worker_killed_mid_batch_still_gives_results(scheduler, tiny_models):
    import ray

    batch = reqs(16, max_tokens=300)
    futures = scheduler.submit_many(batch)
    deadline = time.time() + 30
    victim = scheduler.replicas["tiny"][0]
    cpus_before = [s["cpus"] for s in scheduler.worker_stats()]
    while time.time() < deadline and not any(s["decode_passes"] for s in [ray.get(victim.stats.remote())]):
        time.sleep(0.02)
    ray.kill(victim, no_restart=True)  # mid-batch: it has started decoding
    results = [f.result(timeout=180) for f in futures]
    assert all(r.ok for r in results)
    assert scheduler.restarts >= 1
    assert victim not in scheduler.replicas["tiny"]
    # the replacement is bound to the cores of the replica it replaces
    assert [s["cpus"] for s in scheduler.worker_stats()] == cpus_before
    local = make_batcher(tiny_models["qwen3"], cache=False).run(batch[:3])
    assert [r.token_ids for r in results[:3]] == [r.token_ids for r in local]


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_cascade_escalates_unsure_answers_to_the_teacher(ray_session, tiny_models, threshold):
    from runtime.cascade import Cascade, confidence

    specs = [
        ModelSpec(WorkerConfig(str(tiny_models["qwen3"]), name="student", threads=1), num_cpus=0.25),
        ModelSpec(WorkerConfig(str(tiny_models["llama"]), name="teacher", threads=1), num_cpus=0.25),
    ]
    with Scheduler(specs, cascades=[Cascade("act", "student", "teacher", threshold)]) as s:
        batch = [r.model_copy(update={"model": "act"}) for r in reqs(6)]
        results = s.generate(batch, timeout=120)
        assert all(r.ok for r in results)
        if threshold == 0.0:
            assert {r.model for r in results} == {"student"} and s.escalations == 0
        else:
            assert {r.model for r in results} == {"teacher"} and s.escalations == 6
        direct = s.generate([r.model_copy(update={"model": "student"}) for r in batch], timeout=120)
        assert all(0.0 < confidence(r) <= 1.0 for r in direct)
    with pytest.raises(ValueError, match="is not served"):
        Scheduler(specs[:1], cascades=[Cascade("x", "student", "nobody")])
    with pytest.raises(ValueError, match="threshold"):
        Cascade("x", "a", "b", threshold=1.5)


def test_worker_cache_policy_is_configurable(tiny_models):
    from runtime.kv_cache import LFUPolicy, LRUPolicy
    from runtime.worker import build_batcher

    model = str(tiny_models["qwen3"])
    assert isinstance(build_batcher(WorkerConfig(model, threads=1)).cache.policy, LFUPolicy)
    assert isinstance(
        build_batcher(WorkerConfig(model, threads=1, cache_policy="lru")).cache.policy, LRUPolicy
    )
    with pytest.raises(ValueError, match="cache_policy"):
        build_batcher(WorkerConfig(model, threads=1, cache_policy="fifo"))


def test_worker_sets_numpy_huge_pages_as_configured(tiny_models):
    from runtime.engine import set_numpy_hugepages
    from runtime.worker import build_batcher

    model = str(tiny_models["qwen3"])
    before = set_numpy_hugepages(True)
    try:
        build_batcher(WorkerConfig(model, threads=1))
        assert set_numpy_hugepages(False) is False  # the worker turned them off
        build_batcher(WorkerConfig(model, threads=1, numpy_hugepages=True))
        assert set_numpy_hugepages(False) is True
    finally:
        set_numpy_hugepages(before)


def test_engine_failure_fails_the_batch_loudly_and_the_worker_keeps_serving(tiny_models):
    import asyncio

    from runtime.worker import ModelWorkerImpl

    worker = ModelWorkerImpl(WorkerConfig(str(tiny_models["qwen3"]), name="tiny", threads=1))
    engine, forward, calls = worker.batcher.engine, worker.batcher.engine.forward, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # mid-decode, with rows running and others waiting
            raise RuntimeError("device lost")
        return forward(*args, **kwargs)

    engine.forward = flaky
    try:
        # (before the fix the worker's loop died here and this call never returned)
        failed = asyncio.run(asyncio.wait_for(worker.generate(reqs(6)), 60))
        assert all(r.error and "engine failure: RuntimeError: device lost" in r.error for r in failed)
        assert not worker.batcher.has_work
        engine.forward = forward
        again = asyncio.run(asyncio.wait_for(worker.generate(reqs(6)), 60))
        assert all(r.ok for r in again)
        assert [r.text for r in again] == [r.text for r in make_batcher(tiny_models["qwen3"]).run(reqs(6))]
    finally:
        worker.shutdown()
