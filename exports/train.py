"""Train an ``act`` model in torch: seeded, resumable, loss on the target tokens only, held-out eval.

Usage::

    python -m exports.dataset /tmp/act.jsonl
    python -m exports.train --data /tmp/act.jsonl --preset act-moe --out /tmp/act-moe
    python -m exports.train --data /tmp/act.jsonl --preset act-dense --out /tmp/act-dense \\
        --tokenizer /tmp/act-moe/hf
    python -m exports.distill --data /tmp/act.jsonl --teacher /tmp/act-moe/hf --out /tmp/act-student

``OUT/hf`` is a ``save_pretrained`` directory with the tokenizer, ready for
``exports.onnx_export.export_model``; ``OUT/checkpoint.pt`` is saved every ``save_every`` steps and
``--resume`` continues from it; ``OUT/metrics.json`` holds the final evaluation.

**Why the shared prefix.** Every ``act`` prompt starts with the same world rules (~500 of its ~750
tokens). Causal attention makes the rules' keys and values identical for every example, so each
step runs the rules once (batch 1), repeats their KV cache across the batch and runs only the rest:
the same function as full-prompt training (the model sees exactly the runtime's token ids) for about
a third of the compute. Gradients flow through the repeated cache into the prefix computation.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from exports.dataset import (
    ActDataset,
    Encoded,
    encode_split,
    load_dataset,
    prepare_tokenizer,
)
from exports.presets import ModelArgs
from exports.tokenizer import runtime_tokenizer

IGNORE = -100
HELDOUT = ("heldout_seed", "heldout_persona")


@dataclass(frozen=True)
class TrainConfig:
    """How to train (the model's shape is the preset's).

    Attributes:
        preset: a :data:`exports.presets.PRESETS` name.
        steps: optimizer steps in all (the learning-rate schedule spans them).
        batch_size: examples per step.
        lr: peak learning rate (AdamW), reached after ``warmup`` steps, then cosine to
            ``lr * min_lr_ratio``.
        weight_decay: AdamW weight decay on matrices.
        grad_clip: gradient norm clip.
        seed: seeds the initial weights and the order of examples.
        save_every: checkpoint interval in steps.
        log_every: interval of the ``log.jsonl`` records.
        eval_examples: examples evaluated per held-out split (0: all).
        vocab_size: BPE vocabulary when the tokenizer is trained here.
        threads: torch intra-op threads (the machine is shared).
        device: where torch trains: ``cpu``, ``cuda`` (``cuda:N``) or ``auto`` (a GPU when torch
            sees one). Like ``threads`` it changes speed, not the recipe (float results differ
            within rounding), so checkpoints resume across devices.
        init: start from the weights in this ``save_pretrained`` directory (same preset, and its
            tokenizer) instead of a random init: to continue training with a fresh schedule.
        teacher: a teacher's ``save_pretrained`` directory: enables logit distillation.
        temperature: distillation temperature.
        alpha: weight of the distillation KL; ``1 - alpha`` weighs the cross-entropy on the
            expert's tokens.
        balance: 0 draws each step's examples uniformly (epoch-wise permutations); above 0 each
            example is drawn with probability ∝ (examples of its action kind)^-balance, so rare
            decisions (a sale, a trade, a talk) are seen more often — 0.5 draws each kind in
            proportion to the square root of its count.
        skip_segments: train on prompts without their first N segments (1: without the world's
            rules, which every prompt repeats word for word, so a model that learned them need not
            read them). Saved in the model's config (``prompt_skip_segments``); the runtime drops
            the same segments for it.
        rename: share of the drawn examples whose villagers are renamed at random (consistently in
            prompt and target; :mod:`exports.augment`), so the model learns to copy names from the
            prompt instead of the names of its training worlds.
        reorder: share of the drawn examples whose agents within reach and offers are shuffled and
            labelled anew by the scripted expert (:func:`exports.augment.reorder`), so the model
            learns the rules that pick a partner from an ordered list.
    """

    preset: str = "act-moe"
    steps: int = 800
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 100
    log_every: int = 10
    eval_examples: int = 600
    vocab_size: int = 1536
    threads: int = 1
    device: str = "cpu"
    init: str | None = None
    teacher: str | None = None
    temperature: float = 2.0
    alpha: float = 0.7
    balance: float = 0.0
    skip_segments: int = 0
    rename: float = 0.0
    reorder: float = 0.0


def make_batch(enc: Encoded, idx: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded suffixes and the flat positions whose next-token logits are scored.

    With right padding no attention mask is needed: under causal attention no real token sees the
    padding after it. Returns ``ids`` (B, T), ``rows``/``cols`` (N,) hidden positions that predict
    ``labels`` (N,), the target tokens, and ``mask`` (B, T) marking real tokens.
    """
    T = max(len(enc.suffix[i]) for i in idx)
    ids = torch.full((len(idx), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), T), dtype=torch.long)
    rows, cols, labels = [], [], []
    for b, i in enumerate(idx):
        seq, n = enc.suffix[i], enc.n_prompt[i]
        ids[b, : len(seq)] = torch.tensor(seq)
        mask[b, : len(seq)] = 1
        for j in range(n, len(seq)):  # the hidden state at j-1 predicts token j
            rows.append(b)
            cols.append(j - 1)
            labels.append(seq[j])
    return {
        "ids": ids,
        "mask": mask,
        "rows": torch.tensor(rows),
        "cols": torch.tensor(cols),
        "labels": torch.tensor(labels),
    }


