"""String choices: per-request options for JSON string values on top of one shared grammar."""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents import ExpertBrain
from runtime.choices import ChoiceTracker, TokenBytes
from runtime.types import Constraint, Request, SamplingParams
from worlds.village import Village, village_cast

SCHEMA = {
    "type": "object",
    "properties": {
        "action": {"enum": ["talk", "trade", "idle"]},
        "to": {"type": "string", "maxLength": 12},
        "note": {"type": "string", "maxLength": 6},
    },
    "required": ["action", "to", "note"],
    "additionalProperties": False,
}


@pytest.fixture
def batcher(moe_batcher):
    return moe_batcher


def run(batcher, constraints: list[Constraint]) -> list:
    batcher.add_many(
        [
            Request(
                model="m",
                prompt=["Pick someone.", f" Agent {i}:"],
                constraint=c,
                sampling=SamplingParams(max_tokens=96, temperature=1.5, seed=i),
            )
            for i, c in enumerate(constraints)
        ]
    )
    out = []
    while batcher.has_work:
        out.extend(batcher.step())
    return sorted(out, key=lambda r: int(r.id.split("-")[-1]))


names = st.text(alphabet="abAB ë'\"", min_size=1, max_size=7)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(options=st.lists(st.lists(names, min_size=1, max_size=3, unique=True), min_size=4, max_size=4))
def test_values_are_among_the_options_and_the_schema_still_holds(batcher, options):
    base = Constraint.json_schema(SCHEMA)
    constraints = [base.with_string_choices({"to": opts, "action": ["talk", "idle"]}) for opts in options]
    for result, opts in zip(run(batcher, constraints), options, strict=True):
        assert result.error is None, result.error
        value = json.loads(result.text)
        jsonschema.validate(value, SCHEMA)
        assert value["to"] in opts and value["action"] in ("talk", "idle")


def test_requests_differing_only_in_choices_share_one_grammar(batcher):
    base = Constraint.json_schema(SCHEMA)
    before = batcher.compiler._templates.cache_info()
    run(batcher, [base.with_string_choices({"to": [f"N{i}"]}) for i in range(6)])
    after = batcher.compiler._templates.cache_info()
    assert after.misses - before.misses <= 1  # at most the base schema, compiled once


def test_a_choice_the_schema_forbids_leaves_the_schema_in_charge(batcher):
    # "note" is at most 6 characters: the 9-character option cannot be written, so the mask
    # steps aside rather than leave no token; the output is still valid for the schema
    c = Constraint.json_schema(SCHEMA).with_string_choices({"note": ["ninechars"]})
    for result in run(batcher, [c, c]):
        assert result.error is None, result.error
        jsonschema.validate(json.loads(result.text), SCHEMA)


def test_constraint_validation_and_defaults():
    base = Constraint.json_schema(SCHEMA)
    assert base.with_string_choices({"to": [], "note": ["x"]}).string_choices == (("note", ("x",)),)
    assert base.with_string_choices({"to": ["a"]}).base == base
    with pytest.raises(ValueError, match="json_schema constraints only"):
        Constraint(kind="regex", value="a+", string_choices=(("to", ("a",)),))
    with pytest.raises(ValueError, match="at least one option"):
        Constraint(kind="json_schema", value="{}", string_choices=(("to", ()),))


def test_tracker_follows_the_output_across_token_boundaries():
    vocab = [b"", b'{"', b"to", b'":', b' "', b"Al", b"da", b"Bo", b'"', b'",', b"x", b'"}', b' "x', b' "Bo']
    table = TokenBytes(vocab)
    tracker = ChoiceTracker(table, [("to", ["Alda", "Bo"])])
    ids = {b: i for i, b in enumerate(vocab)}
    out = [ids[b'{"'], ids[b"to"]]
    assert tracker.allowed(out) is None  # in the key
    out.append(ids[b'":'])
    # before the value: no quote (the schema decides), or a quote that opens a fitting value
    assert {vocab[i] for i in tracker.allowed(out)} == {
        b"to",
        b"Al",
        b"da",
        b"Bo",
        b"x",
        b'{"',
        b' "',
        b'"',
        b' "Bo',
    }
    out.append(ids[b' "'])
    assert {vocab[i] for i in tracker.allowed(out)} == {b"Al", b"Bo"}
    out.append(ids[b"Al"])
    assert {vocab[i] for i in tracker.allowed(out)} == {b"da"}
    out.append(ids[b"da"])
    assert {vocab[i] for i in tracker.allowed(out)} == {b'"', b'",', b'"}', b'":'}  # the schema picks
    out.append(ids[b'",'])
    assert tracker.allowed(out) is None  # the value is closed


def test_the_expert_never_needs_what_the_village_choices_leave_out():
    """Every action the scripted expert takes lies inside the agent's argument choices, so the
    limits take nothing from a model that imitates it; they only remove sure refusals."""
    world = Village(village_cast(40, seed=3), max_ticks=120)
    obs, _ = world.reset(seed=3)
    brain = ExpertBrain(world, record_prompts=False)
    checked = 0
    while world.agents:
        actions = brain.decide(obs)
        for agent, action in actions.items():
            choices = world.argument_choices(agent)
            assert Village.observation_choices(obs[agent]) == choices  # what held-out evaluation uses
            fields = action.model_dump()
            for key, options in choices.items():
                if key in fields:
                    assert fields[key] in options, (agent, world.tick, fields, choices)
            checked += 1
        obs, *_ = world.step(actions)
    assert checked == 40 * 120
