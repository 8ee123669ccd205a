"""Graph rewrites: the sparse MoE graph matches torch, keeps the KV interface and serves; last-token logits."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from _helpers import make_batcher

from exports.graph import GraphRewriteError, interface, last_token_logits, rewrite_model_dir
from exports.moe_graph import sparsify_moe
from runtime.artifacts import load_model_dir, write_manifest
from runtime.types import Request, SamplingParams

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

PAD = 2  # left padding of row 0: exercises the attention mask alongside the MoE rows


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _prompts(vocab: int, batch: int = 3, length: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (B, S) and attention mask (B, S); row 0 is left-padded by PAD positions."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, (batch, length), dtype=np.int64)
    mask = np.ones((batch, length), np.int64)
    mask[0, :PAD] = 0
    return ids, mask


def _positions(mask: np.ndarray) -> np.ndarray:
    return np.clip(np.cumsum(mask, axis=1) - 1, 0, None)


def _ort_prefill_then_decode(path, config, ids, mask, next_ids):
    """Run a prefill and one decode step through an optimum graph; returns (prefill logits, decode logits)."""
    sess = _session(path)
    batch = ids.shape[0]
    heads, head_dim = config["num_key_value_heads"], config["head_dim"]
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": _positions(mask)}
    for i in range(config["num_hidden_layers"]):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{i}.{kind}"] = np.zeros((batch, heads, 0, head_dim), np.float32)
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(None, feeds)))
    mask2 = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)
    step = {"input_ids": next_ids, "attention_mask": mask2, "position_ids": _positions(mask2)[:, -1:]}
    for name in names:
        if name.startswith("present."):
            step[name.replace("present.", "past_key_values.")] = outs[name]
    return outs["logits"], dict(zip(names, sess.run(None, step)))["logits"]


def _torch_prefill_then_decode(hf_dir, ids, mask, next_ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    mask2 = np.concatenate([mask, np.ones((ids.shape[0], 1), np.int64)], axis=1)
    with torch.no_grad():
        out = model(
            torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(_positions(mask)),
            use_cache=True,
        )
        step = model(
            torch.tensor(next_ids),
            attention_mask=torch.tensor(mask2),
            position_ids=torch.tensor(_positions(mask2)[:, -1:]),
            past_key_values=out.past_key_values,
            use_cache=True,
        )
    return out.logits.numpy(), step.logits.numpy()


@pytest.fixture(scope="module")
def sparse_moe(tiny_models, tmp_path_factory):
    """The tiny qwen3_moe export rewritten with one MoE node per block: (path, config, report)."""
    src = tiny_models["qwen3_moe"]
    dst = tmp_path_factory.mktemp("sparse") / "model.onnx"
    report = sparsify_moe(src / "model.onnx", dst, src / "config.json")
    return dst, json.loads((src / "config.json").read_text()), report


def test_sparse_moe_graph_has_one_moe_node_per_block(sparse_moe):
    path, config, report = sparse_moe
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MoE") == config["num_hidden_layers"] == report.blocks
    # The unrolled expert loop is gone: no routing bookkeeping is left.
    assert "TopK" not in ops and "NonZero" not in ops and "ScatterElements" not in ops
    assert (report.experts, report.k, report.normalize) == (8, 2, True)
    assert report.nodes_after < report.nodes_before
    moe = next(n for n in model.graph.node if n.op_type == "MoE")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in moe.attribute}
    assert attrs["activation_type"] == b"swiglu" and attrs["swiglu_fusion"] == 1 and attrs["k"] == 2


def test_sparse_moe_matches_torch_prefill_and_decode(tiny_models, sparse_moe):
    path, config, _ = sparse_moe
    ids, mask = _prompts(config["vocab_size"])
    next_ids = np.array([[5], [9], [11]], np.int64)
    ours = _ort_prefill_then_decode(path, config, ids, mask, next_ids)
    theirs = _torch_prefill_then_decode(tiny_models["qwen3_moe"].parent / "hf", ids, mask, next_ids)
    valid = mask.astype(bool)  # padded positions have no meaningful logits
    assert np.abs(ours[0][valid] - theirs[0][valid]).max() <= 1e-3
    assert np.abs(ours[1] - theirs[1]).max() <= 1e-3
    # The tolerance is not vacuous: logits are O(1) and differ between rows.
    assert np.abs(theirs[1][0] - theirs[1][1]).max() > 0.1


def test_all_experts_reference_matches_torch_and_computes_every_expert(tiny_models, tmp_path):
    """The dense reference (every expert on every token, weighted by the same top-k) that the
    sparse graph is timed against in ``bench-moe``."""
    from exports.moe_dense import densify_moe

    src = tiny_models["qwen3_moe"]
    config = json.loads((src / "config.json").read_text())
    path = tmp_path / "dense.onnx"
    assert densify_moe(src / "model.onnx", path) == config["num_hidden_layers"]
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "NonZero" not in ops and "MoE" not in ops  # no per-expert gathering: all of them, dense
    wide = [
        i for i in onnx.load(str(path)).graph.initializer if i.name.startswith("dense_moe.0.w")
    ]  # every expert's gate, up and down in one matrix each
    assert {tuple(i.dims) for i in wide} == {
        (config["hidden_size"], config["num_experts"] * config["moe_intermediate_size"]),
        (config["num_experts"] * config["moe_intermediate_size"], config["hidden_size"]),
    }
    ids, mask = _prompts(config["vocab_size"])
    next_ids = np.array([[5], [9], [11]], np.int64)
    ours = _ort_prefill_then_decode(path, config, ids, mask, next_ids)
    theirs = _torch_prefill_then_decode(src.parent / "hf", ids, mask, next_ids)
    valid = mask.astype(bool)
    assert np.abs(ours[0][valid] - theirs[0][valid]).max() <= 1e-3
    assert np.abs(ours[1] - theirs[1]).max() <= 1e-3
    assert interface(onnx.load(str(path), load_external_data=False)) == interface(
        onnx.load(str(src / "model.onnx"), load_external_data=False)
    )


def test_sparse_moe_keeps_the_kv_interface(tiny_models, sparse_moe):
    path, _, _ = sparse_moe
    before = onnx.load(str(tiny_models["qwen3_moe"] / "model.onnx"), load_external_data=False)
    after = onnx.load(str(path), load_external_data=False)
    assert interface(after) == interface(before)
    sess = _session(path)
    assert [i.name for i in sess.get_inputs()] == [i.name for i in before.graph.input]
    assert [o.name for o in sess.get_outputs()] == [o.name for o in before.graph.output]


def test_a_graph_that_is_not_a_qwen3_moe_export_gets_a_clear_error(tiny_models, tmp_path):
    llama = tiny_models["llama"]
    with pytest.raises(GraphRewriteError, match="no MoE router found.*qwen3_moe export"):
        sparsify_moe(llama / "model.onnx", tmp_path / "x.onnx", llama / "config.json")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(GraphRewriteError, match="not a readable ONNX model"):
        sparsify_moe(tmp_path / "junk.onnx", tmp_path / "x.onnx", llama / "config.json")
    assert not (tmp_path / "x.onnx").exists()


def test_config_disagreeing_with_the_graph_is_refused(tiny_models, tmp_path):
    src = tiny_models["qwen3_moe"]
    config = json.loads((src / "config.json").read_text())
    with pytest.raises(GraphRewriteError, match="top-k .*config says"):
        sparsify_moe(src / "model.onnx", tmp_path / "x.onnx", {**config, "num_experts_per_tok": 4})
    with pytest.raises(GraphRewriteError, match="MoE blocks .*config says"):
        sparsify_moe(src / "model.onnx", tmp_path / "x.onnx", {**config, "num_hidden_layers": 3})


def test_a_damaged_expert_is_named(tiny_models, tmp_path):
    """An expert whose MLP no longer matches SwiGLU leaves a gap in the expert indices: say so."""
    src = tiny_models["qwen3_moe"]
    model = onnx.load(str(src / "model.onnx"))
    sigmoid = next(n for n in model.graph.node if n.op_type == "Sigmoid")
    sigmoid.op_type = "Tanh"
    onnx.save(model, str(tmp_path / "damaged.onnx"))
    with pytest.raises(GraphRewriteError, match=r"router has 8 experts but found expert indices \[1, 2"):
        sparsify_moe(tmp_path / "damaged.onnx", tmp_path / "x.onnx", src / "config.json")


@pytest.mark.parametrize("arch", ["llama", "qwen3_moe"])
def test_last_token_logits_equal_the_last_row(tiny_models, tmp_path, arch):
    src = tiny_models[arch] / "model.onnx"
    config = json.loads((tiny_models[arch] / "config.json").read_text())
    dst = last_token_logits(src, tmp_path / "last.onnx")
    ids, mask = _prompts(config["vocab_size"], batch=2, length=9)
    next_ids = np.array([[4], [6]], np.int64)
    full = _ort_prefill_then_decode(src, config, ids, mask, next_ids)
    last = _ort_prefill_then_decode(dst, config, ids, mask, next_ids)
    assert last[0].shape == (2, 1, config["vocab_size"])
    np.testing.assert_allclose(last[0], full[0][:, -1:, :], atol=1e-5)
    np.testing.assert_allclose(last[1], full[1], atol=1e-5)
    out = onnx.load(str(dst), load_external_data=False).graph.output[0]
    assert out.type.tensor_type.shape.dim[1].dim_value == 1
    with pytest.raises(GraphRewriteError, match="already has one position"):
        last_token_logits(dst, tmp_path / "again.onnx")


def test_rewritten_model_dir_loads_and_generates_like_the_original(tiny_models, tmp_path):
    src = tiny_models["qwen3_moe"]
    dst = rewrite_model_dir(src, tmp_path / "sparse", sparse_moe=True, last_token=True)
    art = load_model_dir(dst)  # checksums, KV inputs, vocab: the runtime's own checks
    assert art.manifest["graph_rewrites"] == ["sparse_moe", "last_token_logits"]
    assert art.name == load_model_dir(src).name
    reqs = [
        Request(
            model="m", prompt=["The village wakes at dawn. ", tail], sampling=SamplingParams(max_tokens=12)
        )
        for tail in ("Ada says", "Bram, the fisher, asks about the river", "Cora")
    ]
    ours = make_batcher(dst).run(reqs)
    theirs = make_batcher(src).run(reqs)
    assert [r.token_ids for r in ours] == [r.token_ids for r in theirs]
    assert all(len(r.token_ids) > 0 for r in ours)


def test_sparsify_in_place_then_manifest(tiny_models, tmp_path):
    """The function form used by hand: rewrite model.onnx in place, then write the manifest."""
    dst = tmp_path / "moe"
    shutil.copytree(tiny_models["qwen3_moe"], dst)
    sparsify_moe(dst / "model.onnx", dst / "model.onnx", dst / "config.json")
    write_manifest(dst, "tiny-moe-sparse")
    assert load_model_dir(dst).name == "tiny-moe-sparse"


def test_bench_helpers_build_a_graph_without_the_moe_blocks(sparse_moe, tmp_path):
    """bench-moe times the rest of the model with a graph whose MoE nodes pass their input through."""
    from exports.graph import model_feeds, ort_session
    from exports.moe_graph import without_moe

    path, config, _ = sparse_moe
    rest = without_moe(path, tmp_path / "rest.onnx")
    assert "MoE" not in {n.op_type for n in onnx.load(str(rest)).graph.node}
    sparse_sess, rest_sess = ort_session(path, 1), ort_session(rest, 1)
    feeds = model_feeds(sparse_sess, batch=2, new=1, past=5, vocab=config["vocab_size"])
    assert feeds["past_key_values.0.key"].shape == (2, config["num_key_value_heads"], 5, config["head_dim"])
    with_moe, no_moe = sparse_sess.run(["logits"], feeds)[0], rest_sess.run(["logits"], feeds)[0]
    assert with_moe.shape == no_moe.shape == (2, 1, config["vocab_size"])
    assert np.abs(with_moe - no_moe).max() > 1e-3  # the experts did contribute
