"""The ``murmurate`` command line.

murmurate run village [--agents N] [--ticks T] [--seed S] [--brain model|expert] [--model NAME|DIR]
                      [--cascade [TEACHER]] [--threshold P] [--speech [--talk-model NAME|DIR] [--speech-temperature T]]
                      [--headless] [--record PATH] [--workers K] [--out DIR]
murmurate models list | import PATH|smollm2-135m | build [--scale tiny|full] | eval NAME
murmurate bench serve | village | score | talk  [--quick] [--json PATH] ...
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from runtime.cli_bench import add_bench_parser
from runtime.cli_common import (
    DEFAULT_ACT_MODEL,
    DEFAULT_TEACHER,
    add_worker_args,
    auto_worker_cpus,
    auto_workers,
    console,
    has_display,
    resolve_model,
)
from runtime.cli_models import add_models_parser

DEFAULT_MODEL = DEFAULT_ACT_MODEL  # the shipped act student (worlds/village/cast.py)


def batch_dependence_note(art) -> str | None:
    """What to tell someone running a model whose decisions depend on their batch-mates (an
    ``int8-dynamic`` copy scales activations per batch), or ``None`` for a model whose do not."""
    if art.manifest.get("quantized") != "int8-dynamic":
        return None
    fp32 = art.manifest.get("quantized_from") or "its fp32 model"
    return (
        f"{art.name} is int8-dynamic: it scales activations per batch, so a decision can change with "
        "the requests that share its batch, and the same seed may give another run with another number "
        f"of workers; {fp32} gives the same run every time"
    )


# ---- run ----------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from agents.mind import ExpertBrain, ModelBrain
    from runtime.simulation import Simulation
    from worlds import make_world

    headless = args.headless or not has_display()
    if headless:
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    out = Path(args.out or f"runs/{args.world}-seed{args.seed}")
    out.mkdir(parents=True, exist_ok=True)
    world = make_world(args.world, agents=args.agents, seed=args.seed, max_ticks=None)
    world.reset(seed=args.seed)
    scheduler = None
    if args.brain == "model":
        talk = None
        if args.speech:  # the talk models the personas name (or --talk-model), served beside the act model
            talk = (
                [args.talk_model]
                if args.talk_model
                else sorted({world.persona(a).models["talk"] for a in world.agents})
            )
        scheduler, served, talk_names = _model_scheduler(args, talk or [])
        brain = ModelBrain(
            world,
            model=served,
            speech=args.speech,
            talk_model=talk_names[0] if args.talk_model else None,
            speech_temperature=args.speech_temperature,
            speech_top_p=args.speech_top_p,
        )
    else:
        brain = ExpertBrain(world)
    sim = Simulation(
        world,
        brain,
        scheduler.generate if scheduler else None,
        event_log=out / "events.jsonl",
        world_name=args.world,
    )
    from runtime.process import quiet_gc

    quiet_gc()  # the world and the scheduler are built: a long-lived process from here on
    try:
        if headless:
            _run_headless(sim, args, out)
        else:
            _run_window(sim, args)
    finally:
        sim.close()
        if scheduler:
            scheduler.shutdown()
    summary = sim.summary()
    (out / "summary.json").write_text(__import__("json").dumps(summary.to_dict(), indent=2) + "\n")
    _print_summary(summary, out)
    return 0


def _model_scheduler(args: argparse.Namespace, talk: list[str] = ()):
    """A scheduler serving ``--model`` (``--cascade``'s teacher, the ``talk`` models), the model name
    to ask for decisions and the talk models' names."""
    from runtime.artifacts import ModelError, load_model_dir
    from runtime.cascade import Cascade
    from runtime.scheduler import ModelSpec, Scheduler
    from runtime.worker import WorkerConfig

    try:
        dirs = [resolve_model(args.model)]
        if args.cascade:
            dirs.append(resolve_model(args.cascade))
        talk_dirs = [resolve_model(t) for t in talk]
    except ModelError as e:
        if args.model == DEFAULT_MODEL or args.cascade == DEFAULT_TEACHER:
            raise ModelError(
                f"{e}. The village models ship in exports/models; rebuild them with "
                "`murmurate models build`, or run the scripted expert with --brain expert"
            ) from None
        raise
    arts = [load_model_dir(d) for d in dirs]
    names = [a.name for a in arts]
    talk_names = [load_model_dir(d).name for d in talk_dirs]
    for a in arts:
        if note := batch_dependence_note(a):
            console.print(f"[yellow]note:[/yellow] {note}")
    served_models = dict(zip(names, dirs))
    for d, n in zip(talk_dirs, talk_names):
        served_models.setdefault(n, d)  # each model served once, whatever asks for it
    workers = args.workers or auto_workers()
    cpus = args.worker_cpus or auto_worker_cpus(workers, len(served_models))
    specs = [
        ModelSpec(WorkerConfig(str(d), name=n, threads=args.threads), replicas=workers, num_cpus=cpus)
        for n, d in served_models.items()
    ]
    dirs = list(served_models.values())
    cascades = []
    served = names[0]
    if args.cascade:
        served = f"{names[0]}>{names[1]}"
        cascades.append(Cascade(served, student=names[0], teacher=names[1], threshold=args.threshold))
    console.print(
        f"starting {workers} worker(s) per model ({args.threads or 'all'} thread(s), {cpus:g} CPU reserved "
        f"each) for [bold]{served}[/bold] ({', '.join(map(str, dirs))})"
    )
    from runtime.scheduler import ray_cluster

    scheduler = Scheduler(specs, address=args.ray_address, cascades=cascades, pin=args.pin)
    how = "joined" if args.ray_address else "started"
    console.print(f"{how} {ray_cluster()}; {_binding(scheduler)}")
    return scheduler, served, talk_names


def _stats(sim) -> dict[str, float | int]:
    if not sim.metrics:
        return {}
    m = sim.metrics[-1]
    return {
        "decisions/s": m.decisions / max(m.wall_s, 1e-9),
        "fallbacks": m.fallbacks,  # counts: the HUD writes them as integers
        "refused": m.refused,
    }


def _run_headless(sim, args, out: Path) -> None:
    from worlds.render import Recorder, snapshot

    record = Path(args.record) if args.record else out / f"{args.world}.mp4"
    with Recorder(record, fps=args.fps) as rec:
        rec.add_frame(sim.world.view())
        sim.run(args.ticks, progress=True, on_tick=lambda m: rec.add_frame(sim.world.view(), _stats(sim)))
    snapshot(sim.world.view(), out / "final.png", _stats(sim))
    console.print(f"recording: {record}")


def _run_window(sim, args) -> None:
    from worlds.render import Viewer

    with Viewer(sim.inspect, title=f"murmurate — {args.world}") as viewer:
        while viewer.handle_events():
            if viewer.should_step() and not sim.done and len(sim.metrics) < args.ticks:
                sim.step()
            viewer.draw(sim.world.view(), _stats(sim))


def _print_summary(s, out: Path) -> None:
    from runtime.bench.common import print_table

    rows = [
        ["world score", s.world_score],
        ["ticks", s.ticks],
        ["agents", s.agents],
        ["decisions", s.decisions],
        ["fallbacks", s.fallbacks],
        ["refused actions", s.refused],
        ["decisions/s", s.decisions_per_s],
        ["prompt tokens", s.prompt_tokens],
        ["generated tokens", s.generated_tokens],
        ["prefix cache hit", s.prefix_hit_ratio],
        ["state hash", s.state_hash[:16]],
    ]
    print_table(console, f"{s.world} · {s.brain}" + (f" · {s.model}" if s.model else ""), ["", "value"], rows)
    console.print(f"summary, events and snapshot in {out}/")


def _binding(scheduler) -> str:
    """The workers' cores, in words."""
    bound = [c for cores in scheduler.cores.values() for c in cores]
    if not any(bound):
        return "workers not bound to cores"
    return "workers bound to cores " + ", ".join("+".join(map(str, c)) if c else "any" for c in bound)


# ---- parser -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="murmurate", description="Swarms of persona agents thinking with small local models."
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a world (window with a display, recording without)")
    run.add_argument("world", choices=["village"], help="which world")
    run.add_argument(
        "--agents", type=int, default=None, help="number of agents (default: the world's cast of 12)"
    )
    run.add_argument("--ticks", type=int, default=200, help="ticks to run (default 200)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument(
        "--brain",
        choices=["model", "expert"],
        default="model",
        help="who decides: the act model (default) or the scripted expert",
    )
    run.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"model name or directory for --brain model (default {DEFAULT_MODEL})",
    )
    run.add_argument(
        "--cascade",
        nargs="?",
        const=DEFAULT_TEACHER,
        default=None,
        metavar="TEACHER",
        help=f"re-ask unsure decisions of TEACHER (default {DEFAULT_TEACHER})",
    )
    run.add_argument(
        "--threshold", type=float, default=0.9, help="cascade: confidence below which the teacher is asked"
    )
    run.add_argument(
        "--headless", action="store_true", help="no window: record a video and write the summary"
    )
    run.add_argument("--record", default=None, help="recording path (.mp4 or .gif) for headless runs")
    run.add_argument("--fps", type=float, default=8.0, help="recording frame rate")
    run.add_argument("--out", default=None, help="output directory (default runs/<world>-seed<S>)")
    add_worker_args(run)
    run.add_argument(
        "--worker-cpus",
        type=float,
        default=0.0,
        help="CPUs each worker reserves in Ray, fractions allowed (default: the cores shared among the workers)",
    )
    run.add_argument(
        "--speech",
        action="store_true",
        help="agents who decide to talk say a line their persona's talk model writes (village-talk)",
    )
    run.add_argument("--talk-model", default=None, help="with --speech: this talk model for everyone")
    run.add_argument(
        "--speech-temperature",
        type=float,
        default=0.0,
        help="with --speech: sample the lines at this temperature, seeded per speaker and tick (0: greedy)",
    )
    run.add_argument("--speech-top-p", type=float, default=1.0, help="with --speech: nucleus sampling")
    run.add_argument("--ray-address", default=None, help="join this Ray cluster instead of starting one")
    run.set_defaults(fn=cmd_run)

    add_bench_parser(sub)
    add_models_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from runtime.artifacts import ModelError

    try:
        return args.fn(args)
    except ModelError as e:
        console.print(f"[red]model error:[/red] {e}")
        return 2
    except (FileNotFoundError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        return 2
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
