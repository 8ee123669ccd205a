"""Grouped-query attention that never repeats K/V, and an ONNX export that uses it.

transformers' eager and sdpa attention implement grouped-query attention (GQA) with ``repeat_kv``:
each of the Hkv key/value heads is copied to the n_rep = H / Hkv query heads that read it. Traced to
ONNX that is an ``Unsqueeze → Expand → Reshape`` of the whole K and V cache in every layer on every
step — on a 20M-parameter 8:2 model it was 35% of a batch-64 decode step in ONNX Runtime.

:func:`grouped_query_attention` instead folds the query heads of one KV group into the row axis:

- query heads of a group are contiguous (head h reads KV head h // n_rep), so the free reshape
  Q (B, H, T, D) → (B, Hkv, n_rep·T, D) lines every query row up with its own K/V head;
- scores = Q_g @ Kᵀ → (B, Hkv, n_rep·T, S), viewed as (B, H, T, S) to add the (B, 1, T, S) mask and
  take the softmax, then viewed back and multiplied by V → (B, Hkv, n_rep·T, D) → (B, H, T, D).

Every reshape is a view of contiguous data, so the graph copies nothing the size of the cache, and each
GEMM reads its K/V head once for n_rep·T query rows instead of n_rep times for T rows.

It is registered with transformers' ``AttentionInterface`` under :data:`GROUPED_ATTENTION`, with the
eager additive mask (0 to keep, the dtype's minimum to drop) registered for the same name in
``AttentionMaskInterface``. The mask is looked up at call time, so inside optimum's export patcher it is
optimum's traceable (vmap-free) eager mask. Left padding and holes in the middle of the KV, marked 0 in
``attention_mask``, are masked exactly as by eager attention; a query row with nothing to attend to
(a pad position) gets a uniform softmax instead of NaN.

:func:`export_grouped` loads a saved model with this attention and exports it with optimum's
``onnx_export_from_model`` (task ``text-generation-with-past``). The graph's interface is unchanged:
``input_ids``, ``attention_mask``, ``position_ids``, ``past_key_values.{i}.key/value`` in;
``logits``, ``present.{i}.key/value`` out, with Hkv heads in the KV.

Letter legend: B = batch rows, H = query heads, Hkv = key/value heads, n_rep = H / Hkv, T = new
tokens (queries), S = KV length (past + new), D = head size.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

GROUPED_ATTENTION = "murmurate_grouped"
"""The ``attn_implementation`` name the grouped attention and its mask are registered under."""

GROUPED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "qwen3_moe"})
"""Architectures whose attention modules call ``ALL_ATTENTION_FUNCTIONS`` and were checked for parity."""

# Config fields that change attention in ways this implementation does not reproduce (none of the
# supported architectures sets them today; a future variant that does falls back to optimum's export).
_UNSUPPORTED_FIELDS = ("attn_logit_softcapping",)


def grouped_query_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention with the query heads grouped per KV head instead of K/V repeated per query head.

    Same contract as transformers' ``eager_attention_forward``.

    Args:
        module: the attention module (only ``training`` is read, for dropout).
        query: (B, H, T, D) queries, after RoPE (and q-norm where the model has one).
        key: (B, Hkv, S, D) keys, past and new.
        value: (B, Hkv, S, D) values, past and new.
        attention_mask: additive (B, 1, T, S') mask with S' ≥ S (0 keep, dtype minimum drop), or None.
        scaling: score scale; defaults to D ** -0.5.
        dropout: attention dropout probability (training only).
        **kwargs: other arguments of the interface (position ids, sliding window...), unused: a
            sliding window is already part of the mask.

    Returns:
        (B, T, H, D) attention output and None (no attention weights: they only exist grouped).
    """
    import torch

    batch, heads, q_len, head_dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads do not split into {kv_heads} KV groups")
    if scaling is None:
        scaling = head_dim**-0.5
    # (B, H, T, D) -> (B, Hkv, n_rep·T, D): heads h = g·n_rep + r of group g become rows r·T + t. The
    # query is contiguous (RoPE wrote it), so this is a view; -1 keeps T symbolic in the traced graph.
    q = query.reshape(batch, kv_heads, -1, head_dim)
    # (B, Hkv, n_rep·T, D) @ (B, Hkv, D, S) -> (B, Hkv, n_rep·T, S): one GEMM per KV head, not n_rep.
    scores = torch.matmul(q, key.transpose(2, 3)) * scaling
    # View per query head so the (B, 1, T, S) mask broadcasts over heads exactly as in eager attention.
    scores = scores.reshape(batch, heads, q_len, kv_len)
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, :kv_len]
    # Softmax in fp32 like eager attention, so half-precision models round the same way.
    probs = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    # (B, H, T, S) -> (B, Hkv, n_rep·T, S) @ (B, Hkv, S, D) -> (B, Hkv, n_rep·T, D) -> (B, H, T, D).
    out = torch.matmul(probs.reshape(batch, kv_heads, -1, kv_len), value)
    out = out.reshape(batch, heads, q_len, head_dim)
    # (B, T, H, D), contiguous, as the callers' o_proj reshape expects.
    return out.transpose(1, 2).contiguous(), None


