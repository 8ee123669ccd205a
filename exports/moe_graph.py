"""A truly sparse MoE graph: optimum's qwen3_moe export rewritten to ONNX Runtime ``com.microsoft.MoE``.

optimum's patched Qwen3-MoE forward unrolls a Python loop over all E experts of each layer: for each
expert a ``NonZero`` over the routing mask finds its tokens, ``Gather`` collects them, the SwiGLU MLP
runs and ``ScatterElements`` adds the result back — about 470 nodes per layer for 8 experts, most of
them shape bookkeeping executed on every pass. :func:`sparsify_moe` replaces each such block by one
``MoE`` contrib node, which routes top-k and runs the expert GEMMs in a single kernel.

The blocks are found by structure, not by node names:

- **router**: ``Softmax`` over ``MatMul(x (T, D), W_r (D, E))`` whose probabilities reach a ``TopK``;
  a ``ReduceSum`` → ``Div`` on the top-k values means the weights are renormalized (``norm_topk_prob``);
- **experts**: SwiGLU MLPs ``down(silu(gate(h)) * up(h))`` with constant weights whose input ``h`` is
  rows of ``x`` moved by shape-only ops; an expert's index is the constant in
  ``Gather(expert_mask, e)``, where the mask is a ``OneHot`` of the router's choices;
- **output**: the first tensor that depends on all E expert outputs (the ``(T, D)`` accumulator),
  which must depend on nothing but ``x`` and constants — the residual add comes after it.

ORT's CPU kernel wants ``activation_type="swiglu"`` with gate and up fused into fc1 and *interleaved*
by row (``swiglu_fusion=1``; the concatenated layout is rejected on CPU), takes raw router logits
(it applies the softmax itself), and computes ``silu(g) * u`` with ``activation_alpha=1``,
``activation_beta=0`` — checked against a numpy reference and against torch in ``tests/test_graph.py``.

Speed (``python -m exports.graph bench-moe``, ONNX Runtime 1.32, one CPU thread, D=256, 4 layers,
E=8, A=2, I=512). Against the graph that computes every expert for every token
(:func:`exports.moe_dense.densify_moe`, the dense way: three full-width GEMMs a block) the sparse
graph is 2.5–3.3× faster at batch-1 decode, no faster at 4–16 rows (0.84–1.13×: most experts get a
row or two, and the kernel re-packs each one's weights), 1.35× at batch-64 decode and 1.9–2.1× on
prefills of 256 and 1,024 tokens (the MoE blocks alone 3.0–4.8×, 0.8–1.1×, 1.5×, 2.1×, 2.5×). Against optimum's export it wins
only where optimum's loop is mostly bookkeeping (decode at batch 1: ~1.2–1.6×) and loses once
several experts get tokens (~0.76–0.8×). optimum's loop is not dense — each expert already runs only on its
own tokens — so both read every hit expert's weights; ORT prepacks the loop's constant ``MatMul``
weights once, while the CPU ``MoE`` kernel calls ``MlasGemm`` with an unpacked, transposed B per
expert per call and so re-packs ~1.5 MB of weights per expert per layer per pass.

Letter legend: T = tokens (rows × positions), D = hidden size, E = experts, I = expert intermediate
size, A = active experts per token (top-k).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from exports.graph import (
    SHAPE_ONLY_OPS,
    GraphIndex,
    GraphRewriteError,
    build_random_model,
    compare_graphs,
    ensure_unique_node_names,
    interface,
    load_onnx,
    model_feeds,
    ort_session,
    prune_dead_nodes,
    save_onnx,
    time_session,
)

MS_DOMAIN = "com.microsoft"
_PASS_THROUGH = ("Cast", "Identity")


@dataclass
class Expert:
    """One expert's SwiGLU MLP, weights as ONNX ``MatMul`` right operands (``x @ W``)."""

    index: int
    gate: np.ndarray  # (D, I)
    up: np.ndarray  # (D, I)
    down: np.ndarray  # (I, D)
    output: str  # name of the tensor down(...) produces, (T_e, D)


@dataclass
class MoEBlock:
    """A located MoE block: where it reads, where it writes, and its weights."""

    router: onnx.NodeProto  # the Softmax
    x: str  # (T, D) input rows the router and the experts read
    logits: str  # (T, E) router logits
    k: int  # A
    normalize: bool
    experts: list[Expert]
    output: str  # (T, D) weighted sum of the experts, before any reshape / residual add


@dataclass(frozen=True)
class SparsifyReport:
    """What :func:`sparsify_moe` did."""

    blocks: int
    experts: int
    k: int
    normalize: bool
    nodes_before: int
    nodes_after: int


