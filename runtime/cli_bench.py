"""``murmurate bench serve|village|score|talk``: the benchmarks' commands and their arguments."""

from __future__ import annotations

import argparse

from runtime.cli_common import DEFAULT_ACT_MODEL, DEFAULT_TEACHER, add_worker_args, auto_workers, console
from runtime.wire import WIRES


def agent_counts(text: str) -> tuple[int, ...]:
    """``--agents 10,100,1000`` as counts; anything else is a usage error that shows an example."""
    try:
        counts = tuple(int(x) for x in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive agent counts like 10,100,1000, got {text!r}")
    return counts


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

    cfg = VillageBenchConfig(
        counts=(10, 50) if args.quick else args.agents,
        ticks=1 if args.quick else args.ticks,
        warmup_ticks=2 if args.quick else args.warmup_ticks,
        model=args.model,
        teacher=None if args.no_teacher else args.teacher,
        baseline_agents=(10 if args.quick else 100) if args.baseline_agents is None else args.baseline_agents,
        hf_sample=4 if args.quick else args.hf_sample,
        workers=args.workers or auto_workers(),
        threads=args.threads,
        pin=args.pin,
        wire=args.wire,
        cache_mb=args.cache_mb,
        repeat=args.repeat,
    )
    run_village_bench(cfg, args.json, args.plot, console=console)
    return 0


def cmd_bench_score(args: argparse.Namespace) -> int:
    from runtime.bench.score import ScoreBenchConfig, run_score_bench

    cfg = ScoreBenchConfig(
        model=args.model,
        teacher=args.teacher,
        threshold=args.threshold,
        runs=2 if args.quick else args.runs,
        ticks=4 if args.quick else args.ticks,
        agents=args.agents,
        seed=args.seed,
        threads=args.threads,
        free_choices=args.free_choices,
    )
    run_score_bench(cfg, json_path=args.json, console=console)
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
        repeat=args.repeat,
    )
    return 0


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
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
    village.add_argument(
        "--agents",
        type=agent_counts,
        default=(10, 100, 1000),
        help="comma list of agent counts (default 10,100,1000)",
    )
    village.add_argument(
        "--ticks", type=int, default=3, help="timed ticks per count (after one warm-up tick)"
    )
    village.add_argument(
        "--warmup-ticks",
        type=int,
        default=24,
        help="ticks the scripted expert plays first, so agents have memories, trades and talk (default: "
        "half a day)",
    )
    village.add_argument(
        "--model",
        default=DEFAULT_ACT_MODEL,
        help=f"the act model (name or directory; default {DEFAULT_ACT_MODEL})",
    )
    village.add_argument("--teacher", default=DEFAULT_TEACHER, help="teacher of the cascade baseline")
    village.add_argument("--no-teacher", action="store_true", help="skip the cascade baseline")
    village.add_argument(
        "--baseline-agents",
        type=int,
        default=None,
        help="agent count of the baselines (default 100, 10 with --quick; 0: none)",
    )
    village.add_argument(
        "--hf-sample", type=int, default=48, help="agents timed for per_agent_hf (after one untimed call)"
    )
    add_worker_args(village)
    village.add_argument(
        "--cache-mb", type=int, default=768, help="radix-cache budget per worker, MiB (default 768)"
    )
    village.add_argument(
        "--wire",
        choices=WIRES,
        default="pickle",
        help="how batches cross Ray: pickled bytes (default), or ray: Ray's own serializer (to compare)",
    )
    village.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per agent count and per baseline, each on its own seed; the tables and JSON give medians (default 1)",
    )
    village.add_argument("--quick", action="store_true", help="10 and 50 agents, one tick (smoke test)")
    village.add_argument("--json", default=None)
    village.add_argument("--plot", default=None, help="write a PNG plot here")
    village.set_defaults(fn=cmd_bench_village)
    score = bsub.add_parser("score", help="village score with the model brain vs the scripted expert")
    score.add_argument("--model", default=DEFAULT_ACT_MODEL, help="the act model (name or directory)")
    score.add_argument("--teacher", default=None, help="also run the cascade to this teacher")
    score.add_argument("--threshold", type=float, default=0.9, help="the cascade's confidence threshold")
    score.add_argument("--runs", type=int, default=5, help="seeds, each run with every brain")
    score.add_argument("--ticks", type=int, default=96, help="ticks per run (a day is 48)")
    score.add_argument("--agents", type=int, default=None, help="agents (default: the cast of 12)")
    score.add_argument("--seed", type=int, default=0, help="first seed")
    score.add_argument("--threads", type=int, default=0)
    score.add_argument(
        "--free-choices",
        action="store_true",
        help="also run the model with its arguments free (no argument choices), to compare",
    )
    score.add_argument("--quick", action="store_true", help="2 seeds × 4 ticks (a smoke test)")
    score.add_argument("--json", default=None)
    score.set_defaults(fn=cmd_bench_score)
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
        "--variants",
        default=None,
        help="comma list of hf_per_agent,hf_batched,runtime,runtime_q8 (default: all; runtime_q8 "
        "quantizes the model once into the user models directory)",
    )
    talk.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads for torch and ONNX Runtime alike (0: library defaults)",
    )
    talk.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each variant; the table shows the median run (default 1)",
    )
    talk.add_argument("--quick", action="store_true", help="4 agents, 1 round, 8 tokens (smoke test)")
    talk.add_argument("--json", default=None, help="write results as JSON here")
    talk.set_defaults(fn=cmd_bench_talk)
