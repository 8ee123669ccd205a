"""``murmurate bench village``: the village headless at growing agent counts, with baselines.

For each agent count the scripted expert first plays ``warmup_ticks`` (so agents have memories,
trades and talk, as in a run under way: a fresh village's first prompts are short and alike), then
the village runs with the model brain (one warm-up tick, then ``ticks`` timed ticks; no rendering)
and reports ticks/s, decisions/s, prompt and generated tokens/s, prefix hit
ratio, p50/p99 decision latency, the share of wall time spent outside the engine (scheduling, Ray,
prompt building, parsing, world step, waiting: every moment a worker's batcher is not working), the
share in the batchers' own Python (the engine outside ONNX Runtime), and peak RSS (driver + workers).

At one agent count the same tick is also served by the baselines, in the same run:
``per_agent_hf`` (each agent's prompt sent alone to transformers ``generate`` — how agent
simulators call a model once per agent), ``runtime_no_cache``, ``runtime_cache`` and ``cascade``
(student, escalating unsure answers to the MoE teacher).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from rich.console import Console

from runtime.artifacts import hf_weights_dir, model_tokenizer
from runtime.bench.common import machine_info, print_table, write_json
from runtime.cli_common import DEFAULT_ACT_MODEL, DEFAULT_TEACHER, auto_workers


@dataclass
class VillageBenchConfig:
    counts: tuple[int, ...] = (10, 100, 1000)
    ticks: int = 3
    warmup_ticks: int = 24  # played by the scripted expert before any model tick (0: a fresh village)
    model: str = DEFAULT_ACT_MODEL
    teacher: str | None = DEFAULT_TEACHER
    baseline_agents: int = 100
    hf_sample: int = 48  # per-agent transformers calls timed, after one untimed (the rate extrapolates)
    workers: int = field(default_factory=auto_workers)  # one single-threaded worker per core, at most 8
    threads: int = 1
    pin: str = "auto"  # bind each worker to a core of its own (runtime.affinity)
    wire: str = "pickle"  # batches across Ray as pickled bytes; "ray": Ray's own serializer (runtime.wire)
    cache_mb: int = 768  # radix-cache budget per worker (10k agents: 1024 buys no hit ratio, 530 MiB more)
    seed: int = 0
    cascade_threshold: float = 0.9
    repeat: int = 1  # runs per agent count and per baseline, each on its own seed; medians reported


def _scheduler(models: list[tuple[str, Path]], cache: bool, cfg: VillageBenchConfig, cascades=None):
    from runtime.scheduler import ModelSpec, Scheduler
    from runtime.worker import WorkerConfig

    specs = [
        ModelSpec(
            WorkerConfig(
                str(path),
                name=name,
                threads=cfg.threads,
                cache_bytes=(cfg.cache_mb << 20) if cache else 0,
                max_batch_size=256,
            ),
            replicas=cfg.workers,
            num_cpus=0.5,
        )
        for name, path in models
    ]
    return Scheduler(specs, cascades=cascades, pin=cfg.pin, wire=cfg.wire)


def _world(n: int, cfg: VillageBenchConfig):
    """An ``n``-agent village after ``cfg.warmup_ticks`` ticks of the scripted expert.

    A fresh village's first ticks are unlike the rest of a run (empty memories, no trades or talk
    yet, so every prompt's new part is short and alike); the expert plays the warm-up quickly.
    """
    from agents.mind import ExpertBrain
    from worlds import make_world

    world = make_world("village", agents=n, seed=cfg.seed, max_ticks=None)
    obs, _ = world.reset(seed=cfg.seed)
    expert = ExpertBrain(world, record_prompts=False)
    for _ in range(cfg.warmup_ticks):
        obs, *_ = world.step(expert.decide(obs))
    return world


def _run_count(n: int, name: str, serve_name: str, scheduler, cfg: VillageBenchConfig) -> dict:
    """Warm-up tick, then ``cfg.ticks`` timed ticks of an ``n``-agent village."""
    from agents.mind import ModelBrain
    from runtime.process import quiet_gc
    from runtime.simulation import Simulation

    world = _world(n, cfg)
    sim = Simulation(world, ModelBrain(world, model=serve_name), scheduler.generate, world_name="village")
    sim.step()  # warm-up: grammar compilation, cold prefix cache
    quiet_gc()  # as `murmurate run` does once its world and scheduler are built
    before = _worker_seconds(scheduler)
    ms = [sim.step() for _ in range(cfg.ticks)]
    engine_s, worker_s, decode_s = (b - a for a, b in zip(before, _worker_seconds(scheduler)))
    wall = sum(m.wall_s for m in ms)
    capacity = wall * max(1, cfg.workers)  # the workers' seconds in the timed ticks
    lat = np.concatenate([np.asarray(m.latencies_ms) for m in ms]) if ms else np.zeros(1)
    decisions = sum(m.decisions for m in ms)
    prompt = sum(m.prompt_tokens for m in ms)
    stats = scheduler.worker_stats()
    from runtime.worker import peak_rss_mb

    return {
        "agents": n,
        "ticks": len(ms),
        "ticks_per_s": len(ms) / wall,
        "decisions_per_s": decisions / wall,
        "prompt_tokens_per_s": prompt / wall,
        "generated_tokens_per_s": sum(m.generated_tokens for m in ms) / wall,
        "prefix_hit_ratio": sum(m.cached_tokens for m in ms) / prompt if prompt else None,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        # outside the serving engine (the workers' batchers, ONNX Runtime included): the driver's
        # scheduling, prompt building, parsing and world step, Ray, and workers waiting for work
        "overhead_share": max(0.0, 1.0 - worker_s / capacity),
        # inside the engine but outside ONNX Runtime: the batchers' Python (batching, KV copies,
        # sampling, constraints, tokenizing)
        "worker_python_share": max(0.0, (worker_s - engine_s) / capacity),
        # the two together: every moment a worker was not inside ONNX Runtime
        "outside_ort_share": max(0.0, 1.0 - engine_s / capacity),
        # inside ONNX Runtime, split: prefill passes (prompts' uncached tails) and decode passes (a
        # sampled token and the tokens the grammar forces after it)
        "prefill_share": max(0.0, (engine_s - decode_s) / capacity),
        "decode_share": decode_s / capacity,
        "peak_rss_mb": peak_rss_mb() + sum(s["peak_rss_mb"] for s in stats),
        "fallbacks": sum(m.fallbacks for m in ms),
        "ms_per_decision": 1000 * wall / max(decisions, 1),
    }


def median_run(reps: list[dict]) -> dict:
    """One agent count's runs as one: the median of every measured number, each run kept in
    ``repeats`` and the spread of decisions/s in ``decisions_per_s_range`` (with two runs or more)."""
    if len(reps) == 1:
        return reps[0]
    out = {}
    for key, value in reps[0].items():
        values = [r[key] for r in reps]
        numeric = isinstance(value, (int, float)) and None not in values and key not in ("agents", "ticks")
        out[key] = float(np.median(values)) if numeric else value
    rates = [r["decisions_per_s"] for r in reps]
    out["decisions_per_s_range"] = [min(rates), max(rates)]
    out["repeats"] = reps
    return out


def _worker_seconds(scheduler) -> tuple[float, float, float]:
    """Seconds all workers spent in the engine, in their batchers (engine included), and in the
    engine's decode passes."""
    stats = scheduler.worker_stats()
    return (
        sum(s["engine_s"] for s in stats),
        sum(s["step_s"] + s["add_s"] for s in stats),
        sum(s["decode_engine_s"] for s in stats),
    )


