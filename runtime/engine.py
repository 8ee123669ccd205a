"""ONNX Runtime engine: one forward pass over a ragged batch with its KV tensors.

Shapes (letter legend): B = rows in the batch, T = new tokens per row this pass, W = KV columns,
L = layers, H = KV heads, D = head size, V = vocabulary.

The running batch keeps its KV as the graph's own ``present.*`` outputs, fed back as
``past_key_values.*`` on the next pass, so a decode step copies nothing. Rows are ragged: a row's
valid KV columns are marked in an attention mask ``(B, W)`` and positions are explicit
(``position_ids``), so rows of different lengths — and holes left by padding — coexist in one
tensor. The layout only changes (a copy) when rows join or leave the batch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime.artifacts import ModelArtifacts, ModelError, ModelInfo

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def choose_providers(
    requested: list[str] | str | None = None, available: list[str] | None = None
) -> list[str]:
    """Pick ONNX Runtime execution providers.

    Args:
        requested: ``None`` or ``"cpu"`` for CPU; ``"auto"`` for CUDA when this onnxruntime build has
            it, else CPU; ``"cuda"`` to require CUDA; or an explicit provider list.
        available: the providers this onnxruntime offers (``ort.get_available_providers()``).

    Raises:
        ModelError: when an explicitly requested provider is not available.
    """
    available = list(available if available is not None else ort.get_available_providers())
    if requested is None or requested == "cpu":
        return [CPU]
    if requested == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    if requested == "cuda":
        requested = [CUDA, CPU]
    if isinstance(requested, str):
        raise ModelError(
            f"unknown provider choice {requested!r}; use 'cpu', 'cuda', 'auto' or a provider list"
        )
    missing = [p for p in requested if p not in available]
    if missing:
        raise ModelError(
            f"execution provider(s) {', '.join(missing)} not available in this onnxruntime build "
            f"(available: {', '.join(available)}); install onnxruntime-gpu for CUDA or use 'auto'"
        )
    return list(requested)


def session_options(threads: int, inter_op_threads: int = 1) -> ort.SessionOptions:
    """ONNX Runtime session options for serving: ``threads`` intra-op threads (0: all cores),
    sequential execution, every graph optimization, denormals flushed to zero.

    Flushing denormals (FTZ/DAZ) matters for attention: a masked or padded score underflows in the
    softmax's exp, and on x86 each denormal result takes a microcode slow path. ONNX Runtime sets the
    flags on its pool threads and, for the first session a process creates, on the creating thread,
    whose later threads (a worker's batcher loop) inherit them. In the village the masked softmaxes
    ran 6–11× faster with them and had been 30% of the engine's time; the outputs did not change.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    return opts


def flushes_denormals() -> bool:
    """Whether this thread flushes denormal floats to zero (see :func:`session_options`)."""
    tiny = np.array([1e-40], np.float32)  # a denormal float32
    return bool((tiny * np.float32(1.0))[0] == 0.0)


def set_numpy_hugepages(enabled: bool) -> bool:
    """Whether numpy asks the kernel for transparent huge pages for its large arrays (it does by
    default on Linux for arrays of 4 MB and more); returns the previous setting.

    The batcher allocates KV batches of a few MB at a time, of ever-changing shapes, so each one
    lands on fresh pages. On the 2-core VM the benchmarks run on, huge-page faults made merging
    decode cohorts 5x slower (1.78 vs 0.36 s per 2,000 decisions) and worker Python 1.6-2x
    costlier; workers therefore turn it off (``WorkerConfig.numpy_hugepages``). It is process-wide.
    """
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _set_madvise_hugepage
    return bool(_set_madvise_hugepage(bool(enabled)))


@dataclass
class BatchKV:
    """KV tensors of a ragged batch: ``2L`` arrays ``(B, H, C, D)`` and a validity mask ``(B, W)``.

    The batch holds ``W`` columns; arrays may have spare columns after them (``C >= W``, zeros), which
    :meth:`append` fills without copying the columns before.
    """

    kv: list[np.ndarray]
    mask: np.ndarray

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    @property
    def capacity(self) -> int:
        """Columns the arrays hold, spare ones included."""
        return self.kv[0].shape[2] if self.kv else self.width

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.kv)

    def append(self, new: list[np.ndarray], input_mask: np.ndarray) -> BatchKV:
        """The batch with ``T`` new columns: ``new`` is the ``2L`` arrays ``(B, H, T, D)`` of the new
        tokens' KV, ``input_mask`` ``(B, T)`` which of them are real. They are written into the spare
        columns; when too few are left, the batch moves to arrays with room for about an eighth more
        (:func:`spare_columns`), the one copy of the columns before. The result shares this batch's
        arrays: append to it, not to this one, from then on."""
        rows, T = input_mask.shape
        W, C = self.width, self.capacity
        kv = self.kv
        if W + T > C:
            _, H, _, D = kv[0].shape
            size = W + T + max(T, spare_columns(W))
            buf = np.empty((len(kv), rows, H, size, D), kv[0].dtype)  # 2L contiguous arrays
            for i, a in enumerate(kv):
                buf[i, :, :, :W] = a[:, :, :W]
            buf[:, :, :, W + T :] = 0  # spare columns are read (masked), so they must be finite
            kv = list(buf)
        for a, n in zip(kv, new):
            a[:, :, W : W + T] = n
        return BatchKV(kv, np.concatenate([self.mask, input_mask.astype(np.int64, copy=False)], axis=1))

    @staticmethod
    def empty(info: ModelInfo, rows: int, dtype=np.float32) -> BatchKV:
        shape = (rows, info.num_kv_heads, 0, info.head_dim)
        return BatchKV(
            [np.zeros(shape, dtype) for _ in range(2 * info.num_layers)], np.zeros((rows, 0), np.int64)
        )

    @staticmethod
    def from_prefixes(
        info: ModelInfo, prefixes: list[np.ndarray | list[np.ndarray] | None], dtype=np.float32
    ) -> BatchKV:
        """Left-padded batch from per-row prefix KV ``(L, 2, H, m, D)`` (``None`` = empty).

        A row's prefix may be a list of such arrays in token order (the radix-tree nodes it
        matched), copied one after another straight into the batch.
        """
        segs = [[] if p is None else (p if isinstance(p, list) else [p]) for p in prefixes]
        lengths = [sum(a.shape[3] for a in row) for row in segs]
        rows, width = len(prefixes), max(lengths, default=0)
        L, H, D = info.num_layers, info.num_kv_heads, info.head_dim
        buf = np.zeros((L, 2, rows, H, width, D), dtype)  # one allocation, 2L contiguous views
        mask = np.zeros((rows, width), np.int64)
        for b, (row, m) in enumerate(zip(segs, lengths)):
            at = width - m
            for a in row:
                n = a.shape[3]
                buf[:, :, b, :, at : at + n, :] = a
                at += n
            if m:
                mask[b, width - m :] = 1
        return BatchKV([buf[i, j] for i in range(L) for j in range(2)], mask)

    def select(self, rows: list[int] | np.ndarray, spare: int = 0) -> BatchKV:
        """The batch of ``rows`` only, without the leading columns none of them uses (one copy), with
        ``spare`` zero columns after them for :meth:`append`."""
        idx = np.asarray(rows, dtype=np.int64)
        if len(idx) == self.rows and bool((idx == np.arange(self.rows)).all()):
            return self  # every row, in order: nothing to copy
        mask = self.mask[idx]
        first, width = _first_used(mask), self.width
        mask = np.ascontiguousarray(mask[:, first:])
        if not spare:
            return BatchKV([a[idx, :, first:width, :] for a in self.kv], mask)
        _, H, _, D = self.kv[0].shape
        n = width - first
        buf = np.empty((len(self.kv), len(idx), H, n + spare, D), self.kv[0].dtype)
        for i, a in enumerate(self.kv):
            for j, r in enumerate(idx):  # row by row: no temporary copy of the selection
                buf[i, j, :, :n] = a[r, :, first:width]
        buf[:, :, :, n:] = 0
        return BatchKV(list(buf), mask)

    @staticmethod
    def concat(parts: list[BatchKV], spare: int = 0) -> BatchKV:
        """Stack batches along rows, left-padding each to the widest (one copy of each part), with
        ``spare`` zero columns after them for :meth:`append`."""
        parts = [p for p in parts if p.rows]
        if len(parts) == 1:
            return parts[0]
        width = max(p.width for p in parts)
        rows = sum(p.rows for p in parts)
        first = parts[0].kv[0]
        _, H, _, D = first.shape
        buf = np.empty((len(parts[0].kv), rows, H, width + spare, D), first.dtype)  # 2L contiguous arrays
        if spare:
            buf[:, :, :, width:] = 0
        mask = np.zeros((rows, width), np.int64)
        at = 0
        for p in parts:
            pad = width - p.width
            if pad:
                buf[:, at : at + p.rows, :, :pad, :] = 0
            for i, a in enumerate(p.kv):
                buf[i, at : at + p.rows, :, pad:width, :] = a[:, :, : p.width]
            mask[at : at + p.rows, pad:] = p.mask
            at += p.rows
        return BatchKV(list(buf), mask)

    def row_tokens(self, row: int, start: int, stop: int) -> np.ndarray:
        """KV of a row's valid tokens ``start:stop`` (in token order) as ``(L, 2, H, n, D)``."""
        cols = np.flatnonzero(self.mask[row])[start:stop]
        L = len(self.kv) // 2
        out = np.empty((L, 2, self.kv[0].shape[1], len(cols), self.kv[0].shape[3]), self.kv[0].dtype)
        contiguous = len(cols) and cols[-1] - cols[0] + 1 == len(cols)
        for i, a in enumerate(self.kv):
            out[i // 2, i % 2] = a[row, :, cols[0] : cols[-1] + 1, :] if contiguous else a[row][:, cols, :]
        return out


def spare_columns(width: int) -> int:
    """Spare KV columns a batch of ``width`` gets when it is copied anyway: about an eighth more, at
    least 16, so that :meth:`BatchKV.append` copies a growing batch every few dozen steps."""
    return max(16, width // 8)


def _first_used(mask: np.ndarray) -> int:
    """Index of the first column any row of ``mask`` ``(B, W)`` uses (``W`` if none)."""
    used = mask.any(axis=0)
    return int(np.argmax(used)) if used.any() else mask.shape[1]


APPEND_KV_MIN_FLOATS = 256
"""Floats of K and V a token and layer from which a model decodes on the append-only graph by
default. SmolLM2-135M has 384 (3 KV heads of 64): its decode passes of 16 rows after 316 tokens took
95 instead of 130 ms. The village's act models have 64–128, and there the graph's extra nodes cost
more than the copy saves (a replay of 1,000-agent ticks: 736–761 against 813–832 decisions/s)."""

MAX_APPEND_TOKENS = 16
"""Most new tokens a row for :meth:`OrtEngine.forward_append`'s graph: its score copy grows with
them, the KV copy it saves does not (the break-even is near 20 tokens for the village's act models,
40 for SmolLM2)."""


class OrtEngine:
    """Runs a model directory's ``model.onnx`` on ragged batches.

    Args:
        artifacts: a checked model directory (:func:`runtime.artifacts.load_model_dir`).
        providers: see :func:`choose_providers`.
        intra_op_threads: ONNX Runtime intra-op threads (``None``: ``MURMURATE_THREADS`` or all cores).
        inter_op_threads: ONNX Runtime inter-op threads.
        append_kv: also load the append-only decode graph (:mod:`runtime.kvgraph`) for
            :meth:`forward_append`, when the model's attention has the layout it rewrites. It is a
            second session (the weights are held twice), loaded from a rewritten copy of the graph that
            the first load writes to :func:`runtime.kvgraph.graph_cache_dir`. ``None`` (default): for
            models whose KV is at least :data:`APPEND_KV_MIN_FLOATS` floats a token and layer.
    """

    def __init__(
        self,
        artifacts: ModelArtifacts,
        providers: list[str] | str | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int = 1,
        append_kv: bool | None = None,
    ):
        self.artifacts = artifacts
        self.info = artifacts.info
        self.providers = choose_providers(providers)
        threads = intra_op_threads or int(os.environ.get("MURMURATE_THREADS", "0") or 0)
        opts = session_options(threads, inter_op_threads)
        if append_kv is None:
            append_kv = 2 * self.info.num_kv_heads * self.info.head_dim >= APPEND_KV_MIN_FLOATS
        # Made first: created after the exported graph's session, it decoded ≈ 5% slower (bench talk)
        self.decode_session = self._append_kv_session(opts) if append_kv else None
        try:
            self.session = ort.InferenceSession(
                str(artifacts.onnx_path), sess_options=opts, providers=self.providers
            )
        except Exception as e:  # ORT raises several private exception types
            raise ModelError(f"{artifacts.onnx_path}: ONNX Runtime could not load the graph ({e})") from None
        self.providers = self.session.get_providers()
        if self.providers[0] == CPU and not flushes_denormals():
            log.warning(
                "engine %s: this thread does not flush denormals to zero (another ONNX Runtime session "
                "was created first in this process), so masked attention runs slower",
                artifacts.name,
            )
        self.threads = threads
        log.info(
            "engine %s: providers=%s intra_op_threads=%s", artifacts.name, self.providers, threads or "all"
        )
        names = {i.name for i in self.session.get_inputs()}
        self._has_position_ids = "position_ids" in names
        kv_in = [i for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self.kv_dtype = np.float16 if kv_in and "float16" in kv_in[0].type else np.float32
        L = self.info.num_layers
        self._past_names = [f"past_key_values.{i}.{k}" for i in range(L) for k in ("key", "value")]
        self._present_names = [f"present.{i}.{k}" for i in range(L) for k in ("key", "value")]
        self._outputs = ["logits", *self._present_names]
        self.forward_calls = 0
        self.forward_tokens = 0

    def _append_kv_session(self, opts) -> ort.InferenceSession | None:
        from runtime.kvgraph import append_kv_model

        name, path = self.artifacts.name, self.artifacts.onnx_path
        for attempt in range(2):
            src = None
            try:
                src = append_kv_model(path, self.info.num_layers)
                if src is None:
                    log.info(
                        "engine %s: attention layout not rewritable; decoding with the exported graph", name
                    )
                    return None
                model = str(src) if isinstance(src, Path) else src
                return ort.InferenceSession(model, sess_options=opts, providers=self.providers)
            except Exception as e:  # the exported graph still serves every pass
                if attempt == 0 and isinstance(src, Path):  # a damaged cached graph: write it anew
                    src.unlink(missing_ok=True)
                    continue
                log.warning("engine %s: no append-only decode graph (%s: %s)", name, type(e).__name__, e)
        return None

    def empty_kv(self, rows: int) -> BatchKV:
        return BatchKV.empty(self.info, rows, self.kv_dtype)

    def forward(
        self, input_ids: np.ndarray, positions: np.ndarray, input_mask: np.ndarray, past: BatchKV
    ) -> tuple[np.ndarray, BatchKV]:
        """Run one pass.

        Args:
            input_ids: ``(B, T)`` new tokens, right-aligned (padding on the left, masked out).
            positions: ``(B, T)`` position of each new token in its own sequence.
            input_mask: ``(B, T)`` 1 for real tokens, 0 for padding.
            past: the batch's KV so far, ``W`` columns.

        Returns:
            logits of each row's last token ``(B, V)`` and the KV with ``W + T`` columns.
        """
        W = past.width
        mask = np.concatenate([past.mask, input_mask.astype(np.int64)], axis=1)  # (B, W + T)
        kv = past.kv if past.capacity == W else [np.ascontiguousarray(a[:, :, :W]) for a in past.kv]
        outs = self._run(self.session, input_ids, positions, mask, kv, input_mask)
        # (B, V): rows are right-aligned, the last column is each row's newest token
        return outs[0][:, -1, :], BatchKV(list(outs[1:]), mask)

    def spare_columns(self, width: int) -> int:
        """Spare columns worth giving a batch of ``width`` that is copied anyway (0 without the
        append-only graph)."""
        return spare_columns(width) if self.decode_session is not None else 0

    def forward_append(
        self, input_ids: np.ndarray, positions: np.ndarray, input_mask: np.ndarray, past: BatchKV
    ) -> tuple[np.ndarray, BatchKV]:
        """:meth:`forward` without copying the past: on the append-only graph (:mod:`runtime.kvgraph`)
        the pass returns the new tokens' KV only, written into ``past``'s spare columns
        (:meth:`BatchKV.append`); the result shares ``past``'s arrays. Falls back to :meth:`forward`
        when the model has no such graph. Meant for decode passes (few new tokens a row): with many,
        the graph's copy of the attention scores costs more than the KV copy it saves."""
        B, T = input_ids.shape
        if self.decode_session is None or T > MAX_APPEND_TOKENS:
            return self.forward(input_ids, positions, input_mask, past)
        W, C = past.width, past.capacity
        mask = np.zeros((B, C + T), np.int64)  # spare columns are fed too, masked out
        mask[:, :W] = past.mask
        mask[:, C:] = input_mask
        outs = self._run(self.decode_session, input_ids, positions, mask, past.kv, input_mask)
        return outs[0][:, -1, :], past.append(outs[1:], input_mask)

    def _run(self, session, input_ids, positions, mask, kv, input_mask) -> list[np.ndarray]:
        feed = {"input_ids": input_ids.astype(np.int64, copy=False), "attention_mask": mask}
        if self._has_position_ids:
            feed["position_ids"] = positions.astype(np.int64, copy=False)
        for name, arr in zip(self._past_names, kv):
            feed[name] = arr
        outs = session.run(self._outputs, feed)
        self.forward_calls += 1
        self.forward_tokens += int(input_mask.sum())
        return outs
