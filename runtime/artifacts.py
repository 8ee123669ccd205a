"""Model directories: the Hugging Face / optimum layout plus a small manifest, checked on load.

A model directory holds what ``optimum`` exports for ``text-generation-with-past``
(``config.json``, ``model.onnx`` with ``past_key_values.{i}.key/value`` inputs and
``present.{i}.key/value`` outputs, tokenizer files) and ``murmurate.json``: the model's name,
architecture, parameter counts and the sha256 of every file. :func:`load_model_dir` checks all of it
and raises :class:`ModelError` naming the problem before ONNX Runtime ever sees a bad file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "murmurate.json"
FORMAT_VERSION = 1
REQUIRED_FILES = ("config.json", "model.onnx", "tokenizer.json")


class ModelError(RuntimeError):
    """A model directory is missing, incomplete, corrupt or inconsistent."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelInfo:
    """Shapes the engine needs, read from ``config.json`` and checked against the graph."""

    architecture: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    max_position_embeddings: int
    skip_segments: int = 0
    """Leading prompt segments the model was trained without (config key ``prompt_skip_segments``): a
    specialist that learned what they say (a world's rules, say) reads a prompt from the next one, and
    the runtime drops them before tokenizing. 0 for every general model."""


@dataclass(frozen=True)
class ModelArtifacts:
    """A checked model directory."""

    path: Path
    name: str
    info: ModelInfo
    manifest: dict[str, Any]
    config: dict[str, Any] = field(repr=False)

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx"

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path.parent}: missing file {path.name}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: not valid JSON ({e})") from None


def model_info_from_config(config: dict[str, Any], generation: dict[str, Any] | None = None) -> ModelInfo:
    """Read the shapes the engine needs from a Hugging Face ``config.json`` dict."""
    try:
        layers = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
        vocab = int(config["vocab_size"])
        skip = int(config.get("prompt_skip_segments") or 0)
        if skip < 0:
            raise ValueError(f"prompt_skip_segments is {skip}")
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"config.json lacks a usable field: {e}") from None
    eos: Any = (generation or {}).get("eos_token_id", config.get("eos_token_id"))
    eos_ids = tuple(int(x) for x in (eos if isinstance(eos, list) else [eos] if eos is not None else []))
    archs = config.get("architectures") or [config.get("model_type", "unknown")]
    bos = config.get("bos_token_id")
    return ModelInfo(
        architecture=str(config.get("model_type", archs[0])),
        num_layers=layers,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        eos_token_ids=eos_ids,
        bos_token_id=int(bos) if bos is not None else None,
        max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
        skip_segments=skip,
    )


