"""Int8 dynamic quantization of an exported model directory, and a check that it keeps accuracy.

Dynamic quantization stores the MatMul weights as int8 and quantizes activations to uint8 on the
fly, per batch (ONNX Runtime's recommended "U8S8" format for CPU: its MLAS kernels are fastest with
unsigned activations and signed weights). Nothing needs calibration data, so any exported model
can be quantized; whether the result is good enough is a separate question, answered by
:func:`greedy_agreement` on real prompts through the runtime.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime.artifacts import MANIFEST

QUANTIZED = "int8-dynamic"
CARD = "model_card.json"
# Files that describe the fp32 model only: the graph is replaced, the manifest and card rewritten.
_NOT_COPIED = {"model.onnx", "model.onnx_data", "model.onnx.data", MANIFEST, CARD}


def quantize_model_dir(src: str | Path, dst: str | Path, name: str | None = None) -> Path:
    """Write an int8 dynamically quantized copy of the model directory ``src`` to ``dst``.

    Only MatMuls with a constant weight are quantized: the embedding ``Gather`` stays fp32 (it is
    a lookup, not compute, and a tied LM head reads it too) and activation-by-activation MatMuls
    (attention scores, where unfused) would lose precision for no speed.

    Args:
        src: an exported model directory (``model.onnx``, config, tokenizer, manifest).
        dst: the target directory (replaced if it exists).
        name: the quantized model's name (default: ``<src name>-int8``).

    Returns:
        ``dst`` as a path, with a fresh manifest recording ``quantized: "int8-dynamic"`` and the
        rewrite in ``graph_rewrites``.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from runtime.artifacts import write_manifest

    src, dst = Path(src), Path(dst)
    manifest = json.loads((src / MANIFEST).read_text())
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in _NOT_COPIED and not f.name.startswith("."):
            shutil.copy(f, dst / f.name)
    # ORT logs a hint to run its shape-inference pre-processing first; that pass is for static
    # (calibrated) quantization of vision models and changes nothing for dynamic MatMul weights.
    hint = _DropMessage("pre-processing before quantization")
    logging.getLogger().addFilter(hint)
    try:
        quantize_dynamic(
            src / "model.onnx",
            dst / "model.onnx",
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        logging.getLogger().removeFilter(hint)
    # Keep how it was built (parameters, preset, seed...) but not the fp32 file list or identity.
    extra = {
        k: v
        for k, v in manifest.items()
        if k not in ("files", "name", "format_version", "architecture", "num_layers", "vocab_size")
    }
    extra["graph_rewrites"] = [*manifest.get("graph_rewrites", []), "quantize_int8_dynamic"]
    extra["quantized"] = QUANTIZED
    extra["quantized_from"] = manifest.get("name", src.name)
    write_manifest(dst, name or f"{manifest.get('name', src.name)}-int8", extra)
    return dst


class _DropMessage(logging.Filter):
    """Drops log records containing ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def greedy_agreement(
    reference_dir: str | Path,
    candidate_dir: str | Path,
    prompts: Sequence[Sequence[str]],
    *,
    constraint: Any = None,
    max_tokens: int = 128,
) -> dict[str, Any]:
    """How often two models produce the same greedy output through the runtime.

    Args:
        reference_dir: the fp32 model directory.
        candidate_dir: the quantized one.
        prompts: prompts as segment tuples (as the agents build them).
        constraint: a ``runtime.types.Constraint`` applied to both (the decisions the runtime
            would really serve), or None for free decoding.
        max_tokens: generation limit per prompt.

    Returns:
        ``n``, ``agreement`` (fraction of prompts with identical text) and up to 5 ``differences``.
    """
    ref = serve_greedy(reference_dir, prompts, constraint=constraint, max_tokens=max_tokens)
    cand = serve_greedy(candidate_dir, prompts, constraint=constraint, max_tokens=max_tokens)
    same = [a == b for a, b in zip(ref, cand)]
    diffs = [{"reference": a, "candidate": b} for a, b in zip(ref, cand) if a != b][:5]
    return {"n": len(prompts), "agreement": sum(same) / max(len(prompts), 1), "differences": diffs}


def serve_greedy(
    model_dir: str | Path,
    prompts: Sequence[Sequence[str]],
    *,
    constraint: Any = None,
    max_tokens: int = 128,
    threads: int = 1,
) -> list[str]:
    """Greedy texts for ``prompts`` from ``model_dir``, served in one batch by the runtime."""
    from runtime.types import Request, SamplingParams

    batcher, name = runtime_batcher(model_dir, threads=threads)
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    reqs = [Request(model=name, prompt=tuple(p), sampling=sampling, constraint=constraint) for p in prompts]
    return [r.text if r.error is None else f"<error: {r.error}>" for r in batcher.run(reqs)]


def runtime_batcher(model_dir: str | Path, *, threads: int = 1, cache_mib: int = 64) -> tuple[Any, str]:
    """An in-process runtime batcher over ``model_dir`` (verified on load) and the model's name."""
    from runtime.artifacts import load_model_dir
    from runtime.batcher import Batcher
    from runtime.engine import OrtEngine
    from runtime.kv_cache import RadixCache
    from runtime.tokenizer import Tokenizer

    art = load_model_dir(model_dir)
    engine = OrtEngine(art, intra_op_threads=threads)
    tok = Tokenizer(art.tokenizer_path, art.info.eos_token_ids)
    return Batcher(engine, tok, RadixCache(cache_mib << 20)), art.name
