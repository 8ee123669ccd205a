"""Grouped-query attention export (:mod:`exports.attention`): parity with transformers, graph shape.

Letter legend: B = batch rows, H = query heads, Hkv = KV heads, T = new tokens, S = KV length,
D = head size, V = vocabulary.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("optimum.exporters.onnx")

import torch  # noqa: E402

from exports.attention import (  # noqa: E402
    GROUPED_ATTENTION,
    grouped_export_unsupported,
    grouped_query_attention,
    register_grouped_attention,
)

ATOL = 1e-4
ARCHS = ["llama", "qwen3", "qwen3_moe"]  # the session's tiny_models (qwen3 has q/k norm)
MORE_ARCHS = ["mistral", "qwen2"]  # also exported with grouped attention by default


# ------------------------------------------------------------------------------------ torch level


def _eager_reference(query, key, value, mask, scaling):
    """transformers' eager GQA (K/V repeated per query head), as the ground truth."""
    from transformers.models.llama.modeling_llama import eager_attention_forward

    module = torch.nn.Module().eval()
    module.num_key_value_groups = query.shape[1] // key.shape[1]
    return eager_attention_forward(module, query, key, value, mask, scaling=scaling)[0]


@pytest.mark.parametrize(("heads", "kv_heads", "q_len"), [(8, 2, 1), (8, 2, 5), (4, 4, 3), (6, 1, 4)])
def test_grouped_matches_eager_attention(heads, kv_heads, q_len):
    gen = torch.Generator().manual_seed(0)
    batch, kv_len, head_dim = 3, 7, 16
    query = torch.randn(batch, heads, q_len, head_dim, generator=gen)
    key = torch.randn(batch, kv_heads, kv_len, head_dim, generator=gen)
    value = torch.randn(batch, kv_heads, kv_len, head_dim, generator=gen)
    # (B, 1, T, S) additive mask with a left pad, a hole and a longer-than-S tail (sliced away).
    keep = torch.ones(batch, 1, q_len, kv_len + 2, dtype=torch.bool)
    keep[0, ..., :2] = False
    keep[1, ..., 3] = False
    mask = torch.where(keep, 0.0, torch.finfo(torch.float32).min)
    module = torch.nn.Module().eval()
    got, weights = grouped_query_attention(module, query, key, value, mask, scaling=0.3)
    want = _eager_reference(query, key, value, mask, 0.3)
    assert weights is None
    assert got.shape == (batch, q_len, heads, head_dim)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_unsupported_configs_fall_back():
    base = {"model_type": "llama", "num_attention_heads": 8, "num_key_value_heads": 2}
    assert grouped_export_unsupported(base) is None
    assert "gpt2" in grouped_export_unsupported({**base, "model_type": "gpt2"})
    assert "split" in grouped_export_unsupported({**base, "num_key_value_heads": 3})
    assert "softcapping" in grouped_export_unsupported({**base, "attn_logit_softcapping": 50.0})


# ------------------------------------------------------------------------------------ ONNX graphs


def _session(model_dir):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(model_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])


def _run(session, ids, mask, positions, past):
    """One graph call; ``past`` is a list of (key, value) arrays (B, Hkv, S_past, D) per layer."""
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    for i, (k, v) in enumerate(past):
        feeds[f"past_key_values.{i}.key"] = k
        feeds[f"past_key_values.{i}.value"] = v
    out = session.run(None, feeds)
    names = [o.name for o in session.get_outputs()]
    logits = out[names.index("logits")]
    present = [
        (out[names.index(f"present.{i}.key")], out[names.index(f"present.{i}.value")])
        for i in range(len(past))
    ]
    return logits, present


def _empty_past(session, batch):
    past, layers = [], sum(1 for i in session.get_inputs() if i.name.endswith(".key"))
    shape = next(i.shape for i in session.get_inputs() if i.name == "past_key_values.0.key")
    for _ in range(layers):
        empty = np.zeros((batch, shape[1], 0, shape[3]), np.float32)
        past.append((empty, empty))
    return past


