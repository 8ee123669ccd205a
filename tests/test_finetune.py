"""``murmurate models finetune`` and ``exports.recover`` on the tiny build (``built`` in conftest):
weights read back out of an exported graph, and fine-tunes written as new carded model directories
(from the student, from an ONNX-only teacher, in place)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("optimum.exporters.onnx")

from exports.build import DENSE, INT8, STUDENT, TEACHER  # noqa: E402
from runtime.artifacts import load_model_dir  # noqa: E402


@pytest.mark.parametrize("name", [TEACHER, DENSE])
def test_weights_recovered_from_the_onnx_graph_reproduce_it(built, tmp_path, name):
    import torch
    from transformers import AutoModelForCausalLM

    from exports.recover import main as recover_main
    from exports.recover import recover_weights

    out, _ = built
    r = recover_weights(out / name, tmp_path / "hf")
    assert r["max_abs_diff"] == 0.0 and r["tensors"] > 10
    # The recovered model computes what the shipped graph computes, and a training run can start from it.
    import onnxruntime as ort

    from exports.graph import model_feeds

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    sess = ort.InferenceSession(str(out / name / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = model_feeds(sess, batch=2, new=7, past=0, vocab=model.config.vocab_size, seed=3)
    onnx_logits = sess.run(["logits"], feeds)[0][:, -1]
    with torch.no_grad():
        logits = model(torch.from_numpy(feeds["input_ids"])).logits[:, -1].numpy()
    assert np.abs(onnx_logits - logits).max() <= 1e-3
    recover_main([str(out / name), str(tmp_path / "again")])
    assert (tmp_path / "again" / "model.safetensors").is_file() and (
        tmp_path / "again" / "tokenizer.json"
    ).is_file()
    # A graph of another configuration is refused with a message, not silently mismatched.
    other = tmp_path / "other"
    shutil.copytree(out / name, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 8}))
    with pytest.raises(ValueError, match="not exported as this configuration"):
        recover_weights(other, tmp_path / "bad")


def test_finetune_writes_a_carded_model_from_the_student_and_from_an_onnx_only_teacher(
    built, tmp_path, capsys, monkeypatch
):
    from exports.finetune import FINETUNE, finetune_model
    from runtime.cli import main

    out, _ = built
    cfg = replace(FINETUNE, steps=3, batch_size=4)
    sizes = {"card_examples": 6, "speed_batch": 6}
    r = finetune_model(out / STUDENT, tmp_path / "student-ft", cfg, **sizes, int8=True, progress=False)
    card = r["card"]
    source = json.loads((out / STUDENT / "model_card.json").read_text())
    assert card["name"] == "student-ft" and card["task"] == "act"
    assert card["built"]["fine_tune"]["from"] == STUDENT and card["built"]["fine_tune"]["steps"] == 3
    assert card["built"]["preset"] == source["built"]["preset"]  # how it was built before is kept
    assert card["heldout"]["heldout_seed"]["n"] == 6 and card["runtime"]["speedup_vs_teacher"] > 0
    # The held-out loss over every example of the split, not only the sample's.
    from exports.card import card_dataset

    data = card_dataset(out / STUDENT)
    for split in ("heldout_seed", "heldout_persona"):
        held = card["heldout"][split]
        assert held["loss_all"] > 0 and held["loss_all_tokens"] >= len(data[split]) > 6
    ft = load_model_dir(tmp_path / "student-ft")  # checksummed, card included
    assert ft.info.skip_segments == load_model_dir(out / STUDENT).info.skip_segments
    assert (tmp_path / "student-ft" / "hf" / "model.safetensors").is_file()  # the baselines' weights travel
    if r["int8"]["kept"]:  # barely trained, the tiny student may disagree with its int8 copy
        int8 = load_model_dir(tmp_path / "student-ft-int8")
        assert (
            int8.manifest["quantized"] == "int8-dynamic" and int8.manifest["quantized_from"] == "student-ft"
        )
    else:
        assert not (tmp_path / "student-ft-int8").exists()
    # The teacher ships without transformers weights: it starts from those read back out of its graph;
    # asked to, it learns to decide without the world's rules (the first prompt segment), as the student.
    assert not (out / TEACHER / "hf").exists()
    assert load_model_dir(out / TEACHER).info.skip_segments == 0
    args = [
        "models",
        "finetune",
        str(out / TEACHER),
        "--out",
        str(tmp_path),
        "--as",
        "teacher-ft",
        "--steps",
        "2",
    ]
    # ... on every decision of the training worlds (a rollout of its own, cached beside the user models).
    monkeypatch.setenv("MURMURATE_MODELS", str(tmp_path / "user-models"))
    assert main([*args, "--batch-size", "4", "--skip-segments", "1", "--train-sample-rate", "1"]) == 0
    assert "ready: teacher-ft" in capsys.readouterr().out
    teacher_card = json.loads((tmp_path / "teacher-ft" / "model_card.json").read_text())
    record = teacher_card["built"]["fine_tune"]
    source = json.loads((out / TEACHER / "model_card.json").read_text())["built"]["data"]
    assert record["dataset_spec"]["train_sample_rate"] == 1.0
    assert list((tmp_path / "datasets").glob("act-*.jsonl"))
    assert record["data"]["train"] > source["train"]
    assert record["data"]["heldout_seed"] == source["heldout_seed"]  # the same held-out split
    assert (
        teacher_card["architecture"] == "qwen3_moe" and teacher_card["built"]["fine_tune"]["from"] == TEACHER
    )
    assert teacher_card["built"]["fine_tune"]["skip_segments"] == 1
    assert load_model_dir(tmp_path / "teacher-ft").info.skip_segments == 1  # the runtime drops the rules
    assert not (tmp_path / "teacher-ft" / "hf").exists()  # ONNX only, as the teacher it came from
    assert [p.name.endswith("-skip1") for p in (tmp_path / ".build").glob("finetune-teacher-ft-*")] == [True]
    with pytest.raises(ValueError, match="skip_segments is -1"):
        finetune_model(out / TEACHER, tmp_path / "nope", cfg, **sizes, skip_segments=-1, progress=False)
    with pytest.raises(ValueError, match="quantized"):
        finetune_model(out / INT8, tmp_path / "nope", cfg, **sizes, progress=False)
    # In place, as the shipped student was made: the model directory is replaced by its fine-tune.
    shelf = tmp_path / "shelf"
    for name in (STUDENT, TEACHER):
        shutil.copytree(out / name, shelf / name)
    shutil.copytree(out / ".build", shelf / ".build")  # the dataset the models were built from
    before = (shelf / STUDENT / "model.onnx").read_bytes()
    finetune_model(shelf / STUDENT, shelf / STUDENT, cfg, **sizes, progress=False)
    again = load_model_dir(shelf / STUDENT)
    assert again.name == STUDENT and (shelf / STUDENT / "model.onnx").read_bytes() != before
    assert (
        json.loads((shelf / STUDENT / "model_card.json").read_text())["built"]["fine_tune"]["from"] == STUDENT
    )
    # Again: it starts from the new weights (a run of its own), not by resuming the finished first run;
    # the card keeps the first fine-tune's record under the second's.
    once = (shelf / STUDENT / "model.onnx").read_bytes()
    r = finetune_model(shelf / STUDENT, shelf / STUDENT, cfg, **sizes, progress=False)
    assert (shelf / STUDENT / "model.onnx").read_bytes() != once
    assert r["card"]["built"]["fine_tune"]["previous"]["from"] == STUDENT
    assert len(list((shelf / ".build").glob("finetune-*"))) == 2
