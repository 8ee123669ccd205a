"""Export a Hugging Face causal LM directory to a runnable murmurate model directory.

Uses optimum's ``text-generation-with-past`` export, copies the tokenizer files, and writes the
manifest (:func:`runtime.artifacts.write_manifest`) with parameter counts. Models whose attention
:mod:`exports.attention` handles are exported with grouped-query attention (no K/V repeated per query
head in the graph); others go through plain optimum ``main_export``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from runtime.artifacts import write_manifest

log = logging.getLogger(__name__)

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def count_parameters(config: dict[str, Any], total: int) -> int:
    """Active parameters per token: for a sparse MoE only ``num_experts_per_tok`` experts count."""
    n_exp = int(config.get("num_experts") or 0)
    k = int(config.get("num_experts_per_tok") or 0)
    if not n_exp or not k:
        return total
    hidden = int(config["hidden_size"])
    moe_inter = int(config.get("moe_intermediate_size") or config["intermediate_size"])
    per_expert = 3 * hidden * moe_inter  # gate, up and down projections
    layers = int(config["num_hidden_layers"])
    sparse_step = int(config.get("decoder_sparse_step") or 1)
    mlp_only = set(config.get("mlp_only_layers") or [])
    moe_layers = sum(1 for i in range(layers) if i not in mlp_only and (i + 1) % sparse_step == 0)
    return total - moe_layers * (n_exp - k) * per_expert


def export_model(
    hf_dir: str | Path,
    out_dir: str | Path,
    name: str,
    extra: dict[str, Any] | None = None,
    last_token: bool = False,
    sparse_moe: bool = True,
) -> Path:
    """Export the transformers model saved in ``hf_dir`` to ``out_dir`` and write its manifest.

    Args:
        hf_dir: a directory written by ``save_pretrained`` (model and tokenizer).
        out_dir: where the model directory goes (created or overwritten).
        name: the model's name in the manifest.
        extra: more manifest fields (how it was built, evaluation results...).
        last_token: compute logits for each row's last position only (``exports.graph``): the
            runtime reads nothing else, and with a large vocabulary the LM head over every prompt
            position would dominate prefill.
        sparse_moe: for a mixture-of-experts config, replace each MoE block (optimum's loop over
            the experts) with one ONNX Runtime ``com.microsoft`` ``MoE`` node that runs each token's
            top-k experts only (:func:`exports.moe_graph.sparsify_moe`; the same logits).

    Returns:
        ``out_dir`` as a path.

    Raises:
        ValueError: if the architecture is not one optimum exports for us.
    """
    from exports.attention import export_grouped, grouped_export_unsupported

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    config = json.loads((hf_dir / "config.json").read_text())
    if config.get("model_type") not in SUPPORTED:
        raise ValueError(
            f"cannot export model_type {config.get('model_type')!r}; supported: {', '.join(SUPPORTED)}"
        )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    if config.get("output_router_logits"):
        # Training asks the MoE for router logits (load-balancing loss); traced for export the forward
        # would compute that loss too and fail. Inference never needs it: export a copy without it.
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "hf"
            shutil.copytree(hf_dir, src)
            (src / "config.json").write_text(json.dumps({**config, "output_router_logits": False}, indent=2))
            return export_model(src, out_dir, name, extra, last_token, sparse_moe)
    why_not = grouped_export_unsupported(config)
    if why_not is None:
        export_grouped(hf_dir, out_dir)
        attention = "grouped"
    else:
        log.info("exporting %s with optimum's default attention: %s", name, why_not)
        _export_optimum(hf_dir, out_dir)
        attention = "optimum-default"
    rewrites = []
    if sparse_moe and int(config.get("num_experts") or 0) > 0:
        from exports.moe_graph import sparsify_moe

        sparsify_moe(out_dir / "model.onnx", out_dir / "model.onnx", config)
        rewrites.append("sparse_moe")
    if last_token:
        from exports.graph import last_token_logits

        last_token_logits(out_dir / "model.onnx", out_dir / "model.onnx")
        rewrites.append("last_token_logits")
    for fname in TOKENIZER_FILES:
        if (hf_dir / fname).exists() and not (out_dir / fname).exists():
            shutil.copy(hf_dir / fname, out_dir / fname)
    total = _total_parameters(hf_dir)
    fields = {
        "parameters": total,
        "active_parameters": count_parameters(config, total),
        "attention": attention,
        "graph_rewrites": rewrites,
        **(extra or {}),
    }
    write_manifest(out_dir, name, fields)
    log.info("exported %s (%s, %d params) to %s", name, config.get("model_type"), total, out_dir)
    return out_dir


def _export_optimum(hf_dir: Path, out_dir: Path) -> None:
    """Plain optimum export (transformers' default attention, K/V repeated per query head)."""
    from optimum.exporters.onnx import main_export

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_export(str(hf_dir), output=str(out_dir), task="text-generation-with-past", device="cpu")


def _total_parameters(hf_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in hf_dir.glob("*.safetensors"):
        with safe_open(str(f), framework="np") as st:
            for key in st.keys():  # noqa: SIM118 - safe_open is not a dict
                total += math.prod(st.get_slice(key).get_shape())
    return total


def export_trained(
    hf_dir: Path, src: Path, target: Path, name: str, extra: dict[str, Any], keep_hf: bool = False
) -> None:
    """Export a trained ``hf_dir`` (last-token logits) through a copy ``src`` whose config does not
    ask for router logits; ``keep_hf`` also ships the transformers weights in ``target/hf``.

    The presets set ``output_router_logits`` so training gets the load-balancing loss; traced for
    export, the MoE forward would then compute that loss too and fail on the export's empty
    attention mask. Inference never needs it, so the exported config drops it.
    """
    from runtime.artifacts import MANIFEST, write_manifest

    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(hf_dir, src)
    config = json.loads((src / "config.json").read_text())
    if config.get("output_router_logits"):
        config["output_router_logits"] = False
        (src / "config.json").write_text(json.dumps(config, indent=2))
    export_model(src, target, name, extra=extra, last_token=True)
    if keep_hf:
        # The transformers weights travel with the model: the per-agent transformers baseline of
        # `murmurate bench village` runs the very same weights.
        hf_copy = target / "hf"
        if hf_copy.exists():
            shutil.rmtree(hf_copy)
        hf_copy.mkdir()
        for f in ("config.json", "generation_config.json", "model.safetensors"):
            if (hf_dir / f).is_file():
                shutil.copy2(hf_dir / f, hf_copy / f)
        for f in TOKENIZER_FILES:
            shutil.copy2(src / f, hf_copy / f)
        manifest = json.loads((target / MANIFEST).read_text())
        kept = {k: v for k, v in manifest.items() if k not in ("files", "name", "format_version")}
        write_manifest(target, name, {**kept, "hf_dir": "hf"})
