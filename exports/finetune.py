"""Fine-tune an act model further on its own dataset: ``murmurate models finetune``.

A build ends its student with a short polish; more steps from those weights, on the training split
with rare decisions drawn more often and half the drawn villagers renamed (the polish's recipe), keep
lowering the held-out error (docs/models.md). This runs such a fine-tune on any act model directory
and writes a new, carded model directory:

- the starting weights are the model's transformers weights (``hf/``), or, for a model that ships as
  ONNX only (the teacher, the dense baseline), its weights read back out of ``model.onnx``
  (:mod:`exports.recover`);
- the data is the dataset the model was built from (:func:`exports.card.card_dataset`), or a file;
- the run is :func:`exports.train.train` with a fresh schedule (resumable: re-running the same
  command continues an interrupted run), the same preset and the segments the model skips;
- the new directory's card keeps the source card's record of how it was built, adds a
  ``fine_tune`` record, and re-measures held-out accuracy and decisions/s in the runtime; with
  ``int8`` an int8 copy is written beside it if it agrees with the fp32 model greedily.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

INT8_PROMPTS, INT8_MIN_AGREEMENT = 64, 0.97
"""The int8 copy's agreement check, as the full build makes it."""


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune (``exports.train.TrainConfig`` fields; the preset is the model's own).

    Attributes:
        steps: optimizer steps (the cosine schedule spans them; warm-up is a twentieth).
        lr: peak learning rate.
        batch_size: examples per step.
        balance: sampling by action kind (0.5: each kind in proportion to the square root of its count).
        rename: share of drawn examples with their villagers renamed at random.
        reorder: share of drawn examples with the agents within reach reordered and relabelled.
        seed: the order of examples and the augmentations.
        threads: torch threads.
        card_examples: held-out examples per split measured through the runtime for the card.
        speed_batch: prompts in the decisions/s measurement.
    """

    steps: int = 4000
    lr: float = 1e-3
    batch_size: int = 32
    balance: float = 0.5
    rename: float = 0.5
    reorder: float = 0.0
    seed: int = 100
    threads: int = 1
    card_examples: int = 300
    speed_batch: int = 64


def _start_weights(model_dir: Path, work: Path) -> Path:
    """A ``save_pretrained`` copy of the model's weights in ``work/init``."""
    from exports.recover import recover_weights
    from runtime.artifacts import hf_weights_dir, load_model_dir

    init = work / "init"
    if (init / "model.safetensors").is_file():
        return init
    hf = hf_weights_dir(load_model_dir(model_dir))
    if (hf / "model.safetensors").is_file():
        shutil.copytree(hf, init, dirs_exist_ok=True)
    else:
        check = recover_weights(model_dir, init)
        if check["max_abs_diff"] != 0.0:
            raise ValueError(f"{model_dir}: weights read back from model.onnx do not reproduce it")
    config = json.loads((init / "config.json").read_text())
    if config.get("num_experts"):  # train with the MoE load-balancing loss, as the build does
        (init / "config.json").write_text(json.dumps({**config, "output_router_logits": True}, indent=2))
    return init


def finetune_model(
    model_dir: str | Path,
    out: str | Path,
    cfg: FinetuneConfig = FinetuneConfig(),
    *,
    name: str | None = None,
    data_path: str | Path | None = None,
    int8: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune the act model in ``model_dir`` and write it to ``out`` (see the module docstring).

    The work (starting weights, checkpoints, logs) goes to ``<out>/../.build/finetune-<name>-<source
    graph's sha256 prefix>``: re-running the same command resumes it.
    Returns the new card (and ``int8``'s agreement check under ``"int8"`` when asked).

    Raises:
        ValueError: for a model without a card naming its act preset.
    """
    from exports.card import card_dataset, read_model_card
    from exports.onnx_export import export_trained
    from exports.plan import TEACHER
    from exports.train import TrainConfig, train
    from runtime.artifacts import load_model_dir

    model_dir, out = Path(model_dir).resolve(), Path(out).resolve()
    card = read_model_card(model_dir) or {}
    built = card.get("built") or {}
    if card.get("task") != "act" or not built.get("preset"):
        raise ValueError(f"{model_dir} has no act model card naming its preset; only act models fine-tune")
    if card.get("quantized"):
        raise ValueError(f"{model_dir} is quantized; fine-tune the model it was made from")
    name = name or out.name
    # The speed-up is against the teacher beside the source model (the build's layout), if any.
    teacher = model_dir.parent / TEACHER
    teacher = teacher if (teacher / "murmurate.json").is_file() and teacher != model_dir else None
    source = load_model_dir(model_dir)  # checked against its manifest
    # Keyed by the source graph: a re-run resumes its own run, never one from other starting weights
    # (after an in-place fine-tune the directory holds new weights, so a second one starts afresh).
    graph_sha = source.manifest["files"]["model.onnx"][:12]
    work = out.parent / ".build" / f"finetune-{name}-{graph_sha}"
    work.mkdir(parents=True, exist_ok=True)
    init = _start_weights(model_dir, work)
    data = card_dataset(model_dir, data_path)
    skip = source.info.skip_segments
    run_cfg = TrainConfig(
        preset=built["preset"],
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        warmup=max(cfg.steps // 20, 1),
        seed=cfg.seed,
        threads=cfg.threads,
        init=str(init),
        balance=cfg.balance,
        rename=cfg.rename,
        reorder=cfg.reorder,
        skip_segments=skip,
    )
    t0 = time.perf_counter()
    metrics = train(run_cfg, data, work / "run", tokenizer=init, resume=True, progress=progress)
    wall = time.perf_counter() - t0
    extra = {k: source.manifest[k] for k in ("task", "preset", "seed", "build_scale") if k in source.manifest}
    export_trained(work / "run" / "hf", work / "export-src", out, name, extra, keep_hf=True)
    how = {k: v for k, v in asdict(cfg).items() if k not in ("card_examples", "speed_batch")}
    record = {
        "from": card.get("name", model_dir.name),
        **how,
        "data": data.counts(),
        "wall_s": round(wall, 1),
    }
    new_card = _write_card(out, teacher, card, data, metrics, record, cfg)
    result: dict[str, Any] = {"card": new_card}
    if int8:
        result["int8"] = _int8_copy(out, data, cfg, teacher)
    return result


def _heldout(model_dir: Path, data: Any, metrics: dict[str, Any], n: int, fp32: bool) -> dict[str, Any]:
    from exports.card import runtime_accuracy

    heldout = {}
    for split in ("heldout_seed", "heldout_persona"):
        served = runtime_accuracy(model_dir, data[split], limit=n)
        free = runtime_accuracy(model_dir, data[split], limit=n, choices=False)
        torch_m = metrics.get(split, {}) if fp32 else {}
        heldout[split] = {
            "loss": torch_m.get("loss"),
            "exact_match_unconstrained": torch_m.get("exact_match"),
            "n_unconstrained": torch_m.get("n"),
            "exact_match": served["exact_match"],
            "exact_match_free_choices": free["exact_match"],
            "n": served["n"],
        }
    return heldout


def _speed(model_dir: Path, data: Any, n: int, teacher: Path | None) -> dict[str, Any]:
    """Decisions/s, and the teacher's in the same run when there is one."""
    from exports.card import measure_decisions_per_s

    prompts = [ex.prompt for ex in data["heldout_seed"][:n]]
    runtime = measure_decisions_per_s(model_dir, prompts)
    if teacher is not None and teacher.resolve() != model_dir.resolve():
        rate = measure_decisions_per_s(teacher, prompts)["decisions_per_s"]
        runtime["teacher_decisions_per_s_same_run"] = rate
        runtime["speedup_vs_teacher"] = round(runtime["decisions_per_s"] / rate, 2)
    return runtime


def _write_card(
    out: Path,
    teacher: Path | None,
    card: dict[str, Any],
    data: Any,
    metrics: dict[str, Any],
    record: dict[str, Any],
    cfg: FinetuneConfig,
) -> dict[str, Any]:
    from exports.card import write_model_card

    built = {**(card.get("built") or {}), "fine_tune": record}
    return write_model_card(
        out,
        task="act",
        world=card.get("world") or data.spec.world,
        heldout=_heldout(out, data, metrics, cfg.card_examples, fp32=True),
        runtime=_speed(out, data, cfg.speed_batch, teacher),
        built=built,
    )


def _int8_copy(out: Path, data: Any, cfg: FinetuneConfig, teacher: Path | None) -> dict[str, Any]:
    """An int8 copy ``<out>-int8`` beside ``out``, kept if it agrees with ``out`` greedily."""
    from exports.card import action_constraint, read_model_card, write_model_card
    from exports.quantize import greedy_agreement, quantize_model_dir

    dst = out.parent / f"{out.name}-int8"
    quantize_model_dir(out, dst, name=dst.name)
    heldout = data["heldout_persona"] + data["heldout_seed"]
    prompts = [ex.prompt for ex in heldout[:INT8_PROMPTS]]
    check = greedy_agreement(out, dst, prompts, constraint=action_constraint())
    check["min_agreement"] = INT8_MIN_AGREEMENT
    check["kept"] = check["agreement"] >= INT8_MIN_AGREEMENT
    if not check["kept"]:
        shutil.rmtree(dst)
        return check
    card = read_model_card(out) or {}
    write_model_card(
        dst,
        task="act",
        world=card.get("world"),
        heldout=_heldout(dst, data, {}, cfg.card_examples, fp32=False),
        runtime=_speed(dst, data, cfg.speed_batch, teacher),
        built=card.get("built"),
        int8_check=check,
    )
    write_model_card(out, **{k: v for k, v in card.items() if k not in ("format",)}, int8_check=check)
    return check
