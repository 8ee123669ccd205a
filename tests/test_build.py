"""``murmurate models build`` in miniature: the whole factory at the tiny scale (about 15 s), then
what each product must be (loadable, carded, checksummed), the int8 variant, ``models eval``
through the runtime, and re-runs that skip or resume finished stages."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import onnx
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("optimum.exporters.onnx")

from exports.build import DENSE, INT8, STUDENT, TEACHER, build_models, eval_model, heldout_examples, make_plan  # noqa: E402
from runtime.artifacts import MANIFEST, load_model_dir  # noqa: E402

ALL_STAGES = [
    "dataset",
    "tokenizer",
    "train-teacher",
    "train-dense",
    "distill-student",
    "dagger-student",
    "export-rules-student",
    "lean-student",
    "student-states",
    "refine-teacher",
    "refine-dense",
    "export-student",
    "export-teacher",
    "export-dense",
    "quantize-student",
    "cards",
]


def test_build_runs_every_stage_and_makes_three_carded_models(built):
    out, result = built
    assert result["ran"] == ALL_STAGES and result["skipped"] == []
    assert set(result["models"]) == {TEACHER, DENSE, STUDENT, INT8}
    tokenizers = set()
    for name in (TEACHER, DENSE, STUDENT):
        art = load_model_dir(out / name)  # verifies every checksum, the card's included
        assert art.name == name
        assert "model_card.json" in art.manifest["files"]
        assert "last_token_logits" in art.manifest["graph_rewrites"]
        # The teacher's MoE blocks are ONNX Runtime MoE nodes (top-2 of its experts), one a layer.
        ops = [n.op_type for n in onnx.load(str(out / name / "model.onnx")).graph.node]
        sparse = name == TEACHER
        assert ("sparse_moe" in art.manifest["graph_rewrites"]) == sparse
        assert ops.count("MoE") == (art.info.num_layers if sparse else 0)
        card = json.loads((out / name / "model_card.json").read_text())
        assert card["name"] == name and card["task"] == "act" and card["quantized"] is False
        for split in ("heldout_seed", "heldout_persona"):
            held = card["heldout"][split]
            assert 0.0 <= held["exact_match"] <= 1.0 and held["n"] > 0 and held["loss"] > 0
        assert card["runtime"]["decisions_per_s"] > 0
        assert card["built"]["seed"] == 0 and card["built"]["steps"] == make_plan("tiny").teacher.steps
        assert card["built"]["data"]["train"] > 0
        tokenizers.add((out / name / "tokenizer.json").read_text())
    assert len(tokenizers) == 1  # one tokenizer: distillation and loss comparisons need it
    teacher = json.loads((out / TEACHER / "model_card.json").read_text())
    assert teacher["architecture"] == "qwen3_moe"
    assert teacher["active_parameters"] < teacher["parameters"]
    student = json.loads((out / STUDENT / "model_card.json").read_text())
    assert student["built"]["distilled_from"] == TEACHER and student["int8_check"]["n"] > 0
    # DAgger: the student ran in closed loop, the expert labelled what it saw, it was fine-tuned.
    dagger = student["built"]["dagger"]
    assert dagger["rounds"] == 1 and dagger["examples"] > 0
    (record,) = dagger["rounds_run"]
    assert 0.0 <= record["on_policy_match_before"] <= 1.0 and record["examples"] == dagger["examples"]
    assert teacher["built"]["dagger"] is None
    # ...then refining rounds on other worlds, rare action kinds drawn more often
    refine = student["built"]["refine"]
    assert refine["balance"] == 0.5 and refine["seed"] != dagger["seed"] and refine["examples"] > 0
    (record,) = refine["rounds_run"]
    assert record["seeds"] != dagger["rounds_run"][0]["seeds"]
    assert teacher["built"]["refine"] is None
    # ...and last the lean rounds, on prompts without the rules, which the runtime then drops for it.
    lean = student["built"]["lean"]
    assert lean["skip_segments"] == 1 and lean["examples"] > 0 and teacher["built"]["lean"] is None
    # ...closed by a polish on renamed and reordered examples, whose weights are the ones shipped
    assert lean["polish_steps"] > 0 and set(lean["polish"]) == {"heldout_seed", "heldout_persona"}
    assert (out / ".build" / "lean" / "polish" / "hf").is_dir()
    assert load_model_dir(out / STUDENT).info.skip_segments == 1
    assert load_model_dir(out / TEACHER).info.skip_segments == 0
    assert (out / ".build" / "student-rules" / "model.onnx").is_file()  # its rollouts are the states
    # ...and the final student's own states, expert-labelled, refine the teacher and the baseline.
    dense = json.loads((out / DENSE / "model_card.json").read_text())
    for card in (teacher, dense):
        states = card["built"]["states"]
        assert states["examples"] > 0 and states["seed"] not in (dagger["seed"], refine["seed"])
        assert card["built"]["train_wall_s"] > 0  # the training and the fine-tuning on the states
    assert student["built"]["states"] is None
    assert student["runtime"]["speedup_vs_teacher"] > 0 and "speedup_vs_teacher" not in teacher["runtime"]
    # The student carries its transformers weights (for the per-agent baseline), checksummed.
    from runtime.artifacts import hf_weights_dir

    art = load_model_dir(out / STUDENT)
    assert "hf/model.safetensors" in art.manifest["files"] and hf_weights_dir(art) == out / STUDENT / "hf"
    assert "hf/model.safetensors" not in load_model_dir(out / TEACHER).manifest["files"]
    # The registry would find them: the work directory is not mistaken for a model.
    assert not (out / ".build" / MANIFEST).exists()


def test_card_is_covered_by_the_checksum(built, tmp_path):
    out, _ = built
    copy = shutil.copytree(out / STUDENT, tmp_path / "copy")
    card = json.loads((copy / "model_card.json").read_text())
    card["heldout"]["heldout_persona"]["exact_match"] = 1.0
    (copy / "model_card.json").write_text(json.dumps(card))
    from runtime.artifacts import ModelError

    with pytest.raises(ModelError, match="model_card.json"):
        load_model_dir(copy)


def test_int8_variant_loads_is_quantized_and_serves_valid_actions(built):
    import onnx

    from agents.actions import parse_action
    from exports.card import action_constraint
    from exports.dataset import load_dataset
    from exports.quantize import serve_greedy
    from worlds.village import VillageAction

    out, result = built
    art = load_model_dir(out / INT8)
    assert art.manifest["quantized"] == "int8-dynamic" and art.manifest["quantized_from"] == STUDENT
    assert "quantize_int8_dynamic" in art.manifest["graph_rewrites"]
    ops = {n.op_type for n in onnx.load(out / INT8 / "model.onnx").graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul"}, ops
    assert (out / INT8 / "model.onnx").stat().st_size < (out / STUDENT / "model.onnx").stat().st_size
    card = json.loads((out / INT8 / "model_card.json").read_text())
    assert card["quantized"] == "int8-dynamic" and 0.0 <= card["int8_check"]["agreement"] <= 1.0
    data = load_dataset(out / ".build" / "act.jsonl")
    prompts = [ex.prompt for ex in data["heldout_persona"][:3]]
    for text in serve_greedy(out / INT8, prompts, constraint=action_constraint()):
        parse_action(VillageAction, text)


def test_models_eval_reports_accuracy_through_the_runtime(built, capsys):
    from runtime.cli import main

    out, _ = built
    r = eval_model(out / STUDENT, "heldout_seed", limit=5)
    assert r["n"] == 5 and 0.0 <= r["exact_match"] <= 1.0 and r["parse_fail"] == 0
    assert sum(n for _, n in r["by_action"].values()) == 5
    assert main(["models", "eval", str(out / TEACHER), "--split", "heldout_persona", "--limit", "4"]) == 0
    text = capsys.readouterr().out
    assert "exact match" in text and "on 4 examples" in text
    value = float(text.split("exact match ")[-1].split()[0])
    assert 0.0 <= value <= 1.0
    with pytest.raises(ValueError, match="split"):
        eval_model(out / STUDENT, "train")


def test_models_eval_writes_every_mistake_with_its_observation(built, tmp_path, capsys):
    from runtime.cli import main

    out, _ = built
    r = eval_model(out / TEACHER, "heldout_seed", limit=12, mistakes=-1)
    wrong = r["n"] - round(r["exact_match"] * r["n"])
    assert wrong > 0 and len(r["mistakes"]) == wrong  # every one (the tiny teacher is barely trained)
    path = tmp_path / "mistakes.jsonl"
    assert (
        main(
            [
                "models",
                "eval",
                str(out / TEACHER),
                "--split",
                "heldout_seed",
                "--limit",
                "12",
                "--mistakes",
                str(path),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == r["mistakes"]  # greedy decoding: the same outputs through the command
    examples = {
        (e.world_seed, e.agent, str(e.tick)): e for e in heldout_examples(out / TEACHER, "heldout_seed")
    }
    for row in rows:  # each names its example unambiguously, observation included
        ex = examples[(row["world_seed"], row["agent"], row["tick"])]
        assert row["observation"] == ex.prompt[-1] and row["expert"] == ex.target and row["role"] == ex.role
    assert f"wrote {len(rows)} mistakes" in capsys.readouterr().out
    cascade = ["models", "eval", str(out / STUDENT), "--cascade", str(out / TEACHER), "--mistakes", str(path)]
    assert main(cascade) == 2 and "does not apply with --cascade" in capsys.readouterr().out


def test_cascade_eval_trades_teacher_calls_for_accuracy(built, tmp_path, capsys):
    from exports.card import cascade_accuracy, runtime_accuracy
    from exports.dataset import load_dataset
    from runtime.cli import main

    out, _ = built
    examples = load_dataset(out / ".build" / "act.jsonl")["heldout_seed"]
    r = cascade_accuracy(out / STUDENT, out / TEACHER, examples, [0.0, 0.5, 1.0], limit=8)
    alone = {m: runtime_accuracy(out / m, examples, limit=8)["exact_match"] for m in (STUDENT, TEACHER)}
    assert r["n"] == 8 and r["student"] == alone[STUDENT] and r["teacher"] == alone[TEACHER]
    shares = [row["teacher_share"] for row in r["rows"]]
    assert shares == sorted(shares)  # a higher threshold escalates at least as often
    # Threshold 0 never escalates a served request: the student's accuracy exactly.
    assert shares[0] == 0.0 and r["rows"][0]["exact_match"] == r["student"]
    js = tmp_path / "c.json"
    args = ["models", "eval", str(out / STUDENT), "--cascade", str(out / TEACHER), "--limit", "4"]
    assert main([*args, "--thresholds", "0.5,0.9", "--json", str(js)]) == 0
    assert [row["threshold"] for row in json.loads(js.read_text())["rows"]] == [0.5, 0.9]
    assert "teacher share" in capsys.readouterr().out
    assert main([*args, "--thresholds", "2"]) == 2


def test_rerun_skips_finished_stages_and_redoes_only_what_is_missing(built):
    out, first = built
    again = build_models(out, scale="tiny", int8_min_agreement=0.0, progress=False)
    assert again["ran"] == [] and again["skipped"] == ALL_STAGES
    assert again["cards"][STUDENT]["heldout"] == first["cards"][STUDENT]["heldout"]
    # A lost student export is redone, with what depends on it; training is not.
    shutil.rmtree(out / STUDENT)
    redo = build_models(out, scale="tiny", int8_min_agreement=0.0, progress=False)
    assert redo["ran"] == ["export-student", "quantize-student", "cards"]
    load_model_dir(out / STUDENT)


def test_interrupted_training_resumes_from_its_checkpoint(built, tmp_path):
    import torch

    out, _ = built
    work = tmp_path / "m"
    shutil.copytree(out, work)
    # As if killed after the student's checkpoint and before its final save: the stage is not
    # recorded as done and its hf/ directory is missing.
    state = json.loads((work / ".build" / "state.json").read_text())
    del state["done"]["distill-student"]
    (work / ".build" / "state.json").write_text(json.dumps(state))
    shutil.rmtree(work / ".build" / "student" / "hf")
    ckpt = torch.load(work / ".build" / "student" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == make_plan("tiny").student.steps
    result = build_models(work, scale="tiny", int8_min_agreement=0.0, progress=False)
    assert result["ran"][0] == "distill-student" and "train-teacher" in result["skipped"]
    from safetensors.torch import load_file

    a = load_file(out / ".build" / "student" / "hf" / "model.safetensors")
    b = load_file(work / ".build" / "student" / "hf" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # resumed at the end: no step redone


def test_int8_is_dropped_when_it_disagrees(built, tmp_path, monkeypatch):
    import exports.quantize as q

    out, _ = built
    work = tmp_path / "m"
    shutil.copytree(out, work)
    monkeypatch.setattr(q, "greedy_agreement", lambda *a, **k: {"n": 3, "agreement": 0.5, "differences": []})
    result = build_models(work, scale="tiny", int8_min_agreement=0.9, progress=False)
    # Only the stages whose inputs changed re-run: the int8 check and the cards.
    assert result["ran"] == ["quantize-student", "cards"]
    assert INT8 not in result["models"] and not (work / INT8).exists()
    assert result["int8"]["kept"] is False
    card = json.loads((work / STUDENT / "model_card.json").read_text())
    assert card["int8_check"]["kept"] is False


def test_the_same_seed_reproduces_the_weights(built, tmp_path):
    from safetensors.torch import load_file

    out, _ = built
    fresh = build_models(tmp_path / "again", scale="tiny", int8_min_agreement=0.0, progress=False)
    assert fresh["ran"] == ALL_STAGES
    for run in ("teacher", "student"):
        a = load_file(out / ".build" / run / "hf" / "model.safetensors")
        b = load_file(tmp_path / "again" / ".build" / run / "hf" / "model.safetensors")
        assert all(a[k].equal(b[k]) for k in a), run
    with pytest.raises(ValueError, match="scale"):
        make_plan("huge")


def test_fresh_names_reach_the_dataset_and_every_stage_key():
    plain, fresh = make_plan("full"), make_plan("full", fresh_names=0.5)
    assert plain.data.fresh_names == 0.0 and fresh.data.fresh_names == 0.5
    a, b = plain.stage_keys(), fresh.stage_keys()
    assert a.keys() == b.keys() and all(a[k] != b[k] for k in a)


def test_a_new_observation_text_changes_every_stage_key(monkeypatch):
    import exports.plan
    import worlds.village.observation

    plan = make_plan("full")
    a = plan.stage_keys()
    monkeypatch.setattr(exports.plan, "OBSERVATION_FORMAT", exports.plan.OBSERVATION_FORMAT + 1)
    monkeypatch.setattr(worlds.village.observation, "OBSERVATION_FORMAT", exports.plan.OBSERVATION_FORMAT)
    b = plan.stage_keys()
    assert a.keys() == b.keys() and all(a[k] != b[k] for k in a)


def test_refine_rounds_change_only_the_dagger_stage_and_what_follows():
    plan = make_plan("full")
    assert plan.refine.rounds > 0 and plan.refine.balance > 0 and plan.refine.seed != plan.dagger.seed
    more = make_plan("full", refine_rounds=plan.refine.rounds + 1)
    a, b = plan.stage_keys(), more.stage_keys()
    changed = {k for k in a if a[k] != b[k]}
    student = {
        "dagger-student",
        "export-rules-student",
        "lean-student",
        "export-student",
        "quantize-student",
        "cards",
    }
    # the teacher and the baseline learn the final student's states: they follow it
    assert changed == student | {
        "student-states",
        "refine-teacher",
        "refine-dense",
        "export-teacher",
        "export-dense",
    }
    assert make_plan("full", refine_rounds=0).refine is None
    assert make_plan("full", dagger_rounds=0).refine is None  # no DAgger: nothing to refine
    with pytest.raises(ValueError, match="refine rounds"):
        make_plan("full", refine_rounds=-1)


def test_lean_rounds_change_only_the_lean_stage_and_what_follows():
    plan = make_plan("full")
    assert (
        plan.lean.rounds > 0
        and plan.lean_skip == 1
        and plan.lean.seed not in (plan.dagger.seed, plan.refine.seed)
    )
    a, b = plan.stage_keys(), make_plan("full", lean_rounds=plan.lean.rounds + 1).stage_keys()
    assert {k for k in a if a[k] != b[k]} == {"lean-student", "export-student", "quantize-student", "cards"}
    off = make_plan("full", lean_rounds=0)
    assert off.lean is None and "lean-student" not in off.stage_keys()
    with pytest.raises(ValueError, match="lean rounds"):
        make_plan("full", lean_rounds=-1)


def test_states_steps_change_only_the_teacher_and_baseline_refining_and_what_follows():
    plan = make_plan("full")
    assert plan.states.worlds > 0 and plan.states.steps > 0 and plan.dense.steps == plan.teacher.steps
    a, b = plan.stage_keys(), make_plan("full", states_steps=plan.states.steps + 1).stage_keys()
    changed = {k for k in a if a[k] != b[k]}
    assert changed == {"refine-teacher", "refine-dense", "export-teacher", "export-dense", "cards"}
    # more rollout worlds redo the rollouts and both fine-tunings, not the student
    c = replace(plan, states=replace(plan.states, worlds=plan.states.worlds + 1)).stage_keys()
    assert {k for k in a if a[k] != c[k]} == changed | {"student-states"}
    off = make_plan("full", states_steps=0)
    assert off.states is None and "refine-teacher" not in off.stage_keys()
    with pytest.raises(ValueError, match="states steps"):
        make_plan("full", states_steps=-1)


def test_models_build_command_defaults_to_the_user_models_dir(built, tmp_path, monkeypatch, capsys):
    import exports.build
    from runtime.cli import main

    _, result = built
    calls = []

    def fake_build(out, **kw):
        calls.append((out, kw))
        return result

    monkeypatch.setattr(exports.build, "build_models", fake_build)
    monkeypatch.setenv("MURMURATE_MODELS", str(tmp_path / "user"))
    assert (
        main(
            [
                "models",
                "build",
                "--scale",
                "tiny",
                "--steps",
                "7",
                "--seed",
                "3",
                "--student-steps",
                "9",
                "--dagger-rounds",
                "0",
                "--refine-rounds",
                "2",
                "--states-steps",
                "5",
            ]
        )
        == 0
    )
    out, kw = calls[0]
    assert out == tmp_path / "user"  # where `--model village-act` looks
    assert kw == {
        "scale": "tiny",
        "seed": 3,
        "steps": 7,
        "run_steps": {"student": 9},
        "threads": None,
        "dagger_rounds": 0,
        "refine_rounds": 2,
        "states_steps": 5,
        "device": None,
        "fresh_names": None,
        "lean_rounds": None,
        "progress": True,
    }
    assert "village-act" in capsys.readouterr().out


def test_changed_run_redoes_only_what_depends_on_it(built, tmp_path):
    out, _ = built
    work = tmp_path / "m"
    shutil.copytree(out, work)
    steps = make_plan("tiny").student.steps + 2
    # Threads and device change speed only: they do not make any stage stale.
    result = build_models(
        work,
        scale="tiny",
        run_steps={"student": steps},
        threads=2,
        device="auto",
        int8_min_agreement=0.0,
        progress=False,
    )
    # The teacher and the baseline are refined on the student's states, so they follow it too.
    assert result["ran"] == [
        "distill-student",
        "dagger-student",
        "export-rules-student",
        "lean-student",
        "student-states",
        "refine-teacher",
        "refine-dense",
        "export-student",
        "export-teacher",
        "export-dense",
        "quantize-student",
        "cards",
    ]
    assert {"dataset", "tokenizer", "train-teacher", "train-dense"} <= set(result["skipped"])
    import torch

    # The student's old checkpoint (fewer steps, another schedule) is not resumed from.
    assert torch.load(work / ".build" / "student" / "checkpoint.pt", weights_only=False)["step"] == steps
    assert result["cards"][STUDENT]["built"]["steps"] == steps
    with pytest.raises(ValueError, match="unknown training run"):
        make_plan("tiny", run_steps={"pupil": 3})
