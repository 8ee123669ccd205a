"""Engine + continuous batcher: parity with transformers, batch and cache invariance, sampling, stops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _helpers import make_batcher

from runtime.engine import BatchKV
from runtime.tokenizer import Tokenizer
from runtime.types import Request, SamplingParams

SHARED = "The village wakes at dawn. Farmers walk to the fields, merchants open their stalls at the market. "
TAILS = [
    "Ada says",
    "Bram, the fisher, asks about the river",
    "Cora",
    "Dov wants 12 wheat and 3 fish for",
    "Elin",
]


def requests(n_new=12, **sampling) -> list[Request]:
    return [
        Request(model="m", prompt=[SHARED, t], sampling=SamplingParams(max_tokens=n_new, **sampling))
        for t in TAILS
    ]


@pytest.mark.parametrize("append_kv", [False, True])
@pytest.mark.parametrize("arch", ["llama", "qwen3", "qwen3_moe"])
def test_greedy_matches_transformers_generate(tiny_models, arch, append_kv):
    """Also when decode passes run on the append-only graph (``append_kv``), which writes each step's
    KV into spare columns, moving the batch to larger arrays when they run out (40 steps: twice)."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_models[arch].parent / "hf").eval()
    b = make_batcher(tiny_models[arch], cache=False, append_kv=append_kv)
    assert (b.engine.decode_session is not None) == append_kv
    n_new = 40 if append_kv else 16
    reqs = requests(n_new)
    ours = b.run(reqs)
    eos = set(b.tok.eos_token_ids)
    for req, res in zip(reqs, ours):
        ids = b.tok.encode_prompt(req.segments)
        with torch.no_grad():
            out = hf.generate(torch.tensor([ids]), max_new_tokens=n_new, do_sample=False, pad_token_id=1)
        theirs = [t for t in out[0, len(ids) :].tolist()]
        if theirs and theirs[-1] in eos:
            theirs = theirs[:-1]
        assert res.token_ids == theirs, f"{arch}: {req.prompt[1]!r}"


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_matches_transformers(tiny_models, n):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_models["llama"].parent / "hf").eval()
    b = make_batcher(tiny_models["llama"])
    reqs = requests(24, no_repeat_ngram_size=n)
    ours = b.run(reqs)
    eos = set(b.tok.eos_token_ids)
    blocked = 0
    for req, res in zip(reqs, ours):
        ids = b.tok.encode_prompt(req.segments)
        with torch.no_grad():
            kw = dict(max_new_tokens=24, do_sample=False, pad_token_id=1)
            out = hf.generate(torch.tensor([ids]), no_repeat_ngram_size=n, **kw)
            free = hf.generate(torch.tensor([ids]), **kw)
        theirs = [t for t in out[0, len(ids) :].tolist()]
        if theirs and theirs[-1] in eos:
            theirs = theirs[:-1]
        assert res.token_ids == theirs
        blocked += out.tolist() != free.tolist()
    assert blocked  # the blocking changed some output: the test exercises it


def test_ngram_blocker_bans_what_would_repeat():
    from runtime.sampling import NgramBlocker

    b = NgramBlocker(3, [5, 6, 7, 5, 6])
    assert b.banned() == {7}  # "5 6 7" was seen
    b.push(8)
    assert b.banned() == set()
    assert NgramBlocker(1, [1, 2, 2]).banned() == {1, 2}


@pytest.mark.parametrize("arch", ["qwen3", "qwen3_moe"])
def test_same_output_alone_batched_and_cached(tiny_models, arch):
    reqs = requests(10, temperature=0.9, seed=7)
    alone = [make_batcher(tiny_models[arch], cache=False).run([r])[0] for r in reqs]
    batched = make_batcher(tiny_models[arch], cache=False).run(reqs)
    b = make_batcher(tiny_models[arch], cache=True)
    cold = b.run(reqs)
    warm = b.run(reqs)  # every prompt is now cached
    for a, x, c, w in zip(alone, batched, cold, warm):
        assert a.token_ids == x.token_ids == c.token_ids == w.token_ids
    assert all(r.cached_tokens == 0 for r in batched)
    assert all(r.cached_tokens >= r.prompt_tokens - 1 for r in warm)
    assert sum(r.cached_tokens for r in cold) > 0  # the shared prefix was computed once and reused


