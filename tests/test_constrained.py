"""Constrained decoding: whatever the random model prefers, outputs always conform."""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, TypeAdapter

from runtime.types import Constraint, Request, SamplingParams


@pytest.fixture
def batcher(moe_batcher):
    return moe_batcher


def sampled(constraint: Constraint, n: int = 4, max_tokens: int = 512) -> list[Request]:
    return [
        Request(
            model="m",
            prompt=["Decide now.", f" Agent {i}:"],
            constraint=constraint,
            sampling=SamplingParams(max_tokens=max_tokens, temperature=1.2, seed=i),
        )
        for i in range(n)
    ]


words = st.text(alphabet="abcdefgh xyz-'\"é", min_size=1, max_size=8)
leaf_schemas = st.one_of(
    st.tuples(st.integers(-50, 50), st.integers(0, 60)).map(
        lambda t: {"type": "integer", "minimum": t[0], "maximum": t[0] + t[1]}
    ),
    st.lists(words, min_size=1, max_size=5, unique=True).map(lambda xs: {"enum": xs}),
    st.just({"type": "boolean"}),
    st.integers(1, 10).map(lambda n: {"type": "string", "maxLength": n}),
    words.map(lambda w: {"const": w}),
    st.lists(words, min_size=1, max_size=3, unique=True).map(
        lambda xs: {"type": "array", "items": {"enum": xs}, "maxItems": 3}
    ),
)


def objects(children):
    return st.dictionaries(
        st.from_regex(r"[a-z_]{1,8}", fullmatch=True), children, min_size=1, max_size=3
    ).map(
        lambda props: {
            "type": "object",
            "properties": props,
            "required": sorted(props),
            "additionalProperties": False,
        }
    )


schemas = objects(st.one_of(leaf_schemas, objects(leaf_schemas)))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(schema=schemas)
def test_json_schema_outputs_always_validate(batcher, schema):
    for res in batcher.run(sampled(Constraint.json_schema(schema))):
        assert res.ok, res.error
        jsonschema.validate(json.loads(res.text), schema)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(options=st.lists(words, min_size=1, max_size=6, unique=True))
def test_choices_outputs_are_one_of_the_options(batcher, options):
    for res in batcher.run(sampled(Constraint.choices(options), max_tokens=64)):
        assert res.ok, res.error
        assert res.text in options


def test_regex_outputs_match(batcher):
    pattern = r"[a-c]{2,5}-[0-9]{1,3}"
    for res in batcher.run(sampled(Constraint.regex(pattern), n=8)):
        assert re.fullmatch(pattern, res.text), res.text


class Move(BaseModel):
    type: Literal["move"]
    direction: Literal["north", "south", "east", "west"]


class Talk(BaseModel):
    type: Literal["talk"]
    to: str = Field(max_length=12)
    text: str = Field(max_length=40)


Action = Annotated[Move | Talk, Field(discriminator="type")]


def test_pydantic_union_parses_and_forced_tokens_skip_model_steps(batcher):
    adapter = TypeAdapter(Action)
    results = batcher.run(sampled(Constraint.json_schema(adapter.json_schema()), n=8))
    for res in results:
        adapter.validate_json(res.text)
    # keys and punctuation are forced by the grammar: appended without sampling
    assert all(r.forced_tokens >= 5 for r in results), [r.forced_tokens for r in results]


def test_bad_constraint_is_an_error_result(batcher):
    res = batcher.run([Request(model="m", prompt="x", constraint=Constraint.regex("([a-"))])[0]
    assert res.finish_reason == "error" and "invalid regex constraint" in res.error


def test_unfinishable_output_is_an_error_not_garbage(batcher):
    schema = {"type": "object", "properties": {"t": {"type": "string", "minLength": 50}}, "required": ["t"]}
    res = batcher.run(
        [
            Request(
                model="m",
                prompt="x",
                constraint=Constraint.json_schema(schema),
                sampling=SamplingParams(max_tokens=5),
            )
        ]
    )[0]
    assert res.finish_reason == "error" and "incomplete" in res.error


