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
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from exports.dagger import ROLLOUTS, DaggerConfig
from exports.dataset import DatasetSpec

TEACHER, DENSE, STUDENT = "village-act-teacher", "village-act-dense", "village-act"
INT8 = "village-act-int8"
WORK = ".build"
TRAIN_STAGE = {"teacher": "train-teacher", "dense": "train-dense", "student": "distill-student"}
STATE = "state.json"
REFINE_ROUNDS, REFINE_SEED = 7, 7  # the refining DAgger phase: rounds, and its seed's offset
LEAN_ROUNDS, LEAN_SEED = 3, 17  # the lean phase (the student learns to decide without the rules)
STATES_SEED = 13  # the seed offset of the student's rollouts that refine the teacher and the baseline


@dataclass(frozen=True)
class BuildPlan:
    """What a build makes: the dataset, the three training runs and the measurement sizes.

    Attributes:
        scale: ``tiny`` (test-sized presets, little data) or ``full`` (the shipped models).
        data: the expert rollout.
        vocab_size: BPE vocabulary shared by all three models (the student must share the
            teacher's tokenizer for logit distillation; the dense baseline shares it so its
            held-out loss is comparable with the teacher's, per token of the same text).
        teacher: the MoE teacher's training run.
        dense: the dense baseline's.
        student: the distilled student's (its ``teacher`` is filled in by the build).
        dagger: the DAgger rounds that fine-tune the distilled student on its own states.
        refine: more DAgger rounds from the first rounds' weights, on other fresh worlds (another
            seed) and with rare action kinds drawn more often (``balance``); ``None``: none.
        states: the final student drives ``states.worlds`` fresh worlds (another seed), the expert
            labels what it sees, and the teacher and the dense baseline are each fine-tuned on the
            training split plus those examples (``steps``, ``lr``, ``balance``): the cascade asks
            the teacher on exactly such states. ``None``: they ship as trained.
        lean: DAgger rounds from the refined student's weights in which it fine-tunes on prompts
            without their first ``lean_skip`` segments (the world's rules, the same words in every
            prompt, which a model trained on them has learned): the shipped student reads from
            its role on, each decision attends to ≈ 225 keys instead of ≈ 635, and the runtime
            drops the rules for it (``prompt_skip_segments`` in its config). The first round rolls
            out the refined student, the next ones the lean one. The teacher's and the baseline's
            states come from the refined student (with the rules). ``None``: the refined student ships.
        lean_skip: the leading segments the lean student does not read.
        card_examples: held-out examples per split evaluated through the runtime for the cards.
        speed_batch: prompts in the decisions/s measurement.
        int8_prompts: prompts on which the int8 student must agree with the fp32 one.
        int8_min_agreement: the agreement below which the int8 variant is not kept.
    """

    scale: str
    data: DatasetSpec
    vocab_size: int
    teacher: Any
    dense: Any
    student: Any
    card_examples: int
    speed_batch: int
    int8_prompts: int
    int8_min_agreement: float
    dagger: DaggerConfig = DaggerConfig()
    refine: DaggerConfig | None = None
    states: DaggerConfig | None = None
    lean: DaggerConfig | None = None
    lean_skip: int = 1

    @property
    def refining(self) -> DaggerConfig | None:
        """The refining phase that actually runs: none without DAgger rounds to refine, or rounds."""
        return self.refine if self.dagger.rounds and self.refine and self.refine.rounds else None

    @property
    def leaning(self) -> DaggerConfig | None:
        """The lean phase that actually runs (it follows the DAgger rounds), or ``None``."""
        return self.lean if self.dagger.rounds and self.lean and self.lean.rounds else None

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))

    def fingerprint(self) -> str:
        """A short hash of the whole plan (threads and device excluded: they change speed, not results)."""
        return _digest(self.to_dict())

    def stage_keys(self) -> dict[str, str]:
        """Per stage, a hash of everything its output depends on.

        A finished stage counts only while its key is unchanged, so changing one run's steps
        redoes that run and what depends on it, and nothing upstream.
        """
        d = self.to_dict()
        keys = {"dataset": _digest(d["data"])}
        keys["tokenizer"] = _digest([keys["dataset"], d["vocab_size"]])
        for run in ("teacher", "dense"):
            keys[TRAIN_STAGE[run]] = _digest([keys["tokenizer"], d[run]])
        keys[TRAIN_STAGE["student"]] = _digest([keys["train-teacher"], d["student"]])
        keys["dagger-student"] = _digest([keys["distill-student"], d["dagger"], d["refine"], ROLLOUTS])
        source = dict(TRAIN_STAGE, student="dagger-student")
        if self.leaning:
            keys["export-rules-student"] = _digest([keys["dagger-student"]])
            keys["lean-student"] = _digest([keys["dagger-student"], d["lean"], d["lean_skip"], ROLLOUTS])
            source["student"] = "lean-student"
        if self.states:
            from exports.dagger import rollout_fields

            rollouts = [keys["dagger-student"], rollout_fields(self.states), self.states.worlds]
            keys["student-states"] = _digest(rollouts)
            tune = {k: d["states"][k] for k in ("steps", "lr", "balance")}
            for run in ("teacher", "dense"):
                keys[f"refine-{run}"] = _digest([keys[TRAIN_STAGE[run]], keys["student-states"], tune])
                source[run] = f"refine-{run}"
        for run, stage in source.items():
            keys[f"export-{run}"] = _digest([keys[stage]])
        keys["quantize-student"] = _digest(
            [keys["export-student"], d["int8_prompts"], d["int8_min_agreement"]]
        )
        keys["cards"] = _digest([keys["quantize-student"], keys["export-teacher"], keys["export-dense"], d])
        return keys