def _rates(values: list[float]) -> dict:
    """A baseline's decisions/s over its runs: the median, and with two runs or more their spread
    (``decisions_per_s_range``) and each (``runs``), as the agent counts report theirs."""
    out: dict = {"decisions_per_s": float(np.median(values))}
    if len(values) > 1:
        out["decisions_per_s_range"] = [min(values), max(values)]
        out["runs"] = list(values)
    return out


def _per_agent_hf(model_dir: Path, n: int, cfg: VillageBenchConfig, new_tokens: int) -> dict:
    """Each agent's prompt alone through transformers ``generate``, ``new_tokens`` each (as many as
    the runtime made per decision on average): ``cfg.repeat`` timings, each on the prompts of a
    village from its own seed (``cfg.seed``, ``cfg.seed + 1``, ...), as the runtime's runs are."""
    import torch
    from transformers import AutoModelForCausalLM

    from agents.mind import ModelBrain
    from runtime.artifacts import load_model_dir

    art = load_model_dir(model_dir)
    hf_dir = hf_weights_dir(art)
    if not (hf_dir / "config.json").exists():
        raise FileNotFoundError(f"per_agent_hf needs the transformers weights of {art.name} in {hf_dir}")
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    tok = model_tokenizer(art)

    def decide(r) -> None:
        ids = torch.tensor([tok.encode_prompt(r.segments)])
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )

    rates = []
    for rep in range(max(1, cfg.repeat)):
        world = _world(n, replace(cfg, seed=cfg.seed + rep))
        reqs = ModelBrain(world, model=art.name).requests(world.observations())[: cfg.hf_sample]
        with torch.inference_mode():
            decide(reqs[0])  # untimed: the first call pays torch's one-time set-up
            t0 = time.perf_counter()
            for r in reqs:
                decide(r)
            rates.append(len(reqs) / (time.perf_counter() - t0))
    return {
        **_rates(rates),
        "sampled_agents": len(reqs),
        "new_tokens_each": new_tokens,
        "weights": str(hf_dir),  # a quantized model's: the weights it was quantized from
    }


