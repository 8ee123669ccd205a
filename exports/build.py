"""The model factory end to end: ``murmurate models build``.

dataset -> tokenizer -> MoE teacher (``act-moe``) -> dense baseline of equal active parameters
(``act-dense``) -> distilled student (``act-student``) -> DAgger rounds on the student's own
closed-loop states (``exports.dagger``), then refining rounds on fresh worlds with rare decisions
drawn more often -> the final student's rollouts on fresh worlds, labelled by the expert, on which
the teacher and the dense baseline are fine-tuned alike -> ONNX exports (last-token logits) -> int8
variant of the student where it keeps accuracy -> model cards with measured numbers.

Every stage writes under ``out_root/.build`` (a hidden directory, so the model registry does not
mistake it for a model) and is recorded in ``.build/state.json`` once finished; a re-run skips
finished stages, and an interrupted training stage resumes from its checkpoint. Everything is
drawn from one seed, so two builds with the same plan give the same weights.
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from exports.plan import (  # noqa: F401 - the plan's names are part of this module's API
    DENSE,
    INT8,
    LEAN_ROUNDS,
    REFINE_ROUNDS,
    STATE,
    STUDENT,
    TEACHER,
    TRAIN_STAGE,
    WORK,
    BuildPlan,
    _digest,
    make_plan,
)


class _State:
    """``.build/state.json``: which stages finished, under which stage keys."""

    def __init__(self, work: Path, plan: BuildPlan) -> None:
        self.path = work / STATE
        self.keys = plan.stage_keys()
        data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        work.mkdir(parents=True, exist_ok=True)
        # A stage finished under another key (other seed, data, steps...) does not count.
        self.done: dict[str, Any] = {
            name: info
            for name, info in data.get("done", {}).items()
            if isinstance(info, dict) and info.get("key") == self.keys.get(name)
        }
        self.plan = plan

    def finish(self, name: str, info: dict[str, Any]) -> dict[str, Any]:
        self.done[name] = {**info, "key": self.keys[name]}
        self.save()
        return self.done[name]

    def save(self) -> None:
        record = {"plan": self.plan.fingerprint(), "plan_fields": self.plan.to_dict(), "done": self.done}
        self.path.write_text(json.dumps(record, indent=2))


def build_models(
    out_root: str | Path,
    *,
    scale: str = "full",
    seed: int = 0,
    progress: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Build the village ``act`` models into ``out_root/<name>``.

    Args:
        out_root: where the model directories go (``village-act-teacher``, ``village-act-dense``,
            ``village-act``, and ``village-act-int8`` when it keeps accuracy); intermediate
            results go to ``out_root/.build``.
        scale: ``tiny`` (test-sized, well under two minutes) or ``full``.
        seed: the one seed of the build.
        progress: print stage lines and show training progress bars.
        overrides: the plan's overrides, passed to :func:`exports.plan.make_plan` (``steps``,
            ``run_steps``, ``threads``, ``int8_min_agreement``, ``dagger_rounds``, ``refine_rounds``,
            ``states_steps``, ``device``, ``fresh_names``, ``lean_rounds``); ``threads`` and
            ``device`` change speed only, not results or stage keys.

    Returns:
        ``models`` (name -> directory), ``ran`` and ``skipped`` (stage names, in order), ``cards``
        (name -> card) and ``int8`` (the agreement check).
    """
    plan = make_plan(scale, seed=seed, **overrides)
    out_root = Path(out_root)
    work = out_root / WORK
    state = _State(work, plan)
    ran: list[str] = []
    skipped: list[str] = []

    def say(msg: str) -> None:
        if progress:
            print(f"[build] {msg}", file=sys.stderr, flush=True)

    def stage(name: str, outputs: list[Path], fn: Any, deps: tuple[str, ...] = ()) -> Any:
        """Run ``fn`` unless the stage finished before, its outputs are still there and none of
        the stages it depends on re-ran in this build (their outputs would be newer than its)."""
        stale = any(d in ran for d in deps)
        if not stale and name in state.done and all(p.exists() for p in outputs):
            skipped.append(name)
            say(f"{name}: done before, skipped")
            return state.done[name]
        say(f"{name}: running")
        t0 = time.time()
        info = fn()
        ran.append(name)
        return state.finish(name, {**(info or {}), "wall_s": round(time.time() - t0, 1)})

    from exports.card import write_build_cards
    from exports.dataset import build_act_dataset, load_dataset, train_act_tokenizer
    from exports.tokenizer import save_tokenizer
    from exports.train import train

    data_path = work / "act.jsonl"
    stage(
        "dataset",
        [data_path],
        lambda: {"counts": save_and_count(build_act_dataset(plan.data, progress=progress), data_path)},
    )
    data = load_dataset(data_path)
    tok_dir = work / "tokenizer"
    stage(
        "tokenizer",
        [tok_dir / "tokenizer.json"],
        lambda: save_tokenizer(train_act_tokenizer(data["train"], plan.vocab_size), tok_dir),
        deps=("dataset",),
    )

    def run_training(cfg: Any, run_dir: Path) -> dict[str, Any]:
        # resume=True: a checkpoint left by an interrupted build is picked up where it stopped.
        metrics = train(cfg, data, run_dir, tokenizer=tok_dir, resume=True, progress=progress)
        return {"steps_done": metrics["steps_done"]}

    runs = {"teacher": work / "teacher", "dense": work / "dense", "student": work / "student"}
    stage(
        "train-teacher",
        [runs["teacher"] / "hf"],
        lambda: run_training(plan.teacher, runs["teacher"]),
        ("tokenizer",),
    )
    stage(
        "train-dense", [runs["dense"] / "hf"], lambda: run_training(plan.dense, runs["dense"]), ("tokenizer",)
    )
    student_cfg = replace(plan.student, teacher=str(runs["teacher"] / "hf"))
    stage(
        "distill-student",
        [runs["student"] / "hf"],
        lambda: run_training(student_cfg, runs["student"]),
        ("train-teacher",),
    )
    from exports.dagger import last_run, run_dagger
    from exports.onnx_export import export_trained

    dagger_dir, refine_dir = work / "dagger", work / "refine"
    refine = plan.refining

    def dagger_stage() -> dict[str, Any]:
        kw = {"threads": plan.student.threads, "progress": progress}
        info = run_dagger(runs["student"] / "hf", data, dagger_dir, plan.dagger, plan.student, **kw)
        if refine:  # from the first phase's weights, on worlds of another seed
            info["refine"] = run_dagger(dagger_dir / "hf", data, refine_dir, refine, plan.student, **kw)
        return info

    final_dir = refine_dir if refine else dagger_dir
    dagger = stage("dagger-student", [final_dir / "hf"], dagger_stage, ("distill-student",))
    # The shipped student is the DAgger-tuned one; its torch metrics are its last round's.
    student_hf = final_dir / "hf"
    if plan.dagger.rounds:
        runs["student"] = last_run(final_dir, refine or plan.dagger)

    def export(
        run: str,
        name: str,
        cfg: Any,
        deps: tuple[str, ...],
        *,
        hf: Path | None = None,
        to: Path | None = None,
        key: str | None = None,
    ) -> Path:
        """Stage ``export-{key or run}``: ``hf`` (by default the run's weights) to ``to`` (by default
        the shipped ``out_root/name``)."""
        target = to or out_root / name
        extra = {"task": "act", "preset": cfg.preset, "seed": seed, "build_scale": scale}
        hf = hf or (student_hf if run == "student" else runs[run] / "hf")
        key = key or run

        def export_stage() -> None:
            export_trained(hf, work / "export-src" / key, target, name, extra, keep_hf=run == "student")

        stage(f"export-{key}", [target / "model.onnx"], export_stage, deps)
        return target

    lean = plan.leaning
    # With a lean phase the refined student (it reads the rules) stays in the work directory: its
    # rollouts are the teacher's and the baseline's states, and the lean phase starts from it.
    rules_dir = work / "student-rules" if lean else None
    student_dir = export(
        "student",
        STUDENT,
        plan.student,
        ("dagger-student",),
        to=rules_dir,
        key="rules-student" if lean else None,
    )
    if lean:
        lean_dir = work / "lean"
        lean_cfg = replace(plan.student, skip_segments=plan.lean_skip)

        def lean_stage() -> dict[str, Any]:
            kw = {"threads": plan.student.threads, "progress": progress}
            return run_dagger(student_hf, data, lean_dir, lean, lean_cfg, **kw)

        dagger = {**dagger, "lean": stage("lean-student", [lean_dir / "hf"], lean_stage, ("dagger-student",))}
        runs["student"] = last_run(lean_dir, lean)
    states: dict[str, Any] = {}
    if plan.states:  # the refined student drives fresh worlds; teacher and baseline learn its states
        from exports.dagger import fine_tune_on_states, world_rollouts

        kw = {"threads": plan.student.threads, "progress": progress}

        @functools.cache
        def rollouts() -> list[Any]:  # rolled out (or loaded from a re-run's saved worlds) once
            return world_rollouts(student_dir, data.spec, plan.states, work / "states", **kw)

        states = stage(
            "student-states", [work / "states"], lambda: {"examples": len(rollouts())}, ("dagger-student",)
        )
        for run in ("teacher", "dense"):
            base = runs[f"{run}-trained"] = runs[run]
            runs[run] = work / f"{run}-states"

            def refine_stage(b: Path = base, r: str = run) -> dict[str, Any]:
                m = fine_tune_on_states(
                    b / "hf", data, rollouts(), runs[r], plan.states, getattr(plan, r), **kw
                )
                return {"steps_done": m["steps_done"]}

            stage(f"refine-{run}", [runs[run] / "hf"], refine_stage, ("student-states", TRAIN_STAGE[run]))
    if lean:
        student_dir = export("student", STUDENT, plan.student, ("lean-student",), hf=lean_dir / "hf")
    models: dict[str, Path] = {
        TEACHER: export("teacher", TEACHER, plan.teacher, ("refine-teacher",)),
        DENSE: export("dense", DENSE, plan.dense, ("refine-dense",)),
        STUDENT: student_dir,
    }

    heldout = data["heldout_persona"] + data["heldout_seed"]
    int8_dir = out_root / INT8

    def quantize_stage() -> dict[str, Any]:
        from exports.card import action_constraint
        from exports.quantize import greedy_agreement, quantize_model_dir

        quantize_model_dir(models[STUDENT], int8_dir, name=INT8)
        prompts = [ex.prompt for ex in heldout[: plan.int8_prompts]]
        check = greedy_agreement(models[STUDENT], int8_dir, prompts, constraint=action_constraint())
        check["kept"] = check["agreement"] >= plan.int8_min_agreement
        check["min_agreement"] = plan.int8_min_agreement
        if not check["kept"]:
            say(f"int8 student agrees on {check['agreement']:.0%} of prompts only; not kept")
            shutil.rmtree(int8_dir)
        return {"check": check}

    kept_before = state.done.get("quantize-student", {}).get("check", {}).get("kept")
    int8 = stage("quantize-student", [int8_dir] if kept_before else [], quantize_stage, ("export-student",))[
        "check"
    ]
    if int8["kept"]:
        models[INT8] = int8_dir

    cards = stage(
        "cards",
        [m / "model_card.json" for m in models.values()],
        lambda: write_build_cards(plan, data, models, runs, int8, dagger, states),
        deps=("export-teacher", "export-dense", "export-student", "quantize-student", "lean-student"),
    )
    return {"models": models, "ran": ran, "skipped": skipped, "cards": cards["cards"], "int8": int8}


def save_and_count(data: Any, path: Path) -> dict[str, int]:
    """Save the dataset and return its split sizes (recorded in the state and the cards)."""
    from exports.dataset import save_dataset

    save_dataset(data, path)
    return data.counts()


# Held-out evaluation lives with the model cards; re-exported here for the build's callers.
from exports.card import eval_model, heldout_examples  # noqa: E402, F401
