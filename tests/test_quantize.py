"""``murmurate models quantize``: int8 copies of a model, made once, remade when the source changes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from exports.quantize import BLOCKWISE, QUANTIZED, quantize_model_dir, quantized_copy
from runtime.artifacts import load_model_dir
from runtime.cli import main as cli_main


def _logits(model_dir, ids):
    import onnxruntime as ort

    art = load_model_dir(model_dir)
    sess = ort.InferenceSession(str(art.onnx_path), providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        if i.name == "input_ids":
            feeds[i.name] = ids
        elif i.name == "attention_mask":
            feeds[i.name] = np.ones_like(ids)
        elif i.name == "position_ids":
            feeds[i.name] = np.arange(ids.shape[1], dtype=np.int64)[None].repeat(ids.shape[0], 0)
        else:  # an empty past
            feeds[i.name] = np.zeros((ids.shape[0], art.info.num_kv_heads, 0, art.info.head_dim), np.float32)
    return sess.run(["logits"], feeds)[0]


@pytest.mark.parametrize("method,op", [(BLOCKWISE, "MatMulNBits"), (QUANTIZED, "MatMulInteger")])
def test_a_quantized_copy_runs_close_to_the_fp32_model(tiny_models, tmp_path, method, op):
    import onnx

    src = tiny_models["llama"]
    dst = quantize_model_dir(src, tmp_path / "q", method=method)
    art = load_model_dir(dst)  # checksums of the new graph recorded and verified
    assert art.manifest["quantized"] == method
    assert art.manifest["quantized_from_sha256"] == load_model_dir(src).manifest["files"]["model.onnx"]
    ops = {n.op_type for n in onnx.load(str(art.onnx_path)).graph.node}
    assert op in ops and "MatMul" in ops  # the attention's activation-by-activation MatMuls stay fp32
    ids = np.random.default_rng(0).integers(0, art.info.vocab_size, (2, 12))
    ref, got = _logits(src, ids), _logits(dst, ids)
    assert got.shape == ref.shape
    # int8 weights move the logits a little, never wholesale
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max() + 1e-3
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model_dir(dst, tmp_path / "qq")
    with pytest.raises(ValueError, match="unknown quantization method"):
        quantize_model_dir(src, tmp_path / "bad", method="int4")


def test_quantized_copy_is_made_once_and_remade_when_the_source_changes(tiny_models, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(tiny_models["llama"], src)
    models = tmp_path / "models"
    first = quantized_copy(src, models_dir=models)
    stamp = (first / "model.onnx").stat().st_mtime_ns
    assert quantized_copy(src, models_dir=models) == first
    assert (first / "model.onnx").stat().st_mtime_ns == stamp  # reused, not quantized again
    # a new source graph (here: re-exported with other weights) makes a new copy
    shutil.copy(tiny_models["qwen3"] / "model.onnx", src / "model.onnx")
    manifest = json.loads((src / "murmurate.json").read_text())
    from runtime.artifacts import sha256_file

    manifest["files"]["model.onnx"] = sha256_file(src / "model.onnx")
    (src / "murmurate.json").write_text(json.dumps(manifest))
    again = quantized_copy(src, models_dir=models)
    assert again == first
    assert load_model_dir(again).manifest["quantized_from_sha256"] == manifest["files"]["model.onnx"]


def test_models_quantize_cli_writes_a_named_copy_that_models_list_finds(
    tiny_models, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MURMURATE_MODELS", str(tmp_path / "models"))
    src = tiny_models["qwen3"]
    name = load_model_dir(src).name
    assert cli_main(["models", "quantize", str(src)]) == 0
    assert f"{name}-q8" in capsys.readouterr().out
    assert cli_main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    assert f"{name}-q8" in listing and "int8-block32" in listing  # the weights column says how
    assert cli_main(["models", "quantize", str(src), "--method", "int8-dynamic"]) == 0
    art = load_model_dir(tmp_path / "models" / f"{name}-int8")
    assert art.manifest["quantized"] == QUANTIZED and art.manifest["quantized_from"] == name
