"""A training forward pass that runs the last decoder layer only where the loss looks.

An ``act`` example is ~270 prompt tokens and ~13 target tokens, and only the targets are scored.
Every layer but the last must still run at every position (its keys and values feed the layers
above), but the last layer's output is read only at the scored positions: its queries, attention
output and feed-forward block are computed there alone, against the keys and values of every
position. On the act presets that is a quarter (4 layers) to a third (3 layers) of the forward
and backward work, with the same logits as the full pass (``tests/test_factory.py`` checks them).

The transformers model does the rest: layers ``0 .. L-2`` run through its own forward (the
module list is shortened for the call), so masks, rotary embeddings and the cache are its own.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers.models.qwen3.modeling_qwen3 import rotate_half


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` (B, H, T, hd) with ``cos``/``sin`` (B, T, hd), as transformers does."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


def hidden_before_last_layer(model: Any, ids: torch.Tensor, pos: torch.Tensor, cache: Any, moe: bool) -> Any:
    """transformers' forward through every layer but the last, without the final norm.

    Returns the model output: ``last_hidden_state`` is the last layer's input (B, T, D);
    ``router_logits`` (MoE) covers layers ``0 .. L-2``. ``cache`` gains those layers' suffix KV.
    """
    inner = model.model
    layers, norm = inner.layers, inner.norm
    inner.layers, inner.norm = layers[:-1], torch.nn.Identity()
    try:
        return inner(
            input_ids=ids, past_key_values=cache, position_ids=pos, use_cache=True, output_router_logits=moe
        )
    finally:
        inner.layers, inner.norm = layers, norm


def last_layer_at(
    model: Any,
    h: torch.Tensor,
    pos: torch.Tensor,
    cache: Any,
    prefix_len: int,
    rows: torch.Tensor,
    cols: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The last decoder layer and the final norm at positions ``(rows, cols)`` only.

    Args:
        model: a transformers Qwen3 / Qwen3-MoE causal LM.
        h: the last layer's input at every suffix position (B, T, D).
        pos: the suffix positions (B, T).
        cache: the cache after :func:`hidden_before_last_layer`; its last layer holds the shared
            prefix's KV (``prefix_len`` positions), if any.
        rows, cols: the scored positions (N,), row-major with increasing columns per row (the
            order ``exports.train.make_batch`` emits).

    Returns:
        ``(hidden (N, D), router_logits (N, E) or None)``: normed hidden states in the order of
        ``rows``/``cols``, and the last MoE layer's router logits at those positions.
    """
    inner = model.model
    layer = inner.layers[-1]
    attn = layer.self_attn
    B, T, _ = h.shape
    hd = attn.head_dim
    # Scored columns per row, padded to the longest run (padding repeats a real column, masked off).
    counts = torch.bincount(rows, minlength=B)
    Tq = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(rows), device=h.device) - starts[rows]
    qcol = torch.zeros((B, Tq), dtype=torch.long, device=h.device)
    valid = torch.zeros((B, Tq), dtype=torch.bool, device=h.device)
    qcol[rows, slot] = cols
    valid[rows, slot] = True

    x = layer.input_layernorm(h)  # (B, T, D)
    cos, sin = inner.rotary_emb(x, pos)  # (B, T, hd)
    k = _rotate(attn.k_norm(attn.k_proj(x).view(B, T, -1, hd)).transpose(1, 2), cos, sin)
    v = attn.v_proj(x).view(B, T, -1, hd).transpose(1, 2)
    if prefix_len:
        last = cache.layers[len(inner.layers) - 1]
        k = torch.cat([last.keys, k], dim=2)
        v = torch.cat([last.values, v], dim=2)
    gather = qcol.unsqueeze(-1)
    xq = torch.gather(x, 1, gather.expand(-1, -1, x.shape[-1]))  # (B, Tq, D)
    cq = torch.gather(cos, 1, gather.expand(-1, -1, hd))
    sq = torch.gather(sin, 1, gather.expand(-1, -1, hd))
    q = _rotate(attn.q_norm(attn.q_proj(xq).view(B, Tq, -1, hd)).transpose(1, 2), cq, sq)
    # A query at suffix column c sees the whole prefix and suffix columns 0..c of its own row.
    key_col = torch.arange(prefix_len + T, device=h.device) - prefix_len  # prefix keys are < 0
    mask = (key_col.view(1, 1, -1) <= qcol.unsqueeze(-1)).unsqueeze(1)  # (B, 1, Tq, P + T)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling, enable_gqa=True)
    hq = torch.gather(h, 1, gather.expand(-1, -1, h.shape[-1]))
    hq = hq + attn.o_proj(out.transpose(1, 2).reshape(B, Tq, -1))
    ff = layer.mlp(layer.post_attention_layernorm(hq))
    router = None
    if isinstance(ff, tuple):  # a sparse MoE block also returns its router logits (B * Tq, E)
        ff, router = ff
        router = router.view(B, Tq, -1)[valid]
    hq = inner.norm(hq + ff)
    return hq[valid], router


def balance_loss(router_logits: list[torch.Tensor], num_experts: int, top_k: int) -> torch.Tensor:
    """The Switch-style load-balancing loss of transformers' Qwen3-MoE over routed tokens.

    ``E · Σ_e f_e · p_e`` with ``f`` the share of top-k assignments per expert and ``p`` the mean
    router probability, pooled over every (layer, token) given: each tensor is one layer's logits
    at the tokens whose routing counts (N_l, E). With the same tokens in every layer it equals
    ``load_balancing_loss_func`` with an attention mask.
    """
    logits = torch.cat(router_logits, dim=0)
    probs = F.softmax(logits, dim=-1)
    chosen = torch.topk(probs, top_k, dim=-1).indices
    assigned = F.one_hot(chosen, num_experts).float().mean(dim=0)  # (k, E)
    return num_experts * torch.sum(assigned * probs.mean(dim=0).unsqueeze(0))
