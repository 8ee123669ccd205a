"""Graph rewrites of exported ONNX causal LMs, and a benchmark of what they buy.

Two rewrites keep the model's interface (``input_ids``, ``attention_mask``, ``position_ids``,
``past_key_values.*`` in, ``logits`` and ``present.*`` out) so :mod:`runtime` loads the result
unchanged:

- :func:`exports.moe_graph.sparsify_moe` turns each MoE block of an optimum ``qwen3_moe`` export into
  one ONNX Runtime ``com.microsoft.MoE`` node (top-k routing in one kernel).
- :func:`last_token_logits` computes the LM head only for the last position of each row: the runtime
  only ever reads ``logits[:, -1, :]``, and on a prefill the head's work grows with the prompt length.

:func:`rewrite_model_dir` applies them to a model directory and writes its manifest.
``python -m exports.graph bench-moe`` and ``python -m exports.graph bench-logits`` time each rewrite
against the original graph in the same process and print ratios.

Shapes (letter legend): B = rows, S = positions per row, D = hidden size, V = vocabulary.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Protobuf refuses to serialize a single message over 2 GiB; beyond this the weights go to a side file.
_EXTERNAL_DATA_BYTES = 1_800_000_000
# Ops that only move or reshape data, never compute on it: a path through them keeps a tensor's meaning.
SHAPE_ONLY_OPS = frozenset({"Reshape", "Gather", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand"})


class GraphRewriteError(ValueError):
    """A graph does not have the structure a rewrite needs (the message says what is missing)."""


class GraphIndex:
    """Producer / consumer / constant look-ups over one ``onnx.GraphProto`` (rebuild after edits)."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.position: dict[str, int] = {}  # node name -> index in the (topologically sorted) node list
        for i, node in enumerate(graph.node):
            self.position[node.name] = i
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                self.consumers.setdefault(inp, []).append(node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.graph_inputs = {i.name for i in graph.input}

    def op(self, tensor: str) -> str | None:
        """Op type of the node producing ``tensor`` (``None`` for inputs and initializers)."""
        node = self.producer.get(tensor)
        return node.op_type if node is not None else None

    def const(self, tensor: str) -> np.ndarray | None:
        """Value of ``tensor`` when it is an initializer or a ``Constant`` node's output, else ``None``."""
        if tensor in self.initializers:
            return numpy_helper.to_array(self.initializers[tensor])
        node = self.producer.get(tensor)
        if node is None or node.op_type != "Constant":
            return None
        for attr in node.attribute:
            if attr.name == "value":
                return numpy_helper.to_array(attr.t)
            if attr.name in ("value_int", "value_ints", "value_float", "value_floats"):
                return np.asarray(helper.get_attribute_value(attr))
        return None

    def through(self, tensor: str, ops: Iterable[str]) -> list[onnx.NodeProto]:
        """Consumers of ``tensor``, looking through chains of single-input pass-through ``ops`` (Cast...)."""
        ops = set(ops)
        found, todo = [], [tensor]
        while todo:
            for node in self.consumers.get(todo.pop(), []):
                if node.op_type in ops:
                    todo.extend(node.output)
                else:
                    found.append(node)
        return found

    def ancestors(self, tensor: str, stop: set[str]) -> list[onnx.NodeProto]:
        """Nodes that ``tensor`` depends on, not walking past the tensors in ``stop``."""
        seen: dict[str, onnx.NodeProto] = {}
        todo = deque([tensor])
        while todo:
            name = todo.popleft()
            node = self.producer.get(name)
            if name in stop or node is None or node.name in seen:
                continue
            seen[node.name] = node
            todo.extend(i for i in node.input if i)
        return list(seen.values())


def prune_dead_nodes(graph: onnx.GraphProto) -> int:
    """Remove nodes, initializers and value_info that no graph output depends on; returns nodes removed."""
    index = GraphIndex(graph)
    live_nodes: set[str] = set()
    live_tensors: set[str] = set()
    todo = deque(o.name for o in graph.output)
    while todo:
        name = todo.popleft()
        if name in live_tensors:
            continue
        live_tensors.add(name)
        node = index.producer.get(name)
        if node is not None and node.name not in live_nodes:
            live_nodes.add(node.name)
            todo.extend(i for i in node.input if i)
    kept = [n for n in graph.node if n.name in live_nodes]
    removed = len(graph.node) - len(kept)
    del graph.node[:]
    graph.node.extend(kept)
    inits = [t for t in graph.initializer if t.name in live_tensors]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    infos = [v for v in graph.value_info if v.name in live_tensors]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return removed


def ensure_unique_node_names(graph: onnx.GraphProto) -> None:
    """Give every unnamed or duplicate-named node a unique name (the index keys nodes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}_{node.name or 'unnamed'}"
        seen.add(node.name)


def interface(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Names and types of the graph inputs and outputs, as comparable strings."""
    return {
        "inputs": [f"{v.name}: {v.type}" for v in model.graph.input],
        "outputs": [f"{v.name}: {v.type}" for v in model.graph.output],
    }


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load a model with its external weights, raising :class:`GraphRewriteError` for unreadable files."""
    try:
        return onnx.load(str(path))
    except Exception as e:  # DecodeError, FileNotFoundError...
        raise GraphRewriteError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None


def save_onnx(model: onnx.ModelProto, path: str | Path) -> Path:
    """Check ``model`` with ``onnx.checker`` and save it (weights in a side file past protobuf's limit)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # onnx appends to an existing weights file; the model in memory already holds every tensor.
    path.with_name(path.name + "_data").unlink(missing_ok=True)
    if model.ByteSize() < _EXTERNAL_DATA_BYTES:
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    else:
        onnx.save(
            model, str(path), save_as_external_data=True, location=path.name + "_data"
        )  # optimum's name
        onnx.checker.check_model(str(path))  # by path: the in-memory proto is too big for the checker
    return path


# Position-wise ops the LM head may be followed by (bias, soft-capping, dtype casts): slicing the last
# position before them gives the same values as slicing after.
_POSITIONWISE_OPS = frozenset({"Add", "Mul", "Div", "Sub", "Tanh", "Cast", "Identity"})


def _head_weight(index: GraphIndex, tensor: str) -> np.ndarray | None:
    """The LM head's weight: a constant, or a ``Transpose`` of one (tied input/output embeddings)."""
    w = index.const(tensor)
    if w is not None:
        return w
    node = index.producer.get(tensor)
    if node is not None and node.op_type == "Transpose":
        return index.const(node.input[0])
    return None


def last_token_logits(src_onnx: str | Path, dst_onnx: str | Path) -> Path:
    """Rewrite a causal LM graph so ``logits`` holds only each row's last position: ``(B, 1, V)``.

    A ``Slice`` of the last position is inserted on the hidden states ``(B, S, D)`` right before the
    LM head's ``MatMul``, so the head costs ``B·D·V`` per pass instead of ``B·S·D·V``. The runtime
    reads ``logits[:, -1, :]``, which is unchanged; everything else in the graph is left intact.

    Args:
        src_onnx: an exported ``model.onnx`` with a ``logits`` output.
        dst_onnx: where the rewritten model goes (may equal ``src_onnx``).

    Returns:
        ``dst_onnx`` as a path.

    Raises:
        GraphRewriteError: if there is no ``logits`` output, no LM-head ``MatMul`` with a constant
            weight behind it, or the logits are already sliced.
    """
    model = load_onnx(src_onnx)
    graph = model.graph
    ensure_unique_node_names(graph)
    index = GraphIndex(graph)
    out = next((o for o in graph.output if o.name == "logits"), None)
    if out is None:
        raise GraphRewriteError(f"{src_onnx}: graph has no 'logits' output")
    dims = out.type.tensor_type.shape.dim
    if len(dims) != 3:
        raise GraphRewriteError(f"{src_onnx}: 'logits' has rank {len(dims)}, expected (B, S, V)")
    if dims[1].HasField("dim_value") and dims[1].dim_value == 1:
        raise GraphRewriteError(f"{src_onnx}: 'logits' already has one position per row")

    # Walk back from the output through position-wise ops to the LM head MatMul(hidden, W (D, V)).
    tensor, head, chain = "logits", None, []
    while head is None:
        node = index.producer.get(tensor)
        if node is None:
            break
        chain.append(node)
        if node.op_type == "MatMul" and (w := _head_weight(index, node.input[1])) is not None and w.ndim == 2:
            head = node
        elif node.op_type in _POSITIONWISE_OPS:
            # Follow the non-constant operand; a second non-constant operand would be per-position data.
            moving = [i for i in node.input if i and index.const(i) is None]
            if len(moving) != 1:
                break
            tensor = moving[0]
        else:
            break
    if head is None:
        raise GraphRewriteError(
            f"{src_onnx}: could not find the LM head behind 'logits' (expected MatMul(hidden, W) "
            f"followed only by position-wise ops; stopped at {index.op(tensor)!r} producing {tensor!r})"
        )

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 10:
        raise GraphRewriteError(
            f"{src_onnx}: opset {opset} is too old for Slice with tensor inputs (needs 10)"
        )
    hidden = head.input[0]
    last = f"{hidden}/last_position"
    names = {k: f"last_token_logits/{k}" for k in ("starts", "ends", "axes")}
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([-1], np.int64), names["starts"]),
            numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), names["ends"]),
            numpy_helper.from_array(np.array([1], np.int64), names["axes"]),
        ]
    )
    slice_node = helper.make_node(
        "Slice",
        [hidden, names["starts"], names["ends"], names["axes"]],
        [last],
        name="last_token_logits/Slice",
    )  # (B, S, D) -> (B, 1, D)
    head.input[0] = last
    graph.node.insert(index.position[head.name], slice_node)
    dims[1].Clear()
    dims[1].dim_value = 1
    # Inferred shapes recorded for the head and what follows it now have a stale S dimension.
    stale = {o for n in chain for o in n.output}
    kept = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return save_onnx(model, dst_onnx)


