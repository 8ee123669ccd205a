"""An append-only decode graph: the same model, with no pass copying the whole KV.

An exported causal LM returns ``present.{i}.key/value``: the past KV with the new tokens' appended,
made by a ``Concat`` in every layer. The batcher feeds them back as the next pass's past, so every
decode step copies every row's whole KV once per layer. On SmolLM2-135M that copy was 19% of the
engine's kernel time in `bench talk`: a decode pass of 16 rows took 68 ms after 16 cached tokens and
135 ms after 316, two thirds of the difference the copy.

:func:`append_kv_graph` rewrites such a graph so that each layer attends to the past and to the new
tokens as two blocks, and returns only the new tokens' KV:

- scores: ``Q·K_pastᵀ`` and ``Q·K_newᵀ`` concatenated along the key axis (a ``(B, H, T, S)`` copy,
  small when ``T`` is: a decode pass), then the model's own scale, mask and softmax;
- output: the probabilities split at the past's length, ``P_past·V_past + P_new·V_new``;
- ``present.{i}.key/value``: the new tokens' K/V only, ``(B, Hkv, T, D)``; shapes read from the
  present (the mask's length) are computed from the past's and the new tokens' shapes.

The caller keeps each batch's KV in buffers with spare columns (:meth:`runtime.engine.BatchKV.append`)
and writes the new tokens' KV into them: a step copies ``T`` columns, not the whole past. The past fed
may include unused (zero, masked) columns; attention is the same over any column order, positions being
explicit. Prefill passes keep the exported graph: with many new tokens the score copy is the larger.

It matches the exported attention of :mod:`exports.attention` and optimum's (``Concat`` of past and
new K/V feeding a ``Transpose → MatMul`` and a ``MatMul``); any other layout leaves the graph alone
(:func:`append_kv_graph` returns ``None``) and the engine decodes with the exported graph.

:func:`append_kv_model` keeps the rewritten graph in a cache directory (``graphs`` under
``MURMURATE_CACHE``, default ``~/.cache/murmurate/graphs``), keyed by the model file's path, size and
modification time (one graph a model file: a changed file's old graph is removed). Rewritten in memory at every load,
SmolLM2-135M's engine took 7.9-8.4 s to load and held 2,402 MB (peak 2,808 MB); with the graph read
from the cache, 3.0 s and 1,401-1,617 MB (peak 1,508-1,725 MB).
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

_INT64_MAX = np.iinfo(np.int64).max
REWRITE_VERSION = 1
"""Part of every cached graph's name: bump it when the rewrite changes, so older ones are not used."""

log = logging.getLogger(__name__)


def graph_cache_dir() -> Path:
    """Where rewritten graphs are kept: ``graphs`` in :func:`runtime.registry.cache_dir`."""
    from runtime.registry import cache_dir

    return cache_dir() / "graphs"


def append_kv_model(
    onnx_path: str | Path, layers: int, cache_dir: str | Path | None = None
) -> Path | bytes | None:
    """The append-only graph of the model in ``onnx_path``: the path of its cached copy (written on
    first use), its serialized bytes where it cannot be cached (weights in external files, a cache
    directory that cannot be written), or ``None`` where the layout is not one it rewrites (remembered
    in the cache too, so the graph is not read again)."""
    onnx_path = Path(onnx_path)
    root = Path(cache_dir) if cache_dir is not None else graph_cache_dir()
    st = onnx_path.stat()
    model_key = _digest(str(onnx_path.resolve()))  # a model's graphs: one at a time is kept
    stem = f"{model_key}-{_digest(f'{st.st_size}|{st.st_mtime_ns}|{layers}')}.append-v{REWRITE_VERSION}"
    cached, unrewritable = root / f"{stem}.onnx", root / f"{stem}.none"
    if cached.is_file():
        return cached
    if unrewritable.is_file():
        return None
    model = onnx.load(str(onnx_path), load_external_data=False)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    if external:  # its weights files sit beside the exported graph: rewrite in memory only
        onnx.load_external_data_for_model(model, str(onnx_path.parent))
    graph = append_kv_graph(model, layers, copy=False)
    del model
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f"{model_key}-*"):  # the graphs of the model file before it changed
            if not stale.name.startswith(stem):
                stale.unlink(missing_ok=True)
        if graph is None:
            unrewritable.touch()
            return None
        if external:
            return graph.SerializeToString()
        tmp = root / f"{stem}.{os.getpid()}.tmp"  # workers may write the same graph at once
        onnx.save(graph, str(tmp))
        os.replace(tmp, cached)
        return cached
    except OSError as e:
        log.info("no cache for the append-only graph of %s (%s)", onnx_path, e)
        return None if graph is None else graph.SerializeToString()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def append_kv_graph(model: onnx.ModelProto, layers: int, copy: bool = True) -> onnx.ModelProto | None:
    """``model`` rewritten to return the new tokens' KV only (see the module docstring), or ``None``
    when a layer does not have the expected shape. ``model`` itself is not changed unless ``copy`` is
    false (then it is the graph returned, or left in an unspecified state)."""
    if copy:
        model = _copy(model)
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    drop: set[int] = set()
    add: list[onnx.NodeProto] = []
    shape_fix: dict[str, str] = {}
    for i in range(layers):
        plan = _layer(i, producer, consumers)
        if plan is None:
            return None
        nodes, removed, shapes = plan
        add += nodes
        drop |= {id(n) for n in removed}
        shape_fix.update(shapes)
    kept = [n for n in g.node if id(n) not in drop]
    for n in kept:  # Shape(present) -> the past's shape with the new tokens counted in
        if n.op_type == "Shape" and n.input[0] in shape_fix:
            n.op_type = "Identity"
            n.input[0] = shape_fix[n.input[0]]
            del n.attribute[:]
    del g.node[:]
    g.node.extend(_toposort(kept + add))
    for out in g.output:
        if out.name.startswith("present."):
            dims = out.type.tensor_type.shape.dim
            if len(dims) == 4:
                dims[2].ClearField("dim_value")
                dims[2].dim_param = "sequence_length"
    return model


