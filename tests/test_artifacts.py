"""Model directories: a corrupt or incomplete one gives a clear error, not a deep ORT traceback."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from runtime.artifacts import ModelError, load_model_dir, write_manifest
from runtime.engine import CPU, CUDA, OrtEngine, choose_providers


@pytest.fixture()
def model_copy(tiny_models, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_models["qwen3"], dst)
    return dst


def test_loads_and_reports_shapes(tiny_models):
    art = load_model_dir(tiny_models["qwen3_moe"])
    assert art.name == "tiny-qwen3_moe"
    assert art.info.num_layers == 2 and art.info.vocab_size == 512
    assert art.manifest["active_parameters"] < art.manifest["parameters"]  # 2 of 8 experts active


def test_missing_directory(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model_dir(tmp_path / "nope")


@pytest.mark.parametrize("fname", ["model.onnx", "config.json", "tokenizer.json", "murmurate.json"])
def test_missing_file(model_copy, fname):
    (model_copy / fname).unlink()
    with pytest.raises(ModelError, match=f"missing.*{fname}|{fname}.*missing"):
        load_model_dir(model_copy)


def test_checksum_mismatch(model_copy):
    data = bytearray((model_copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (model_copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum mismatch for model.onnx"):
        load_model_dir(model_copy)


def test_truncated_graph_with_matching_manifest(model_copy):
    onnx_path = model_copy / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes()[:1000])
    write_manifest(model_copy, "broken")
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        load_model_dir(model_copy)


def test_graph_without_kv_inputs(model_copy):
    import onnx
    from onnx import TensorProto, helper

    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "t"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "t"])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "t", 512])
    node = helper.make_node("Cast", ["input_ids"], ["logits"], to=TensorProto.FLOAT)
    graph = helper.make_graph([node], "no-kv", [ids, mask], [logits])
    onnx.save(helper.make_model(graph), model_copy / "model.onnx")
    write_manifest(model_copy, "no-kv")
    with pytest.raises(ModelError, match="no past_key_values"):
        load_model_dir(model_copy)


def test_vocab_mismatch(model_copy):
    cfg = json.loads((model_copy / "config.json").read_text())
    cfg["vocab_size"] = 1000
    (model_copy / "config.json").write_text(json.dumps(cfg))
    write_manifest(model_copy, "wrong-vocab")
    with pytest.raises(ModelError, match="logits have 512 entries but config.json vocab_size is 1000"):
        load_model_dir(model_copy)


def test_bad_config_json(model_copy):
    (model_copy / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="checksum mismatch for config.json"):
        load_model_dir(model_copy)
    with pytest.raises(ModelError, match="config.json: not valid JSON"):
        load_model_dir(model_copy, verify=False)


def test_engine_runs_a_loaded_model(tiny_models):
    eng = OrtEngine(load_model_dir(tiny_models["llama"]))
    ids = np.array([[5, 6, 7]])
    logits, kv = eng.forward(ids, np.arange(3)[None], np.ones((1, 3)), eng.empty_kv(1))
    assert logits.shape == (1, 512) and kv.width == 3 and eng.providers == [CPU]


def test_provider_choice():
    assert choose_providers(None, [CPU]) == [CPU]
    assert choose_providers("auto", [CPU]) == [CPU]
    assert choose_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers("cuda", [CUDA, CPU]) == [CUDA, CPU]
    with pytest.raises(ModelError, match="CUDAExecutionProvider.*not available"):
        choose_providers("cuda", [CPU])
    with pytest.raises(ModelError, match="unknown provider choice"):
        choose_providers("tpu", [CPU])


def test_a_model_trained_without_the_first_segments_is_served_without_them(model_copy):
    """``prompt_skip_segments`` in config.json: the runtime drops those leading segments for it."""
    from runtime.artifacts import model_tokenizer
    from runtime.types import Request, SamplingParams
    from runtime.worker import WorkerConfig, build_batcher

    plain = build_batcher(WorkerConfig(str(model_copy)))
    config = json.loads((model_copy / "config.json").read_text())
    (model_copy / "config.json").write_text(json.dumps({**config, "prompt_skip_segments": 1}))
    write_manifest(model_copy, "tiny-qwen3")
    art = load_model_dir(model_copy)
    assert art.info.skip_segments == 1
    tok = model_tokenizer(art)
    assert tok.encode_prompt(("the rules\n\n", "an agent\n\n", "now")) == plain.tok.encode_prompt(
        ("an agent\n\n", "now")
    )
    lean = build_batcher(WorkerConfig(str(model_copy)))
    greedy = SamplingParams(max_tokens=5)
    full, short = ("the rules\n\n", "an agent\n\n", "now"), ("an agent\n\n", "now")
    a, b, c = lean.run(
        [Request(model="m", prompt=full, sampling=greedy), Request(model="m", prompt="now", sampling=greedy)]
    ) + plain.run([Request(model="m", prompt=short, sampling=greedy)])
    assert a.ok and a.token_ids == c.token_ids and a.prompt_tokens == c.prompt_tokens
    assert not b.ok and "reads prompts from segment 2 on" in b.error
    config["prompt_skip_segments"] = -1
    (model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="prompt_skip_segments"):
        load_model_dir(model_copy, verify=False)
