"""The all-experts reference: each MoE block rewritten to compute every expert for every token.

optimum's qwen3_moe export is not that graph — its loop runs each expert on the tokens routed to it
only (``exports.moe_graph``) — so the speed of the sparse ``MoE`` node against it says what ONNX
Runtime's kernel buys over a gather-scatter loop, not what sparsity buys. :func:`densify_moe` builds
the graph that computes all E experts for all T tokens and weights them by the same top-k routing
(the other experts' weights are zero), written as dense as ONNX allows, three large GEMMs a block:

    w = scatter(top-k of softmax(logits))                      (T, E), zero off the top-k
    h = silu(x @ Wg) * (x @ Wu)                                (T, E·I), every expert's gate and up
    y = (h viewed (T, E, I) * w[..., None]) viewed (T, E·I) @ Wd   (T, D), Wd the E downs stacked

so ONNX Runtime prepacks each weight once and runs each GEMM at full width: the fastest way to
compute every expert, and E / A times the expert arithmetic of the sparse graph.

Letter legend as in ``exports.moe_graph``: T tokens, D hidden size, E experts, I expert
intermediate size, A active experts (top-k).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from exports.graph import (
    GraphIndex,
    GraphRewriteError,
    ensure_unique_node_names,
    interface,
    load_onnx,
    prune_dead_nodes,
    save_onnx,
)
from exports.moe_graph import MoEBlock, locate_moe_blocks


def densify_moe(src_onnx: str | Path, dst_onnx: str | Path) -> int:
    """Rewrite each MoE block of an optimum qwen3_moe export to compute all experts for all tokens.

    Returns:
        the number of blocks rewritten.

    Raises:
        GraphRewriteError: if the graph is not a recognizable qwen3_moe export.
    """
    model = load_onnx(src_onnx)
    graph = model.graph
    ensure_unique_node_names(graph)
    before = interface(model)
    blocks = locate_moe_blocks(model, src_onnx)
    for b, block in enumerate(blocks):
        inits, nodes, out = _dense_block(b, block)
        graph.initializer.extend(inits)
        index = GraphIndex(graph)
        at = index.position[index.producer[block.output].name]
        for i, node in enumerate(nodes):
            graph.node.insert(at + i, node)
        index = GraphIndex(graph)
        for consumer in index.consumers.get(block.output, []):
            for i, name in enumerate(consumer.input):
                if name == block.output:
                    consumer.input[i] = out
    prune_dead_nodes(graph)
    live = {o for n in graph.node for o in n.output}
    if stale := [e.output for blk in blocks for e in blk.experts if e.output in live]:
        raise GraphRewriteError(f"{src_onnx}: expert outputs {stale[:3]} are still used after the rewrite")
    if interface(model) != before:
        raise GraphRewriteError(f"{src_onnx}: rewrite changed the graph's inputs or outputs (a bug)")
    save_onnx(model, dst_onnx)
    return len(blocks)


def _dense_block(b: int, block: MoEBlock) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto], str]:
    """Initializers, nodes (in order) and output name computing ``block`` for every expert and token."""
    experts = block.experts
    n_exp, inter = len(experts), experts[0].gate.shape[1]
    p = f"dense_moe.{b}."
    weights = {
        "wg": np.concatenate([e.gate for e in experts], axis=1),  # (D, E·I)
        "wu": np.concatenate([e.up for e in experts], axis=1),  # (D, E·I)
        "wd": np.concatenate([e.down for e in experts], axis=0),  # (E·I, D)
        "k": np.array([block.k], np.int64),
        "axis_last": np.array([-1], np.int64),
        "axis_2": np.array([2], np.int64),
        "shape_tei": np.array([0, n_exp, inter], np.int64),
        "shape_t_ei": np.array([0, n_exp * inter], np.int64),
    }
    inits = [numpy_helper.from_array(np.ascontiguousarray(v), p + k) for k, v in weights.items()]

    def node(op, inputs, outputs, **attrs):
        return helper.make_node(op, inputs, [p + o for o in outputs], name=p + outputs[0], **attrs)

    probs = block.router.output[0]  # the router's softmax over the logits, (T, E)
    nodes = [
        node("TopK", [probs, p + "k"], ["vals", "idx"], axis=-1),
        node("Shape", [probs], ["shape_te"]),
        node("ConstantOfShape", [p + "shape_te"], ["zeros"], value=helper.make_tensor("z", 1, [1], [0.0])),
    ]
    vals = p + "vals"
    if block.normalize:
        nodes += [
            node("ReduceSum", [vals, p + "axis_last"], ["vals_sum"], keepdims=1),
            node("Div", [vals, p + "vals_sum"], ["vals_norm"]),
        ]
        vals = p + "vals_norm"
    nodes += [
        node("ScatterElements", [p + "zeros", p + "idx", vals], ["w"], axis=1),  # (T, E)
        node("MatMul", [block.x, p + "wg"], ["g"]),
        node("MatMul", [block.x, p + "wu"], ["u"]),
        node("Sigmoid", [p + "g"], ["sig"]),
        node("Mul", [p + "g", p + "sig"], ["silu"]),
        node("Mul", [p + "silu", p + "u"], ["h"]),  # (T, E·I)
        node("Reshape", [p + "h", p + "shape_tei"], ["h3"]),
        node("Unsqueeze", [p + "w", p + "axis_2"], ["w3"]),
        node("Mul", [p + "h3", p + "w3"], ["hw"]),
        node("Reshape", [p + "hw", p + "shape_t_ei"], ["hw2"]),
        node("MatMul", [p + "hw2", p + "wd"], ["out"]),  # (T, D)
    ]
    return inits, nodes, p + "out"