def grouped_query_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """The mask for :func:`grouped_query_attention`: whatever transformers' ``eager`` mask is right now.

    Looked up on every call rather than bound at import, because optimum's export patcher swaps the
    eager mask for a traceable one while it exports; binding it early would trace ``vmap`` and fail.
    The eager mask is additive (B, 1, T, S) float, never ``None``, which is what the attention adds.
    """
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    return ALL_MASK_ATTENTION_FUNCTIONS["eager"](*args, **kwargs)


def register_grouped_attention() -> str:
    """Register the grouped attention and its mask with transformers (idempotent).

    Returns:
        The ``attn_implementation`` name to load models with (:data:`GROUPED_ATTENTION`).
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(GROUPED_ATTENTION, grouped_query_attention)
    AttentionMaskInterface.register(GROUPED_ATTENTION, grouped_query_mask)
    return GROUPED_ATTENTION


def grouped_export_unsupported(config: dict[str, Any]) -> str | None:
    """Why :func:`export_grouped` cannot export a model with this ``config.json``, or None if it can."""
    model_type = config.get("model_type")
    if model_type not in GROUPED_MODEL_TYPES:
        return f"model_type {model_type!r} is not one of {', '.join(sorted(GROUPED_MODEL_TYPES))}"
    heads = int(config.get("num_attention_heads") or 0)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    if not heads or heads % kv_heads:
        return f"{heads} attention heads do not split into {kv_heads} KV heads"
    for field in _UNSUPPORTED_FIELDS:
        if config.get(field):
            return f"config sets {field}"
    return None


def load_grouped_model(hf_dir: str | Path) -> Any:
    """Load a saved causal LM in fp32 on CPU with :func:`grouped_query_attention`, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    name = register_grouped_attention()
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), attn_implementation=name, dtype=torch.float32)
    return model.eval()


def export_grouped(hf_dir: str | Path, out_dir: str | Path) -> Path:
    """Export the causal LM saved in ``hf_dir`` to ONNX with grouped-query attention.

    Does what optimum's ``main_export(task="text-generation-with-past")`` does for these
    architectures — same ONNX config, model patcher, opset, post-processing and validation — except
    that the model is loaded here with :data:`GROUPED_ATTENTION`. Copying tokenizer files is the
    caller's job (optimum copies them only when it finds them through the model's config).

    Args:
        hf_dir: a directory written by ``save_pretrained``.
        out_dir: where ``model.onnx``, ``config.json`` and ``generation_config.json`` go (created).

    Returns:
        ``out_dir`` as a path.

    Raises:
        ValueError: if :func:`grouped_export_unsupported` rejects the model's config.
    """
    from optimum.exporters.onnx import onnx_export_from_model

    reason = grouped_export_unsupported(json.loads((Path(hf_dir) / "config.json").read_text()))
    if reason:
        raise ValueError(f"cannot export {hf_dir} with grouped attention: {reason}")
    model = load_grouped_model(hf_dir)
    # main_export sets this for *-with-past tasks: the graph takes and returns the KV cache.
    model.config.use_cache = True
    out = Path(out_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_export_from_model(model, output=str(out), task="text-generation-with-past", device="cpu")
    # The saved config must load anywhere, including where the grouped attention is not registered;
    # transformers does not serialize the attention implementation today, this guards against a change.
    config_path = out / "config.json"
    saved = json.loads(config_path.read_text())
    dropped = [saved.pop(k) for k in ("attn_implementation", "_attn_implementation") if k in saved]
    if dropped:
        config_path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    log.info("exported %s with grouped-query attention to %s", hf_dir, out)
    return out
