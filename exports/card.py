"""Model cards and the runtime measurements that go in them.

A model card (``model_card.json`` in the model directory) says what the model is for, its size,
how well it does on held-out data and how fast it decides in the runtime, and how it was built, so
a rebuild can be compared with what shipped. The manifest is rewritten after the card is written,
so the card is covered by the checksums like every other file.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from exports.quantize import CARD, runtime_batcher
from runtime.artifacts import MANIFEST, write_manifest

CARD_FORMAT = "murmurate.model-card/1"
DEFAULT_MAX_TOKENS = 128  # as agents.mind: the longest action the model brain allows


def action_constraint(world: str = "village") -> Any:
    """The constraint the model brain decodes under: the world's action union as a JSON schema."""
    from agents.actions import action_schema
    from runtime.types import Constraint
    from worlds import world_class

    return Constraint.json_schema(action_schema(world_class(world).action_type))


def write_model_card(model_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Write ``model_card.json`` in ``model_dir`` and re-write the manifest to cover it.

    Name, architecture, parameters and active parameters come from the manifest unless given;
    everything else is the caller's (the build passes ``task``, ``heldout``, ``decisions_per_s``,
    ``built``, ``quantized``...). Fields given as None are left out.

    Args:
        model_dir: an exported model directory with a manifest.
        **fields: card fields.

    Returns:
        The card as written.
    """
    model_dir = Path(model_dir)
    manifest = json.loads((model_dir / MANIFEST).read_text())
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "name": manifest.get("name", model_dir.name),
        "architecture": manifest.get("architecture"),
        "parameters": manifest.get("parameters"),
        "active_parameters": manifest.get("active_parameters"),
        "quantized": manifest.get("quantized", False),
    }
    card.update({k: v for k, v in fields.items() if v is not None})
    (model_dir / CARD).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    # The manifest's own identity fields are recomputed by write_manifest; the rest is kept.
    extra = {
        k: v
        for k, v in manifest.items()
        if k not in ("files", "name", "format_version", "architecture", "num_layers", "vocab_size")
    }
    write_manifest(model_dir, card["name"], extra)
    return card


def read_model_card(model_dir: str | Path) -> dict[str, Any] | None:
    """The card of ``model_dir``, or None if it has none."""
    path = Path(model_dir) / CARD
    return json.loads(path.read_text()) if path.is_file() else None


def measure_decisions_per_s(
    model_dir: str | Path,
    prompts: Sequence[Sequence[str]],
    *,
    world: str = "village",
    threads: int = 1,
    repeats: int = 1,
) -> dict[str, Any]:
    """Constrained decisions per second of ``model_dir`` in the runtime, all prompts in one batch.

    This is how the village's model brain uses a model: one batch of greedy requests under the
    action-schema constraint, served with the radix prefix cache. A first, untimed pass warms the
    ONNX Runtime session; the cache is then cleared by building a fresh batcher, so the timed pass
    pays for its own prefill (the shared rules are still computed once, as in a real tick).

    Args:
        model_dir: an exported model directory.
        prompts: prompts as segment tuples.
        world: the world whose action schema constrains the output.
        threads: ONNX Runtime intra-op threads.
        repeats: timed passes (the best is reported, the least disturbed by other work).

    Returns:
        ``decisions_per_s``, ``batch`` (prompts per pass), ``threads`` and ``wall_s`` of the best pass.
    """
    from runtime.types import Request, SamplingParams

    constraint = action_constraint(world)
    sampling = SamplingParams(max_tokens=DEFAULT_MAX_TOKENS, temperature=0.0)
    best = float("inf")
    for k in range(repeats + 1):
        batcher, name = runtime_batcher(model_dir, threads=threads)
        reqs = [
            Request(model=name, prompt=tuple(p), sampling=sampling, constraint=constraint) for p in prompts
        ]
        t0 = time.perf_counter()
        batcher.run(reqs)
        wall = time.perf_counter() - t0
        if k > 0:  # pass 0 is the warm-up
            best = min(best, wall)
    return {
        "decisions_per_s": round(len(prompts) / best, 1) if best > 0 else None,
        "batch": len(prompts),
        "threads": threads,
        "wall_s": round(best, 4),
    }


def runtime_accuracy(
    model_dir: str | Path,
    examples: Sequence[Any],
    *,
    world: str = "village",
    limit: int = 0,
    threads: int = 1,
    batch_size: int = 64,
    choices: bool = True,
    mistakes: int = 10,
) -> dict[str, Any]:
    """Exact-match accuracy of ``model_dir`` against the expert, served as the model brain serves it.

    Each example's prompt is decoded greedily under the action-schema constraint (so the output
    always parses, unless generation hits the token limit) and, with ``choices``, the argument
    choices of its observation, and parsed with ``agents.actions.parse_action``; it is correct when
    it equals the expert's parsed target.

    Args:
        model_dir: an exported model directory.
        examples: ``exports.dataset.ActExample`` items (a held-out split).
        world: the world whose action union parses and constrains.
        limit: evaluate a seeded sample of this many (0: all); the same sample as
            ``exports.evaluate.evaluate`` takes, so the two are comparable.
        threads: ONNX Runtime intra-op threads.
        batch_size: requests per batcher run.
        mistakes: wrong outputs kept (the first this many); ``-1`` keeps every one, each with its
            observation (the prompt's last segment).

    Returns:
        ``n``, ``exact_match``, ``parse_fail``, ``by_action`` (expert action -> [correct, total]),
        ``wall_s`` and ``mistakes``.
    """
    from exports.dataset import ActionScore, seeded_sample
    from worlds import world_class

    examples = seeded_sample(examples, limit)
    every = mistakes < 0
    score = ActionScore(
        world_class(world).action_type,
        max_mistakes=len(examples) if every else mistakes,
        with_observations=every,
    )
    t0 = time.perf_counter()
    served = serve_examples(
        model_dir, examples, world=world, threads=threads, batch_size=batch_size, choices=choices
    )
    for ex, res in served:
        score.add(ex, res.text, served=res.error is None)
    return {**score.summary(), "wall_s": round(time.perf_counter() - t0, 2)}


def _with_choices(constraint: Any, prompt: Sequence[str], world_cls: Any) -> Any:
    """``constraint`` limited to the argument choices of the observation in ``prompt``."""
    from agents.prompt import observation_of

    try:
        choices = world_cls.observation_choices(observation_of(tuple(prompt)))
    except ValueError:  # an observation cut short, or a prompt of another shape: no limits
        return constraint
    return constraint.with_string_choices(choices) if choices else constraint


def serve_examples(
    model_dir: str | Path,
    examples: Sequence[Any],
    *,
    world: str = "village",
    threads: int = 1,
    batch_size: int = 64,
    choices: bool = True,
) -> list[tuple[Any, Any]]:
    """Each example's prompt decoded greedily under the action constraint: ``(example, Result)``.

    With ``choices`` (the default, as the model brain decides) each request also carries the
    argument choices its observation allows (``World.observation_choices``)."""
    from runtime.types import Request, SamplingParams
    from worlds import world_class

    world_cls = world_class(world)
    constraint = action_constraint(world)
    sampling = SamplingParams(max_tokens=DEFAULT_MAX_TOKENS, temperature=0.0)
    batcher, name = runtime_batcher(model_dir, threads=threads)
    out: list[tuple[Any, Any]] = []
    for lo in range(0, len(examples), batch_size):
        chunk = examples[lo : lo + batch_size]
        reqs = [
            Request(
                model=name,
                prompt=tuple(ex.prompt),
                sampling=sampling,
                constraint=_with_choices(constraint, ex.prompt, world_cls) if choices else constraint,
            )
            for ex in chunk
        ]
        out.extend(zip(chunk, batcher.run(reqs)))
    return out


def cascade_accuracy(
    student_dir: str | Path,
    teacher_dir: str | Path,
    examples: Sequence[Any],
    thresholds: Sequence[float],
    *,
    world: str = "village",
    limit: int = 0,
    threads: int = 1,
) -> dict[str, Any]:
    """Accuracy and teacher-call fraction of a student -> teacher cascade at several thresholds.

    Both models answer every example once (greedy, constrained, as served); a cascade at threshold
    ``t`` returns the teacher's answer exactly where the student's confidence
    (:func:`runtime.cascade.confidence`) is below ``t`` or its request failed, which is what
    :class:`runtime.cascade.Cascade` does live, so every threshold is scored from the same two
    passes.

    Returns:
        ``n``, ``student`` and ``teacher`` (exact match alone) and ``rows``: per threshold its
        ``exact_match``, ``teacher_share`` and ``of_teacher`` (accuracy relative to the teacher's).
    """
    from exports.dataset import ActionScore, seeded_sample
    from runtime.cascade import confidence
    from worlds import world_class

    union = world_class(world).action_type
    examples = seeded_sample(examples, limit)

    def graded(model_dir: str | Path) -> list[tuple[bool, float, bool]]:
        score = ActionScore(union, max_mistakes=0)
        return [
            (score.add(ex, res.text, served=res.error is None), confidence(res) if res.ok else 0.0, res.ok)
            for ex, res in serve_examples(model_dir, examples, world=world, threads=threads)
        ]

    student, teacher = graded(student_dir), graded(teacher_dir)
    n = max(len(examples), 1)
    teacher_acc = sum(t[0] for t in teacher) / n
    rows = []
    for th in thresholds:
        escalate = [not s[2] or s[1] < th for s in student]
        correct = sum(t[0] if e else s[0] for s, t, e in zip(student, teacher, escalate))
        acc = correct / n
        rows.append(
            {
                "threshold": th,
                "exact_match": acc,
                "teacher_share": sum(escalate) / n,
                "of_teacher": acc / teacher_acc if teacher_acc else None,
            }
        )
    return {
        "n": len(examples),
        "student": sum(s[0] for s in student) / n,
        "teacher": teacher_acc,
        "rows": rows,
    }


def card_dataset(
    model_dir: str | Path, data_path: str | Path | None = None, train_sample_rate: float | None = None
) -> Any:
    """The act dataset (every split) the model in ``model_dir`` was built from.

    It comes from, in order: ``data_path``; the build directory the model was built in
    (``<model_dir>/../.build/act.jsonl``) if its spec is the card's; a cached rollout of the card's
    dataset spec; a fresh rollout of that spec (cached for next time). The expert rollout is
    deterministic in its spec, so all of these are the same examples, as long as the rules and the
    observation text are the ones the world writes now (a file of another observation format is not
    used, and one given as ``data_path`` is refused). A model without a card gets the default
    spec's dataset. ``train_sample_rate`` sets the spec's (more training decisions from the same
    worlds; the held-out splits are the same).
    """
    from exports.dataset import DatasetSpec, build_act_dataset, load_dataset, save_dataset
    from worlds.village.observation import OBSERVATION_FORMAT

    if data_path is not None:
        if train_sample_rate is not None:
            raise ValueError(
                "a dataset file has its own sample rate: give a data path or a train_sample_rate"
            )
        data = load_dataset(data_path)
        if data.observation != OBSERVATION_FORMAT:
            raise ValueError(
                f"{data_path} holds observations of format {data.observation}, the village now writes "
                f"format {OBSERVATION_FORMAT}: roll the dataset out again (leave out the data path)"
            )
        return data
    card = read_model_card(model_dir) or {}
    spec_fields = (card.get("built") or {}).get("dataset_spec")
    spec = DatasetSpec(**spec_fields) if spec_fields else DatasetSpec()
    if train_sample_rate is not None:
        spec = replace(spec, train_sample_rate=train_sample_rate)
    from runtime.registry import search_path
    from worlds import make_world

    rules = make_world(spec.world).rules_text()  # every prompt opens with it: new rules, new data
    local = Path(model_dir).resolve().parent / ".build" / "act.jsonl"  # exports.build.WORK
    if local.is_file():
        data = load_dataset(local)
        first = next(iter(data["heldout_seed"] or data["train"]), None)
        same_rules = first is None or first.prompt[0].strip() == rules.strip()
        if data.spec == spec and same_rules and data.observation == OBSERVATION_FORMAT:
            return data
    key = {**asdict(spec), "rules": rules, "observation": OBSERVATION_FORMAT}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cached = search_path()[-1].parent / "datasets" / f"act-{digest}.jsonl"
    if cached.is_file():
        return load_dataset(cached)
    data = build_act_dataset(spec, progress=True)
    cached.parent.mkdir(parents=True, exist_ok=True)
    save_dataset(data, cached)
    return data


def heldout_examples(model_dir: str | Path, split: str, data_path: str | Path | None = None) -> list[Any]:
    """The examples of a held-out ``split`` for the model in ``model_dir`` (:func:`card_dataset`).

    Raises:
        ValueError: for a split that is not held out.
    """
    from exports.train import HELDOUT

    if split not in HELDOUT:
        raise ValueError(f"split must be one of {', '.join(HELDOUT)}, not {split!r}")
    return card_dataset(model_dir, data_path)[split]


def eval_model(
    model_dir: str | Path,
    split: str = "heldout_persona",
    *,
    limit: int = 0,
    data_path: str | Path | None = None,
    threads: int = 1,
    choices: bool = True,
    mistakes: int = 10,
) -> dict[str, Any]:
    """Exact-match accuracy of ``model_dir`` on a held-out split, served by the runtime.

    See :func:`exports.card.runtime_accuracy` (constrained greedy decoding, parsed and compared
    with the expert's action) and :func:`heldout_examples` (where the examples come from).
    """
    examples = heldout_examples(model_dir, split, data_path)
    result = runtime_accuracy(
        model_dir, examples, limit=limit, threads=threads, choices=choices, mistakes=mistakes
    )
    return {"split": split, **result}


def write_build_cards(
    plan: Any,
    data: Any,
    models: dict[str, Path],
    runs: dict[str, Path],
    int8: dict[str, Any],
    dagger: dict[str, Any] | None = None,
    states: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure each model a build exported (``exports.build``) in the runtime and write its card.

    ``dagger`` is the DAgger stage's record (the student's rounds), ``states`` the student-states
    stage's (the examples on which the teacher and the dense baseline were fine-tuned)."""
    from exports.build import DENSE, INT8, STUDENT, TEACHER

    configs = {
        TEACHER: ("teacher", plan.teacher),
        DENSE: ("dense", plan.dense),
        STUDENT: ("student", plan.student),
    }
    configs[INT8] = ("student", plan.student)
    speed_prompts = [ex.prompt for ex in data["heldout_seed"][: plan.speed_batch]]
    cards: dict[str, Any] = {}
    teacher_rate = None
    for name, model_dir in models.items():  # the teacher first: the others' speed-up is against it
        run, cfg = configs[name]
        metrics = json.loads((runs[run] / "metrics.json").read_text())
        heldout: dict[str, Any] = {}
        for split in ("heldout_seed", "heldout_persona"):
            served = runtime_accuracy(model_dir, data[split], limit=plan.card_examples)
            free = runtime_accuracy(model_dir, data[split], limit=plan.card_examples, choices=False)
            torch_m = metrics.get(split, {})
            heldout[split] = {
                # The torch numbers are the fp32 model's, so they do not apply to the int8 copy.
                "loss": None if name == INT8 else torch_m.get("loss"),
                "exact_match_unconstrained": None if name == INT8 else torch_m.get("exact_match"),
                "n_unconstrained": None if name == INT8 else torch_m.get("n"),
                "exact_match": served["exact_match"],  # as the model brain decides: with choices
                "exact_match_free_choices": free["exact_match"],
                "n": served["n"],
            }
        built = {
            "scale": plan.scale,
            "preset": cfg.preset,
            "seed": cfg.seed,
            "steps": cfg.steps,
            "batch_size": cfg.batch_size,
            "data": data.counts(),
            "dataset_spec": asdict(data.spec),
            "vocab_size": plan.vocab_size,
            "distilled_from": TEACHER if run == "student" else None,
            "dagger": _rounds(plan.dagger, dagger) if run == "student" and plan.dagger.rounds else None,
            "refine": (
                _rounds(plan.refining, (dagger or {}).get("refine"))
                if run == "student" and plan.refining
                else None
            ),
            # DAgger rounds on prompts without their first segments (the rules): what the runtime
            # then drops for this model (``prompt_skip_segments`` in its config)
            "lean": (
                {**_rounds(plan.leaning, (dagger or {}).get("lean")), "skip_segments": plan.lean_skip}
                if run == "student" and plan.leaning
                else None
            ),
            # The teacher's and the baseline's fine-tuning on the final student's states.
            "states": (
                {**asdict(plan.states), "examples": (states or {}).get("examples")}
                if run in ("teacher", "dense") and plan.states
                else None
            ),
            # training and, after it, the fine-tuning on the student's states
            "train_wall_s": sum(
                json.loads((d / "metrics.json").read_text()).get("wall_s_total") or 0.0
                for d in (runs.get(f"{run}-trained"), runs[run])
                if d is not None
            ),
        }
        runtime = measure_decisions_per_s(model_dir, speed_prompts)
        if name == TEACHER:
            teacher_rate = runtime["decisions_per_s"]
        elif teacher_rate:
            # The bar: a student must decide at least 2x faster than the teacher.
            runtime["speedup_vs_teacher"] = round(runtime["decisions_per_s"] / teacher_rate, 2)
        card = write_model_card(
            model_dir,
            task="act",
            world=data.spec.world,
            heldout=heldout,
            runtime=runtime,
            built=built,
            int8_check=int8 if name in (STUDENT, INT8) else None,
        )
        cards[name] = card
    return {"cards": cards}


def _rounds(cfg: Any, info: dict[str, Any] | None) -> dict[str, Any]:
    """A DAgger phase for a card: its configuration, each round's record, the examples added and,
    with a polish, its held-out record."""
    info = info or {}
    out = {**asdict(cfg), "rounds_run": info.get("rounds"), "examples": info.get("examples")}
    if cfg.polish_steps:
        out["polish"] = info.get("polish")
    return out