def resolve_device(name: str) -> torch.device:
    """The torch device ``name`` stands for (``auto``: the first GPU if torch sees one, else CPU).

    Raises:
        ValueError: a GPU was asked for and torch sees none (a CPU-only build, or no driver).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: torch {torch.__version__} sees no CUDA device; use cpu or auto")
    return dev


def _device_of(model: Any) -> torch.device:
    return next(model.parameters()).device


def prefix_cache(model: Any, prefix: list[int], batch: int) -> Any:
    """Run the shared prefix once and repeat its KV cache ``batch`` times (differentiable)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    if prefix:
        ids = torch.tensor([prefix], device=_device_of(model))
        model.model(input_ids=ids, past_key_values=cache, use_cache=True)
        cache.batch_repeat_interleave(batch)
    return cache


def target_logits(model: Any, prefix: list[int], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
    """Logits at the scored positions: the last layer, the final norm and the output layer run
    only there (``exports.target_forward``); every other layer runs at every position.

    Returns:
        ``(logits (N, V), aux)``: ``aux`` is the router load-balancing loss for a MoE (over the
        real suffix tokens of layers ``0 .. L-2`` and the scored tokens of the last layer, the
        tokens whose routing reaches the loss), else ``None``.
    """
    from exports.target_forward import balance_loss, hidden_before_last_layer, last_layer_at

    batch = {k: v.to(_device_of(model)) for k, v in batch.items()}
    ids = batch["ids"]
    B, T = ids.shape
    P = len(prefix)
    cache = prefix_cache(model, prefix, B)
    moe = getattr(model.config, "num_experts", 0) > 0
    pos = torch.arange(P, P + T, device=ids.device).unsqueeze(0).expand(B, -1)
    out = hidden_before_last_layer(model, ids, pos, cache, moe)
    hidden, router = last_layer_at(model, out.last_hidden_state, pos, cache, P, batch["rows"], batch["cols"])
    logits = model.lm_head(hidden)  # (N, V)
    aux = None
    if moe:
        real = batch["mask"].reshape(-1).bool()
        routed = [r[real] for r in out.router_logits or ()] + [router]  # (None with one layer)
        aux = balance_loss(routed, model.config.num_experts, model.config.num_experts_per_tok)
    return logits, aux


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup then cosine decay; a pure function of the step, so resuming needs no state."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (
        cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
    )


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The examples of ``step``: epoch-wise seeded permutations, a pure function of the step."""
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return [int(i) for i in perm[k * batch_size : (k + 1) * batch_size]]


def example_kind(target: str) -> str:
    """An example's action kind: the ``action`` field of its JSON target (the whole text if none)."""
    try:
        kind = json.loads(target).get("action")
    except (ValueError, AttributeError):
        kind = None
    return kind if isinstance(kind, str) else target


def kind_weights(targets: Sequence[str], balance: float) -> np.ndarray:
    """Sampling probabilities ∝ (examples of the same kind)^-balance, summing to 1."""
    _, inverse, counts = np.unique(
        [example_kind(t) for t in targets], return_inverse=True, return_counts=True
    )
    w = counts[inverse].astype(np.float64) ** -balance
    return w / w.sum()


def balanced_indices(p: np.ndarray, batch_size: int, step: int, seed: int) -> list[int]:
    """The examples of ``step`` drawn with probabilities ``p`` (with replacement), a pure function
    of the step like :func:`batch_indices`."""
    rng = np.random.default_rng([seed, step, 0xBA1])
    return [int(i) for i in rng.choice(len(p), size=batch_size, p=p)]


