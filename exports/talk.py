"""The ``talk`` student: SmolLM2-135M-Instruct's village conversations distilled into a small model.

Sequence-level distillation: the teacher (SmolLM2-135M-Instruct, imported from its PyPI package and
served by the runtime) holds the conversations of ``runtime.bench.conversation`` — persona agents in
pairs, each answering its partner's last line — over many generated casts; every utterance it says
becomes a training example (the prompt exactly as the agent built it, the teacher's words as the
target). The student is a small dense Qwen3 with its own BPE vocabulary, trained with the ``act``
trainer (:func:`exports.train.train`) and exported like the ``act`` models. Held-out conversations
use personas never seen in training.

``murmurate models build-talk`` runs it; ``murmurate bench talk --student village-talk`` shows what
it buys against SmolLM2 on the same workload.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from exports.dataset import ActDataset, ActExample, DatasetSpec, load_dataset, save_dataset

TALK_MODEL = "village-talk"


@dataclass(frozen=True)
class TalkDataSpec:
    """Which conversations the teacher holds.

    Attributes:
        conversations: casts, each talking for ``rounds`` rounds (the last ``heldout`` are held out).
        agents: agents per cast (generated personas, a fresh seed per cast).
        rounds: utterances per agent.
        new_tokens: most tokens per utterance.
        heldout: conversations kept for the held-out split.
        seed: the seed the casts are drawn from.
        names: ``"numbered"``: every villager named with a number (``Fritz-1026``), the numbers of
            held-out casts never in training; ``"mixed"``: every other training cast named plainly
            from the generated villagers' first names (``Fritz``), as the default cast is, and the
            first held-out cast named after the default cast (names never in training), the rest
            numbered. The village names its first twelve villagers plainly and the rest with
            numbers, so the student must copy both.
        temperature: the teacher's sampling temperature (0: greedy, whose lines repeat themselves).
        top_p: the teacher's nucleus sampling.
    """

    conversations: int = 64
    agents: int = 32
    rounds: int = 3
    new_tokens: int = 32
    heldout: int = 2
    seed: int = 0
    names: str = "mixed"
    temperature: float = 0.7
    top_p: float = 0.9

    def __post_init__(self) -> None:
        if self.names not in ("numbered", "mixed"):
            raise ValueError(f"names must be 'numbered' or 'mixed', not {self.names!r}")

    def cast(self, c: int) -> list[Any]:
        """Conversation ``c``'s villagers."""
        from worlds.village.cast import _FIRST, default_cast, generate_personas

        seed, start = self.seed * 10_000 + c, 1000 + c * self.agents
        if self.names == "mixed":
            first_heldout = self.conversations - self.heldout
            if c == first_heldout:  # the default cast's names, never in a training cast
                names = [p.name for p in default_cast()]
                return generate_personas(min(self.agents, len(names)), seed, first_names=names)
            if c < first_heldout and c % 2 == 0:
                return generate_personas(min(self.agents, len(_FIRST)), seed, first_names=_FIRST)
        # Disjoint persona numbers per conversation: held-out names never appear in training.
        return generate_personas(self.agents, seed, start=start)