def rewrite_model_dir(
    src_dir: str | Path,
    dst_dir: str | Path,
    *,
    sparse_moe: bool = True,
    last_token: bool = True,
    name: str | None = None,
) -> Path:
    """Copy a model directory, rewrite its ``model.onnx`` and write a fresh manifest.

    Args:
        src_dir: a runnable model directory (``model.onnx``, ``config.json``, tokenizer, manifest).
        dst_dir: where the rewritten directory goes (replaced if it exists).
        sparse_moe: replace the MoE blocks with ``com.microsoft.MoE`` nodes (only for MoE configs).
        last_token: compute logits for the last position only.
        name: the model's name in the new manifest (default: the source's name).

    Returns:
        ``dst_dir`` as a path.
    """
    from exports.moe_graph import sparsify_moe
    from runtime.artifacts import MANIFEST, write_manifest

    src, dst = Path(src_dir), Path(dst_dir)
    config = json.loads((src / "config.json").read_text())
    manifest: dict[str, Any] = json.loads((src / MANIFEST).read_text()) if (src / MANIFEST).exists() else {}
    if dst.exists():
        shutil.rmtree(dst)
    # Everything but the graph and its weights is copied; the rewrites write dst/model.onnx themselves.
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(MANIFEST, "model.onnx", "model.onnx_data"))
    current, target, done = src / "model.onnx", dst / "model.onnx", []
    if sparse_moe and int(config.get("num_experts") or 0) > 0:
        sparsify_moe(current, target, config)
        current = target
        done.append("sparse_moe")
    if last_token:
        last_token_logits(current, target)
        done.append("last_token_logits")
    if not done:
        save_onnx(load_onnx(current), target)
    extra = {k: v for k, v in manifest.items() if k not in ("files", "format_version", "name")}
    extra["graph_rewrites"] = [*manifest.get("graph_rewrites", []), *done]
    write_manifest(dst, name or str(manifest.get("name", src.name)), extra)
    return dst