def test_requests_join_a_running_batch(tiny_models):
    """Continuous batching: a request added mid-generation joins, and outputs do not change."""
    reqs = requests(20, temperature=0.7, seed=3)
    reference = make_batcher(tiny_models["qwen3"], cache=False).run(reqs)
    b = make_batcher(tiny_models["qwen3"], max_batch_size=3)
    for r in reqs[:2]:
        b.add(r)
    got = {}
    steps = 0
    while b.has_work:
        for res in b.step():
            got[res.id] = res
        steps += 1
        if steps == 4:  # join while the first two are decoding
            for r in reqs[2:]:
                b.add(r)
        assert len(b.running) <= 3
    for req, ref in zip(reqs, reference):
        assert got[req.id].token_ids == ref.token_ids
    # engine time is split by pass: decode passes (one per step after a prefill) and the rest
    st = b.stats
    assert st.decode_passes > 0 and 0 < st.decode_engine_s < st.engine_s


def test_small_decode_cohorts_merge_without_changing_outputs(tiny_models):
    """Each admission decodes as its own cohort (no copy of the running rows' KV); small cohorts
    merge into one batch, and no output changes."""
    reqs = requests(12, temperature=0.8, seed=5)
    reference = make_batcher(tiny_models["qwen3"], cache=False).run(reqs)
    b = make_batcher(tiny_models["qwen3"], max_prefill_tokens=1, max_batch_size=8)
    b.max_cohorts = 2  # one request admitted per step: cohorts pile up and merge
    seen = set()
    got = {}
    for r in reqs:
        b.add(r)
    while b.has_work:
        for res in b.step():
            got[res.id] = res
        assert len(b.cohorts) <= 2
        seen.add(len(b.cohorts))
    assert 1 in seen
    for req, ref in zip(reqs, reference):
        assert got[req.id].token_ids == ref.token_ids
    big = make_batcher(tiny_models["qwen3"], cache=False)
    big.min_cohort_rows = 1  # nothing counts as small: every admission keeps its own cohort
    for r in reqs:
        big.add(r)
    big.max_prefill_tokens = 1
    big.step()
    big.step()
    assert len(big.cohorts) == 2


def test_admission_groups_alike_uncached_tails(tiny_models):
    """A prefill pass pads rows to its longest new tail: the batcher admits the oldest request with
    the waiting ones whose uncached tails are closest in length, and no output changes."""
    short = [
        Request(model="m", prompt=[SHARED, f"Tom{i}"], sampling=SamplingParams(max_tokens=6))
        for i in range(4)
    ]
    long = [
        Request(
            model="m",
            prompt=[SHARED, f"Ann{i} " + "walks to the river and back " * 6],
            sampling=SamplingParams(max_tokens=6),
        )
        for i in range(4)
    ]
    mixed = [r for pair in zip(short, long) for r in pair]
    reference = make_batcher(tiny_models["qwen3"], cache=False).run(mixed)
    b = make_batcher(tiny_models["qwen3"])
    b.run(mixed[:1])  # the shared text is cached now
    tok = b.tok
    budget = 2 * len(tok.encode_prompt(long[0].segments))  # two long or two short prompts a step
    b.max_prefill_tokens = budget
    for r in mixed:
        b.add(r)
    got = {res.id: res for res in b.step()}
    first = sorted(s.req.id for s in b.running)
    assert len(first) >= 2 and first == sorted(
        r.id for r in short[: len(first)]
    )  # no long one, though queued second
    while b.has_work:
        for res in b.step():
            got[res.id] = res
    for req, ref in zip(mixed, reference):
        assert got[req.id].token_ids == ref.token_ids


