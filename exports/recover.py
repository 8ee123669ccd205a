"""Read a model's transformers weights back out of its exported ``model.onnx``.

The shipped teacher and dense baseline carry no transformers weights (only the student does, for the
per-agent baseline), so fine-tuning them again would mean rebuilding them. Their graphs hold every
weight, but under names the exporter made up (``onnx::MatMul_3403``) and some transposed. A twin of
the same configuration with random weights, exported the same way (:func:`exports.onnx_export.
export_model`), has the very same initializer names; matching the twin's initializers to its own
parameters by value tells which name (and orientation) holds which parameter, and the shipped graph's
initializer of that name is the weight (for a teacher whose MoE blocks are ``MoE`` nodes, each
expert's matrices are rows of the node's stacked weights). The result is checked by exporting it
again: every initializer must come back exactly.

``python -m exports.recover MODEL_DIR OUT`` writes ``OUT`` as a ``save_pretrained`` directory with
the model's tokenizer, ready for ``TrainConfig.init``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

KEEP = ("tokenizer", "special_tokens", "generation_config")
"""Files of the model directory copied along (by name prefix)."""


def _initializers(onnx_path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(onnx_path)).graph.initializer}


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        if f.is_file() and f.name.startswith(KEEP):
            shutil.copy(f, dst / f.name)


View = tuple[int, slice] | None
"""Where in an initializer a parameter lies: all of it (None), or one expert's rows of a stacked
``(experts, rows, columns)`` tensor of a sparse ``MoE`` node (fc1 interleaves gate and up rows)."""
ROWS = (slice(None), slice(0, None, 2), slice(1, None, 2))


def _view(arr: np.ndarray, where: View) -> np.ndarray:
    return arr if where is None else arr[where[0]][where[1]]


def _views(arr: np.ndarray) -> list[View]:
    return [None] + ([(e, rows) for e in range(arr.shape[0]) for rows in ROWS] if arr.ndim == 3 else [])


def _locate(twin: dict[str, np.ndarray], param: np.ndarray) -> tuple[str, View, bool]:
    """The twin initializer (and the part of it, :data:`View`) equal to ``param``, or to its
    transpose (then ``True``)."""
    for name, arr in twin.items():
        if arr.dtype != param.dtype:
            continue
        for where in _views(arr):
            part = _view(arr, where)
            if part.shape == param.shape and np.array_equal(part, param):
                return name, where, False
            if part.ndim == 2 and part.shape == param.T.shape and np.array_equal(part, param.T):
                return name, where, True
    raise ValueError(f"no initializer of the exported graph holds a parameter of shape {param.shape}")


def recover_weights(model_dir: str | Path, out: str | Path, *, seed: int = 0) -> dict[str, float | int]:
    """Write the transformers weights of the exported ``model_dir`` to ``out``.

    Returns ``tensors`` (parameters recovered) and ``max_abs_diff`` between the shipped graph's
    initializers and those of ``out`` exported again (0.0 when the recovery is exact).

    Raises:
        ValueError: when the graph was not exported from this configuration the way
            :func:`exports.onnx_export.export_model` exports (its initializers do not match a twin's).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from exports.onnx_export import export_model
    from runtime.artifacts import MANIFEST

    model_dir, out = Path(model_dir), Path(out)
    config = AutoConfig.from_pretrained(model_dir)
    # The twin is exported as the model was: with its MoE blocks as sparse MoE nodes, or not.
    manifest = json.loads((model_dir / MANIFEST).read_text()) if (model_dir / MANIFEST).is_file() else {}
    sparse = "sparse_moe" in manifest.get("graph_rewrites", [])
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # distinct values everywhere: norm weights start as all ones
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    shipped = _initializers(model_dir / "model.onnx")
    with tempfile.TemporaryDirectory() as tmp:
        twin_hf = Path(tmp) / "twin"
        model.save_pretrained(twin_hf)
        _copy_tokenizer(model_dir, twin_hf)
        export_model(twin_hf, Path(tmp) / "twin-onnx", "twin", last_token=True, sparse_moe=sparse)
        twin = _initializers(Path(tmp) / "twin-onnx" / "model.onnx")
        differ = set(twin) ^ set(shipped) or {k for k in twin if twin[k].shape != shipped[k].shape}
        if differ:
            raise ValueError(
                f"{model_dir} was not exported as this configuration exports: "
                f"{len(differ)} initializers differ in name or shape (e.g. {sorted(differ)[0]})"
            )
        weights = {}
        for pname, tensor in model.state_dict().items():
            name, where, transposed = _locate(twin, tensor.numpy())
            w = _view(shipped[name], where)
            w = w.T if transposed else w
            weights[pname] = torch.from_numpy(np.array(w, copy=True))
        model.load_state_dict(weights)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        _copy_tokenizer(model_dir, out)
        export_model(out, Path(tmp) / "back", "back", last_token=True, sparse_moe=sparse)
        back = _initializers(Path(tmp) / "back" / "model.onnx")
    diff = max((float(np.abs(back[k] - v).max()) for k, v in shipped.items() if v.size), default=0.0)
    return {"tensors": len(weights), "max_abs_diff": diff}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", help="an exported model directory (config.json, model.onnx, tokenizer)")
    ap.add_argument("out", help="where the save_pretrained directory goes")
    args = ap.parse_args(argv)
    r = recover_weights(args.model_dir, args.out)
    print(
        f"recovered {r['tensors']} tensors to {args.out}; exported again, max abs diff {r['max_abs_diff']:g}"
    )
    if r["max_abs_diff"] != 0.0:
        raise SystemExit("the recovered weights do not reproduce the graph exactly")


if __name__ == "__main__":
    main()