def _load_config(config: Mapping[str, Any] | str | Path | Any) -> dict[str, Any]:
    if isinstance(config, (str, Path)):
        path = Path(config)
        return json.loads((path / "config.json" if path.is_dir() else path).read_text())
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):  # a transformers PretrainedConfig
        return config.to_dict()
    raise TypeError(f"config must be a dict, a config.json path or a transformers config, not {type(config)}")


def expected_moe_layers(config: Mapping[str, Any]) -> int:
    """How many decoder layers of a Qwen3-MoE config have a sparse MoE block (the others are dense MLPs)."""
    layers = int(config["num_hidden_layers"])
    step = int(config.get("decoder_sparse_step") or 1)
    dense = set(config.get("mlp_only_layers") or [])
    return sum(1 for i in range(layers) if i not in dense and (i + 1) % step == 0)


def _find_routers(index: GraphIndex) -> list[tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto]]:
    """(MatMul, Softmax, TopK) triples: router logits → probabilities → top-k choice."""
    found = []
    for node in index.graph.node:
        if node.op_type != "Softmax":
            continue
        matmul = index.producer.get(node.input[0])
        if matmul is None or matmul.op_type != "MatMul":
            continue
        w = index.const(matmul.input[1])
        if w is None or w.ndim != 2:
            continue
        topk = [n for n in index.through(node.output[0], _PASS_THROUGH) if n.op_type == "TopK"]
        if len(topk) == 1:
            found.append((matmul, node, topk[0]))
    return found


def _topk_normalized(index: GraphIndex, topk: onnx.NodeProto) -> bool:
    """True when the top-k values are divided by their own sum (Qwen3-MoE's ``norm_topk_prob``)."""
    uses = index.through(topk.output[0], _PASS_THROUGH)
    sums = {o for n in uses if n.op_type == "ReduceSum" for o in n.output}
    return any(n.op_type == "Div" and n.input[1] in sums for n in uses)


def _match_swiglu(index: GraphIndex, down: onnx.NodeProto) -> tuple[str, np.ndarray, np.ndarray] | None:
    """If ``down`` is ``MatMul(silu(h @ Wg) * (h @ Wu), Wd)``, return ``(h, Wg, Wu)``."""
    prod = index.producer.get(down.input[0])
    if prod is None or prod.op_type != "Mul":
        return None
    for act_name, up_name in (prod.input, reversed(prod.input)):
        act, up = index.producer.get(act_name), index.producer.get(up_name)
        if act is None or up is None or act.op_type != "Mul" or up.op_type != "MatMul":
            continue
        # silu(g) = g * sigmoid(g): one operand is the gate MatMul, the other Sigmoid of the same.
        for g_name, s_name in (act.input, reversed(act.input)):
            gate, sig = index.producer.get(g_name), index.producer.get(s_name)
            if (
                gate is not None
                and sig is not None
                and gate.op_type == "MatMul"
                and sig.op_type == "Sigmoid"
                and sig.input[0] == g_name
                and gate.input[0] == up.input[0]
            ):
                wg, wu = index.const(gate.input[1]), index.const(up.input[1])
                if wg is not None and wu is not None:
                    return gate.input[0], wg, wu
    return None


def _source_rows(index: GraphIndex, h: str, sources: set[str]) -> str | None:
    """Follow ``h`` back through shape-only ops (data operand only) to one of ``sources``."""
    while h not in sources:
        node = index.producer.get(h)
        if node is None or node.op_type not in SHAPE_ONLY_OPS:
            return None
        h = node.input[0]
    return h


def _expert_index(index: GraphIndex, h: str, stop: set[str]) -> int | None:
    """The constant ``e`` of the ``Gather(expert_mask, e)`` that selects which rows reach input ``h``."""
    candidates = []
    for node in index.ancestors(h, stop):
        if node.op_type != "Gather":
            continue
        e = index.const(node.input[1])
        if e is None or e.size != 1:
            continue
        if any(n.op_type == "OneHot" for n in index.ancestors(node.input[0], stop)):
            candidates.append(int(e.reshape(())))
    return candidates[0] if len(set(candidates)) == 1 else None