def run_village_bench(
    cfg: VillageBenchConfig,
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    console: Console | None = None,
) -> dict:
    """Run the village benchmark; prints tables, returns (and optionally writes) the JSON."""
    from runtime.cascade import Cascade
    from runtime.cli_common import resolve_model

    console = console or Console(width=120)
    student_dir = resolve_model(cfg.model)
    from runtime.artifacts import load_model_dir

    student = load_model_dir(student_dir).name
    if cfg.repeat < 1:
        raise ValueError(f"repeat must be at least 1, not {cfg.repeat}")
    runs = []
    with _scheduler([(student, student_dir)], cache=True, cfg=cfg) as sched:
        for n in cfg.counts:
            reps = []
            for rep in range(cfg.repeat):
                with console.status(f"{n} agents (run {rep + 1} of {cfg.repeat})…"):
                    r = _run_count(n, student, student, sched, replace(cfg, seed=cfg.seed + rep))
                console.print(
                    f"  {n:>6} agents: {r['decisions_per_s']:8.1f} decisions/s, p99 {r['p99_ms']:.0f} ms, "
                    f"hit {r['prefix_hit_ratio'] or 0:.2f}; workers: prefill {r['prefill_share']:.2f}, "
                    f"decode {r['decode_share']:.2f}, Python {r['worker_python_share']:.2f}"
                    + (f" (seed {cfg.seed + rep})" if cfg.repeat > 1 else "")
                )
                reps.append(r)
            runs.append(median_run(reps))
    print_table(
        console,
        f"bench village · {student}",
        [
            "agents",
            "ticks/s",
            "decisions/s",
            "prompt tok/s",
            "gen tok/s",
            "prefix hit",
            "p50 ms",
            "p99 ms",
            "outside engine",
            "batcher Python",
            "outside ORT",
            "peak RSS MB",
        ],
        [
            [
                r["agents"],
                r["ticks_per_s"],
                r["decisions_per_s"],
                r["prompt_tokens_per_s"],
                r["generated_tokens_per_s"],
                r["prefix_hit_ratio"],
                r["p50_ms"],
                r["p99_ms"],
                r["overhead_share"],
                r["worker_python_share"],
                r["outside_ort_share"],
                r["peak_rss_mb"],
            ]
            for r in runs
        ],
    )
    if cfg.repeat > 1:
        for r in runs:
            lo, hi = r["decisions_per_s_range"]
            console.print(
                f"  {r['agents']:>6} agents: median of {cfg.repeat} runs {r['decisions_per_s']:.1f} decisions/s "
                f"(from {lo:.1f} to {hi:.1f})"
            )
    baselines: dict[str, dict] = {}
    n = cfg.baseline_agents
    if n:
        console.print(f"baselines at {n} agents:")
        seeds = [replace(cfg, seed=cfg.seed + rep) for rep in range(cfg.repeat)]
        cached = next((r for r in runs if r["agents"] == n), None)
        if cached is None:  # not among the counts: its own runs, on the same seeds
            with _scheduler([(student, student_dir)], cache=True, cfg=cfg) as sched:
                cached = median_run([_run_count(n, student, student, sched, c) for c in seeds])
        baselines["runtime_cache"] = {
            k: cached[k] for k in ("decisions_per_s", "decisions_per_s_range") if k in cached
        }
        with _scheduler([(student, student_dir)], cache=False, cfg=cfg) as sched:
            baselines["runtime_no_cache"] = _rates(
                [_run_count(n, student, student, sched, c)["decisions_per_s"] for c in seeds]
            )
        if cfg.teacher:
            teacher_dir = resolve_model(cfg.teacher)
            teacher = load_model_dir(teacher_dir).name
            cascade = Cascade("bench-cascade", student, teacher, cfg.cascade_threshold)
            with _scheduler(
                [(student, student_dir), (teacher, teacher_dir)], cache=True, cfg=cfg, cascades=[cascade]
            ) as sched:
                rates = [_run_count(n, student, "bench-cascade", sched, c)["decisions_per_s"] for c in seeds]
                share = sched.escalations / max(sched.cascade_requests, 1)
            baselines["cascade"] = {
                **_rates(rates),
                "teacher_share": share,
                "threshold": cfg.cascade_threshold,
            }
        try:
            per_decision = cached["generated_tokens_per_s"] / max(cached["decisions_per_s"], 1e-9)
            baselines["per_agent_hf"] = _per_agent_hf(student_dir, n, cfg, max(1, round(per_decision)))
        except (FileNotFoundError, ImportError) as e:
            console.print(f"[yellow]per_agent_hf skipped:[/yellow] {e}")
        base = baselines.get("per_agent_hf", {}).get("decisions_per_s")
        for v in baselines.values():
            v["vs_per_agent_hf"] = v["decisions_per_s"] / base if base else None
        print_table(
            console,
            f"baselines at {n} agents",
            ["variant", "decisions/s", "× per_agent_hf"],
            [[k, v["decisions_per_s"], v["vs_per_agent_hf"]] for k, v in baselines.items()],
        )
    result = {
        "model": student,
        "runs": runs,
        "baselines": baselines,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()},
        "machine": machine_info(),
    }
    write_json(json_path, result)
    if plot_path:
        plot_village(result, plot_path)
        console.print(f"plot: {plot_path}")
    return result