def test_seed_changes_sampled_output(tiny_models):
    b = make_batcher(tiny_models["qwen3"], cache=False)
    base = Request(
        model="m",
        prompt="Ada says",
        sampling=SamplingParams(max_tokens=24, temperature=1.5, seed=1, ignore_eos=True),
    )
    other = base.model_copy(update={"sampling": base.sampling.model_copy(update={"seed": 2}), "id": "other"})
    a, c = b.run([base, other])
    assert len(a.token_ids) == 24 and a.token_ids != c.token_ids


def test_stops_eos_and_max_tokens(tiny_models):
    b = make_batcher(tiny_models["llama"], cache=False)
    free = b.run([Request(model="m", prompt="Ada", sampling=SamplingParams(max_tokens=30, ignore_eos=True))])[
        0
    ]
    assert free.finish_reason == "length" and free.generated_tokens == 30
    text = free.text
    stop = text[5:9]
    assert stop, "random model produced too little text for the test"
    stopped = b.run(
        [
            Request(
                model="m", prompt="Ada", sampling=SamplingParams(max_tokens=30, ignore_eos=True, stop=(stop,))
            )
        ]
    )[0]
    assert stopped.finish_reason == "stop" and stopped.text == text[: text.find(stop)]
    # make the 4th greedy token the end-of-sequence token: generation stops before it
    b.eos = {free.token_ids[3]}
    first = free.token_ids.index(free.token_ids[3])
    ended = b.run([Request(model="m", prompt="Ada", sampling=SamplingParams(max_tokens=30))])[0]
    assert ended.finish_reason == "eos" and ended.token_ids == free.token_ids[:first]


def test_oversized_prompt_is_an_error_result(tiny_models):
    b = make_batcher(tiny_models["qwen3"])
    huge = Request(model="m", prompt="wheat " * 5000)
    ok = Request(model="m", prompt="Ada")
    res = b.run([huge, ok])
    assert res[0].finish_reason == "error" and "does not fit the model's context" in res[0].error
    assert res[1].ok


def test_batch_kv_appends_into_spare_columns_and_grows_when_full():
    rng = np.random.default_rng(0)

    def arrays(b, w):
        return [rng.standard_normal((b, 1, w, 2)).astype(np.float32) for _ in range(4)]

    kv = BatchKV(arrays(3, 5), np.array([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]))
    roomy = kv.select([0, 2], spare=4)  # a copy anyway (column 0 dropped): it takes spare columns along
    assert (roomy.width, roomy.capacity) == (4, 8) and not roomy.kv[0][:, :, 4:].any()
    assert np.array_equal(roomy.kv[1][:, :, :4], kv.kv[1][[0, 2], :, 1:])
    new = arrays(2, 3)
    grown = roomy.append(new, np.array([[1, 1, 1], [0, 1, 1]]))
    assert grown.kv[0] is roomy.kv[0]  # written into the spare columns, nothing copied
    assert grown.width == 7 and grown.mask[1].tolist() == [0, 1, 1, 1, 0, 1, 1]
    assert np.array_equal(grown.kv[3][:, :, 4:7], new[3])
    more = grown.append(arrays(2, 2), np.ones((2, 2), np.int64))  # 9 > 8 columns: a larger batch
    assert more.kv[0] is not grown.kv[0] and more.width == 9 and more.capacity >= 9 + 16
    assert np.array_equal(more.kv[2][:, :, :7], grown.kv[2][:, :, :7]) and not more.kv[2][:, :, 9:].any()
    assert np.array_equal(more.row_tokens(1, 0, 7)[1, 0], more.kv[2][1][:, [1, 2, 3, 5, 6, 7, 8], :])
    both = BatchKV.concat([more, kv], spare=3)
    assert (both.width, both.capacity) == (9, 12) and not both.kv[0][:, :, 9:].any()
    assert np.array_equal(both.kv[0][2:, :, 4:9], kv.kv[0]) and both.mask[2:, :4].sum() == 0
    assert np.array_equal(both.kv[1][:2, :, :9], more.kv[1][:, :, :9])
    picked = both.select([2, 0])
    assert picked.capacity == picked.width  # no spare unless asked