def _block_output(index: GraphIndex, experts: list[Expert]) -> str | None:
    """The first tensor (in topological order) whose values depend on every expert's output.

    ``Shape`` / ``Size`` outputs carry no dependency: optimum's loop takes the shape of the running sum
    to expand the next expert's output, and that is bookkeeping, not a sum of expert values.
    """
    full = (1 << len(experts)) - 1
    mask: dict[str, int] = {e.output: 1 << i for i, e in enumerate(experts)}
    start = min(index.position[index.producer[e.output].name] for e in experts)
    for node in index.graph.node[start + 1 :]:
        m = 0
        for i in node.input:
            m |= mask.get(i, 0)
        if not m or node.op_type in ("Shape", "Size"):
            continue
        for o in node.output:
            mask[o] = m
        if m == full:
            return node.output[0]
    return None


def locate_moe_blocks(model: onnx.ModelProto, src: str | Path = "model") -> list[MoEBlock]:
    """Find every MoE block of an optimum qwen3_moe export by its structure (see the module docstring).

    Raises:
        GraphRewriteError: naming the first part of a block it could not find.
    """
    graph = model.graph
    index = GraphIndex(graph)
    routers = _find_routers(index)
    if not routers:
        raise GraphRewriteError(
            f"{src}: no MoE router found (expected MatMul(x, W_router) → Softmax → TopK); "
            "is this an optimum qwen3_moe export?"
        )
    by_x: dict[str, tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto]] = {}
    for matmul, softmax, topk in routers:
        by_x[matmul.input[0]] = (matmul, softmax, topk)
    # The (B, S, D) tensor each router's (T, D) rows are reshaped from: stop walks there.
    stops = set(by_x)
    for x in by_x:
        p = index.producer.get(x)
        if p is not None and p.op_type == "Reshape":
            stops.add(p.input[0])

    experts_of: dict[str, list[Expert]] = {x: [] for x in by_x}
    for node in graph.node:
        if node.op_type != "MatMul" or (wd := index.const(node.input[1])) is None:
            continue
        match = _match_swiglu(index, node)
        if match is None:
            continue
        h, wg, wu = match
        x = _source_rows(index, h, set(by_x))
        if x is None:
            continue  # a dense MLP (mlp_only_layers) or a shared expert: not routed, left as it is
        topk = by_x[x][2]
        e = _expert_index(index, h, stops | set(topk.output))
        if e is None:
            raise GraphRewriteError(
                f"{src}: expert MLP at {node.name!r} reads routed rows of {x!r} but its expert index "
                "(Gather(OneHot(top-k), e)) could not be found"
            )
        experts_of[x].append(Expert(e, wg, wu, wd, node.output[0]))

    blocks = []
    for x, (matmul, softmax, topk) in by_x.items():
        experts = sorted(experts_of[x], key=lambda e: e.index)
        where = f"{src}: MoE block with router {softmax.name!r}"
        if not experts:
            raise GraphRewriteError(
                f"{where}: no SwiGLU expert MLPs (down(silu(gate(h)) * up(h))) read its rows"
            )
        n_exp = index.const(matmul.input[1]).shape[1]  # W_router (D, E)
        if [e.index for e in experts] != list(range(n_exp)):
            raise GraphRewriteError(
                f"{where}: router has {n_exp} experts but found expert indices {[e.index for e in experts]}"
            )
        k = index.const(topk.input[1])
        if k is None:
            raise GraphRewriteError(f"{where}: TopK's k is not a constant")
        output = _block_output(index, experts)
        if output is None:
            raise GraphRewriteError(f"{where}: no tensor combines the outputs of all {n_exp} experts")
        leaks = {i for n in index.ancestors(output, stops) for i in n.input if i in index.graph_inputs}
        if leaks:
            # The first all-expert tensor already mixes in the residual stream: not a pure MoE output.
            raise GraphRewriteError(f"{where}: expert outputs merge with {sorted(leaks)} before being summed")
        blocks.append(
            MoEBlock(
                softmax,
                x,
                softmax.input[0],
                int(k.reshape(-1)[0]),
                _topk_normalized(index, topk),
                experts,
                output,
            )
        )
    return blocks


def _fused_weights(experts: list[Expert]) -> tuple[np.ndarray, np.ndarray]:
    """fc1 ``(E, 2I, D)`` with gate and up rows interleaved ``[g0, u0, g1, u1, ...]``, fc2 ``(E, D, I)``."""
    gate = np.stack([e.gate.T for e in experts])  # (E, I, D)
    up = np.stack([e.up.T for e in experts])  # (E, I, D)
    n_exp, inter, hidden = gate.shape
    fc1 = np.stack([gate, up], axis=2).reshape(n_exp, 2 * inter, hidden)
    fc2 = np.stack([e.down.T for e in experts])  # (E, D, I)
    return np.ascontiguousarray(fc1), np.ascontiguousarray(fc2)


