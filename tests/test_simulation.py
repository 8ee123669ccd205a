"""The simulation loop end to end: model brain through Ray, determinism across workers, CLI, examples."""

from __future__ import annotations

import json

import pytest

from agents.mind import ExpertBrain, ModelBrain
from agents.prompt import ACTION_CUE
from runtime.cli import main as cli_main
from runtime.scheduler import ModelSpec, Scheduler
from runtime.simulation import Simulation
from runtime.worker import WorkerConfig
from worlds import make_world


def model_run(model_dir, workers: int, agents: int = 6, ticks: int = 3, seed: int = 3, event_log=None):
    world = make_world("village", agents=agents, seed=seed)
    world.reset(seed=seed)
    spec = ModelSpec(WorkerConfig(str(model_dir), name="tiny", threads=1), replicas=workers, num_cpus=0.25)
    with Scheduler([spec]) as scheduler:
        sim = Simulation(
            world,
            ModelBrain(world, model="tiny", max_tokens=96),
            scheduler.generate,
            event_log=event_log,
            world_name="village",
        )
        summary = sim.run(ticks, progress=False)
        sim.close()
    return world, sim, summary


def test_model_brain_is_deterministic_across_worker_counts(ray_session, tiny_models, tmp_path):
    w1, sim1, s1 = model_run(tiny_models["qwen3"], workers=1, event_log=tmp_path / "one.jsonl")
    w2, sim2, s2 = model_run(tiny_models["qwen3"], workers=2)
    assert s1.state_hash == s2.state_hash
    assert s1.decisions == 6 * 3 and s1.generated_tokens > 0
    assert s1.prefix_hit_ratio > 0.5  # rules and role segments are served from the radix cache
    # every decision came from the model and parsed, or fell back with a stated reason;
    # every refusal says why
    events = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    decisions = [e for e in events if e["type"] == "decision"]
    assert len(decisions) == 18
    for e in decisions:
        assert e["source"] in ("model", "fallback")
        if e["source"] == "fallback":
            assert e["reason"]
        if e["refused"] is not None:
            assert isinstance(e["refused"], str) and e["refused"]
    assert sum(e["source"] == "model" for e in decisions) >= 12
    assert [e for e in events if e["type"] == "tick"][-1]["tick"] == 2


def test_expert_simulation_is_deterministic_and_inspectable():
    hashes = []
    for _ in range(2):
        world = make_world("village", agents=12, seed=5)
        world.reset(seed=5)
        sim = Simulation(world, ExpertBrain(world), world_name="village")
        s = sim.run(30, progress=False)
        hashes.append(s.state_hash)
    assert hashes[0] == hashes[1]
    info = sim.inspect(world.agents[0])
    assert set(info) == {"persona", "state", "memory", "last prompt", "last decision"}
    assert "[expert]" in info["last decision"]
    assert info["last prompt"].startswith("Now:\n") and info["last prompt"].endswith("\n" + ACTION_CUE)


def test_200_agents_through_ray(ray_session, tiny_models):
    world, sim, summary = model_run(tiny_models["qwen3"], workers=2, agents=200, ticks=1)
    assert summary.decisions == 200 and summary.agents == 200
    assert summary.fallbacks < 200


