"""DAgger rounds for an ``act`` student: the student drives the village, the expert labels it.

Held-out accuracy scores a model on the states the *expert* visits. Left to itself, a model that
decides a need's threshold one tick late drifts into states the expert never reaches (an agent
past exhaustion, a hunger far above its threshold) where it has seen no example at all, and its
errors compound: the first shipped student matched the expert on 70% of held-out decisions but on
11% of its own. DAgger (Ross, Gordon & Bagnell, 2011) closes that gap: run the current model in
closed loop on training casts, ask the expert what it would have done in every visited state (the
expert reads only the prompt, so any state can be labelled), add those examples to the training
set and fine-tune; repeat.

Each round here:

1. exports the current weights to ONNX and runs them through the runtime (constrained decoding,
   exactly as in ``murmurate run village``) on ``worlds`` worlds with fresh seeds, each peopled by
   the default cast and freshly generated personas (numbered past every block the dataset used, so
   no held-out seed or persona is ever seen; re-running the training casts instead over-fitted
   them and cost five points on unseen personas);
2. keeps a ``sample_rate`` share of the decisions as ``(prompt, expert action)`` examples
   (with probability ``beta`` the expert's action is executed instead of the model's, so early
   rounds do not wander too far);
3. fine-tunes from the current weights on the original training split plus every round's
   examples, with the expert's labels (cross-entropy) and a fresh, shorter schedule.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from exports.dataset import ActDataset, ActExample, DatasetSpec, _plan, name_block, name_numbers_end

ROLLOUTS = "default-cast+fresh-personas/1"
"""What the rollouts are (part of the build's stage key: a change here redoes the DAgger stage)."""


@dataclass(frozen=True)
class DaggerConfig:
    """How many DAgger rounds and how big each is.

    Attributes:
        rounds: rollout + fine-tune rounds (0: none).
        worlds: training casts rolled out per round, each on a fresh seed.
        ticks: ticks per rollout (a day is 48).
        sample_rate: share of visited decisions kept as examples.
        beta: probability that a decision executes the expert's action instead of the model's.
        steps: fine-tuning steps per round.
        lr: peak learning rate of each round's fine-tuning.
        seed: seeds the world seeds, the sampling and the fine-tuning order.
        balance: the fine-tuning's sampling by action kind (:class:`exports.train.TrainConfig`;
            0.5 draws rare decisions — sales, trades, talk — more often than their share).
        polish_steps: after the last round, fine-tune this many steps more from its weights on the
            training split plus every round's examples (seed ``seed + 100``, the rounds' learning
            rate and balance), with the augmentations below (0: no polish).
        polish_rename: the polish's share of drawn examples with their villagers renamed
            (``TrainConfig.rename``).
        polish_reorder: the polish's share of drawn examples reordered and relabelled
            (``TrainConfig.reorder``).
    """

    rounds: int = 5
    worlds: int = 8
    ticks: int = 144
    sample_rate: float = 0.3
    beta: float = 0.0
    steps: int = 400
    lr: float = 1e-3
    seed: int = 0
    balance: float = 0.0
    polish_steps: int = 0
    polish_rename: float = 0.0
    polish_reorder: float = 0.0


POLISH_FIELDS = ("polish_steps", "polish_rename", "polish_reorder")
"""Fields that change only the polish: the rounds before it are reused when they change."""


def fresh_cast(spec: DatasetSpec, world: int, round_: int, seed: int) -> list[Any]:
    """The default cast plus ``spec.generated_per_world`` new personas for DAgger world ``world``.

    Their numbers start past every block of the dataset's training and held-out-persona worlds,
    and their trait combinations are checked against the held-out personas. With the dataset's
    ``fresh_names``, the same share of DAgger worlds gives the default villagers generated names.
    """
    from worlds.village.cast import default_cast, generate_personas, renamed

    g = spec.generated_per_world
    block = name_block(spec)
    start = name_numbers_end(spec) + (1 + round_ * 1000 + world) * block
    rng = np.random.default_rng([seed, 0xCA57, round_, world])
    heldout = _planned(spec)[1]
    fresh = [
        p
        for p in generate_personas(g, int(rng.integers(2**31)), start=start)
        if tuple(sorted(p.traits.items())) not in heldout
    ]
    defaults = default_cast()
    if spec.fresh_names > 0 and rng.random() < spec.fresh_names:
        defaults = renamed(defaults, int(rng.integers(2**31)), start=start + g)
    return defaults + fresh


@lru_cache(maxsize=4)
def _planned(spec: DatasetSpec) -> tuple[frozenset[int], frozenset[tuple]]:
    """The world seeds of every split of ``spec`` and the trait combinations of its held-out
    personas (planned once per spec, not once per DAgger world)."""
    plans = _plan(spec)
    seeds = frozenset(p.seed for p in plans)
    traits = frozenset(
        tuple(sorted(p.traits.items()))
        for plan in plans
        if plan.split == "heldout_persona"
        for p in plan.cast
    )
    return seeds, traits


def fresh_seeds(spec: DatasetSpec, n: int, round_: int, seed: int) -> list[int]:
    """``n`` world seeds used by no split of ``spec`` (and different for every round)."""
    taken = _planned(spec)[0]
    rng = np.random.default_rng([seed, 0xDA66E5, round_])
    out: list[int] = []
    while len(out) < n:
        s = int(rng.integers(2**31 - 1))
        if s not in taken and s not in out:
            out.append(s)
    return out


def rollout_examples(
    model_dir: str | Path,
    spec: DatasetSpec,
    seeds: list[int],
    *,
    ticks: int,
    sample_rate: float,
    beta: float = 0.0,
    seed: int = 0,
    round_: int = 0,
    threads: int = 1,
    progress: bool = True,
) -> tuple[list[ActExample], dict[str, float]]:
    """Run ``model_dir`` in closed loop on fresh casts (:func:`fresh_cast`) and label with the expert.

    Returns:
        The examples (split ``train``) and ``match``: the share of the model's decisions that
        equal the expert's (the on-policy match of this round's starting model).
    """
    from agents.actions import action_json
    from agents.mind import ModelBrain
    from runtime.worker import WorkerConfig, build_batcher
    from worlds import make_world

    batcher = build_batcher(WorkerConfig(str(model_dir), name="dagger", threads=threads, cache_bytes=1 << 28))
    rng = np.random.default_rng([seed, 0xDA66E5, round_])
    out: list[ActExample] = []
    match = total = 0
    with tqdm(total=len(seeds) * ticks, desc="dagger rollouts", unit="tick", disable=not progress) as bar:
        for i, world_seed in enumerate(seeds):
            cast = fresh_cast(spec, i, round_, seed)
            world = make_world(spec.world, personas=cast, max_ticks=ticks)
            obs, _ = world.reset(seed=world_seed)
            brain = ModelBrain(world, model="dagger")
            while world.agents:
                actions = brain.decide(obs, batcher.run)
                for agent in list(actions):
                    persona = world.persona(agent)
                    expert = world.expert(persona, obs[agent])
                    total += 1
                    match += actions[agent] == expert
                    if rng.random() < sample_rate:
                        out.append(
                            ActExample(
                                prompt=brain.last_prompt[agent],
                                target=action_json(expert),
                                split="train",
                                world_seed=world_seed,
                                agent=agent,
                                tick=world.tick,
                                role=persona.role,
                            )
                        )
                    if beta and rng.random() < beta:
                        actions[agent] = expert
                obs, *_ = world.step(actions)
                bar.update(1)
    return out, {"match": match / max(total, 1), "decisions": total}


def rollout_round(
    model_dir: str | Path, spec: DatasetSpec, cfg: DaggerConfig, n: int, round_: int, **kw: Any
) -> tuple[list[int], list[ActExample], dict[str, float]]:
    """:func:`rollout_examples` of ``cfg`` on ``n`` fresh seeds of round ``round_``: the seeds,
    the examples and the match record."""
    seeds = fresh_seeds(spec, n, round_, cfg.seed)
    new, info = rollout_examples(
        model_dir,
        spec,
        seeds,
        ticks=cfg.ticks,
        sample_rate=cfg.sample_rate,
        beta=cfg.beta,
        seed=cfg.seed,
        round_=round_,
        **kw,
    )
    return seeds, new, info


def rollout_fields(cfg: DaggerConfig) -> dict[str, Any]:
    """What a rollout of :func:`world_rollouts` depends on (not the fine-tuning that follows), the
    observation text the prompts are written in included."""
    from worlds.village.observation import OBSERVATION_FORMAT

    fields = {k: getattr(cfg, k) for k in ("ticks", "sample_rate", "beta", "seed")}
    return fields | {"design": ROLLOUTS, "observation": OBSERVATION_FORMAT}


def world_rollouts(
    model_dir: str | Path,
    spec: DatasetSpec,
    cfg: DaggerConfig,
    work: Path,
    *,
    worlds: list[int] | None = None,
    threads: int = 1,
    progress: bool = True,
) -> list[ActExample]:
    """``cfg.worlds`` independent closed-loop rollouts of ``model_dir``, labelled by the expert.

    Unlike a DAgger round's rollout (one sampling stream across its worlds), world ``w`` here is a
    round of its own (:func:`fresh_seeds` and :func:`fresh_cast` keyed by ``w`` and ``cfg.seed``),
    so each world's examples depend on nothing else: they are saved as ``work/world{w}.json`` when
    it finishes, a re-run with the same model and :func:`rollout_fields` loads them (more worlds
    extend them), and ``worlds`` (a subset) lets several processes share the work with the same
    result.
    """
    from runtime.artifacts import sha256_file

    # Worlds saved for another model or rollout design are stale.
    source = {"model": sha256_file(Path(model_dir) / "model.onnx"), "rollouts": rollout_fields(cfg)}
    marker = work / "source.json"
    if work.exists() and (not marker.is_file() or json.loads(marker.read_text()) != source):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(source))
    out: list[ActExample] = []
    for w in range(cfg.worlds) if worlds is None else worlds:
        path = work / f"world{w}.json"
        if not path.is_file():
            seeds, new, info = rollout_round(model_dir, spec, cfg, 1, w, threads=threads, progress=progress)
            record = {"seed": seeds[0], **info, "examples": [asdict(e) for e in new]}
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record))
            tmp.replace(path)
        out += [ActExample(**e) for e in json.loads(path.read_text())["examples"]]
    return out


