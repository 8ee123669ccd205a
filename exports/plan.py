"""What ``murmurate models build`` makes: the build plan, its stages' keys, and the shipped names.

:class:`BuildPlan` holds every run's configuration (dataset, the three training runs, the DAgger,
refining, states and lean phases, the measurement sizes); :func:`make_plan` gives the ``tiny`` and
``full`` plans with command-line overrides; :meth:`BuildPlan.stage_keys` hashes what each stage
depends on, so a re-run redoes exactly the stages whose inputs changed. ``exports.build`` runs it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from exports.dagger import ROLLOUTS, DaggerConfig
from exports.dataset import DatasetSpec
from worlds.village.observation import OBSERVATION_FORMAT

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
        keys = {"dataset": _digest([d["data"], OBSERVATION_FORMAT])}  # a new observation text: new data
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
        lean = replace(
            dagger, seed=seed + LEAN_SEED, balance=0.5, polish_steps=4, polish_rename=0.5, polish_reorder=0.5
        )
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
        # The lean rounds, then 1,600 steps on their examples with half the villagers renamed at
        # random (docs/models.md, "Renamed villagers"): the names of unseen personas get copied.
        lean = DaggerConfig(
            rounds=LEAN_ROUNDS, seed=seed + LEAN_SEED, balance=0.5, polish_steps=1600, polish_rename=0.5
        )
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
