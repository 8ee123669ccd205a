"""Personas, action schemas, memory, prompts, minds and brains (no model server: stand-ins)."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from pydantic import BaseModel, ValidationError

from agents import (
    SEGMENTS,
    ActionParseError,
    ExpertBrain,
    Memory,
    Mind,
    ModelBrain,
    Persona,
    action_json,
    action_schema,
    action_union,
    build_prompt,
    derive_seed,
    parse_action,
)
from agents.prompt import ACTION_CUE, observation_of
from runtime.types import Result
from worlds.village import Eat, Idle, Talk, Trade, Village, VillageAction, VillagePersona, default_cast
from worlds.village.observation import ways


def result_for(request, text: str, error: str | None = None) -> Result:
    return Result(
        id=request.id,
        model=request.model,
        text=text,
        token_ids=[],
        finish_reason="error" if error else "stop",
        prompt_tokens=1,
        cached_tokens=0,
        generated_tokens=1,
        error=error,
        tag=request.tag,
    )


# ----------------------------------------------------------------- personas


def test_persona_fills_and_rounds_traits():
    p = Persona(name="Alda", role="farmer", traits={"greed": 0.123456})
    assert p.traits["greed"] == 0.12
    assert p.traits["caution"] == 0.5
    assert list(p.traits) == ["greed", "caution", "sociability", "diligence", "generosity", "curiosity"]
    assert p.models["act"] == "act"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"traits": {"greedy": 0.5}}, "unknown trait 'greedy' (did you mean 'greed'?)"),
        ({"traits": {"caution": 1.5}}, "out of range; use a value in 0..1"),
        ({"traits": {"caution": "high"}}, "must be a number in 0..1"),
        ({"role": "pirate"}, "role 'pirate' is not a role of this world"),
        ({"name": "alda"}, "must start with a capital letter"),
        ({"name": "Alda Smith"}, "string should match pattern"),
        ({"models": {"dance": "x"}}, "unknown task 'dance'"),
        ({"backstory": "x" * 301}, "shorten it to at most 300"),
        ({"goals": ["g"] * 6}, "keep at most 5"),
        ({"hobby": "chess"}, "extra inputs are not permitted"),
    ],
)
def test_persona_errors_say_what_to_fix(kwargs, message):
    base = {"name": "Alda", "role": "farmer"}
    with pytest.raises(ValidationError) as err:
        VillagePersona(**{**base, **kwargs})
    assert message.lower() in str(err.value).lower()


def test_persona_missing_role_is_an_error():
    with pytest.raises(ValidationError, match="role"):
        Persona(name="Alda")


def test_persona_models_known_names_registry():
    class Registered(Persona):
        KNOWN_MODELS = frozenset({"act", "talk", "village-act"})

    assert Registered(name="A", role="r", models={"act": "village-act"}).models["act"] == "village-act"
    with pytest.raises(ValidationError, match="model 'village-akt'.*did you mean 'village-act'"):
        Registered(name="A", role="r", models={"act": "village-akt"})
    with pytest.raises(ValidationError, match="not a known model"):
        Persona.model_validate(
            {"name": "A", "role": "r", "models": {"act": "big"}}, context={"known_models": {"small"}}
        )
    p = Persona(name="A", role="r", models={"act": "big"})
    p.check_models({"big", "talk"})
    with pytest.raises(ValueError, match="act -> 'big'"):
        p.check_models({"talk"})


def test_persona_describe_is_stable_text():
    p = default_cast()[0]
    text = p.describe()
    assert text.startswith("You are Alda, a farmer.")
    assert "caution 0.85" in text
    assert text == default_cast()[0].describe()


# ----------------------------------------------------------------- action schemas


class Wave(BaseModel):
    action: Literal["wave"] = "wave"
    times: int = 1


class Nod(BaseModel):
    action: Literal["nod"] = "nod"


def test_action_union_needs_a_discriminator():
    class Bare(BaseModel):
        x: int

    with pytest.raises(TypeError, match="has no 'action' field"):
        action_union(Wave, Bare)


def test_parse_action_valid_and_invalid():
    union = action_union(Wave, Nod)
    assert parse_action(union, ' {"action": "wave", "times": 3}\n') == Wave(times=3)
    assert parse_action(union, '{"action":"nod"}') == Nod()
    for text, why in [
        ("", "empty output"),
        ("wave!", "not JSON"),
        ('{"action":"nod"} and more', "text after the JSON"),
        ('{"action":"jump"}', "invalid action"),
        ('{"action":"wave","times":"many"}', "times"),
    ]:
        with pytest.raises(ActionParseError, match=why):
            parse_action(union, text)


def test_action_schema_is_decoder_friendly():
    schema = action_schema(VillageAction)
    assert "anyOf" in schema and "oneOf" not in schema
    for name, obj in schema["$defs"].items():
        assert obj["required"][0] == "action", name
        assert obj["additionalProperties"] is False
    json.dumps(schema)  # serializable for Constraint.json_schema


@pytest.mark.parametrize(
    "action",
    [
        Eat(item="fish"),
        Trade(to="Bram", give="coins", give_qty=3, get="fish", get_qty=1),
        Talk(to="Bram", text="hi"),
    ],
)
def test_action_json_round_trips(action):
    text = action_json(action)
    assert text.startswith('{"action": ')
    assert parse_action(VillageAction, text) == action


# ----------------------------------------------------------------- memory


def test_memory_is_bounded_and_keeps_important_events():
    m = Memory(capacity=3)
    m.add(0, "the river flooded the fields", 0.9)
    for t in range(1, 6):
        m.add(t, f"walked around {t}", 0.1)
    assert len(m) == 3
    assert "the river flooded the fields" in [e.text for e in m]


def test_memory_retrieval_scores_relevance_recency_importance():
    m = Memory(capacity=10)
    m.add(0, "Bram sold me fish at the market", 0.3)
    m.add(5, "the weather was grey", 0.3)
    m.add(6, "ate bread", 0.3)
    m.add(7, "slept at home", 0.3)
    got = [e.text for e in m.retrieve("fish at the market", now=8, k=1)]
    assert got == ["Bram sold me fish at the market"]
    # with no relevant words, the newest wins (recency); results come back oldest first
    assert [e.text for e in m.retrieve("zzz", now=8, k=2)] == ["ate bread", "slept at home"]
    m.add(7, "a fire burned the tavern", 1.0)
    assert m.retrieve("zzz", now=8, k=1)[0].text == "a fire burned the tavern"


def test_memory_round_trip_and_determinism():
    m = Memory(capacity=4)
    for t in range(8):
        m.add(t, f"event number {t} about wheat" if t % 2 else f"event {t}", t / 10)
    again = Memory.from_dict(json.loads(json.dumps(m.to_dict())))
    assert [(e.tick, e.text, e.importance) for e in again] == [(e.tick, e.text, e.importance) for e in m]
    assert again.retrieve("wheat", 9, 2) == m.retrieve("wheat", 9, 2)
    with pytest.raises(ValueError, match="capacity"):
        Memory(capacity=0)


# ----------------------------------------------------------------- prompts


def started_village(seed: int = 0, **kw) -> tuple[Village, dict]:
    world = Village(**kw)
    obs, _ = world.reset(seed=seed)
    return world, obs


def test_prompt_segments_are_ordered_and_shared():
    world, obs = started_village()
    brain = ExpertBrain(world)
    brain.decide(obs)
    farmers = [a for a in world.agents if world.persona(a).role == "farmer"]
    merchant = next(a for a in world.agents if world.persona(a).role == "merchant")
    p1, p2, pm = (brain.last_prompt[a] for a in (*farmers[:2], merchant))
    assert len(p1) == len(SEGMENTS) == 5
    assert p1[0] == p2[0] == pm[0] == world.rules_text() + "\n\n"  # rules: shared by all
    assert p1[1] == p2[1] != pm[1]  # role: shared within a role
    assert p1[2] != p2[2] and p1[2].startswith("You are")
    # the persona segment is the world's persona text: the persona, then its ways in this world
    for agent in (*farmers[:2], merchant):
        persona, segment = world.persona(agent), brain.last_prompt[agent][2]
        assert segment == world.persona_text(agent) + "\n\n"
        assert segment == persona.describe() + "\n" + ways(persona.role, persona.traits) + "\n\n"
        assert segment.rstrip("\n").splitlines()[-1].startswith("Ways: ")
    assert p1[3].startswith("Memories:")
    assert p1[4] == "Now:\n" + obs[farmers[0]] + "\n" + ACTION_CUE
    assert observation_of(p1) == obs[farmers[0]]
    assert sum(len(s) for s in p1[4:]) < 400  # the observation stays compact


def test_shared_segments_do_not_change_across_ticks():
    world, obs = started_village()
    brain = ExpertBrain(world)
    brain.decide(obs)
    first = dict(brain.last_prompt)
    for _ in range(5):
        obs, *_ = world.step(brain.decide(obs))
    brain.decide(obs)
    for agent in world.agents:
        assert brain.last_prompt[agent][:3] == first[agent][:3]
        assert brain.last_prompt[agent][4] != first[agent][4]


def test_build_prompt_shows_relevant_memories():
    memory = Memory()
    memory.add(3, "Harlan cheated me on fish", 0.9)
    segments = build_prompt(
        rules="R", role="Role", persona=default_cast()[0], memory=memory, observation="near Harlan", now=10
    )
    assert segments[3] == "Memories:\n- t3: Harlan cheated me on fish\n\n"


def test_build_prompt_persona_segment_and_action_cue():
    persona = default_cast()[0]
    kw = {
        "rules": "R",
        "role": "Role",
        "persona": persona,
        "memory": None,
        "observation": "day at fields\n",
        "now": 0,
    }
    plain = build_prompt(**kw)
    assert plain[2] == persona.describe() + "\n\n"  # without a world's wording, the persona describes itself
    worded = build_prompt(**kw, persona_text="You are Alda.\nWays: idle, you wait.")
    assert worded[2] == "You are Alda.\nWays: idle, you wait.\n\n"
    assert worded[:2] + worded[3:] == plain[:2] + plain[3:]
    assert plain[4] == "Now:\nday at fields\nAction:" and ACTION_CUE == "Action:"
    assert observation_of(plain) == "day at fields"
    with pytest.raises(ValueError, match="not a prompt built by build_prompt"):
        observation_of((*plain[:4], "Now:\nday at fields\nYour next action as one JSON object:"))


# ----------------------------------------------------------------- minds and brains


def test_mind_request_is_greedy_constrained_and_seeded():
    world, obs = started_village()
    persona = world.persona("Alda")
    mind = Mind(persona, rules="r", role="x", action_type=world.action_type)
    prompt = mind.prompt(world.memory("Alda"), obs["Alda"], now=0)
    assert prompt[2] == persona.describe() + "\n\n"  # no world wording given
    worded = Mind(
        persona, rules="r", role="x", action_type=world.action_type, persona_text=world.persona_text("Alda")
    )
    assert worded.prompt(world.memory("Alda"), obs["Alda"], now=0)[2] == world.persona_text("Alda") + "\n\n"
    req = mind.request(prompt, now=0, sim_seed=7)
    assert req.model == "village-act" and req.tag == "Alda"  # the cast's default act model
    assert req.sampling.temperature == 0.0
    assert req.constraint.kind == "json_schema"
    assert json.loads(req.constraint.value) == action_schema(VillageAction)
    assert req.sampling.seed == derive_seed(7, "Alda", 0)
    assert len({derive_seed(7, a, t) for a in ("Alda", "Bram") for t in (0, 1)}) == 4
    assert derive_seed(7, "Alda", 0) == mind.request(prompt, now=0, sim_seed=7).sampling.seed
    assert Mind(persona, rules="r", role="x", action_type=world.action_type, model="tiny").model == "tiny"


def test_mind_turns_failures_into_logged_fallbacks(caplog):
    world, obs = started_village()
    mind = Mind(world.persona("Alda"), rules="r", role="x", action_type=world.action_type)
    req = mind.request(("p",), now=4, sim_seed=0)
    ok = mind.decide(result_for(req, '{"action":"eat","item":"wheat"}'), now=4, fallback=Idle())
    assert (ok.source, ok.action, ok.reason) == ("model", Eat(item="wheat"), None)
    for result, why in [
        (result_for(req, "", error="worker died"), "serving error: worker died"),
        (result_for(req, '{"action":"fly"}'), "unparsable output"),
        (None, "no result"),
    ]:
        decision = mind.decide(result, now=4, fallback=Idle())
        assert decision.source == "fallback" and decision.action == Idle()
        assert why in decision.reason
    assert "fallback" in caplog.text


def test_model_brain_with_a_stand_in_server():
    world, obs = started_village()
    brain = ModelBrain(world)
    requests = brain.requests(obs)
    assert [r.tag for r in requests] == world.agents
    assert len({r.id for r in requests}) == len(requests)

    def serve(reqs):  # Alda's output is garbage, Bertram's never comes back, the rest eat
        return [
            result_for(r, "nonsense" if r.tag == "Alda" else '{"action":"eat","item":"wheat"}')
            for r in reversed(reqs)
            if r.tag != "Bertram"
        ]

    actions = brain.actions(serve(requests))
    assert set(actions) == set(world.agents)
    assert actions["Alda"] == Idle() and actions["Bertram"] == Idle()
    assert actions["Cora"] == Eat(item="wheat")
    assert brain.last_decision["Alda"].reason.startswith("unparsable")
    assert brain.stats == {"decisions": 12, "fallbacks": 2}
    assert brain.last_prompt["Cora"] == requests[2].segments
    for r in requests:  # the minds word the persona as the world does, Ways line included
        assert r.segments[2] == world.persona_text(r.tag) + "\n\n" and "\nWays: " in r.segments[2]
    obs, *_ = world.step(actions)  # whatever the model said, step accepts it
    assert ModelBrain(world, model="tiny").requests(obs)[0].model == "tiny"


def test_expert_brain_failures_fall_back():
    world, obs = started_village()

    def broken(persona, observation):
        raise RuntimeError("bug")

    brain = ExpertBrain(world, broken)
    assert brain.requests(obs) == []
    actions = brain.actions([])
    assert all(a == Idle() for a in actions.values())
    assert brain.stats["fallbacks"] == len(world.agents)
    with pytest.raises(ValueError, match="pass serve="):
        ModelBrain(world).decide(obs)


def test_expert_actions_as_text_pass_the_serving_grammar():
    """The expert's action text (the training target) is exactly what constrained decoding allows."""
    llguidance = pytest.importorskip("llguidance")
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    from runtime.constrained import grammar_for
    from runtime.types import Constraint

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<eos>"] = len(vocab)
    tok = Tokenizer(BPE(vocab=vocab, merges=[]))  # one token per byte
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    lltok = llguidance.LLTokenizer(tok.to_str(), n_vocab=len(vocab), eos_token=[vocab["<eos>"]])
    grammar = grammar_for(Constraint.json_schema(action_schema(VillageAction)))

    def accepted(text: str) -> bool:
        matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
        return matcher.consume_tokens(tok.encode(text).ids) and matcher.is_accepting()

    world, obs = started_village()
    brain = ExpertBrain(world, record_prompts=False)
    kinds = {}
    for _ in range(60):
        actions = brain.decide(obs)
        for action in actions.values():
            kinds.setdefault(action.action, action)
        obs, *_ = world.step(actions)
    assert len(kinds) >= 10
    for action in kinds.values():
        assert accepted(action_json(action)), action_json(action)
    assert not accepted('{"action":"idle"}')  # compact JSON would not be a valid training target