def fine_tune_on_states(
    hf_dir: Path,
    data: ActDataset,
    examples: list[ActExample],
    run_dir: Path,
    cfg: DaggerConfig,
    train_cfg: Any,
    *,
    threads: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune ``hf_dir`` on the training split plus ``examples`` (expert labels, cross-entropy):
    ``cfg.steps`` steps from its weights with a fresh schedule, ``cfg.balance`` sampling and seed
    ``cfg.seed`` — how the build refines the teacher and the dense baseline on the states the
    final student visits (:func:`world_rollouts`). Returns the run's metrics."""
    from exports.train import train

    mix = ActDataset(data.spec, {**data.splits, "train": list(data["train"]) + list(examples)})
    run_cfg = replace(
        train_cfg,
        steps=cfg.steps,
        lr=cfg.lr,
        balance=cfg.balance,
        warmup=max(cfg.steps // 20, 1),
        seed=cfg.seed,
        init=str(hf_dir),
        teacher=None,
        threads=threads,
    )
    return train(run_cfg, mix, run_dir, tokenizer=hf_dir, resume=True, progress=progress)


def run_dagger(
    student_hf: Path,
    data: ActDataset,
    work: Path,
    cfg: DaggerConfig,
    train_cfg: Any,
    *,
    threads: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """``cfg.rounds`` DAgger rounds from ``student_hf``; the final weights land in ``work/hf``.

    Args:
        student_hf: the distilled student's ``save_pretrained`` directory.
        data: the expert dataset (its ``train`` split is kept in every round's mix; the held-out
            splits score each round).
        work: the stage's directory (one sub-directory per round, resumable per round).
        cfg: the rounds.
        train_cfg: the student's :class:`exports.train.TrainConfig` (preset and batch size).
        threads: torch and ONNX Runtime threads.

    Returns:
        Per round: examples added, the starting model's on-policy match and the fine-tuned
        model's held-out metrics; with ``cfg.polish_steps``, the polish's held-out metrics.
    """
    from exports.onnx_export import export_model
    from runtime.artifacts import sha256_file

    current = Path(student_hf)
    # Finished rounds are reused only for the same starting weights, config and rollout design;
    # the round count is not part of the marker, so more rounds extend a finished run.
    source = {
        "student": sha256_file(current / "model.safetensors"),
        "config": {k: v for k, v in asdict(cfg).items() if k != "rounds" and k not in POLISH_FIELDS},
        "rollouts": ROLLOUTS,
    }
    marker = work / "source.json"
    if work.exists() and (not marker.is_file() or json.loads(marker.read_text()) != source):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(source))
    added: list[ActExample] = []
    rounds: list[dict[str, Any]] = []
    for r in range(cfg.rounds):
        rdir = work / f"round{r}"
        done = rdir / "round.json"
        if done.is_file() and (rdir / "run" / "hf").is_dir():  # finished in an earlier build
            record = json.loads(done.read_text())
            added += [ActExample(**e) for e in json.loads((rdir / "examples.json").read_text())]
        else:
            onnx_dir = rdir / "onnx"
            if onnx_dir.exists():
                shutil.rmtree(onnx_dir)
            export_model(current, onnx_dir, f"dagger-round{r}", last_token=True)
            seeds, new, info = rollout_round(
                onnx_dir, data.spec, cfg, cfg.worlds, r, threads=threads, progress=progress
            )
            added += new
            (rdir / "examples.json").write_text(json.dumps([asdict(e) for e in new]))
            metrics = fine_tune_on_states(
                current,
                data,
                added,
                rdir / "run",
                replace(cfg, seed=cfg.seed + r),
                train_cfg,
                threads=threads,
                progress=progress,
            )
            record = {
                "round": r,
                "seeds": seeds,
                "examples": len(new),
                "on_policy_match_before": info["match"],
                "decisions": info["decisions"],
                "heldout": {
                    s: {k: metrics[s][k] for k in ("exact_match", "loss")}
                    for s in ("heldout_seed", "heldout_persona")
                    if s in metrics
                },
            }
            done.write_text(json.dumps(record, indent=2))
            shutil.rmtree(onnx_dir, ignore_errors=True)
        rounds.append(record)
        current = rdir / "run" / "hf"
    info: dict[str, Any] = {"rounds": rounds, "examples": len(added)}
    polish_run = work / "polish"
    if cfg.polish_steps:
        tune = replace(cfg, steps=cfg.polish_steps, seed=cfg.seed + 100)
        augmented = replace(train_cfg, rename=cfg.polish_rename, reorder=cfg.polish_reorder)
        m = fine_tune_on_states(
            current, data, added, polish_run, tune, augmented, threads=threads, progress=progress
        )
        info["polish"] = {
            s: {k: m[s][k] for k in ("exact_match", "loss")}
            for s in ("heldout_seed", "heldout_persona")
            if s in m
        }
        current = polish_run / "hf"
    elif polish_run.exists():
        shutil.rmtree(polish_run)
    final = work / "hf"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(current, final)
    return info


def last_run(work: Path, cfg: DaggerConfig) -> Path:
    """The run directory whose weights :func:`run_dagger` left in ``work/hf`` (its metrics are the
    shipped model's torch metrics): the polish's, or the last round's."""
    return work / "polish" if cfg.polish_steps else work / f"round{cfg.rounds - 1}" / "run"