def _batch(vocab):
    """Three rows over 12 slots: full, left-padded by 5, and a 3-slot hole in the middle.

    Returns (B, 12) ids, the (B, 12) 0/1 mask and (B, 12) positions counting kept slots only, as the
    runtime lays out rows that share a batch.
    """
    rng = np.random.default_rng(0)
    ids = rng.integers(3, vocab, (3, 12), dtype=np.int64)
    mask = np.ones((3, 12), np.int64)
    mask[1, :5] = 0
    mask[2, 4:7] = 0
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    return ids, mask, positions


def _hf_logits(hf, ids, mask, positions):
    with torch.no_grad():
        out = hf(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(positions),
            use_cache=False,
        )
    return out.logits.numpy()


@pytest.fixture(scope="module")
def exported(tiny_models, tmp_path_factory):
    """ONNX model dirs of every architecture exported with grouped attention by default."""
    from exports.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("grouped-more")
    more = {arch: build_tiny_model(arch, root / arch, preset="test", seed=7) for arch in MORE_ARCHS}
    return {**tiny_models, **more}


@pytest.fixture(scope="module")
def hf_models(exported):
    from transformers import AutoModelForCausalLM

    return {
        arch: AutoModelForCausalLM.from_pretrained(path.parent / "hf").eval()
        for arch, path in exported.items()
    }


@pytest.mark.parametrize("arch", ARCHS + MORE_ARCHS)
def test_exported_logits_match_transformers(exported, hf_models, arch):
    """Prefill, a 3-token chunk on top of it and a 1-token decode step, all against transformers."""
    hf, session = hf_models[arch], _session(exported[arch])
    ids, mask, positions = _batch(hf.config.vocab_size)
    batch = ids.shape[0]
    want = _hf_logits(hf, ids, mask, positions)  # (B, 12, V), the whole sequence at once

    # Prefill the first 8 slots, then a 3-token chunk (T > 1 with past), then one decode token.
    got, past = [], _empty_past(session, batch)
    for lo, hi in [(0, 8), (8, 11), (11, 12)]:
        logits, past = _run(session, ids[:, lo:hi], mask[:, :hi], positions[:, lo:hi], past)
        got.append(logits)
        assert past[0][0].shape[2] == hi  # present KV keeps Hkv heads and grows by T
    got = np.concatenate(got, axis=1)

    kept = mask.astype(bool)  # padded and hole slots have no meaningful output
    diff = float(np.abs(got - want)[kept].max())
    assert diff <= ATOL, f"{arch}: max |onnx - transformers| = {diff:.2e}"
    assert np.isfinite(got).all()


@pytest.mark.parametrize("arch", ARCHS + MORE_ARCHS)
def test_graph_repeats_no_kv(exported, arch):
    """No ``Expand`` copies past K/V, and the export is recorded in the manifest.

    A repeat_kv is an ``Expand`` reached from a ``past_key_values`` input through data-moving ops
    only; tensors computed from K/V by a ``MatMul`` (attention outputs, MoE routing) do not count.
    """
    import onnx

    model_dir = exported[arch]
    graph = onnx.load(str(model_dir / "model.onnx"), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}

    def reads_past(tensor):
        """Whether ``tensor`` holds past K/V values, moved but not computed on by a MatMul."""
        todo, seen = [tensor], set()
        while todo:
            name = todo.pop()
            if name.startswith("past_key_values."):
                return True
            node = producer.get(name)
            # A Shape reads only the size of its input (masks and positions use the past's length).
            if node is None or node.name in seen or node.op_type in ("Shape", "MatMul"):
                continue
            seen.add(node.name)
            todo.extend(i for i in node.input if i)
        return False

    expands = [n for n in graph.node if n.op_type == "Expand"]
    assert not [n.name for n in expands if reads_past(n.input[0])]
    manifest = json.loads((model_dir / "murmurate.json").read_text())
    assert manifest["attention"] == "grouped"
    assert GROUPED_ATTENTION not in (model_dir / "config.json").read_text()


def test_registration_is_idempotent():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    assert register_grouped_attention() == register_grouped_attention() == GROUPED_ATTENTION
    assert GROUPED_ATTENTION in AttentionInterface()
    assert GROUPED_ATTENTION in AttentionMaskInterface()