@pytest.mark.parametrize("arch", ["llama", "qwen3_moe"])
def test_append_kv_graph_gives_the_exported_graphs_logits_and_new_kv(tiny_models, arch):
    """The rewritten graph attends to the past (spare, masked columns included) and the new tokens as
    the exported one does, and returns only the new tokens' KV."""
    from runtime.artifacts import load_model_dir
    from runtime.engine import OrtEngine

    eng = OrtEngine(load_model_dir(tiny_models[arch]), intra_op_threads=1, append_kv=True)
    rng = np.random.default_rng(1)
    B, W, T = 3, 9, 2
    past = [
        rng.standard_normal((B, eng.info.num_kv_heads, W, eng.info.head_dim)).astype(np.float32)
        for _ in eng._past_names
    ]
    mask = np.ones((B, W), np.int64)
    mask[0, :4] = 0  # left padding
    mask[1, 6:] = 0  # spare columns at the end, zeros
    for a in past:
        a[1, :, 6:] = 0
    ids = rng.integers(3, 50, (B, T))
    pos = np.array([[5, 6], [6, 7], [9, 10]])
    im = np.ones((B, T), np.int64)
    logits, full = eng.forward(ids, pos, im, BatchKV([a.copy() for a in past], mask))
    logits2, kv = eng.forward_append(ids, pos, im, BatchKV(past, mask))
    np.testing.assert_allclose(logits2, logits, atol=1e-4)
    for a, b in zip(kv.kv, full.kv):
        np.testing.assert_allclose(a[:, :, : kv.width], b, atol=1e-5)
    assert kv.width == W + T and kv.capacity > kv.width


def test_append_kv_graph_leaves_other_layouts_alone():
    from onnx import TensorProto, helper

    from runtime.kvgraph import append_kv_graph

    x = helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, [1, 1, 2, 2])
    y = helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, [1, 1, 2, 2])
    graph = helper.make_graph([helper.make_node("Identity", [x.name], [y.name])], "g", [x], [y])
    assert append_kv_graph(helper.make_model(graph), layers=1) is None


def test_append_kv_graph_is_cached_and_rebuilt_when_the_model_changes(tiny_models, tmp_path, monkeypatch):
    """The rewritten graph is written once and loaded from the cache after; a changed model file gets
    a new graph (its old one removed), a damaged cached graph is written anew."""
    import os
    import shutil

    from runtime.artifacts import load_model_dir
    from runtime.engine import OrtEngine
    from runtime.kvgraph import append_kv_model

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_models["llama"], model_dir)
    art = load_model_dir(model_dir)
    monkeypatch.setenv("MURMURATE_CACHE", str(tmp_path))
    cache = tmp_path / "graphs"
    first = append_kv_model(art.onnx_path, art.info.num_layers, cache)
    assert isinstance(first, Path) and first.parent == cache and first.stat().st_size > 0
    stamp = first.stat().st_mtime_ns
    assert append_kv_model(art.onnx_path, art.info.num_layers, cache) == first
    assert first.stat().st_mtime_ns == stamp and [p.name for p in cache.iterdir()] == [first.name]
    st = art.onnx_path.stat()
    os.utime(art.onnx_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the model file changed
    second = append_kv_model(art.onnx_path, art.info.num_layers, cache)
    assert second != first and [p.name for p in cache.iterdir()] == [second.name]
    second.write_bytes(b"not a graph")
    eng = OrtEngine(art, intra_op_threads=1, append_kv=True)
    assert eng.decode_session is not None and second.stat().st_size > 100


def test_append_kv_model_remembers_a_layout_it_cannot_rewrite(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from runtime.kvgraph import append_kv_model

    x = helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, [1, 1, 2, 2])
    y = helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, [1, 1, 2, 2])
    graph = helper.make_graph([helper.make_node("Identity", [x.name], [y.name])], "g", [x], [y])
    onnx.save(helper.make_model(graph), tmp_path / "model.onnx")
    assert append_kv_model(tmp_path / "model.onnx", 1, tmp_path / "graphs") is None
    assert [p.suffix for p in (tmp_path / "graphs").iterdir()] == [".none"]
    assert append_kv_model(tmp_path / "model.onnx", 1, tmp_path / "graphs") is None