def build_model(args: ModelArgs, tok_dir: Path, seed: int) -> Any:
    """A freshly initialized model of shape ``args`` for the tokenizer saved in ``tok_dir``."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    tok, eos, pad = runtime_tokenizer(tok_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(args.hf_config(tok.vocab_size, eos, pad))
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, bos_token_id=eos)
    return model


def _optimizer(model: Any, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No decay on norms, biases and the router's small matrices stay decayed like any matrix.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def _run_key(cfg: TrainConfig, data: ActDataset) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the configuration, the data's spec and the
    observation text it carries (a checkpoint on other data, or from before an observation change,
    is another run)."""
    return {**asdict(cfg), "data": asdict(data.spec), "observation": data.observation}


def _save_checkpoint(
    path: Path, model: Any, opt: torch.optim.Optimizer, step: int, key: dict[str, Any]
) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "step": step, "config": key}, tmp)
    os.replace(tmp, path)  # atomic: an interruption mid-save keeps the previous checkpoint


def _same_run(saved: dict[str, Any], cfg: dict[str, Any]) -> bool:
    """Whether a checkpoint's configuration is ``cfg``'s, threads and device aside (speed only)."""
    strip = ("threads", "device")
    return {k: v for k, v in saved.items() if k not in strip} == {
        k: v for k, v in cfg.items() if k not in strip
    }


def _truncate_log(path: Path, step: int) -> None:
    """Drop log records after ``step``: a run killed between checkpoints logged steps it will redo."""
    if path.exists():
        keep = [ln for ln in path.read_text().splitlines() if json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in keep))


