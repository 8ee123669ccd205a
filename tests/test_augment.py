"""Training examples varied at random: villagers renamed, lists reordered (exports.augment)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_factory import data, tok_dir  # noqa: E402, F401  (module fixtures)

from agents.actions import parse_action  # noqa: E402
from exports.augment import (  # noqa: E402
    NameShuffler,
    augmented_batch,
    make_shuffler,
    persona_of,
    reorder,
    village_first_names,
)
from exports.dataset import encode_split  # noqa: E402
from exports.tokenizer import runtime_tokenizer  # noqa: E402
from exports.train import TrainConfig, make_batch, train  # noqa: E402
from worlds.village.world import Village  # noqa: E402


def _strip_names(shuffler: NameShuffler, text: str) -> str:
    return shuffler._pattern.sub("NAME", text)


def test_rename_is_consistent_and_changes_nothing_but_names(data):  # noqa: F811
    shuffler = make_shuffler(data)
    rng = np.random.default_rng(0)
    trades = [ex for ex in data["train"] if '"to"' in ex.target or '"offer_from"' in ex.target]
    assert trades
    for ex in trades[:50]:
        new = shuffler.rename(ex, rng)
        # the same text once names are blanked out: only names changed
        for a, b in zip([*ex.prompt, ex.target], [*new.prompt, new.target]):
            assert _strip_names(shuffler, a) == _strip_names(shuffler, b)
        # the partner in the target is the renamed partner of the prompt, and still within reach
        old_to = next(v for k, v in json.loads(ex.target).items() if k in ("to", "offer_from"))
        new_to = next(v for k, v in json.loads(new.target).items() if k in ("to", "offer_from"))
        assert old_to in ex.prompt[-1] and new_to in new.prompt[-1]
        near_old = re.search(r"near (.*)", ex.prompt[-1])
        near_new = re.search(r"near (.*)", new.prompt[-1])
        if near_old and old_to in near_old.group(1):
            old_names = [n.split(" ", 1)[1] for n in near_old.group(1).split(", ")]
            new_names = [n.split(" ", 1)[1] for n in near_new.group(1).split(", ")]
            assert new_names[old_names.index(old_to)] == new_to
        parse_action(Village.action_type, new.target)  # still a valid action


def test_own_name_and_bare_first_name_follow_together():
    shuffler = NameShuffler(village_first_names(), exclude_numbers=range(13, 1000))
    from exports.dataset import ActExample

    ex = ActExample(
        prompt=(
            "rules",
            "You are Lenz-484, a woodcutter.\nBackstory: Lenz grew up in a northern town.\n",
            'Memories:\n- t3: Alda said: "hello"\n',
            "Now:\nnear farmer Alda, fisher Lenz-12\nAction:",
        ),
        target='{"action": "talk", "to": "Lenz-12", "text": "hello"}',
        split="train",
        world_seed=1,
        agent="Lenz-484",
        tick=3,
        role="woodcutter",
    )
    new = shuffler.rename(ex, np.random.default_rng(1))
    own = re.search(r"You are (\w+)-(\d+)", new.prompt[1])
    assert own and f"Backstory: {own.group(1)} grew up" in new.prompt[1]
    assert int(own.group(2)) >= 1000  # held-out numbers are never drawn
    partner = json.loads(new.target)["to"]
    assert partner in new.prompt[3] and partner.split("-")[0] == own.group(1)  # Lenz-12 shares Lenz
    assert partner != own.group(0)[len("You are ") :]  # two numbers, two names
    alda = re.search(r"t3: (\w+) said", new.prompt[2]).group(1)
    assert f"near farmer {alda}," in new.prompt[3]


def test_held_out_persona_numbers_are_excluded(data):  # noqa: F811
    shuffler = make_shuffler(data)
    held = {int(n) for ex in data["heldout_persona"] for n in re.findall(r"-(\d+)\b", ex.agent)}
    assert held and not held & set(shuffler._numbers.tolist())
    with pytest.raises(ValueError, match="no number left"):
        NameShuffler(village_first_names(), exclude_numbers=range(13, 2000))


def test_renamed_batch_keeps_the_shared_prefix_and_trains(data, tok_dir, tmp_path):  # noqa: F811
    tok, eos, pad = runtime_tokenizer(tok_dir)
    enc = encode_split(tok, data["train"], eos)
    idx = list(range(8))
    rng = np.random.default_rng(0)
    batch = augmented_batch(enc, idx, tok, eos, rng, shuffler=make_shuffler(data), rename=1.0)
    assert batch.prefix == enc.prefix and len(batch.suffix) == 8
    changed = sum(a != enc.suffix[i] for a, i in zip(batch.suffix, idx))
    assert changed >= 4  # most examples name somebody
    same = augmented_batch(enc, idx, tok, eos, rng, shuffler=make_shuffler(data), rename=0.0)
    assert same.suffix == [enc.suffix[i] for i in idx]
    b = make_batch(batch, range(8), pad)
    assert b["ids"].shape[0] == 8 and len(b["labels"]) == int(
        sum(len(s) - n for s, n in zip(batch.suffix, batch.n_prompt))
    )
    cfg = TrainConfig(preset="tiny", steps=3, batch_size=4, rename=0.5, reorder=0.5, lr=1e-2, warmup=1)
    metrics = train(cfg, data, tmp_path / "run", tokenizer=tok_dir, evaluate_at_end=False, progress=False)
    assert metrics["steps_done"] == 3 and metrics["config"]["rename"] == 0.5
    assert metrics["config"]["reorder"] == 0.5


def test_reorder_relabels_with_the_expert(data):  # noqa: F811
    """Shuffling who is within reach gives a new decision the expert labels: the partner moves with
    the order (talk to the first agent, trade with the first merchant), nothing else in the prompt
    changes, and the persona read back from the prompt is the one the expert decided for."""
    from agents.actions import action_json
    from agents.prompt import observation_of
    from worlds.village.expert import expert_action
    from worlds.village.observation import VillageObs

    rng = np.random.default_rng(0)
    varied = changed = 0
    for ex in data["train"]:
        persona = persona_of(ex.prompt)
        assert persona is not None and persona.name == ex.agent and persona.role == ex.role
        new = reorder(ex, rng)
        assert new.prompt[:-1] == ex.prompt[:-1]
        if new is ex:
            continue
        varied += 1
        before = VillageObs.from_text(observation_of(ex.prompt))
        after = VillageObs.from_text(observation_of(new.prompt))
        assert sorted(after.near, key=str) == sorted(before.near, key=str)
        assert sorted(after.offers, key=str) == sorted(before.offers, key=str)
        assert new.target == action_json(expert_action(persona, after))
        changed += new.target != ex.target
    assert varied > 0 and changed > 0
    lonely = [ex for ex in data["train"] if json.loads(ex.target)["action"] == "talk"]
    for ex in lonely:  # the expert talks to whoever is listed first
        new = reorder(ex, rng)
        first = VillageObs.from_text(observation_of(new.prompt)).near[0].name
        assert json.loads(new.target)["to"] == first
