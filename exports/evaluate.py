"""Held-out evaluation of a torch ``act`` model: loss and greedy exact match against the expert.

The runtime's view of the same question (constrained decoding through ONNX Runtime) is
``exports.card``; this one measures the model alone, as training sees it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from exports.dataset import ActExample, ActionScore, encode_split, seeded_sample
from exports.tokenizer import EOS as EOS_TOKEN
from exports.tokenizer import PAD as PAD_TOKEN
from exports.train import _device_of, make_batch, prefix_cache, target_logits


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
        batch = make_batch(enc, idx, pad_id)
        logits, _ = target_logits(model, enc.prefix, batch)
        nll += float(F.cross_entropy(logits, batch["labels"].to(logits.device), reduction="sum"))
        n_tok += len(batch["labels"])
        prompts = [enc.suffix[i][: enc.n_prompt[i]] for i in idx]
        for i, gen in zip(idx, greedy_decode(model, enc.prefix, prompts, eos_id, pad_id)):
            score.add(enc.examples[i], tok.decode(gen))
    return {**score.summary(), "loss": nll / max(n_tok, 1)}