def test_masks_in_the_calling_thread_match_the_thread_pool(batcher):
    """A 1-thread worker fills masks itself; the pool's masks are the same, row for row, step by step."""
    import numpy as np

    from runtime.constrained import ConstraintCompiler

    tok = batcher.tok
    args = tok.to_json(), batcher.engine.info.vocab_size, tok.eos_token_ids
    serial, pooled = ConstraintCompiler(*args, threads=1), ConstraintCompiler(*args, threads=2)
    assert serial.executor is None and pooled.executor is not None
    constraint = Constraint.json_schema(TypeAdapter(Action).json_schema())
    matchers = [serial.matcher(constraint) for _ in range(6)]
    rng = np.random.default_rng(0)
    for _ in range(40):
        live = [(m, row) for row, m in enumerate(matchers) if not m.is_stopped()]
        if not live:
            break
        a, b = serial.allocate_bitmask(len(matchers)), pooled.allocate_bitmask(len(matchers))
        serial.fill_masks(live, a)
        pooled.fill_masks(live, b)
        assert np.array_equal(a, b)
        for m, row in live:  # advance each row by a random allowed token
            allowed = np.flatnonzero(np.unpackbits(a[row].view(np.uint8), bitorder="little"))
            assert m.consume_token(int(rng.choice(allowed[allowed < args[1]])))


def test_the_grammar_memo_answers_as_llguidance_does(batcher):
    """Matchers sharing a constraint's memo give, at every step of every path, the mask, forced
    tokens and stop that a fresh ``LLMatcher`` fed the same tokens gives; paths met before are
    answered from the memo, new ones by llguidance."""
    import llguidance
    import numpy as np

    from runtime.constrained import ConstraintCompiler

    tok = batcher.tok
    vocab = batcher.engine.info.vocab_size
    compiler = ConstraintCompiler(tok.to_json(), vocab, tok.eos_token_ids, threads=1)
    constraint = Constraint.json_schema(TypeAdapter(Action).json_schema())
    grammar = compiler._grammar(constraint)
    memo = compiler._memos(constraint)
    for walk in range(24):
        m = compiler.matcher(constraint)
        raw = llguidance.LLMatcher(compiler.lltokenizer, grammar, log_level=0)
        # half the walks retrace the first walk's choices, so the memo is hit as well as missed
        pick = np.random.default_rng(0 if walk % 2 else walk)
        for _ in range(64):
            assert m.is_stopped() == raw.is_stopped()
            if raw.is_stopped():
                break
            assert m.compute_ff_tokens() == raw.compute_ff_tokens()
            a, b = compiler.allocate_bitmask(1), compiler.allocate_bitmask(1)
            compiler.fill_masks([(m, 0)], a)
            llguidance.numpy.fill_next_token_bitmask(raw, b, 0)
            assert np.array_equal(a, b)
            allowed = np.flatnonzero(np.unpackbits(a[0].view(np.uint8), bitorder="little"))
            t = int(pick.choice(allowed[allowed < vocab]))
            assert m.consume_token(t) and raw.consume_token(t)
    assert memo.hits > 0 and memo.misses > 0
    # a token the grammar forbids is refused with llguidance's reason, as by a raw matcher
    raw_start = llguidance.LLMatcher(compiler.lltokenizer, grammar, log_level=0).compute_ff_tokens()
    m = compiler.matcher(constraint)
    a = compiler.allocate_bitmask(1)
    compiler.fill_masks([(m, 0)], a)
    bits = np.unpackbits(a[0].view(np.uint8), bitorder="little")[:vocab]
    forbidden = int(np.flatnonzero(bits == 0)[0])
    assert not m.consume_token(forbidden) and m.get_error()
    assert not m.is_stopped() and m.compute_ff_tokens() == raw_start  # still answers where it stands
    assert not m.llmatcher().is_error()  # a path off the memo gets a fresh matcher, not the errored one


def test_a_full_grammar_memo_starts_over():
    from runtime.constrained import GrammarMemo

    class Stub:  # the memo only deep-copies its template when a path is new
        pass

    memo = GrammarMemo(Stub(), vocab_size=8, max_states=2)
    first = memo.matcher()
    memo.states = 3  # as after three new states
    second = memo.matcher()
    assert second.state is memo.root and first.state is not memo.root and memo.states == 1
