"""Fine-tune an act model further on its own dataset: ``murmurate models finetune``.

A build ends its student with a short polish; more steps from those weights, on the training split
with rare decisions drawn more often and half the drawn villagers renamed (the polish's recipe), keep
lowering the held-out error (docs/models.md). This runs such a fine-tune on any act model directory
and writes a new, carded model directory:

- the starting weights are the model's transformers weights (``hf/``), or, for a model that ships as
  ONNX only (the teacher, the dense baseline), its weights read back out of ``model.onnx``
  (:mod:`exports.recover`);
- the data is the dataset the model was built from (:func:`exports.card.card_dataset`), that
  dataset with more of its training worlds' decisions kept (``train_sample_rate``), or a file; data
  other than the build's has its spec in the ``fine_tune`` record;
- the run is :func:`exports.train.train` with a fresh schedule (resumable: re-running the same
  command continues an interrupted run), the same preset and the segments the model skips (or more:
  a teacher can learn to decide without the world's rules, as the lean student does);
- the new directory ships as the source did (with or without its transformers weights in ``hf/``);
  its card keeps the source card's record of how it was built, adds a ``fine_tune`` record (which
  holds the source's own under ``previous``), and
  re-measures held-out accuracy and decisions/s in the runtime; with ``int8`` an int8 copy is
  written beside it if it agrees with the fp32 model greedily.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from exports.train import TrainConfig

INT8_PROMPTS, INT8_MIN_AGREEMENT = 64, 0.97
"""The int8 copy's agreement check, as the full build makes it."""