def _layer(i, producer, consumers):
    key, value = f"present.{i}.key", f"present.{i}.value"
    ck, cv = producer.get(key), producer.get(value)
    if ck is None or cv is None or ck.op_type != "Concat" or cv.op_type != "Concat":
        return None
    if len(ck.input) != 2 or len(cv.input) != 2 or _axis(ck) not in (2, -2) or _axis(cv) not in (2, -2):
        return None
    past_k, new_k = ck.input
    past_v, new_v = cv.input
    shapes, transposes, value_mm = [], [], []
    for c in consumers.get(key, []):
        if c.op_type == "Shape" and not c.attribute:
            shapes.append(c)
        elif c.op_type == "Transpose" and _perm(c) == [0, 1, 3, 2]:
            transposes.append(c)
        else:
            return None
    for c in consumers.get(value, []):
        if c.op_type == "MatMul" and c.input[1] == value:
            value_mm.append(c)
        else:
            return None
    score_mm = [m for t in transposes for m in consumers.get(t.output[0], [])]
    if len(transposes) != 1 or len(value_mm) != 1 or len(score_mm) != 1:
        return None
    (tr,), (qk,), (pv,) = transposes, score_mm, value_mm
    if score_mm[0].op_type != "MatMul" or qk.input[1] != tr.output[0]:
        return None
    p = f"/append_kv/{i}/"
    q, scores = qk.input[0], qk.output[0]
    probs, out = pv.input[0], pv.output[0]
    nodes = [
        helper.make_node("Identity", [new_k], [key], name=p + "present_key"),
        helper.make_node("Identity", [new_v], [value], name=p + "present_value"),
        # scores against the past and against the new tokens, side by side
        helper.make_node("Transpose", [past_k], [p + "kt_past"], name=p + "kt_past", perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", [q, p + "kt_past"], [p + "s_past"], name=p + "s_past"),
        helper.make_node("Transpose", [new_k], [p + "kt_new"], name=p + "kt_new", perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", [q, p + "kt_new"], [p + "s_new"], name=p + "s_new"),
        helper.make_node("Concat", [p + "s_past", p + "s_new"], [scores], name=p + "scores", axis=-1),
        # the probabilities split where the past ends
        helper.make_node("Shape", [past_k], [p + "past_shape"], name=p + "past_shape"),
        helper.make_node("Shape", [new_k], [p + "new_shape"], name=p + "new_shape"),
        _const(p + "two", [2]),
        _const(p + "three", [3]),
        _const(p + "zero", [0]),
        _const(p + "end", [_INT64_MAX]),
        _const(p + "last", [-1]),
        _const(p + "seq_axis", [0, 0, 1, 0]),
        helper.make_node(
            "Slice", [p + "past_shape", p + "two", p + "three"], [p + "past_len"], name=p + "past_len"
        ),
        helper.make_node(
            "Slice", [probs, p + "zero", p + "past_len", p + "last"], [p + "p_past"], name=p + "p_past"
        ),
        helper.make_node(
            "Slice", [probs, p + "past_len", p + "end", p + "last"], [p + "p_new"], name=p + "p_new"
        ),
        helper.make_node("MatMul", [p + "p_past", past_v], [p + "o_past"], name=p + "o_past"),
        helper.make_node("MatMul", [p + "p_new", new_v], [p + "o_new"], name=p + "o_new"),
        helper.make_node("Add", [p + "o_past", p + "o_new"], [out], name=p + "out"),
        # what Shape(present) gave: the past's shape, its length plus the new tokens'
        helper.make_node("Mul", [p + "new_shape", p + "seq_axis"], [p + "new_len"], name=p + "new_len"),
        helper.make_node("Add", [p + "past_shape", p + "new_len"], [p + "kv_shape"], name=p + "kv_shape"),
    ]
    return nodes, [ck, cv, tr, qk, pv], {key: p + "kv_shape"}


def _const(name: str, values: list[int]) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], name=name, value=numpy_helper.from_array(np.array(values, np.int64), name)
    )


def _axis(node: onnx.NodeProto) -> int | None:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), None)


def _perm(node: onnx.NodeProto) -> list[int] | None:
    perm = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "perm"), None)
    return list(perm) if perm is not None else None


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _toposort(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``nodes`` with every node after the producers of its inputs, otherwise in their given order."""
    made = {o: j for j, n in enumerate(nodes) for o in n.output}
    waiting = [{made[i] for i in n.input if i in made and made[i] != j} for j, n in enumerate(nodes)]
    users: dict[int, list[int]] = {}
    for j, deps in enumerate(waiting):
        for d in deps:
            users.setdefault(d, []).append(j)
    ready = [j for j, deps in enumerate(waiting) if not deps]
    heapq.heapify(ready)
    order = []
    while ready:
        j = heapq.heappop(ready)
        order.append(nodes[j])
        for u in users.get(j, ()):
            waiting[u].discard(j)
            if not waiting[u]:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ValueError("the rewritten graph has a cycle")
    return order
