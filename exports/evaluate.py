"""Held-out evaluation of a torch ``act`` model: loss and greedy exact match against the expert.

The runtime's view of the same question (constrained decoding through ONNX Runtime) is
``exports.card``; this one measures the model alone, as training sees it.

``python -m exports.evaluate --data act.jsonl --split heldout_persona HF_DIR [HF_DIR ...]`` splits
the held-out loss into the tokens of partner names (``to``, ``offer_from``: on unseen personas,
names never seen in training, which a model must copy from the observation) and the rest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from exports.dataset import (
    ActExample,
    ActionScore,
    encode_split,
    load_dataset,
    seeded_sample,
)
from exports.tokenizer import EOS as EOS_TOKEN
from exports.tokenizer import PAD as PAD_TOKEN
from exports.tokenizer import runtime_tokenizer
from exports.train import HELDOUT, _device_of, make_batch, prefix_cache, target_logits


def _target_nll(model: Any, enc: Any, idx: list[int], pad_id: int) -> torch.Tensor:
    """Cross-entropy of every target token of examples ``idx`` of ``enc``, in order (N,)."""
    batch = make_batch(enc, idx, pad_id)
    logits, _ = target_logits(model, enc.prefix, batch)
    return F.cross_entropy(logits, batch["labels"].to(logits.device), reduction="none")


@torch.no_grad()
def greedy_decode(
    model: Any, prefix: list[int], prompts: Sequence[list[int]], eos_id: int, pad_id: int, max_new: int = 64
) -> list[list[int]]:
    """Plain greedy decoding of a batch of prompts that share ``prefix``.

    The suffixes are left-padded between the prefix and the prompt (masked out), and each row gets
    explicit positions, so every prompt sees exactly the positions it had in training.

    Returns:
        Per prompt, the generated ids up to and including EOS (or ``max_new`` ids).
    """
    B, P, L = len(prompts), len(prefix), max(len(p) for p in prompts)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + L), dtype=torch.long)
    attn[:, :P] = 1
    pos = torch.full((B, L), P, dtype=torch.long)
    for b, p in enumerate(prompts):
        n = len(p)
        ids[b, L - n :] = torch.tensor(p)
        attn[b, P + L - n :] = 1
        pos[b, L - n :] = torch.arange(P, P + n)
    dev = _device_of(model)
    ids, attn, pos = ids.to(dev), attn.to(dev), pos.to(dev)
    cache = prefix_cache(model, prefix, B)
    h = model.model(
        input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=cache
    ).last_hidden_state
    next_pos = pos[:, -1:] + 1  # (B, 1)
    out: list[list[int]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    for _ in range(max_new):
        nxt = model.lm_head(h[:, -1]).argmax(-1)  # (B,)
        for b in range(B):
            if not done[b]:
                out[b].append(int(nxt[b]))
        done |= nxt == eos_id
        if bool(done.all()):
            break
        attn = torch.cat([attn, torch.ones((B, 1), dtype=torch.long, device=dev)], dim=1)
        h = model.model(
            input_ids=nxt[:, None], attention_mask=attn, position_ids=next_pos, past_key_values=cache
        ).last_hidden_state
        next_pos = next_pos + 1
    return out


@torch.no_grad()
def evaluate(
    model: Any,
    tok: Any,
    examples: Sequence[ActExample],
    *,
    limit: int = 0,
    world: str = "village",
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, Any]:
    """Held-out loss and exact-match accuracy of plain greedy decoding against the expert.

    A prediction is correct when it parses (``agents.actions.parse_action``) into the same action
    as the expert's JSON. Unparsable output counts as wrong (the runtime's constrained decoder would
    have forced a valid action; this measures the model alone).

    Args:
        model: a causal LM (eval mode is set here).
        tok: the runtime tokenizer it was trained with.
        examples: the examples (a seeded sample of ``limit`` of them when ``limit`` is set).
        world: the world whose action union parses the outputs.
        batch_size: examples decoded together.
        progress: show a progress bar.

    Returns:
        ``n``, ``loss`` (mean cross-entropy per target token), ``exact_match``, ``parse_fail``,
        ``by_action`` (expert action -> [correct, total]) and up to 20 ``mistakes``.
    """
    from worlds import world_class

    union = world_class(world).action_type
    model.eval()
    examples = seeded_sample(examples, limit)
    eos_id, pad_id = tok.token_to_id(EOS_TOKEN), tok.token_to_id(PAD_TOKEN)
    enc = encode_split(tok, examples, eos_id)
    nll, n_tok = 0.0, 0
    score = ActionScore(union, max_mistakes=20)
    for lo in tqdm(range(0, len(examples), batch_size), desc="eval", disable=not progress):
        idx = list(range(lo, min(lo + batch_size, len(examples))))
        token_nll = _target_nll(model, enc, idx, pad_id)
        nll += float(token_nll.sum())
        n_tok += len(token_nll)
        prompts = [enc.suffix[i][: enc.n_prompt[i]] for i in idx]
        for i, gen in zip(idx, greedy_decode(model, enc.prefix, prompts, eos_id, pad_id)):
            score.add(enc.examples[i], tok.decode(gen))
    return {**score.summary(), "loss": nll / max(n_tok, 1)}


NAME_VALUE = re.compile(r'"(?:to|offer_from)": "([^"]*)"')
"""A partner name in an action's JSON (the value's characters are group 1)."""


def name_tokens(tok: Any, target: list[int]) -> list[bool]:
    """For each id of ``target`` (an action's JSON, then EOS), whether it spells part of a partner name.

    A token counts when any character it decodes to lies inside a ``to``/``offer_from`` value.
    """
    text = tok.decode(target)
    spans = [m.span(1) for m in NAME_VALUE.finditer(text)]
    out, start = [], 0
    for j in range(len(target)):
        end = len(tok.decode(target[: j + 1]))
        out.append(any(lo < end and start < hi for lo, hi in spans))
        start = end
    return out


@torch.no_grad()
def loss_by_field(
    model: Any, tok: Any, examples: Sequence[ActExample], *, batch_size: int = 32
) -> dict[str, Any]:
    """Held-out loss split into partner-name tokens and the rest.

    Returns ``{"all" | "names" | "rest" | "name_numbers": {"loss": mean cross-entropy per token,
    "tokens": n}}``; ``name_numbers`` are the name tokens that are all digits (``300`` of
    ``Yrsa-300``): a held-out villager's number is never in a training target, so no model has
    learned to write it.
    """
    model.eval()
    eos_id, pad_id = tok.token_to_id(EOS_TOKEN), tok.token_to_id(PAD_TOKEN)
    enc = encode_split(tok, examples, eos_id)
    sums = {"names": [0.0, 0], "rest": [0.0, 0], "name_numbers": [0.0, 0]}
    for lo in range(0, len(examples), batch_size):
        idx = list(range(lo, min(lo + batch_size, len(examples))))
        nll = _target_nll(model, enc, idx, pad_id).tolist()
        targets = [t for i in idx for t in enc.suffix[i][enc.n_prompt[i] :]]
        flags = [f for i in idx for f in name_tokens(tok, enc.suffix[i][enc.n_prompt[i] :])]
        for v, t, is_name in zip(nll, targets, flags, strict=True):
            keys = ["names", "name_numbers"] if is_name and tok.decode([t]).strip().isdigit() else []
            for key in keys or ["names" if is_name else "rest"]:
                sums[key][0] += v
                sums[key][1] += 1
    total = [sums["names"][0] + sums["rest"][0], sums["names"][1] + sums["rest"][1]]
    return {k: {"loss": a / max(n, 1), "tokens": n} for k, (a, n) in {"all": total, **sums}.items()}


@torch.no_grad()
def constrained_loss(
    model: Any, tok: Any, examples: Sequence[ActExample], *, world: str = "village", batch_size: int = 32
) -> dict[str, Any]:
    """Held-out loss as the runtime decodes: each target token's probability renormalised over the
    tokens the action schema and the observation's argument choices allow at that point (the token
    masks the model brain decodes under), the target consumed token by token. A token the
    constraints leave alone (one allowed) costs nothing; once the output is complete, the rest of
    the target (the end-of-sequence token) is not scored, as the runtime stops there.

    Returns ``{"all" | "names" | "rest": {"loss", "tokens"}, "rejected": n}``: ``tokens`` counts the
    scored tokens; ``rejected`` counts examples whose target the constraints refuse (scored up to
    that token).
    """
    import numpy as np

    from exports.card import _with_choices, action_constraint
    from runtime.choices import restrict
    from runtime.constrained import ConstraintCompiler
    from worlds import world_class

    model.eval()
    world_cls, base = world_class(world), action_constraint(world)
    eos_id, pad_id = tok.token_to_id(EOS_TOKEN), tok.token_to_id(PAD_TOKEN)
    compiler = ConstraintCompiler(tok.to_json(), model.config.vocab_size, (eos_id,), threads=1)
    enc = encode_split(tok, examples, eos_id)
    sums = {"names": [0.0, 0], "rest": [0.0, 0]}
    rejected = 0
    bitmask = compiler.allocate_bitmask(1)
    for lo in range(0, len(examples), batch_size):
        idx = list(range(lo, min(lo + batch_size, len(examples))))
        logits, _ = target_logits(model, enc.prefix, make_batch(enc, idx, pad_id))
        logits = logits.float().cpu().numpy()
        at = 0
        for i in idx:
            target = enc.suffix[i][enc.n_prompt[i] :]
            rows, at = logits[at : at + len(target)], at + len(target)
            constraint = _with_choices(base, examples[i].prompt, world_cls)
            matcher, tracker = compiler.matcher(constraint), compiler.choice_tracker(constraint)
            out: list[int] = []
            for t, row, is_name in zip(target, rows, name_tokens(tok, target), strict=True):
                if matcher.is_stopped():
                    break
                compiler.fill_masks([(matcher, 0)], bitmask)
                row = row.copy()
                compiler.apply(row[None], bitmask)
                if tracker is not None and (allowed := tracker.allowed(out)) is not None:
                    restrict(row, allowed)
                finite = np.isfinite(row)
                if not finite[t]:
                    rejected += 1
                    break
                if finite.sum() > 1:
                    z = row[finite]
                    m = z.max()
                    nll = float(m + np.log(np.exp(z - m).sum()) - row[t])
                    acc = sums["names" if is_name else "rest"]
                    acc[0] += nll
                    acc[1] += 1
                matcher.consume_token(t)
                out.append(t)
    total = [sums["names"][0] + sums["rest"][0], sums["names"][1] + sums["rest"][1]]
    res = {k: {"loss": a / max(n, 1), "tokens": n} for k, (a, n) in {"all": total, **sums}.items()}
    return {**res, "rejected": rejected}


@torch.no_grad()
def heldout_losses(
    hf_dir: str | Path, data: Any, splits: Sequence[str] = HELDOUT, *, batch_size: int = 32
) -> dict[str, Any]:
    """Mean cross-entropy per target token of the model saved in ``hf_dir`` over **every** example of
    each held-out split of ``data`` (an act dataset): ``{split: {"loss": f, "tokens": n}}``.

    The cards' accuracy samples are a few hundred examples a split, too few to order two models
    whose losses differ by a few percent; a loss pass over all of them costs about a minute.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    tok, _, _ = runtime_tokenizer(hf_dir)
    eos_id, pad_id = tok.token_to_id(EOS_TOKEN), tok.token_to_id(PAD_TOKEN)
    out = {}
    for split in splits:
        enc = encode_split(tok, data[split], eos_id)
        n = len(enc.suffix)
        nll = torch.cat(
            [
                _target_nll(model, enc, list(range(lo, min(lo + batch_size, n))), pad_id)
                for lo in range(0, n, batch_size)
            ]
        )
        out[split] = {"loss": float(nll.mean()), "tokens": int(nll.numel())}
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m exports.evaluate --data act.jsonl [--split S] [--limit N] [--constrained] HF_DIR ...``:
    held-out loss of each model, split into partner-name tokens and the rest (``--constrained``:
    also as the runtime decodes, :func:`constrained_loss`)."""
    import argparse

    from transformers import AutoModelForCausalLM

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("models", nargs="+", type=Path, help="trained model directories (transformers format)")
    p.add_argument("--data", required=True, type=Path, help="the act dataset (JSONL)")
    p.add_argument("--split", default="heldout_persona", choices=["heldout_seed", "heldout_persona"])
    p.add_argument("--limit", type=int, default=600, help="a seeded sample of this many examples (0: all)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--constrained",
        action="store_true",
        help="also the loss as the runtime decodes: renormalised over what the schema and choices allow",
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    examples = seeded_sample(load_dataset(args.data)[args.split], args.limit)
    print(f"{args.split}, {len(examples)} examples: loss per token (tokens)")
    for path in args.models:
        tok, _, _ = runtime_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        r = loss_by_field(model, tok, examples)
        parts = "  ".join(f"{k} {v['loss']:.4f} ({v['tokens']})" for k, v in r.items())
        print(f"{path}: {parts}")
        if args.constrained:
            c = constrained_loss(model, tok, examples)
            parts = "  ".join(f"{k} {c[k]['loss']:.4f} ({c[k]['tokens']})" for k in ("all", "names", "rest"))
            print(f"  constrained, over the tokens with a choice: {parts}; targets refused {c['rejected']}")


if __name__ == "__main__":
    main()