FINETUNE = TrainConfig(steps=4000, lr=1e-3, balance=0.5, rename=0.5, seed=100)
"""The default run: the polish's recipe (rare decisions drawn more often, half the drawn villagers
renamed) for 4,000 steps. Its preset, warm-up (a twentieth of the steps), starting weights and
skipped segments are set from the model by :func:`finetune_model`."""
RECORDED = ("steps", "lr", "batch_size", "balance", "rename", "reorder", "seed", "threads")
"""The run's fields a card's ``fine_tune`` record keeps."""


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
    cfg: TrainConfig = FINETUNE,
    *,
    card_examples: int = 300,
    speed_batch: int = 64,
    name: str | None = None,
    data_path: str | Path | None = None,
    train_sample_rate: float | None = None,
    skip_segments: int | None = None,
    int8: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune the act model in ``model_dir`` and write it to ``out`` (see the module docstring).

    The work (starting weights, checkpoints, logs) goes to ``<out>/../.build/finetune-<name>-<source
    graph's sha256 prefix>``: re-running the same command resumes it.
    ``cfg`` is the run (:data:`FINETUNE` by default; its preset, warm-up, starting weights and skipped
    segments are the model's); ``card_examples`` held-out examples per split are measured through the
    runtime for the card, ``speed_batch`` prompts time its decisions/s. ``data_path`` or
    ``train_sample_rate`` (not both) replace the build's data (see the module docstring).
    Returns the new card (and ``int8``'s agreement check under ``"int8"`` when asked).

    Raises:
        ValueError: for a model without a card naming its act preset, or a negative ``skip_segments``.
    """
    from exports.card import card_dataset, measure_decisions_per_s, read_model_card, write_model_card
    from exports.dataset import DatasetSpec
    from exports.evaluate import heldout_losses
    from exports.onnx_export import export_trained
    from exports.plan import TEACHER
    from exports.train import train
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
    skip = source.info.skip_segments if skip_segments is None else int(skip_segments)
    if skip < 0:
        raise ValueError(f"skip_segments is {skip}; it counts leading prompt segments, 0 or more")
    # Keyed by the source graph: a re-run resumes its own run, never one from other starting weights
    # (after an in-place fine-tune the directory holds new weights, so a second one starts afresh),
    # and by the segments it skips when they are not the source's.
    graph_sha = source.manifest["files"]["model.onnx"][:12]
    lean = "" if skip == source.info.skip_segments else f"-skip{skip}"
    work = out.parent / ".build" / f"finetune-{name}-{graph_sha}{lean}"
    work.mkdir(parents=True, exist_ok=True)
    init = _start_weights(model_dir, work)
    data = card_dataset(model_dir, data_path, train_sample_rate)
    run_cfg = replace(
        cfg,
        preset=built["preset"],
        warmup=max(cfg.steps // 20, 1),
        init=str(init),
        teacher=None,
        skip_segments=skip,
    )
    t0 = time.perf_counter()
    metrics = train(run_cfg, data, work / "run", tokenizer=init, resume=True, progress=progress)
    wall = time.perf_counter() - t0
    extra = {k: source.manifest[k] for k in ("task", "preset", "seed", "build_scale") if k in source.manifest}
    # It ships as its source did: with its transformers weights (a student, for the baselines) or
    # as ONNX only (the teacher and dense baseline: their weights stay in the work directory).
    keep_hf = (model_dir / "hf" / "model.safetensors").is_file()
    export_trained(work / "run" / "hf", work / "export-src", out, name, extra, keep_hf=keep_hf)
    record = {
        "from": card.get("name", model_dir.name),
        **{k: getattr(cfg, k) for k in RECORDED},
        "skip_segments": skip,
        "data": data.counts(),
        "wall_s": round(wall, 1),
    }
    if data.spec != DatasetSpec(**built.get("dataset_spec", {})):  # other data than the build's
        record["dataset_spec"] = asdict(data.spec)
    if built.get("fine_tune"):  # a fine-tune of a fine-tune keeps the chain
        record["previous"] = built["fine_tune"]
    # The held-out loss over every held-out example, beside the training run's sampled figures.
    for split, full in heldout_losses(work / "run" / "hf", data).items():
        metrics[split] = {
            **metrics.get(split, {}),
            "loss_all": full["loss"],
            "loss_all_tokens": full["tokens"],
        }
    prompts = [ex.prompt for ex in data["heldout_seed"][:speed_batch]]
    # The teacher is timed once, on the same prompts, for the speed-up of every model written here.
    teacher_rate = measure_decisions_per_s(teacher, prompts)["decisions_per_s"] if teacher else None

    def measured(model: Path, metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            "heldout": _heldout(model, data, metrics, card_examples),
            "runtime": _speed(model, prompts, teacher_rate),
        }

    world = card.get("world") or data.spec.world
    built = {**built, "fine_tune": record}
    new_card = write_model_card(out, task="act", world=world, built=built, **measured(out, metrics))
    result: dict[str, Any] = {"card": new_card}
    if int8:
        result["int8"] = _int8_copy(out, new_card, data, measured)
    return result


def _heldout(model_dir: Path, data: Any, metrics: dict[str, Any], n: int) -> dict[str, Any]:
    """The card's held-out record: ``n`` examples a split through the runtime, with and without the
    argument choices, beside the torch run's own ``metrics`` (none for a quantized copy): the loss
    and greedy exact match on its sample, and the loss over every example (``loss_all``)."""
    from exports.card import runtime_accuracy
    from exports.train import HELDOUT

    heldout = {}
    for split in HELDOUT:
        served = runtime_accuracy(model_dir, data[split], limit=n)
        free = runtime_accuracy(model_dir, data[split], limit=n, choices=False)
        torch_m = metrics.get(split, {})
        heldout[split] = {
            "loss": torch_m.get("loss"),
            "loss_all": torch_m.get("loss_all"),
            "loss_all_tokens": torch_m.get("loss_all_tokens"),
            "exact_match_unconstrained": torch_m.get("exact_match"),
            "n_unconstrained": torch_m.get("n"),
            "exact_match": served["exact_match"],
            "exact_match_free_choices": free["exact_match"],
            "n": served["n"],
        }
    return heldout


def _speed(model_dir: Path, prompts: list[Any], teacher_rate: float | None) -> dict[str, Any]:
    """Decisions/s, and the speed-up against the teacher's rate on the same prompts when there is one."""
    from exports.card import measure_decisions_per_s

    runtime = measure_decisions_per_s(model_dir, prompts)
    if teacher_rate:
        runtime["teacher_decisions_per_s_same_run"] = teacher_rate
        runtime["speedup_vs_teacher"] = round(runtime["decisions_per_s"] / teacher_rate, 2)
    return runtime


def _int8_copy(out: Path, card: dict[str, Any], data: Any, measured: Any) -> dict[str, Any]:
    """An int8 copy ``<out>-int8`` beside ``out``, kept (and carded) if it agrees with ``out`` greedily."""
    from exports.card import action_constraint, write_model_card
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
    fields = {"task": "act", "world": card.get("world"), "built": card.get("built"), "int8_check": check}
    write_model_card(dst, **fields, **measured(dst, {}))
    write_model_card(out, **{k: v for k, v in card.items() if k != "format"}, int8_check=check)
    return check