# ----------------------------------------------------------------------------------------- benchmarks


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    from runtime.engine import session_options

    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


def model_feeds(session, batch: int, new: int, past: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for an optimum causal-LM graph: ``batch`` rows, ``new`` tokens after ``past``."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {
        "input_ids": rng.integers(0, vocab, (batch, new), dtype=np.int64),
        "attention_mask": np.ones((batch, past + new), np.int64),
        "position_ids": np.broadcast_to(np.arange(past, past + new, dtype=np.int64), (batch, new)).copy(),
    }
    for inp in session.get_inputs():
        if inp.name.startswith("past_key_values."):
            heads, head_dim = inp.shape[1], inp.shape[3]
            feeds[inp.name] = rng.standard_normal((batch, heads, past, head_dim)).astype(np.float32)
    return {k: v for k, v in feeds.items() if k in {i.name for i in session.get_inputs()}}


def time_session(session, feeds: dict[str, np.ndarray], min_seconds: float = 1.0, min_runs: int = 3) -> float:
    """Median seconds per ``session.run`` after one warm-up run."""
    session.run(None, feeds)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def compare_graphs(
    label: str,
    base_path: Path,
    new_path: Path,
    cases: list[tuple[str, int, int, int]],
    vocab: int,
    threads: int,
) -> list[dict[str, Any]]:
    """Time two graphs on the same feeds, alternating so machine load hits both alike."""
    base, new = ort_session(base_path, threads), ort_session(new_path, threads)
    rows = []
    for case, batch, n_new, past in cases:
        feeds = model_feeds(base, batch, n_new, past, vocab)
        t_base = time_session(base, feeds)
        t_new = time_session(new, feeds)
        t_base = min(t_base, time_session(base, feeds))
        t_new = min(t_new, time_session(new, feeds))
        tokens = batch * n_new
        rows.append(
            {"case": case, "batch": batch, "new_tokens": n_new, "past": past,
             "base_ms": 1e3 * t_base, "new_ms": 1e3 * t_new, "speedup": t_base / t_new,
             "base_tok_s": tokens / t_base, "new_tok_s": tokens / t_new}
        )  # fmt: skip
        r = rows[-1]
        print(
            f"{label} {case:8s} B={batch:3d} S={n_new:3d} past={past:3d}: "
            f"base {r['base_ms']:8.2f} ms ({r['base_tok_s']:8.0f} tok/s)  "
            f"rewritten {r['new_ms']:8.2f} ms ({r['new_tok_s']:8.0f} tok/s)  x{r['speedup']:.2f}",
            flush=True,
        )
    return rows


