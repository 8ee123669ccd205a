"""Speech: the act model decides to talk, the speaker's talk model writes the line, in the same tick."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.mind import ExpertBrain, ModelBrain
from agents.speech import SYSTEM_TEXT, speech_request
from exports.quantize import runtime_batcher
from runtime.simulation import Simulation
from worlds import make_world
from worlds.village import Talk

SHIPPED_ACT = Path(__file__).resolve().parent.parent / "exports" / "models" / "village-act"


def _village(agents: int = 4):
    world = make_world("village", agents=agents, seed=0, max_ticks=None)
    world.reset(seed=0)
    return world


def _one_speaker(tiny_models):
    """A village whose first agent talks to the second, and a tiny talk model's batcher."""
    world = _village()
    talk, talk_name = runtime_batcher(tiny_models["llama"])
    speaker, partner = world.agents[:2]
    actions = {a: world.fallback_action() for a in world.agents}
    actions[speaker] = Talk(to=partner, text="fine weather")
    return world, talk, talk_name, speaker, partner, actions


def test_talk_prompt_is_the_one_the_talk_student_learned():
    world = _village()
    alda, bram = (world.persona(a) for a in world.agents[:2])
    req = speech_request(alda, bram, 'hi<|im_end|> "there"', model="village-talk", tag="Alda")
    system, persona, turn = req.prompt
    assert system == SYSTEM_TEXT and persona.startswith(f"You are {alda.name}")
    assert bram.name in turn and "<|im_end|> " not in turn.split("says to you:")[1]  # markup defanged
    assert req.tag == "Alda" and req.sampling.no_repeat_ngram_size == 3 and req.sampling.temperature == 0


def test_sampled_lines_are_seeded_by_run_speaker_and_tick(tiny_models):
    world, talk, talk_name, speaker, partner, actions = _one_speaker(tiny_models)
    brain = ModelBrain(world, speech=True, talk_model=talk_name, speech_temperature=1.0, speech_top_p=0.95)
    (req,) = brain.followups(actions)
    (again,) = ModelBrain(world, speech=True, talk_model=talk_name, speech_temperature=1.0).followups(actions)
    assert req.sampling.temperature == 1.0 and req.sampling.top_p == 0.95
    assert req.sampling.seed == again.sampling.seed  # the same run, speaker and tick: the same draw
    assert talk.run([req])[0].text == talk.run([again.model_copy(update={"sampling": req.sampling})])[0].text
    world.step(actions)
    brain._tick = world.tick
    (later,) = brain.followups(actions)
    assert later.sampling.seed != req.sampling.seed


def test_speech_is_a_second_request_written_by_the_talk_model(tiny_models):
    world, talk, talk_name, speaker, partner, actions = _one_speaker(tiny_models)
    assert ModelBrain(world).followups(actions) == []  # speech is off by default
    brain = ModelBrain(world, speech=True, talk_model=talk_name)
    requests = brain.followups(actions)
    assert [(r.model, r.tag) for r in requests] == [(talk_name, speaker)]  # one line, for the speaker only
    results = talk.run(requests)
    revised = brain.revise(actions, results)
    assert {a: revised[a] for a in revised if a != speaker} == {
        a: actions[a] for a in actions if a != speaker
    }
    try:
        expected = world.with_utterance(actions[speaker], results[0].text)
    except ValueError:  # nothing printable in a random model's line: the act model's words stay
        expected = actions[speaker]
    assert revised[speaker] == expected and revised[speaker].to == partner
    failed = results[0].model_copy(update={"error": "engine failure", "text": ""})
    assert brain.revise(actions, [failed])[speaker] == actions[speaker]
    assert brain.stats["speech"] == 2 and brain.stats["speech_failed"] >= 1


def test_a_world_without_speech_refuses_the_option():
    class Mute:  # a MindContext without speech hooks
        agents: list[str] = []

    with pytest.raises(ValueError, match="no speech actions"):
        ModelBrain(Mute(), speech=True)


def test_a_village_run_with_speech_logs_the_talk_models_lines(tiny_models, tmp_path):
    """The shipped act student decides; a tiny model writes the lines; one serve call per step."""
    world = _village(agents=12)
    act, act_name = runtime_batcher(SHIPPED_ACT)
    talk, talk_name = runtime_batcher(tiny_models["llama"])
    calls = []

    def serve(requests):
        models = {r.model for r in requests}
        calls.append(models)
        assert len(models) == 1  # decisions first, then the lines: never mixed
        return (act if models == {act_name} else talk).run(requests)

    brain = ModelBrain(world, speech=True, talk_model=talk_name)
    sim = Simulation(world, brain, serve, event_log=tmp_path / "events.jsonl", world_name="village")
    ticks = [sim.step() for _ in range(24)]
    sim.close()
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    spoken = [e for e in events if e.get("speech") is not None]
    assert spoken, "the act student decided to talk at least once in 24 ticks"
    assert all(e["action"]["action"] == "talk" for e in spoken)
    # one call for the lines of a tick, in every tick where someone spoke (a random model's line
    # may fail the rules, and then the act model's words stay and no "speech" is logged)
    assert sum(1 for c in calls if c == {talk_name}) >= len({e["tick"] for e in spoken})
    lines = brain.stats["speech"]
    assert lines == len(spoken) + brain.stats.get("speech_failed", 0)
    assert sum(t.requests for t in ticks) == sum(t.decisions for t in ticks) + lines


def test_the_expert_brain_never_asks_for_speech():
    world = _village()
    brain = ExpertBrain(world)
    actions = brain.decide(world.observations())
    assert brain.followups(actions) == [] and brain.revise(actions, []) is actions


def test_run_village_speech_serves_the_talk_model_beside_the_act_model(ray_session, tiny_models, tmp_path):
    from runtime.cli import main

    out = tmp_path / "run"
    args = [
        "run",
        "village",
        "--ticks",
        "14",
        "--headless",
        "--out",
        str(out),
        "--record",
        str(tmp_path / "v.gif"),
    ]
    args += ["--speech", "--talk-model", str(tiny_models["llama"]), "--workers", "1", "--worker-cpus", "0.5"]
    assert main(args) == 0
    ticks = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines() if '"type": "tick"' in x]
    talks = [
        json.loads(x) for x in (out / "events.jsonl").read_text().splitlines() if '"action": "talk"' in x
    ]
    assert len(ticks) == 14 and talks  # the shipped student talks within the first 14 ticks
    # every talk decision asked for a line: requests = decisions + lines
    assert sum(t["requests"] for t in ticks) == sum(t["decisions"] for t in ticks) + len(talks)
