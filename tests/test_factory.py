"""The model factory in miniature: expert data -> tokenizer -> teacher -> distilled student -> ONNX ->
a constrained request served by the runtime; plus the dataset's split properties, the shared-prefix
forward against a plain forward, distillation's loss, and resume-from-checkpoint equivalence."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
F = torch.nn.functional

from agents.prompt import ACTION_CUE  # noqa: E402
from exports.dataset import (  # noqa: E402
    SPLITS,
    DatasetSpec,
    build_act_dataset,
    encode_split,
    load_dataset,
    save_dataset,
)
from exports.distill import distill_loss  # noqa: E402
from exports.evaluate import (  # noqa: E402
    constrained_loss,
    evaluate,
    greedy_decode,
    loss_by_field,
    name_tokens,
)
from exports.presets import PRESETS, ModelArgs  # noqa: E402
from exports.tokenizer import runtime_tokenizer  # noqa: E402
from exports.train import (  # noqa: E402
    TrainConfig,
    build_model,
    make_batch,
    resolve_device,
    target_logits,
    train,
)

SPEC = DatasetSpec(
    train_worlds=3,
    heldout_seed_worlds=1,
    heldout_persona_worlds=2,
    generated_per_world=4,
    ticks=40,
    sample_rate=0.25,
    seed=7,
)


@pytest.fixture(scope="module")
def data():
    return build_act_dataset(SPEC, progress=False)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, data):
    from exports.dataset import train_act_tokenizer
    from exports.tokenizer import save_tokenizer

    out = tmp_path_factory.mktemp("tok")
    save_tokenizer(train_act_tokenizer(data["train"], vocab_size=512), out)
    return out


def test_dataset_is_deterministic_and_round_trips(data, tmp_path):
    again = build_act_dataset(SPEC, progress=False)
    assert again.splits == data.splits
    other = build_act_dataset(replace(SPEC, seed=8), progress=False)
    assert other["train"] != data["train"]
    path = save_dataset(data, tmp_path / "act.jsonl")
    loaded = load_dataset(path)
    assert loaded.spec == SPEC and loaded.splits == data.splits


def test_load_rejects_foreign_and_truncated_files(data, tmp_path):
    path = save_dataset(data, tmp_path / "act.jsonl")
    lines = path.read_text().splitlines()
    (tmp_path / "cut.jsonl").write_text("\n".join(lines[:-3]) + "\n")
    with pytest.raises(ValueError, match="truncated"):
        load_dataset(tmp_path / "cut.jsonl")
    (tmp_path / "other.jsonl").write_text(json.dumps({"format": "something-else"}) + "\n")
    with pytest.raises(ValueError, match="not a"):
        load_dataset(tmp_path / "other.jsonl")


def test_a_dataset_of_an_older_observation_text_is_not_used(data, tmp_path):
    from exports.card import card_dataset
    from worlds.village.observation import OBSERVATION_FORMAT

    assert load_dataset(save_dataset(data, tmp_path / "act.jsonl")).observation == OBSERVATION_FORMAT
    old = replace(data, observation=OBSERVATION_FORMAT - 1)
    path = save_dataset(old, tmp_path / "old.jsonl")
    assert load_dataset(path).observation == OBSERVATION_FORMAT - 1
    with pytest.raises(ValueError, match="roll the dataset out again"):
        card_dataset(tmp_path / "no-model", data_path=path)
    header = json.loads(path.read_text().splitlines()[0])
    del header["observation"]  # files from before the format was recorded are format 1
    (tmp_path / "older.jsonl").write_text(
        "\n".join([json.dumps(header), *path.read_text().splitlines()[1:]]) + "\n"
    )
    assert load_dataset(tmp_path / "older.jsonl").observation == 1


def test_heldout_splits_are_disjoint_from_training(data):
    assert all(data[s] for s in SPLITS)
    train_names = data.personas("train")
    # Held-out personas: names and trait combinations never seen in training.
    assert not data.personas("heldout_persona") & train_names
    traits = {}
    for ex in data["train"] + data["heldout_persona"]:
        line = next(ln for ln in ex.prompt[2].splitlines() if ln.startswith("Traits:"))
        traits.setdefault(ex.split, set()).add(line)
    assert not traits["train"] & traits["heldout_persona"]
    # Held-out seeds: known personas in worlds on seeds no training world used.
    assert data.personas("heldout_seed") <= train_names
    for split in ("heldout_seed", "heldout_persona"):
        assert not data.world_seeds(split) & data.world_seeds("train")
    assert not data.world_seeds("heldout_seed") & data.world_seeds("heldout_persona")


def test_fresh_names_rename_the_default_villagers_of_some_training_worlds(data):
    from worlds.village.cast import default_cast

    fresh = build_act_dataset(replace(SPEC, fresh_names=1.0), progress=False)
    defaults = {p.name for p in default_cast()}
    train_names = fresh.personas("train")
    assert not train_names & defaults  # every training world renamed them
    # ... under new names, characters otherwise the same: each default backstory is still there.
    backstories = {ex.prompt[2].split("\n", 1)[1] for ex in fresh["train"]}
    for p in default_cast():
        assert any(p.backstory in b for b in backstories), p.name
    # Held-out personas stay unseen; training holds the same people as without fresh names.
    assert not fresh.personas("heldout_persona") & train_names

    def traits(d):
        return {next(ln for ln in ex.prompt[2].splitlines() if ln.startswith("Traits:")) for ex in d["train"]}

    assert traits(fresh) == traits(data)
    with pytest.raises(ValueError, match="fresh_names"):
        build_act_dataset(replace(SPEC, fresh_names=1.5), progress=False)


def test_a_training_sample_rate_adds_training_decisions_and_keeps_the_heldout_splits(data, tmp_path):
    from exports.card import card_dataset

    more = build_act_dataset(replace(SPEC, train_sample_rate=1.0), progress=False)
    assert more["heldout_seed"] == data["heldout_seed"]
    assert more["heldout_persona"] == data["heldout_persona"]
    assert len(more["train"]) > 3 * len(data["train"])
    kept = {(ex.world_seed, ex.agent, ex.tick) for ex in more["train"]}
    assert {(ex.world_seed, ex.agent, ex.tick) for ex in data["train"]} <= kept  # the same worlds
    with pytest.raises(ValueError, match="give a data path or a train_sample_rate"):
        card_dataset(tmp_path, save_dataset(data, tmp_path / "act.jsonl"), train_sample_rate=1.0)


def test_examples_are_what_the_model_brain_sees_and_the_decoder_emits(data):
    from agents.actions import action_json, parse_action
    from worlds.village import VillageAction

    rules = data["train"][0].prompt[0]
    for ex in data["train"][:200] + data["heldout_persona"][:50]:
        assert len(ex.prompt) == 5 and ex.prompt[0] == rules
        assert ex.prompt[-1].endswith("\n" + ACTION_CUE)
        assert ex.prompt[2].rstrip("\n").splitlines()[-1].startswith("Ways: ")  # the village's persona text
        assert action_json(parse_action(VillageAction, ex.target)) == ex.target
    kinds = {parse_action(VillageAction, ex.target).action for ex in data["train"]}
    assert {"go_to", "gather", "eat", "sleep", "trade"} <= kinds


def test_encoding_matches_the_runtime_tokenizer(data, tok_dir):
    tok, eos, _ = runtime_tokenizer(tok_dir)
    enc = encode_split(tok, data["heldout_seed"][:50], eos)
    assert len(enc.prefix) > 100  # the rules are shared and computed once
    for ex, suffix, n in zip(enc.examples, enc.suffix, enc.n_prompt):
        assert enc.prefix + suffix[:n] == tok.encode_prompt(ex.prompt)
        assert suffix[-1] == eos and tok.decode(suffix[n:]) == ex.target


@pytest.mark.parametrize("preset", ["tiny", "tiny-moe"])
def test_shared_prefix_forward_and_decode_match_plain_transformers(data, tok_dir, preset):
    torch.set_num_threads(1)
    tok, eos, pad = runtime_tokenizer(tok_dir)
    model = build_model(ModelArgs.from_name(preset), tok_dir, seed=0).eval()
    enc = encode_split(tok, data["train"][:3], eos)
    batch = make_batch(enc, [0, 1, 2], pad)
    with torch.no_grad():
        logits, aux = target_logits(model, enc.prefix, batch)
        for k, (r, c) in enumerate(zip(batch["rows"].tolist(), batch["cols"].tolist())):
            full = model(input_ids=torch.tensor([enc.prefix + enc.suffix[r]])).logits[0]
            torch.testing.assert_close(logits[k], full[len(enc.prefix) + c], atol=1e-4, rtol=1e-4)
    assert (aux is not None) == (preset == "tiny-moe")
    # Batched greedy decoding (left-padded suffixes, explicit positions) equals generate() per prompt.
    prompts = [s[:n] for s, n in zip(enc.suffix, enc.n_prompt)]
    ours = greedy_decode(model, enc.prefix, prompts, eos, pad, max_new=6)
    for p, got in zip(prompts, ours):
        ids = torch.tensor([enc.prefix + p])
        ref = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=pad, eos_token_id=eos)
        assert got == ref[0, ids.shape[1] :].tolist()


def test_heldout_loss_splits_into_partner_names_and_the_rest(data, tok_dir):
    torch.set_num_threads(1)
    tok, eos, _ = runtime_tokenizer(tok_dir)
    has_name = lambda ex: '"to": "' in ex.target or '"offer_from": "' in ex.target  # noqa: E731
    named = [ex for ex in data["heldout_persona"] if has_name(ex)][:4]
    plain = [ex for ex in data["heldout_persona"] if not has_name(ex)][:4]
    assert len(named) == len(plain) == 4
    enc = encode_split(tok, named + plain, eos)
    for ex, suffix, n in zip(enc.examples, enc.suffix, enc.n_prompt):
        target = suffix[n:]
        flags = name_tokens(tok, target)
        spelled = tok.decode([t for t, f in zip(target, flags) if f])
        partner = json.loads(ex.target).get("to") or json.loads(ex.target).get("offer_from")
        assert (partner in spelled) if has_name(ex) else not any(flags)
    model = build_model(ModelArgs.from_name("tiny"), tok_dir, seed=0)
    split = loss_by_field(model, tok, named + plain, batch_size=3)
    assert (
        split["names"]["tokens"] > 0
        and split["all"]["tokens"] == split["names"]["tokens"] + split["rest"]["tokens"]
    )
    assert split["all"]["loss"] == pytest.approx(evaluate(model, tok, named + plain)["loss"], rel=1e-5)
    # the digits of numbered names (``Lenz-484``) are a part of the names, counted once in the total
    numbered = sum(bool(re.search(r'"(?:to|offer_from)": "[^"]*-\d+"', ex.target)) for ex in named)
    assert (split["name_numbers"]["tokens"] > 0) == (numbered > 0)
    assert split["name_numbers"]["tokens"] < split["names"]["tokens"]
    # As the runtime decodes: every target is one the constraints accept; tokens they force cost
    # nothing, and renormalising over the allowed tokens only raises a target token's probability,
    # so the total can only fall.
    c = constrained_loss(model, tok, named + plain, batch_size=3)
    assert c["rejected"] == 0 and 0 < c["all"]["tokens"] < split["all"]["tokens"]
    assert c["all"]["tokens"] == c["names"]["tokens"] + c["rest"]["tokens"] and c["names"]["tokens"] > 0
    total = lambda r: r["all"]["loss"] * r["all"]["tokens"]  # noqa: E731
    assert 0 < total(c) < total(split)


@pytest.mark.parametrize("preset", ["tiny", "tiny-moe"])
@pytest.mark.parametrize("shared_prefix", [True, False])
def test_last_layer_only_at_targets_matches_the_full_pass_and_its_gradients(
    data, tok_dir, preset, shared_prefix
):
    from transformers import DynamicCache

    torch.set_num_threads(1)
    tok, eos, pad = runtime_tokenizer(tok_dir)
    # Two layers, so the shortened transformers pass runs one (the tiny presets have one).
    model = build_model(replace(ModelArgs.from_name(preset), num_hidden_layers=2), tok_dir, seed=0)
    enc = encode_split(tok, data["train"][:4], eos)
    if not shared_prefix:  # the whole prompt in every row
        enc.suffix = [enc.prefix + s for s in enc.suffix]
        enc.n_prompt = [len(enc.prefix) + n for n in enc.n_prompt]
        enc.prefix = []
    batch = make_batch(enc, [0, 1, 2, 3], pad)

    def full():  # every layer at every position, then pick the scored ones
        B, T = batch["ids"].shape
        cache = DynamicCache()
        if enc.prefix:
            model.model(input_ids=torch.tensor([enc.prefix]), past_key_values=cache, use_cache=True)
            cache.batch_repeat_interleave(B)
        pos = torch.arange(len(enc.prefix), len(enc.prefix) + T).unsqueeze(0).expand(B, -1)
        out = model.model(input_ids=batch["ids"], past_key_values=cache, position_ids=pos, use_cache=True)
        return model.lm_head(out.last_hidden_state[batch["rows"], batch["cols"]])

    def grads(fn):
        model.zero_grad()
        F.cross_entropy(fn(), batch["labels"]).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref, ours = grads(full), grads(lambda: target_logits(model, enc.prefix, batch)[0])
    torch.testing.assert_close(target_logits(model, enc.prefix, batch)[0], full(), atol=1e-5, rtol=1e-5)
    assert ref.keys() == ours.keys()
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], atol=1e-5, rtol=1e-4, msg=name)


def test_balance_loss_is_transformers_load_balancing_loss():
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    from exports.target_forward import balance_loss

    torch.manual_seed(0)
    B, T, E, layers = 3, 5, 8, 4
    logits = [torch.randn(B * T, E) for _ in range(layers)]
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    real = mask.reshape(-1).bool()
    ours = balance_loss([r[real] for r in logits], E, 2)
    torch.testing.assert_close(ours, load_balancing_loss_func(tuple(logits), E, 2, mask))


def test_distill_loss():
    torch.manual_seed(0)
    t = torch.randn(5, 11)
    labels = t.argmax(-1)
    assert float(distill_loss(t.clone(), t, labels, temperature=2.0, alpha=1.0)) == pytest.approx(
        0.0, abs=1e-6
    )
    s = torch.randn(5, 11, requires_grad=True)
    loss = distill_loss(s, t, labels, temperature=2.0, alpha=1.0)
    loss.backward()
    with torch.no_grad():  # a small step against the gradient brings the student closer
        closer = distill_loss(s - 0.1 * s.grad, t, labels, temperature=2.0, alpha=1.0)
    assert closer.item() < loss.item()
    with pytest.raises(ValueError):
        distill_loss(s, t, labels, temperature=0.0)


def test_resume_from_checkpoint_gives_the_same_weights(data, tok_dir, tmp_path):
    cfg = TrainConfig(preset="tiny", steps=6, batch_size=4, save_every=2, log_every=1, lr=1e-2, warmup=2)
    kw = dict(tokenizer=tok_dir, evaluate_at_end=False, progress=False)
    train(cfg, data, tmp_path / "whole", **kw)
    train(cfg, data, tmp_path / "split", stop_after=3, **kw)  # "interrupted" after step 3
    state = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 3
    with (tmp_path / "split" / "log.jsonl").open("a") as f:  # killed after logging step 4, unsaved
        f.write(json.dumps({"step": 4, "ce": 0.0}) + "\n")
    train(cfg, data, tmp_path / "split", resume=True, **kw)
    from safetensors.torch import load_file

    whole = load_file(tmp_path / "whole" / "hf" / "model.safetensors")
    split = load_file(tmp_path / "split" / "hf" / "model.safetensors")
    assert whole.keys() == split.keys()
    for key in whole:
        assert torch.equal(whole[key], split[key]), key
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # each step logged once, the unsaved step 4 redone
    # A checkpoint of a run on other data (here the training examples in another order, under
    # another spec or of an older observation text) is another run: training starts afresh and ends
    # where the uninterrupted run did.
    shuffled = {**data.splits, "train": data["train"][::-1]}
    for i, other in enumerate(
        [
            replace(data, spec=replace(data.spec, seed=99), splits=shuffled),
            replace(data, observation=1, splits=shuffled),
        ]
    ):
        train(cfg, other, tmp_path / f"other{i}", stop_after=3, **kw)
        train(cfg, data, tmp_path / f"other{i}", resume=True, **kw)
        again = load_file(tmp_path / f"other{i}" / "hf" / "model.safetensors")
        assert all(torch.equal(whole[key], again[key]) for key in whole)


def test_training_device_is_resolved_and_stays_out_of_the_recipe(data, tok_dir, tmp_path, monkeypatch):
    assert resolve_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="sees no CUDA device"):
        resolve_device("cuda")
    # A checkpoint made on one device resumes on another: the device is not part of the run.
    cfg = TrainConfig(preset="tiny", steps=4, batch_size=4, save_every=2, log_every=1, lr=1e-2, warmup=2)
    kw = dict(tokenizer=tok_dir, evaluate_at_end=False, progress=False)
    train(cfg, data, tmp_path / "run", stop_after=2, **kw)
    train(replace(cfg, device="auto"), data, tmp_path / "run", resume=True, **kw)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 4
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines] == [1, 2, 3, 4]


def test_init_continues_from_saved_weights(data, tok_dir, tmp_path):
    from safetensors.torch import load_file

    kw = dict(tokenizer=tok_dir, evaluate_at_end=False, progress=False)
    train(TrainConfig(preset="tiny", steps=2, batch_size=2), data, tmp_path / "a", **kw)
    first = load_file(tmp_path / "a" / "hf" / "model.safetensors")
    # With a zero learning rate, a continued run must save exactly the weights it started from.
    cfg = TrainConfig(preset="tiny", steps=1, batch_size=2, lr=0.0, seed=5, init=str(tmp_path / "a" / "hf"))
    train(cfg, data, tmp_path / "b", **kw)
    again = load_file(tmp_path / "b" / "hf" / "model.safetensors")
    assert all(torch.equal(first[k], again[k]) for k in first)
    with pytest.raises(RuntimeError):  # another preset's shape does not load
        train(replace(cfg, preset="tiny-moe"), data, tmp_path / "c", **kw)


def test_presets_have_the_promised_shapes():
    moe, dense = PRESETS["act-moe"], PRESETS["act-dense"]
    assert moe.is_moe and moe.num_experts == 8 and moe.num_experts_per_tok == 2
    assert dense.intermediate_size == moe.num_experts_per_tok * moe.moe_intermediate_size
    config = moe.hf_config(512, 0, 1)
    assert config.output_router_logits and config.router_aux_loss_coef > 0
    with pytest.raises(KeyError, match="act-moe"):
        ModelArgs.from_name("nope")


def test_miniature_pipeline_to_a_served_constrained_decision(data, tmp_path):
    pytest.importorskip("optimum.exporters.onnx")
    from _helpers import make_batcher

    from agents.actions import action_schema, parse_action
    from exports.onnx_export import export_model
    from runtime.types import Constraint, Request, SamplingParams
    from worlds.village import VillageAction

    # Teacher: trains its own tokenizer on the data; held-out metrics come out at the end.
    teacher_cfg = TrainConfig(preset="tiny-moe", steps=4, batch_size=4, eval_examples=8, vocab_size=512)
    metrics = train(teacher_cfg, data, tmp_path / "teacher", progress=False)
    for split in ("heldout_seed", "heldout_persona"):
        assert metrics[split]["n"] == 8 and metrics[split]["loss"] > 0
        assert sum(t for _, t in metrics[split]["by_action"].values()) == 8
    teacher_hf = tmp_path / "teacher" / "hf"
    # Student: distilled from the teacher, which it must share a tokenizer with.
    student_cfg = TrainConfig(preset="tiny", steps=3, batch_size=4, eval_examples=4, teacher=str(teacher_hf))
    train(student_cfg, data, tmp_path / "student", progress=False)
    student_hf = tmp_path / "student" / "hf"
    assert (student_hf / "tokenizer.json").read_text() == (teacher_hf / "tokenizer.json").read_text()

    onnx_dir = export_model(student_hf, tmp_path / "onnx", "village-act-test", extra={"preset": "tiny"})
    ex = data["heldout_persona"][0]
    batcher = make_batcher(onnx_dir)
    tok, eos, pad = runtime_tokenizer(student_hf)
    assert batcher.tok.encode_prompt(ex.prompt) == tok.encode_prompt(ex.prompt)
    constraint = Constraint.json_schema(action_schema(VillageAction))
    sampling = SamplingParams(max_tokens=96, temperature=0.0)
    result = batcher.run(
        [Request(model="village-act-test", prompt=ex.prompt, sampling=sampling, constraint=constraint)]
    )[0]
    assert result.error is None
    parse_action(VillageAction, result.text)  # a legal action, whatever the barely trained model thinks
    # Unconstrained, the exported model's greedy tokens are the torch model's.
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(student_hf).eval()
    enc = encode_split(tok, [ex], eos, prefix=[])
    ref = greedy_decode(student, [], [enc.suffix[0][: enc.n_prompt[0]]], eos, pad, max_new=8)[0]
    plain = batcher.run(
        [Request(model="village-act-test", prompt=ex.prompt, sampling=SamplingParams(max_tokens=8))]
    )
    assert plain[0].token_ids == [t for t in ref if t != eos]


def test_training_refuses_examples_longer_than_the_context(data, tok_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS, "short", replace(PRESETS["tiny"], max_position_embeddings=256))
    cfg = TrainConfig(preset="short", steps=1, batch_size=2)
    with pytest.raises(ValueError, match="holds 256"):
        train(cfg, data, tmp_path / "short", tokenizer=tok_dir, evaluate_at_end=False, progress=False)


def test_balanced_sampling_draws_rare_action_kinds_more_often():
    from exports.train import balanced_indices, batch_indices, example_kind, kind_weights

    targets = ['{"action": "go_to", "place": "market"}'] * 90 + [
        '{"action": "sell", "item": "fish", "qty": 4}'
    ] * 10
    assert example_kind(targets[0]) == "go_to" and example_kind("not json") == "not json"
    p = kind_weights(targets, 0.5)
    assert abs(p.sum() - 1) < 1e-12
    # by the square root of their counts: go_to 90 -> 9.49, sell 10 -> 3.16, so sell gets a quarter
    assert abs(p[90:].sum() - 10**0.5 / (90**0.5 + 10**0.5)) < 1e-9
    assert abs(kind_weights(targets, 1.0)[90:].sum() - 0.5) < 1e-9  # balance 1: kinds alike
    draws = [i for step in range(200) for i in balanced_indices(p, 32, step, seed=0)]
    assert 0.2 < sum(i >= 90 for i in draws) / len(draws) < 0.3
    # a pure function of the step (resumable), different from step to step
    assert balanced_indices(p, 32, 5, 0) == balanced_indices(p, 32, 5, 0) != balanced_indices(p, 32, 6, 0)
    assert sorted(batch_indices(100, 100, 0, 0)) == list(range(100))  # uniform: a permutation per epoch
