"""``murmurate bench score``: how well the village lives when a model decides, against the expert.

The same seeds are run with the scripted expert brain and with the model brain (and, with
``--teacher``, with the student -> teacher cascade), each for the same number of ticks; the
village score at the end (the mean well-being of all agents, 0..1) is averaged over the seeds.
Along the way every model decision is checked against what the expert would have done in the
same situation (the *on-policy* match: unlike held-out accuracy, these are the situations the
model's own earlier choices led to).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from runtime.bench.common import machine_info, print_table, write_json
from runtime.cli_common import DEFAULT_ACT_MODEL


@dataclass(frozen=True)
class ScoreBenchConfig:
    """What ``bench score`` runs.

    Attributes:
        model: the act model (name or directory).
        teacher: the teacher of a cascade variant (None: no cascade).
        threshold: the cascade's confidence threshold.
        runs: seeds (``seed``, ``seed + 1``, ...).
        ticks: ticks per run (a day is 48).
        agents: agents per world (None: the default cast of 12).
        seed: the first seed.
        threads: ONNX Runtime threads per worker (0: all cores).
        free_choices: also run the model brain with its arguments free (no argument choices:
            partners out of reach and actions sure to be refused stay possible), to show what the
            choices are worth.
    """

    model: str = DEFAULT_ACT_MODEL
    teacher: str | None = None
    threshold: float = 0.9
    runs: int = 5
    ticks: int = 96
    agents: int | None = None
    seed: int = 0
    threads: int = 0
    free_choices: bool = False


def _run(
    world_seed: int, cfg: ScoreBenchConfig, serve: Any = None, model: str | None = None, limit: bool = True
) -> dict[str, Any]:
    """One run; the expert brain when ``serve`` is None, else the model brain asking ``model``
    (with the world's argument choices when ``limit``)."""
    from agents.mind import ExpertBrain, ModelBrain
    from runtime.simulation import Simulation
    from worlds import make_world

    world = make_world("village", agents=cfg.agents, seed=world_seed, max_ticks=None)
    world.reset(seed=world_seed)
    brain = ExpertBrain(world) if serve is None else ModelBrain(world, model=model, limit_choices=limit)
    sim = Simulation(world, brain, serve, world_name="village")
    match = total = 0
    t0 = time.perf_counter()
    for _ in range(cfg.ticks):
        if sim.done:
            break
        observations = dict(sim.observations)
        sim.step()
        if serve is None:
            continue
        for agent, obs in observations.items():
            d = brain.last_decision.get(agent)
            if d is None:
                continue
            total += 1
            match += d.action == world.expert(world.persona(agent), obs)
    s = sim.summary()
    sim.close()
    return {
        "seed": world_seed,
        "score": s.world_score,
        "decisions": s.decisions,
        "fallbacks": s.fallbacks,
        "refused": s.refused,
        "on_policy_match": match / total if total else None,
        "wall_s": round(time.perf_counter() - t0, 2),
    }


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def run_score_bench(
    cfg: ScoreBenchConfig, *, json_path: str | None = None, console: Console | None = None
) -> dict:
    """Run the expert, the model and (optionally) the cascade over the same seeds; print and return."""
    from runtime.artifacts import load_model_dir
    from runtime.bench.village import VillageBenchConfig, _scheduler
    from runtime.cascade import Cascade
    from runtime.cli_common import resolve_model

    if cfg.runs < 1 or cfg.ticks < 1:
        raise ValueError("bench score needs at least one run and one tick")
    console = console or Console(width=120)
    seeds = [cfg.seed + i for i in range(cfg.runs)]
    models = [(load_model_dir(p).name, p) for p in [resolve_model(cfg.model)]]
    if cfg.teacher:
        t = resolve_model(cfg.teacher)
        models.append((load_model_dir(t).name, t))
    variants: dict[str, list[dict[str, Any]]] = {"expert": []}
    with console.status("expert runs…"):
        variants["expert"] = [_run(s, cfg) for s in seeds]
    served = {models[0][0]: models[0][0]}
    if cfg.free_choices:
        served[f"{models[0][0]} (free choices)"] = models[0][0]
    cascades = []
    if cfg.teacher:
        name = f"{models[0][0]}>{models[1][0]}"
        cascades.append(Cascade(name, student=models[0][0], teacher=models[1][0], threshold=cfg.threshold))
        served[f"cascade@{cfg.threshold:g}"] = name
    # one worker, as the published scores were measured (the score does not depend on speed)
    vcfg = VillageBenchConfig(model=cfg.model, threads=cfg.threads, workers=1)
    with _scheduler(models, cache=True, cfg=vcfg, cascades=cascades) as sched:
        for label, name in served.items():
            rows = []
            for s in seeds:
                with console.status(f"{label}: seed {s}…"):
                    rows.append(_run(s, cfg, sched.generate, name, limit="(free choices)" not in label))
            variants[label] = rows
            if name in sched.cascades:
                variants[label + ":teacher_share"] = [
                    {"share": sched.escalations / max(sum(r["decisions"] for r in rows), 1)}
                ]
    expert_score = _mean(variants["expert"], "score")
    summary = {}
    for label, rows in variants.items():
        if ":" in label:
            continue
        mean = _mean(rows, "score")
        summary[label] = {
            "score": mean,
            "of_expert": mean / expert_score if expert_score else None,
            "on_policy_match": _mean(rows, "on_policy_match"),
            "fallbacks": sum(r["fallbacks"] for r in rows),
            "refused": sum(r["refused"] for r in rows),
            "runs": rows,
        }
        share = variants.get(label + ":teacher_share")
        if share:
            summary[label]["teacher_share"] = share[0]["share"]
    print_table(
        console,
        f"bench score · village · {cfg.runs} seeds × {cfg.ticks} ticks",
        ["brain", "score", "of expert", "on-policy match", "fallbacks", "refused"],
        [
            [
                label,
                v["score"],
                v["of_expert"],
                v["on_policy_match"],
                v["fallbacks"],
                v["refused"],
            ]
            for label, v in summary.items()
        ],
    )
    result = {
        "config": {**cfg.__dict__, "seeds": seeds},
        "machine": machine_info(),
        "brains": summary,
    }
    write_json(json_path, result)
    return result