def test_batch_kv_layout_ops():
    from runtime.artifacts import ModelInfo

    info = ModelInfo(
        "x",
        num_layers=1,
        num_kv_heads=1,
        head_dim=2,
        vocab_size=4,
        eos_token_ids=(0,),
        bos_token_id=None,
        max_position_embeddings=64,
    )
    p1 = np.arange(1 * 2 * 1 * 3 * 2, dtype=np.float32).reshape(1, 2, 1, 3, 2)
    kv = BatchKV.from_prefixes(info, [p1, None, p1[:, :, :, :1]])
    assert kv.width == 3 and kv.mask.tolist() == [[1, 1, 1], [0, 0, 0], [0, 0, 1]]
    np.testing.assert_array_equal(kv.row_tokens(0, 0, 3), p1)
    np.testing.assert_array_equal(kv.row_tokens(2, 0, 1), p1[:, :, :, :1])
    small = kv.select([1, 2])
    assert small.width == 1 and small.mask.tolist() == [[0], [1]]
    both = BatchKV.concat([small, kv.select([0])])
    assert both.width == 3 and both.mask.sum(axis=1).tolist() == [0, 1, 3]
    np.testing.assert_array_equal(both.row_tokens(2, 0, 3), p1)
    # A prefix given as the radix nodes' segments lands exactly like the concatenated array.
    segs = BatchKV.from_prefixes(info, [[p1[:, :, :, :1], p1[:, :, :, 1:]], None, [p1[:, :, :, :1]]])
    assert segs.mask.tolist() == kv.mask.tolist()
    for a, b in zip(segs.kv, kv.kv):
        np.testing.assert_array_equal(a, b)


def test_batched_sampling_matches_row_by_row():
    from runtime.sampling import request_rng, sample_token, sample_tokens

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 50)).astype(np.float32)
    logits[2, :40] = -np.inf  # a constrained row
    params = [
        SamplingParams(temperature=t, top_k=k, top_p=p, seed=i)
        for i, (t, k, p) in enumerate(
            [(0, 0, 1), (0.8, 0, 1), (0, 0, 1), (1.2, 5, 1), (0.7, 0, 0.9), (0, 0, 1)]
        )
    ]
    batched = sample_tokens(logits, params, [request_rng(p) for p in params])
    single = [sample_token(logits[b], p, request_rng(p)) for b, p in enumerate(params)]
    assert batched == single
    assert batched[2][0] >= 40


def test_prefetched_segments_encode_like_one_by_one(tiny_models):
    from runtime.artifacts import load_model_dir

    path = load_model_dir(tiny_models["qwen3"]).tokenizer_path
    prompts = [(SHARED, f"agent {i}: hello", "é ü 12.5 \n\n x") for i in range(5)] + [("", "tail")]
    one = Tokenizer(path)
    many = Tokenizer(path, cache_size=3)  # fewer slots than new segments: the rest encode on use
    many.prefetch(prompts)
    assert [many.encode_prompt(p) for p in prompts] == [one.encode_prompt(p) for p in prompts]


def test_engine_threads_flush_denormals(tiny_models):
    """The first engine of a process turns on flush-to-zero for its thread and the threads it starts
    later (a worker's batcher loop): masked attention scores otherwise hit x86's denormal slow path."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        f"""
        import threading
        from runtime.artifacts import load_model_dir
        from runtime.engine import OrtEngine, flushes_denormals
        assert not flushes_denormals()
        OrtEngine(load_model_dir({str(tiny_models["qwen3"])!r}), intra_op_threads=1)
        seen = []
        t = threading.Thread(target=lambda: seen.append(flushes_denormals()))
        t.start(); t.join()
        print(flushes_denormals(), seen[0])
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