def _digest(obj: Any) -> str:
    """A short hash of JSON-able ``obj``, ``threads`` and ``device`` fields left out (speed only)."""

    def scrub(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: scrub(v) for k, v in o.items() if k not in ("threads", "device")}
        if isinstance(o, list):
            return [scrub(v) for v in o]
        return o

    return hashlib.sha256(json.dumps(scrub(obj), sort_keys=True).encode()).hexdigest()[:16]


def make_plan(
    scale: str = "full",
    *,
    seed: int = 0,
    steps: int | None = None,
    run_steps: dict[str, int] | None = None,
    threads: int | None = None,
    int8_min_agreement: float | None = None,
    dagger_rounds: int | None = None,
    refine_rounds: int | None = None,
    states_steps: int | None = None,
    device: str | None = None,
    fresh_names: float | None = None,
    lean_rounds: int | None = None,
) -> BuildPlan:
    """The build plan for ``scale``.

    Args:
        scale: ``tiny`` or ``full``.
        seed: seeds the dataset, the initial weights and the example order of every run.
        steps: override the optimizer steps of all three training runs.
        run_steps: override the steps of single runs (``teacher``, ``dense``, ``student``); applied
            after ``steps``.
        threads: torch threads for training (not part of any stage key).
        int8_min_agreement: override the int8 keep threshold (the tiny models are barely trained
            and disagree with themselves under any perturbation; tests pass 0 to keep the variant).
        dagger_rounds: override the number of DAgger rounds (0: ship the distilled student as is,
            without refining rounds either).
        refine_rounds: override the number of refining DAgger rounds that follow (0: none).
        lean_rounds: override the rounds of the lean phase (0: none: the shipped student reads the
            rules; see :class:`BuildPlan`).
        states_steps: override the fine-tuning steps of the teacher and the dense baseline on the
            final student's states (0: none; see :class:`BuildPlan`).
        device: where torch trains (``cpu``, ``cuda``, ``auto``; not part of any stage key).
        fresh_names: override the dataset's share of training worlds whose default villagers get
            generated names (:class:`exports.dataset.DatasetSpec`; it changes every stage's key).

    Raises:
        ValueError: for an unknown scale.
    """
    from exports.train import TrainConfig

    if scale == "tiny":
        data = DatasetSpec(
            train_worlds=2,
            heldout_seed_worlds=1,
            heldout_persona_worlds=1,
            generated_per_world=3,
            ticks=24,
            sample_rate=0.25,
            seed=seed,
        )
        base = TrainConfig(
            steps=20, batch_size=8, lr=1e-2, warmup=4, save_every=10, log_every=5, eval_examples=6, seed=seed
        )
        teacher, dense, student = (replace(base, preset=p) for p in ("tiny-moe", "tiny", "tiny"))
        dagger = DaggerConfig(rounds=1, worlds=1, ticks=6, sample_rate=0.5, steps=4, seed=seed)
        refine = replace(dagger, seed=seed + REFINE_SEED, balance=0.5)
        states = replace(dagger, seed=seed + STATES_SEED, balance=0.5)
        lean = replace(dagger, seed=seed + LEAN_SEED, balance=0.5)
        plan = BuildPlan(
            "tiny", data, 512, teacher, dense, student, 6, 6, 6, 0.9, dagger, refine, states, lean
        )
    elif scale == "full":
        data = DatasetSpec(seed=seed)
        base = TrainConfig(seed=seed)
        teacher = replace(base, preset="act-moe", steps=3000)
        # Same data, steps and schedule as the teacher: the comparison is of architectures.
        dense = replace(base, preset="act-dense", steps=3000)
        student = replace(base, preset="act-student", steps=1500)
        dagger = DaggerConfig(seed=seed)
        refine = DaggerConfig(rounds=REFINE_ROUNDS, seed=seed + REFINE_SEED, balance=0.5)
        # 48 worlds (≈ 50k examples); 1,200 steps of 32 from the trained weights.
        states = DaggerConfig(rounds=1, worlds=48, steps=1200, seed=seed + STATES_SEED, balance=0.5)
        lean = DaggerConfig(rounds=LEAN_ROUNDS, seed=seed + LEAN_SEED, balance=0.5)
        plan = BuildPlan(
            "full",
            data,
            base.vocab_size,
            teacher,
            dense,
            student,
            300,
            64,
            64,
            0.97,
            dagger,
            refine,
            states,
            lean,
        )
    else:
        raise ValueError(f"unknown scale {scale!r}; use 'tiny' or 'full'")
    overrides = {run: steps for run in TRAIN_STAGE} if steps is not None else {}
    for run, n in (run_steps or {}).items():
        if run not in TRAIN_STAGE:
            raise ValueError(f"unknown training run {run!r}; choose from {', '.join(TRAIN_STAGE)}")
        overrides[run] = n
    for run, n in overrides.items():
        if n < 1:
            raise ValueError(f"{run} steps must be at least 1, not {n}")
        cfg = getattr(plan, run)
        plan = replace(plan, **{run: replace(cfg, steps=n, warmup=min(cfg.warmup, max(n // 10, 1)))})
    for knob, value in (("threads", threads), ("device", device)):
        if value is not None:
            plan = replace(plan, **{run: replace(getattr(plan, run), **{knob: value}) for run in TRAIN_STAGE})
    if int8_min_agreement is not None:
        plan = replace(plan, int8_min_agreement=int8_min_agreement)
    if fresh_names is not None:
        plan = replace(plan, data=replace(plan.data, fresh_names=fresh_names))
    if dagger_rounds is not None:
        if dagger_rounds < 0:
            raise ValueError(f"dagger rounds must be 0 or more, not {dagger_rounds}")
        plan = replace(plan, dagger=replace(plan.dagger, rounds=dagger_rounds))
        if dagger_rounds == 0:
            plan = replace(plan, refine=None)
    if states_steps is not None:
        if states_steps < 0:
            raise ValueError(f"states steps must be 0 or more, not {states_steps}")
        plan = replace(plan, states=replace(plan.states, steps=states_steps) if states_steps else None)
    if refine_rounds is not None and plan.refine is not None:
        if refine_rounds < 0:
            raise ValueError(f"refine rounds must be 0 or more, not {refine_rounds}")
        plan = replace(plan, refine=replace(plan.refine, rounds=refine_rounds) if refine_rounds else None)
    if lean_rounds is not None and plan.lean is not None:
        if lean_rounds < 0:
            raise ValueError(f"lean rounds must be 0 or more, not {lean_rounds}")
        plan = replace(plan, lean=replace(plan.lean, rounds=lean_rounds) if lean_rounds else None)
    return plan


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
    steps: int | None = None,
    run_steps: dict[str, int] | None = None,
    threads: int | None = None,
    int8_min_agreement: float | None = None,
    dagger_rounds: int | None = None,
    refine_rounds: int | None = None,
    states_steps: int | None = None,
    device: str | None = None,
    fresh_names: float | None = None,
    lean_rounds: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the village ``act`` models into ``out_root/<name>``.

    Args:
        out_root: where the model directories go (``village-act-teacher``, ``village-act-dense``,
            ``village-act``, and ``village-act-int8`` when it keeps accuracy); intermediate
            results go to ``out_root/.build``.
        scale: ``tiny`` (test-sized, well under two minutes) or ``full``.
        seed: the one seed of the build.
        steps: override the training steps of every model.
        run_steps: override the steps of single runs (``teacher``, ``dense``, ``student``).
        threads: torch threads for training (speed only: results and stage keys do not change).
        int8_min_agreement: override the greedy-agreement threshold for keeping the int8 student.
        dagger_rounds: override the DAgger rounds after distillation (0: none).
        refine_rounds: override the refining DAgger rounds after those (0: none).
        states_steps: override the teacher's and the baseline's steps on the student's states.
        device: where torch trains (``cpu``, ``cuda``, ``auto``: a GPU when torch sees one); speed
            only, like ``threads``. The cards' measurements always run on the CPU.
        fresh_names: override the dataset's ``fresh_names`` (see :func:`make_plan`).
        lean_rounds: override the lean phase's rounds (0: the shipped student reads the rules).
        progress: print stage lines and show training progress bars.

    Returns:
        ``models`` (name -> directory), ``ran`` and ``skipped`` (stage names, in order), ``cards``
        (name -> card) and ``int8`` (the agreement check).
    """
    plan = make_plan(
        scale,
        seed=seed,
        steps=steps,
        run_steps=run_steps,
        threads=threads,
        int8_min_agreement=int8_min_agreement,
        dagger_rounds=dagger_rounds,
        refine_rounds=refine_rounds,
        states_steps=states_steps,
        device=device,
        fresh_names=fresh_names,
        lean_rounds=lean_rounds,
    )
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
    from exports.dagger import run_dagger
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
        last = refine.rounds if refine else plan.dagger.rounds
        runs["student"] = final_dir / f"round{last - 1}" / "run"

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
        runs["student"] = lean_dir / f"round{lean.rounds - 1}" / "run"
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
