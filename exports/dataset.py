"""``act`` datasets: the village's scripted expert rolled out into (prompt segments, action JSON) pairs.

Each example is what a model brain would send for one agent on one tick (the five prompt segments,
built by :class:`agents.mind.ExpertBrain` exactly as the model brain builds them) and what the expert
decided, as the exact JSON text the constrained decoder produces. Three splits:

- ``train``: worlds on training seeds, cast of the default villagers plus generated ones (with
  ``fresh_names``, a share of these worlds gives the default villagers generated names: they keep
  their roles, traits, goals and backstories, so the model meets the familiar characters under names
  it must read from the prompt, as in the held-out-persona split);
- ``heldout_seed``: worlds on seeds never used for training, cast drawn from the training personas
  (new situations, known personas);
- ``heldout_persona``: worlds on unseen seeds whose every agent is a generated persona that appears
  in no training world (unseen names and trait combinations).

Generated personas are numbered (``Ansel-137``); the number blocks of training and held-out-persona
worlds are interleaved so both splits see names of the same shape. Everything is drawn from one
seeded generator, so a spec always gives the same dataset.

Files are JSONL: a header line (format, spec, counts, the observation text's format
(:data:`worlds.village.observation.OBSERVATION_FORMAT`), and a table of the shared segments — rules,
role, persona — which would otherwise repeat in every line) followed by one example per line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from worlds.village.observation import OBSERVATION_FORMAT

FORMAT = "murmurate.act-dataset/1"
SPLITS = ("train", "heldout_seed", "heldout_persona")
N_SHARED = 3  # rules, role, persona: the segments stored once in the header table


@dataclass(frozen=True)
class ActExample:
    """One decision: the prompt segments an agent's model would see and the expert's answer.

    Attributes:
        prompt: the five prompt segments (rules, role, persona, memory, observation).
        target: the expert's action as the exact JSON text a constrained model emits.
        split: one of :data:`SPLITS`.
        world_seed: the seed the world was reset with.
        agent: the agent's name.
        tick: the tick of the decision.
        role: the agent's role.
    """

    prompt: tuple[str, ...]
    target: str
    split: str
    world_seed: int
    agent: str
    tick: int
    role: str


@dataclass(frozen=True)
class DatasetSpec:
    """How to roll out the expert (all counts are per split unless stated).

    Attributes:
        world: the world name (``worlds.make_world``); only ``village`` generates personas.
        train_worlds: worlds rolled out for ``train``.
        heldout_seed_worlds: worlds for ``heldout_seed``.
        heldout_persona_worlds: worlds for ``heldout_persona``.
        generated_per_world: generated personas in each world (training worlds add the default cast).
        ticks: ticks simulated per world (a day is 48; nights teach the night rules).
        sample_rate: fraction of decisions kept, so consecutive near-identical ticks do not
            dominate; the rest are simulated but not recorded.
        seed: the one seed everything is drawn from.
        fresh_names: share of training worlds whose default villagers carry generated names (their
            world's own number block); with 0 (earlier releases) the default cast keeps its names.
        train_sample_rate: ``sample_rate`` of the training worlds only (None: the same): more
            training decisions while the held-out splits stay example for example the same.
    """

    world: str = "village"
    train_worlds: int = 40
    heldout_seed_worlds: int = 4
    heldout_persona_worlds: int = 4
    generated_per_world: int = 12
    ticks: int = 144
    sample_rate: float = 0.2
    seed: int = 0
    fresh_names: float = 0.0
    train_sample_rate: float | None = None


@dataclass
class ActDataset:
    """A rolled-out dataset: the spec it came from and its examples by split."""

    spec: DatasetSpec
    splits: dict[str, list[ActExample]] = field(default_factory=dict)
    observation: int = OBSERVATION_FORMAT
    """The observation text's format its prompts carry (files from before it was recorded: 1)."""

    def __getitem__(self, split: str) -> list[ActExample]:
        return self.splits[split]

    def counts(self) -> dict[str, int]:
        return {s: len(self.splits.get(s, [])) for s in SPLITS}

    def personas(self, split: str) -> set[str]:
        """Names of the agents with at least one example in ``split``."""
        return {ex.agent for ex in self.splits.get(split, [])}

    def world_seeds(self, split: str) -> set[int]:
        return {ex.world_seed for ex in self.splits.get(split, [])}


@dataclass(frozen=True)
class _WorldPlan:
    split: str
    seed: int
    cast: list[Any]  # personas


def name_block(spec: DatasetSpec) -> int:
    """How many name numbers each world's block holds: its generated villagers', and with fresh
    names the renamed default villagers' after them (blocks stay disjoint and interleaved)."""
    from worlds.village.cast import default_cast

    return spec.generated_per_world + (len(default_cast()) if spec.fresh_names > 0 else 0)


def name_numbers_start() -> int:
    """The first name number of the dataset's blocks (the default villagers' numbers come before)."""
    from worlds.village.cast import default_cast

    return len(default_cast()) + 1


def name_numbers_end(spec: DatasetSpec) -> int:
    """The first name number past every block the dataset's worlds use."""
    return name_numbers_start() + (spec.train_worlds + spec.heldout_persona_worlds) * name_block(spec)


def _plan(spec: DatasetSpec) -> list[_WorldPlan]:
    """Decide every world's seed and cast before simulating anything (keeps splits disjoint)."""
    from worlds.village.cast import default_cast, generate_personas, renamed

    if spec.world != "village":
        raise ValueError(f"persona generation is only defined for the village, not {spec.world!r}")
    if not 0.0 <= spec.fresh_names <= 1.0:
        raise ValueError(f"fresh_names is a share of worlds in [0, 1], not {spec.fresh_names}")
    rng = np.random.default_rng(spec.seed)
    n_worlds = spec.train_worlds + spec.heldout_seed_worlds + spec.heldout_persona_worlds
    world_seeds = [int(s) for s in rng.choice(2**31 - 1, size=n_worlds, replace=False)]
    # Persona number blocks: training and held-out-persona worlds each get one block of
    # `generated_per_world` numbers, handed out in shuffled order so both splits span the same range.
    block_of = rng.permutation(spec.train_worlds + spec.heldout_persona_worlds)
    g = spec.generated_per_world
    start0 = name_numbers_start()
    block = name_block(spec)
    fresh_rng = np.random.default_rng([spec.seed, 2])  # its own stream: fresh_names=0 draws nothing new

    def block_start(slot: int) -> int:
        return start0 + int(block_of[slot]) * block

    def generate(slot: int) -> list[Any]:
        return generate_personas(g, int(rng.integers(2**31)), start=block_start(slot))

    plans: list[_WorldPlan] = []
    train_pool: list[Any] = []
    for i in range(spec.train_worlds):
        generated = generate(i)
        defaults = default_cast()
        if fresh_rng.random() < spec.fresh_names:
            defaults = renamed(defaults, int(fresh_rng.integers(2**31)), start=block_start(i) + g)
        train_pool.extend(generated)
        plans.append(_WorldPlan("train", world_seeds[i], defaults + generated))
    seen_traits = {tuple(sorted(p.traits.items())) for p in train_pool}
    for j in range(spec.heldout_persona_worlds):
        cast = generate(spec.train_worlds + j)
        clash = [p.name for p in cast if tuple(sorted(p.traits.items())) in seen_traits]
        if clash:  # two-decimal traits of 6 kinds: a clash is astronomically unlikely, but check
            raise RuntimeError(f"held-out personas {clash} share a trait combination with training")
        seed = world_seeds[spec.train_worlds + spec.heldout_seed_worlds + j]
        plans.append(_WorldPlan("heldout_persona", seed, cast))
    for k in range(spec.heldout_seed_worlds):
        picks = rng.choice(len(train_pool), size=min(g, len(train_pool)), replace=False)
        cast = default_cast() + [train_pool[int(i)] for i in sorted(picks)]
        seed = world_seeds[spec.train_worlds + k]
        plans.append(_WorldPlan("heldout_seed", seed, cast))
    return plans


def _rollout(plan: _WorldPlan, spec: DatasetSpec, rng: np.random.Generator, bar: Any) -> list[ActExample]:
    from agents.mind import ExpertBrain
    from worlds import make_world

    world = make_world(spec.world, personas=plan.cast, max_ticks=spec.ticks)
    obs, _ = world.reset(seed=plan.seed)
    brain = ExpertBrain(world, record_prompts=True)
    out: list[ActExample] = []
    rate = spec.sample_rate
    if plan.split == "train" and spec.train_sample_rate is not None:
        rate = spec.train_sample_rate  # the worlds play out alike whatever is kept
    while world.agents:
        brain.requests(obs)
        actions = brain.actions()
        keep = rng.random(len(actions)) < rate
        for (agent, _), kept in zip(actions.items(), keep):
            decision = brain.last_decision[agent]
            # A fallback means the expert itself failed: that is not behaviour to imitate.
            if kept and decision.source == "expert":
                prompt, role = brain.last_prompt[agent], world.persona(agent).role
                out.append(
                    ActExample(prompt, decision.text, plan.split, plan.seed, agent, decision.tick, role)
                )
        obs, *_ = world.step(actions)
        bar.update(1)
    return out


def build_act_dataset(spec: DatasetSpec | None = None, *, progress: bool = True) -> ActDataset:
    """Roll out the expert as ``spec`` says and collect the examples of every split.

    Args:
        spec: what to roll out (default :class:`DatasetSpec`).
        progress: show a progress bar (ticks simulated).

    Returns:
        The dataset; the same spec always gives the same examples in the same order.
    """
    spec = spec or DatasetSpec()
    plans = _plan(spec)
    data = ActDataset(spec, {s: [] for s in SPLITS})
    sample_rng = np.random.default_rng([spec.seed, 1])
    with tqdm(
        total=len(plans) * spec.ticks, desc="expert rollouts", unit="tick", disable=not progress
    ) as bar:
        for plan in plans:
            data.splits[plan.split].extend(_rollout(plan, spec, sample_rng, bar))
    return data


def save_dataset(data: ActDataset, path: str | Path) -> Path:
    """Write ``data`` as JSONL (header line, then one example per line); atomic.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table: dict[str, int] = {}
    lines = []
    for split in SPLITS:
        for ex in data.splits.get(split, []):
            shared = [table.setdefault(seg, len(table)) for seg in ex.prompt[:N_SHARED]]
            row = {**asdict(ex), "prompt": list(ex.prompt[N_SHARED:]), "shared": shared}
            lines.append(json.dumps(row, ensure_ascii=False))
    header = {
        "format": FORMAT,
        "spec": asdict(data.spec),
        "counts": data.counts(),
        "observation": data.observation,
        "segments": list(table),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(json.dumps(header, ensure_ascii=False) + "\n")
        for line in lines:
            f.write(line + "\n")
    os.replace(tmp, path)
    return path


def load_dataset(path: str | Path) -> ActDataset:
    """Read a dataset written by :func:`save_dataset`.

    Raises:
        ValueError: the file is not an ``act`` dataset of this format, or is truncated.
    """
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        try:
            header = json.loads(f.readline())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: the header line is not JSON ({exc.msg})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} file (header says {header!r:.80})")
        segments = header["segments"]
        data = ActDataset(
            DatasetSpec(**header["spec"]), {s: [] for s in SPLITS}, header.get("observation", 1)
        )
        for row in map(json.loads, f):
            prompt = tuple(segments[i] for i in row.pop("shared")) + tuple(row.pop("prompt"))
            data.splits[row["split"]].append(ActExample(prompt=prompt, **row))
    if data.counts() != header["counts"]:
        raise ValueError(f"{path}: header counts {header['counts']} but read {data.counts()} (truncated?)")
    return data


def tokenizer_corpus(examples: Iterable[ActExample]) -> Iterator[str]:
    """Texts to train a BPE on: each distinct segment once (the rules would otherwise spend the
    merges on themselves), every target (their frequencies are what the model emits)."""
    seen: set[str] = set()
    for ex in examples:
        for seg in ex.prompt:
            if seg not in seen:
                seen.add(seg)
                yield seg
        yield ex.target


def train_act_tokenizer(examples: Sequence[ActExample], vocab_size: int = 1536):
    """A byte-level BPE (``exports.tokenizer.train_bpe``) fitted to ``examples``' prompts and targets."""
    from exports.tokenizer import train_bpe

    return train_bpe(tokenizer_corpus(examples), vocab_size=vocab_size)


def prepare_tokenizer(hf_dir: Path, data: ActDataset, source: str | Path | None, vocab_size: int) -> None:
    """Put tokenizer files in ``hf_dir``: copied from ``source`` (a teacher's, say, so logits line
    up), or trained on ``data``'s training split; a directory that has one already keeps it."""
    import shutil

    from exports.onnx_export import TOKENIZER_FILES
    from exports.tokenizer import save_tokenizer

    hf_dir.mkdir(parents=True, exist_ok=True)
    if source is None:
        if not (hf_dir / "tokenizer.json").exists():  # a resumed run keeps its tokenizer
            save_tokenizer(train_act_tokenizer(data["train"], vocab_size), hf_dir)
        return
    if Path(source).resolve() != hf_dir.resolve():
        for name in TOKENIZER_FILES:
            shutil.copy(Path(source) / name, hf_dir / name)


def encode_example(tok: Any, ex: ActExample, eos_id: int) -> tuple[list[int], list[int]]:
    """Token ids of ``ex`` as the runtime sees them.

    Args:
        tok: a :class:`runtime.tokenizer.Tokenizer` (each segment encoded on its own, ids
            concatenated — what the runtime feeds the model).
        ex: the example.
        eos_id: appended to the target: the model learns to stop.

    Returns:
        ``(prompt_ids, target_ids)``.
    """
    return tok.encode_prompt(ex.prompt), [*tok.encode_segment(ex.target), eos_id]


@dataclass
class Encoded:
    """A split tokenized for training: the shared prefix once, per-example suffixes.

    Attributes:
        prefix: ids every prompt starts with (P).
        suffix: per example, the prompt's ids after the prefix followed by the target ids and EOS.
        n_prompt: per example, how many of ``suffix``'s ids belong to the prompt (>= 1).
        examples: the source examples, aligned.
    """

    prefix: list[int]
    suffix: list[list[int]]
    n_prompt: list[int]
    examples: list[ActExample]


def common_prefix(seqs: Sequence[Sequence[int]]) -> list[int]:
    """The longest prefix shared by every sequence, kept at least one id short of the shortest, so
    every suffix has a prompt id to predict its first target id from."""
    first = seqs[0]
    n = min(len(s) for s in seqs) - 1
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return list(first[: max(n, 0)])


def encode_split(
    tok: Any, examples: Sequence[ActExample], eos_id: int, prefix: list[int] | None = None
) -> Encoded:
    """Tokenize ``examples`` with the runtime tokenizer and split off the shared prefix.

    Args:
        tok: a :class:`runtime.tokenizer.Tokenizer`.
        examples: the examples.
        eos_id: end-of-sequence id appended to each target.
        prefix: use this prefix (it must be shared by all examples); found when omitted.
    """
    pairs = [encode_example(tok, ex, eos_id) for ex in examples]
    prompts = [p for p, _ in pairs]
    prefix = common_prefix(prompts) if prefix is None else prefix
    for p in prompts:
        if len(p) <= len(prefix) or p[: len(prefix)] != prefix:
            raise ValueError("an example does not start with the shared prefix")
    P = len(prefix)
    return Encoded(
        prefix=prefix,
        suffix=[p[P:] + t for p, t in pairs],
        n_prompt=[len(p) - P for p in prompts],
        examples=list(examples),
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m exports.dataset OUT.jsonl [--train-worlds N ...]``: build and save a dataset."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("out", type=Path)
    defaults = DatasetSpec()
    for name, value in asdict(defaults).items():
        p.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = vars(p.parse_args(argv))
    out = args.pop("out")
    data = build_act_dataset(DatasetSpec(**args))
    save_dataset(data, out)
    print(f"wrote {out}: {data.counts()}")


if __name__ == "__main__":
    main()


def seeded_sample(examples: Sequence[ActExample], limit: int | None) -> list[ActExample]:
    """At most ``limit`` examples, the same seeded choice everywhere accuracy is measured."""
    examples = list(examples)
    if limit and len(examples) > limit:
        keep = np.random.default_rng(0).choice(len(examples), size=limit, replace=False)
        examples = [examples[int(i)] for i in sorted(keep)]
    return examples


@dataclass
class ActionScore:
    """Exact match of model outputs against the expert's actions, overall and per expert action.

    An output that does not parse counts as wrong (and as a parse failure). The first
    ``max_mistakes`` wrong outputs are kept with what identifies their example (world seed, agent,
    role, tick; an agent's name and tick alone repeat across a split's worlds).
    """

    union: Any
    max_mistakes: int = 20
    with_observations: bool = False  # each mistake carries its prompt's last segment, the observation
    n: int = 0
    correct: int = 0
    parse_fail: int = 0
    by_action: dict[str, list[int]] = field(default_factory=dict)  # expert action -> [correct, total]
    mistakes: list[dict[str, str]] = field(default_factory=list)

    def add(self, ex: ActExample, text: str, served: bool = True) -> bool:
        """Score one output; ``served=False`` (the request failed) counts it wrong without parsing."""
        from agents.actions import ActionParseError, parse_action

        expert = parse_action(self.union, ex.target)
        try:
            ok = served and parse_action(self.union, text) == expert
        except ActionParseError:
            ok = False
            self.parse_fail += 1
        self.n += 1
        self.correct += ok
        tally = self.by_action.setdefault(expert.action, [0, 0])
        tally[0] += ok
        tally[1] += 1
        if not ok and len(self.mistakes) < self.max_mistakes:
            self.mistakes.append(
                {
                    "world_seed": ex.world_seed,
                    "agent": ex.agent,
                    "role": ex.role,
                    "tick": str(ex.tick),
                    "expert": ex.target,
                    "model": text,
                    **({"observation": ex.prompt[-1]} if self.with_observations else {}),
                }
            )
        return ok

    def summary(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "exact_match": self.correct / max(self.n, 1),
            "parse_fail": self.parse_fail,
            "by_action": self.by_action,
            "mistakes": self.mistakes,
        }
