"""Tiny random models for tests and the serving benchmark, built in seconds with no downloads.

``build_tiny_model("qwen3_moe", out)`` creates a random transformers model of the named architecture
with a small trained BPE tokenizer, saves it (``out/hf``) and exports it to ONNX (``out/onnx``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from exports.tokenizer import save_tokenizer, special_ids, train_bpe


@dataclass(frozen=True)
class TinyArgs:
    """Shape of a tiny model (gpt-fast style named presets)."""

    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    max_position_embeddings: int = 4096
    num_experts: int = 0  # > 0 makes a sparse MoE (qwen3_moe)
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 64

    @classmethod
    def from_name(cls, name: str) -> TinyArgs:
        if name not in TINY_PRESETS:
            raise KeyError(f"unknown tiny preset {name!r}; choose from {', '.join(TINY_PRESETS)}")
        return TINY_PRESETS[name]


TINY_PRESETS: dict[str, TinyArgs] = {
    "test": TinyArgs(),
    "test-moe": TinyArgs(num_experts=8, num_experts_per_tok=2),
    # Shaped like a small real LM (grouped-query attention 8:2, head size 64), ~20M parameters:
    # big enough that compute, not Python overhead, sets the pace. Used by `murmurate bench serve`.
    "bench": TinyArgs(
        vocab_size=2048,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
    ),
}


def _hf_config(arch: str, args: TinyArgs, eos: int, pad: int):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config, Qwen3MoeConfig

    common = dict(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        num_key_value_heads=args.num_key_value_heads,
        max_position_embeddings=args.max_position_embeddings,
        eos_token_id=eos,
        bos_token_id=eos,
        pad_token_id=pad,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        return LlamaConfig(**common, head_dim=args.head_dim)
    if arch == "mistral":
        return MistralConfig(**common, head_dim=args.head_dim, sliding_window=None)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "qwen3":
        return Qwen3Config(**common, head_dim=args.head_dim)
    if arch == "qwen3_moe":
        return Qwen3MoeConfig(
            **common,
            head_dim=args.head_dim,
            num_experts=args.num_experts or 8,
            num_experts_per_tok=args.num_experts_per_tok,
            moe_intermediate_size=args.moe_intermediate_size,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            norm_topk_prob=True,
        )
    raise ValueError(f"unknown architecture {arch!r}")


def build_tiny_model(
    arch: str,
    out_dir: str | Path,
    preset: str = "test",
    seed: int = 0,
    name: str | None = None,
    last_token: bool = False,
    sparse_moe: bool = False,
) -> Path:
    """Build, save and export a random tiny model; returns the ONNX model directory.

    Args:
        arch: ``llama``, ``mistral``, ``qwen2``, ``qwen3`` or ``qwen3_moe``.
        out_dir: parent directory; ``hf/`` (transformers) and ``onnx/`` (runtime) are created inside.
        preset: a key of :data:`TINY_PRESETS`.
        seed: torch seed for the random weights.
        name: model name in the manifest (default ``tiny-<arch>``).
        last_token: export logits for the last position only (see ``exports.onnx_export``).
        sparse_moe: export a ``qwen3_moe`` with ``MoE`` nodes (off: the graph as optimum makes it,
            which the graph-rewrite tests rewrite themselves).
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from exports.onnx_export import export_model

    args = TinyArgs.from_name(preset)
    if arch == "qwen3_moe" and not args.num_experts:
        args = TinyArgs(**{**asdict(args), "num_experts": 8})
    out = Path(out_dir)
    hf_dir = out / "hf"
    tok = train_bpe(vocab_size=args.vocab_size)
    ids = special_ids(tok)
    config = _hf_config(arch, args, ids["eos"], ids["pad"])
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    # Random init gives near-uniform logits; a larger output scale makes greedy choices decisive so
    # token-for-token parity tests are not decided by float noise between near-equal logits.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    model.generation_config = GenerationConfig(
        eos_token_id=ids["eos"], pad_token_id=ids["pad"], bos_token_id=ids["eos"]
    )
    model.save_pretrained(hf_dir)
    save_tokenizer(tok, hf_dir, model_max_length=args.max_position_embeddings)
    return export_model(
        hf_dir,
        out / "onnx",
        name or f"tiny-{arch}",
        extra={"built_by": f"exports.tiny preset={preset} seed={seed}"},
        last_token=last_token,
        sparse_moe=sparse_moe,
    )
