"""Define your own villagers in plain Python and drop them into the village.

    python -m examples.custom_personas                      # scripted expert brain
    python -m examples.custom_personas --model village-act  # every decision from a model (name or DIR), via Ray

A persona is a pydantic model: a bad one (unknown trait, value out of 0..1, unknown role) fails
right here, at definition time, with a message that says what to fix.
"""

from __future__ import annotations

import argparse
import os

from worlds import make_world
from worlds.village import VillagePersona
from worlds.village.cast import default_cast


class Smuggler(VillagePersona):
    """A persona subclass: defaults shared by every smuggler you create."""

    role: str = "merchant"
    goals: list[str] = ["buy low at night, sell high at dawn"]


def my_cast() -> list[VillagePersona]:
    mine = [
        VillagePersona(
            name="Odile",
            role="fisher",
            traits={"caution": 0.1, "diligence": 0.95, "sociability": 0.2},
            goals=["land the biggest catch of the season"],
            backstory="Fishes the river at any hour; the current has never scared her.",
        ),
        VillagePersona(
            name="Piet",
            role="innkeeper",
            traits={"sociability": 0.95, "generosity": 0.8},
            goals=["keep the tavern full"],
            backstory="Remembers every guest's name and every guest's debt.",
        ),
        Smuggler(
            name="Quill",
            traits={"greed": 0.95, "caution": 0.6},
            backstory="Nobody knows where the goods come from.",
        ),
    ]
    return default_cast()[:9] + mine


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ticks", type=int, default=48, help="ticks to run (48 = one day)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--model",
        default=None,
        help="an installed model's name or a model directory: the model brain decides through Ray",
    )
    p.add_argument("--snapshot", default=None, help="write a PNG of the final tick here")
    args = p.parse_args(argv)

    from agents.mind import ExpertBrain, ModelBrain
    from runtime.simulation import Simulation

    world = make_world("village", personas=my_cast())
    world.reset(seed=args.seed)
    scheduler = None
    if args.model:
        from runtime.artifacts import load_model_dir
        from runtime.cli_common import resolve_model
        from runtime.scheduler import ModelSpec, Scheduler
        from runtime.worker import WorkerConfig

        model_dir = resolve_model(args.model)  # a name from `murmurate models list`, or a directory
        name = load_model_dir(model_dir).name
        scheduler = Scheduler([ModelSpec(WorkerConfig(str(model_dir), name=name), num_cpus=0.5)])
        brain = ModelBrain(world, model=name)
    else:
        brain = ExpertBrain(world)
    sim = Simulation(world, brain, scheduler.generate if scheduler else None, world_name="village")
    try:
        summary = sim.run(args.ticks, progress=False)
    finally:
        if scheduler:
            scheduler.shutdown()
    for agent in ("Odile", "Piet", "Quill"):
        print(
            f"{agent:>6}: score {world.infos()[agent]['score']:.3f}, last: {sim.brain.last_decision[agent].text}"
        )
    print(
        f"world score {summary.world_score:.3f} after {summary.ticks} ticks, state {summary.state_hash[:12]}"
    )
    if args.snapshot:
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        from worlds.render import snapshot

        snapshot(world.view(), args.snapshot)
    return summary.to_dict()


if __name__ == "__main__":
    main()