def sparsify_moe(
    src_onnx: str | Path, dst_onnx: str | Path, config: Mapping[str, Any] | str | Path | Any
) -> SparsifyReport:
    """Rewrite each MoE block of an optimum qwen3_moe export as one ``com.microsoft.MoE`` node.

    Weights come from the graph's initializers; the config only cross-checks what the graph says
    (number of MoE layers, experts, top-k, renormalization). Everything outside the MoE blocks —
    attention, KV inputs and outputs, the LM head — is kept as it is.

    Args:
        src_onnx: the exported ``model.onnx``.
        dst_onnx: where the sparse model goes (may equal ``src_onnx``).
        config: the model's ``config.json`` as a dict, its path (or directory), or a transformers config.

    Returns:
        A :class:`SparsifyReport` with block / expert counts and graph sizes.

    Raises:
        GraphRewriteError: if the graph is not a recognizable qwen3_moe export or disagrees with
            ``config`` (the message names what is missing or different).
    """
    cfg = _load_config(config)
    model = load_onnx(src_onnx)
    graph = model.graph
    ensure_unique_node_names(graph)
    before = interface(model)
    nodes_before = len(graph.node)
    blocks = locate_moe_blocks(model, src_onnx)

    want = {
        "MoE blocks": (len(blocks), expected_moe_layers(cfg)),
        "experts": ({len(b.experts) for b in blocks}, {int(cfg.get("num_experts") or 0)}),
        "top-k": ({b.k for b in blocks}, {int(cfg.get("num_experts_per_tok") or 0)}),
        "norm_topk_prob": ({b.normalize for b in blocks}, {bool(cfg.get("norm_topk_prob", False))}),
    }
    for what, (found, expected) in want.items():
        if found != expected:
            raise GraphRewriteError(f"{src_onnx}: graph has {what} {found} but config says {expected}")

    index = GraphIndex(graph)
    for b, block in enumerate(blocks):
        fc1, fc2 = _fused_weights(block.experts)
        names = {k: f"moe.{b}.{k}" for k in ("fc1_experts_weights", "fc2_experts_weights", "output")}
        graph.initializer.extend(
            [
                numpy_helper.from_array(fc1, names["fc1_experts_weights"]),
                numpy_helper.from_array(fc2, names["fc2_experts_weights"]),
            ]
        )
        node = helper.make_node(
            "MoE",
            # input (T, D), router logits (T, E), fc1 (E, 2I, D), no fc1 bias, fc2 (E, D, I)
            [block.x, block.logits, names["fc1_experts_weights"], "", names["fc2_experts_weights"]],
            [names["output"]],  # (T, D)
            name=f"moe.{b}.MoE",
            domain=MS_DOMAIN,
            k=block.k,
            activation_type="swiglu",
            swiglu_fusion=1,
            activation_alpha=1.0,  # silu(g) = g * sigmoid(1 * g)
            activation_beta=0.0,  # times (u + 0)
            normalize_routing_weights=int(block.normalize),
        )
        # The accumulator's producer comes after both x and the logits, so the node can go just
        # before it and the list stays topologically sorted; the old block then has no consumer.
        graph.node.insert(index.position[index.producer[block.output].name], node)
        index = GraphIndex(graph)
        for consumer in index.consumers.get(block.output, []):
            for i, name in enumerate(consumer.input):
                if name == block.output:
                    consumer.input[i] = names["output"]
        index = GraphIndex(graph)
    prune_dead_nodes(graph)
    live = {o for n in graph.node for o in n.output}
    if stale := [e.output for b in blocks for e in b.experts if e.output in live]:
        raise GraphRewriteError(f"{src_onnx}: expert outputs {stale[:3]} are still used after the rewrite")
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    if interface(model) != before:
        raise GraphRewriteError(f"{src_onnx}: rewrite changed the graph's inputs or outputs (a bug)")
    save_onnx(model, dst_onnx)
    return SparsifyReport(
        blocks=len(blocks),
        experts=len(blocks[0].experts),
        k=blocks[0].k,
        normalize=blocks[0].normalize,
        nodes_before=nodes_before,
        nodes_after=len(graph.node),
    )


def without_moe(sparse_onnx: Path, dst_onnx: Path) -> Path:
    """A copy of a sparsified graph whose MoE nodes pass their input through: times the rest of the model.

    Block time is then ``time(graph) - time(without_moe)`` — measured by running the graphs, not by
    ONNX Runtime's profiler, whose per-node overhead would inflate the ~3,000-node all-experts graph.
    """
    model = load_onnx(sparse_onnx)
    for node in model.graph.node:
        if node.op_type == "MoE":
            x, out, name = node.input[0], node.output[0], node.name
            node.Clear()
            node.CopyFrom(helper.make_node("Identity", [x], [out], name=name))
    prune_dead_nodes(model.graph)
    return save_onnx(model, dst_onnx)


