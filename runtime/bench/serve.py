"""``murmurate bench serve``: one shared-prefix workload served four ways in the same process.

The workload: ``requests`` prompts that share a ``prefix_tokens`` prefix, each with its own
``suffix_tokens`` suffix, ``new_tokens`` generated greedily for each. Variants:

- ``hf_per_request`` — transformers ``generate``, one request at a time (how an agent loop that
  calls a model per agent behaves);
- ``hf_batched`` — transformers ``generate`` on one left-padded batch;
- ``runtime_no_cache`` — murmurate's engine and continuous batcher, prefix cache off;
- ``runtime_cache`` — the same with the radix prefix cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from runtime.artifacts import hf_weights_dir, model_tokenizer
from runtime.bench.common import default_bench_model, machine_info, print_table, write_json


@dataclass(frozen=True)
class ServeWorkload:
    requests: int = 64
    prefix_tokens: int = 256
    suffix_tokens: int = 32
    new_tokens: int = 16
    seed: int = 0

    @classmethod
    def quick(cls) -> ServeWorkload:
        return cls(requests=16, prefix_tokens=128, suffix_tokens=16, new_tokens=8)


def word_tokens(tok) -> list[str]:
    """Vocabulary entries that are a whole space-led word: text made of them tokenizes predictably."""
    vocab = tok._tok.get_vocab()
    words = [t for t in vocab if t.startswith("Ġ") and t[1:].isalpha() and len(t) > 2]
    return sorted(words)


def make_segment(tok, words: list[str], n_tokens: int, rng: np.random.Generator) -> str:
    """Text of exactly ``n_tokens`` tokens (as a segment) built from whole-word tokens."""
    picks = [words[i][1:] for i in rng.integers(0, len(words), n_tokens)]
    text = "".join(" " + w for w in picks)
    ids = tok.encode_segment(text)
    while len(ids) > n_tokens:  # a rare merge across words: drop words until it fits
        picks.pop()
        text = "".join(" " + w for w in picks)
        ids = tok.encode_segment(text)
    while len(ids) < n_tokens:
        text += " " + words[int(rng.integers(0, len(words)))][1:]
        ids = tok.encode_segment(text)
        if len(ids) > n_tokens:
            text = text[: text.rfind(" ")] + " a" * (
                n_tokens - len(tok.encode_segment(text[: text.rfind(" ")]))
            )
            ids = tok.encode_segment(text)
    return text


def build_prompts(tok, w: ServeWorkload) -> list[tuple[str, str]]:
    rng = np.random.default_rng(w.seed)
    words = word_tokens(tok)
    if len(words) < 20:
        raise ValueError("the model's vocabulary has too few whole-word tokens to build the workload")
    prefix = make_segment(tok, words, w.prefix_tokens, rng)
    return [(prefix, make_segment(tok, words, w.suffix_tokens, rng)) for _ in range(w.requests)]


def run_serve_bench(
    model_dir: str | Path | None = None,
    workload: ServeWorkload | None = None,
    json_path: str | Path | None = None,
    variants: tuple[str, ...] = ("hf_per_request", "hf_batched", "runtime_no_cache", "runtime_cache"),
    threads: int = 0,
    console: Console | None = None,
) -> dict:
    """Run the serve benchmark; prints a table and returns (and optionally writes) the JSON."""
    from runtime.artifacts import load_model_dir
    from runtime.batcher import Batcher
    from runtime.engine import OrtEngine
    from runtime.kv_cache import RadixCache
    from runtime.types import Request, SamplingParams

    console = console or Console(width=120)
    w = workload or ServeWorkload()
    model_dir = Path(model_dir) if model_dir else default_bench_model(console)
    art = load_model_dir(model_dir)
    tok = model_tokenizer(art)
    prompts = build_prompts(tok, w)
    ids = [tok.encode_prompt(p) for p in prompts]
    console.print(
        f"model [bold]{art.name}[/bold] ({_params(art.manifest)} params) — {w.requests} requests × "
        f"({w.prefix_tokens} shared + {w.suffix_tokens} own) prompt tokens, {w.new_tokens} new tokens each"
    )
    sampling = SamplingParams(max_tokens=w.new_tokens, ignore_eos=True)
    reqs = [
        Request(model=art.name, prompt=list(p), sampling=sampling, id=f"r{i}") for i, p in enumerate(prompts)
    ]
    out: dict[str, dict] = {}
    outputs: dict[str, list[list[int]]] = {}

    def record(name, wall, tokens, hit, outs):
        out[name] = {"tokens_per_s": tokens / wall, "prefix_hit_ratio": hit, "wall_s": wall}
        outputs[name] = outs
        console.print(f"  {name:<18} {tokens / wall:10.1f} tokens/s  ({wall:.2f} s)")

    for name in variants:
        if name.startswith("hf_"):
            hf = _hf_model(art)
            if threads:  # same thread count for torch as for ONNX Runtime: a fair, load-robust comparison
                import torch

                torch.set_num_threads(threads)
            fn = _hf_per_request if name == "hf_per_request" else _hf_batched
            fn(hf, ids[:2], 2)  # warm-up, untimed (first calls allocate and pick kernels)
            t0 = time.perf_counter()
            outs = fn(hf, ids, w.new_tokens)
            record(name, time.perf_counter() - t0, sum(map(len, outs)), None, outs)
        elif name.startswith("runtime_"):
            engine = OrtEngine(art, intra_op_threads=threads or None)
            cache = RadixCache(1 << 30) if name == "runtime_cache" else None
            b = Batcher(engine, tok, None, max_batch_size=max(64, w.requests), max_prefill_tokens=1 << 16)
            b.run(
                [
                    Request(
                        model=art.name,
                        prompt=list(prompts[0]),
                        sampling=SamplingParams(max_tokens=2, ignore_eos=True),
                    )
                ]
            )  # warm-up
            b = Batcher(engine, tok, cache, max_batch_size=max(64, w.requests), max_prefill_tokens=1 << 16)
            t0 = time.perf_counter()
            res = b.run(reqs)
            wall = time.perf_counter() - t0
            record(
                name,
                wall,
                sum(r.generated_tokens for r in res),
                b.stats.hit_ratio if cache else None,
                [r.token_ids for r in res],
            )
        else:
            raise ValueError(f"unknown variant {name!r}")

    base = out.get("hf_per_request", {}).get("tokens_per_s")
    batched = out.get("hf_batched", {}).get("tokens_per_s")
    ref = outputs.get("hf_batched") or outputs.get("hf_per_request")
    rows = []
    for name, v in out.items():
        v["vs_hf_per_request"] = v["tokens_per_s"] / base if base else None
        v["vs_hf_batched"] = v["tokens_per_s"] / batched if batched else None
        v["same_output_as_hf"] = float(np.mean([a == b for a, b in zip(outputs[name], ref)])) if ref else None
        rows.append(
            [
                name,
                v["tokens_per_s"],
                v["wall_s"],
                v["prefix_hit_ratio"],
                v["vs_hf_per_request"],
                v["vs_hf_batched"],
                v["same_output_as_hf"],
            ]
        )
    print_table(
        console,
        "bench serve",
        ["variant", "tokens/s", "wall s", "prefix hit", "× hf_per_request", "× hf_batched", "same as hf"],
        rows,
    )
    result = {
        "model": art.name,
        "workload": w.__dict__,
        "machine": machine_info(),
        "variants": out,
    }
    write_json(json_path, result)
    return result


def _params(manifest: dict) -> str:
    n = manifest.get("parameters")
    return f"{n:,}" if isinstance(n, int) else "?"


def _hf_model(art):
    import torch  # noqa: F401 - the train extra
    from transformers import AutoModelForCausalLM

    hf_dir = hf_weights_dir(art)
    if not (hf_dir / "config.json").exists():
        raise FileNotFoundError(
            f"the transformers baselines need the model's transformers weights in {hf_dir}; "
            "run only the runtime variants with --variants runtime_no_cache,runtime_cache"
        )
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    model.generation_config.eos_token_id = None  # every variant generates exactly new_tokens
    return model


def _hf_per_request(model, ids: list[list[int]], new_tokens: int) -> list[list[int]]:
    import torch

    outs = []
    with torch.inference_mode():
        for x in ids:
            y = model.generate(torch.tensor([x]), max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
            outs.append(y[0, len(x) :].tolist())
    return outs


def _hf_batched(model, ids: list[list[int]], new_tokens: int) -> list[list[int]]:
    import torch

    width = max(map(len, ids))
    batch = torch.zeros((len(ids), width), dtype=torch.long)
    mask = torch.zeros_like(batch)
    for i, x in enumerate(ids):  # left padding, as generate expects for decoder-only models
        batch[i, width - len(x) :] = torch.tensor(x)
        mask[i, width - len(x) :] = 1
    with torch.inference_mode():
        y = model.generate(
            batch, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0
        )
    return [row[width:].tolist() for row in y]
