"""Int8 quantization of an exported model directory, and a check that it keeps accuracy.

Two methods, both through ONNX Runtime's quantization tools, neither needing calibration data:

- ``int8-dynamic`` (:data:`QUANTIZED`): the MatMul weights as int8, one scale per tensor; activations
  quantized to uint8 on the fly, one scale per batch (ONNX Runtime's "U8S8" format, what its MLAS
  kernels run fastest). Right for the village's small `act` models (their cards measure it), wrong
  for a pretrained language model: one scale for a whole activation tensor cannot hold its outlier
  channels — SmolLM2-135M's greedy lines came out different in 16 prompts of 16, and worse.
- ``int8-block32`` (:data:`BLOCKWISE`): weight-only int8 in blocks of 32 values along the input
  dimension, one scale each, symmetric (the layout llama.cpp calls Q8_0), as ``MatMulNBits`` nodes
  computing in int8 with activations quantized per block of 32 (``accuracy_level`` 4). The small
  blocks keep outliers to themselves: SmolLM2-135M's greedy lines stayed identical in 11 prompts of
  16 (near-ties decide the rest) at 1.3× the fp32 model's speed in the runtime.

Whether a quantized model is good enough is answered on real prompts through the runtime
(:func:`greedy_agreement`; ``murmurate bench talk`` compares its words with the fp32 model's).
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
BLOCKWISE = "int8-block32"
METHODS = {QUANTIZED: "int8", BLOCKWISE: "q8"}
"""Quantization method -> the suffix of the quantized model's name."""
CARD = "model_card.json"
# Files that describe the fp32 model only: the graph is replaced, the manifest and card rewritten.
_NOT_COPIED = {"model.onnx", "model.onnx_data", "model.onnx.data", MANIFEST, CARD}


def quantize_model_dir(
    src: str | Path, dst: str | Path, name: str | None = None, method: str = QUANTIZED
) -> Path:
    """Write an int8 quantized copy of the model directory ``src`` to ``dst``.

    Only MatMuls with a constant weight are quantized: the embedding ``Gather`` stays fp32 (it is
    a lookup, not compute) and activation-by-activation MatMuls (attention scores) would lose
    precision for no speed.

    Args:
        src: an exported model directory (``model.onnx``, config, tokenizer, manifest).
        dst: the target directory (replaced if it exists).
        name: the quantized model's name (default: ``<src name>-int8`` or ``-q8``, see :data:`METHODS`).
        method: :data:`QUANTIZED` (``int8-dynamic``) or :data:`BLOCKWISE` (``int8-block32``).

    Returns:
        ``dst`` as a path, with a fresh manifest recording ``quantized`` (the method), the source's
        name and graph checksum, and the rewrite in ``graph_rewrites``.
    """
    from runtime.artifacts import write_manifest

    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; choose from {', '.join(METHODS)}")
    src, dst = Path(src), Path(dst)
    manifest = json.loads((src / MANIFEST).read_text())
    if manifest.get("quantized"):
        raise ValueError(f"{src} is already quantized ({manifest['quantized']})")
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in _NOT_COPIED and not f.name.startswith("."):
            shutil.copy(f, dst / f.name)
    if method == QUANTIZED:
        _dynamic_int8(src / "model.onnx", dst / "model.onnx")
        rewrite = "quantize_int8_dynamic"
    else:
        _blockwise_int8(src / "model.onnx", dst / "model.onnx")
        rewrite = "quantize_int8_block32"
    # Keep how it was built (parameters, preset, seed...) but not the fp32 file list or identity.
    extra = {
        k: v
        for k, v in manifest.items()
        if k not in ("files", "name", "format_version", "architecture", "num_layers", "vocab_size")
    }
    extra["graph_rewrites"] = [*manifest.get("graph_rewrites", []), rewrite]
    extra["quantized"] = method
    extra["quantized_from"] = manifest.get("name", src.name)
    extra["quantized_from_sha256"] = manifest.get("files", {}).get("model.onnx")
    write_manifest(dst, name or f"{manifest.get('name', src.name)}-{METHODS[method]}", extra)
    return dst


def _dynamic_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # ORT logs a hint to run its shape-inference pre-processing first; that pass is for static
    # (calibrated) quantization of vision models and changes nothing for dynamic MatMul weights.
    hint = _DropMessage("pre-processing before quantization")
    logging.getLogger().addFilter(hint)
    try:
        quantize_dynamic(
            src,
            dst,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        logging.getLogger().removeFilter(hint)


def _blockwise_int8(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4, bits=8)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


def quantized_copy(
    src: str | Path, method: str = BLOCKWISE, models_dir: str | Path | None = None, console: Any = None
) -> Path:
    """The quantized copy of the model directory ``src``, made on first use.

    The copy lives in ``<models dir>/<name>-<suffix>`` (the user models directory by default, where
    ``murmurate models list`` finds it) and is made again when ``src``'s graph changed since (the
    copy's manifest records the sha256 of the graph it was quantized from).

    Args:
        src: an exported fp32 model directory.
        method: :data:`BLOCKWISE` (default) or :data:`QUANTIZED`.
        models_dir: where the copy goes (default: the user models directory).
        console: a rich console to say so on, when quantizing.

    Returns:
        the quantized model directory.
    """
    from runtime.artifacts import ModelError, load_model_dir

    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; choose from {', '.join(METHODS)}")
    src = Path(src)
    manifest = json.loads((src / MANIFEST).read_text())
    name = f"{manifest.get('name', src.name)}-{METHODS[method]}"
    if models_dir is None:
        from runtime.registry import search_path

        models_dir = search_path()[-1]
    dst = Path(models_dir) / name
    try:
        done = load_model_dir(dst, verify=False).manifest
        if done.get("quantized") == method and done.get("quantized_from_sha256") == manifest.get(
            "files", {}
        ).get("model.onnx"):
            return dst
    except ModelError:
        pass
    if console is not None:
        console.print(f"[dim]quantizing {manifest.get('name', src.name)} ({method}) once: {dst}[/dim]")
    return quantize_model_dir(src, dst, name=name, method=method)


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
    from runtime.artifacts import load_model_dir, model_tokenizer
    from runtime.batcher import Batcher
    from runtime.engine import OrtEngine
    from runtime.kv_cache import RadixCache

    art = load_model_dir(model_dir)
    engine = OrtEngine(art, intra_op_threads=threads)
    tok = model_tokenizer(art)
    return Batcher(engine, tok, RadixCache(cache_mib << 20)), art.name