def write_manifest(path: str | Path, name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``murmurate.json`` for the model directory ``path``: name, shapes, sha256 of every file.

    Args:
        path: the model directory (already holding the exported files).
        name: the model's name, the one requests use to reach it.
        extra: more fields to record (``parameters``, ``active_parameters``, how it was built...).
    """
    path = Path(path)
    config = _read_json(path / "config.json")
    info = model_info_from_config(config)
    # Every file, subdirectories included (a shipped model keeps its transformers weights in hf/).
    files = {
        p.relative_to(path).as_posix(): sha256_file(p)
        for p in sorted(path.rglob("*"))
        if p.is_file()
        and p.relative_to(path).as_posix() != MANIFEST
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    }
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "architecture": info.architecture,
        "num_layers": info.num_layers,
        "vocab_size": info.vocab_size,
        **(extra or {}),
        "files": files,
    }
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def load_model_dir(path: str | Path, verify: bool = True) -> ModelArtifacts:
    """Check a model directory and return its artifacts.

    Args:
        path: the model directory.
        verify: recompute and compare the sha256 of every file listed in the manifest.

    Raises:
        ModelError: with a message naming the problem (missing directory or file, bad manifest,
            checksum mismatch, graph without KV inputs, vocab size disagreeing with the config...).
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"model directory not found: {path}")
    for fname in REQUIRED_FILES:
        if not (path / fname).is_file():
            raise ModelError(
                f"{path}: missing file {fname} (a model directory needs {', '.join(REQUIRED_FILES)})"
            )
    manifest = _read_json(path / MANIFEST) if (path / MANIFEST).exists() else None
    if manifest is None:
        raise ModelError(
            f"{path}: missing {MANIFEST}; create it with runtime.artifacts.write_manifest or `murmurate models import`"
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{path}/{MANIFEST}: unsupported format_version {manifest.get('format_version')!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or "model.onnx" not in files:
        raise ModelError(f"{path}/{MANIFEST}: 'files' must list the sha256 of each file, model.onnx included")
    if verify:
        for fname, digest in files.items():
            fpath = path / fname
            if not fpath.is_file():
                raise ModelError(f"{path}: file {fname} listed in the manifest is missing")
            actual = sha256_file(fpath)
            if actual != digest:
                raise ModelError(
                    f"{path}: checksum mismatch for {fname} (manifest {digest[:12]}…, file {actual[:12]}…); "
                    "the file is corrupt or was changed after export"
                )
    config = _read_json(path / "config.json")
    generation = (
        _read_json(path / "generation_config.json") if (path / "generation_config.json").exists() else None
    )
    info = model_info_from_config(config, generation)
    if manifest.get("vocab_size") not in (None, info.vocab_size):
        raise ModelError(
            f"{path}: manifest vocab_size {manifest['vocab_size']} != config.json vocab_size {info.vocab_size}"
        )
    _check_graph(path / "model.onnx", info)
    _check_tokenizer(path / "tokenizer.json", info)
    return ModelArtifacts(
        path=path, name=str(manifest.get("name", path.name)), info=info, manifest=manifest, config=config
    )


def model_tokenizer(art: ModelArtifacts):
    """The runtime tokenizer of a model directory, as its worker builds it (BOS, skipped segments)."""
    from runtime.tokenizer import Tokenizer

    return Tokenizer(
        art.tokenizer_path,
        art.info.eos_token_ids,
        art.info.bos_token_id,
        add_bos=bool(art.manifest.get("add_bos")),
        skip_segments=art.info.skip_segments,
    )


def hf_weights_dir(art: ModelArtifacts) -> Path:
    """Where the model's transformers weights are (for the transformers baselines).

    The manifest's ``hf_dir`` (absolute, or relative to the model directory); else ``hf/`` inside
    the model directory; else ``hf/`` next to it (an imported model: ``<name>/onnx`` and
    ``<name>/hf``). A quantized copy with no transformers weights of its own (``models quantize``)
    gets those of the installed model it was made from (``quantized_from``): the same weights before
    quantization. The directory may not exist: callers check for ``config.json``.
    """
    declared = art.manifest.get("hf_dir")
    if declared:
        found = art.path / declared  # an absolute path stays absolute
    else:
        inside = art.path / "hf"
        found = inside if (inside / "config.json").is_file() else art.path.parent / "hf"
    source = art.manifest.get("quantized_from")
    if not (found / "config.json").is_file() and source:
        from runtime.registry import find_model

        src = find_model(str(source))
        if src is not None and src.resolve() != art.path.resolve():
            return hf_weights_dir(load_model_dir(src, verify=False))
    return found


def _check_graph(onnx_path: Path, info: ModelInfo) -> None:
    """Check the graph's inputs and outputs without building a session (cheap, clear errors)."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends for corrupt protobufs
        raise ModelError(f"{onnx_path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    for name in ("input_ids", "attention_mask"):
        if name not in inputs:
            raise ModelError(f"{onnx_path}: graph has no '{name}' input")
    if "logits" not in outputs:
        raise ModelError(f"{onnx_path}: graph has no 'logits' output")
    kv_inputs = [n for n in inputs if n.startswith("past_key_values.")]
    if not kv_inputs:
        raise ModelError(
            f"{onnx_path}: graph has no past_key_values.* inputs; export it with "
            "task 'text-generation-with-past' so the KV cache can be reused"
        )
    if len(kv_inputs) != 2 * info.num_layers:
        raise ModelError(
            f"{onnx_path}: {len(kv_inputs)} KV inputs but config.json says {info.num_layers} layers"
        )
    for i in range(info.num_layers):
        for kind in ("key", "value"):
            if f"past_key_values.{i}.{kind}" not in inputs or f"present.{i}.{kind}" not in outputs:
                raise ModelError(
                    f"{onnx_path}: missing past_key_values.{i}.{kind} input or present.{i}.{kind} output"
                )
    dims = outputs["logits"].type.tensor_type.shape.dim
    if dims and dims[-1].HasField("dim_value") and dims[-1].dim_value != info.vocab_size:
        raise ModelError(
            f"{onnx_path}: logits have {dims[-1].dim_value} entries but config.json vocab_size is {info.vocab_size}"
        )


def _check_tokenizer(tok_path: Path, info: ModelInfo) -> None:
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(tok_path))
    except Exception as e:
        raise ModelError(f"{tok_path}: not a readable tokenizers file ({e})") from None
    size = tok.get_vocab_size(with_added_tokens=True)
    if size > info.vocab_size:
        raise ModelError(
            f"{tok_path}: tokenizer has {size} tokens but the model's vocab_size is {info.vocab_size}"
        )