def build_talk_dataset(
    teacher_dir: str | Path, spec: TalkDataSpec | None = None, *, threads: int = 1, progress: bool = True
) -> ActDataset:
    """Let the teacher talk and record every (prompt, utterance) pair.

    Returns:
        an :class:`ActDataset` with ``train`` and ``heldout_persona`` splits (the target of each
        example is the teacher's utterance text).
    """
    from tqdm import tqdm

    from runtime.artifacts import load_model_dir, model_tokenizer
    from runtime.batcher import Batcher
    from runtime.bench.conversation import TalkWorkload, converse
    from runtime.bench.talk import _runtime_serve
    from runtime.engine import OrtEngine
    from runtime.kv_cache import RadixCache

    spec = spec or TalkDataSpec()
    if not 0 < spec.heldout < spec.conversations:
        raise ValueError("heldout must leave at least one training conversation")
    art = load_model_dir(teacher_dir)
    tok = model_tokenizer(art)
    engine = OrtEngine(art, intra_op_threads=threads or None)
    size = {"max_batch_size": max(64, spec.agents), "max_prefill_tokens": 1 << 16}
    batcher = Batcher(engine, tok, RadixCache(1 << 30), **size)
    w = TalkWorkload(agents=spec.agents, rounds=spec.rounds, new_tokens=spec.new_tokens, seed=spec.seed)
    serve = _runtime_serve(batcher, art.name, spec.new_tokens, spec.temperature, spec.top_p)
    data = ActDataset(DatasetSpec(world="village", seed=spec.seed), {"train": [], "heldout_persona": []})
    bar = tqdm(total=spec.conversations * spec.rounds, desc="teacher conversations", disable=not progress)
    for c in range(spec.conversations):
        split = "heldout_persona" if c >= spec.conversations - spec.heldout else "train"
        cast = spec.cast(c)
        rounds: list[list[tuple[str, ...]]] = []

        def recording(prompts: list[tuple[str, ...]], rounds=rounds) -> list[Any]:
            rounds.append(prompts)
            out = serve(prompts)
            bar.update(1)
            return out

        said = converse(cast, w, recording, tok.decode)
        for r, (prompts, utterances) in enumerate(zip(rounds, said)):
            for persona, prompt, u in zip(cast, prompts, utterances):
                text = tok.decode(u.ids).strip()
                if text:
                    data.splits[split].append(
                        ActExample(tuple(prompt), text, split, c, persona.name, r, persona.role)
                    )
    bar.close()
    return data


def heldout_loss(model: Any, tok: Any, examples: list[ActExample], batch_size: int = 16) -> float:
    """Mean cross-entropy per target token of ``model`` on ``examples`` (teacher forcing)."""
    import torch
    import torch.nn.functional as F

    from exports.dataset import encode_split
    from exports.train import make_batch, target_logits

    eos, pad = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|pad|>")
    enc = encode_split(tok, examples, eos)
    nll, n = 0.0, 0
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(examples), batch_size):
            batch = make_batch(enc, list(range(lo, min(lo + batch_size, len(examples)))), pad)
            logits, _ = target_logits(model, enc.prefix, batch)
            nll += F.cross_entropy(logits, batch["labels"], reduction="sum").item()
            n += len(batch["labels"])
    return nll / max(n, 1)


def utterance_stats(texts: list[str]) -> dict[str, float]:
    """How degenerate a set of utterances is, by text alone.

    ``repetitive``: the share of utterances in which some word of three or more letters occurs three
    times or more, or a word pair occurs twice (``"aldad, aldad, aldad"``); ``distinct_2``: distinct
    word pairs over all word pairs (1.0: no pair repeats inside an utterance); ``words``: mean length.
    """
    import re
    from collections import Counter

    repetitive, pairs, distinct, words = 0, 0, 0, 0
    for text in texts:
        w = re.findall(r"[a-z']+", text.lower())
        bigrams = list(zip(w, w[1:]))
        counts, bcounts = Counter(x for x in w if len(x) >= 3), Counter(bigrams)
        repetitive += bool(counts and max(counts.values()) >= 3) or bool(
            bcounts and max(bcounts.values()) >= 2
        )
        pairs += len(bigrams)
        distinct += len(bcounts)
        words += len(w)
    n = max(len(texts), 1)
    return {"repetitive": repetitive / n, "distinct_2": distinct / max(pairs, 1), "words": words / n}


def heldout_generations(
    model_dir: str | Path,
    examples: list[ActExample],
    new_tokens: int = 32,
    threads: int = 1,
    no_repeat_ngram_size: int = 0,
) -> list[str]:
    """What ``model_dir`` says, greedily through the runtime, to each held-out prompt (optionally
    never repeating an n-gram, as transformers' ``no_repeat_ngram_size``)."""
    from runtime.types import Request, SamplingParams
    from runtime.worker import WorkerConfig, build_batcher

    batcher = build_batcher(WorkerConfig(str(model_dir), threads=threads, cache_bytes=1 << 28))
    sampling = SamplingParams(max_tokens=new_tokens, no_repeat_ngram_size=no_repeat_ngram_size)
    reqs = [
        Request(model="talk", prompt=tuple(ex.prompt), sampling=sampling, id=f"talk-{i}")
        for i, ex in enumerate(examples)
    ]
    return [" ".join(r.text.split()) for r in batcher.run(reqs)]