def plot_village(result: dict, path: str | Path) -> None:
    """decisions/s and p99 latency against agent count, baselines marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    xs = [r["agents"] for r in runs]
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    ax.plot(
        xs, [r["decisions_per_s"] for r in runs], "o-", color="#2a7ab0", label="murmurate (runtime_cache)"
    )
    if all("decisions_per_s_range" in r for r in runs):  # repeated runs: their spread around the median
        ranges = np.array([r["decisions_per_s_range"] for r in runs]).T
        mid = np.array([r["decisions_per_s"] for r in runs])
        ax.errorbar(
            xs,
            mid,
            yerr=[mid - ranges[0], ranges[1] - mid],
            fmt="none",
            ecolor="#2a7ab0",
            capsize=4,
            label=f"lowest to highest of {len(runs[0]['repeats'])} runs",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("agents")
    ax.set_ylabel("decisions / s")
    n = result["config"].get("baseline_agents")
    # marker, colour, and a small shift along the (log) agents axis: baselines of similar speed at
    # the same agent count would otherwise hide each other
    markers = {
        "per_agent_hf": ("s", "#c0392b", 1.0),
        "runtime_no_cache": ("^", "#7f8c8d", 0.9),
        "cascade": ("D", "#8e44ad", 1.11),
    }
    for name, v in result.get("baselines", {}).items():
        if name in markers and n:
            m, c, shift = markers[name]
            y = v["decisions_per_s"]
            lo, hi = v.get("decisions_per_s_range", (y, y))
            ax.errorbar(
                [n * shift],
                [y],
                yerr=[[y - lo], [hi - y]],
                fmt=m,
                color=c,
                markersize=8,
                capsize=3,
                label=name,
            )
    ax2 = ax.twinx()
    ax2.plot(xs, [r["p99_ms"] for r in runs], "o--", color="#e67e22", label="p99 latency")
    ax2.set_ylabel("p99 decision latency (ms)")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    # below the axes: inside, it covers the smallest agent count's points whatever the corner
    ax.legend(
        lines[0] + lines2[0],
        lines[1] + lines2[1],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        ncol=3,
        fontsize=8,
        frameon=False,
    )
    ax.set_title(f"village · {result['model']}")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
