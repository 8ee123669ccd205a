"""Named model presets for the factory (gpt-fast ``ModelArgs.from_name`` style).

The ``act`` family, sized to train in minutes on two CPU cores:

- ``act-moe``: the teacher, a Qwen3-MoE (Mixtral-style: every layer's feed-forward block is 8
  experts, a router sends each token to 2, load-balancing aux loss on);
- ``act-dense``: the dense baseline with the same *active* parameters (a feed-forward block as
  wide as the two active experts together, same attention, same depth);
- ``act-student`` and ``act-student-xs``: smaller dense Qwen3 students for logit distillation.

``tiny`` and ``tiny-moe`` exist for the test pipeline only. The vocabulary size is not part of a
preset: it comes from the tokenizer trained on the data (:meth:`ModelArgs.hf_config`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class ModelArgs:
    """Shape of a model.

    Attributes:
        arch: transformers ``model_type``: ``qwen3`` (dense) or ``qwen3_moe``.
        hidden_size: width of the residual stream (D).
        num_hidden_layers: decoder layers.
        num_attention_heads: query heads.
        num_key_value_heads: key/value heads (grouped-query attention when fewer than queries).
        head_dim: size of each head.
        intermediate_size: feed-forward width of a dense layer.
        num_experts: experts per MoE layer (E); 0 for a dense model.
        num_experts_per_tok: experts each token is routed to (A).
        moe_intermediate_size: feed-forward width of one expert.
        router_aux_loss_coef: weight of the load-balancing loss (MoE only).
        max_position_embeddings: longest sequence (the ``act`` prompt is ~750 tokens with a 1.5k
            vocabulary, more with a smaller one; memories and utterances make it vary).
        rope_theta: rotary base.
    """

    arch: str = "qwen3"
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 256
    num_experts: int = 0
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 128
    router_aux_loss_coef: float = 0.01
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0

    @property
    def is_moe(self) -> bool:
        return self.arch == "qwen3_moe"

    @classmethod
    def from_name(cls, name: str) -> ModelArgs:
        """The preset called ``name``.

        Raises:
            KeyError: no such preset; the message lists them.
        """
        if name not in PRESETS:
            raise KeyError(f"unknown model preset {name!r}; choose from {', '.join(PRESETS)}")
        return PRESETS[name]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hf_config(self, vocab_size: int, eos_token_id: int, pad_token_id: int) -> Any:
        """The transformers config for this shape and a tokenizer's vocabulary and special ids."""
        from transformers import Qwen3Config, Qwen3MoeConfig

        common: dict[str, Any] = dict(
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            max_position_embeddings=self.max_position_embeddings,
            rope_theta=self.rope_theta,
            eos_token_id=eos_token_id,
            bos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            # Untied: with a ~1.5k vocabulary the head is cheap, and the ONNX export keeps it simple.
            tie_word_embeddings=False,
            attention_dropout=0.0,
        )
        if not self.is_moe:
            return Qwen3Config(**common, intermediate_size=self.intermediate_size)
        return Qwen3MoeConfig(
            **common,
            intermediate_size=self.intermediate_size,
            num_experts=self.num_experts,
            num_experts_per_tok=self.num_experts_per_tok,
            moe_intermediate_size=self.moe_intermediate_size,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            norm_topk_prob=True,
            output_router_logits=True,
            router_aux_loss_coef=self.router_aux_loss_coef,
        )


_TEACHER = ModelArgs(
    arch="qwen3_moe",
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    num_experts=8,
    num_experts_per_tok=2,
    moe_intermediate_size=128,
)

PRESETS: dict[str, ModelArgs] = {
    "act-moe": _TEACHER,
    # Same attention and depth; one dense feed-forward block as wide as the 2 active experts.
    "act-dense": replace(
        _TEACHER,
        arch="qwen3",
        num_experts=0,
        intermediate_size=_TEACHER.num_experts_per_tok * _TEACHER.moe_intermediate_size,
    ),
    "act-student": ModelArgs(
        hidden_size=96,
        num_hidden_layers=3,
        num_attention_heads=3,
        num_key_value_heads=1,
        head_dim=32,
        intermediate_size=192,
    ),
    "act-student-xs": ModelArgs(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=128,
    ),
    # The talk student: wider than the act models (free text, a 2k vocabulary), still ~1.3M
    # parameters; SmolLM2-135M-Instruct is its teacher (sequence-level distillation, exports.talk).
    "talk-student": ModelArgs(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=384,
        max_position_embeddings=1024,
    ),
    "tiny": ModelArgs(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=64,
    ),
    "tiny-moe": ModelArgs(
        arch="qwen3_moe",
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
    ),
}
"""Every named preset."""