def bench_moe(
    out_dir: str | Path,
    threads: int = 1,
    hidden: int = 256,
    layers: int = 4,
    experts: int = 8,
    moe_intermediate: int = 512,
    k: int = 2,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Time the :func:`sparsify_moe` graph against optimum's graph and the all-experts reference.

    Three graphs of one random qwen3_moe run the same feeds in the same process, alternating:
    optimum's export (each expert on its routed tokens, by gather and scatter), its rewrite with
    one ``MoE`` node per block, and :func:`exports.moe_dense.densify_moe` (every expert on every
    token). The MoE blocks' own time is each graph's minus :func:`without_moe`'s. Prints ratios.

    Returns:
        One dict per case: shapes, milliseconds per pass (``base`` optimum, ``new`` sparse, ``dense``
        all experts), whole-graph and MoE-block speed-ups of the sparse graph against each.
    """
    from exports.moe_dense import densify_moe

    out = Path(out_dir)
    onnx_dir = build_random_model(
        "qwen3_moe", out, seed, hidden_size=hidden, num_hidden_layers=layers, num_experts=experts,
        num_experts_per_tok=k, moe_intermediate_size=moe_intermediate, intermediate_size=moe_intermediate,
    )  # fmt: skip
    base, sparse = onnx_dir / "model.onnx", out / "sparse" / "model.onnx"
    report = sparsify_moe(base, sparse, onnx_dir / "config.json")
    dense = out / "all_experts" / "model.onnx"
    dense.parent.mkdir(parents=True, exist_ok=True)
    densify_moe(base, dense)
    print(
        f"qwen3_moe D={hidden} layers={layers} E={experts} A={k} I={moe_intermediate}: "
        f"{report.nodes_before} nodes -> {report.nodes_after} ({report.blocks} MoE nodes), {threads} thread(s)"
    )
    # decode from one row to 64 (the cascade's teacher sees a few rows a pass, a model serving a
    # village alone up to 64), and prefills of one prompt to sixteen
    cases = [
        *[("decode", rows, 1, 64) for rows in (1, 4, 16, 64)],
        *[("prefill", rows, 64, 0) for rows in (1, 4, 16)],
    ]
    rows = compare_graphs("moe", base, sparse, cases, vocab=2048, threads=threads)
    sessions = {
        "dense": ort_session(dense, threads),
        "new": ort_session(sparse, threads),
        "rest": ort_session(without_moe(sparse, out / "no_moe" / "model.onnx"), threads),
    }
    for row in rows:
        feeds = model_feeds(sessions["rest"], row["batch"], row["new_tokens"], row["past"], 2048)
        t = {name: 1e3 * time_session(sess, feeds) for name, sess in sessions.items()}
        t = {name: min(v, 1e3 * time_session(sessions[name], feeds)) for name, v in t.items()}  # alternate
        row["rest_ms"], row["dense_ms"] = t["rest"], t["dense"]
        row["new_ms"] = min(row["new_ms"], t["new"])
        row["base_moe_ms"], row["new_moe_ms"] = row["base_ms"] - t["rest"], row["new_ms"] - t["rest"]
        row["dense_moe_ms"] = t["dense"] - t["rest"]
        row["moe_speedup"] = row["base_moe_ms"] / max(row["new_moe_ms"], 1e-6)
        row["speedup_vs_dense"] = row["dense_ms"] / row["new_ms"]
        row["moe_speedup_vs_dense"] = row["dense_moe_ms"] / max(row["new_moe_ms"], 1e-6)
        print(
            f"moe {row['case']:8s} B={row['batch']:3d}: MoE blocks alone: all experts {row['dense_moe_ms']:7.2f} ms, "
            f"optimum {row['base_moe_ms']:7.2f} ms, sparse {row['new_moe_ms']:7.2f} ms "
            f"(x{row['moe_speedup_vs_dense']:.2f} vs all experts, x{row['moe_speedup']:.2f} vs optimum); "
            f"whole graph: all experts {row['dense_ms']:.2f} ms, optimum {row['base_ms']:.2f} ms, sparse "
            f"{row['new_ms']:.2f} ms (x{row['speedup_vs_dense']:.2f} vs all experts, "
            f"x{row['base_ms'] / row['new_ms']:.2f} vs optimum); rest {t['rest']:.2f} ms"
        )
    return rows