def build_random_model(arch: str, out_dir: str | Path, seed: int = 0, **sizes: Any) -> Path:
    """Save a random transformers model of ``arch`` with the given sizes and export it; returns the ONNX dir.

    Benchmarks need shapes the tiny presets (:mod:`exports.tiny`) do not have; no tokenizer is
    written, so the result is for timing graphs, not for serving.

    Args:
        arch: ``llama`` or ``qwen3_moe``.
        out_dir: parent directory; ``hf/`` and ``onnx/`` are created inside.
        seed: torch seed for the weights.
        **sizes: config fields (``hidden_size``, ``num_experts``, ``vocab_size``...).
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3MoeConfig

    from exports.onnx_export import export_model

    common: dict[str, Any] = dict(
        vocab_size=2048,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    common.update(sizes)
    if arch == "llama":
        config = LlamaConfig(**common)
    elif arch == "qwen3_moe":
        moe = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=512, norm_topk_prob=True)
        config = Qwen3MoeConfig(**{**moe, **common, "decoder_sparse_step": 1, "mlp_only_layers": []})
    else:
        raise ValueError(f"unknown architecture {arch!r}; use 'llama' or 'qwen3_moe'")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    out = Path(out_dir)
    model.save_pretrained(out / "hf")
    # Exported as optimum makes it: the benchmarks rewrite it themselves.
    extra = {"built_by": "exports.graph"}
    return export_model(out / "hf", out / "onnx", f"bench-{arch}", extra=extra, sparse_moe=False)


def bench_logits(
    out_dir: str | Path,
    threads: int = 1,
    vocab: int = 16384,
    hidden: int = 256,
    layers: int = 4,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Time a llama graph against its :func:`last_token_logits` rewrite on prefills; prints ratios."""
    out = Path(out_dir)
    onnx_dir = build_random_model(
        "llama", out, seed, vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
        intermediate_size=4 * hidden,
    )  # fmt: skip
    full, last = onnx_dir / "model.onnx", out / "last" / "model.onnx"
    last_token_logits(full, last)
    print(f"llama V={vocab} D={hidden} layers={layers}, {threads} thread(s)")
    cases = [("prefill", 1, 128, 0), ("prefill", 8, 64, 0), ("decode", 64, 1, 64)]
    return compare_graphs("logits", full, last, cases, vocab=vocab, threads=threads)


def main(argv: list[str] | None = None) -> None:
    """``python -m exports.graph bench-moe|bench-logits [--threads N] [--out DIR]``."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m exports.graph", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["bench-moe", "bench-logits"])
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--out", help="keep the built models here (default: a temporary directory)")
    parser.add_argument("--vocab", type=int, default=16384, help="vocabulary of the bench-logits model")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        if args.command == "bench-moe":
            from exports.moe_graph import bench_moe

            bench_moe(out, threads=args.threads)
        else:
            bench_logits(out, threads=args.threads, vocab=args.vocab)


if __name__ == "__main__":
    main()