def test_cli_headless_expert_run(tmp_path, monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    out = tmp_path / "run"
    assert (
        cli_main(
            [
                "run",
                "village",
                "--brain",
                "expert",
                "--ticks",
                "6",
                "--headless",
                "--out",
                str(out),
                "--record",
                str(out / "v.gif"),
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ticks"] == 6 and summary["decisions"] == 72
    assert (out / "v.gif").stat().st_size > 0 and (out / "final.png").stat().st_size > 0
    assert sum(1 for line in (out / "events.jsonl").read_text().splitlines() if '"decision"' in line) == 72


def test_hud_counts_stay_integers():
    # The recording's HUD writes counts as counts ("refused 3", not "refused 3.00").
    from types import SimpleNamespace

    from runtime.cli import _stats
    from worlds.render.renderer import format_stat

    tick = SimpleNamespace(decisions=12, wall_s=0.02, fallbacks=0, refused=3)
    stats = _stats(SimpleNamespace(metrics=[tick]))
    assert format_stat(stats["refused"]) == "3" and format_stat(stats["fallbacks"]) == "0"
    assert format_stat(stats["decisions/s"]) == "600"
    assert _stats(SimpleNamespace(metrics=[])) == {}


def test_cli_model_brain_errors_are_clear(tmp_path, capsys, monkeypatch):
    # Without the shipped models (an empty search path) the default says how to get them.
    monkeypatch.setattr("runtime.registry.search_path", lambda: [tmp_path / "empty"])
    assert cli_main(["run", "village", "--headless", "--out", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "village-act" in out and "murmurate models build" in out and "--brain expert" in out
    assert (
        cli_main(
            [
                "run",
                "village",
                "--brain",
                "model",
                "--model",
                str(tmp_path / "nope"),
                "--headless",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "no such directory" in capsys.readouterr().out


def test_example_custom_personas(ray_session, tiny_models, tmp_path, monkeypatch):
    from examples import custom_personas

    s = custom_personas.main(["--ticks", "5", "--snapshot", str(tmp_path / "s.png")])
    assert s["ticks"] == 5 and s["agents"] == 12 and (tmp_path / "s.png").exists()
    s = custom_personas.main(["--ticks", "1", "--model", str(tiny_models["qwen3"])])
    assert s["decisions"] == 12 and s["generated_tokens"] > 0


def test_model_brain_without_scheduler_is_a_clear_error():
    world = make_world("village", agents=2, seed=0)
    world.reset(seed=0)
    sim = Simulation(world, ModelBrain(world, model="x"))
    with pytest.raises(RuntimeError, match="needs a scheduler"):
        sim.step()


def test_bench_village_quick_writes_json_and_plot(ray_session, tiny_models, tmp_path):
    out = tmp_path / "bv.json"
    args = [
        "bench",
        "village",
        "--quick",
        "--model",
        str(tiny_models["qwen3"]),
        "--teacher",
        str(tiny_models["llama"]),
        "--repeat",
        "2",
    ]
    assert cli_main([*args, "--json", str(out), "--plot", str(tmp_path / "bv.png")]) == 0
    data = json.loads(out.read_text())
    assert [r["agents"] for r in data["runs"]] == [10, 50]
    for r in data["runs"]:
        assert set(r) >= {
            "agents",
            "ticks_per_s",
            "decisions_per_s",
            "prefix_hit_ratio",
            "p50_ms",
            "p99_ms",
            "overhead_share",
            "worker_python_share",
            "outside_ort_share",
            "prefill_share",
            "decode_share",
            "peak_rss_mb",
        }
        assert r["decisions_per_s"] > 0
        # outside the engine + the batchers' Python = outside ONNX Runtime (each share clipped at 0)
        parts = (r["overhead_share"], r["worker_python_share"], r["outside_ort_share"])
        assert all(0 <= x <= 1 for x in parts)
        assert r["outside_ort_share"] == pytest.approx(
            r["overhead_share"] + r["worker_python_share"], abs=0.05
        )
        # inside ONNX Runtime = its prefill passes + its decode passes (none here: the tiny random
        # model idles, and its first sampled token and the grammar's forced ones make that action)
        assert r["prefill_share"] > 0 and r["decode_share"] >= 0
        assert r["prefill_share"] + r["decode_share"] == pytest.approx(1 - r["outside_ort_share"], abs=0.05)
    assert set(data["baselines"]) == {"per_agent_hf", "runtime_no_cache", "runtime_cache", "cascade"}
    assert data["baselines"]["per_agent_hf"]["vs_per_agent_hf"] == 1.0
    for name, b in data["baselines"].items():  # each baseline on both seeds, as the counts: a median
        lo, hi = b["decisions_per_s_range"]
        assert lo <= b["decisions_per_s"] <= hi, name
        if name != "runtime_cache":  # the agent count's own run, whose repeats are in "runs"
            assert len(b["runs"]) == 2 and [lo, hi] == [min(b["runs"]), max(b["runs"])], name
    assert data["machine"]["cpus"] >= 1 and "onnxruntime" in data["machine"]
    assert (tmp_path / "bv.png").stat().st_size > 10_000


def test_bench_village_repeat_reports_medians_and_the_spread(ray_session, tiny_models, tmp_path):
    from runtime.bench.village import median_run

    out = tmp_path / "bv.json"
    args = [
        "bench",
        "village",
        "--quick",
        "--baseline-agents",
        "0",
        "--repeat",
        "2",
        "--plot",
        str(tmp_path / "bv.png"),
    ]
    assert cli_main([*args, "--model", str(tiny_models["qwen3"]), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["baselines"] == {}  # --baseline-agents 0 holds with --quick too
    for r in data["runs"]:
        rates = [x["decisions_per_s"] for x in r["repeats"]]
        assert len(rates) == 2 and r["decisions_per_s_range"] == [min(rates), max(rates)]
        assert min(rates) <= r["decisions_per_s"] <= max(rates)
    runs = [
        {"agents": 5, "decisions_per_s": x, "p99_ms": 10 * x, "prefix_hit_ratio": None}
        for x in (1.0, 3.0, 2.0)
    ]
    m = median_run(runs)
    assert (m["agents"], m["decisions_per_s"], m["p99_ms"]) == (5, 2.0, 20.0)
    assert m["prefix_hit_ratio"] is None and m["decisions_per_s_range"] == [1.0, 3.0]
    assert median_run(runs[:1]) is runs[0]  # one run stays as it is
    assert (tmp_path / "bv.png").stat().st_size > 10_000  # with the runs' spread as error bars


def test_bench_serve_quick_four_variants(tiny_models, tmp_path):
    out = tmp_path / "serve.json"
    assert (
        cli_main(
            [
                "bench",
                "serve",
                "--quick",
                "--model",
                str(tiny_models["llama"]),
                "--json",
                str(out),
                "--requests",
                "6",
            ]
        )
        == 0
    )
    data = json.loads(out.read_text())
    assert set(data["variants"]) == {"hf_per_request", "hf_batched", "runtime_no_cache", "runtime_cache"}
    for name, v in data["variants"].items():
        assert v["tokens_per_s"] > 0 and v["wall_s"] > 0
        assert v["same_output_as_hf"] == 1.0, name  # every variant generates the same greedy tokens
    assert data["variants"]["runtime_cache"]["prefix_hit_ratio"] >= 0.8
    assert data["variants"]["hf_batched"]["prefix_hit_ratio"] is None


def test_bench_score_compares_brains_on_the_same_seeds(ray_session, tiny_models, tmp_path):
    out = tmp_path / "score.json"
    args = [
        "bench",
        "score",
        "--quick",
        "--model",
        str(tiny_models["qwen3"]),
        "--teacher",
        str(tiny_models["llama"]),
    ]
    assert cli_main([*args, "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    brains = data["brains"]
    assert set(brains) == {"expert", "tiny-qwen3", "cascade@0.9"}
    assert brains["expert"]["of_expert"] == 1.0 and brains["expert"]["on_policy_match"] is None
    for label in ("tiny-qwen3", "cascade@0.9"):
        b = brains[label]
        assert [r["seed"] for r in b["runs"]] == [0, 1]  # the expert's seeds
        assert all(r["decisions"] == 12 * 4 for r in b["runs"])
        assert 0.0 <= b["on_policy_match"] <= 1.0 and b["of_expert"] > 0
    assert 0.0 <= brains["cascade@0.9"]["teacher_share"] <= 1.0


@pytest.mark.slow
def test_cli_joins_an_existing_ray_cluster(tiny_models, tmp_path):
    """``murmurate run --ray-address`` serves the model on a cluster started beforehand (``ray start``)."""
    import os
    import re
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "SDL_VIDEODRIVER": "dummy"}
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    head = [ray_bin, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false"]
    subprocess.run(head, env=env, check=True, capture_output=True, timeout=120)
    try:
        out = tmp_path / "run"
        cmd = [sys.executable, "-m", "runtime.cli", "run", "village", "--headless", "--ticks", "2",
               "--agents", "6", "--model", str(tiny_models["qwen3"]), "--threads", "1",
               "--worker-cpus", "0.5", "--ray-address", f"127.0.0.1:{port}", "--out", str(out)]  # fmt: skip
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        said = re.search(r"joined Ray cluster at (\S+):(\d+)", " ".join(run.stdout.split()))
        assert said is not None and int(said.group(2)) == port, run.stdout[-2000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["decisions"] == 12
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_bench_village_agent_counts_are_checked_before_anything_runs(capsys):
    from runtime.cli_bench import agent_counts

    assert agent_counts("10,100,1000") == (10, 100, 1000)
    for bad in ("abc", "10,0", "", "10,,100"):
        with pytest.raises(SystemExit) as e:
            cli_main(["bench", "village", "--agents", bad])
        assert e.value.code == 2
    assert "expected positive agent counts like 10,100,1000" in capsys.readouterr().err