def build_talk_model(
    out_root: str | Path,
    *,
    teacher: str = "smollm2-135m",
    spec: TalkDataSpec | None = None,
    steps: int = 1500,
    preset: str = "talk-student",
    seed: int = 0,
    threads: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Data from the teacher, then train, export and card ``village-talk`` in ``out_root``.

    The conversations are cached in ``out_root/.build-talk`` (keyed by the spec), so a re-run with
    other training settings does not ask the teacher again.
    """
    from dataclasses import replace

    from safetensors.torch import load_file

    from exports.build import _digest
    from exports.card import write_model_card
    from exports.onnx_export import export_trained
    from exports.presets import ModelArgs
    from exports.tokenizer import runtime_tokenizer
    from exports.train import TrainConfig, build_model, train
    from runtime.cli_common import resolve_model

    spec = spec or TalkDataSpec()
    out_root = Path(out_root)
    work = out_root / ".build-talk"
    work.mkdir(parents=True, exist_ok=True)
    teacher_dir = resolve_model(teacher)
    data_path = work / ("talk-" + _digest(asdict(spec)) + ".jsonl")
    meta_path = data_path.with_suffix(".meta.json")
    if data_path.is_file() and meta_path.is_file():
        data = load_dataset(data_path)
        data_s = json.loads(meta_path.read_text())["wall_s"]
    else:
        t0 = time.time()
        data = build_talk_dataset(teacher_dir, spec, threads=threads, progress=progress)
        save_dataset(data, data_path)
        data_s = round(time.time() - t0, 1)
        meta_path.write_text(json.dumps({"wall_s": data_s, "teacher": str(teacher_dir)}))
    if progress:
        print(
            f"[talk] {len(data['train'])} train / {len(data['heldout_persona'])} held-out utterances",
            file=sys.stderr,
        )
    cfg = replace(
        TrainConfig(seed=seed),
        preset=preset,
        steps=steps,
        batch_size=16,
        lr=2e-3,
        warmup=min(50, max(steps // 10, 1)),
        vocab_size=2048,
        threads=threads,
        eval_examples=0,
    )
    run = work / f"run-{_digest(asdict(cfg))}"
    metrics = train(cfg, data, run, resume=True, evaluate_at_end=False, progress=progress)
    tok, _, _ = runtime_tokenizer(run / "hf")
    model = build_model(ModelArgs.from_name(preset), run / "hf", seed)
    model.load_state_dict(load_file(run / "hf" / "model.safetensors"))
    loss = heldout_loss(model, tok, data["heldout_persona"])
    target = out_root / TALK_MODEL
    extra = {"task": "talk", "preset": preset, "seed": seed, "distilled_from": teacher}
    export_trained(run / "hf", work / "export-src", target, TALK_MODEL, extra)
    heldout = data["heldout_persona"]
    generation = {
        "teacher": utterance_stats([ex.target for ex in heldout]),
        "student": utterance_stats(heldout_generations(target, heldout, spec.new_tokens, threads)),
        "student_no_repeat_3": utterance_stats(
            heldout_generations(target, heldout, spec.new_tokens, threads, 3)
        ),
    }
    card = write_model_card(
        target,
        task="talk",
        world="village",
        heldout={"heldout_persona": {"loss": loss, "n": len(heldout), "generation": generation}},
        built={
            "preset": preset,
            "seed": seed,
            "steps": steps,
            "batch_size": cfg.batch_size,
            "distilled_from": teacher,
            "method": "sequence-level distillation (the teacher's utterances as targets, "
            + (
                "greedy"
                if spec.temperature == 0
                else f"sampled at temperature {spec.temperature}, top-p {spec.top_p}"
            )
            + ")",
            "data": {s: len(v) for s, v in data.splits.items() if v},
            "talk_spec": asdict(spec),
            "data_wall_s": data_s,
            "train_wall_s": metrics.get("wall_s_total"),
        },
    )
    return {"model": target, "card": card}