def train(
    cfg: TrainConfig,
    data: ActDataset,
    out_dir: str | Path,
    *,
    tokenizer: str | Path | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    evaluate_at_end: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or distill, if ``cfg.teacher``) a model on ``data['train']``.

    Args:
        cfg: the training configuration.
        data: the dataset (held-out splits are used only for evaluation).
        out_dir: run directory (``hf/``, ``checkpoint.pt``, ``log.jsonl``, ``metrics.json``).
        tokenizer: a directory with tokenizer files to use (ignored when distilling: the student
            takes the teacher's, so their logits line up); trained on the data when omitted.
        resume: continue from ``out_dir/checkpoint.pt`` if it exists.
        stop_after: stop once this step is reached (the schedule still spans ``cfg.steps``), as if
            interrupted; for time-boxed runs.
        evaluate_at_end: run the held-out evaluation after the last step.
        progress: show a progress bar.

    Returns:
        The metrics (also written to ``metrics.json``): final training loss, wall time, tokens, and
        per held-out split the loss and exact-match accuracy.
    """
    from exports.augment import augmented_batch, make_shuffler
    from exports.distill import distill_loss, load_teacher
    from exports.evaluate import evaluate

    if cfg.teacher and cfg.skip_segments:
        raise ValueError("distillation feeds the teacher the student's tokens: train with skip_segments=0")
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    out = Path(out_dir)
    hf_dir = out / "hf"
    prepare_tokenizer(hf_dir, data, cfg.teacher or cfg.init or tokenizer, cfg.vocab_size)
    tok, eos_id, pad_id = runtime_tokenizer(hf_dir, skip_segments=cfg.skip_segments)
    enc = encode_split(tok, data["train"], eos_id)
    args = ModelArgs.from_name(cfg.preset)
    longest = len(enc.prefix) + max(len(s) for s in enc.suffix)
    if longest > args.max_position_embeddings:
        raise ValueError(
            f"the longest example has {longest} tokens but preset {cfg.preset!r} holds "
            f"{args.max_position_embeddings}; use a larger vocabulary or a preset with a longer context"
        )
    model = build_model(args, hf_dir, cfg.seed)
    if cfg.skip_segments:
        model.config.prompt_skip_segments = cfg.skip_segments
    if cfg.init:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(Path(cfg.init) / "model.safetensors"))  # strict: same shape
    model.to(device)
    opt = _optimizer(model, cfg)
    teacher = load_teacher(cfg.teacher).to(device) if cfg.teacher else None
    ckpt_path = out / "checkpoint.pt"
    start = 0
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False, map_location=device)
        if _same_run(state.get("config", {}), _run_key(cfg, data)):
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optim"])
            start = state["step"]
            _truncate_log(out / "log.jsonl", start)
        else:
            # Another configuration's checkpoint (other steps, seed, preset...): start over.
            log_path = out / "log.jsonl"
            if log_path.exists():
                log_path.unlink()
            if progress:
                print(f"{ckpt_path}: made with another configuration; starting over", file=sys.stderr)
    end = min(cfg.steps, stop_after) if stop_after is not None else cfg.steps
    model.train()
    log = (out / "log.jsonl").open("a")
    t0, tokens, loss_ema = time.time(), 0, None
    bar = tqdm(
        range(start, end), desc=f"train {cfg.preset}", initial=start, total=cfg.steps, disable=not progress
    )
    p = kind_weights([e.target for e in enc.examples], cfg.balance) if cfg.balance else None
    shuffler = make_shuffler(data) if cfg.rename else None
    augment = bool(cfg.rename or cfg.reorder)
    for step in bar:
        if p is None:
            idx = batch_indices(len(enc.suffix), cfg.batch_size, step, cfg.seed)
        else:
            idx = balanced_indices(p, cfg.batch_size, step, cfg.seed)
        if augment:  # seeded by step: a resumed run draws the same variations
            rng = np.random.default_rng([cfg.seed, 3, step])
            varied = augmented_batch(
                enc, idx, tok, eos_id, rng, shuffler=shuffler, rename=cfg.rename, reorder_share=cfg.reorder
            )
            batch = make_batch(varied, range(len(idx)), pad_id)
        else:
            batch = make_batch(enc, idx, pad_id)
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits, aux = target_logits(model, enc.prefix, batch)
        ce = F.cross_entropy(logits, batch["labels"])
        loss = ce
        if teacher is not None:
            with torch.no_grad():
                t_logits, _ = target_logits(teacher, enc.prefix, batch)
            loss = distill_loss(logits, t_logits, batch["labels"], cfg.temperature, cfg.alpha)
        if aux is not None:
            loss = loss + args.router_aux_loss_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        tokens += int(batch["mask"].sum()) + len(enc.prefix)
        ce_val = ce.item()
        loss_ema = ce_val if loss_ema is None else 0.95 * loss_ema + 0.05 * ce_val
        bar.set_postfix(ce=f"{loss_ema:.4f}", lr=f"{lr_at(cfg, step):.1e}")
        if (step + 1) % cfg.log_every == 0:
            rec = {
                "step": step + 1,
                "ce": ce_val,
                "loss": loss.item(),
                "aux": None if aux is None else aux.item(),
            }
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if (step + 1) % cfg.save_every == 0 or step + 1 == end:
            _save_checkpoint(ckpt_path, model, opt, step + 1, _run_key(cfg, data))
    bar.close()
    log.close()
    wall = time.time() - t0
    model.eval()
    model.save_pretrained(hf_dir)
    before = 0.0  # training time of the earlier runs this one resumed
    if start > 0 and (out / "metrics.json").is_file():
        prev = json.loads((out / "metrics.json").read_text())
        before = prev.get("wall_s_total", prev.get("wall_s_this_run") or 0.0)
    metrics: dict[str, Any] = {
        "preset": cfg.preset,
        "config": asdict(cfg),
        "model": args.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps_done": end,
        "train_examples": len(enc.suffix),
        "prefix_tokens": len(enc.prefix),
        "mean_example_tokens": len(enc.prefix) + float(np.mean([len(s) for s in enc.suffix])),
        "train_ce_ema": loss_ema,
        "wall_s_this_run": round(wall, 1),
        "wall_s_total": round(before + wall, 1),
        "tokens_per_s_this_run": round(tokens / wall, 1) if wall > 0 else None,
    }
    if evaluate_at_end and end == cfg.steps:
        for split in HELDOUT:
            metrics[split] = evaluate(
                model, tok, data[split], limit=cfg.eval_examples, world=data.spec.world, progress=progress
            )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def main(argv: Sequence[str] | None = None, *, defaults: TrainConfig | None = None) -> dict[str, Any]:
    """Command line: ``python -m exports.train --data D.jsonl --preset P --out DIR [--resume]``."""
    import argparse

    defaults = defaults or TrainConfig()
    p = argparse.ArgumentParser(description="Train an act model (see exports/train.py).")
    p.add_argument("--data", type=Path, required=True, help="a dataset from exports.dataset")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tokenizer", type=Path, default=None, help="directory with tokenizer files to reuse")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--stop-after", type=int, default=None, help="stop at this step (resume later)")
    for name, value in asdict(defaults).items():
        kind = type(value) if value is not None else str
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=value)
    ns = vars(p.parse_args(argv))
    data = load_dataset(ns.pop("data"))
    out, tokenizer, resume, stop_after = (
        ns.pop("out"),
        ns.pop("tokenizer"),
        ns.pop("resume"),
        ns.pop("stop_after"),
    )
    metrics = train(TrainConfig(**ns), data, out, tokenizer=tokenizer, resume=resume, stop_after=stop_after)
    summary = {k: v for k, v in metrics.items() if k in HELDOUT}
    print(json.dumps({"wall_s": metrics["wall_s_this_run"], **summary}, indent=2))
    return metrics


if __name__ == "__main__":
    main()
