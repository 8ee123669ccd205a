"""Logit distillation: a dense student learns the MoE teacher's next-token distributions.

The student trains on the same ``act`` data as the teacher, with the teacher run alongside (frozen,
same shared-prefix forward, see :mod:`exports.train`). On each target position the loss mixes the
KL divergence from the teacher's softened distribution (Hinton et al.: temperature ``T``, scaled by
``T**2`` so its gradients keep their size as ``T`` grows) with the ordinary cross-entropy on the
expert's tokens. The teacher's full distribution carries what its argmax hides — how close the
runner-up tokens were — which is what lets a smaller model match it with less data.

Usage::

    python -m exports.distill --data /tmp/act.jsonl --teacher /tmp/act-moe/hf --out /tmp/act-student
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.7,
) -> torch.Tensor:
    """``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)``.

    Args:
        student_logits: (N, V) at the target positions.
        teacher_logits: (N, V) at the same positions.
        labels: (N,) the expert's tokens.
        temperature: softening temperature ``T`` (> 0).
        alpha: weight of the KL term in [0, 1].
    """
    if temperature <= 0 or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"need temperature > 0 and 0 <= alpha <= 1, got {temperature}, {alpha}")
    log_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")
    ce = F.cross_entropy(student_logits, labels)
    return alpha * temperature**2 * kl + (1 - alpha) * ce


def load_teacher(hf_dir: str | Path) -> Any:
    """The teacher from its ``save_pretrained`` directory: eval mode, gradients off."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m exports.distill --teacher DIR ...``: :func:`exports.train.main` with student
    defaults (preset ``act-student``); ``--teacher`` is required."""
    from exports.train import TrainConfig
    from exports.train import main as train_main

    args = list(argv) if argv is not None else __import__("sys").argv[1:]
    if "--teacher" not in args:
        raise SystemExit("exports.distill needs --teacher HF_DIR (a trained teacher's hf directory)")
    return train_main(args, defaults=TrainConfig(preset="act-student"))


if __name__ == "__main__":
    main()
