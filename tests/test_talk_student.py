"""The talk factory: a teacher's conversations become a small distilled model the runtime serves."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("optimum.exporters.onnx")

from exports.talk import TALK_MODEL, TalkDataSpec, build_talk_dataset, build_talk_model  # noqa: E402
from runtime.artifacts import load_model_dir  # noqa: E402

SPEC = TalkDataSpec(conversations=3, agents=4, rounds=2, new_tokens=6, heldout=1, temperature=0.0, top_p=1.0)


def test_teacher_conversations_become_examples_with_held_out_personas(tiny_models):
    data = build_talk_dataset(tiny_models["llama"], SPEC, progress=False)
    train, held = data["train"], data["heldout_persona"]
    assert 0 < len(train) <= 2 * 4 * 2 and 0 < len(held) <= 4 * 2
    assert not {ex.agent for ex in train} & {ex.agent for ex in held}
    for ex in train + held:
        assert len(ex.prompt) == 3 and ex.prompt[-1].endswith("<|im_start|>assistant\n") and ex.target
    # Round 2 answers the partner's round-1 line: the teacher's words travel between agents.
    r2 = [ex for ex in train if ex.tick == 1]
    assert r2 and all("says to you" in ex.prompt[-1] for ex in r2)


def test_casts_mix_plain_and_numbered_names_and_hold_out_the_default_casts():
    import re

    from worlds.village.cast import default_cast

    spec = TalkDataSpec(conversations=8, agents=6, heldout=2, names="mixed")
    casts = [[p.name for p in spec.cast(c)] for c in range(spec.conversations)]
    train, (held_plain, held_numbered) = casts[:6], casts[6:]
    assert all(not re.search(r"\d", n) for n in casts[0] + casts[2]) and all("-" in n for n in casts[1])
    assert set(held_plain) <= {p.name for p in default_cast()}  # the names a village starts with
    seen = {n for cast in train for n in cast}
    assert not seen & set(held_plain) and not seen & set(held_numbered)
    numbered = TalkDataSpec(names="numbered", agents=3)
    assert [int(p.name.split("-")[1]) for c in (0, 1) for p in numbered.cast(c)] == list(range(1000, 1006))
    with pytest.raises(ValueError, match="names must be"):
        TalkDataSpec(names="plain")


def test_sampled_teacher_lines_are_reproducible(tiny_models):
    from dataclasses import replace

    greedy = build_talk_dataset(tiny_models["llama"], SPEC, progress=False)
    spec = replace(SPEC, temperature=0.7, top_p=0.9)
    sampled = build_talk_dataset(tiny_models["llama"], spec, progress=False)
    again = build_talk_dataset(tiny_models["llama"], spec, progress=False)
    assert [ex.target for ex in sampled["train"]] == [ex.target for ex in again["train"]]
    assert [ex.target for ex in sampled["train"]] != [ex.target for ex in greedy["train"]]


def test_utterance_stats_flag_repetition():
    from exports.talk import utterance_stats

    s = utterance_stats(["Ah, aldad, aldad, aldad", "Fresh fish at the river today!", "the fish, the fish"])
    assert s["repetitive"] == 2 / 3  # a word three times; a word pair twice
    assert s["words"] == 14 / 3 and 0 < s["distinct_2"] < 1
    assert utterance_stats(["Good morning to you"])["distinct_2"] == 1.0


def test_build_talk_model_exports_a_carded_model_the_runtime_serves(tiny_models, tmp_path):
    from runtime.bench.conversation import TalkWorkload
    from runtime.bench.talk import run_talk_bench

    r = build_talk_model(
        tmp_path, teacher=str(tiny_models["llama"]), spec=SPEC, steps=4, preset="tiny", progress=False
    )
    art = load_model_dir(tmp_path / TALK_MODEL)
    card = json.loads((tmp_path / TALK_MODEL / "model_card.json").read_text())
    assert art.name == TALK_MODEL and card == r["card"] and card["task"] == "talk"
    assert card["heldout"]["heldout_persona"]["loss"] > 0 and card["built"]["steps"] == 4
    gen = card["heldout"]["heldout_persona"]["generation"]
    assert (
        set(gen) == {"student", "student_no_repeat_3", "teacher"} and 0 <= gen["student"]["repetitive"] <= 1
    )
    # The teacher is not asked again for the same conversations.
    again = build_talk_model(
        tmp_path, teacher=str(tiny_models["llama"]), spec=SPEC, steps=4, preset="tiny", progress=False
    )
    assert again["card"]["built"]["data"] == card["built"]["data"]
    # The bench runs the same workload on the student.
    out = run_talk_bench(
        tiny_models["llama"],
        TalkWorkload(agents=2, rounds=1, new_tokens=3),
        student=tmp_path / TALK_MODEL,
        variants=("runtime",),
        threads=1,
    )
    assert out["variants"]["student"]["tokens_per_s"] > 0
